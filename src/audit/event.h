/* The audit event interface: every control-plane write, auth event, key
 * operation and access decision is reported through audit_event_emit(). It
 * never blocks the caller for long and never fails the caller's operation;
 * where events go is the audit component's business. Never put a secret in
 * an event. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct audit_event {
    const char *action;  /* "resource.create", "auth.login", "kms.encrypt", ... */
    const char *user;    /* the actor; NULL when unknown */
    const char *session;
    const char *ip;
    const char *kind;    /* the resource acted on; NULL when none */
    const char *name;
    const char *outcome; /* "success", "failure" or "denied" */
    json_t *details;     /* borrowed, may be NULL */
} audit_event;

/* Records EV. Safe from any thread. Once audit_event_start() ran, the event
 * becomes a canonical entry queued for the audit role (never blocking: when
 * the bounded queue is full the event is counted as dropped and written to
 * the log instead); before that, and in programs that never start delivery,
 * it is written to the log as one line. */
void audit_event_emit(const audit_event *ev);
/* EV as an entry in the form a role submits it (the six fields, "time"
 * now): a new reference, or NULL when out of memory. */
json_t *audit_event_entry(const audit_event *ev);

/* Queues the bytes CHUNK (LEN) of the access-log segment SEGMENT (an id,
 * audit/segment.h) at byte OFFSET, followed by HEAD, the entry committing
 * the segment's chain head: the audit role stores the bytes (in its own
 * subtree) before it appends the entry; HEAD NULL queues the bytes alone
 * (a later call's head commits them). SPOOL_FD, when not -1, is a
 * read-only descriptor of the proxy's spool file, which holds the bytes at
 * OFFSET (taken: closed once delivered); the bytes are then not copied but
 * handed to the role as that descriptor (segment.h's spool channel), or
 * read back from it for a role reached over TCP. The role makes its copy
 * durable before it appends a head; bytes whose head is not acknowledged
 * (a failed delivery, a refusal, a full queue, a stop) stay in the spool
 * file, which is then synced (fdatasync), as nothing else syncs it. Safe
 * from any thread; never waits for the role (a spool file it cannot queue
 * is synced on the caller's thread).
 * DELIVERED, when not NULL, is called on the delivery thread with USERDATA
 * and SEGMENT once the role has stored these bytes and appended HEAD (for
 * a segment's last bytes: the role then holds all of it); never when they
 * are refused or logged instead. Returns 0, or -ENOBUFS when not queued
 * (delivery not started, the queue full, a bad id or entry: logged): the
 * caller starts a new segment, since the role takes a segment's bytes only
 * in order. */
int audit_event_emit_segment(const char *segment, uint64_t offset, const char *chunk, size_t len, int spool_fd,
                             const audit_event *head, void (*delivered)(void *userdata, const char *segment),
                             void *userdata);

/* Starts the background thread that delivers queued events in batches to the
 * audit role listening on SOCKET_PATH. Returns 0 or a negative errno. */
int audit_event_start(const char *socket_path);
/* Waits at most TIMEOUT_MS until every event emitted before the call has
 * left the queue (acknowledged by the audit role, or logged). Returns 0, or
 * -ETIMEDOUT. Immediate when delivery is not started. */
int audit_event_flush(unsigned timeout_ms);
/* Appends EV to the audit role at SOCKET_PATH now, after every event
 * emitted before it (flushed first), and waits for it to be durable: its
 * index in the log into *RET_INDEX. For an entry whose index is recorded
 * elsewhere (a job's run receipt). Returns 0, -ETIMEDOUT, -EPROTO (the role
 * refused it) or a connection error; nothing is logged in its place. */
int audit_event_append(const audit_event *ev, const char *socket_path, unsigned timeout_ms, uint64_t *ret_index);
/* Waits at most TIMEOUT_MS until every event emitted before the call is
 * durable in the audit role (its segment bytes stored, for a segment head).
 * Returns 0; -ETIMEDOUT; -EIO when one of them was logged instead of
 * delivered (or, rarely, one emitted just after: a caller refusing on
 * failure stays on the safe side); -ENOTCONN when delivery is not started.
 * Blocks: call it off an event loop. */
int audit_event_commit(unsigned timeout_ms);
/* Delivers what is queued for at most TIMEOUT_MS, writes whatever could not
 * be delivered to the log, and stops the thread. No-op when not started. */
void audit_event_stop(unsigned timeout_ms);
/* Whether events currently reach the audit role: delivery is started, its
 * last attempt succeeded and the queue has room. Services that must not be
 * reached unaudited refuse requests while it is false. */
bool audit_event_deliverable(void);
/* Events that could not be queued or delivered (each was logged instead). */
uint64_t audit_event_dropped(void);
