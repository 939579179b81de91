/* Notifications (DESIGN.md, "Notifications"): what concerns a user (a job
 * waiting for their approval, a job approved, rejected, vetoed, run or
 * failed, a dataset added to their workspace, a refused key release)
 * becomes a Notification document for them in the store, which they list
 * and watch through GET /v1/notifications and mark read; and, when their
 * User sets spec.notify.webhooks, is POSTed to those URLs per the Standard
 * Webhooks spec (signed with a per-user secret, retried with backoff).
 *
 * Nothing here blocks an API handler: notify_users() only queues; a writer
 * thread stores the notifications (and prunes), sender threads deliver the
 * webhooks. Documents:
 *   Notification/<id>: spec {user, userUid, type, kind, name, details},
 *     status {read, readAt, deliveries: [{url, state, attempts, lastStatus,
 *     lastError, deliveredAt, nextAttemptAt}]}; <id> is the user's prefix
 *     (notify_user_prefix()), 13 hex digits of the creation time in ms and
 *     12 random ones: a user's notifications are one range of the store's
 *     key (store_list_prefix()), sorted by time.
 *   NotificationSecret/<user>: spec {user, userUid, secret: "kms:…"}, the
 *     webhook signing secret sealed by the KMS as Secret values are; never
 *     served by the generic API (not a resource kind). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/server.h"

/* Notifications kept per user: past this, the oldest read ones are deleted
 * first, then the oldest unread ones. */
#define NOTIFY_PER_USER_MAX 500
/* notify_users() calls waiting to be stored; past this a call is refused
 * (-EAGAIN, counted as dropped). */
#define NOTIFY_QUEUE_MAX 4096
/* Users one call notifies at most (a workspace has at most 256 members). */
#define NOTIFY_USERS_MAX 256
/* The most bytes of a notification's details (compact JSON). */
#define NOTIFY_DETAILS_MAX 4096

/* Webhooks: URLs per user, delivery attempts per notification and URL,
 * deliveries waiting at once (past this a delivery fails at once). */
#define NOTIFY_WEBHOOKS_MAX 4
#define NOTIFY_WEBHOOK_ATTEMPTS_MAX 8
#define NOTIFY_WEBHOOK_QUEUE_MAX 10000
/* The first retry waits this long; each next one twice as long, at most
 * NOTIFY_WEBHOOK_DELAY_MAX_MS. */
#define NOTIFY_WEBHOOK_DELAY_BASE_MS 1000
#define NOTIFY_WEBHOOK_DELAY_MAX_MS (10 * 60 * 1000)
/* One delivery attempt: connecting, and the whole request. */
#define NOTIFY_WEBHOOK_CONNECT_TIMEOUT_MS 5000
#define NOTIFY_WEBHOOK_TIMEOUT_MS 10000
/* Bytes of the signing secret (Standard Webhooks: 24 to 64). */
#define NOTIFY_SECRET_LEN 32
/* "v1," and the base64 of an HMAC-SHA256, with its NUL. */
#define NOTIFY_SIGNATURE_SIZE (3 + 44 + 1)
/* "whsec_" and the base64 of the secret, with its NUL. */
#define NOTIFY_SECRET_TEXT_SIZE (6 + 44 + 1)

typedef struct notifier notifier;

/* Starts the writer and sender threads of server SRV (srv->notify).
 * Returns 0 or a negative errno. */
int notify_start(api_server *srv);
/* Stops them: what is queued to be stored is stored first; deliveries not
 * yet made are left (their state says pending). Accepts a server that has
 * none. */
void notify_stop(api_server *srv);

/* Whether TYPE is one of the notification types (job.approval-requested,
 * job.approved, job.rejected, job.vetoed, job.run.started,
 * job.run.succeeded, job.run.failed, dataset.added, key-release.refused). */
bool notify_type_valid(const char *type);

/* Queues a notification of TYPE about KIND/NAME (the object it concerns)
 * for each of the N_USERS USERS (user names; duplicates and users that do
 * not exist are skipped), with DETAILS (an object or NULL; stolen, even on
 * failure). Never blocks: the writer thread stores it and starts webhook
 * deliveries. Safe from any thread. Returns 0, -EINVAL (an unknown type,
 * too many users, a KIND or NAME too long, DETAILS not an object or over
 * NOTIFY_DETAILS_MAX), -EAGAIN (the queue is full: counted and logged as
 * dropped) or -ENOMEM; -ESHUTDOWN when notifications are not running. Its
 * callers (handlers, their offload jobs) are done before notify_stop(). */
int notify_users(api_server *srv, const char *const *users, size_t n_users, const char *type, const char *kind,
                 const char *name, json_t *details);

/* notify_users() for the administrators: every user of group admins (the
 * group the bootstrap policy cloister-admins allows) that is not disabled,
 * resolved by the writer thread. For what concerns no one user, such as a
 * refused key release of an Enclave. Same returns. */
int notify_admins(api_server *srv, const char *type, const char *kind, const char *name, json_t *details);

/* The name prefix of user UID's notifications: 16 hex digits of SHA-256(UID)
 * and "-", into OUT. */
#define NOTIFY_PREFIX_SIZE 18
void notify_user_prefix(const char *uid, char out[NOTIFY_PREFIX_SIZE]);
/* User UID's notifications (a new array of stored documents, oldest first)
 * and the revision they reflect; reads only theirs. Returns 0 or a negative
 * errno. */
int notify_list_user(store *st, const char *uid, json_t **ret_items, int64_t *ret_revision);

/* Which of the user UID's notifications in ITEMS (stored documents sorted
 * by id, so oldest first) go so that one more fits under CAP: none while
 * they are fewer than CAP, else the oldest read ones first, then the oldest
 * unread. Their names (borrowed from ITEMS) into RET_NAMES, which has room
 * for all of the user's; returns how many. */
size_t notify_prune(const json_t *items, const char *uid, size_t cap, const char **ret_names);

/* What GET /v1/notifications shows of a stored Notification DOC (a new
 * reference): {id, type, kind, name, details, createdAt, read, readAt,
 * deliveries}. */
json_t *notify_item_view(const json_t *doc);

/* The Standard Webhooks signature of message MSG_ID sent at TIMESTAMP (Unix
 * seconds) with BODY: "v1," and the base64 of HMAC-SHA256 under SECRET of
 * "MSG_ID.TIMESTAMP.BODY", into OUT. Returns 0 or -EINVAL. */
int notify_webhook_sign(const uint8_t *secret, size_t secret_len, const char *msg_id, int64_t timestamp,
                        const char *body, size_t body_len, char out[NOTIFY_SIGNATURE_SIZE]);
/* "whsec_" and the base64 of SECRET (NOTIFY_SECRET_LEN bytes), into OUT. */
void notify_secret_format(const uint8_t secret[NOTIFY_SECRET_LEN], char out[NOTIFY_SECRET_TEXT_SIZE]);
/* How long to wait before attempt ATTEMPT + 1 after ATTEMPT attempts failed
 * (ATTEMPT >= 1): NOTIFY_WEBHOOK_DELAY_BASE_MS doubled each time, at most
 * NOTIFY_WEBHOOK_DELAY_MAX_MS. */
uint64_t notify_webhook_delay_ms(unsigned attempt);
/* Whether a failed attempt that got HTTP STATUS (0: no answer: refused,
 * timed out, cut) is tried again (if attempts remain): no answer, 408, 429
 * and 5xx are; any other answer is final. */
bool notify_webhook_retryable(long status);

/* The caller's webhook signing secret, made (and stored sealed) on first
 * use or when ROTATE: the secret of user USER (uid UID) into RET. Blocks on
 * the store and the KMS: off the event loop only. Returns 0, -ENOENT when
 * the user does not exist, -EAGAIN when the KMS cannot be reached, or
 * another negative errno. */
int notify_secret_get(api_server *srv, const char *user, const char *uid, bool rotate,
                      uint8_t ret[NOTIFY_SECRET_LEN]);
