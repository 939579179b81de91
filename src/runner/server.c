/* The `runner` role: launches workloads in measured sandboxes and is the only
 * holder of the sandbox platform key, with which it vouches for the sandboxes
 * it launched. Its local API on a Unix socket (0600):
 *
 *   POST   /v1/sandboxes {"name", "bundle", "config"?, "limits"?: {"memoryMiB", "pids"}, "owner"?}
 *          measures the bundle, runs enclave.yaml's command in a sandbox
 *          -> {"name", "pid", "pcrs": {"0", "1", "2"}}
 *          "owner" (printable ASCII, at most 127 bytes) is an opaque tag
 *          listed back: the api role's controller sets
 *          "enclave/<name>/<uid>/<spec digest>" on the replicas it launches,
 *          so it can find them (and only them) after it restarts.
 *   GET    /v1/sandboxes            -> {"items": [{"name", "pid", "pcrs", "owner"?, "ready", "error"?,
 *                                                  "limits": {"mechanism", "memoryMiB"?, "pids"?},
 *                                                  "memoryBytes"}],
 *                                       "exited": [{"name", "pid", "how", "code" | "signal", "at",
 *                                                   "owner"?, "error"?, "reason"?}]}
 *          "limits": the sandbox's limits and how they are held ("cgroup2"
 *          or "rlimit", runner/sandbox-limits.h); "memoryBytes": its memory use at
 *          the last reap tick; an exit's "reason": "oomKilled" (the
 *          kernel's OOM killer in its cgroup) or "memoryLimit" (the runner
 *          killed it: its processes' resident memory above its limit).
 *          "ready": the agent reported its workload answering on its port
 *          (always true in plain mode); "error": the agent's last report of
 *          what went wrong (a release refused, the workload's exit).
 *          "exited" holds the last RUNNER_EXITS_MAX sandboxes whose workload
 *          ended by itself (not through DELETE), oldest first; "how" is
 *          "exit status N" or "signal N".
 *          While the runner stops, POST and GET /v1/sandboxes answer 503.
 *          "agent"?: {"secrets"?: [{"key", "file"}]} starts cloister-agent as
 *          the sandbox's first process instead (runner/agent.h): it gets the
 *          Keys by attestation into /run/secrets/<file>, runs the command and
 *          serves attested TLS to enclave.yaml's port; the entry then lists
 *          "agent": true, "secrets" and "atls" (the host path of its socket).
 *          "agent": {"job": {"name", "run", "digest"}} is job mode instead: the
 *          agent runs one run of a Job (the engine bundle), its channel
 *          serves the job routes for that job and run only (runner/agent.h);
 *          the entry lists "job": {"name", "run"}.
 *          "egress"?: [{"host", "port", "tls"?}] (agent mode only) is the
 *          Enclave's allow-list: the runner serves the sandbox's egress
 *          socket, where the agent's CONNECT proxy asks for each tunnel
 *          (runner/egress.h). "plugins"?: the Enclave's egress plugins
 *          (docs/plugins.md), asked about each tunnel the list allows.
 *   DELETE /v1/sandboxes/{name}     stops it
 *   GET    /v1/logs?enclave=E[&replica=R][&after=SEQ][&limit=N][&tail=1]
 *          the recent stdout/stderr lines of E's replicas (runner/output.h)
 *          -> {"boot", "next", "lines": [{"seq", "time", "replica", "stream", "text"}]}
 *   POST   /v1/evidence {"name", "nonce"?, "user_data"?, "public_key"?}
 *          a sandbox attestation document for a running sandbox
 *          -> {"document": base64, "pcrs": {...}}
 *
 * PCR0 is the bundle's measurement taken at launch, PCR1 the Cloister runtime
 * (this executable), PCR2 the SHA-384 of the configuration as canonical JSON,
 * PCR3 the agent (SHA-384 of cloister-agent) in agent mode, zero otherwise.
 * The bundle must not change while its sandbox runs: it is measured at launch
 * and mounted read-only, not copied. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include "attest/attest.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "httpd/httpd.h"
#include "httpd/json.h"
#include "resource/resource.h"
#include "telemetry/telemetry.h"
#include "resource/manifest.h"
#include "audit/event.h"
#include "plugin/plugin.h"
#include "runner/agent.h"
#include "runner/egress.h"
#include "runner/sandbox-limits.h"
#include "runner/output.h"
#include "runner/plugins.h"
#include "runner/server.h"
#include "sandbox/launch.h"
#include "sandbox/measure.h"

#define RUNNER_BODY_MAX (64 * 1024)
#define RUNNER_BINDING_MAX 1024
#define RUNNER_SANDBOXES_MAX 64
#define RUNNER_REAP_MS 200
#define ENCLAVE_YAML_MAX (64 * 1024)
#define RUNNER_OWNER_MAX 128 /* with the NUL */
#define RUNNER_EXITS_MAX 32

/* A workload the runner launched and still runs. */
typedef struct sandbox {
    char name[64];
    pid_t pid; /* 0: free slot */
    uint8_t pcrs[4][ATTEST_SANDBOX_PCR_LEN];
    char owner[RUNNER_OWNER_MAX]; /* "" when none */
    uint64_t id;         /* agent mode: the tag of its channel's connections */
    runner_agent *agent; /* NULL: plain mode */
    runner_egress *egress; /* agent mode with "egress": its tunnels; NULL: none */
    trace_context trace; /* its launch's span: what its agent asks joins that trace */
    bool has_trace;
    uint64_t memory_limit, pids_limit; /* its limits (bytes, processes); 0: none */
    uint64_t memory_used;   /* bytes, as of the last reap tick (runner_limits_usage()) */
    uint64_t oom_kills;     /* cgroup2: memory.events' oom_kill at launch */
    bool memory_killed;     /* rlimit: the runner killed it for using more than memory_limit */
} sandbox;

/* A sandbox whose workload ended by itself, as GET /v1/sandboxes reports it. */
typedef struct sandbox_exit {
    char name[64];
    char owner[RUNNER_OWNER_MAX];
    pid_t pid;
    char how[32];
    int code, signal; /* its exit status, or the signal that ended it (0: not that way) */
    char at[40];      /* RFC 3339 of when the runner saw it end */
    char error[RUNNER_AGENT_ERROR_MAX]; /* the agent's last reported error, "" when none */
    const char *reason; /* "oomKilled" (the kernel's OOM killer, cgroup2), "memoryLimit" (the runner, rlimit), NULL */
} sandbox_exit;

typedef struct runner {
    const runner_server_config *cfg;
    EVP_PKEY *key;
    X509 *cert;
    X509 *ca;
    uint8_t runtime[ATTEST_SANDBOX_PCR_LEN]; /* SHA-384 of this executable */
    sandbox sandboxes[RUNNER_SANDBOXES_MAX];
    uint64_t last_id;
    char agent_path[4096]; /* the agent executable, "" when none was found */
    sandbox_exit exits[RUNNER_EXITS_MAX]; /* a ring: the next is written at n_exits % RUNNER_EXITS_MAX */
    uint64_t n_exits;
    runner_output *output; /* workloads' stdout and stderr; NULL once drained */
    runner_limits *limits; /* cgroup2 or rlimit (runner/sandbox-limits.h) */
    h2o_context_t *ctx;
    h2o_timeout_t reap_timeout;
    h2o_timeout_entry_t reap_entry;
} runner;

typedef struct runner_handler {
    h2o_handler_t super;
    runner *runner;
} runner_handler;

/* Decodes the optional hex field NAME of BODY into a malloc'd *RET (NULL when
 * absent); fills ERR and returns -1 when it is not hex or too long. */
static int optional_hex(const json_t *body, const char *name, uint8_t **ret, size_t *ret_len, api_error *err)
{
    const json_t *v = json_object_get(body, name);
    *ret = NULL;
    *ret_len = 0;
    if (!v || json_is_null(v))
        return 0;
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || n % 2 || n / 2 > RUNNER_BINDING_MAX)
        return api_fail(err, 400, "invalid", "%s must be hex of at most %d bytes", name, RUNNER_BINDING_MAX);
    uint8_t *b = malloc(n / 2 + 1);
    if (!b || hex_decode(s, n, b, n / 2) < 0) {
        free(b);
        return api_fail(err, 400, "invalid", "%s must be hex of at most %d bytes", name, RUNNER_BINDING_MAX);
    }
    *ret = b;
    *ret_len = n / 2;
    return 0;
}


static sandbox *find_sandbox(runner *rn, const char *name)
{
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX; i++)
        if (rn->sandboxes[i].pid && strcmp(rn->sandboxes[i].name, name) == 0)
            return &rn->sandboxes[i];
    return NULL;
}

static json_t *pcrs_json(const uint8_t pcrs[4][ATTEST_SANDBOX_PCR_LEN])
{
    char hex[4][2 * ATTEST_SANDBOX_PCR_LEN + 1];
    for (int i = 0; i < 4; i++)
        hex_encode(pcrs[i], ATTEST_SANDBOX_PCR_LEN, hex[i]);
    return json_pack("{s:s, s:s, s:s, s:s}", "0", hex[0], "1", hex[1], "2", hex[2], "3", hex[3]);
}

/* The agent-mode sandbox whose channel connections carry TAG. */
static sandbox *find_sandbox_by_tag(runner *rn, uint64_t tag)
{
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX; i++)
        if (rn->sandboxes[i].pid && rn->sandboxes[i].agent && rn->sandboxes[i].id == tag)
            return &rn->sandboxes[i];
    return NULL;
}

/* Reads BUNDLE/enclave.yaml into ARGV/ENVP arrays (strings owned by the
 * returned JSON, which the caller keeps alive and releases). */
static json_t *read_enclave_yaml(const char *bundle, api_error *err)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/enclave.yaml", bundle);
    _cleanup_free_ char *text = NULL;
    size_t len;
    int e = read_file(path, ENCLAVE_YAML_MAX, &text, &len);
    if (e < 0) {
        api_fail(err, 400, "invalid", "cannot read %s: %s", path, strerror(-e));
        return NULL;
    }
    manifest m = {0};
    resource_error rerr = {{0}};
    if (manifest_parse(text, len, &m, &rerr) < 0 || m.n_docs != 1) {
        api_fail(err, 400, "invalid", "enclave.yaml: %s", m.n_docs > 1 ? "one document expected" : rerr.message);
        manifest_free(&m);
        return NULL;
    }
    json_t *doc = json_incref(m.docs[0].value);
    manifest_free(&m);
    static const char *const known[] = {"command", "env", "port", NULL};
    const json_t *cmd = json_object_get(doc, "command"), *env = json_object_get(doc, "env");
    const char *key;
    json_t *v;
    size_t i;
    bool ok = api_only_fields(doc, known, err) == 0;
    if (ok && (!json_is_array(cmd) || json_array_size(cmd) == 0 || json_array_size(cmd) > 256 ||
               !json_is_string(json_array_get(cmd, 0)) || json_string_value(json_array_get(cmd, 0))[0] != '/'))
        ok = api_fail(err, 400, "invalid", "enclave.yaml: command must be a list whose first item is an absolute path") == 0;
    json_array_foreach(cmd, i, v) if (ok && !json_is_string(v)) ok =
        api_fail(err, 400, "invalid", "enclave.yaml: command[%zu] must be a string", i) == 0;
    if (ok && env && (!json_is_object(env) || json_object_size(env) > 256))
        ok = api_fail(err, 400, "invalid", "enclave.yaml: env must be a map of at most 256 strings") == 0;
    json_object_foreach((json_t *)env, key, v) if (ok && (!json_is_string(v) || strchr(key, '='))) ok =
        api_fail(err, 400, "invalid", "enclave.yaml: env %.64s must be a string without '=' in its name", key) == 0;
    if (!ok) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* POST /v1/sandboxes: measures and launches; the answer or NULL with ERR. */
static json_t *launch_sandbox(runner *rn, const json_t *body, api_error *err)
{
    static const char *const known[] = {"name", "bundle", "config", "limits", "owner", "agent", "egress", "plugins",
                                        NULL};
    if (api_only_fields(body, known, err) < 0)
        return NULL;
    const char *name = json_string_value(json_object_get(body, "name"));
    const char *bundle = json_string_value(json_object_get(body, "bundle"));
    const json_t *owner = json_object_get(body, "owner");
    bool owner_ok = !owner || (json_is_string(owner) && json_string_length(owner) > 0 &&
                               json_string_length(owner) < RUNNER_OWNER_MAX);
    for (const char *p = json_string_value(owner); owner_ok && p && *p; p++)
        owner_ok = *p > 0x20 && *p < 0x7f;
    if (!owner_ok) {
        api_fail(err, 400, "invalid", "owner must be 1-%d printable ASCII characters without spaces",
                 RUNNER_OWNER_MAX - 1);
        return NULL;
    }
    const json_t *config = json_object_get(body, "config"), *limits = json_object_get(body, "limits");
    if (!name || !resource_name_valid(name)) {
        api_fail(err, 400, "invalid", "name must be a DNS-1123 label (the sandbox's name)");
        return NULL;
    }
    if (!bundle || bundle[0] != '/') {
        api_fail(err, 400, "invalid", "bundle must be an absolute path to the bundle directory");
        return NULL;
    }
    if ((config && !json_is_object(config)) || (limits && !json_is_object(limits))) {
        api_fail(err, 400, "invalid", "config and limits must be objects");
        return NULL;
    }
    if (find_sandbox(rn, name)) {
        api_fail(err, 409, "already_exists", "sandbox %s is running; delete it first", name);
        return NULL;
    }
    sandbox *slot = NULL;
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX && !slot; i++)
        if (!rn->sandboxes[i].pid)
            slot = &rn->sandboxes[i];
    if (!slot) {
        api_fail(err, 503, "unavailable", "the runner already runs %d sandboxes", RUNNER_SANDBOXES_MAX);
        return NULL;
    }
    sandbox sb = {0};
    snprintf(sb.name, sizeof(sb.name), "%s", name);
    snprintf(sb.owner, sizeof(sb.owner), "%s", owner ? json_string_value(owner) : "");
    measure_error merr = {{0}};
    if (bundle_measure(bundle, sb.pcrs[0], &merr) < 0) {
        api_fail(err, 400, "invalid", "cannot measure the bundle: %s", merr.text);
        return NULL;
    }
    memcpy(sb.pcrs[1], rn->runtime, sizeof(rn->runtime));
    /* PCR2: SHA-384 of the configuration as canonical JSON (keys sorted, compact) */
    _cleanup_free_ char *canonical = config ? json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS) : strdup("{}");
    if (!canonical) {
        api_fail(err, 500, "internal", "out of memory");
        return NULL;
    }
    EVP_Digest(canonical, strlen(canonical), sb.pcrs[2], NULL, EVP_sha384(), NULL);

    _cleanup_(json_decrefp) json_t *yaml = read_enclave_yaml(bundle, err);
    if (!yaml)
        return NULL;
    const json_t *cmd = json_object_get(yaml, "command"), *env = json_object_get(yaml, "env");
    char *argv[258] = {0}, *envp[258] = {0}, env_text[256][512];
    size_t i, n_env = 0;
    json_t *v;
    json_array_foreach(cmd, i, v) argv[i] = (char *)json_string_value(v);
    const char *key;
    json_object_foreach((json_t *)env, key, v)
    {
        snprintf(env_text[n_env], sizeof(env_text[n_env]), "%s=%s", key, json_string_value(v));
        envp[n_env] = env_text[n_env];
        n_env++;
    }
    envp[n_env] = "PATH=/usr/local/bin:/usr/bin:/bin";
    sb.memory_limit = (uint64_t)json_integer_value(json_object_get(limits, "memoryMiB")) << 20;
    sb.pids_limit = (uint64_t)json_integer_value(json_object_get(limits, "pids"));
    bool cgroup = runner_limits_mechanism(rn->limits) == LIMITS_CGROUP2;
    _cleanup_(runner_agent_freep) runner_agent *agent = NULL;
    if (json_object_get(body, "agent")) {
        /* under rlimits the agent gives the workload its address-space limit */
        agent = runner_agent_new(rn->cfg->dir, rn->agent_path[0] ? rn->agent_path : NULL, name, sb.owner,
                                 json_object_get(body, "agent"), yaml, argv, cgroup ? 0 : sb.memory_limit, err);
        if (!agent)
            return NULL;
        memcpy(sb.pcrs[3], runner_agent_measurement(agent), ATTEST_SANDBOX_PCR_LEN);
    }
    _cleanup_(runner_egress_freep) runner_egress *egress = NULL;
    if (json_object_get(body, "egress")) {
        char dir[4200];
        if (!agent) {
            api_fail(err, 400, "invalid", "egress needs agent mode: the agent's proxy is the way out");
            return NULL;
        }
        snprintf(dir, sizeof(dir), "%s/%s", rn->cfg->dir, name); /* the agent's directory */
        egress = runner_egress_new(dir, name, sb.owner, json_object_get(body, "egress"), json_object_get(body, "plugins"),
                                   err);
        if (!egress)
            return NULL;
    }

    char cgroup_dir[4200];
    int r = runner_limits_prepare(rn->limits, name, sb.memory_limit, sb.pids_limit, cgroup_dir, sizeof(cgroup_dir));
    if (r < 0) {
        api_fail(err, 503, "unavailable", "cannot make the cgroup of sandbox %s: %s", name, strerror(-r));
        return NULL;
    }
    sb.oom_kills = runner_limits_oom_kills(rn->limits, name);
    int out_fd = -1, err_fd = -1;
    r = rn->output ? runner_output_open(rn->output, name, sb.owner, &out_fd, &err_fd) : -ESHUTDOWN;
    if (r < 0) {
        api_fail(err, 503, "unavailable", "cannot make the output pipes of sandbox %s: %s", name, strerror(-r));
        return NULL;
    }
    sandbox_spec spec = {
        .bundle = bundle,
        .argv = argv,
        .envp = envp,
        .memory_bytes = cgroup ? 0 : sb.memory_limit, /* else the cgroup's memory.max */
        .max_pids = sb.pids_limit,
        .stdout_fd = out_fd,
        .stderr_fd = err_fd,
        .cgroup = cgroup ? cgroup_dir : NULL,
    };
    if (agent)
        runner_agent_fill_spec(agent, &spec);
    if (egress)
        spec.egress = runner_egress_socket(egress);
    sandbox_error serr = {{0}};
    r = sandbox_launch(&spec, &sb.pid, &serr);
    runner_output_started(rn->output, name, r == 0);
    if (r < 0) {
        runner_limits_remove(rn->limits, name);
        api_fail(err, 400, "invalid", "cannot launch sandbox %s: %s", name, serr.text);
        return NULL;
    }
    if (agent) {
        sb.id = ++rn->last_id;
        r = runner_agent_started(agent, rn->ctx, sb.id);
        if (r < 0) {
            kill(sb.pid, SIGKILL);
            waitpid(sb.pid, NULL, 0);
            runner_limits_remove(rn->limits, name);
            api_fail(err, 500, "internal", "cannot serve the channel of sandbox %s: %s", name, strerror(-r));
            return NULL;
        }
        sb.agent = TAKE_PTR(agent);
        sb.egress = TAKE_PTR(egress);
    }
    sb.has_trace = telemetry_current_context(&sb.trace);
    *slot = sb;
    char pid_s[16];
    snprintf(pid_s, sizeof(pid_s), "%d", (int)sb.pid);
    log_fields(LOG_LEVEL_INFO, "sandbox launched", "name", name, "pid", pid_s, NULL);
    return json_pack("{s:s, s:i, s:o}", "name", name, "pid", (int)sb.pid, "pcrs", pcrs_json(sb.pcrs));
}

/* POST /v1/evidence: a document for a running sandbox; NULL with ERR. */
static json_t *issue(const runner *rn, const json_t *body, api_error *err)
{
    static const char *const known[] = {"name", "nonce", "user_data", "public_key", NULL};
    if (api_only_fields(body, known, err) < 0)
        return NULL;
    const char *name = json_string_value(json_object_get(body, "name"));
    const sandbox *sb = name ? find_sandbox((runner *)rn, name) : NULL;
    if (!sb) {
        api_fail(err, 404, "not_found", "no running sandbox %.64s: evidence is only issued for sandboxes this runner "
                 "launched", name ? name : "(name missing)");
        return NULL;
    }
    attest_sandbox_claims c = {.timestamp_ms = time_now_ns() / NSEC_PER_MSEC};
    char module_id[80];
    snprintf(module_id, sizeof(module_id), "sandbox-%s", sb->name);
    c.module_id = module_id;
    for (int i = 0; i < 4; i++)
        memcpy(c.pcrs[i], sb->pcrs[i], ATTEST_SANDBOX_PCR_LEN);
    _cleanup_free_ uint8_t *nonce = NULL, *user_data = NULL, *public_key = NULL;
    if (optional_hex(body, "nonce", &nonce, &c.nonce_len, err) < 0 ||
        optional_hex(body, "user_data", &user_data, &c.user_data_len, err) < 0 ||
        optional_hex(body, "public_key", &public_key, &c.public_key_len, err) < 0)
        return NULL;
    c.nonce = nonce;
    c.user_data = user_data;
    c.public_key = public_key;

    _cleanup_free_ uint8_t *doc = NULL;
    size_t doc_len = 0;
    int r = attest_sandbox_issue(rn->key, rn->cert, (X509 *const *)&rn->ca, 1, &c, &doc, &doc_len);
    if (r < 0) {
        api_fail(err, 500, "internal", "cannot sign the document: %s", strerror(-r));
        return NULL;
    }
    _cleanup_free_ char *b64 = malloc(base64_encoded_size(doc_len));
    if (!b64) {
        api_fail(err, 500, "internal", "out of memory");
        return NULL;
    }
    base64_encode(doc, doc_len, b64, false);
    log_fields(LOG_LEVEL_INFO, "issued sandbox evidence", "name", sb->name, NULL);
    return json_pack("{s:s, s:o}", "document", b64, "pcrs", pcrs_json(sb->pcrs));
}

/* runner_channel_serve()'s evidence: BODY names the channel's own sandbox. */
static json_t *issue_on_channel(void *userdata, const json_t *body, api_error *err)
{
    return issue(userdata, body, err);
}

/* Kills sandbox SB and forgets it, its recent output too. */
static void stop_sandbox(runner *rn, sandbox *sb)
{
    kill(sb->pid, SIGKILL);
    waitpid(sb->pid, NULL, 0);
    log_fields(LOG_LEVEL_INFO, "sandbox stopped", "name", sb->name, NULL);
    runner_limits_remove(rn->limits, sb->name);
    if (rn->output)
        runner_output_forget(rn->output, sb->name);
    runner_egress_free(sb->egress); /* before the agent's directory goes */
    runner_agent_free(sb->agent);
    *sb = (sandbox){0};
}

/* Samples SB's memory use; under rlimits, kills it when the sum of its
 * processes' resident memory is above its limit (the address-space limit
 * holds per process only). */
static void watch_memory(runner *rn, sandbox *sb)
{
    uint64_t used;
    if (sb->memory_killed || runner_limits_usage(rn->limits, sb->name, sb->pid, &used) < 0)
        return;
    sb->memory_used = used;
    if (runner_limits_mechanism(rn->limits) != LIMITS_RLIMIT || !sb->memory_limit || used <= sb->memory_limit)
        return;
    char used_s[24], limit_s[24];
    snprintf(used_s, sizeof(used_s), "%" PRIu64, used);
    snprintf(limit_s, sizeof(limit_s), "%" PRIu64, sb->memory_limit);
    log_fields(LOG_LEVEL_WARN, "sandbox killed: its processes' resident memory is above its limit", "name", sb->name,
               "usedBytes", used_s, "limitBytes", limit_s, NULL);
    kill(sb->pid, SIGKILL);
    sb->memory_killed = true;
}

/* Forgets sandboxes whose workload exited, logging how (and whether a
 * memory limit ended it); samples the memory of the others. */
static void reap(h2o_timeout_entry_t *entry)
{
    runner *rn = H2O_STRUCT_FROM_MEMBER(runner, reap_entry, entry);
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX; i++) {
        sandbox *sb = &rn->sandboxes[i];
        int status;
        pid_t waited = sb->pid ? waitpid(sb->pid, &status, WNOHANG) : -1;
        if (waited == 0)
            watch_memory(rn, sb);
        else if (sb->pid && waited == sb->pid) {
            char how[32];
            snprintf(how, sizeof(how), WIFEXITED(status) ? "exit status %d" : "signal %d",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            log_fields(LOG_LEVEL_WARN, "sandbox exited", "name", sb->name, "how", how, NULL);
            sandbox_exit *x = &rn->exits[rn->n_exits++ % RUNNER_EXITS_MAX];
            *x = (sandbox_exit){.pid = sb->pid, .code = WIFEXITED(status) ? WEXITSTATUS(status) : 0,
                                .signal = WIFEXITED(status) ? 0 : WTERMSIG(status)};
            time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), x->at, sizeof(x->at));
            if (sb->agent)
                snprintf(x->error, sizeof(x->error), "%s", runner_agent_error(sb->agent));
            if (sb->memory_killed)
                x->reason = "memoryLimit";
            else if (runner_limits_oom_kills(rn->limits, sb->name) > sb->oom_kills)
                x->reason = "oomKilled";
            if (x->reason)
                log_fields(LOG_LEVEL_WARN, "sandbox ended by its memory limit", "name", sb->name, "reason", x->reason,
                           NULL);
            runner_limits_remove(rn->limits, sb->name);
            memcpy(x->name, sb->name, sizeof(x->name));
            memcpy(x->owner, sb->owner, sizeof(x->owner));
            memcpy(x->how, how, sizeof(x->how));
            runner_egress_free(sb->egress);
            runner_agent_free(sb->agent);
            *sb = (sandbox){0};
        }
    }
    h2o_timeout_link(rn->ctx->loop, &rn->reap_timeout, &rn->reap_entry);
}

/* GET /v1/sandboxes: the running sandboxes and the recent exits; NULL when
 * out of memory. */
static json_t *list_sandboxes(const runner *rn)
{
    json_t *items = json_array(), *exited = json_array(), *item;
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX; i++) {
        const sandbox *sb = &rn->sandboxes[i];
        if (!sb->pid)
            continue;
        item = json_pack("{s:s, s:i, s:o}", "name", sb->name, "pid", (int)sb->pid, "pcrs", pcrs_json(sb->pcrs));
        if (item && sb->owner[0])
            json_object_set_new(item, "owner", json_string(sb->owner));
        if (item) {
            json_t *lim = json_pack("{s:s}", "mechanism",
                                    runner_limits_mechanism_name(runner_limits_mechanism(rn->limits)));
            if (lim && sb->memory_limit)
                json_object_set_new(lim, "memoryMiB", json_integer((json_int_t)(sb->memory_limit >> 20)));
            if (lim && sb->pids_limit)
                json_object_set_new(lim, "pids", json_integer((json_int_t)sb->pids_limit));
            json_object_set_new(item, "limits", lim);
            json_object_set_new(item, "memoryBytes", json_integer((json_int_t)sb->memory_used));
        }
        if (item && sb->agent)
            runner_agent_describe(sb->agent, item);
        else if (item)
            json_object_set_new(item, "ready", json_true()); /* plain mode: no agent to tell */
        json_array_append_new(items, item);
    }
    uint64_t first = rn->n_exits > RUNNER_EXITS_MAX ? rn->n_exits - RUNNER_EXITS_MAX : 0;
    for (uint64_t i = first; i < rn->n_exits; i++) {
        const sandbox_exit *x = &rn->exits[i % RUNNER_EXITS_MAX];
        item = json_pack("{s:s, s:i, s:s, s:s}", "name", x->name, "pid", (int)x->pid, "how", x->how, "at", x->at);
        if (item && x->owner[0])
            json_object_set_new(item, "owner", json_string(x->owner));
        if (item)
            json_object_set_new(item, x->signal ? "signal" : "code", json_integer(x->signal ? x->signal : x->code));
        if (item && x->error[0])
            json_object_set_new(item, "error", json_string(x->error));
        if (item && x->reason)
            json_object_set_new(item, "reason", json_string(x->reason));
        json_array_append_new(exited, item);
    }
    return json_pack("{s:o, s:o}", "items", items, "exited", exited);
}

/* GET /v1/logs?enclave=E[&replica=R][&after=SEQ][&limit=N][&tail=1]: the
 * recent output of E's replicas (output.h); NULL with ERR. */
static json_t *read_logs(const runner *rn, h2o_req_t *req, api_error *err)
{
    char enclave[64], replica[64];
    uint64_t after = 0, limit = 100, tail = 0;
    if (!api_query_param(req, "enclave", enclave, sizeof(enclave)) || !resource_name_valid(enclave)) {
        api_fail(err, 400, "invalid", "enclave must name an Enclave");
        return NULL;
    }
    bool one = api_query_param(req, "replica", replica, sizeof(replica));
    if (one && !resource_name_valid(replica)) {
        api_fail(err, 400, "invalid", "replica must name a sandbox");
        return NULL;
    }
    if (api_query_u64(req, "after", UINT64_MAX, &after, err) < 0 ||
        api_query_u64(req, "limit", RUNNER_LOG_PAGE_MAX, &limit, err) < 0 ||
        api_query_u64(req, "tail", 1, &tail, err) < 0)
        return NULL;
    if (!rn->output) {
        api_fail(err, 503, "unavailable", "the runner is stopping");
        return NULL;
    }
    json_t *answer = runner_output_read(rn->output, enclave, one ? replica : NULL, after, limit, tail == 1);
    if (!answer)
        api_fail(err, 500, "internal", "out of memory");
    return answer;
}

/* The SERVER span of a launch, in the controller's trace when REQ carries
 * its traceparent; current while the sandbox starts (it keeps the context). */
static telemetry_span *launch_span(h2o_req_t *req, const json_t *body)
{
    if (!telemetry_enabled())
        return NULL;
    trace_context parent;
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("traceparent"), -1);
    bool has_parent = i >= 0 && trace_context_parse(req->headers.entries[i].value.base,
                                                    req->headers.entries[i].value.len, &parent) == 0;
    telemetry_span *span = telemetry_span_start("sandbox launch", TELEMETRY_SPAN_SERVER, has_parent ? &parent : NULL);
    telemetry_span_set_attr_str(span, "cloister.sandbox", json_string_value(json_object_get(body, "name")));
    telemetry_span_set_attr_str(span, "cloister.sandbox.mode", json_object_get(body, "agent") ? "agent" : "plain");
    telemetry_set_current(span);
    return span;
}

static void launch_span_end(telemetry_span *span, int status, const char *error)
{
    telemetry_span_set_attr_int(span, "http.response.status_code", status);
    if (error)
        telemetry_span_set_status(span, TELEMETRY_STATUS_ERROR, error);
    telemetry_span_end(span);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    runner *rn = ((runner_handler *)self)->runner;
    api_error err;
    h2o_iovec_t path = req->path_normalized;
    bool post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    json_t *answer = NULL;
    int status = 200;
    uint64_t tag = httpd_conn_tag(req);
    if (tag) {
        /* a sandbox's channel: what that sandbox may ask, nothing else */
        sandbox *sb = find_sandbox_by_tag(rn, tag);
        if (sb) {
            /* what it forwards to the API (key release) is in its launch's trace */
            telemetry_set_current_context(sb->has_trace ? &sb->trace : NULL);
            runner_channel_serve(sb->agent, req, issue_on_channel, rn);
            telemetry_set_current_context(NULL);
        } else {
            api_fail(&err, 410, "gone", "this sandbox no longer runs");
            api_send_error(req, &err);
        }
        return 0;
    }
    if (httpd_stopping(req) && h2o_memis(path.base, path.len, H2O_STRLIT("/v1/sandboxes"))) {
        /* the drain stops every sandbox: no launches now, and no listing a
         * controller would take for crashes */
        api_fail(&err, 503, "unavailable", "the runner is stopping");
    } else if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/logs")) &&
               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        answer = read_logs(rn, req, &err);
    } else if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/sandboxes")) &&
               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        answer = list_sandboxes(rn);
        if (!answer)
            api_fail(&err, 500, "internal", "out of memory");
    } else if (path.len > STRLEN("/v1/sandboxes/") && memcmp(path.base, "/v1/sandboxes/", 14) == 0 &&
               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE"))) {
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)MIN(path.len - 14, sizeof(name) - 1), path.base + 14);
        sandbox *sb = find_sandbox(rn, name);
        if (sb) {
            stop_sandbox(rn, sb);
            answer = json_pack("{s:s, s:s}", "name", name, "status", "deleted");
        } else
            api_fail(&err, 404, "not_found", "no running sandbox %s", name);
    } else if (post && (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/sandboxes")) ||
                        h2o_memis(path.base, path.len, H2O_STRLIT("/v1/evidence")))) {
        bool launch = path.len == STRLEN("/v1/sandboxes");
        if (req->entity.len > RUNNER_BODY_MAX)
            api_fail(&err, 413, "too_large", "the request body is limited to %d bytes", RUNNER_BODY_MAX);
        else {
            json_t *body = api_decode_body(req->entity.base, req->entity.len, &err);
            telemetry_span *span = launch ? launch_span(req, body) : NULL;
            answer = !body ? NULL : launch ? launch_sandbox(rn, body, &err) : issue(rn, body, &err);
            json_decref(body);
            status = launch ? 201 : 200;
            launch_span_end(span, answer ? status : err.status, answer ? NULL : err.message);
        }
    } else
        api_fail(&err, 404, "not_found", "no such endpoint");
    if (answer) {
        api_send_json(req, status, answer);
        json_decref(answer);
    } else
        api_send_error(req, &err);
    return 0;
}

static void register_handlers(h2o_pathconf_t *pathconf, void *userdata)
{
    runner_handler *h = (runner_handler *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->runner = userdata;
}

/* The runner serves from one thread, which also reaps exited sandboxes. */
static void *thread_init(h2o_context_t *ctx, void *userdata)
{
    runner *rn = userdata;
    rn->ctx = ctx;
    h2o_timeout_init(ctx->loop, &rn->reap_timeout, RUNNER_REAP_MS);
    rn->reap_entry.cb = reap;
    h2o_timeout_link(ctx->loop, &rn->reap_timeout, &rn->reap_entry);
    if (runner_output_new(ctx->loop, rn->cfg->dir, &rn->output) < 0)
        log_fields(LOG_LEVEL_ERROR, "out of memory for the workloads' output; sandboxes cannot be launched", NULL);
    /* egress decisions are audited (runner/egress.h) */
    int r = rn->cfg->audit_socket ? audit_event_start(rn->cfg->audit_socket) : 0;
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot start audit delivery; egress decisions are logged only", "error",
                   strerror(-r), NULL);
    r = runner_forward_start(ctx, rn->cfg->api_url, rn->cfg->api_role_url, rn->cfg->ca_cert, rn->cfg->token);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot start forwarding enclaves' key release", "error", strerror(-r), NULL);
    return rn;
}

static bool thread_busy(void *state)
{
    return runner_forward_busy();
}

/* At shutdown no sandbox outlives the runner. */
static void thread_drain(void *state)
{
    runner *rn = state;
    for (size_t i = 0; i < RUNNER_SANDBOXES_MAX; i++)
        if (rn->sandboxes[i].pid)
            stop_sandbox(rn, &rn->sandboxes[i]);
    runner_output_free(rn->output); /* its pipes are closed while the loop still runs */
    rn->output = NULL;
}

static void thread_dispose(void *state)
{
    runner *rn = state;
    runner_output_free(rn->output);
    rn->output = NULL;
    runner_forward_stop();
    audit_event_stop(2000);
    if (h2o_timeout_is_linked(&rn->reap_entry))
        h2o_timeout_unlink(&rn->reap_entry);
    h2o_timeout_dispose(rn->ctx->loop, &rn->reap_timeout);
}

/* Loads the platform key, its certificate and the platform CA. */
static int runner_load(const runner_server_config *cfg, runner *rn)
{
    FILE *f = fopen(cfg->key, "re");
    rn->key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    f = fopen(cfg->cert, "re");
    rn->cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    f = fopen(cfg->platform_ca_cert, "re");
    rn->ca = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (!rn->key || !rn->cert || !rn->ca)
        return -EINVAL;
    return sha384_file(AT_FDCWD, "/proc/self/exe", true, rn->runtime, NULL);
}

/* Serves the runner's socket with the platform key loaded; see server.h. */
int runner_serve(const runner_server_config *cfg)
{
    runner rn = {.cfg = cfg};
    if (cfg->agent && cfg->agent[0] && strlen(cfg->agent) < sizeof(rn.agent_path))
        strcpy(rn.agent_path, cfg->agent); /* the supervisor's copy in the runner's own files */
    else if (runner_agent_locate(rn.agent_path, sizeof(rn.agent_path)) < 0)
        log_fields(LOG_LEVEL_WARN, "no cloister-agent next to cloisterd (nor $CLOISTER_AGENT): agent-mode sandboxes "
                   "cannot be launched", NULL);
    int r = runner_load(cfg, &rn);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot load the platform key, its certificate or the platform CA", "key",
                   cfg->key, "error", strerror(-r), NULL);
    } else if ((r = runner_limits_new(cfg->cgroup, &rn.limits)) < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot set up the sandboxes' limits", "error", strerror(-r), NULL);
    } else {
        char listen[4300];
        snprintf(listen, sizeof(listen), "unix:%s", cfg->socket);
        /* only the api role (its Enclave controller) launches and asks for evidence */
        const peer_policy peers = {.socket = "runner.sock", .roles = cfg->roles, .n_roles = cfg->n_roles, .uid = geteuid(),
                                   .allowed = {"api"}};
        httpd_config h = {
            .name = "runner",
            .listen = listen,
            .threads = 1,
            .max_request_body = RUNNER_JOB_PART_MAX + RUNNER_BODY_MAX, /* a job's result part; every other
                                                                           body is checked against its own cap */
            .hooks = {.register_handlers = register_handlers, .thread_init = thread_init,
                      .thread_drain = thread_drain, .thread_busy = thread_busy, .thread_dispose = thread_dispose},
            .userdata = &rn,
            .ready_flag = &cfg->health->ready,
            .check_peer = peer_check_hook,
            .peer_data = &peers,
            .mtls = cfg->mtls,
            .check_cert = peer_tls_check_hook,
        };
        runner_plugins *plugins = NULL;
        /* the runner's own egress plugins: trusted ones in process, the others in sandboxes of its launcher */
        char spawn[4300];
        snprintf(spawn, sizeof(spawn), "%s/plugins.sock", cfg->dir);
        if (runner_plugins_start(cfg->dir, cfg->plugin_dir, cfg->plugin_sandbox, cfg->roles, cfg->n_roles,
                                 &plugins) == 0)
            (void)plugin_host_configure(cfg->plugin_dir, cfg->plugin_trusted, spawn);
        r = httpd_run(&h);
        runner_plugins_stop(plugins);
    }
    runner_limits_free(rn.limits);
    EVP_PKEY_free(rn.key);
    X509_free(rn.cert);
    X509_free(rn.ca);
    return r < 0 ? 1 : 0;
}
