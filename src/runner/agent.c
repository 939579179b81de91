/* Agent-mode sandboxes and their channel (see agent.h). */
#include "attest/atls.h"
#include "runner/agent.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/socket.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "httpd/httpd.h"
#include "daemon/peer-tls.h"
#include "httpd/offload.h"
#include "resource/resource.h"
#include "telemetry/telemetry.h"
#include "sandbox/measure.h"

#define NOBODY 65534 /* the sandbox's root on the host: it must reach the channel socket */
#define AGENT_ARGS_MAX (8 + 2 * RUNNER_AGENT_SECRETS_MAX + 258)
#define FORWARD_PENDING_MAX 32
#define FORWARD_TIMEOUT_MS 10000
#define FORWARD_ANSWER_MAX (RUNNER_JOB_PART_MAX + 64 * 1024) /* an input chunk */
#define TOKEN_MAX 4096
/* token buckets per sandbox: evidence (refreshes, nonce'd aTLS handshakes)
 * and forwarded calls (each challenge takes a slot of the API's table) */
#define EVIDENCE_RATE 20.0
#define EVIDENCE_BURST 64.0
#define FORWARD_RATE 2.0
#define FORWARD_BURST 32.0
/* a job's data calls (input chunks, result parts) */
#define DATA_RATE 500.0
#define DATA_BURST 1000.0
/* the agent's status reports (ready, its last error) */
#define REPORT_RATE 5.0
#define REPORT_BURST 20.0

typedef struct bucket {
    double tokens;
    uint64_t at; /* monotonic ns of the last refill */
} bucket;

struct runner_agent {
    char name[64];
    char dir[PATH_MAX];
    char channel_path[PATH_MAX + 32], atls_path[PATH_MAX + 32];
    int channel_fd, atls_fd; /* listening; -1 once handed over or absent */
    httpd_listener *listener;
    uint8_t measurement[48];
    struct {
        char secret[64]; /* a Secret's name, "" for a Key */
        char key[64];    /* the Key, or the Secret's data key */
        char file[ATLS_SECRET_FILE_MAX + 1];
    } secrets[RUNNER_AGENT_SECRETS_MAX];
    char enclave[64]; /* the Enclave of its owner tag (enclave/<name>/…), "" when none: a Secret's release names it */
    size_t n_secrets;
    bool atls;
    char *args[AGENT_ARGS_MAX]; /* the sandbox's argv; strings we own up to n_owned */
    size_t n_owned;
    const char *agent_path;
    bucket evidence, forward, data, reports;
    bool ready;                        /* the agent reported its workload up (answering on its port) */
    char error[RUNNER_AGENT_ERROR_MAX]; /* the agent's last reported error, "" when none */
    struct {
        bool on;               /* job mode: the agent runs one run of one Job */
        char name[64];
        uint64_t run;
        char digest[65];       /* hex */
        uint64_t result_bytes; /* uploaded so far, capped at RUNNER_JOB_RESULT_MAX */
    } job;
};

/* Finds ENV's path (absolute), else one of TRIES relative to this
 * executable's directory, that passes access(MODE); its real path into OUT. */
static int locate(const char *env_name, const char *const *tries, size_t n_tries, int mode, char *out, size_t size)
{
    const char *env = getenv(env_name);
    char self[PATH_MAX], candidate[PATH_MAX + 64];
    if (env && *env) {
        if (env[0] != '/' || access(env, mode) < 0 || strlen(env) >= size)
            return -ENOENT;
        strcpy(out, env);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return -ENOENT;
    self[n] = 0;
    const char *dir = dirname(self);
    for (size_t i = 0; i < n_tries; i++) {
        char real[PATH_MAX];
        snprintf(candidate, sizeof(candidate), "%s/%s", dir, tries[i]);
        if (access(candidate, mode) == 0 && realpath(candidate, real) && strlen(real) < size) {
            strcpy(out, real);
            return 0;
        }
    }
    return -ENOENT;
}

int runner_agent_locate(char *out, size_t size)
{
    static const char *const tries[] = {"cloister-agent", "../agent/cloister-agent"};
    return locate("CLOISTER_AGENT", tries, ELEMENTSOF(tries), X_OK, out, size);
}

int runner_engine_locate(char *out, size_t size)
{
    static const char *const tries[] = {"cloister-job-bundle", "../job/cloister-job-bundle"};
    return locate("CLOISTER_JOB_BUNDLE", tries, ELEMENTSOF(tries), R_OK | X_OK, out, size);
}

int runner_plugin_sandbox_locate(char *out, size_t size)
{
    static const char *const tries[] = {"cloister-plugin-sandbox", "../plugin/cloister-plugin-sandbox"};
    return locate("CLOISTER_PLUGIN_SANDBOX", tries, ELEMENTSOF(tries), X_OK, out, size);
}

/* Takes one token of B (RATE per second, at most BURST); false when empty. */
static bool bucket_take(bucket *b, double rate, double burst)
{
    uint64_t now = time_mono_ns();
    if (b->at == 0)
        b->tokens = burst;
    else
        b->tokens = MIN(burst, b->tokens + (double)(now - b->at) / 1e9 * rate);
    b->at = now;
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}



/* Parses PARAMS into AG; -1 with ERR (400) when a field is wrong. */
static int parse_params(runner_agent *ag, const json_t *params, api_error *err)
{
    if (!json_is_object(params))
        return api_fail(err, 400, "invalid", "agent must be an object: {\"secrets\": [{\"key\", \"file\"}]}");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)params, k, v) if (strcmp(k, "secrets") != 0 && strcmp(k, "job") != 0) return api_fail(
        err, 400, "invalid", "agent: unknown field %.64s (agent takes secrets or job)", k);
    const json_t *job = json_object_get(params, "job");
    if (job) {
        const char *name = json_string_value(json_object_get(job, "name"));
        const char *digest = json_string_value(json_object_get(job, "digest"));
        const json_t *run = json_object_get(job, "run");
        if (json_object_get(params, "secrets") || !json_is_object(job) || json_object_size(job) != 3 || !name ||
            !resource_name_valid(name) || strlen(name) >= sizeof(ag->job.name) || !json_is_integer(run) ||
            json_integer_value(run) < 1 || !digest || strlen(digest) != 64 || strspn(digest, "0123456789abcdef") != 64)
            return api_fail(err, 400, "invalid",
                            "agent.job must be {name, run, digest} (a Job's name, the run's number, the digest in "
                            "lower-case hex), without secrets");
        ag->job.on = true;
        strcpy(ag->job.name, name);
        ag->job.run = (uint64_t)json_integer_value(run);
        strcpy(ag->job.digest, digest);
        return 0;
    }
    const json_t *secrets = json_object_get(params, "secrets");
    if (secrets && (!json_is_array(secrets) || json_array_size(secrets) > RUNNER_AGENT_SECRETS_MAX))
        return api_fail(err, 400, "invalid", "agent.secrets must be a list of at most %d {key, file}",
                        RUNNER_AGENT_SECRETS_MAX);
    size_t i;
    json_array_foreach(secrets, i, v)
    {
        const char *key = json_string_value(json_object_get(v, "key"));
        const char *file = json_string_value(json_object_get(v, "file"));
        const char *secret = json_string_value(json_object_get(v, "secret"));
        if (!json_is_object(v) || json_object_size(v) != (secret ? 3u : 2u) || !key || !file)
            return api_fail(err, 400, "invalid", "agent.secrets[%zu] must be {key, file} or {secret, key, file}", i);
        if (secret && (!resource_name_valid(secret) || strlen(secret) >= sizeof(ag->secrets[0].secret)))
            return api_fail(err, 400, "invalid", "agent.secrets[%zu].secret must be the name of a Secret", i);
        if (secret && !ag->enclave[0])
            return api_fail(err, 400, "invalid",
                            "agent.secrets[%zu]: a Secret's value is released for an Enclave: the launch's owner "
                            "must be enclave/<name>/…", i);
        if (secret ? !resource_data_key_valid(key) || strlen(key) >= sizeof(ag->secrets[0].key)
                   : !resource_name_valid(key) || strlen(key) >= sizeof(ag->secrets[0].key))
            return api_fail(err, 400, "invalid", "agent.secrets[%zu].key must be %s", i,
                            secret ? "one of the Secret's data keys" : "the name of a Key");
        if (!atls_secret_file_valid(file))
            return api_fail(err, 400, "invalid",
                            "agent.secrets[%zu].file must be a plain file name ([A-Za-z0-9._-], not starting "
                            "with '.', at most %d)", i, ATLS_SECRET_FILE_MAX);
        for (size_t j = 0; j < ag->n_secrets; j++)
            if (strcmp(ag->secrets[j].file, file) == 0)
                return api_fail(err, 400, "invalid", "agent.secrets: two secrets go to the file %s", file);
        snprintf(ag->secrets[ag->n_secrets].secret, sizeof(ag->secrets[0].secret), "%s", secret ? secret : "");
        strcpy(ag->secrets[ag->n_secrets].key, key);
        strcpy(ag->secrets[ag->n_secrets].file, file);
        ag->n_secrets++;
    }
    return 0;
}

/* Appends a copy of S to AG's argv; -ENOMEM. */
static int add_arg(runner_agent *ag, const char *s)
{
    if (ag->n_owned + 1 >= AGENT_ARGS_MAX || !(ag->args[ag->n_owned] = strdup(s)))
        return -ENOMEM;
    ag->n_owned++;
    return 0;
}

/* Builds the sandbox's argv: the agent, its options, "--", ARGV. */
static int build_args(runner_agent *ag, uint16_t port, uint64_t memory_bytes, char *const *argv)
{
    char buf[320];
    int r = add_arg(ag, SANDBOX_AGENT_PATH);
    if (r == 0 && memory_bytes) {
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)memory_bytes);
        r = add_arg(ag, "--memory-bytes");
        if (r == 0)
            r = add_arg(ag, buf);
    }
    if (r == 0 && ag->job.on) {
        snprintf(buf, sizeof(buf), "%s:%llu:%s", ag->job.name, (unsigned long long)ag->job.run, ag->job.digest);
        r = add_arg(ag, "--job");
        if (r == 0)
            r = add_arg(ag, buf);
    }
    for (size_t i = 0; r == 0 && i < ag->n_secrets; i++) {
        bool value = ag->secrets[i].secret[0] != 0;
        if (value)
            snprintf(buf, sizeof(buf), "%s:%s:%s", ag->secrets[i].secret, ag->secrets[i].key, ag->secrets[i].file);
        else
            snprintf(buf, sizeof(buf), "%s:%s", ag->secrets[i].key, ag->secrets[i].file);
        r = add_arg(ag, value ? "--secret-value" : "--secret");
        if (r == 0)
            r = add_arg(ag, buf);
    }
    if (r == 0 && ag->atls) {
        snprintf(buf, sizeof(buf), "%d", SANDBOX_INHERIT_FD);
        r = add_arg(ag, "--atls-fd");
        if (r == 0)
            r = add_arg(ag, buf);
        snprintf(buf, sizeof(buf), "%u", port);
        if (r == 0)
            r = add_arg(ag, "--port");
        if (r == 0)
            r = add_arg(ag, buf);
    }
    if (r == 0)
        r = add_arg(ag, "--");
    for (size_t i = 0; r == 0 && argv[i]; i++)
        r = add_arg(ag, argv[i]);
    return r;
}

runner_agent *runner_agent_new(const char *runner_dir, const char *agent_path, const char *name, const char *owner,
                               const json_t *params, const json_t *yaml, char *const *argv, uint64_t memory_bytes,
                               api_error *err)
{
    const json_t *port = json_object_get(yaml, "port");
    if (port && (!json_is_integer(port) || json_integer_value(port) < 1 || json_integer_value(port) > 65535)) {
        api_fail(err, 400, "invalid", "enclave.yaml: port must be the workload's TCP port (1-65535)");
        return NULL;
    }
    if (!agent_path) {
        api_fail(err, 500, "internal", "no cloister-agent executable was found next to cloisterd (or $CLOISTER_AGENT)");
        return NULL;
    }
    runner_agent *ag = calloc(1, sizeof(*ag));
    if (!ag) {
        api_fail(err, 500, "internal", "out of memory");
        return NULL;
    }
    ag->channel_fd = ag->atls_fd = -1;
    ag->agent_path = agent_path;
    ag->atls = port != NULL;
    snprintf(ag->name, sizeof(ag->name), "%s", name);
    static const char enclave_prefix[] = "enclave/";
    const char *slash = owner && strncmp(owner, enclave_prefix, STRLEN(enclave_prefix)) == 0
                            ? strchr(owner + STRLEN(enclave_prefix), '/')
                            : NULL;
    size_t n = slash ? (size_t)(slash - owner - STRLEN(enclave_prefix)) : 0;
    if (n && n < sizeof(ag->enclave)) {
        memcpy(ag->enclave, owner + STRLEN(enclave_prefix), n);
        ag->enclave[n] = 0;
        if (!resource_name_valid(ag->enclave))
            ag->enclave[0] = 0;
    }
    if (parse_params(ag, params, err) < 0) {
        free(ag);
        return NULL;
    }
    int r = sha384_file(AT_FDCWD, agent_path, true, ag->measurement, NULL);
    if (r < 0) {
        api_fail(err, 500, "internal", "cannot measure the agent %s: %s", agent_path, strerror(-r));
        free(ag);
        return NULL;
    }
    /* the sandbox's directory: a fresh one, whatever a crash left behind */
    snprintf(ag->dir, sizeof(ag->dir), "%s/%s", runner_dir, name);
    snprintf(ag->channel_path, sizeof(ag->channel_path), "%s/channel.sock", ag->dir);
    snprintf(ag->atls_path, sizeof(ag->atls_path), "%s/atls.sock", ag->dir);
    unlink(ag->channel_path);
    unlink(ag->atls_path);
    _cleanup_close_ int dirfd = -1;
    /* 0711 and a 0666 atls.sock: the proxy, a user of its own, reaches the
     * agent's attested TLS, which the attestation authenticates */
    if ((mkdir(ag->dir, 0711) < 0 && errno != EEXIST) || chmod(ag->dir, 0711) < 0 || /* past the umask */
        (dirfd = open(ag->dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
        r = negative_errno();
    if (r == 0 && (ag->channel_fd = unix_listen_at(dirfd, "channel.sock", NOBODY)) < 0)
        r = ag->channel_fd;
    if (r == 0 && ag->atls && (ag->atls_fd = unix_listen_at(dirfd, "atls.sock", (uid_t)-1)) < 0)
        r = ag->atls_fd;
    if (r == 0 && ag->atls && fchmodat(dirfd, "atls.sock", 0666, 0) < 0)
        r = negative_errno();
    if (r == 0 && build_args(ag, port ? (uint16_t)json_integer_value(port) : 0, memory_bytes, argv) < 0)
        r = -ENOMEM;
    if (r < 0) {
        api_fail(err, 500, "internal", "cannot prepare the sandbox's sockets in %s: %s", ag->dir, strerror(-r));
        runner_agent_free(ag);
        return NULL;
    }
    return ag;
}

void runner_agent_fill_spec(runner_agent *ag, sandbox_spec *spec)
{
    spec->argv = ag->args;
    spec->channel = ag->channel_path;
    spec->agent = ag->agent_path;
    spec->inherit_fd = ag->atls_fd;
}

const uint8_t *runner_agent_measurement(const runner_agent *ag)
{
    return ag->measurement;
}

int runner_agent_started(runner_agent *ag, h2o_context_t *ctx, uint64_t tag)
{
    if (ag->atls_fd >= 0) {
        close(ag->atls_fd);
        ag->atls_fd = -1;
    }
    int r = httpd_listener_add(ctx, ag->channel_fd, tag, RUNNER_CHANNEL_CONNS_MAX, &ag->listener);
    ag->channel_fd = -1; /* taken over, even on failure */
    return r;
}

void runner_agent_describe(const runner_agent *ag, json_t *item)
{
    json_t *secrets = json_array();
    for (size_t i = 0; i < ag->n_secrets; i++)
    {
        json_t *s = json_pack("{s:s, s:s}", "key", ag->secrets[i].key, "file", ag->secrets[i].file);
        if (s && ag->secrets[i].secret[0])
            json_object_set_new(s, "secret", json_string(ag->secrets[i].secret));
        json_array_append_new(secrets, s);
    }
    json_object_set_new(item, "agent", json_true());
    json_object_set_new(item, "ready", json_boolean(ag->ready));
    if (ag->error[0])
        json_object_set_new(item, "error", json_string(ag->error));
    json_object_set_new(item, "secrets", secrets);
    if (ag->job.on)
        json_object_set_new(item, "job", json_pack("{s:s, s:I}", "name", ag->job.name, "run", (json_int_t)ag->job.run));
    if (ag->atls)
        json_object_set_new(item, "atls", json_string(ag->atls_path));
}

void runner_agent_free(runner_agent *ag)
{
    if (!ag)
        return;
    httpd_listener_close(ag->listener);
    if (ag->channel_fd >= 0)
        close(ag->channel_fd);
    if (ag->atls_fd >= 0)
        close(ag->atls_fd);
    if (ag->dir[0]) {
        unlink(ag->channel_path);
        unlink(ag->atls_path);
        rmdir(ag->dir);
    }
    for (size_t i = 0; i < ag->n_owned; i++)
        free(ag->args[i]);
    free(ag);
}

/* ---- the forwarder ---- */

/* One forwarded call, run on the forwarder's pool (httpd/offload.h): one
 * worker, so calls reach the API one at a time. */
typedef struct forward_job {
    offload_job super;
    char sandbox[64];
    char what[96]; /* "challenge" or "release of <key>", for the log */
    char path[200];
    const char *method;       /* "POST" (default), "GET", "PUT" */
    const char *content_type; /* of BODY: JSON unless said otherwise */
    char *body;
    size_t body_len;
    int error; /* 0, or why the API could not be asked */
    long status;
    char answer_type[64]; /* the answer's Content-Type */
    strbuf answer;
} forward_job;

static struct {
    bool started;
    offload_pool *pool;
    offload_loop *loop;
    char url[300];
    char role_url[600]; /* the api's listener for roles; "": calls go to url with the token */
    char ca_file[PATH_MAX];
    char *auth; /* "Authorization: Bearer <token>", wiped at stop; NULL without a token */
} fwd;

static size_t on_answer(char *p, size_t size, size_t n, void *userdata)
{
    return strbuf_append(userdata, p, size * n) == 0 ? size * n : 0;
}

/* Sends JOB to the API (on the worker thread). */
static void forward_one(offload_job *super)
{
    forward_job *job = (forward_job *)super;
    char url[512];
    snprintf(url, sizeof(url), "%s%s", fwd.url, job->path);
    CURL *curl = curl_easy_init();
    char content_type[96];
    snprintf(content_type, sizeof(content_type), "Content-Type: %s",
             job->content_type ? job->content_type : "application/json");
    struct curl_slist *headers = curl_slist_append(NULL, content_type), *route = NULL;
    /* on the api's listener for roles the certificate says who calls: no token */
    struct curl_slist *h2 = headers && fwd.role_url[0] ? headers
                            : headers                 ? curl_slist_append(headers, fwd.auth)
                                                      : NULL;
    /* the forward's span, in the sandbox's launch trace; the API's span of
     * the call is its child */
    trace_context launch;
    bool in_trace = telemetry_current_context(&launch);
    telemetry_span *span = telemetry_span_start("enclave call forward", TELEMETRY_SPAN_CLIENT, in_trace ? &launch : NULL);
    telemetry_span_set_attr_str(span, "cloister.sandbox", job->sandbox);
    telemetry_span_set_attr_str(span, "cloister.call", job->what);
    telemetry_set_current(span);
    char traceparent[70];
    if (h2 && telemetry_traceparent_header(traceparent))
        h2 = curl_slist_append(h2, traceparent);
    if (!curl || !h2) {
        job->error = -ENOMEM;
        curl_easy_cleanup(curl);
        curl_slist_free_all(headers);
        telemetry_span_end(span);
        return;
    }
    if (fwd.role_url[0]) {
        job->error = peer_curl_target(curl, fwd.role_url, "api", job->path, &route);
        if (job->error < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot reach the api's listener for roles (peers.apiRoles, api.roleListen)", "address",
                       fwd.role_url, "error", strerror(-job->error), NULL);
            curl_easy_cleanup(curl);
            curl_slist_free_all(headers);
            telemetry_span_end(span);
            telemetry_set_current_context(in_trace ? &launch : NULL);
            return;
        }
    } else {
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_CAINFO, fwd.ca_file);
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h2);
    if (job->method && strcmp(job->method, "GET") == 0)
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    else {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, job->body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->body_len);
        if (job->method && strcmp(job->method, "PUT") == 0)
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
    }
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &job->answer);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)FORWARD_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    CURLcode c = curl_easy_perform(curl);
    if (fwd.role_url[0])
        peer_tls_count_connections(curl, fwd.role_url, "api");
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &job->status);
    char *type = NULL;
    if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK && type)
        snprintf(job->answer_type, sizeof(job->answer_type), "%s", type);
    if (c != CURLE_OK)
        job->error = c == CURLE_COULDNT_CONNECT ? -ECONNREFUSED : c == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
                     : c == CURLE_WRITE_ERROR                     ? -E2BIG
                                                                  : -EIO;
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers); /* the list held the token */
    curl_slist_free_all(route);
    telemetry_span_set_attr_int(span, "http.response.status_code", job->status);
    if (job->error < 0 || job->status >= 500)
        telemetry_span_set_status(span, TELEMETRY_STATUS_ERROR, job->error < 0 ? strerror(-job->error) : "API error");
    telemetry_span_end(span);
    telemetry_set_current_context(in_trace ? &launch : NULL);
}

static void job_free(forward_job *job)
{
    free(job->body);
    strbuf_free(&job->answer);
    free(job);
}

/* Answers a forwarded call on the loop: the API's status and JSON as they
 * are, or 502 when it could not be reached or answered nonsense. */
static void answer_job(forward_job *job, h2o_req_t *req)
{
    api_error err;
    if (job->error == 0 && job->status == 200 && strcmp(job->answer_type, "application/octet-stream") == 0) {
        /* a job's input chunk: passed on as it is */
        req->res.status = 200;
        req->res.reason = "OK";
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("application/octet-stream"));
        req->res.content_length = job->answer.len;
        h2o_send_inline(req, job->answer.data ? job->answer.data : "", job->answer.len);
        return;
    }
    json_t *j = job->error == 0 && job->answer.data ? json_loadb(job->answer.data, job->answer.len, 0, NULL) : NULL;
    char status[16];
    snprintf(status, sizeof(status), "%ld", job->status);
    if (job->error < 0 || !json_is_object(j)) {
        log_fields(LOG_LEVEL_WARN, "cannot forward an enclave's call to the API", "sandbox", job->sandbox, "call",
                   job->what, "error", job->error < 0 ? strerror(-job->error) : "not JSON", "status", status, NULL);
        api_fail(&err, 502, "bad_gateway", "the API could not be asked (%s)",
                 job->error < 0 ? strerror(-job->error) : "it did not answer JSON");
        api_send_error(req, &err);
    } else {
        log_fields(job->status == 200 ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, "forwarded an enclave's call to the API",
                   "sandbox", job->sandbox, "call", job->what, "status", status, NULL);
        api_send_json(req, (int)job->status, j);
    }
    json_decref(j);
}

/* On the loop: answers the forwarded call when its sandbox still waits
 * (REQ), and frees it. */
static void on_forwarded(offload_job *super, h2o_req_t *req)
{
    forward_job *job = (forward_job *)super;
    if (req)
        answer_job(job, req);
    job_free(job);
}

int runner_forward_start(h2o_context_t *ctx, const char *api_url, const char *api_role_url, const char *ca_file,
                         const char *token_file)
{
    if (fwd.started)
        return -EALREADY;
    if (!api_role_url)
        api_role_url = "";
    if (strlen(api_url) >= sizeof(fwd.url) || strlen(api_role_url) >= sizeof(fwd.role_url) ||
        strlen(ca_file) >= sizeof(fwd.ca_file))
        return -ENAMETOOLONG;
    strcpy(fwd.url, api_url);
    strcpy(fwd.role_url, api_role_url);
    strcpy(fwd.ca_file, ca_file);
    char *token = NULL;
    size_t len = 0;
    int r = 0;
    if (!fwd.role_url[0] && (r = read_file(token_file, TOKEN_MAX, &token, &len)) < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot read the runner's credential token; enclaves get no keys", "path",
                   token_file, "error", strerror(-r), NULL);
    else if (!fwd.role_url[0]) { /* with a role URL the role certificate stands for the token */
        while (len && (token[len - 1] == '\n' || token[len - 1] == '\r' || token[len - 1] == ' '))
            token[--len] = 0;
        if (asprintf(&fwd.auth, "Authorization: Bearer %s", token) < 0)
            fwd.auth = NULL;
        OPENSSL_cleanse(token, len);
        free(token);
    }
    r = offload_pool_new("agent-forward", 1, FORWARD_PENDING_MAX, &fwd.pool);
    if (r == 0 && (r = offload_loop_new(ctx->loop, &fwd.loop)) < 0)
        fwd.pool = (offload_pool_free(fwd.pool), NULL);
    if (r < 0)
        return r;
    fwd.started = true;
    return 0;
}

bool runner_forward_busy(void)
{
    return fwd.started && offload_loop_in_flight(fwd.loop) > 0;
}

void runner_forward_stop(void)
{
    if (!fwd.started)
        return;
    offload_loop_free(fwd.loop); /* the call being forwarded ends; its sandbox is gone */
    offload_pool_free(fwd.pool);
    fwd.loop = NULL;
    fwd.pool = NULL;
    if (fwd.auth) {
        OPENSSL_cleanse(fwd.auth, strlen(fwd.auth));
        free(fwd.auth);
        fwd.auth = NULL;
    }
    fwd.started = false;
}

/* Queues a call of PATH with BODY (taken over, LEN bytes of CONTENT_TYPE,
 * NULL: JSON) by METHOD for AG's sandbox; -1 with ERR when the forwarder
 * cannot take it. */
static int forward_call(runner_agent *ag, h2o_req_t *req, const char *method, const char *path, char *body, size_t len,
                        const char *content_type, const char *what, api_error *err)
{
    forward_job *job = calloc(1, sizeof(*job));
    if (!job) {
        free(body);
        return api_fail(err, 500, "internal", "out of memory");
    }
    strbuf_init(&job->answer, FORWARD_ANSWER_MAX);
    job->super = (offload_job){.work = forward_one, .done = on_forwarded};
    job->body = body;
    job->body_len = len;
    job->method = method;
    job->content_type = content_type;
    snprintf(job->sandbox, sizeof(job->sandbox), "%s", ag->name);
    snprintf(job->what, sizeof(job->what), "%s", what);
    snprintf(job->path, sizeof(job->path), "%s", path);
    int r = !fwd.started                     ? -ESHUTDOWN
            : !fwd.auth && !fwd.role_url[0] ? -ENOKEY
                                             : offload_submit(fwd.pool, fwd.loop, req, &job->super);
    if (r < 0) {
        job_free(job);
        return api_fail(err, 503, "unavailable", "%s",
                        r == -ENOKEY   ? "the runner has no API credential (runner.token): no key can be released"
                        : r == -EAGAIN ? "too many calls are being forwarded; try again"
                                       : "the runner is stopping");
    }
    return 0;
}

/* A JSON POST of BODY (taken over, a string) to PATH; see forward_call(). */
static int forward(runner_agent *ag, h2o_req_t *req, const char *path, char *body, const char *what, api_error *err)
{
    return forward_call(ag, req, "POST", path, body, strlen(body), NULL, what, err);
}

/* ---- the channel ---- */

/* Refuses fields of BODY not in KNOWN (NULL-terminated), a "name" with
 * its own reason; -1 with ERR. */
static int only_fields(const json_t *body, const char *const *known, api_error *err)
{
    if (json_object_get(body, "name"))
        return api_fail(err, 400, "invalid", "name is not accepted on a sandbox's channel: it gets its own evidence only");
    return api_only_fields(body, known, err);
}

/* POST /v1/evidence on the channel: this sandbox's evidence. */
static json_t *channel_evidence(runner_agent *ag, const json_t *body, runner_issue_fn issue, void *userdata,
                                api_error *err)
{
    static const char *const known[] = {"nonce", "user_data", "public_key", NULL};
    if (only_fields(body, known, err) < 0)
        return NULL;
    if (!bucket_take(&ag->evidence, EVIDENCE_RATE, EVIDENCE_BURST)) {
        api_fail(err, 429, "too_many_requests", "evidence is limited to %.0f documents per second", EVIDENCE_RATE);
        return NULL;
    }
    _cleanup_(json_decrefp) json_t *named = json_deep_copy(body);
    if (!named || json_object_set_new(named, "name", json_string(ag->name)) < 0) {
        api_fail(err, 500, "internal", "out of memory");
        return NULL;
    }
    return issue(userdata, named, err);
}

/* POST /v1/kms/keys/{key}/release on the channel: checked, then forwarded. */
static int channel_release(runner_agent *ag, h2o_req_t *req, const char *key, const json_t *body, api_error *err)
{
    bool listed = false;
    for (size_t i = 0; i < ag->n_secrets && !listed; i++)
        listed = !ag->secrets[i].secret[0] && strcmp(ag->secrets[i].key, key) == 0;
    if (!listed)
        return api_fail(err, 403, "forbidden", "key %s is not among this sandbox's secrets", key);
    static const char *const known[] = {"type", "evidence", "publicKey", NULL};
    if (only_fields(body, known, err) < 0)
        return -1;
    const char *type = json_string_value(json_object_get(body, "type"));
    if (!type || strcmp(type, "sandbox") != 0)
        return api_fail(err, 400, "invalid", "type must be sandbox: a sandbox has sandbox evidence");
    if (!json_is_string(json_object_get(body, "evidence")) || !json_is_string(json_object_get(body, "publicKey")))
        return api_fail(err, 400, "invalid", "evidence and publicKey are required (base64)");
    if (!bucket_take(&ag->forward, FORWARD_RATE, FORWARD_BURST))
        return api_fail(err, 429, "too_many_requests", "key release is limited to %.0f calls per second",
                        FORWARD_RATE);
    char path[160], what[96];
    snprintf(path, sizeof(path), "/v1/kms/keys/%s/release", key);
    snprintf(what, sizeof(what), "release of %s", key);
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text)
        return api_fail(err, 500, "internal", "out of memory");
    return forward(ag, req, path, text, what, err);
}

/* POST /v1/secrets/{secret}/{key}/release on the channel: a value of a
 * Secret the sandbox's secrets name, checked, then forwarded to the API as
 * POST /v1/enclaves/{enclave}/secret-release for the sandbox's Enclave. */
static int channel_secret_release(runner_agent *ag, h2o_req_t *req, const char *secret, const char *key,
                                  const json_t *body, api_error *err)
{
    bool listed = false;
    for (size_t i = 0; i < ag->n_secrets && !listed; i++)
        listed = strcmp(ag->secrets[i].secret, secret) == 0 && strcmp(ag->secrets[i].key, key) == 0;
    if (!listed)
        return api_fail(err, 403, "forbidden", "value %s of Secret %s is not among this sandbox's secrets", key, secret);
    static const char *const known[] = {"type", "evidence", "publicKey", NULL};
    if (only_fields(body, known, err) < 0)
        return -1;
    const char *type = json_string_value(json_object_get(body, "type"));
    if (!type || strcmp(type, "sandbox") != 0)
        return api_fail(err, 400, "invalid", "type must be sandbox: a sandbox has sandbox evidence");
    if (!json_is_string(json_object_get(body, "evidence")) || !json_is_string(json_object_get(body, "publicKey")))
        return api_fail(err, 400, "invalid", "evidence and publicKey are required (base64)");
    if (!bucket_take(&ag->forward, FORWARD_RATE, FORWARD_BURST))
        return api_fail(err, 429, "too_many_requests", "key release is limited to %.0f calls per second",
                        FORWARD_RATE);
    _cleanup_(json_decrefp) json_t *named = json_deep_copy(body);
    if (!named || json_object_set_new(named, "secret", json_string(secret)) < 0 ||
        json_object_set_new(named, "key", json_string(key)) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    char path[160], what[96];
    snprintf(path, sizeof(path), "/v1/enclaves/%s/secret-release", ag->enclave);
    snprintf(what, sizeof(what), "release of Secret %s", secret);
    char *text = json_dumps(named, JSON_COMPACT);
    if (!text)
        return api_fail(err, 500, "internal", "out of memory");
    return forward(ag, req, path, text, what, err);
}

/* Splits PATH (LEN bytes after "/v1/secrets/") as "{secret}/{key}/release"
 * into SECRET and KEY (64 bytes each); -EINVAL when it is not one. */
static int parse_secret_path(const char *path, size_t len, char secret[64], char key[64])
{
    static const char suffix[] = "/release";
    if (len <= STRLEN(suffix) || memcmp(path + len - STRLEN(suffix), suffix, STRLEN(suffix)) != 0)
        return -EINVAL;
    len -= STRLEN(suffix);
    const char *slash = memchr(path, '/', len);
    size_t n = slash ? (size_t)(slash - path) : 0, m = slash ? len - n - 1 : 0;
    if (!slash || n == 0 || n >= 64 || m == 0 || m >= 64)
        return -EINVAL;
    memcpy(secret, path, n);
    secret[n] = 0;
    memcpy(key, slash + 1, m);
    key[m] = 0;
    return resource_name_valid(secret) && resource_data_key_valid(key) ? 0 : -EINVAL;
}

/* POST /v1/status {"ready"?: true, "error"?: "…"} on the channel: the
 * agent's report of its workload, kept for the runner's listing. */
static int channel_status(runner_agent *ag, const json_t *body, api_error *err)
{
    static const char *const known[] = {"ready", "error", NULL};
    if (only_fields(body, known, err) < 0)
        return -1;
    const json_t *ready = json_object_get(body, "ready"), *error = json_object_get(body, "error");
    if ((ready && !json_is_boolean(ready)) || (error && !json_is_string(error)))
        return api_fail(err, 400, "invalid", "a status report is {\"ready\": true|false, \"error\": \"…\"}");
    if (!bucket_take(&ag->reports, REPORT_RATE, REPORT_BURST))
        return api_fail(err, 429, "too_many_requests", "status reports are limited to %.0f per second", REPORT_RATE);
    if (ready)
        ag->ready = json_is_true(ready);
    if (error) {
        /* printable ASCII only, cut to the cap: it is shown in the Enclave's status */
        const char *s = json_string_value(error);
        size_t n = 0;
        for (; *s && n + 1 < sizeof(ag->error); s++)
            ag->error[n++] = *s >= 0x20 && *s < 0x7f ? *s : '?';
        ag->error[n] = 0;
    }
    return 0;
}

bool runner_agent_ready(const runner_agent *ag)
{
    return ag->ready;
}

const char *runner_agent_error(const runner_agent *ag)
{
    return ag->error;
}

/* Parses the decimal S (LEN bytes, no sign, no leading zeros but "0") into
 * *RET; -EINVAL otherwise. */
static int parse_offset(const char *s, size_t len, uint64_t *ret)
{
    uint64_t v = 0;
    if (len == 0 || len > 19 || (len > 1 && s[0] == '0'))
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *ret = v;
    return 0;
}

/* The job routes of a job-mode sandbox's channel (agent.h), forwarded to
 * the API under the sandbox's own job and run. PATH follows "/v1/job/".
 * Returns 0 when the call was queued, -1 with ERR. */
static int channel_job(runner_agent *ag, h2o_req_t *req, const char *path, size_t len, api_error *err)
{
    if (!ag->job.on)
        return api_fail(err, 403, "forbidden", "this sandbox runs no job: the job routes serve job-mode sandboxes only");
    char api_path[200], what[96];
    int base = snprintf(api_path, sizeof(api_path), "/v1/job-runs/%s/%llu/", ag->job.name,
                        (unsigned long long)ag->job.run);
    static const char result_prefix[] = "result/";
    if (len > STRLEN(result_prefix) && memcmp(path, result_prefix, STRLEN(result_prefix)) == 0) {
        /* a part of the encrypted result, raw bytes */
        uint64_t offset;
        if (parse_offset(path + STRLEN(result_prefix), len - STRLEN(result_prefix), &offset) < 0)
            return api_fail(err, 404, "not_found", "a result part goes to /v1/job/result/{offset}");
        if (req->entity.len == 0 || req->entity.len > RUNNER_JOB_PART_MAX)
            return api_fail(err, 413, "too_large", "a result part holds 1 to %d bytes", RUNNER_JOB_PART_MAX);
        if (offset > RUNNER_JOB_RESULT_MAX || req->entity.len > RUNNER_JOB_RESULT_MAX - offset)
            return api_fail(err, 413, "too_large", "a job's result is limited to %llu bytes",
                            (unsigned long long)RUNNER_JOB_RESULT_MAX);
        if (!bucket_take(&ag->data, DATA_RATE, DATA_BURST))
            return api_fail(err, 429, "too_many_requests", "data calls are limited to %.0f per second", DATA_RATE);
        char *copy = malloc(req->entity.len);
        if (!copy)
            return api_fail(err, 500, "internal", "out of memory");
        memcpy(copy, req->entity.base, req->entity.len);
        snprintf(api_path + base, sizeof(api_path) - (size_t)base, "result?offset=%llu", (unsigned long long)offset);
        snprintf(what, sizeof(what), "result part of job %s", ag->job.name);
        return forward_call(ag, req, "PUT", api_path, copy, req->entity.len, "application/octet-stream", what, err);
    }
    if (req->entity.len > RUNNER_CHANNEL_BODY_MAX)
        return api_fail(err, 413, "too_large", "the request body is limited to %d bytes", RUNNER_CHANNEL_BODY_MAX);
    _cleanup_(json_decrefp) json_t *body = api_decode_body(req->entity.base, req->entity.len, err);
    if (!body)
        return -1;
    if (h2o_memis(path, len, H2O_STRLIT("release"))) {
        static const char *const known[] = {"type", "evidence", "publicKey", NULL};
        if (only_fields(body, known, err) < 0)
            return -1;
        if (!bucket_take(&ag->forward, FORWARD_RATE, FORWARD_BURST))
            return api_fail(err, 429, "too_many_requests", "key release is limited to %.0f calls per second",
                            FORWARD_RATE);
        snprintf(api_path + base, sizeof(api_path) - (size_t)base, "release");
        snprintf(what, sizeof(what), "release for job %s", ag->job.name);
    } else if (h2o_memis(path, len, H2O_STRLIT("input"))) {
        /* a chunk of an input's ciphertext: {name, offset} */
        static const char *const known[] = {"name", "offset", NULL};
        const char *name = json_string_value(json_object_get(body, "name"));
        const json_t *offset = json_object_get(body, "offset");
        if (api_only_fields(body, known, err) < 0)
            return -1;
        if (!name || !resource_name_valid(name) || !json_is_integer(offset) || json_integer_value(offset) < 0)
            return api_fail(err, 400, "invalid", "an input chunk is asked as {name: the Dataset, offset: bytes}");
        if (!bucket_take(&ag->data, DATA_RATE, DATA_BURST))
            return api_fail(err, 429, "too_many_requests", "data calls are limited to %.0f per second", DATA_RATE);
        snprintf(api_path + base, sizeof(api_path) - (size_t)base, "inputs/%s?offset=%lld", name,
                 (long long)json_integer_value(offset));
        snprintf(what, sizeof(what), "input %s of job %s", name, ag->job.name);
        return forward_call(ag, req, "GET", api_path, NULL, 0, NULL, what, err);
    } else if (h2o_memis(path, len, H2O_STRLIT("finish"))) {
        snprintf(api_path + base, sizeof(api_path) - (size_t)base, "finish");
        snprintf(what, sizeof(what), "end of job %s", ag->job.name);
    } else
        return api_fail(err, 404, "not_found", "a job sandbox's channel serves /v1/job/release, /v1/job/input, "
                        "/v1/job/result/{offset} and /v1/job/finish");
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text)
        return api_fail(err, 500, "internal", "out of memory");
    return forward(ag, req, api_path, text, what, err);
}

void runner_channel_serve(runner_agent *ag, h2o_req_t *req, runner_issue_fn issue, void *userdata)
{
    api_error err;
    h2o_iovec_t path = req->path_normalized;
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")) && path.len > STRLEN("/v1/job/") &&
        memcmp(path.base, "/v1/job/", STRLEN("/v1/job/")) == 0) {
        if (channel_job(ag, req, path.base + STRLEN("/v1/job/"), path.len - STRLEN("/v1/job/"), &err) < 0)
            api_send_error(req, &err);
        return;
    }
    static const char release_prefix[] = "/v1/kms/keys/", release_suffix[] = "/release";
    json_t *answer = NULL;
    int r = 0;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")))
        r = api_fail(&err, 405, "method_not_allowed", "the channel takes POST only");
    else if (req->entity.len > RUNNER_CHANNEL_BODY_MAX)
        r = api_fail(&err, 413, "too_large", "the request body is limited to %d bytes", RUNNER_CHANNEL_BODY_MAX);
    else {
        _cleanup_(json_decrefp) json_t *body = api_decode_body(req->entity.base, req->entity.len, &err);
        char key[64];
        size_t plen = STRLEN(release_prefix), slen = STRLEN(release_suffix);
        if (!body)
            r = -1;
        else if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/status"))) {
            r = channel_status(ag, body, &err);
            answer = r == 0 ? json_object() : NULL;
        } else if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/evidence"))) {
            answer = channel_evidence(ag, body, issue, userdata, &err);
            r = answer ? 0 : -1;
        } else if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/attest/challenge"))) {
            if (json_object_size(body) != 0)
                r = api_fail(&err, 400, "invalid", "a challenge takes an empty object");
            else if (!bucket_take(&ag->forward, FORWARD_RATE, FORWARD_BURST))
                r = api_fail(&err, 429, "too_many_requests", "challenges are limited to %.0f per second",
                             FORWARD_RATE);
            else {
                char *text = strdup("{}");
                r = text ? forward(ag, req, "/v1/attest/challenge", text, "challenge", &err)
                         : api_fail(&err, 500, "internal", "out of memory");
                if (r == 0)
                    return; /* answered from the loop when the API has */
            }
        } else if (path.len > plen + slen && path.len - plen - slen < sizeof(key) &&
                   memcmp(path.base, release_prefix, plen) == 0 &&
                   memcmp(path.base + path.len - slen, release_suffix, slen) == 0) {
            memcpy(key, path.base + plen, path.len - plen - slen);
            key[path.len - plen - slen] = 0;
            if (!resource_name_valid(key))
                r = api_fail(&err, 404, "not_found", "no such key name");
            else if ((r = channel_release(ag, req, key, body, &err)) == 0)
                return;
        } else if (path.len > STRLEN("/v1/secrets/") && memcmp(path.base, "/v1/secrets/", STRLEN("/v1/secrets/")) == 0) {
            char secret[64], item[64];
            if (parse_secret_path(path.base + STRLEN("/v1/secrets/"), path.len - STRLEN("/v1/secrets/"), secret,
                                  item) < 0)
                r = api_fail(&err, 404, "not_found", "a Secret's value is released at /v1/secrets/{secret}/{key}/release");
            else if ((r = channel_secret_release(ag, req, secret, item, body, &err)) == 0)
                return;
        } else
            r = api_fail(&err, 404, "not_found",
                         "a sandbox's channel serves POST /v1/evidence, /v1/attest/challenge, "
                         "/v1/kms/keys/{key}/release and /v1/secrets/{secret}/{key}/release only");
    }
    if (r == 0 && answer) {
        api_send_json(req, 200, answer);
        json_decref(answer);
    } else
        api_send_error(req, &err);
}
