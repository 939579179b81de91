/* The audit endpoints. Parameters are parsed strictly here (decimal indexes
 * only, each exactly once, nothing else) and re-serialised for the audit
 * role, which checks them again; no client text reaches the role.
 *
 * The event loops never wait on the audit role: a read is a job on the
 * API's pool for local calls (offload.h; 503 when it is full), answered back
 * on the loop that took the request. A worker first waits (at most
 * AUDIT_FLUSH_TIMEOUT_MS) for the events this process emitted before the
 * request to reach the log, so a client reads its own writes. */
#include "api/handlers-audit.h"

#include "api/handlers-policy.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "audit/client.h"
#include "audit/entry.h"
#include "audit/event.h"
#include "audit/segment.h"
#include "basic/log.h"
#include "basic/macro.h"

#define AUDIT_CALL_TIMEOUT_MS 3000
#define AUDIT_FLUSH_TIMEOUT_MS 500

/* One read of the audit role, off the loop. Owns BODY. */
typedef struct audit_fetch {
    offload_job super;
    const char *socket_path; /* the server's configuration */
    api_route route;
    uint64_t started;
    char path[256];
    int error; /* 0, or why the role could not be asked */
    long status;
    char *body;
    size_t len;
} audit_fetch;

/* Each worker's connection to the audit role, kept alive between reads and
 * closed when the worker ends. */
static pthread_key_t client_key;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_free(void *c)
{
    audit_client_free(c);
}

static void client_key_init(void)
{
    pthread_key_create(&client_key, client_free);
}

static void fetch_work(offload_job *j)
{
    audit_fetch *f = (audit_fetch *)j;
    pthread_once(&client_once, client_key_init);
    audit_client *c = pthread_getspecific(client_key);
    if (!c && (f->error = f->socket_path ? audit_client_new("audit", f->socket_path, &c) : -ENOTCONN) < 0)
        return;
    pthread_setspecific(client_key, c);
    audit_event_flush(AUDIT_FLUSH_TIMEOUT_MS);
    f->error = audit_client_request(c, "GET", f->path, NULL, 0, AUDIT_CALL_TIMEOUT_MS, &f->status, &f->body, &f->len);
}

/* Answers one fetched request on its loop. */
static void respond(audit_fetch *f, h2o_req_t *req)
{
    api_error err;
    json_t *j = f->error == 0 ? json_loadb(f->body ? f->body : "", f->len, 0, NULL) : NULL;
    if (f->error < 0) {
        log_fields(LOG_LEVEL_WARN, "cannot reach the audit role", "error", strerror(-f->error), NULL);
        api_fail(&err, 503, "unavailable", "the audit log is not available right now; try again");
    } else if (!json_is_object(j) || (f->status != 200 && f->status != 400 && f->status != 404))
        api_fail(&err, 503, "unavailable", "the audit log answered unexpectedly (status %ld)", f->status);
    else if (f->status != 200)
        api_fail(&err, (int)f->status, f->status == 404 ? "not_found" : "invalid", "%s",
                 json_string_value(json_object_get(json_object_get(j, "error"), "message")) ?: "bad request");
    else {
        api_respond_json(req, f->route, f->started, 200, j);
        json_decref(j);
        return;
    }
    json_decref(j);
    api_respond_error(req, f->route, f->started, &err);
}

static void fetch_done(offload_job *j, h2o_req_t *req)
{
    audit_fetch *f = (audit_fetch *)j;
    if (req)
        respond(f, req);
    free(f->body);
    free(f);
}

/* The role's endpoint for REST with the client's query checked; 0 or -1
 * with ERR filled. */
static int role_path(const api_request *r, const char *rest, size_t rest_len, char *out, size_t size, api_error *err)
{
    static const struct {
        const char *rest, *role, *names[2];
        uint64_t max_span; /* cap on names[1] - names[0], 0: none */
    } table[] = {
        {"checkpoint", "/v1/checkpoint", {NULL, NULL}, 0},
        {"entries", "/v1/entries", {"start", "end"}, AUDIT_PAGE_MAX},
        {"proof/inclusion", "/v1/proof/inclusion", {"index", "size"}, 0},
        {"proof/consistency", "/v1/proof/consistency", {"from", "to"}, 0},
    };
    const h2o_req_t *req = r->req;
    static const char seg[] = "segments/";
    if (rest_len > sizeof(seg) - 1 && memcmp(rest, seg, sizeof(seg) - 1) == 0) {
        const char *id = rest + sizeof(seg) - 1;
        size_t id_len = rest_len - (sizeof(seg) - 1);
        if (!segment_id_valid(id, id_len))
            return api_fail(err, 400, "invalid", "not a segment id: expected [0-9a-z-], at most %d characters",
                            SEGMENT_ID_MAX);
        if (req->query_at != SIZE_MAX)
            return api_fail(err, 400, "invalid", "/v1/audit/segments/{id} takes no parameters");
        snprintf(out, size, "/v1/segment?id=%.*s", (int)id_len, id);
        return 0;
    }
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strlen(table[i].rest) != rest_len || memcmp(rest, table[i].rest, rest_len) != 0)
            continue;
        const char *q = req->query_at == SIZE_MAX ? "" : req->path.base + req->query_at + 1;
        size_t qlen = req->query_at == SIZE_MAX ? 0 : req->path.len - req->query_at - 1;
        if (!table[i].names[0]) {
            if (qlen > 0)
                return api_fail(err, 400, "invalid", "/v1/audit/%s takes no parameters", table[i].rest);
            snprintf(out, size, "%s", table[i].role);
            return 0;
        }
        uint64_t v[2];
        if (audit_parse_query(q, qlen, table[i].names, v) < 0)
            return api_fail(err, 400, "invalid", "expected ?%s=N&%s=N (decimal numbers) and no other parameter",
                            table[i].names[0], table[i].names[1]);
        if (table[i].max_span && (v[1] <= v[0] || v[1] - v[0] > table[i].max_span))
            return api_fail(err, 400, "invalid", "need %s < %s, at most %llu apart", table[i].names[0],
                            table[i].names[1], (unsigned long long)table[i].max_span);
        snprintf(out, size, "%s?%s=%llu&%s=%llu", table[i].role, table[i].names[0], (unsigned long long)v[0],
                 table[i].names[1], (unsigned long long)v[1]);
        return 0;
    }
    return api_fail(err, 404, "not_found", "no such endpoint: /v1/audit/%.*s", (int)MIN(rest_len, (size_t)100), rest);
}

/* /v1/audit/...: every read of the log (checkpoint, entries, proofs, the
 * access-log segments its proxy.access entries commit) is
 * decided as `get` on AuditLog before anything else. */
int api_handle_audit(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (api_authorize(r->server, r->req, r->caller, "get", "AuditLog", "", err) < 0)
        return -1;
    char path[256];
    if (role_path(r, rest, rest_len, path, sizeof(path), err) < 0)
        return -1;
    if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
        api_method_not_allowed(r->req, r->route, r->started, "GET");
        return 0;
    }
    audit_fetch *f = calloc(1, sizeof(*f));
    if (!f)
        return api_fail(err, 500, "internal", "out of memory");
    *f = (audit_fetch){.super = {.work = fetch_work, .done = fetch_done},
                       .socket_path = r->server->cfg->audit_socket, .route = r->route, .started = r->started};
    snprintf(f->path, sizeof(f->path), "%s", path);
    if (api_offload(r, r->server->local, &f->super, err) < 0) {
        free(f);
        return -1;
    }
    return 0;
}
