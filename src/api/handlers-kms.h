/* The API and the KMS: the /v1/kms/ endpoints, which forward key operations
 * to the kms role over its Unix socket, and the encryption of Secret values
 * before they reach the store. */
#pragma once

#include <jansson.h>

#include "api/request.h"
#include "kms/client.h" /* kms_json_wipe_decref() for answers that hold keys */
#include "store/store.h"

/* Where the kms role listens, and the store holding Key and Secret
 * resources; called once before the API serves. Both are borrowed. */
void api_kms_init(const char *kms_socket, store *s);
/* Releases the pooled connections to the kms role (and stops the watch of
 * a remote one). */
void api_kms_done(void);

/* A kms role on another machine (its address an https:// URL) is asked for
 * its status every KMS_REMOTE_POLL_MS by a thread of the api role, for
 * /readyz. Returns false when the kms role is this machine's (the role table
 * tells); else true with what the last answer said: whether it answered
 * (*RET_REACHABLE), is sealed, and its seal mode into MODE (16 bytes). */
#define KMS_REMOTE_POLL_MS 1000
bool api_kms_remote_status(bool *ret_reachable, bool *ret_sealed, char mode[16]);

/* The /v1/kms/ endpoint group: encrypt, decrypt, datakey, rewrap, sign,
 * verify, and keys/{name}[/rotate | /versions/{n}]. */
int api_handle_kms(api_request *r, const char *rest, size_t rest_len, api_error *err);

/* The three calls below block on the kms role: run them off the event
 * loop (offload.h). */

/* Replaces every value of a Secret document's spec.data with a KMS
 * ciphertext bound to the Secret's name and the value's key; a value that is
 * unchanged from the stored Secret keeps its stored ciphertext, so
 * re-applying a manifest changes nothing. Returns 0 or -1 with ERR (503 when
 * the KMS is sealed or down: a Secret is never stored in the clear). */
int api_kms_seal_secret(json_t *doc, api_error *err);
/* The clear value KEY of Secret NAME, unsealed by the KMS, as a heap string
 * the caller wipes and frees. Returns 0, or -1 with ERR (500 when the Secret
 * or its value is missing, 503 when the KMS is sealed or down). */
int api_kms_secret_value(const char *name, const char *key, char **ret, api_error *err);
/* Seals the N bytes of PLAINTEXT with the KMS's key of Secret values,
 * bound to CONTEXT (an object naming where the value is stored, borrowed):
 * *RET is "kms:<ciphertext>", a heap string. The one way a value is stored
 * sealed (Secret values, webhook signing secrets). Returns 0, or -1 with ERR
 * (503 when the KMS is sealed or down). */
int api_kms_seal(const json_t *context, const uint8_t *plaintext, size_t n, char **ret, api_error *err);
/* Unseals SEALED (as api_kms_seal() made it under the same CONTEXT): *RET
 * is a heap buffer of *RET_LEN bytes and a NUL, which the caller wipes and
 * frees. Returns 0, or -1 with ERR. */
int api_kms_unseal(const char *sealed, const json_t *context, uint8_t **ret, size_t *ret_len, api_error *err);
/* A fresh 256-bit data key under Key NAME (purpose encrypt), for handlers that
 * hand keys out themselves (key release): *RET is the KMS's answer
 * {plaintext, ciphertext, key, version} (base64), a new reference the caller
 * releases with kms_json_wipe_decref(). Returns 0, or -1 with ERR (404 no
 * such Key, 400 not an encrypt Key, 503 KMS sealed or down). */
int api_kms_datakey(const char *name, json_t **ret, api_error *err);
/* Value KEY of Secret NAME, stored as SEALED (its "kms:" form), opened by
 * the kms role and sealed there to PUBLIC_KEY (DER SubjectPublicKeyInfo of
 * an EC key) as a JWE whose payload is {"secret", "key", "plaintext":
 * base64}: the plaintext never leaves the kms role. Blocking: from a
 * worker. Returns 0 with the compact JWE in *RET (malloc'd), or -1 with ERR. */
int api_kms_secret_release(const char *name, const char *key, const char *sealed, const uint8_t *public_key,
                           size_t public_key_len, char **ret, api_error *err);
/* The file keys of a job run's inputs (the kms role's POST /v1/job-release,
 * kms/job-release.h, BODY as it documents): *RET its answer {run,
 * runsReleased, digest, evidenceSha256, keys: [{name, jwe}]}. Blocking (a
 * worker only). Returns 0, or -1 with ERR: 403 "release_refused" naming the
 * failed check, 503 KMS sealed or down. */
int api_kms_job_release(const json_t *body, json_t **ret, api_error *err);

/* Makes a new workspace key in the kms role (x25519, a fresh random name
 * "workspace_<hex>", never a Key resource's name, so that a workspace made again under an old name never
 * gets the old key) and answers the Workspace's server-owned status
 * {recipient: "age1…", key: NAME} as a new reference in *RET_STATUS. The
 * private half never leaves the kms role. Blocks: off the event loop only.
 * Returns 0 or -1 with ERR. */
int api_kms_workspace_key(json_t **ret_status, api_error *err);
/* Has the kms role destroy KEY, the workspace key (status.key) of Workspace
 * WORKSPACE that USER (from IP) is deleting: every version wiped and the
 * sealed key ring rewritten. A key already gone is no error (a retried
 * delete). Audited as workspace.key.destroy on the Workspace, {key, result}
 * or the reason of a failure. Blocks: off the event loop only. Returns 0,
 * or -1 with ERR (503 naming the kms role when it is down or sealed: the
 * Workspace must then not be deleted). */
int api_kms_destroy_workspace_key(const char *workspace, const char *key, const char *user, const char *ip,
                                  api_error *err);
