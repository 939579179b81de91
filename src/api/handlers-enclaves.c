/* GET /v1/enclaves/{name}/logs: the recent stdout/stderr of an Enclave's
 * replicas, kept by the runner (runner/output.h), once or followed as
 * Server-Sent Events (docs/enclaves.md, "Logs"). Decided as `logs` on
 * Enclave/{name}: seeing an Enclave (`get`) does not show what its workload
 * prints.
 *
 * The event loops never wait on the runner: each read is a job on the
 * API's pool for local calls (offload.h), answered on the loop. A cursor
 * names the runner's run ("<boot>.<seq>"): after the runner restarted, a
 * reader's cursor starts again from its oldest line. */
#include "api/handlers-enclaves.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/handlers-policy.h"
#include "api/sse.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "controller/runner-client.h"
#include "resource/resource.h"

#define LOGS_TAIL_DEFAULT 100
#define LOGS_TAIL_MAX 1000          /* the runner's page */
#define LOGS_FOLLOW_EVERY_NS (500 * NSEC_PER_MSEC) /* between a follower's reads of the runner */
#define LOGS_BUFFER_MAX (4 * 1024 * 1024)        /* a follower's unsent bytes, as a watch's */
#define LOGS_HEARTBEAT_NS (15 * NSEC_PER_SEC)
#define LOGS_CURSOR_MAX 48

/* What a read asks the runner and what it answered. */
typedef struct logs_fetch {
    offload_job super;
    const char *socket; /* the server's configuration */
    char query[256];
    char boot[17];      /* the run the cursor belongs to ("" : none) */
    json_t *answer;     /* the runner's, checked */
    int error;
    char why[RUNNER_WHY_MAX];
    /* a one-off read */
    api_route route;
    uint64_t started;
    /* a follower's read: its stream (valid while the request is) */
    struct logs_stream *stream;
} logs_fetch;

/* Each worker's client of the runner, kept between reads. */
static pthread_key_t client_key;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_free(void *c)
{
    runner_client_free(c);
}

static void client_key_init(void)
{
    pthread_key_create(&client_key, client_free);
}

/* Asks the runner; when the cursor's run is not the runner's any more,
 * asks again from the start of the current one. */
static void fetch_work(offload_job *j)
{
    logs_fetch *f = (logs_fetch *)j;
    pthread_once(&client_once, client_key_init);
    runner_client *c = pthread_getspecific(client_key);
    if (!c) {
        if ((f->error = runner_client_new(f->socket, &c)) < 0) {
            snprintf(f->why, sizeof(f->why), "%s", strerror(-f->error));
            return;
        }
        pthread_setspecific(client_key, c);
    }
    f->error = runner_client_logs(c, f->query, &f->answer, f->why, sizeof(f->why));
    const char *boot = json_string_value(json_object_get(f->answer, "boot"));
    char *after = strstr(f->query, "after=");
    if (f->error == 0 && f->boot[0] && after && strcmp(boot, f->boot) != 0) {
        snprintf(after, sizeof(f->query) - (size_t)(after - f->query), "after=0"); /* the runner restarted: its lines are all new */
        json_decref(TAKE_PTR(f->answer));
        f->error = runner_client_logs(c, f->query, &f->answer, f->why, sizeof(f->why));
    }
}

/* The lines of a runner answer as the API shows them. New reference. */
static json_t *public_lines(const json_t *answer)
{
    json_t *out = json_array();
    size_t i;
    const json_t *l;
    json_array_foreach(json_object_get(answer, "lines"), i, l)
        json_array_append_new(out, json_pack("{s:O, s:O, s:O, s:O}", "time", json_object_get(l, "time"), "replica",
                                             json_object_get(l, "replica"), "stream", json_object_get(l, "stream"),
                                             "text", json_object_get(l, "text")));
    return out;
}

/* The cursor after ANSWER into OUT: "<boot>.<next>". */
static void cursor_of(const json_t *answer, char out[LOGS_CURSOR_MAX])
{
    snprintf(out, LOGS_CURSOR_MAX, "%s.%lld", json_string_value(json_object_get(answer, "boot")),
             (long long)json_integer_value(json_object_get(answer, "next")));
}

static void fetch_done(offload_job *j, h2o_req_t *req)
{
    logs_fetch *f = (logs_fetch *)j;
    if (req) {
        if (f->error < 0) {
            api_error err;
            log_fields(LOG_LEVEL_WARN, "cannot read enclave logs from the runner", "error", f->why, NULL);
            api_fail(&err, 503, "unavailable", "the runner cannot be asked for logs right now (%s); try again",
                     f->why);
            api_respond_error(req, f->route, f->started, &err);
        } else {
            char cursor[LOGS_CURSOR_MAX];
            cursor_of(f->answer, cursor);
            json_t *body = json_pack("{s:o, s:s}", "lines", public_lines(f->answer), "cursor", cursor);
            api_respond_json(req, f->route, f->started, 200, body);
            json_decref(body);
        }
    }
    json_decref(f->answer);
    free(f);
}

/* Parses a cursor "<16 hex>.<decimal>" into BOOT and *RET_AFTER; false
 * when it is not one. */
static bool cursor_parse(const char *s, char boot[17], uint64_t *ret_after)
{
    const char *dot = strchr(s, '.');
    if (!dot || dot - s != 16 || !dot[1] || strlen(dot + 1) > 19)
        return false;
    uint64_t v = 0;
    for (const char *p = dot + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    for (int i = 0; i < 16; i++)
        if (!strchr("0123456789abcdef", s[i]))
            return false;
    memcpy(boot, s, 16);
    boot[16] = 0;
    *ret_after = v;
    return true;
}

/* ---- following (Server-Sent Events) ---- */

typedef struct logs_stream {
    api_sse super;
    const char *socket;
    char enclave[64], replica[64]; /* replica "" for all */
    char boot[17];
    uint64_t after;
    uint64_t tail;   /* lines of history the first read asks for */
    bool first;      /* the first read is still to come (unless resumed at a cursor) */
    bool fetching;
    uint64_t fetched_at;
} logs_stream;

/* The runner query of a read of ENCLAVE (REPLICA, "" for all): with
 * TAIL, its last N lines; else the lines after N ("after=" comes last:
 * fetch_work() rewrites it). */
static void logs_query(char *out, size_t size, const char *enclave, const char *replica, bool tail, uint64_t n)
{
    int w = snprintf(out, size, "enclave=%s", enclave);
    if (replica[0])
        w += snprintf(out + w, size - (size_t)w, "&replica=%s", replica);
    if (tail)
        snprintf(out + w, size - (size_t)w, "&tail=1&limit=%llu", (unsigned long long)n);
    else
        snprintf(out + w, size - (size_t)w, "&limit=%d&after=%llu", LOGS_TAIL_MAX, (unsigned long long)n);
}

/* Queues a follower's lines as `line` events (id: the runner's number of
 * the line; data: the line as GET shows it), and moves its cursor. */
static void stream_done(offload_job *j, h2o_req_t *req)
{
    logs_fetch *f = (logs_fetch *)j;
    logs_stream *ls = req ? f->stream : NULL;
    if (ls) {
        ls->fetching = false;
        if (f->error == 0 && !ls->super.finishing) {
            size_t i;
            json_t *l;
            json_auto_t *lines = public_lines(f->answer);
            const json_t *raw = json_object_get(f->answer, "lines");
            json_array_foreach(lines, i, l)
            {
                int64_t seq = json_integer_value(json_object_get(json_array_get(raw, i), "seq"));
                if (api_sse_queue_event(&ls->super, "line", seq, l) < 0) {
                    api_sse_fail(&ls->super, "too_large", "the client does not read the logs fast enough (more "
                                                          "than 4 MiB waits to be sent); follow again");
                    break;
                }
            }
            snprintf(ls->boot, sizeof(ls->boot), "%s", json_string_value(json_object_get(f->answer, "boot")));
            ls->after = (uint64_t)json_integer_value(json_object_get(f->answer, "next"));
            ls->first = false;
        }
    }
    json_decref(f->answer);
    free(f);
}

/* A poll tick: at most every LOGS_FOLLOW_EVERY_NS, one read of the runner
 * at a time. */
static void stream_poll(api_sse *s)
{
    logs_stream *ls = (logs_stream *)s;
    uint64_t now = time_mono_ns();
    if (ls->fetching || now - ls->fetched_at < LOGS_FOLLOW_EVERY_NS)
        return;
    logs_fetch *f = calloc(1, sizeof(*f));
    if (!f)
        return;
    *f = (logs_fetch){.super = {.work = fetch_work, .done = stream_done}, .socket = ls->socket, .stream = ls};
    logs_query(f->query, sizeof(f->query), ls->enclave, ls->replica, ls->first, ls->first ? ls->tail : ls->after);
    memcpy(f->boot, ls->boot, sizeof(f->boot));
    if (offload_submit(s->thread->server->local, s->thread->offload, s->req, &f->super) < 0) {
        free(f); /* the pool is busy: the next tick tries again */
        return;
    }
    ls->fetching = true;
    ls->fetched_at = now;
}

/* Re-decides the stream: a caller who lost `logs` on the Enclave (or the
 * session) gets an ERROR event and the end. */
static void stream_recheck(api_sse *s)
{
    logs_stream *ls = (logs_stream *)s;
    api_error err;
    if (api_sse_redecide(s, "logs", "Enclave", ls->enclave, &err) < 0)
        api_sse_fail(s, err.code, err.message);
}

static const api_sse_class logs_stream_class = {
    .size = sizeof(logs_stream),
    .route = ROUTE_ENCLAVE_LOGS,
    .buffer_max = LOGS_BUFFER_MAX,
    .heartbeat_ns = LOGS_HEARTBEAT_NS,
    .heartbeat = ": heartbeat\n\n",
    .poll = stream_poll,
    .recheck = stream_recheck,
};

/* ---- the endpoint ---- */

/* Whether REPLICA names a replica of ENCLAVE: "<enclave>-<number>". */
static bool replica_of(const char *replica, const char *enclave)
{
    size_t n = strlen(enclave);
    if (strncmp(replica, enclave, n) != 0 || replica[n] != '-' || !replica[n + 1])
        return false;
    for (const char *p = replica + n + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

int api_handle_enclave_logs(api_request *r, const char *name, api_error *err)
{
    api_server *srv = r->server;
    h2o_req_t *req = r->req;
    if (api_authorize(srv, req, r->caller, "logs", "Enclave", name, err) < 0)
        return -1;
    if (!api_method_is(req, "GET")) {
        api_method_not_allowed(req, r->route, r->started, "GET");
        return 0;
    }
    char replica[64] = "", cursor[LOGS_CURSOR_MAX] = "", boot[17] = "";
    uint64_t tail = LOGS_TAIL_DEFAULT, follow = 0, after = 0;
    if (api_query_param(req, "replica", replica, sizeof(replica)) && !replica_of(replica, name))
        return api_fail(err, 400, "invalid", "replica must be one of the enclave's, %s-<n>", name);
    if (api_query_u64(req, "tail", LOGS_TAIL_MAX, &tail, err) < 0 || api_query_u64(req, "follow", 1, &follow, err) < 0)
        return -1;
    bool resume = api_query_param(req, "after", cursor, sizeof(cursor));
    if (resume && !cursor_parse(cursor, boot, &after))
        return api_fail(err, 400, "invalid", "after must be the cursor of an earlier answer (\"<boot>.<n>\")");
    json_auto_t *doc = NULL;
    int e = store_get(srv->cfg->store, "Enclave", name, &doc);
    if (e < 0)
        return api_fail_store(err, e, "Enclave", name);
    if (!srv->cfg->runner_socket)
        return api_fail(err, 503, "unavailable", "this API has no runner: enclaves do not run here");
    if (follow) {
        logs_stream *ls = (logs_stream *)api_sse_new(req, r->started, &logs_stream_class, r->caller->user, err);
        if (!ls)
            return -1;
        ls->socket = srv->cfg->runner_socket;
        snprintf(ls->enclave, sizeof(ls->enclave), "%s", name);
        snprintf(ls->replica, sizeof(ls->replica), "%s", replica);
        memcpy(ls->boot, boot, sizeof(boot));
        ls->after = after;
        ls->tail = tail;
        ls->first = !resume;
        api_sse_queue_text(&ls->super, ": following\n\n");
        api_sse_start(&ls->super);
        return 0;
    }
    logs_fetch *f = calloc(1, sizeof(*f));
    if (!f)
        return api_fail(err, 500, "internal", "out of memory");
    *f = (logs_fetch){.super = {.work = fetch_work, .done = fetch_done}, .socket = srv->cfg->runner_socket,
                      .route = r->route, .started = r->started};
    logs_query(f->query, sizeof(f->query), name, replica, !resume, resume ? after : tail);
    memcpy(f->boot, boot, sizeof(boot));
    if (api_offload(r, srv->local, &f->super, err) < 0) {
        free(f);
        return -1;
    }
    return 0;
}
