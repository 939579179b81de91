/* GET /v1/me/services[?watch=1] (see handlers-me.h). */
#include "api/handlers-me.h"

#include <string.h>

#include "api/auth.h"
#include "api/handlers-policy.h"
#include "api/sse.h"
#include "basic/macro.h"
#include "store/store.h"

#define ME_BUFFER_MAX (1024 * 1024)
#define ME_HEARTBEAT_NS (15 * NSEC_PER_SEC)

/* A stream of the caller's reachable Services: the list again (event
 * `services`) whenever a change of the store changes it. */
typedef struct services_watcher {
    api_sse super;
    int64_t revision; /* the store revision the last list was made at */
    char *last;       /* that list as compact JSON (to send only changes) */
} services_watcher;

/* Queues the list for caller C when it differs from the last sent; ends
 * the stream when it cannot be made. */
static void send_if_changed(services_watcher *w, const caller *c)
{
    json_auto_t *items = NULL;
    api_error err;
    int64_t rev;
    uint64_t epoch = store_epoch(w->super.thread->server->cfg->store); /* before the list it covers */
    if (api_reachable_services(w->super.thread->server, c, &items, &rev, &err) < 0) {
        api_sse_fail(&w->super, err.code, err.message);
        return;
    }
    w->revision = rev;
    w->super.epoch = epoch;
    char *text = json_dumps(items, JSON_COMPACT);
    if (!text || (w->last && strcmp(text, w->last) == 0)) {
        free(text);
        return;
    }
    free(w->last);
    w->last = text;
    json_auto_t *data = json_pack("{s:O, s:I}", "items", items, "resourceVersion", (json_int_t)rev);
    if (!data || api_sse_queue_event(&w->super, "services", rev, data) < 0)
        api_sse_fail(&w->super, "too_large", "the client does not read the stream fast enough; watch again");
}

/* A poll tick: after any change of the store, the caller (as they are now:
 * groups, session) and the list again. A caller no longer signed in ends
 * the stream. */
static void watcher_poll(api_sse *s)
{
    services_watcher *w = (services_watcher *)s;
    store *st = s->thread->server->cfg->store;
    if (store_revision(st) == w->revision && store_epoch(st) == s->epoch)
        return; /* nothing new (a reset store, a new epoch, is listed again even at the same revision) */
    caller c = {0};
    api_error err;
    if (api_authenticate(s->thread->server, s->req, &c, &err) < 0) {
        api_report_refusal(s->req, &c, &err);
        api_sse_fail(s, err.code, err.message);
    } else
        send_if_changed(w, &c);
    caller_clear(&c);
}

/* The stream's caller must still be signed in (a revoked session ends it). */
static void watcher_recheck(api_sse *s)
{
    caller c = {0};
    api_error err;
    if (api_authenticate(s->thread->server, s->req, &c, &err) < 0) {
        api_report_refusal(s->req, &c, &err);
        api_sse_fail(s, err.code, err.message);
    }
    caller_clear(&c);
}

static void watcher_dispose(api_sse *s)
{
    services_watcher *w = (services_watcher *)s;
    free(w->last);
    w->last = NULL;
}

static const api_sse_class watcher_class = {
    .size = sizeof(services_watcher),
    .route = ROUTE_ME,
    .buffer_max = ME_BUFFER_MAX,
    .heartbeat_ns = ME_HEARTBEAT_NS,
    .heartbeat = ": heartbeat\n\n",
    .poll = watcher_poll,
    .recheck = watcher_recheck,
    .dispose = watcher_dispose,
};

/* GET /v1/me/services: {"items": [...], "resourceVersion"}; with ?watch=1
 * a stream of `services` events, the current list first. */
static int handle_services(api_request *r, api_error *err)
{
    char flag[8];
    if (api_query_param(r->req, "watch", flag, sizeof(flag)) && (!flag[0] || strcmp(flag, "1") == 0)) {
        services_watcher *w =
            (services_watcher *)api_sse_new(r->req, r->started, &watcher_class, r->caller->user, err);
        if (!w)
            return -1;
        send_if_changed(w, r->caller);
        api_sse_start(&w->super);
        return 0;
    }
    json_auto_t *items = NULL;
    int64_t rev;
    if (api_reachable_services(r->server, r->caller, &items, &rev, err) < 0)
        return -1;
    json_auto_t *body = json_pack("{s:O, s:I}", "items", items, "resourceVersion", (json_int_t)rev);
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    api_respond_json(r->req, r->route, r->started, 200, body);
    return 0;
}

int api_handle_me(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!h2o_memis(rest, rest_len, H2O_STRLIT("services")))
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/me/%.*s (there is /v1/me/services)",
                        (int)MIN(rest_len, (size_t)200), rest);
    if (!api_method_is(r->req, "GET")) {
        api_method_not_allowed(r->req, r->route, r->started, "GET");
        return 0;
    }
    return handle_services(r, err);
}
