/* The audit endpoints. Parameters are parsed strictly here (decimal indexes
 * only, each exactly once, nothing else) and re-serialised for the audit
 * role, which checks them again; no client text reaches the role.
 *
 * The event loops never wait on the audit role: a request becomes a job for
 * a small pool of fetch threads (at most FETCH_PENDING_MAX jobs, then 503),
 * and the answer comes back to the loop that took the request through an h2o
 * message. A fetch thread first waits (at most AUDIT_FLUSH_TIMEOUT_MS) for
 * the events this process emitted before the request to reach the log, so a
 * client reads its own writes. */
#include "api/handlers-audit.h"

#include "api/handlers-policy.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "audit/client.h"
#include "audit/entry.h"
#include "audit/event.h"
#include "basic/log.h"
#include "basic/macro.h"

#define AUDIT_CALL_TIMEOUT_MS 3000
#define AUDIT_FLUSH_TIMEOUT_MS 500
#define FETCH_THREADS 2
#define FETCH_PENDING_MAX 64

/* Where answers for one event loop arrive. Created on the loop's first audit
 * request and kept until the process exits: a fetch thread may still post to
 * it while the loop shuts down. */
typedef struct loop_receiver {
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
} loop_receiver;

typedef struct fetch_anchor fetch_anchor;

/* One request to the audit role. Owned by the job queue, then by a fetch
 * thread, then by the loop that answers and frees it. REQ and ANCHOR are only
 * touched on the loop (the anchor clears REQ when the client goes away). */
typedef struct audit_fetch {
    h2o_linklist_t link;
    h2o_multithread_message_t msg;
    loop_receiver *back;
    h2o_req_t *req;
    fetch_anchor *anchor;
    api_route route;
    uint64_t started;
    char path[256];
    int error; /* 0, or why the role could not be asked */
    long status;
    char *body;
    size_t len;
} audit_fetch;

struct fetch_anchor {
    audit_fetch *f;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    h2o_linklist_t jobs;
    size_t pending; /* queued or being fetched */
    bool started;
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static pthread_key_t receiver_key;
static pthread_once_t receiver_once = PTHREAD_ONCE_INIT;

static void receiver_key_init(void)
{
    pthread_key_create(&receiver_key, NULL);
}

/* A fetch thread: takes jobs, asks the audit role, posts the answer back. */
static void *fetch_main(void *arg)
{
    audit_client *c = arg;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (h2o_linklist_is_empty(&pool.jobs))
            pthread_cond_wait(&pool.wake, &pool.lock);
        audit_fetch *f = H2O_STRUCT_FROM_MEMBER(audit_fetch, link, pool.jobs.next);
        h2o_linklist_unlink(&f->link);
        pthread_mutex_unlock(&pool.lock);
        audit_event_flush(AUDIT_FLUSH_TIMEOUT_MS);
        f->error = audit_client_request(c, "GET", f->path, NULL, 0, AUDIT_CALL_TIMEOUT_MS, &f->status, &f->body,
                                        &f->len);
        pthread_mutex_lock(&pool.lock);
        pool.pending--;
        h2o_multithread_send_message(&f->back->receiver, &f->msg);
    }
    return NULL;
}

/* Starts the fetch threads once. Returns 0 or a negative errno. */
static int pool_start(const char *socket_path)
{
    int r = 0;
    pthread_mutex_lock(&pool.lock);
    if (!pool.started) {
        if (!socket_path || strlen(socket_path) >= sizeof(pool.socket_path))
            r = -ENAMETOOLONG;
        else {
            strcpy(pool.socket_path, socket_path);
            h2o_linklist_init_anchor(&pool.jobs);
        }
        for (int i = 0; r == 0 && i < FETCH_THREADS; i++) {
            audit_client *c;
            pthread_t t;
            r = audit_client_new(pool.socket_path, &c);
            if (r == 0 && (r = -pthread_create(&t, NULL, fetch_main, c)) < 0)
                audit_client_free(c);
            if (r == 0) {
                pthread_detach(t);
                pool.started = true; /* one thread is enough to serve */
            }
        }
        if (pool.started)
            r = 0;
    }
    pthread_mutex_unlock(&pool.lock);
    return r;
}

static void anchor_dispose(void *p)
{
    fetch_anchor *a = p;
    if (a->f)
        a->f->req = NULL;
}

/* Answers one fetched request on its loop. */
static void respond(audit_fetch *f)
{
    api_error err;
    json_t *j = f->error == 0 ? json_loadb(f->body, f->len, 0, NULL) : NULL;
    if (f->error < 0) {
        log_fields(LOG_LEVEL_WARN, "cannot reach the audit role", "error", strerror(-f->error), NULL);
        api_fail(&err, 503, "unavailable", "the audit log is not available right now; try again");
    } else if (!json_is_object(j) || (f->status != 200 && f->status != 400))
        api_fail(&err, 503, "unavailable", "the audit log answered unexpectedly (status %ld)", f->status);
    else if (f->status == 400)
        api_fail(&err, 400, "invalid", "%s",
                 json_string_value(json_object_get(json_object_get(j, "error"), "message")) ?: "bad request");
    else {
        api_respond_json(f->req, f->route, f->started, 200, j);
        json_decref(j);
        return;
    }
    json_decref(j);
    api_respond_error(f->req, f->route, f->started, &err);
}

static void on_fetched(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        audit_fetch *f = H2O_STRUCT_FROM_MEMBER(audit_fetch, msg.link, messages->next);
        h2o_linklist_unlink(&f->msg.link);
        if (f->req) {
            f->anchor->f = NULL;
            respond(f);
        }
        free(f->body);
        free(f);
    }
}

/* The receiver of the calling loop thread (LOOP), created on first use; NULL
 * on allocation failure. */
static loop_receiver *this_loop_receiver(h2o_loop_t *loop)
{
    pthread_once(&receiver_once, receiver_key_init);
    loop_receiver *lr = pthread_getspecific(receiver_key);
    if (lr)
        return lr;
    lr = calloc(1, sizeof(*lr));
    if (!lr)
        return NULL;
    lr->queue = h2o_multithread_create_queue(loop);
    h2o_multithread_register_receiver(lr->queue, &lr->receiver, on_fetched);
    pthread_setspecific(receiver_key, lr);
    return lr;
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

/* /v1/audit/...: every read of the log (checkpoint, entries, proofs) is
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
    loop_receiver *lr = this_loop_receiver(r->req->conn->ctx->loop);
    audit_fetch *f = lr && pool_start(r->server->cfg->audit_socket) == 0 ? calloc(1, sizeof(*f)) : NULL;
    if (!f)
        return api_fail(err, 503, "unavailable", "the audit log is not available right now; try again");
    *f = (audit_fetch){.back = lr, .req = r->req, .route = r->route, .started = r->started};
    snprintf(f->path, sizeof(f->path), "%s", path);
    pthread_mutex_lock(&pool.lock);
    bool full = pool.pending >= FETCH_PENDING_MAX;
    if (!full) {
        fetch_anchor *a = h2o_mem_alloc_shared(&r->req->pool, sizeof(*a), anchor_dispose);
        a->f = f;
        f->anchor = a;
        pool.pending++;
        h2o_linklist_insert(&pool.jobs, &f->link);
        pthread_cond_signal(&pool.wake);
    }
    pthread_mutex_unlock(&pool.lock);
    if (full) {
        free(f);
        return api_fail(err, 503, "unavailable", "too many audit log reads in progress; try again");
    }
    return 0;
}
