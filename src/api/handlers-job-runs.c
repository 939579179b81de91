/* A Job's runs (see handlers-job-runs.h). */
#include "api/handlers-job-runs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/handlers-datasets.h"
#include "api/handlers-jobs.h"
#include "api/handlers-kms.h"
#include "api/handlers-policy.h"
#include "api/notify.h"
#include "audit/event.h"
#include "auth/bootstrap-names.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "blob/blob.h"
#include "controller/runner-client.h"
#include "job/digest.h"
#include "kms/client.h"
#include "resource/resource.h"

/* an input's age header, sent for the workspace key's unwrap (KMS_JOB_HEADER_MAX):
 * 16 of them fit the kms role's body cap */
#define HEADER_MAX (8 * 1024)
#define STATUS_RETRIES 8         /* compare-and-swap attempts on a Job's status */
#define RECEIPT_TIMEOUT_MS 5000
/* what the engine is given (the manifest's limits) */
#define ENGINE_MEMORY_MIB 1024
#define ENGINE_SECONDS_DEFAULT 600 /* CLOISTER_JOB_SECONDS changes it (1 to 86400) */
#define ENGINE_ROWS 1000000
#define SANDBOX_PIDS 64
/* the engine's address space (the agent applies it to the engine only):
 * SQLite's heap limit (limits.memoryMiB) and room for the engine's own buffers */
#define SANDBOX_MEMORY_MIB (ENGINE_MEMORY_MIB + 512)

static char *runner_socket, *engine_bundle;
static long engine_seconds = ENGINE_SECONDS_DEFAULT;

int api_job_runs_init(const char *socket, const char *bundle)
{
    const char *seconds = getenv("CLOISTER_JOB_SECONDS");
    char *end;
    long v = seconds ? strtol(seconds, &end, 10) : 0;
    if (seconds && *seconds && !*end && v >= 1 && v <= 86400)
        engine_seconds = v;
    runner_socket = socket ? strdup(socket) : NULL;
    engine_bundle = bundle && *bundle ? strdup(bundle) : NULL;
    return (socket && !runner_socket) || (bundle && *bundle && !engine_bundle) ? -ENOMEM : 0;
}

void api_job_runs_done(void)
{
    free(runner_socket);
    free(engine_bundle);
    runner_socket = engine_bundle = NULL;
}

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

static void now_rfc3339(char *out, size_t size)
{
    time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), out, size);
}

/* The users a run concerns: its author, its required approvers and its
 * recipients, into USERS (at most MAX); their count. */
static size_t concerned(const json_t *job, const char **users, size_t max)
{
    size_t n = 0, i;
    const json_t *u;
    if (str_at(job, "status", "author") && n < max)
        users[n++] = str_at(job, "status", "author");
    json_array_foreach(json_object_get(json_object_get(job, "status"), "requiredApprovers"), i, u) if (
        json_is_string(u) && n < max) users[n++] = json_string_value(u);
    json_array_foreach(json_object_get(json_object_get(job, "spec"), "recipients"), i, u) if (
        json_is_string(u) && n < max) users[n++] = json_string_value(u);
    return n;
}

/* Notifies the users JOB concerns of TYPE with DETAILS (stolen). */
static void notify_job(api_server *srv, const json_t *job, const char *type, json_t *details)
{
    const char *users[NOTIFY_USERS_MAX];
    size_t n = concerned(job, users, ELEMENTSOF(users));
    int r = notify_users(srv, users, n, type, "Job", doc_name(job), details);
    if (r < 0 && r != -ESHUTDOWN)
        log_fields(LOG_LEVEL_WARN, "cannot notify about a job run", "job", doc_name(job), "type", type, "error",
                   strerror(-r), NULL);
}

/* The run numbered N of STATUS, or NULL. */
static json_t *run_of(const json_t *status, json_int_t n)
{
    size_t i;
    json_t *run;
    json_array_foreach(json_object_get(status, "runs"), i, run) if (json_integer_value(json_object_get(run, "n")) == n)
        return run;
    return NULL;
}

/* How many runs of STATUS's current digest had their keys released (the
 * kms role counts its own, per digest too); runs of an earlier digest are
 * history. */
static json_int_t runs_released(const json_t *status)
{
    const char *digest = json_string_value(json_object_get(status, "digest"));
    json_int_t n = 0;
    size_t i;
    json_t *run;
    json_array_foreach(json_object_get(status, "runs"), i, run) n +=
        json_is_true(json_object_get(run, "released")) && digest &&
        strcmp(json_string_value(json_object_get(run, "digest")) ?: "", digest) == 0;
    return n;
}

/* Changes Job NAME's status with EDIT (which returns 0 to write, or -1 with
 * ERR to give up) under compare-and-swap, retried when the Job changed
 * meanwhile; the stored Job into *RET (may be NULL). Blocking: a worker only. */
typedef int (*status_edit_fn)(json_t *job, json_t *status, void *userdata, api_error *err);
static int edit_status(store *s, const char *name, status_edit_fn edit, void *userdata, json_t **ret, api_error *err)
{
    for (int attempt = 0; attempt < STATUS_RETRIES; attempt++) {
        json_auto_t *job = NULL;
        int e = store_get(s, "Job", name, &job);
        if (e < 0)
            return api_fail_store(err, e, "Job", name);
        json_auto_t *status = json_deep_copy(json_object_get(job, "status"));
        if (!status)
            return api_fail(err, 500, "internal", "out of memory");
        if (edit(job, status, userdata, err) < 0)
            return -1;
        const char *rv = str_at(job, "metadata", "resourceVersion");
        store_op op = {.type = STORE_REPLACE, .kind = "Job", .name = name, .doc = job, .status = status,
                       .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
        store_txn txn = {.ops = &op, .n_ops = 1};
        e = store_write(s, &txn);
        json_t *result = e == 0 ? json_incref(op.result) : NULL;
        store_txn_clear(&txn);
        if (e == 0) {
            if (ret)
                *ret = result;
            else
                json_decref(result);
            return 0;
        }
        if (e != -ESTALE && e != -EAGAIN && e != -EBUSY)
            return api_fail_store(err, e, "Job", name);
    }
    return api_fail(err, 409, "conflict", "Job %s keeps changing; try again", name);
}

/* ---- GET /v1/jobs/engine ---- */

void api_handle_job_engine(api_server *srv, h2o_req_t *req, uint64_t started)
{
    api_error err;
    caller c = {0};
    char pcr0[API_JOB_PCR0_HEX_LEN + 1];
    if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
        api_method_not_allowed(req, ROUTE_JOB_ENGINE, started, "GET");
    else if (api_authenticate(srv, req, &c, &err) < 0) {
        api_report_refusal(req, &c, &err);
        api_respond_error(req, ROUTE_JOB_ENGINE, started, &err);
    } else if (api_authorize(srv, req, &c, "get", "JobEngine", "engine", &err) < 0 ||
               api_job_engine_pcr0(srv, pcr0, &err) < 0)
        api_respond_error(req, ROUTE_JOB_ENGINE, started, &err);
    else {
        json_auto_t *body = json_pack("{s:s}", "pcr0", pcr0);
        api_respond_json(req, ROUTE_JOB_ENGINE, started, 200, body);
    }
    caller_clear(&c);
}

/* ---- POST /v1/jobs/{name}/runs ---- */

/* Whether every required approver's approval in STATUS verifies, now,
 * against their registered key over the digest; the names of those
 * missing into MISSING ("" when none). */
static void check_approvals(store *s, const json_t *status, char *missing, size_t size)
{
    uint8_t digest[JOB_DIGEST_SIZE];
    const char *hex = json_string_value(json_object_get(status, "digest"));
    bool have_digest = hex && strlen(hex) == 64 && hex_decode(hex, 64, digest, sizeof(digest)) == 0;
    missing[0] = 0;
    size_t i, j;
    const json_t *u, *a;
    json_array_foreach(json_object_get(status, "requiredApprovers"), i, u)
    {
        const char *user = json_string_value(u);
        bool ok = false;
        json_auto_t *user_doc = NULL;
        const char *key = user && store_get(s, "User", user, &user_doc) == 0
                              ? json_string_value(json_object_get(
                                    json_object_get(json_object_get(user_doc, "status"), "publicKeys"), "approval"))
                              : NULL;
        json_array_foreach(json_object_get(status, "approvals"), j, a)
        {
            const char *by = json_string_value(json_object_get(a, "user"));
            const char *sig_b64 = json_string_value(json_object_get(a, "signature"));
            uint8_t pub[JOB_ED25519_PUBLIC_SIZE + 2], sig[JOB_ED25519_SIGNATURE_SIZE + 2];
            if (!ok && have_digest && by && user && key && sig_b64 && strcmp(by, user) == 0 &&
                base64_decode(key, strlen(key), pub, sizeof(pub), false) == JOB_ED25519_PUBLIC_SIZE &&
                base64_decode(sig_b64, strlen(sig_b64), sig, sizeof(sig), false) == JOB_ED25519_SIGNATURE_SIZE)
                ok = job_approval_verify(digest, pub, sig);
        }
        if (!ok) {
            size_t l = strlen(missing);
            snprintf(missing + l, size - l, "%s%s", l ? ", " : "", user ? user : "?");
        }
    }
}

/* Whether the workspace key JOB was proposed under (status.workspaceKey)
 * is gone: its Workspace was deleted (the key destroyed with it) or made
 * again (a new key; the inputs' stanzas name the old one). Why into WHY. */
static bool workspace_key_gone(store *s, const json_t *job, char *why, size_t size)
{
    const char *ws = str_at(job, "spec", "workspace"), *key = str_at(job, "status", "workspaceKey");
    json_auto_t *w = NULL;
    int e = ws ? store_get(s, "Workspace", ws, &w) : -ENOENT;
    const char *now = str_at(w, "status", "key");
    if (e == -ENOENT)
        snprintf(why, size,
                 "Job %s cannot run: workspace %s was deleted and its key %s destroyed with it, so no input of the job "
                 "can be opened any more (delete the Job)",
                 doc_name(job), ws ? ws : "?", key ? key : "(unrecorded)");
    else if (e == 0 && key && now && strcmp(key, now) != 0)
        snprintf(why, size,
                 "Job %s cannot run: its inputs were encrypted to workspace key %s, destroyed when workspace %s was "
                 "deleted; the workspace made again under that name has another key (%s): upload the datasets again "
                 "and propose a new Job",
                 doc_name(job), key, ws, now);
    else
        return false;
    return true;
}

/* Why JOB (its stored document) cannot run now, into WHY; false when it can. */
static bool cannot_run(api_server *srv, const json_t *job, char *why, size_t size)
{
    const json_t *status = json_object_get(job, "status"), *spec = json_object_get(job, "spec");
    const char *name = doc_name(job), *state = json_string_value(json_object_get(status, "state"));
    const json_t *vetoes = json_object_get(status, "vetoes"), *rejections = json_object_get(status, "rejections");
    const json_t *max = json_object_get(json_object_get(status, "digestInput"), "maxRuns");
    char missing[512], pcr0[API_JOB_PCR0_HEX_LEN + 1];
    api_error err;
    int64_t until;
    const char *not_after = json_string_value(json_object_get(spec, "notAfter"));
    if (workspace_key_gone(srv->cfg->store, job, why, size))
        return true;
    if (!json_string_value(json_object_get(status, "digest")))
        snprintf(why, size, "Job %s has no digest yet", name);
    else if (state && strcmp(state, "running") == 0)
        snprintf(why, size, "Job %s is running (run %zu); wait for it to end", name,
                 json_array_size(json_object_get(status, "runs")));
    else if (json_array_size(vetoes))
        snprintf(why, size, "Job %s was vetoed by %s: %s", name,
                 json_string_value(json_object_get(json_array_get(vetoes, 0), "user")) ?: "an owner",
                 json_string_value(json_object_get(json_array_get(vetoes, 0), "reason")) ?: "");
    else if (json_array_size(rejections))
        snprintf(why, size, "Job %s was rejected by %s: %s", name,
                 json_string_value(json_object_get(json_array_get(rejections, 0), "user")) ?: "an approver",
                 json_string_value(json_object_get(json_array_get(rejections, 0), "reason")) ?: "");
    else if (not_after && time_parse_rfc3339(not_after, &until) == 0 && until < (int64_t)(time_now_ns() / NSEC_PER_SEC))
        snprintf(why, size, "Job %s expired at %s (notAfter)", name, not_after);
    else if (json_is_integer(max) && runs_released(status) >= json_integer_value(max))
        snprintf(why, size, "Job %s ran %lld time%s, its maxRuns (%lld): to run it again, propose it with a higher "
                 "--max-runs (a new digest, approved anew)", name,
                 (long long)runs_released(status), runs_released(status) == 1 ? "" : "s",
                 (long long)json_integer_value(max));
    else if (check_approvals(srv->cfg->store, status, missing, sizeof(missing)), missing[0])
        snprintf(why, size, "Job %s is not approved: waiting for %s (every required approver signs the digest %.16s… "
                 "with cloister job approve %s)", name, missing, json_string_value(json_object_get(status, "digest")),
                 name);
    else if (api_job_engine_pcr0(srv, pcr0, &err) < 0 || !engine_bundle)
        snprintf(why, size, "no job engine bundle was found: start cloisterd with the engine installed");
    else if (strcmp(pcr0, str_at(json_object_get(status, "digestInput"), "engine", "pcr0") ?: "") != 0)
        snprintf(why, size, "the job engine changed since Job %s was approved (its digest names PCR0 %.16s…, the "
                 "server runs %.16s…): propose it again", name,
                 str_at(json_object_get(status, "digestInput"), "engine", "pcr0") ?: "?", pcr0);
    else
        return false;
    return true;
}

/* Starting a run, off the loop: the status written (running), the sandbox launched. */
typedef struct start_job {
    offload_job super;
    api_server *srv;
    api_route route;
    uint64_t started;
    char name[RESOURCE_NAME_MAX + 1];
    char user[RESOURCE_NAME_MAX + 1];
    char ip[INET6_ADDRSTRLEN];
    json_int_t n;
    char sandbox[64];
    json_t *job; /* as stored after the start */
    int rc;
    api_error err;
} start_job;

/* edit_status(): adds run N (running) unless the Job cannot run. */
static int add_run(json_t *job, json_t *status, void *userdata, api_error *err)
{
    start_job *sj = userdata;
    char why[600];
    if (cannot_run(sj->srv, job, why, sizeof(why)))
        return api_fail(err, 409, "conflict", "%s", why);
    json_t *runs = json_object_get(status, "runs");
    if (!json_is_array(runs)) {
        runs = json_array();
        json_object_set_new(status, "runs", runs);
    }
    sj->n = (json_int_t)json_array_size(runs) + 1;
    const char *uid = str_at(job, "metadata", "uid") ?: "0";
    snprintf(sj->sandbox, sizeof(sj->sandbox), "job-%.12s-%lld", uid, (long long)sj->n);
    char at[40];
    now_rfc3339(at, sizeof(at));
    if (json_array_append_new(runs, json_pack("{s:I, s:s, s:s, s:s, s:s, s:b}", "n", sj->n, "state", "running",
                                              "startedAt", at, "sandbox", sj->sandbox, "digest",
                                              json_string_value(json_object_get(status, "digest")), "released",
                                              false)) < 0 ||
        json_object_set_new(status, "state", json_string("running")) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    return 0;
}

/* What ends run N: failed with REASON, or succeeded with RESULT. */
typedef struct run_end {
    json_int_t n;
    const char *reason;  /* failed */
    json_t *result;      /* succeeded: {sha256, size, rows} */
    json_int_t receipt;  /* its audit index, -1: none */
    const char *evidence_sha;
    bool released;
} run_end;

/* edit_status(): ends run N as RUN_END says (a run already ended is left). */
static int end_run(json_t *job, json_t *status, void *userdata, api_error *err)
{
    run_end *e = userdata;
    json_t *run = run_of(status, e->n);
    if (!run)
        return api_fail(err, 404, "not_found", "Job %s has no run %lld", doc_name(job), (long long)e->n);
    if (strcmp(json_string_value(json_object_get(run, "state")) ?: "", "running") != 0)
        return api_fail(err, 409, "conflict", "run %lld of Job %s has ended", (long long)e->n, doc_name(job));
    char at[40];
    now_rfc3339(at, sizeof(at));
    json_object_set_new(run, "state", json_string(e->reason ? "failed" : "succeeded"));
    json_object_set_new(run, "endedAt", json_string(at));
    if (e->reason)
        json_object_set_new(run, "reason", json_string(e->reason));
    if (e->result)
        json_object_set(run, "result", e->result);
    if (e->receipt >= 0)
        json_object_set_new(run, "receipt", json_integer(e->receipt));
    json_object_set_new(status, "state", json_string(e->reason ? "failed" : "succeeded"));
    return 0;
}

/* edit_status(): records that run N's keys were released to its sandbox. */
static int mark_released(json_t *job, json_t *status, void *userdata, api_error *err)
{
    run_end *e = userdata;
    json_t *run = run_of(status, e->n);
    if (!run || strcmp(json_string_value(json_object_get(run, "state")) ?: "", "running") != 0)
        return api_fail(err, 409, "conflict", "run %lld of Job %s is not running", (long long)e->n, doc_name(job));
    json_object_set_new(run, "released", json_true());
    if (e->evidence_sha)
        json_object_set_new(run, "evidenceSha256", json_string(e->evidence_sha));
    return 0;
}

/* Ends as failed a running run of Job NAME whose sandbox the runner no
 * longer runs (its agent died before it could end the run), so that the job
 * can run again, and tells those concerned. Blocking. */
static void end_orphaned_run(api_server *srv, const char *name)
{
    store *s = srv->cfg->store;
    json_auto_t *job = NULL;
    if (store_get(s, "Job", name, &job) < 0 ||
        strcmp(str_at(job, "status", "state") ?: "", "running") != 0 || !runner_socket)
        return;
    const json_t *runs = json_object_get(json_object_get(job, "status"), "runs");
    const json_t *last = json_array_get(runs, json_array_size(runs) - 1);
    const char *sandbox = json_string_value(json_object_get(last, "sandbox"));
    runner_client *rc = NULL;
    runner_view view = {0};
    char why[RUNNER_WHY_MAX];
    if (!sandbox || runner_client_new(runner_socket, &rc) < 0 || runner_client_list(rc, &view, why, sizeof(why)) < 0) {
        runner_client_free(rc);
        return;
    }
    bool gone = !runner_view_find(&view, sandbox);
    runner_view_free(&view);
    runner_client_free(rc);
    if (!gone)
        return;
    run_end e = {.n = json_integer_value(json_object_get(last, "n")),
                 .reason = "the sandbox ended without ending the run (see the runner's log of it)", .receipt = -1};
    api_error ignored;
    json_auto_t *ended = NULL;
    if (edit_status(s, name, end_run, &e, &ended, &ignored) == 0) {
        json_auto_t *details = json_pack("{s:I, s:s}", "run", e.n, "reason", e.reason);
        audit_event_emit(&(audit_event){.action = "job.run.failed", .user = "system:api", .kind = "Job", .name = name,
                                        .outcome = "failure", .details = details});
        notify_job(srv, ended, "job.run.failed", json_pack("{s:I, s:s}", "run", e.n, "reason", e.reason));
    }
}

/* ---- the sweeper: runs whose sandbox died end within seconds ----
 *
 * An agent that dies (killed, out of memory, the runner restarted) never
 * ends its run. A thread of the api role looks every
 * JOB_SWEEP_INTERVAL_SECONDS at the Jobs in state running whose newest run
 * started more than JOB_SWEEP_GRACE_SECONDS ago (a run is marked running
 * before its sandbox is launched) and ends those whose sandbox the runner no
 * longer lists. */
#define JOB_SWEEP_INTERVAL_SECONDS 2
#define JOB_SWEEP_GRACE_SECONDS 5

static struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool started, stopping;
    api_server *srv;
} sweeper = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* Whether Job DOC's newest run is running and started before NOW_S - grace. */
static bool run_due_for_check(const json_t *doc, int64_t now_s)
{
    if (strcmp(str_at(doc, "status", "state") ?: "", "running") != 0)
        return false;
    const json_t *runs = json_object_get(json_object_get(doc, "status"), "runs");
    const char *at = json_string_value(json_object_get(json_array_get(runs, json_array_size(runs) - 1), "startedAt"));
    int64_t started;
    return at && time_parse_rfc3339(at, &started) == 0 && now_s - started >= JOB_SWEEP_GRACE_SECONDS;
}

static void *sweep_loop(void *userdata)
{
    (void)userdata;
    pthread_mutex_lock(&sweeper.lock);
    while (!sweeper.stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += JOB_SWEEP_INTERVAL_SECONDS;
        while (!sweeper.stopping && pthread_cond_timedwait(&sweeper.wake, &sweeper.lock, &until) == 0)
            ;
        if (sweeper.stopping)
            break;
        pthread_mutex_unlock(&sweeper.lock);
        json_auto_t *jobs = NULL;
        if (store_list(sweeper.srv->cfg->store, "Job", &jobs, NULL) == 0) {
            int64_t now_s = (int64_t)(time_now_ns() / NSEC_PER_SEC);
            size_t i;
            json_t *doc;
            json_array_foreach(jobs, i, doc)
                if (run_due_for_check(doc, now_s))
                    end_orphaned_run(sweeper.srv, str_at(doc, "metadata", "name"));
        }
        pthread_mutex_lock(&sweeper.lock);
    }
    pthread_mutex_unlock(&sweeper.lock);
    return NULL;
}

int api_job_runs_sweeper_start(api_server *srv)
{
    sweeper.srv = srv;
    sweeper.stopping = false;
    int r = pthread_create(&sweeper.thread, NULL, sweep_loop, NULL);
    sweeper.started = r == 0;
    return -r;
}

void api_job_runs_sweeper_stop(void)
{
    if (!sweeper.started)
        return;
    pthread_mutex_lock(&sweeper.lock);
    sweeper.stopping = true;
    pthread_cond_signal(&sweeper.wake);
    pthread_mutex_unlock(&sweeper.lock);
    pthread_join(sweeper.thread, NULL);
    sweeper.started = false;
}

static void start_work(offload_job *j)
{
    start_job *sj = (start_job *)j;
    store *s = sj->srv->cfg->store;
    end_orphaned_run(sj->srv, sj->name);
    if ((sj->rc = edit_status(s, sj->name, add_run, sj, &sj->job, &sj->err)) < 0)
        return;
    runner_client *rc = NULL;
    char why[RUNNER_WHY_MAX] = "", pcr0[RUNNER_PCR_HEX_LEN + 1], owner[RUNNER_OWNER_MAX];
    pid_t pid;
    snprintf(owner, sizeof(owner), "job/%s/%s/%lld", sj->name, str_at(sj->job, "metadata", "uid") ?: "0",
             (long long)sj->n);
    json_auto_t *params = json_pack("{s:s, s:I, s:s}", "name", sj->name, "run", sj->n, "digest",
                                    str_at(sj->job, "status", "digest"));
    json_auto_t *limits = json_pack("{s:i, s:i}", "memoryMiB", SANDBOX_MEMORY_MIB, "pids", SANDBOX_PIDS);
    runner_launch l = {.name = sj->sandbox, .bundle = engine_bundle, .owner = owner, .limits = limits, .job = params};
    int r = !runner_socket ? -ENOTCONN : runner_client_new(runner_socket, &rc);
    if (r == 0)
        r = runner_client_launch(rc, &l, &pid, pcr0, why, sizeof(why));
    runner_client_free(rc);
    if (r < 0) {
        char reason[RUNNER_WHY_MAX + 64];
        snprintf(reason, sizeof(reason), "the sandbox could not be launched: %s", why[0] ? why : strerror(-r));
        run_end e = {.n = sj->n, .reason = reason, .receipt = -1};
        json_decref(sj->job);
        sj->job = NULL;
        edit_status(s, sj->name, end_run, &e, &sj->job, &sj->err);
        sj->rc = api_fail(&sj->err, 503, "unavailable", "%s", reason);
    }
}

static void start_done(offload_job *j, h2o_req_t *req)
{
    start_job *sj = (start_job *)j;
    json_auto_t *details = json_pack("{s:I}", "run", sj->n);
    if (sj->rc < 0)
        json_object_set_new(details, "reason", json_string(sj->err.message));
    else
        json_object_set_new(details, "sandbox", json_string(sj->sandbox));
    audit_event_emit(&(audit_event){.action = "job.run", .user = sj->user, .ip = sj->ip, .kind = "Job",
                                    .name = sj->name,
                                    .outcome = sj->rc == 0 ? "success" : sj->err.status == 409 ? "denied" : "failure",
                                    .details = details});
    if (sj->job && sj->n > 0)
        notify_job(sj->srv, sj->job, sj->rc == 0 ? "job.run.started" : "job.run.failed",
                   json_pack("{s:I, s:s?}", "run", sj->n, "reason", sj->rc < 0 ? sj->err.message : NULL));
    if (req && sj->rc < 0)
        api_respond_error(req, sj->route, sj->started, &sj->err);
    else if (req) {
        json_auto_t *body = json_pack("{s:s, s:I, s:s, s:s}", "job", sj->name, "run", sj->n, "state", "running",
                                      "sandbox", sj->sandbox);
        api_respond_json(req, sj->route, sj->started, 202, body);
    }
    json_decref(sj->job);
    free(sj);
}

int api_handle_job_runs(api_request *r, const char *name, api_error *err)
{
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "Job '%s' not found (not a valid name)", name);
    if (api_authorize(r->server, r->req, r->caller, "run", "Job", name, err) < 0)
        return -1;
    json_auto_t *job = NULL;
    int e = store_get(r->server->cfg->store, "Job", name, &job);
    if (e < 0)
        return e == -ENOENT ? api_fail_absent(r->server, r->req, r->caller, "run", "Job", name, err)
                            : api_fail_store(err, e, "Job", name);
    const char *author = str_at(job, "status", "author");
    if (!author || strcmp(author, caller_name(r->caller)) != 0) {
        char reason[200];
        snprintf(reason, sizeof(reason), "only the job's author (%s) runs it", author ? author : "?");
        return api_refuse(r->req, r->caller, "run", "Job", name, reason, err);
    }
    start_job *sj = calloc(1, sizeof(*sj));
    if (!sj)
        return api_fail(err, 500, "internal", "out of memory");
    *sj = (start_job){.super = {.work = start_work, .done = start_done}, .srv = r->server, .route = r->route,
                      .started = r->started};
    snprintf(sj->name, sizeof(sj->name), "%s", name);
    snprintf(sj->user, sizeof(sj->user), "%s", caller_name(r->caller));
    httpd_peer_ip(r->req, sj->ip, sizeof(sj->ip));
    if (api_offload(r, r->server->local, &sj->super, err) < 0) {
        free(sj);
        return -1;
    }
    return 0;
}

/* ---- GET /v1/jobs/{name}/result ---- */

int api_handle_job_result(api_request *r, const char *name, api_error *err)
{
    if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
        api_method_not_allowed(r->req, r->route, r->started, "GET");
        return 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "Job '%s' not found (not a valid name)", name);
    /* anyone who may read the Job may read its result: it is ciphertext that
     * only the recipients' identities open (docs/analytics.md) */
    if (api_authorize(r->server, r->req, r->caller, "get", "Job", name, err) < 0)
        return -1;
    json_auto_t *job = NULL;
    int e = store_get(r->server->cfg->store, "Job", name, &job);
    if (e < 0)
        return api_fail_store(err, e, "Job", name);
    char buf[24];
    json_int_t want = 0;
    if (api_query_param(r->req, "run", buf, sizeof(buf)) && (want = strtoll(buf, NULL, 10)) < 1)
        return api_fail(err, 400, "invalid", "run must be a run's number (1 or more)");
    const json_t *runs = json_object_get(json_object_get(job, "status"), "runs"), *run = NULL, *it;
    size_t i;
    json_array_foreach(runs, i, it)
    {
        bool ok = strcmp(json_string_value(json_object_get(it, "state")) ?: "", "succeeded") == 0;
        if (ok && (!want || json_integer_value(json_object_get(it, "n")) == want))
            run = it;
    }
    const char *sha = str_at(run, "result", "sha256");
    if (!sha)
        return api_fail(err, 404, "not_found", "Job %s has no %s result", name, want ? "such" : "successful run's");
    uint64_t size;
    if (api_send_blob(r, sha, &size, err) < 0)
        return -1;
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_auto_t *details = json_pack("{s:I, s:s, s:I}", "run", json_integer_value(json_object_get(run, "n")), "sha256",
                                     sha, "size", (json_int_t)size);
    audit_event_emit(&(audit_event){.action = "job.result.download", .user = caller_name(r->caller), .ip = ip,
                                    .kind = "Job", .name = name, .outcome = "success", .details = details});
    return 0;
}

/* ---- /v1/job-runs/{job}/{run}/…: the sandbox's calls, through the runner ---- */

/* Whether C is the runner role's own identity (its bootstrap credential). */
static bool is_runner_identity(const caller *c)
{
    const json_t *user_spec = json_object_get(c->user, "spec");
    const json_t *cred_spec = json_object_get(c->credential, "spec");
    return c->user && c->credential && strcmp(caller_name(c), BOOTSTRAP_RUNNER_USER) == 0 &&
           strcmp(json_string_value(json_object_get(user_spec, "type")) ?: "", "workload") == 0 &&
           strcmp(doc_name(c->credential) ?: "", BOOTSTRAP_RUNNER_CREDENTIAL) == 0 &&
           strcmp(json_string_value(json_object_get(cred_spec, "user")) ?: "", BOOTSTRAP_RUNNER_USER) == 0;
}

typedef enum io_kind { IO_RELEASE, IO_INPUT, IO_RESULT, IO_FINISH } io_kind;

/* One call of a run's sandbox, off the loop. */
typedef struct io_job {
    offload_job super;
    api_server *srv;
    api_route route;
    uint64_t started;
    io_kind kind;
    char name[RESOURCE_NAME_MAX + 1];
    char input[RESOURCE_NAME_MAX + 1];
    json_int_t n;
    uint64_t offset;
    uint8_t *data; /* a result part (owned), or an input chunk read */
    size_t len;
    json_t *body;   /* release, finish */
    json_t *answer; /* JSON answer */
    json_t *job;    /* the Job after the call, for notifications */
    const char *notify; /* a notification type to send from the loop, or NULL */
    json_t *notify_details;
    const char *also_notify; /* a refused release: key-release.refused too */
    int rc;
    api_error err;
} io_job;

/* The running run N of JOB with its keys released (when NEED_RELEASED);
 * NULL with ERR. */
static const json_t *running_run(const json_t *job, json_int_t n, bool need_released, api_error *err)
{
    const json_t *run = run_of(json_object_get(job, "status"), n);
    if (!run || strcmp(json_string_value(json_object_get(run, "state")) ?: "", "running") != 0) {
        api_fail(err, 409, "conflict", "run %lld of Job %s is not running", (long long)n, doc_name(job));
        return NULL;
    }
    if (need_released && !json_is_true(json_object_get(run, "released"))) {
        api_fail(err, 409, "conflict", "run %lld of Job %s has no keys released", (long long)n, doc_name(job));
        return NULL;
    }
    return run;
}

/* The upload id of run N of JOB's result. */
static void result_upload_id(const json_t *job, json_int_t n, char out[BLOB_ID_MAX + 1])
{
    snprintf(out, BLOB_ID_MAX + 1, "run-%.40s-%lld", str_at(job, "metadata", "uid") ?: "0", (long long)n);
}

/* The age header of blob SHA (up to and including its MAC line), base64, as
 * a new string; NULL with ERR. */
static json_t *blob_header(const char *sha, api_error *err)
{
    int fd;
    uint64_t size;
    int e = blob_open(api_blobs(), sha, &fd, &size);
    if (e < 0) {
        api_fail(err, 409, "conflict", "an input's ciphertext %.16s… is gone (its Dataset was replaced)", sha);
        return NULL;
    }
    uint8_t buf[HEADER_MAX + 1];
    ssize_t got = pread(fd, buf, (size_t)MIN(size, (uint64_t)HEADER_MAX), 0);
    close(fd);
    /* the header ends with the line "--- " and the MAC */
    buf[got > 0 ? got : 0] = 0;
    const char *mac = got > 0 ? strstr((const char *)buf, "\n--- ") : NULL;
    const char *end = mac ? strchr(mac + 1, '\n') : NULL;
    if (!end) {
        api_fail(err, 409, "conflict", "an input's age header (%.16s…) does not end within %d bytes", sha, HEADER_MAX);
        return NULL;
    }
    size_t n = (size_t)(end + 1 - (const char *)buf);
    _cleanup_free_ char *b64 = malloc(base64_encoded_size(n));
    if (!b64) {
        api_fail(err, 500, "internal", "cannot read an input's header");
        return NULL;
    }
    base64_encode(buf, n, b64, false);
    return json_string(b64);
}

/* The KMS's release body for run N of JOB with the sandbox's BODY
 * {type, evidence, publicKey}, and the engine's manifest; NULL with ERR. */
static json_t *release_request(store *s, const json_t *job, json_int_t n, const json_t *body, json_t **ret_manifest,
                               api_error *err)
{
    const json_t *status = json_object_get(job, "status"), *input = json_object_get(status, "digestInput");
    const char *ws = str_at(job, "spec", "workspace");
    json_auto_t *w = NULL, *policy = NULL;
    char why[600];
    if (workspace_key_gone(s, job, why, sizeof(why))) { /* deleted since the run started */
        api_fail(err, 409, "conflict", "%s", why);
        return NULL;
    }
    int e = store_get(s, "Workspace", ws, &w);
    if (e < 0) {
        api_fail_store(err, e, "Workspace", ws);
        return NULL;
    }
    const char *policy_name = str_at(w, "spec", "attestationPolicy");
    if (policy_name && (e = store_get(s, "AttestationPolicy", policy_name, &policy)) < 0) {
        api_fail(err, 409, "conflict", "workspace %s names AttestationPolicy %s, which cannot be read", ws, policy_name);
        return NULL;
    }
    json_auto_t *keys = json_object(), *vetoes = json_array(), *inputs = json_array(), *m_inputs = json_array();
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(status, "requiredApprovers"), i, v)
    {
        json_auto_t *u = NULL;
        const char *user = json_string_value(v);
        if (user && store_get(s, "User", user, &u) == 0) {
            const char *k = str_at(json_object_get(u, "status"), "publicKeys", "approval");
            if (k)
                json_object_set_new(keys, user, json_string(k));
        }
    }
    json_array_foreach(json_object_get(status, "vetoes"), i, v) json_array_append(vetoes, json_object_get(v, "user"));
    json_array_foreach(json_object_get(input, "inputs"), i, v)
    {
        const char *dname = json_string_value(json_object_get(v, "name"));
        const char *sha = json_string_value(json_object_get(v, "sha256"));
        json_auto_t *ds = NULL;
            if (!sha || !blob_hex_valid(sha)) {
            api_fail(err, 500, "internal", "Job %s's digest input is malformed", doc_name(job));
            return NULL;
        }
        json_t *header = blob_header(sha, err);
        if (!header)
            return NULL;
        if (!dname || store_get(s, "Dataset", dname, &ds) < 0) {
            json_decref(header);
            api_fail(err, 409, "conflict", "input %s is gone", dname ? dname : "?");
            return NULL;
        }
        int fd;
        uint64_t size = 0;
        if (blob_open(api_blobs(), sha, &fd, &size) == 0)
            close(fd);
        json_array_append_new(inputs, json_pack("{s:s, s:o}", "name", dname, "header", header));
        json_array_append_new(m_inputs, json_pack("{s:s, s:s, s:O, s:s, s:I}", "name", dname, "table", dname, "schema",
                                                  json_object_get(json_object_get(ds, "spec"), "schema") ?: json_array(),
                                                  "sha256", sha, "size", (json_int_t)size));
    }
    json_t *req = json_pack("{s:s, s:I, s:s?, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "job", doc_name(job),
                            "run", n, "workspaceKey", str_at(w, "status", "key"), "digestInput", input,
                            "requiredApprovers", json_object_get(status, "requiredApprovers"), "approvals",
                            json_object_get(status, "approvals") ?: json_array(), "approvalKeys", keys, "vetoes",
                            vetoes, "attestationPolicy",
                            policy ? json_object_get(policy, "spec") : json_null(), "type",
                            json_object_get(body, "type"), "evidence", json_object_get(body, "evidence"),
                            "publicKey", json_object_get(body, "publicKey"), "inputs", inputs);
    *ret_manifest = json_pack("{s:O, s:O, s:O, s:{s:i, s:i, s:i}}", "query", json_object_get(input, "query"), "inputs",
                              m_inputs, "recipients", json_object_get(input, "recipients"), "limits", "memoryMiB",
                              ENGINE_MEMORY_MIB, "seconds", (int)engine_seconds, "rows", ENGINE_ROWS);
    if (!req || !*ret_manifest) {
        json_decref(req);
        json_decref(*ret_manifest);
        api_fail(err, 400, "invalid", "type, evidence and publicKey are required");
        return NULL;
    }
    return req;
}

/* Fails run N of Job NAME with REASON (status, receipt-less audit entry,
 * notification from the loop through IO). */
static void fail_run(io_job *io, const char *reason)
{
    run_end e = {.n = io->n, .reason = reason, .receipt = -1};
    api_error ignored;
    json_decref(io->job);
    io->job = NULL;
    edit_status(io->srv->cfg->store, io->name, end_run, &e, &io->job, &ignored);
    char id[BLOB_ID_MAX + 1];
    if (io->job) {
        result_upload_id(io->job, io->n, id);
        blob_upload_abort(api_blobs(), id);
    }
    json_auto_t *details = json_pack("{s:I, s:s}", "run", io->n, "reason", reason);
    audit_event_emit(&(audit_event){.action = "job.run.failed", .user = BOOTSTRAP_RUNNER_USER, .kind = "Job",
                                    .name = io->name, .outcome = "failure", .details = details});
    io->notify = "job.run.failed";
    io->notify_details = json_pack("{s:I, s:s}", "run", io->n, "reason", reason);
}

static void io_release(io_job *io, const json_t *job)
{
    store *s = io->srv->cfg->store;
    json_auto_t *manifest = NULL, *answer = NULL;
    json_auto_t *req = release_request(s, job, io->n, io->body, &manifest, &io->err);
    if (!req) {
        io->rc = -1;
        return;
    }
    if (api_kms_job_release(req, &answer, &io->err) < 0) {
        io->rc = -1;
        char reason[sizeof(io->err.message) + 32];
        snprintf(reason, sizeof(reason), "key release refused: %s", io->err.message);
        fail_run(io, reason);
        if (strcmp(io->err.code, "release_refused") == 0)
            io->also_notify = "key-release.refused";
        return;
    }
    run_end e = {.n = io->n, .evidence_sha = json_string_value(json_object_get(answer, "evidenceSha256"))};
    if ((io->rc = edit_status(s, io->name, mark_released, &e, NULL, &io->err)) < 0)
        return;
    io->answer = json_pack("{s:O, s:O}", "keys", json_object_get(answer, "keys"), "manifest", manifest);
    if (!io->answer)
        io->rc = api_fail(&io->err, 500, "internal", "out of memory");
}

static void io_input(io_job *io, const json_t *job)
{
    const char *sha = NULL;
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(json_object_get(json_object_get(job, "status"), "digestInput"), "inputs"), i, v)
    {
        if (strcmp(json_string_value(json_object_get(v, "name")) ?: "", io->input) == 0)
            sha = json_string_value(json_object_get(v, "sha256"));
    }
    if (!sha || !blob_hex_valid(sha)) {
        io->rc = api_fail(&io->err, 403, "forbidden", "%s is not an input of Job %s", io->input, io->name);
        return;
    }
    int fd;
    uint64_t size;
    int e = blob_open(api_blobs(), sha, &fd, &size);
    if (e < 0) {
        io->rc = api_fail(&io->err, 409, "conflict", "input %s's ciphertext is gone", io->input);
        return;
    }
    size_t want = io->offset >= size ? 0 : (size_t)MIN((uint64_t)API_JOB_PART_MAX, size - io->offset);
    io->data = want ? malloc(want) : NULL;
    ssize_t n = io->data ? pread(fd, io->data, want, (off_t)io->offset) : 0;
    close(fd);
    if (want == 0 || n <= 0)
        io->rc = api_fail(&io->err, 416, "range_not_satisfiable", "input %s holds %llu bytes", io->input,
                          (unsigned long long)size);
    else
        io->len = (size_t)n;
}

static void io_result(io_job *io, const json_t *job)
{
    char id[BLOB_ID_MAX + 1];
    uint64_t size = 0;
    result_upload_id(job, io->n, id);
    if (io->offset > API_JOB_RESULT_MAX || io->len > API_JOB_RESULT_MAX - io->offset) {
        io->rc = api_fail(&io->err, 413, "too_large", "a job's result holds at most %llu bytes",
                          (unsigned long long)API_JOB_RESULT_MAX);
        return;
    }
    int e = blob_upload_write(api_blobs(), id, io->offset, io->data, io->len, &size);
    if (e < 0)
        io->rc = api_fail(&io->err, e == -ERANGE ? 409 : 500, e == -ERANGE ? "conflict" : "internal",
                          "the result part could not be stored (%s)", strerror(-e));
    else
        io->answer = json_pack("{s:I}", "offset", (json_int_t)size);
}

/* The run receipt (docs/analytics.md): an audit entry, durable before the
 * run is called succeeded; its index into *RET. */
static int write_receipt(io_job *io, const json_t *job, const json_t *run, const json_t *result, json_int_t *ret)
{
    const json_t *status = json_object_get(job, "status");
    json_auto_t *inputs = json_array(), *approvals = json_array();
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(json_object_get(status, "digestInput"), "inputs"), i, v)
        json_array_append_new(inputs, json_pack("{s:O, s:O}", "name", json_object_get(v, "name"), "sha256",
                                                json_object_get(v, "sha256")));
    json_array_foreach(json_object_get(status, "approvals"), i, v)
        json_array_append_new(approvals, json_pack("{s:O, s:O}", "user", json_object_get(v, "user"), "signature",
                                                   json_object_get(v, "signature")));
    json_auto_t *details = json_pack("{s:s, s:I, s:O, s:O, s:s?, s:O}", "digest", str_at(job, "status", "digest"),
                                     "run", io->n, "inputs", inputs, "result", result, "evidenceSha256",
                                     json_string_value(json_object_get(run, "evidenceSha256")), "approvals", approvals);
    uint64_t index;
    int r = details ? audit_event_append(&(audit_event){.action = "job.run.receipt", .user = BOOTSTRAP_RUNNER_USER,
                                                        .kind = "Job", .name = io->name, .outcome = "success",
                                                        .details = details},
                                         io->srv->cfg->audit_socket, RECEIPT_TIMEOUT_MS, &index)
                    : -ENOMEM;
    if (r < 0)
        return r;
    *ret = (json_int_t)index;
    return 0;
}

static void io_finish(io_job *io, const json_t *job, const json_t *run)
{
    const char *error = json_string_value(json_object_get(io->body, "error"));
    const char *sha = json_string_value(json_object_get(io->body, "sha256"));
    const char *engine_sha = json_string_value(json_object_get(io->body, "resultSha256"));
    const json_t *size = json_object_get(io->body, "size"), *rows = json_object_get(io->body, "rows");
    char reason[700];
    if (error) {
        snprintf(reason, sizeof(reason), "the engine failed: %.600s", error);
        fail_run(io, reason);
        io->answer = json_pack("{s:s}", "state", "failed");
        return;
    }
    if (!sha || !blob_hex_valid(sha) || !json_is_integer(size) || json_integer_value(size) < 1 || !engine_sha ||
        strcmp(sha, engine_sha) != 0) {
        fail_run(io, "the uploaded result is not what the engine reported (size or SHA-256); nothing is kept");
        io->rc = api_fail(&io->err, 400, "invalid", "the result's sha256 must be the engine's resultSha256");
        return;
    }
    char id[BLOB_ID_MAX + 1];
    result_upload_id(job, io->n, id);
    int e = blob_upload_commit(api_blobs(), id, sha, (uint64_t)json_integer_value(size));
    if (e < 0) {
        fail_run(io, "the uploaded result does not have the announced size and SHA-256; nothing is kept");
        io->rc = api_fail(&io->err, 400, "invalid", "the uploaded result does not match its sha256 and size");
        return;
    }
    json_auto_t *result = json_pack("{s:s, s:O, s:O}", "sha256", sha, "size", size, "rows", rows ?: json_null());
    json_int_t receipt;
    e = write_receipt(io, job, run, result, &receipt);
    if (e < 0) {
        snprintf(reason, sizeof(reason), "the run receipt could not be written to the audit log (%s)", strerror(-e));
        fail_run(io, reason);
        io->rc = api_fail(&io->err, 503, "unavailable", "%s", reason);
        return;
    }
    run_end end = {.n = io->n, .result = result, .receipt = receipt};
    json_decref(io->job);
    io->job = NULL;
    if ((io->rc = edit_status(io->srv->cfg->store, io->name, end_run, &end, &io->job, &io->err)) < 0)
        return;
    io->notify = "job.run.succeeded";
    io->notify_details = json_pack("{s:I, s:s, s:I}", "run", io->n, "resultSha256", sha, "receipt", receipt);
    io->answer = json_pack("{s:s, s:I}", "state", "succeeded", "receipt", receipt);
}

static void io_work(offload_job *j)
{
    io_job *io = (io_job *)j;
    json_auto_t *job = NULL;
    int e = store_get(io->srv->cfg->store, "Job", io->name, &job);
    if (e < 0) {
        io->rc = api_fail_store(&io->err, e, "Job", io->name);
        return;
    }
    const json_t *run = running_run(job, io->n, io->kind != IO_RELEASE, &io->err);
    if (!run) {
        io->rc = -1;
        return;
    }
    io->job = json_incref(job);
    switch (io->kind) {
    case IO_RELEASE:
        if (json_is_true(json_object_get(run, "released")))
            io->rc = api_fail(&io->err, 409, "conflict", "run %lld's keys were released already", (long long)io->n);
        else
            io_release(io, job);
        break;
    case IO_INPUT:
        io_input(io, job);
        break;
    case IO_RESULT:
        io_result(io, job);
        break;
    case IO_FINISH:
        io_finish(io, job, run);
        break;
    }
}

static void io_done(offload_job *j, h2o_req_t *req)
{
    io_job *io = (io_job *)j;
    if (io->notify && io->job)
        notify_job(io->srv, io->job, io->notify, TAKE_PTR(io->notify_details));
    if (io->also_notify && io->job)
        notify_job(io->srv, io->job, io->also_notify,
                   json_pack("{s:I, s:s}", "run", io->n, "reason", io->err.message));
    if (req && io->rc < 0)
        api_respond_error(req, io->route, io->started, &io->err);
    else if (req && io->kind == IO_INPUT) {
        req->res.status = 200;
        req->res.reason = "OK";
        req->res.content_length = io->len;
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("application/octet-stream"));
        h2o_send_inline(req, (const char *)io->data, io->len);
        api_finish(io->route, io->started, 200);
    } else if (req)
        api_respond_json(req, io->route, io->started, 200, io->answer);
    json_decref(io->notify_details);
    json_decref(io->answer);
    json_decref(io->body);
    json_decref(io->job);
    free(io->data);
    free(io);
}

/* Parses the decimal query parameter offset of REQ into *RET. */
static int offset_param(const h2o_req_t *req, uint64_t *ret, api_error *err)
{
    char buf[24];
    char *end;
    if (!api_query_param(req, "offset", buf, sizeof(buf)) || !buf[0] || buf[0] == '-')
        return api_fail(err, 400, "invalid", "?offset=N (bytes) is required");
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno || *end)
        return api_fail(err, 400, "invalid", "offset must be a decimal number of bytes");
    *ret = v;
    return 0;
}

int api_handle_job_run_io(api_request *r, const char *rest, size_t len, api_error *err)
{
    if (!is_runner_identity(r->caller))
        return api_refuse(r->req, r->caller, "run-io", "Job", "",
                          "a job run's inputs and results are served only to the runner's workload identity (user "
                          BOOTSTRAP_RUNNER_USER "), for the sandbox it launched, whatever policies say", err);
    /* {job}/{run}/{release|inputs/{dataset}|result|finish} */
    char path[300];
    if (len >= sizeof(path))
        return api_fail(err, 404, "not_found", "no such job-run endpoint");
    memcpy(path, rest, len);
    path[len] = 0;
    char *save = NULL, *job = strtok_r(path, "/", &save), *run = job ? strtok_r(NULL, "/", &save) : NULL;
    char *what = run ? strtok_r(NULL, "/", &save) : NULL, *arg = what ? strtok_r(NULL, "/", &save) : NULL;
    char *end = NULL;
    long long n = run ? strtoll(run, &end, 10) : 0;
    if (!job || !resource_name_valid(job) || !run || *end || n < 1 || !what || (arg && strtok_r(NULL, "/", &save)))
        return api_fail(err, 404, "not_found", "no such job-run endpoint");
    io_job *io = calloc(1, sizeof(*io));
    if (!io)
        return api_fail(err, 500, "internal", "out of memory");
    *io = (io_job){.super = {.work = io_work, .done = io_done}, .srv = r->server, .route = r->route,
                   .started = r->started, .n = n};
    snprintf(io->name, sizeof(io->name), "%s", job);
    int rc = 0;
    bool post = api_method_is(r->req, "POST");
    if (strcmp(what, "release") == 0 && !arg && post) {
        io->kind = IO_RELEASE;
        rc = (io->body = api_decode_body(r->req->entity.base, r->req->entity.len, err)) ? 0 : -1;
    } else if (strcmp(what, "finish") == 0 && !arg && post) {
        io->kind = IO_FINISH;
        rc = (io->body = api_decode_body(r->req->entity.base, r->req->entity.len, err)) ? 0 : -1;
    } else if (strcmp(what, "inputs") == 0 && arg && resource_name_valid(arg) && api_method_is(r->req, "GET")) {
        io->kind = IO_INPUT;
        snprintf(io->input, sizeof(io->input), "%s", arg);
        rc = offset_param(r->req, &io->offset, err);
    } else if (strcmp(what, "result") == 0 && !arg && api_method_is(r->req, "PUT")) {
        io->kind = IO_RESULT;
        rc = offset_param(r->req, &io->offset, err);
        if (rc == 0 && (r->req->entity.len == 0 || r->req->entity.len > API_JOB_PART_MAX))
            rc = api_fail(err, 413, "too_large", "a result part holds 1 to %d bytes", API_JOB_PART_MAX);
        if (rc == 0 && !(io->data = malloc(r->req->entity.len)))
            rc = api_fail(err, 500, "internal", "out of memory");
        if (rc == 0) {
            memcpy(io->data, r->req->entity.base, r->req->entity.len);
            io->len = r->req->entity.len;
        }
    } else
        rc = api_fail(err, 404, "not_found", "no such job-run endpoint (release, inputs/{dataset}, result, finish)");
    if (rc == 0 && api_offload(r, r->server->local, &io->super, err) == 0)
        return 0;
    json_decref(io->body);
    free(io->data);
    free(io);
    return -1;
}
