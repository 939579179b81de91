/* The agent's side of the channel and the agent itself, against a channel
 * this test serves on a Unix socket as the runner would (HTTP/1.1, JSON):
 *   - channel_post(): the request it sends, the answers it accepts, and the
 *     ones it refuses (not JSON, over CHANNEL_RESPONSE_MAX, no socket);
 *   - cloister-agent's command line: what it refuses, with exit status 2;
 *   - key release end to end: challenge, evidence binding the nonce and the
 *     agent's key, the release answer sealed to that key (release_seal_jwe,
 *     as the API seals it), the data key written 0400, and the workload
 *     started only after; a refused release, an answer for another key, or
 *     a secret file that already exists stop it before the workload. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/channel.h"
#include "attest/release.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"

/* ---- a channel served by the test --------------------------------------- */

typedef struct answer {
    int status;
    char *body; /* malloc'd */
} answer;

typedef answer (*handler_fn)(const char *path, const json_t *body);

typedef struct channel_server {
    char path[108];
    int fd;
    handler_fn handler;
    pthread_t thread;
    volatile bool stop;
    unsigned requests;
} channel_server;

static char dir[] = "/tmp/cloister-test-agent-XXXXXX";
static channel_server srv;

static answer json_answer(int status, json_t *body)
{
    answer a = {status, json_dumps(body, JSON_COMPACT)};
    json_decref(body);
    return a;
}

/* Reads one request from FD: its path and its JSON body (NULL when none or
 * not JSON). False when the connection ended first. */
static bool read_request(int fd, char *path, size_t path_size, json_t **ret_body)
{
    static char buf[1 << 20];
    size_t len = 0;
    char *end = NULL;
    while (!end) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = 0;
        end = strstr(buf, "\r\n\r\n");
    }
    char method[16];
    if (sscanf(buf, "%15s %200s", method, path) != 2 || strcmp(method, "POST") != 0)
        return false;
    (void)path_size;
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t want = cl ? strtoul(cl + 17, NULL, 10) : 0, have = len - (size_t)(end + 4 - buf);
    if (strcasestr(buf, "\r\nExpect: 100-continue"))
        (void)!write(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    while (have < want) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        have += (size_t)n;
    }
    *ret_body = json_loadb(end + 4, want, 0, NULL);
    return true;
}

static void *serve(void *arg)
{
    channel_server *s = arg;
    for (;;) {
        int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        if (s->stop) {
            if (c >= 0)
                close(c);
            return NULL;
        }
        if (c < 0)
            continue;
        char path[256];
        json_t *body = NULL;
        if (read_request(c, path, sizeof(path), &body)) {
            s->requests++;
            answer a = s->handler(path, body);
            char head[256];
            int n = snprintf(head, sizeof(head),
                             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                             "Connection: close\r\n\r\n",
                             a.status, strlen(a.body));
            (void)!write(c, head, (size_t)n);
            for (size_t off = 0, left = strlen(a.body); left;) {
                ssize_t w = write(c, a.body + off, left);
                if (w <= 0)
                    break;
                off += (size_t)w;
                left -= (size_t)w;
            }
            free(a.body);
        }
        json_decref(body);
        close(c);
    }
}

static void serve_with(handler_fn handler)
{
    srv.handler = handler;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(srv.path, sizeof(srv.path), "%s/channel.sock", dir);
    strcpy(sa.sun_path, srv.path);
    srv.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(srv.fd >= 0);
    cr_assert_eq(bind(srv.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(srv.fd, 16), 0);
    cr_assert_eq(pthread_create(&srv.thread, NULL, serve, &srv), 0);
}

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    srv = (channel_server){.fd = -1};
}

static void teardown(void)
{
    if (srv.fd >= 0) {
        /* wake the accept with a connection of our own */
        srv.stop = true;
        int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, srv.path);
        cr_assert_eq(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
        pthread_join(srv.thread, NULL);
        close(c);
        close(srv.fd);
    }
    curl_global_cleanup();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "chmod -R u+w '%s'; rm -rf '%s'", dir, dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(agent, .init = setup, .fini = teardown);

/* ---- channel_post --------------------------------------------------------- */

static answer echo(const char *path, const json_t *body)
{
    if (strcmp(path, "/v1/refused") == 0)
        return json_answer(403, json_pack("{s:{s:s, s:s}}", "error", "code", "forbidden", "message",
                                          "not for this sandbox"));
    if (strcmp(path, "/v1/text") == 0)
        return (answer){200, strdup("not json")};
    if (strcmp(path, "/v1/array") == 0)
        return (answer){200, strdup("[1, 2]")};
    return json_answer(200, json_pack("{s:s, s:O}", "path", path, "got", body ? body : json_null()));
}

Test(agent, channel_post_sends_json_and_reads_the_answer)
{
    serve_with(echo);
    json_t *body = json_pack("{s:s, s:i}", "nonce", "00ff", "n", 3), *ret = NULL;
    cr_assert_eq(channel_post(srv.path, "/v1/evidence", body, &ret), 200);
    cr_assert_str_eq(json_string_value(json_object_get(ret, "path")), "/v1/evidence");
    cr_assert(json_equal(json_object_get(ret, "got"), body), "the body arrives as sent");
    json_decref(ret);
    json_decref(body);
    /* no body: an empty object */
    cr_assert_eq(channel_post(srv.path, "/v1/attest/challenge", NULL, &ret), 200);
    cr_assert(json_is_object(json_object_get(ret, "got")));
    cr_assert_eq(json_object_size(json_object_get(ret, "got")), 0);
    json_decref(ret);
}

Test(agent, channel_post_hands_back_an_error_answer)
{
    serve_with(echo);
    json_t *ret = NULL;
    cr_assert_eq(channel_post(srv.path, "/v1/refused", NULL, &ret), 403);
    cr_assert_str_eq(channel_error_message(ret, "fallback"), "not for this sandbox");
    json_t *other = json_pack("{s:s}", "error", "plain");
    cr_assert_str_eq(channel_error_message(other, "fallback"), "fallback");
    cr_assert_str_eq(channel_error_message(NULL, "fallback"), "fallback");
    json_decref(other);
    json_decref(ret);
}

Test(agent, channel_post_refuses_what_is_not_a_json_object)
{
    serve_with(echo);
    json_t *ret = NULL;
    cr_assert_eq(channel_post(srv.path, "/v1/text", NULL, &ret), -EBADMSG);
    cr_assert_eq(channel_post(srv.path, "/v1/array", NULL, &ret), -EBADMSG);
    cr_assert_null(ret, "ret written on a failure");
}

static answer huge(const char *path, const json_t *body)
{
    size_t n = CHANNEL_RESPONSE_MAX + 1024;
    char *pad = malloc(n + 1);
    memset(pad, 'a', n);
    pad[n] = 0;
    answer a = json_answer(200, json_pack("{s:s}", "pad", pad));
    free(pad);
    return a;
}

Test(agent, channel_post_caps_the_answer)
{
    serve_with(huge);
    json_t *ret = NULL;
    cr_assert_eq(channel_post(srv.path, "/v1/evidence", NULL, &ret), -E2BIG);
    cr_assert_null(ret);
}

Test(agent, channel_post_without_a_runner)
{
    char path[200];
    snprintf(path, sizeof(path), "%s/none.sock", dir);
    json_t *ret = NULL;
    cr_assert_eq(channel_post(path, "/v1/evidence", NULL, &ret), -ECONNREFUSED);
    char long_path[300];
    memset(long_path, 'a', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = 0;
    cr_assert_eq(channel_post("/tmp/x.sock", long_path, NULL, &ret), -ENAMETOOLONG);
    cr_assert_null(ret);
}

/* ---- the agent executable ------------------------------------------------ */

/* Runs cloister-agent (built beside this test) with ARGV, its stderr into
 * DIR/agent.err; returns its exit status (128 + signal when killed). */
static int run_agent(const char *const *args)
{
    char self[PATH_MAX], agent[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    snprintf(agent, sizeof(agent), "%s/src/agent/cloister-agent", dirname(self));
    cr_assert_eq(access(agent, X_OK), 0, "%s is built", agent);
    const char *argv[48] = {agent};
    size_t k = 1;
    for (; args[k - 1] && k < ELEMENTSOF(argv) - 1; k++)
        argv[k] = args[k - 1];
    argv[k] = NULL;
    char err_path[200];
    snprintf(err_path, sizeof(err_path), "%s/agent.err", dir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        dup2(fd, STDERR_FILENO);
        dup2(fd, STDOUT_FILENO);
        /* the agent does not free what it holds until exit, as pid 1 of a sandbox */
        setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        execv(agent, (char *const *)argv);
        _exit(126);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *agent_output(void)
{
    char p[200], *text = NULL;
    size_t len;
    snprintf(p, sizeof(p), "%s/agent.err", dir);
    cr_assert_eq(read_file(p, 1 << 20, &text, &len), 0);
    return text;
}

static void expect_refused(const char *const *args, const char *message)
{
    cr_expect_eq(run_agent(args), 2, "%s", args[0]);
    char *out = agent_output();
    cr_expect(strstr(out, message), "%s: expected \"%s\" in: %s", args[0], message, out);
    free(out);
}

Test(agent, command_line_refusals)
{
    expect_refused((const char *[]){"--", NULL}, "follows \"--\"");
    expect_refused((const char *[]){"--", "bin/true", NULL}, "an absolute path");
    expect_refused((const char *[]){"--port", "8080", "--", "/bin/true", NULL}, "--atls-fd and --port go together");
    expect_refused((const char *[]){"--atls-fd", "3", "--", "/bin/true", NULL}, "--atls-fd and --port go together");
    expect_refused((const char *[]){"--atls-fd", "2", "--port", "80", "--", "/bin/true", NULL}, "--atls-fd takes");
    expect_refused((const char *[]){"--port", "65536", "--atls-fd", "3", "--", "/bin/true", NULL}, "--port takes");
    expect_refused((const char *[]){"--port", "-1", "--atls-fd", "3", "--", "/bin/true", NULL}, "--port takes");
    expect_refused((const char *[]){"--refresh", "4", "--", "/bin/true", NULL}, "--refresh takes");
    expect_refused((const char *[]){"--refresh", "3601", "--", "/bin/true", NULL}, "--refresh takes");
    expect_refused((const char *[]){"--refresh", "60s", "--", "/bin/true", NULL}, "--refresh takes");
    expect_refused((const char *[]){"--memory-bytes", "1000", "--", "/bin/true", NULL}, "at least 1 MiB");
    expect_refused((const char *[]){"--secret", "nofile", "--", "/bin/true", NULL}, "--secret takes KEY:FILE");
    expect_refused((const char *[]){"--secret", ":f", "--", "/bin/true", NULL}, "--secret takes KEY:FILE");
    expect_refused((const char *[]){"--secret", "Key_1:f", "--", "/bin/true", NULL}, "KEY must be a resource name");
    expect_refused((const char *[]){"--secret", "k:../f", "--", "/bin/true", NULL}, "FILE a plain file");
    expect_refused((const char *[]){"--secret", "k:.hidden", "--", "/bin/true", NULL}, "FILE a plain file");
    expect_refused((const char *[]){"--secret", "a:f", "--secret", "b:f", "--", "/bin/true", NULL},
                   "two secrets go to the file f");
    expect_refused((const char *[]){"--bogus", "--", "/bin/true", NULL}, "usage:");
    static const char digest[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char job[200];
    snprintf(job, sizeof(job), "by-city:1:%s", digest);
    expect_refused((const char *[]){"--job", "by-city:1", "--", "/bin/true", NULL}, "--job takes NAME:RUN:DIGEST");
    expect_refused((const char *[]){"--job", "by-city:0:00", "--", "/bin/true", NULL}, "--job takes NAME:RUN:DIGEST");
    expect_refused((const char *[]){"--job", "By_City:1:00", "--", "/bin/true", NULL}, "--job takes NAME:RUN:DIGEST");
    snprintf(job, sizeof(job), "by-city:1:%.63sG", digest);
    expect_refused((const char *[]){"--job", job, "--", "/bin/true", NULL}, "--job takes NAME:RUN:DIGEST");
    snprintf(job, sizeof(job), "by-city:1:%s", digest);
    expect_refused((const char *[]){"--job", job, "--secret", "k:f", "--", "/bin/true", NULL},
                   "--job runs the engine alone");
}

Test(agent, help_and_at_most_16_secrets)
{
    cr_assert_eq(run_agent((const char *[]){"--help", NULL}), 0);
    char *out = agent_output();
    cr_assert(strstr(out, "usage: cloister-agent"));
    free(out);
    const char *args[40];
    char names[17][16];
    size_t k = 0;
    for (int i = 0; i < 17; i++) {
        snprintf(names[i], sizeof(names[i]), "k%d:f%d", i, i);
        args[k++] = "--secret";
        args[k++] = names[i];
    }
    args[k++] = "--";
    args[k++] = "/bin/true";
    args[k] = NULL;
    expect_refused(args, "at most 16 --secret");
}

/* ---- key release through the channel -------------------------------------- */

static const char *const data_key = "0123456789abcdef0123456789abcdef"; /* 32 bytes, as a released data key */
static char nonce_hex[65];
static const char *release_key_name = "model-key"; /* the key the sealed answer names */
static int release_status = 200;
static char last_report[600]; /* the last POST /v1/status the agent made, as JSON */
static int ready_reports;

/* The runner's channel as an agent sees it. Evidence must bind the nonce
 * last issued and a public key; the release answer is sealed to that key. */
static answer runner_channel(const char *path, const json_t *body)
{
    if (strcmp(path, "/v1/attest/challenge") == 0) {
        uint8_t nonce[32];
        cr_assert_eq(random_bytes(nonce, sizeof(nonce)), 0);
        hex_encode(nonce, sizeof(nonce), nonce_hex);
        return json_answer(200, json_pack("{s:s}", "nonce", nonce_hex));
    }
    if (strcmp(path, "/v1/evidence") == 0) {
        const char *nonce = json_string_value(json_object_get(body, "nonce"));
        const char *key = json_string_value(json_object_get(body, "public_key"));
        if (!key || (nonce && strcmp(nonce, nonce_hex) != 0))
            return json_answer(400, json_pack("{s:{s:s}}", "error", "message", "bad evidence request"));
        /* the document is opaque to the agent on the release path */
        char doc[300];
        snprintf(doc, sizeof(doc), "evidence for %.200s", key);
        char b64[500];
        base64_encode((const uint8_t *)doc, strlen(doc), b64, false);
        return json_answer(200, json_pack("{s:s}", "document", b64));
    }
    if (strcmp(path, "/v1/status") == 0) {
        char *text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(last_report, sizeof(last_report), "%s", text ? text : "");
        ready_reports += json_is_true(json_object_get(body, "ready"));
        free(text);
        return json_answer(200, json_object());
    }
    if (strcmp(path, "/v1/kms/keys/model-key/release") == 0) {
        if (release_status != 200)
            return json_answer(release_status, json_pack("{s:{s:s, s:s}}", "error", "code", "forbidden", "message",
                                                         "the evidence does not satisfy AttestationPolicy bench"));
        const char *type = json_string_value(json_object_get(body, "type"));
        const char *ev = json_string_value(json_object_get(body, "evidence"));
        const char *pk = json_string_value(json_object_get(body, "publicKey"));
        cr_assert(type && ev && pk && strcmp(type, "sandbox") == 0);
        uint8_t spki[512];
        long n = base64_decode(pk, strlen(pk), spki, sizeof(spki), false);
        cr_assert(n > 0);
        char b64[64];
        base64_encode((const uint8_t *)data_key, strlen(data_key), b64, false);
        json_t *plain = json_pack("{s:s, s:s}", "key", release_key_name, "plaintext", b64);
        char *text = json_dumps(plain, JSON_COMPACT), *jwe = NULL;
        cr_assert_eq(release_seal_jwe(spki, (size_t)n, (const uint8_t *)text, strlen(text), &jwe), 0);
        answer a = json_answer(200, json_pack("{s:s}", "jwe", jwe));
        free(jwe);
        free(text);
        json_decref(plain);
        return a;
    }
    return json_answer(404, json_pack("{s:{s:s}}", "error", "message", "no such endpoint"));
}

/* Runs the agent with one secret model-key:model.key into DIR/secrets and a
 * workload that records it ran, exiting 3. Returns the agent's status. */
static int run_release(char *secrets, size_t size, char *marker, size_t marker_size)
{
    snprintf(secrets, size, "%s/secrets", dir);
    mkdir(secrets, 0700);
    snprintf(marker, marker_size, "%s/workload-ran", dir);
    char script[1024];
    snprintf(script, sizeof(script), "test -f %s/model.key && touch %s; exit 3", secrets, marker);
    return run_agent((const char *[]){"--channel", srv.path, "--secrets-dir", secrets, "--secret",
                                      "model-key:model.key", "--", "/bin/sh", "-c", script, NULL});
}

Test(agent, release_writes_the_data_key_0400_then_starts_the_workload)
{
    serve_with(runner_channel);
    char secrets[200], marker[200], file[300];
    cr_assert_eq(run_release(secrets, sizeof(secrets), marker, sizeof(marker)), 3,
                 "the agent exits with its workload's status");
    cr_assert_eq(access(marker, F_OK), 0, "the workload ran, after the secret was there");
    snprintf(file, sizeof(file), "%s/model.key", secrets);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0400);
    char *value = NULL;
    size_t len;
    cr_assert_eq(chmod(file, 0600), 0);
    cr_assert_eq(read_file(file, 4096, &value, &len), 0);
    cr_assert_eq(len, strlen(data_key));
    cr_assert_eq(memcmp(value, data_key, len), 0);
    free(value);
    cr_assert_eq(srv.requests, 5, "challenge, evidence, release, ready (no port: at once), the workload's exit");
    cr_assert_eq(ready_reports, 1);
    cr_assert(strstr(last_report, "the workload exited (exit status 3)"), "%s", last_report);
    char *out = agent_output();
    cr_assert_null(strstr(out, data_key), "the data key is never logged");
    free(out);
}

Test(agent, a_refused_release_stops_before_the_workload)
{
    release_status = 403;
    serve_with(runner_channel);
    char secrets[200], marker[200], file[300];
    cr_assert_eq(run_release(secrets, sizeof(secrets), marker, sizeof(marker)), 1);
    cr_assert_neq(access(marker, F_OK), 0, "the workload did not start");
    snprintf(file, sizeof(file), "%s/model.key", secrets);
    cr_assert_neq(access(file, F_OK), 0);
    char *out = agent_output();
    cr_assert(strstr(out, "key release refused"), "%s", out);
    cr_assert(strstr(out, "model-key"), "the log names the key: %s", out);
    cr_assert(strstr(out, "does not satisfy AttestationPolicy bench"), "and the API's reason: %s", out);
    free(out);
    /* and the runner was told, for the Enclave's status */
    cr_assert(strstr(last_report, "key release refused (model-key, step release)"), "%s", last_report);
    cr_assert(strstr(last_report, "does not satisfy AttestationPolicy bench"), "%s", last_report);
    cr_assert_eq(ready_reports, 0, "never ready");
}

Test(agent, an_answer_for_another_key_is_not_stored)
{
    release_key_name = "other-key";
    serve_with(runner_channel);
    char secrets[200], marker[200], file[300];
    cr_assert_eq(run_release(secrets, sizeof(secrets), marker, sizeof(marker)), 1);
    cr_assert_neq(access(marker, F_OK), 0);
    snprintf(file, sizeof(file), "%s/model.key", secrets);
    cr_assert_neq(access(file, F_OK), 0);
}

/* ---- job mode ------------------------------------------------------------ */

static const char job_digest_hex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
static bool job_evidence_bound;

/* A job sandbox's channel that refuses the release, after checking that
 * the evidence asked for binds the agent's key, the digest and the run. */
static answer job_channel(const char *path, const json_t *body)
{
    if (strcmp(path, "/v1/evidence") == 0) {
        uint8_t digest[32], nonce[RELEASE_NONCE_LEN];
        char want[2 * RELEASE_NONCE_LEN + 1];
        cr_assert_eq(hex_decode(job_digest_hex, 64, digest, sizeof(digest)), 0);
        release_job_nonce(digest, 7, nonce);
        hex_encode(nonce, sizeof(nonce), want);
        const char *got = json_string_value(json_object_get(body, "nonce"));
        const char *ud = json_string_value(json_object_get(body, "user_data"));
        job_evidence_bound = got && strcmp(got, want) == 0 && ud && strcmp(ud, job_digest_hex) == 0 &&
                             json_string_value(json_object_get(body, "public_key"));
        return json_answer(200, json_pack("{s:s}", "document", "ZXZpZGVuY2U="));
    }
    if (strcmp(path, "/v1/job/release") == 0)
        return json_answer(403, json_pack("{s:{s:s, s:s}}", "error", "code", "release_refused", "message",
                                          "approval: no valid signature over digest 0011… by bob"));
    return json_answer(404, json_pack("{s:{s:s}}", "error", "message", "no such endpoint"));
}

Test(agent, job_mode_binds_digest_and_run_and_a_refused_release_starts_no_engine)
{
    serve_with(job_channel);
    char secrets[200], marker[200], job[200], script[400];
    snprintf(secrets, sizeof(secrets), "%s/secrets", dir);
    mkdir(secrets, 0700);
    snprintf(marker, sizeof(marker), "%s/engine-ran", dir);
    snprintf(job, sizeof(job), "by-city:7:%s", job_digest_hex);
    snprintf(script, sizeof(script), "touch %s", marker);
    cr_assert_eq(run_agent((const char *[]){"--channel", srv.path, "--secrets-dir", secrets, "--job", job, "--",
                                            "/bin/sh", "-c", script, NULL}),
                 1);
    cr_assert(job_evidence_bound, "the evidence binds the key, the digest (user_data) and the run (nonce)");
    cr_assert_neq(access(marker, F_OK), 0, "the engine did not start");
    char *out = agent_output();
    cr_assert(strstr(out, "the engine is not started"), "%s", out);
    cr_assert(strstr(out, "approval: no valid signature"), "the KMS's reason: %s", out);
    free(out);
}

Test(agent, an_existing_secret_file_is_not_replaced)
{
    serve_with(runner_channel);
    char secrets[200], marker[200], file[300];
    snprintf(secrets, sizeof(secrets), "%s/secrets", dir);
    cr_assert_eq(mkdir(secrets, 0700), 0);
    snprintf(file, sizeof(file), "%s/model.key", secrets);
    cr_assert_eq(write_file_atomic(file, "old", 3, 0600), 0);
    cr_assert_eq(run_release(secrets, sizeof(secrets), marker, sizeof(marker)), 1);
    cr_assert_neq(access(marker, F_OK), 0);
    char *value = NULL;
    size_t len;
    cr_assert_eq(read_file(file, 4096, &value, &len), 0);
    cr_assert_eq(len, 3);
    cr_assert_eq(memcmp(value, "old", 3), 0);
    free(value);
}
