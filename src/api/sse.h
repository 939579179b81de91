/* Server-Sent Events responses of the API (watch streams, the proxy's
 * configuration stream): a stream queues events in a capped buffer, sends
 * them one chunk at a time as the client takes them (at most one chunk in
 * flight), is polled on its event loop's watch timer to look for news, sends
 * a comment when it has been quiet too long, and is ended by the server at
 * shutdown (api_sse_drain). A kind of stream "subclasses" api_sse by embedding
 * it first, in the manner of h2o's generators. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/http.h"
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
    strbuf queued, inflight;
};

/* A stream of class CLS answering REQ, allocated (CLS->size bytes, zeroed
 * past the api_sse) from REQ's pool and released with it. STARTED is when
 * the request arrived (monotonic ns). Queue the first events, then call
 * api_sse_start(). */
api_sse *api_sse_new(h2o_req_t *req, uint64_t started, const api_sse_class *cls);
/* Sends the 200 response head (text/event-stream, no-store), what is queued,
 * and starts polling. */
void api_sse_start(api_sse *s);

/* Queues `event: EVENT`, `id: ID` (left out when ID < 0) and `data: DATA`
 * (borrowed, one line of compact JSON). Returns 0, -ENOMEM, or -E2BIG when
 * the client lets more than the class's buffer_max pile up (the caller then
 * ends the stream). The JSON text of a secret stream is wiped once copied. */
int api_sse_queue_event(api_sse *s, const char *event, int64_t id, const json_t *data);
/* Queues TEXT as is (comments: ": …\n\n"). Same returns. */
int api_sse_queue_text(api_sse *s, const char *text);

/* Decides again, on the stream's request, whether its caller may still do
 * VERB on KIND (ctx.request.api name ""): authenticates the token it
 * presented (a revoked session or credential, a deleted user fail) and
 * authorizes by the current policies. Returns 0, or -1 with ERR (each
 * refusal audited). */
int api_sse_redecide(api_sse *s, const char *verb, const char *kind, api_error *err);

/* Ends the stream after what is queued (queue a last error event first to
 * tell the client why). Idempotent. */
void api_sse_finish(api_sse *s);
/* Ends every stream of thread T (server shutdown). */
void api_sse_drain(api_thread *t);
