/* Server-Sent Events streams of the API (see sse.h). */
#include "api/sse.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/handlers-policy.h"
#include "api/request.h"
#include "basic/timeutil.h"
#include "httpd/httpd.h"

static void sse_flush(api_sse *s);

/* The streams open in this process, in total and by owner (every event loop
 * thread of the API counts here). An owner is listed while it has a stream
 * open, so the table never holds more owners than API_SSE_TOTAL_MAX. */
static struct {
    pthread_mutex_t lock;
    unsigned total;
    uint64_t too_slow; /* streams whose buffer cap was reached */
    size_t n_owners;
    struct {
        char key[sizeof(((api_sse *)0)->owner)];
        unsigned streams;
    } owners[API_SSE_TOTAL_MAX];
} open_streams = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The index of OWNER in the table, or n_owners when absent. Under the lock. */
static size_t owner_index(const char *owner)
{
    size_t i = 0;
    while (i < open_streams.n_owners && strcmp(open_streams.owners[i].key, owner) != 0)
        i++;
    return i;
}

/* Takes a stream slot for OWNER (a key that fits api_sse.owner). Returns
 * 0, -EUSERS when OWNER has API_SSE_PER_USER_MAX streams open, or -ENFILE
 * when the process has API_SSE_TOTAL_MAX. */
static int slot_take(const char *owner)
{
    pthread_mutex_lock(&open_streams.lock);
    size_t i = owner_index(owner);
    int r = 0;
    if (open_streams.total >= API_SSE_TOTAL_MAX)
        r = -ENFILE;
    else if (i < open_streams.n_owners && open_streams.owners[i].streams >= API_SSE_PER_USER_MAX)
        r = -EUSERS;
    else {
        if (i == open_streams.n_owners) {
            snprintf(open_streams.owners[i].key, sizeof(open_streams.owners[i].key), "%s", owner);
            open_streams.owners[i].streams = 0;
            open_streams.n_owners++;
        }
        open_streams.owners[i].streams++;
        open_streams.total++;
    }
    pthread_mutex_unlock(&open_streams.lock);
    return r;
}

/* Gives S's slot back, once (every way a stream ends comes here). */
static void slot_release(api_sse *s)
{
    if (!s->counted)
        return;
    s->counted = false;
    pthread_mutex_lock(&open_streams.lock);
    size_t i = owner_index(s->owner);
    if (i < open_streams.n_owners) {
        open_streams.total--;
        if (--open_streams.owners[i].streams == 0)
            open_streams.owners[i] = open_streams.owners[--open_streams.n_owners];
    }
    pthread_mutex_unlock(&open_streams.lock);
}

void api_sse_counts(unsigned *ret_open, uint64_t *ret_too_slow)
{
    pthread_mutex_lock(&open_streams.lock);
    *ret_open = open_streams.total;
    *ret_too_slow = open_streams.too_slow;
    pthread_mutex_unlock(&open_streams.lock);
}

/* Passes on the result R of queueing on S, counting S once as too slow
 * when R says its buffer cap was reached. */
static int queued(api_sse *s, int r)
{
    if (r == -E2BIG && !s->too_slow) {
        s->too_slow = true;
        pthread_mutex_lock(&open_streams.lock);
        open_streams.too_slow++;
        pthread_mutex_unlock(&open_streams.lock);
    }
    return r;
}

/* Stops polling and leaves the thread's list of open streams. */
static void sse_detach(api_sse *s)
{
    if (h2o_timeout_is_linked(&s->poll))
        h2o_timeout_unlink(&s->poll);
    if (h2o_linklist_is_linked(&s->link))
        h2o_linklist_unlink(&s->link);
}

/* The request's pool releases the stream: the subclass first, then the buffers. */
static void sse_dispose(void *p)
{
    api_sse *s = p;
    sse_detach(s);
    slot_release(s);
    if (s->cls->dispose)
        s->cls->dispose(s);
    strbuf_free(&s->queued); /* wiped first when the class is secret */
    strbuf_free(&s->inflight);
}

/* Sends what is queued unless a send is under way; the final chunk ends the response. */
static void sse_flush(api_sse *s)
{
    if (s->sending || s->done || !s->responding || (s->held && !s->finishing))
        return;
    if (s->queued.len == 0 && !s->finishing)
        return;
    strbuf tmp = s->inflight;
    s->inflight = s->queued;
    s->queued = tmp;
    strbuf_reset(&s->queued);
    h2o_iovec_t buf = h2o_iovec_init(s->inflight.data, s->inflight.len);
    s->sending = true;
    s->last_sent = time_mono_ns();
    if (s->finishing) {
        s->done = true;
        api_finish(s->cls->route, s->started, 200);
    }
    h2o_send(s->req, &buf, buf.len ? 1 : 0, s->finishing ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

void api_sse_hold(api_sse *s, bool hold)
{
    s->held = hold;
    if (!hold)
        sse_flush(s);
}

/* A poll tick: the class looks for news, then a heartbeat when the stream
 * has been quiet, then whatever is queued goes out and the tick is re-armed. */
static void sse_on_poll(h2o_timeout_entry_t *entry)
{
    api_sse *s = H2O_STRUCT_FROM_MEMBER(api_sse, poll, entry);
    uint64_t now = time_mono_ns();
    if (s->cls->recheck && now - s->checked_at >= API_SSE_RECHECK_NS) {
        s->checked_at = now;
        s->cls->recheck(s);
        if (s->finishing || s->done)
            return;
    }
    s->cls->poll(s);
    if (s->finishing || s->done)
        return;
    if (s->queued.len == 0 && time_mono_ns() - s->last_sent > s->cls->heartbeat_ns)
        strbuf_puts(&s->queued, s->cls->heartbeat);
    sse_flush(s);
    h2o_timeout_link(s->thread->ctx->loop, &s->thread->watch_poll, &s->poll);
}

/* h2o took the chunk in flight: its buffer may be reused (and is wiped by
 * the reset when secret). */
static void sse_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    api_sse *s = (api_sse *)g;
    s->sending = false;
    strbuf_reset(&s->inflight);
    sse_flush(s);
}

/* The client went away (or the response was cut). */
static void sse_stop(h2o_generator_t *g, h2o_req_t *req)
{
    api_sse *s = (api_sse *)g;
    if (!s->done)
        api_finish(s->cls->route, s->started, 200);
    s->done = true;
    sse_detach(s);
    slot_release(s);
}

api_sse *api_sse_new(h2o_req_t *req, uint64_t started, const api_sse_class *cls, const json_t *user, api_error *err)
{
    const json_t *meta = json_object_get(user, "metadata");
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *uid = json_string_value(json_object_get(meta, "uid")) ?: name;
    if (!uid) {
        api_fail(err, 500, "internal", "the caller has no user to count the stream against");
        return NULL;
    }
    char owner[sizeof(((api_sse *)0)->owner)];
    snprintf(owner, sizeof(owner), "%s", uid);
    int e = slot_take(owner);
    if (e == -EUSERS) {
        api_fail(err, 429, "too_many_streams",
                 "user %s already has %d streams open (watch and configuration streams together), the most one "
                 "user may have; close one and try again",
                 name ?: owner, API_SSE_PER_USER_MAX);
        return NULL;
    }
    if (e < 0) {
        api_fail(err, 429, "too_many_streams",
                 "the API already serves %d streams, the most it holds open at once; try again later",
                 API_SSE_TOTAL_MAX);
        return NULL;
    }
    api_sse *s = h2o_mem_alloc_shared(&req->pool, cls->size, sse_dispose);
    memset(s, 0, cls->size);
    *s = (api_sse){.super = {sse_proceed, sse_stop}, .cls = cls, .req = req,
                   .thread = (api_thread *)httpd_thread_state(req), .started = started,
                   .last_sent = time_mono_ns(), .checked_at = time_mono_ns(), .counted = true,
                   .epoch = store_epoch(((api_thread *)httpd_thread_state(req))->server->cfg->store)};
    memcpy(s->owner, owner, sizeof(owner));
    s->poll.cb = sse_on_poll;
    if (cls->secret) {
        strbuf_init_secure(&s->queued, cls->buffer_max);
        strbuf_init_secure(&s->inflight, cls->buffer_max);
    } else {
        strbuf_init(&s->queued, cls->buffer_max);
        strbuf_init(&s->inflight, cls->buffer_max);
    }
    return s;
}

void api_sse_start(api_sse *s)
{
    h2o_req_t *req = s->req;
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &s->super);
    s->responding = true;
    if (s->finishing) { /* ended before it started: the last event goes out */
        sse_flush(s);
        return;
    }
    if (httpd_stopping(req)) {
        /* opened on a kept-alive connection after the drain: what is queued
         * goes out and the stream ends at once */
        api_sse_finish(s);
        return;
    }
    h2o_linklist_insert(&s->thread->watchers, &s->link);
    sse_flush(s);
    h2o_timeout_link(s->thread->ctx->loop, &s->thread->watch_poll, &s->poll);
}

int api_sse_queue_event(api_sse *s, const char *event, int64_t id, const json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    int r = id >= 0 ? strbuf_printf(&s->queued, "event: %s\nid: %lld\ndata: %s\n\n", event, (long long)id, text)
                    : strbuf_printf(&s->queued, "event: %s\ndata: %s\n\n", event, text);
    if (s->cls->secret)
        OPENSSL_cleanse(text, strlen(text));
    free(text);
    return queued(s, r);
}

int api_sse_redecide(api_sse *s, const char *verb, const char *kind, const char *name, api_error *err)
{
    caller c = {0};
    int r = api_authenticate(s->thread->server, s->req, &c, err);
    if (r < 0)
        api_report_refusal(s->req, &c, err);
    else
        r = api_authorize(s->thread->server, s->req, &c, verb, kind, name, err); /* audits a refusal itself */
    caller_clear(&c);
    return r;
}

int api_sse_queue_text(api_sse *s, const char *text)
{
    return queued(s, strbuf_puts(&s->queued, text));
}

void api_sse_finish(api_sse *s)
{
    if (s->finishing)
        return;
    s->finishing = true;
    sse_detach(s);
    sse_flush(s);
}

void api_sse_end(api_sse *s, const char *event, const json_t *data)
{
    if (s->finishing)
        return;
    strbuf_reset(&s->queued); /* wiped first when the class is secret */
    if (data)
        api_sse_queue_event(s, event, -1, data);
    api_sse_finish(s);
}

void api_sse_fail(api_sse *s, const char *code, const char *message)
{
    json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
    api_sse_end(s, "ERROR", e);
    json_decref(e);
}

int api_sse_changes(api_sse *s, const char *kind, int64_t after, size_t max, json_t **ret_events)
{
    store *st = s->thread->server->cfg->store;
    int e = store_changes_since_epoch(st, s->epoch, &kind, 1, after, max, ret_events);
    if (e == -ESTALE && store_epoch(st) != s->epoch)
        api_sse_fail(s, "gone",
                     "the store was reset or replaced since this stream opened (a new epoch): its revisions no longer "
                     "apply; list and watch again");
    else if (e == -ESTALE)
        api_sse_fail(s, "gone", "the requested resourceVersion is older than the kept history; list and watch again");
    return e < 0 ? -1 : 0;
}

void api_sse_drain(api_thread *t)
{
    while (!h2o_linklist_is_empty(&t->watchers)) {
        api_sse *s = H2O_STRUCT_FROM_MEMBER(api_sse, link, t->watchers.next);
        api_sse_finish(s);
    }
}
