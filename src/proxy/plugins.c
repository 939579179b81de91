/* The plugins stage (corridor.h; docs/plugins.md): after the decision, a
 * Service's plugins whose `when` holds run in their phases: request
 * headers and request body here, in the manifest's order; response headers
 * when the upstream answers (a prefilter); log when the request ends (its
 * pool's release). A DENY answers the status and reason the plugin gave;
 * a plugin that fails (it cannot be loaded or started, crashes, hangs past
 * its timeout, answers garbage) lets the request go on (failure: open) or
 * refuses it with 503 (closed). Credential headers (authorization, cookie,
 * proxy-authorization), the identity headers and an injected secret are never
 * shown to a plugin. Every call is counted
 * per plugin, phase and outcome (metrics.h). An out-of-process call of the
 * request phases runs on the plugin pool (offload.h), never on the loop;
 * one of the log phase runs there too, detached (nothing waits for it). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/offload.h"
#include "plugin/plugin.h"
#include "plugin/wire.h"
#include "proxy/corridor.h"

#define PROXY_PLUGINS_MAX 16 /* a Service's plugins (the manifest's cap) */

/* One entry of spec.plugins, built with the configuration snapshot. */
typedef struct proxy_plugin {
    char name[64];
    cloister_phase phase;
    cel_program *when; /* NULL: always */
    bool fail_open;
    plugin_instance *instance; /* NULL: ERROR says why it cannot run */
    char *error;
} proxy_plugin;

void proxy_plugins_clear(proxy_service *s)
{
    for (size_t i = 0; i < s->n_plugins; i++) {
        cel_program_free(s->plugins[i].when);
        plugin_instance_unref(s->plugins[i].instance);
        free(s->plugins[i].error);
    }
    free(s->plugins);
    s->plugins = NULL;
    s->n_plugins = 0;
    s->plugin_phases = 0;
}

int proxy_plugins_build(proxy_service *s, const json_t *plugins)
{
    size_t n = MIN(json_array_size(plugins), (size_t)PROXY_PLUGINS_MAX);
    if (n == 0)
        return 0;
    if (!(s->plugins = calloc(n, sizeof(*s->plugins))))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(plugins, i), *when = json_object_get(j, "when");
        proxy_plugin *p = &s->plugins[s->n_plugins++];
        snprintf(p->name, sizeof(p->name), "%s", json_string_value(json_object_get(j, "name")) ?: "");
        int phase = plugin_phase_from_name(json_string_value(json_object_get(j, "phase")));
        p->phase = phase < 0 || phase == CLOISTER_PHASE_EGRESS ? CLOISTER_PHASE_REQUEST_HEADERS : (cloister_phase)phase;
        p->fail_open = json_string_value(json_object_get(j, "failure")) &&
                       strcmp(json_string_value(json_object_get(j, "failure")), "open") == 0;
        s->plugin_phases |= 1u << p->phase;
        char err[PLUGIN_ERROR_MAX] = "";
        if (json_is_string(when) &&
            policy_condition_compile(json_string_value(when), json_string_length(when), &p->when, NULL) < 0) {
            snprintf(err, sizeof(err), "plugin %s: its when does not compile", p->name);
            p->when = NULL;
        }
        const json_t *timeout = json_object_get(j, "timeoutMs");
        json_int_t ms = json_is_integer(timeout) ? json_integer_value(timeout) : 200;
        if (ms < 1 || ms > PLUGIN_TIMEOUT_MS_MAX)
            ms = ms < 1 ? 1 : PLUGIN_TIMEOUT_MS_MAX;
        char *config = json_dumps(json_object_get(j, "config") ? json_object_get(j, "config") : json_object(),
                                  JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        if (!config)
            return -ENOMEM;
        if (!err[0])
            (void)plugin_instance_get(p->name, config, (uint32_t)ms, &p->instance, err,
                                      sizeof(err));
        free(config);
        if (err[0]) {
            log_fields(LOG_LEVEL_ERROR, "a Service's plugin cannot run; it fails as configured", "service", s->name,
                       "plugin", p->name, "error", err, NULL);
            if (!(p->error = strdup(err)))
                return -ENOMEM;
        }
    }
    return 0;
}

/* What the response and log phases need of the request, from its pool. */
typedef struct plugin_hooks {
    h2o_req_prefilter_t super; /* first: the prefilter is the filter */
    proxy_request *pr;
    unsigned selected; /* bit i: plugin i's when held */
} plugin_hooks;

/* Whether request header NAME of SVC is kept from plugins: credentials,
 * and what the rewrite stage adds for the upstream (the identity headers
 * with the signed assertion, the secret SVC injects), which the response
 * and log phases would otherwise see. */
static bool is_hidden(const proxy_service *svc, const h2o_iovec_t *name)
{
    return h2o_memis(name->base, name->len, H2O_STRLIT("authorization")) ||
           h2o_memis(name->base, name->len, H2O_STRLIT("cookie")) ||
           h2o_memis(name->base, name->len, H2O_STRLIT("proxy-authorization")) ||
           (name->len >= 11 && strncasecmp(name->base, "x-cloister-", 11) == 0) ||
           (svc->inject && h2o_memis(name->base, name->len, svc->inject_name.base, svc->inject_name.len));
}

/* Fills CALL's inputs for PHASE from PR (and the response HEADERS when in
 * a response phase). */
static void call_fill(plugin_call *call, proxy_request *pr, cloister_phase phase, const h2o_headers_t *headers,
                      char *status_text, size_t status_size)
{
    h2o_req_t *req = pr->req;
    plugin_call_init(call, phase);
    const resolved_token *token = proxy_request_token(pr);
    const json_t *user = token ? token->user : NULL;
    const char *user_name = json_string_value(json_object_get(json_object_get(user, "metadata"), "name"));
    const char *email = json_string_value(json_object_get(json_object_get(user, "spec"), "email"));
    plugin_call_prop(call, "request.id", pr->rec.id, strlen(pr->rec.id));
    plugin_call_prop(call, "request.method", req->method.base, req->method.len);
    plugin_call_prop(call, "request.path", pr->target, pr->path_len);
    plugin_call_prop(call, "request.host", req->authority.base, req->authority.len);
    plugin_call_prop(call, "source.ip", pr->rec.ip, strlen(pr->rec.ip));
    plugin_call_prop(call, "service.name", pr->svc->name, strlen(pr->svc->name));
    plugin_call_prop(call, "decision", proxy_decision_name(pr->rec.decision),
                     strlen(proxy_decision_name(pr->rec.decision)));
    if (user_name)
        plugin_call_prop(call, "user.name", user_name, strlen(user_name));
    if (email)
        plugin_call_prop(call, "user.email", email, strlen(email));
    if (phase == CLOISTER_PHASE_RESPONSE_HEADERS || phase == CLOISTER_PHASE_LOG) {
        snprintf(status_text, status_size, "%d", req->res.status);
        plugin_call_prop(call, "response.status", status_text, strlen(status_text));
    }
    if (phase == CLOISTER_PHASE_REQUEST_BODY)
        call->body = (cloister_str){req->entity.base, MIN(req->entity.len, (size_t)PLUGIN_BODY_MAX)};
    for (size_t i = 0; headers && i < headers->size; i++)
        if (headers == &req->res.headers || !is_hidden(pr->svc, headers->entries[i].name))
            plugin_call_header(call, headers->entries[i].name->base, headers->entries[i].name->len,
                               headers->entries[i].value.base, headers->entries[i].value.len);
}

/* Applies CALL's header changes to HEADERS (values copied into POOL). */
static void apply_ops(h2o_mem_pool_t *pool, h2o_headers_t *headers, const plugin_call *call)
{
    for (size_t i = 0; i < call->n_ops; i++) {
        const plugin_op *op = &call->ops[i];
        ssize_t at;
        while ((at = h2o_find_header_by_str(headers, op->name.ptr, op->name.len, -1)) >= 0)
            h2o_delete_header(headers, at);
        if (op->kind == PLUGIN_OP_SET) {
            h2o_iovec_t name = h2o_strdup(pool, op->name.ptr, op->name.len);
            h2o_iovec_t value = h2o_strdup(pool, op->value.ptr, op->value.len);
            h2o_add_header_by_str(pool, headers, name.base, name.len, 1, NULL, value.base, value.len);
        }
    }
}

/* How one plugin's call went, for the caller to act on. */
typedef enum verdict {
    VERDICT_CONTINUE,
    VERDICT_DENY,   /* CALL holds the status and reason */
    VERDICT_FAILED, /* failure closed: WHY says what failed */
} verdict;

/* Counts how plugin P's call CALL started at STARTED went (outcome O, WHY
 * when it failed) and logs a failure; returns what the caller does. */
static verdict judge(proxy_request *pr, const proxy_plugin *p, const plugin_call *call, plugin_outcome o,
                     uint64_t started, const char *why)
{
    bool denied = o == PLUGIN_OUTCOME_OK && call->action == CLOISTER_DENY;
    proxy_metrics_plugin(pr->t->settings->metrics, p->name, call->phase, o, denied, time_mono_ns() - started);
    if (o == PLUGIN_OUTCOME_OK)
        return denied ? VERDICT_DENY : VERDICT_CONTINUE;
    log_fields(LOG_LEVEL_WARN, p->fail_open ? "a plugin failed; the request goes on (failure: open)"
                                            : "a plugin failed; the request is refused (failure: closed)",
               "service", pr->svc->name, "plugin", p->name, "phase", plugin_phase_name(call->phase), "outcome",
               plugin_outcome_name(o), "error", why, "request_id", pr->rec.id, NULL);
    return p->fail_open ? VERDICT_CONTINUE : VERDICT_FAILED;
}

/* Runs plugin P of PR's Service in CALL's phase, on this thread, and
 * counts it. */
static verdict run_one(proxy_request *pr, const proxy_plugin *p, plugin_call *call, char *why, size_t why_size)
{
    uint64_t started = time_mono_ns();
    plugin_outcome o;
    if (!p->instance) {
        o = PLUGIN_OUTCOME_ERROR;
        snprintf(why, why_size, "%s", p->error ? p->error : "it cannot run");
    } else if (!plugin_instance_handles(p->instance, call->phase))
        return VERDICT_CONTINUE;
    else
        o = plugin_instance_run(p->instance, call, why, why_size);
    return judge(pr, p, call, o, started, why);
}

/* Answers PR's refusal by plugin P: its DENY (status, reason), or its
 * failure closed. Returns PROXY_DONE. */
static proxy_step refuse(proxy_request *pr, const proxy_plugin *p, verdict v, const plugin_call *call,
                         const char *why)
{
    if (v == VERDICT_DENY) {
        pr->rec.decision = PROXY_DECISION_DENY;
        return proxy_fail(pr, call->status ? call->status : 403, "forbidden", "denied by plugin %s: %s", p->name,
                          call->reason[0] ? call->reason : "no reason given");
    }
    pr->rec.decision = PROXY_DECISION_ERROR;
    return proxy_fail(pr, 503, "unavailable", "plugin %s failed (%s) and fails closed", p->name, why);
}

/* The response headers phase: header changes, or the response replaced
 * by a refusal. */
static void on_response(h2o_req_prefilter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    plugin_hooks *h = (plugin_hooks *)self;
    proxy_request *pr = h->pr;
    const proxy_service *svc = pr->svc;
    plugin_call *call = malloc(sizeof(*call));
    char status[8], why[PLUGIN_ERROR_MAX];
    for (size_t i = 0; call && i < svc->n_plugins; i++) {
        const proxy_plugin *p = &svc->plugins[i];
        if (p->phase != CLOISTER_PHASE_RESPONSE_HEADERS || !(h->selected & (1u << i)))
            continue;
        call_fill(call, pr, CLOISTER_PHASE_RESPONSE_HEADERS, &req->res.headers, status, sizeof(status));
        verdict v = run_one(pr, p, call, why, sizeof(why));
        if (v == VERDICT_CONTINUE) {
            apply_ops(&req->pool, &req->res.headers, call);
            continue;
        }
        /* the upstream's answer is not sent: the refusal replaces its status and headers */
        char message[PLUGIN_REASON_MAX + 200];
        snprintf(message, sizeof(message), v == VERDICT_DENY ? "denied by plugin %s: %s" : "plugin %s failed (%s) and fails closed",
                 p->name, v == VERDICT_DENY ? (call->reason[0] ? call->reason : "no reason given") : why);
        pr->rec.decision = v == VERDICT_DENY ? PROXY_DECISION_DENY : PROXY_DECISION_ERROR;
        req->res.headers = (h2o_headers_t){NULL};
        h2o_iovec_t body = proxy_failure_prepare(pr, v == VERDICT_DENY ? (call->status ? call->status : 403) : 503,
                                                 v == VERDICT_DENY ? "forbidden" : "unavailable", message);
        slot = proxy_swap_body(req, slot, body);
        break;
    }
    free(call);
    h2o_setup_next_prefilter(self, req, slot);
}

/* An out-of-process call made on the plugin pool (offload.h): the frame
 * is encoded on the loop, so the worker reads nothing of the request; the
 * answer is decoded and re-checked by the worker. Embedded first in the
 * jobs of the request phases and of the log phase. */
typedef struct pool_call {
    offload_job super;
    plugin_instance *instance; /* a reference: the snapshot may go while the call runs */
    uint64_t started;
    strbuf frame;
    plugin_outcome outcome;
    char why[PLUGIN_ERROR_MAX];
    plugin_call call; /* the answer */
} pool_call;

static void pool_call_work(offload_job *job)
{
    pool_call *c = (pool_call *)job;
    c->outcome = plugin_instance_run_frame(c->instance, c->frame.data, c->frame.len, &c->call, c->why,
                                           sizeof(c->why));
}

/* Encodes CALL of plugin P into C and hands C to the plugin pool for REQ
 * (NULL: detached), DONE answering on PR's loop. Returns 0 (C is the
 * pool's until DONE), or a negative errno with C->why filled (C is still
 * the caller's: pool_call_release()). */
static int pool_call_submit(pool_call *c, proxy_request *pr, const proxy_plugin *p, const plugin_call *call,
                            h2o_req_t *req, offload_done_cb done)
{
    c->super = (offload_job){.work = pool_call_work, .done = done};
    c->started = time_mono_ns();
    c->outcome = PLUGIN_OUTCOME_ERROR; /* until the work runs (skipped when the request or the proxy goes first) */
    snprintf(c->why, sizeof(c->why), "not run: the request went away or the proxy was stopping");
    plugin_call_init(&c->call, call->phase);
    strbuf_init(&c->frame, PLUGIN_FRAME_MAX + 4);
    c->instance = plugin_instance_ref(p->instance);
    int r = plugin_wire_call(&c->frame, call);
    if (r < 0) {
        snprintf(c->why, sizeof(c->why), "the call does not fit the protocol: %s", strerror(-r));
        return r;
    }
    offload_pool *pool = pr->t->settings->plugin_pool;
    r = pool ? offload_submit(pool, pr->t->offload, req, &c->super) : -ESHUTDOWN;
    if (r < 0)
        snprintf(c->why, sizeof(c->why), "the proxy cannot take another plugin call now (%s)", strerror(-r));
    return r;
}

/* Releases what C holds (not C itself). */
static void pool_call_release(pool_call *c)
{
    plugin_instance_unref(c->instance);
    strbuf_free(&c->frame);
}

/* An out-of-process call of the log phase: no request waits for its
 * answer (the request is being released), so it runs detached and only its
 * outcome is counted, and a failure logged, when it comes back. Holds
 * copies of the names it reports. */
typedef struct log_job {
    pool_call c; /* first */
    proxy_metrics *metrics;
    char plugin[64], service[128], request_id[PROXY_REQUEST_ID_LEN + 1];
} log_job;

/* Counts J's call as it ended, logs a failure (nothing is left to refuse),
 * and frees J. */
static void log_job_end(log_job *j)
{
    const pool_call *c = &j->c;
    bool denied = c->outcome == PLUGIN_OUTCOME_OK && c->call.action == CLOISTER_DENY;
    proxy_metrics_plugin(j->metrics, j->plugin, CLOISTER_PHASE_LOG, c->outcome, denied, time_mono_ns() - c->started);
    if (c->outcome != PLUGIN_OUTCOME_OK)
        log_fields(LOG_LEVEL_WARN, "a plugin failed in the log phase (the request was answered)", "service",
                   j->service, "plugin", j->plugin, "outcome", plugin_outcome_name(c->outcome), "error", c->why,
                   "request_id", j->request_id, NULL);
    pool_call_release(&j->c);
    free(j);
}

static void log_done(offload_job *job, h2o_req_t *req)
{
    (void)req; /* detached: always NULL */
    log_job_end((log_job *)job);
}

/* Hands plugin P's log call CALL (filled) for PR to the plugin pool; a call
 * that cannot be handed over is counted as an error there and then. */
static void submit_log(proxy_request *pr, const proxy_plugin *p, const plugin_call *call)
{
    log_job *j = malloc(sizeof(*j));
    if (!j) {
        log_fields(LOG_LEVEL_WARN, "a plugin's log call was dropped: out of memory", "plugin", p->name, NULL);
        return;
    }
    j->metrics = pr->t->settings->metrics;
    snprintf(j->plugin, sizeof(j->plugin), "%s", p->name);
    snprintf(j->service, sizeof(j->service), "%s", pr->svc->name);
    snprintf(j->request_id, sizeof(j->request_id), "%s", pr->rec.id);
    if (pool_call_submit(&j->c, pr, p, call, NULL, log_done) < 0)
        log_job_end(j);
}

/* The log phase, when the request's pool is released (before its access
 * record: PR is still whole): in-process plugins here, out-of-process ones
 * handed to the plugin pool. */
static void on_log(void *arg)
{
    plugin_hooks *h = arg;
    proxy_request *pr = h->pr;
    const proxy_service *svc = pr->svc;
    plugin_call *call = malloc(sizeof(*call));
    char status[8], why[PLUGIN_ERROR_MAX];
    for (size_t i = 0; call && i < svc->n_plugins; i++) {
        const proxy_plugin *p = &svc->plugins[i];
        if (p->phase != CLOISTER_PHASE_LOG || !(h->selected & (1u << i)))
            continue;
        call_fill(call, pr, CLOISTER_PHASE_LOG, &pr->req->headers, status, sizeof(status));
        bool sandboxed = p->instance && !plugin_instance_in_process(p->instance);
        if (sandboxed && plugin_instance_handles(p->instance, CLOISTER_PHASE_LOG))
            submit_log(pr, p, call);
        else
            (void)run_one(pr, p, call, why, sizeof(why)); /* nothing is left to refuse */
    }
    free(call);
}

/* Which of PR's plugins run: those without a `when` and those whose `when`
 * holds on the request's policy context (an error: it does not hold).
 * Returns the bit set, or -ENOMEM. */
static long select_plugins(proxy_request *pr)
{
    const proxy_service *svc = pr->svc;
    unsigned selected = 0;
    bool context = false;
    policy_request p;
    for (size_t i = 0; i < svc->n_plugins; i++) {
        const proxy_plugin *pl = &svc->plugins[i];
        bool holds = true;
        if (pl->when) {
            if (!context && proxy_policy_request(pr, &p) < 0)
                return -ENOMEM;
            context = true;
            cel_arena_reset(pr->t->scratch);
            if (policy_condition_holds(pl->when, &p, pr->t->scratch, &holds) < 0)
                holds = false;
        }
        if (holds)
            selected |= 1u << i;
    }
    return selected;
}

/* An out-of-process call of a request phase: the loop goes on with other
 * requests meanwhile, and the request goes on from the next plugin in
 * plugin_done. */
typedef struct plugin_job {
    pool_call c; /* first */
    proxy_request *pr;
    unsigned selected;
    cloister_phase phase;
    size_t index; /* the plugin's, in the Service's list */
} plugin_job;

static proxy_step run_request_phases(proxy_request *pr, unsigned selected, cloister_phase phase, size_t index);

/* Back on the loop: acts on the answer and goes on with the request (or
 * only frees JOB when the request went away). */
static void plugin_done(offload_job *job, h2o_req_t *req)
{
    plugin_job *j = (plugin_job *)job;
    if (req) {
        proxy_request *pr = j->pr;
        const proxy_plugin *p = &pr->svc->plugins[j->index];
        verdict v = judge(pr, p, &j->c.call, j->c.outcome, j->c.started, j->c.why);
        if (v != VERDICT_CONTINUE)
            (void)refuse(pr, p, v, &j->c.call, j->c.why);
        else {
            apply_ops(&req->pool, &req->headers, &j->c.call);
            if (run_request_phases(pr, j->selected, j->phase, j->index + 1) == PROXY_NEXT)
                proxy_continue_after(pr, proxy_stage_plugins);
        }
    }
    pool_call_release(&j->c);
    free(j);
}

/* Hands plugin INDEX's call in PHASE (CALL filled) to the plugin pool.
 * Returns 0 (the request waits for plugin_done) or a negative errno with
 * WHY filled (the call failed: the caller judges it). */
static int submit(proxy_request *pr, unsigned selected, size_t index, const plugin_call *call, char *why,
                  size_t why_size)
{
    plugin_job *j = malloc(sizeof(*j));
    if (!j) {
        snprintf(why, why_size, "out of memory");
        return -ENOMEM;
    }
    j->pr = pr;
    j->selected = selected;
    j->phase = call->phase;
    j->index = index;
    int r = pool_call_submit(&j->c, pr, &pr->svc->plugins[index], call, pr->req, plugin_done);
    if (r < 0) {
        snprintf(why, why_size, "%s", j->c.why);
        pool_call_release(&j->c);
        free(j);
    }
    return r;
}

/* Runs PR's request phases from plugin INDEX of PHASE on: in-process
 * plugins here, an out-of-process one on the plugin pool. Returns
 * PROXY_NEXT when all went on, PROXY_DONE when refused or waiting. */
static proxy_step run_request_phases(proxy_request *pr, unsigned selected, cloister_phase phase, size_t index)
{
    const proxy_service *svc = pr->svc;
    h2o_req_t *req = pr->req;
    plugin_call *call = malloc(sizeof(*call));
    if (!call) {
        pr->rec.decision = PROXY_DECISION_ERROR;
        return proxy_fail(pr, 503, "unavailable", "out of memory");
    }
    char why[PLUGIN_ERROR_MAX];
    proxy_step step = PROXY_NEXT;
    for (; phase <= CLOISTER_PHASE_REQUEST_BODY && step == PROXY_NEXT; phase++, index = 0)
        for (size_t i = index; i < svc->n_plugins && step == PROXY_NEXT; i++) {
            const proxy_plugin *p = &svc->plugins[i];
            if (p->phase != phase || !(selected & (1u << i)))
                continue;
            call_fill(call, pr, phase, &req->headers, NULL, 0);
            verdict v;
            if (p->instance && !plugin_instance_in_process(p->instance)) {
                uint64_t started = time_mono_ns();
                if (submit(pr, selected, i, call, why, sizeof(why)) == 0) {
                    step = PROXY_DONE;
                    break;
                }
                plugin_call_clear_answer(call);
                v = judge(pr, p, call, PLUGIN_OUTCOME_ERROR, started, why);
            } else
                v = run_one(pr, p, call, why, sizeof(why));
            if (v == VERDICT_CONTINUE)
                apply_ops(&req->pool, &req->headers, call);
            else
                step = refuse(pr, p, v, call, why);
        }
    free(call);
    return step;
}

proxy_step proxy_stage_plugins(proxy_request *pr)
{
    const proxy_service *svc = pr->svc;
    if (!svc->n_plugins)
        return PROXY_NEXT;
    long selected = select_plugins(pr);
    if (selected < 0) {
        pr->rec.decision = PROXY_DECISION_ERROR;
        return proxy_fail(pr, 503, "unavailable", "the plugins of service %s could not be selected: out of memory",
                          svc->name);
    }
    if (!selected)
        return PROXY_NEXT;
    h2o_req_t *req = pr->req;
    if (svc->plugin_phases & (1u << CLOISTER_PHASE_LOG)) {
        plugin_hooks *h = h2o_mem_alloc_shared(&req->pool, sizeof(*h), on_log);
        *h = (plugin_hooks){.pr = pr, .selected = (unsigned)selected};
    }
    if (svc->plugin_phases & (1u << CLOISTER_PHASE_RESPONSE_HEADERS)) {
        plugin_hooks *f = (plugin_hooks *)h2o_add_prefilter(req, sizeof(*f)); /* keeps its link to the next */
        f->super.on_setup_ostream = on_response;
        f->pr = pr;
        f->selected = (unsigned)selected;
    }
    unsigned now = (1u << CLOISTER_PHASE_REQUEST_HEADERS) | (1u << CLOISTER_PHASE_REQUEST_BODY);
    if (!(svc->plugin_phases & now))
        return PROXY_NEXT;
    return run_request_phases(pr, (unsigned)selected, CLOISTER_PHASE_REQUEST_HEADERS, 0);
}
