/* Server-Sent Events responses of the API (watch streams, the proxy's
 * configuration stream): a stream queues events in a capped buffer, sends
 * them one chunk at a time as the client takes them (at most one chunk in
 * flight), is polled on its event loop's watch timer to look for news, sends
 * a comment when it has been quiet too long, and is ended by the server at
 * shutdown (api_sse_drain). A kind of stream "subclasses" api_sse by embedding
 * it first, in the manner of h2o's generators.
 *
 * Streams are capped: each holds at most its class's buffer_max unsent bytes
 * (a client that reads too slowly is ended with an error event), one user
 * has at most API_SSE_PER_USER_MAX streams open and the API process at most
 * API_SSE_TOTAL_MAX; the next is refused with 429 until one ends. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "httpd/json.h"
#include "api/metrics.h"
#include "api/server.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"

/* How often every open stream of an event loop is polled (the loop's
 * watch_poll timer): the most a change waits before it is sent. */
#define API_SSE_POLL_MS 200
/* How often a stream's caller is authenticated and authorized again: a lost
 * right or session ends it within this (and a poll tick). */
#define API_SSE_RECHECK_NS (4 * NSEC_PER_SEC)

/* Streams (watch and configuration streams together) open at once for one
 * user, and in the whole API process. */
#define API_SSE_PER_USER_MAX 16
#define API_SSE_TOTAL_MAX 1024

typedef struct api_sse api_sse;

/* What differs between kinds of stream. */
typedef struct api_sse_class {
    size_t size;           /* of the subclass, which starts with an api_sse */
    api_route route;       /* for the metrics */
    size_t buffer_max;     /* unsent bytes a stream may hold (the backpressure cap) */
    uint64_t heartbeat_ns; /* a comment is sent after this long without output */
    const char *heartbeat; /* that comment, e.g. ": heartbeat\n\n" */
    bool secret;           /* events carry secrets: the buffers are wiped */
    /* Runs on every poll tick: look for news and queue events (it may end the
     * stream with api_sse_finish). */
    void (*poll)(api_sse *s);
    /* Runs before the poll tick every API_SSE_RECHECK_NS: decides again
     * whether the caller may keep the stream, and ends it (with an event
     * saying why) when not; may be NULL. */
    void (*recheck)(api_sse *s);
    /* Releases what the subclass holds when the request goes away; may be NULL. */
    void (*dispose)(api_sse *s);
} api_sse_class;

struct api_sse {
    h2o_generator_t super;
    const api_sse_class *cls;
    h2o_req_t *req;
    api_thread *thread;
    h2o_linklist_t link;      /* in thread->watchers while open */
    h2o_timeout_entry_t poll; /* on thread->watch_poll */
    uint64_t started, last_sent, checked_at;
    bool sending;   /* h2o holds `inflight` until proceed is called */
    bool finishing; /* no more polling; the next chunk is the last */
    bool done;
    bool responding; /* the response head was started: chunks may be sent */
    bool too_slow; /* reached its buffer cap (counted once) */
    bool counted; /* holds a slot of owner's (released once, when the stream ends) */
    bool held;    /* api_sse_hold: what is queued waits (but a last event) */
    char owner[72]; /* the user's uid (their name when the document has none) */
    uint64_t epoch; /* the store's when the stream opened: its revisions belong to it */
    strbuf queued, inflight;
};

/* A stream of class CLS answering REQ for USER (the caller's stored User
 * document, borrowed), allocated (CLS->size bytes, zeroed past the api_sse)
 * from REQ's pool and released with it. STARTED is when the request arrived
 * (monotonic ns). Returns the stream, counted against USER's and the
 * process's caps until it ends; or NULL with ERR filled (429
 * too_many_streams naming the cap) when either is reached, or 500 when
 * USER has neither uid nor name. Queue the first events, then call
 * api_sse_start(). */
api_sse *api_sse_new(h2o_req_t *req, uint64_t started, const api_sse_class *cls, const json_t *user, api_error *err);
/* Sends the 200 response head (text/event-stream, no-store), what is queued,
 * and starts polling (or ends the stream at once when it was ended before). */
void api_sse_start(api_sse *s);

/* Queues `event: EVENT`, `id: ID` (left out when ID < 0) and `data: DATA`
 * (borrowed, one line of compact JSON). Returns 0, -ENOMEM, or -E2BIG when
 * the client lets more than the class's buffer_max pile up (the caller then
 * ends the stream). The JSON text of a secret stream is wiped once copied. */
int api_sse_queue_event(api_sse *s, const char *event, int64_t id, const json_t *data);
/* Queues TEXT as is (comments: ": …\n\n"). Same returns. */
int api_sse_queue_text(api_sse *s, const char *text);

/* Decides again, on the stream's request, whether its caller may still do
 * VERB on KIND/NAME ("" for a whole kind): authenticates the token it
 * presented (a revoked session or credential, a deleted user fail) and
 * authorizes by the current policies. Returns 0, or -1 with ERR (each
 * refusal audited). */
int api_sse_redecide(api_sse *s, const char *verb, const char *kind, const char *name, api_error *err);

/* While HOLD, nothing queued is sent (a stream waiting for blocking work
 * whose result must go out with the events queued before it); released,
 * what is queued goes out at once. An ending stream sends its last event
 * regardless. */
void api_sse_hold(api_sse *s, bool hold);
/* Ends the stream after what is queued. Idempotent. */
void api_sse_finish(api_sse *s);
/* Ends the stream with a last event telling the client why: what is queued
 * and not yet handed to the connection is dropped (so the event fits even
 * when the buffer is full; the client resumes after the last event it
 * received), then `event: EVENT` and `data: DATA` (borrowed; no id, so the
 * client's last event id stays that of the last event it got) are sent and
 * the stream finishes. Idempotent. */
void api_sse_end(api_sse *s, const char *event, const json_t *data);
/* api_sse_end() with the event watch streams end with: `event: ERROR`,
 * `data: {"error": {"code": CODE, "message": MESSAGE}}`. */
void api_sse_fail(api_sse *s, const char *code, const char *message);
/* The store's changes of KIND after revision AFTER, at most MAX, for a
 * watch stream's poll tick: 0 with *RET_EVENTS (store_changes_since()'s
 * array, a new reference); or -1 when there is nothing to send this tick:
 * the store failed (tried again at the next tick), or AFTER is older than
 * the kept history or the store was reset since S opened (a new epoch),
 * which ends S with an ERROR event "gone" (the client lists again). */
int api_sse_changes(api_sse *s, const char *kind, int64_t after, size_t max, json_t **ret_events);
/* Streams open now in this process, and streams that reached their buffer
 * cap since it started (for /metrics). */
void api_sse_counts(unsigned *ret_open, uint64_t *ret_too_slow);
/* Ends every stream of thread T (server shutdown). */
void api_sse_drain(api_thread *t);
