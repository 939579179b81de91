/* /v1/notifications (see handlers-notifications.h): the caller's own
 * notifications listed, watched (Server-Sent Events, sse.h) and marked read;
 * their webhook URLs and signing secret. Every state change is an audit
 * event. */
#include "api/handlers-notifications.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/notify.h"
#include "api/sse.h"
#include "audit/event.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "kms/client.h"
#include "resource/resource.h"

#define WATCH_BATCH_MAX 500
#define WATCH_HEARTBEAT_NS (15 * NSEC_PER_SEC)
#define WATCH_BUFFER_MAX (1024 * 1024)

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

/* The caller's uid: notifications are bound to it, so that a user made
 * again under an old name does not get the old one's. */
static const char *caller_uid(const caller *c)
{
    return str_at(c->user, "metadata", "uid") ?: "";
}

static bool is_own(const json_t *doc, const char *uid)
{
    return strcmp(str_at(doc, "spec", "userUid") ?: "", uid) == 0;
}

/* Whether query flag NAME is set (?NAME, ?NAME=1 or ?NAME=true). */
static bool flag_param(const h2o_req_t *req, const char *name)
{
    char v[8];
    return api_query_param(req, name, v, sizeof(v)) && (!v[0] || strcmp(v, "1") == 0 || strcmp(v, "true") == 0);
}

static void audit(api_request *r, const char *action, const char *outcome, json_t *details)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    audit_event_emit(&(audit_event){.action = action, .user = caller_name(r->caller), .ip = ip, .kind = "User",
                                    .name = caller_name(r->caller), .outcome = outcome, .details = details});
}

/* ---- GET /v1/notifications ---- */

/* GET /v1/notifications[?unread=1]: the caller's own, newest first, and
 * the revision they reflect (to watch from). */
static int handle_list(api_request *r, api_error *err)
{
    bool unread = flag_param(r->req, "unread");
    const char *uid = caller_uid(r->caller);
    json_auto_t *items = NULL;
    int64_t rev;
    int e = notify_list_user(r->server->cfg->store, uid, &items, &rev);
    if (e < 0)
        return api_fail_store(err, e, "Notification", "*");
    json_t *out = json_array();
    /* ids sort by time: newest first */
    for (size_t i = json_array_size(items); out && i-- > 0;) {
        const json_t *doc = json_array_get(items, i);
        if (!is_own(doc, uid) || (unread && json_is_true(json_object_get(json_object_get(doc, "status"), "read"))))
            continue;
        json_array_append_new(out, notify_item_view(doc));
    }
    char rvs[24];
    snprintf(rvs, sizeof(rvs), "%lld", (long long)rev);
    json_auto_t *body = json_pack("{s:o, s:s}", "items", out, "resourceVersion", rvs);
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    api_respond_json(r->req, r->route, r->started, 200, body);
    return 0;
}

/* A stream of the caller's notifications: ADDED for each new one,
 * MODIFIED when one is read or a webhook delivery progresses, DELETED when
 * one is pruned. */
typedef struct notify_watcher {
    api_sse super;
    int64_t revision;
    char uid[129];
} notify_watcher;

/* A poll tick: the caller's own changes of Notification since the
 * stream's revision, as events. */
static void watcher_poll(api_sse *s)
{
    notify_watcher *w = (notify_watcher *)s;
    json_auto_t *events = NULL;
    if (api_sse_changes(s, "Notification", w->revision, WATCH_BATCH_MAX, &events) < 0)
        return;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        int64_t rev = json_integer_value(json_object_get(ev, "revision"));
        const json_t *obj = json_object_get(ev, "object");
        w->revision = rev;
        if (!is_own(obj, w->uid))
            continue;
        const char *type = json_string_value(json_object_get(ev, "type")) ?: "MODIFIED";
        json_auto_t *item = strcmp(type, "DELETED") == 0 ? json_pack("{s:s?}", "id", str_at(obj, "metadata", "name"))
                                                         : notify_item_view(obj);
        if (!item || api_sse_queue_event(s, type, rev, item) < 0) {
            api_sse_fail(&w->super, "too_large",
                         "the client does not read the stream fast enough; list and watch again from the last id "
                         "received");
            return;
        }
    }
}

/* The stream's caller must still be who they were (session, credential,
 * user not deleted or made again): no right is needed for one's own. */
static void watcher_recheck(api_sse *s)
{
    notify_watcher *w = (notify_watcher *)s;
    caller c = {0};
    api_error err;
    int r = api_authenticate(s->thread->server, s->req, &c, &err);
    if (r < 0)
        api_report_refusal(s->req, &c, &err);
    else if (strcmp(caller_uid(&c), w->uid) != 0) {
        api_fail(&err, 401, "unauthenticated", "the user of this stream was deleted or made again; sign in again");
        r = -1;
    }
    caller_clear(&c);
    if (r < 0)
        api_sse_fail(&w->super, err.code, err.message);
}

static const api_sse_class watcher_class = {
    .size = sizeof(notify_watcher),
    .route = ROUTE_NOTIFICATIONS,
    .buffer_max = WATCH_BUFFER_MAX,
    .heartbeat_ns = WATCH_HEARTBEAT_NS,
    .heartbeat = ": heartbeat\n\n",
    .poll = watcher_poll,
    .recheck = watcher_recheck,
};

/* GET /v1/notifications?watch=1[&resourceVersion=N]: a stream of the
 * caller's own from now (or after revision N). */
static int handle_watch(api_request *r, api_error *err)
{
    char rvs[24] = "";
    int64_t from = 0;
    if (api_query_param(r->req, "resourceVersion", rvs, sizeof(rvs)) && rvs[0]) {
        char *end;
        errno = 0;
        long long v = strtoll(rvs, &end, 10);
        if (errno || *end || v <= 0)
            return api_fail(err, 400, "invalid", "resourceVersion must be a positive decimal number (a list's)");
        from = v;
    }
    notify_watcher *w = (notify_watcher *)api_sse_new(r->req, r->started, &watcher_class, r->caller->user, err);
    if (!w)
        return -1;
    snprintf(w->uid, sizeof(w->uid), "%s", caller_uid(r->caller));
    w->revision = from > 0 ? from : store_revision(r->server->cfg->store);
    api_sse_queue_text(&w->super, ": watching\n\n");
    api_sse_start(&w->super);
    return 0;
}

/* ---- POST /v1/notifications/read ---- */

/* Marks the caller's notifications IDS read in one compare-and-swap
 * transaction: -ESTALE when one changed meanwhile (the caller tries again),
 * -ENOENT with *RET_MISSING naming an id that is not the caller's. */
static int mark_read(api_request *r, const json_t *ids, json_t *marked, const char **ret_missing)
{
    store *st = r->server->cfg->store;
    const char *uid = caller_uid(r->caller);
    size_t n = json_array_size(ids);
    store_op *ops = calloc(n ? n : 1, sizeof(*ops));
    json_t **docs = calloc(n ? n : 1, sizeof(json_t *)), **statuses = calloc(n ? n : 1, sizeof(json_t *));
    size_t n_ops = 0;
    int e = ops && docs && statuses ? 0 : -ENOMEM;
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    for (size_t i = 0; e == 0 && i < n; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        json_t *doc = NULL;
        if (store_get(st, "Notification", id, &doc) < 0 || !is_own(doc, uid)) {
            json_decref(doc);
            *ret_missing = id;
            e = -ENOENT;
            break;
        }
        docs[i] = doc;
        json_array_append_new(marked, json_string(id));
        if (json_is_true(json_object_get(json_object_get(doc, "status"), "read")))
            continue;
        statuses[i] = json_deep_copy(json_object_get(doc, "status"));
        if (!statuses[i])
            statuses[i] = json_object();
        json_object_set_new(statuses[i], "read", json_true());
        json_object_set_new(statuses[i], "readAt", json_string(now));
        const char *rv = str_at(doc, "metadata", "resourceVersion");
        ops[n_ops++] = (store_op){.type = STORE_REPLACE, .kind = "Notification", .name = doc_name(doc), .doc = doc,
                                  .status = statuses[i], .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    }
    if (e == 0 && n_ops > 0) {
        store_txn txn = {.ops = ops, .n_ops = n_ops};
        e = store_write(st, &txn);
        store_txn_clear(&txn);
    }
    for (size_t i = 0; docs && statuses && i < n; i++) {
        json_decref(docs[i]);
        json_decref(statuses[i]);
    }
    free(docs);
    free(statuses);
    free(ops);
    return e;
}

/* POST /v1/notifications/read {ids}: checks the body (caps), marks them
 * (retried when one changed meanwhile) and audits it. */
static int handle_read(api_request *r, api_error *err)
{
    if (r->req->entity.len > NOTIFY_READ_BODY_MAX)
        return api_fail(err, 413, "too_large", "the body is larger than %d bytes; mark at most %d ids at once",
                        NOTIFY_READ_BODY_MAX, NOTIFY_READ_IDS_MAX);
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    const json_t *ids = json_object_get(body, "ids");
    if (!json_is_array(ids) || json_object_size(body) != 1)
        return api_fail(err, 400, "invalid", "the body is {\"ids\": [ID, ...]}, the ids of GET /v1/notifications");
    if (json_array_size(ids) == 0 || json_array_size(ids) > NOTIFY_READ_IDS_MAX)
        return api_fail(err, 400, "invalid", "ids: give 1 to %d ids", NOTIFY_READ_IDS_MAX);
    size_t i;
    const json_t *id;
    json_array_foreach(ids, i, id)
    {
        if (!json_is_string(id) || !resource_name_valid(json_string_value(id)))
            return api_fail(err, 400, "invalid", "ids[%zu]: not a notification id", i);
    }
    const char *missing = NULL;
    json_auto_t *marked = NULL;
    int e = -ESTALE;
    for (int tries = 0; tries < 5 && e == -ESTALE; tries++) {
        json_decref(marked);
        marked = json_array();
        e = marked ? mark_read(r, ids, marked, &missing) : -ENOMEM;
    }
    json_auto_t *details = json_pack("{s:O}", "ids", ids);
    audit(r, "notification.read", e < 0 ? "failure" : "success", details);
    if (e == -ENOENT)
        return api_fail(err, 404, "not_found", "notification %s not found (among your own notifications)", missing);
    if (e < 0)
        return api_fail_store(err, e, "Notification", "*");
    json_auto_t *ans = json_pack("{s:O}", "read", marked);
    api_respond_json(r->req, r->route, r->started, 200, ans);
    return 0;
}

/* ---- GET|PUT /v1/notifications/webhooks ---- */

/* GET|PUT /v1/notifications/webhooks: the caller's User.spec.notify.webhooks,
 * written compare-and-swap and checked by the User schema (the one place
 * its rules live). */
static int handle_webhooks(api_request *r, api_error *err)
{
    const json_t *hooks = json_object_get(json_object_get(json_object_get(r->caller->user, "spec"), "notify"),
                                          "webhooks");
    if (api_method_is(r->req, "GET")) {
        json_auto_t *ans = json_pack("{s:O}", "webhooks", hooks ? hooks : json_array());
        api_respond_json(r->req, r->route, r->started, 200, ans);
        return 0;
    }
    if (r->req->entity.len > NOTIFY_WEBHOOKS_BODY_MAX)
        return api_fail(err, 413, "too_large", "the body is larger than %d bytes", NOTIFY_WEBHOOKS_BODY_MAX);
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    json_t *urls = json_object_get(body, "webhooks");
    if (!json_is_array(urls) || json_object_size(body) != 1)
        return api_fail(err, 400, "invalid", "the body is {\"webhooks\": [URL, ...]} (an empty list stops webhooks)");
    const char *name = caller_name(r->caller);
    store *st = r->server->cfg->store;
    int e = -ESTALE;
    for (int tries = 0; tries < 5 && e == -ESTALE; tries++) {
        json_auto_t *user = NULL;
        e = store_get(st, "User", name, &user);
        if (e < 0)
            break;
        if (strcmp(str_at(user, "metadata", "uid") ?: "", caller_uid(r->caller)) != 0) {
            e = -ENOENT;
            break;
        }
        json_t *spec = json_object_get(user, "spec");
        if (json_array_size(urls) == 0)
            json_object_del(spec, "notify");
        else
            json_object_set_new(spec, "notify", json_pack("{s:O}", "webhooks", urls));
        resource_error rerr = {0};
        if (resource_validate(user, &rerr) < 0) {
            const char *field = strncmp(rerr.path, "spec.notify.", 12) == 0 ? rerr.path + 12 : rerr.path;
            return api_fail(err, 400, "invalid", "%s: %s", field, rerr.message);
        }
        const char *rv = str_at(user, "metadata", "resourceVersion");
        store_op op = {.type = STORE_REPLACE, .kind = "User", .name = name, .doc = user,
                       .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
        store_txn txn = {.ops = &op, .n_ops = 1};
        e = store_write(st, &txn);
        store_txn_clear(&txn);
    }
    /* the URLs' hosts only: a URL may carry a receiver's token in its path or query */
    json_auto_t *hosts = json_array();
    size_t i;
    const json_t *u;
    json_array_foreach(urls, i, u)
    {
        const char *s = json_string_value(u), *h = s ? strstr(s, "://") : NULL;
        if (h)
            json_array_append_new(hosts, json_stringn(h + 3, strcspn(h + 3, "/?#")));
    }
    json_auto_t *details = json_pack("{s:O}", "hosts", hosts);
    audit(r, "user.notify.webhooks", e < 0 ? "failure" : "success", details);
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_auto_t *ans = json_pack("{s:O}", "webhooks", urls);
    api_respond_json(r->req, r->route, r->started, 200, ans);
    return 0;
}

/* ---- POST /v1/notifications/webhook-secret ---- */

/* The secret is made or unsealed by the KMS: off the loop. */
typedef struct secret_job {
    offload_job super;
    api_server *srv;
    api_route route;
    uint64_t started;
    bool rotate;
    char user[RESOURCE_NAME_MAX + 1];
    char uid[129];
    char ip[INET6_ADDRSTRLEN];
    int rc;
    uint8_t secret[NOTIFY_SECRET_LEN];
} secret_job;

static void secret_work(offload_job *j)
{
    secret_job *job = (secret_job *)j;
    job->rc = notify_secret_get(job->srv, job->user, job->uid, job->rotate, job->secret);
}

/* Audits the call and answers the secret (wiped after), or the error. */
static void secret_done(offload_job *j, h2o_req_t *req)
{
    secret_job *job = (secret_job *)j;
    audit_event_emit(&(audit_event){.action = job->rotate ? "user.notify.secret.rotate" : "user.notify.secret.get",
                                    .user = job->user, .ip = job->ip, .kind = "User", .name = job->user,
                                    .outcome = job->rc < 0 ? "failure" : "success"});
    if (req && job->rc < 0) {
        api_error err;
        if (job->rc == -EAGAIN)
            api_fail(&err, 503, "unavailable", "the KMS cannot be reached (signing secrets are stored sealed by it); "
                                               "try again");
        else
            api_fail(&err, 500, "internal", "cannot make the webhook signing secret (%s)", strerror(-job->rc));
        api_respond_error(req, job->route, job->started, &err);
    } else if (req) {
        char text[NOTIFY_SECRET_TEXT_SIZE];
        notify_secret_format(job->secret, text);
        json_t *ans = json_pack("{s:s}", "secret", text);
        OPENSSL_cleanse(text, sizeof(text));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
        api_respond_json(req, job->route, job->started, 200, ans);
        kms_json_wipe_decref(ans);
    }
    OPENSSL_cleanse(job->secret, sizeof(job->secret));
    free(job);
}

/* POST /v1/notifications/webhook-secret[?rotate=1]: off the loop (KMS). */
static int handle_secret(api_request *r, api_error *err)
{
    secret_job *job = calloc(1, sizeof(*job));
    if (!job)
        return api_fail(err, 500, "internal", "out of memory");
    *job = (secret_job){.super = {.work = secret_work, .done = secret_done}, .srv = r->server, .route = r->route,
                        .started = r->started, .rotate = flag_param(r->req, "rotate")};
    snprintf(job->user, sizeof(job->user), "%s", caller_name(r->caller));
    snprintf(job->uid, sizeof(job->uid), "%s", caller_uid(r->caller));
    httpd_peer_ip(r->req, job->ip, sizeof(job->ip));
    if (api_offload(r, r->server->local, &job->super, err) < 0) {
        free(job);
        return -1;
    }
    return 0;
}

/* ---- routing ---- */

int api_handle_notifications(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!r->caller->user)
        return api_fail(err, 401, "unauthenticated", "sign in first");
    if (rest_len == 0) {
        if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
            api_method_not_allowed(r->req, r->route, r->started, "GET");
            return 0;
        }
        return flag_param(r->req, "watch") ? handle_watch(r, err) : handle_list(r, err);
    }
    if (h2o_memis(rest, rest_len, H2O_STRLIT("/read"))) {
        if (!api_method_is(r->req, "POST")) {
            api_method_not_allowed(r->req, r->route, r->started, "POST");
            return 0;
        }
        return handle_read(r, err);
    }
    if (h2o_memis(rest, rest_len, H2O_STRLIT("/webhooks"))) {
        if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "PUT")) {
            api_method_not_allowed(r->req, r->route, r->started, "GET, PUT");
            return 0;
        }
        return handle_webhooks(r, err);
    }
    if (h2o_memis(rest, rest_len, H2O_STRLIT("/webhook-secret"))) {
        if (!api_method_is(r->req, "POST")) {
            api_method_not_allowed(r->req, r->route, r->started, "POST");
            return 0;
        }
        return handle_secret(r, err);
    }
    return api_fail(err, 404, "not_found",
                    "no such endpoint; use /v1/notifications, /v1/notifications/read, /v1/notifications/webhooks or "
                    "/v1/notifications/webhook-secret");
}
