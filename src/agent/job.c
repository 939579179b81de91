/* The agent's job mode: see job.h. */
#include "agent/job.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/channel.h"
#include "attest/release.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "resource/resource.h"

#define JOB_PART_MAX (1024 * 1024)     /* the runner's RUNNER_JOB_PART_MAX */
#define JOB_INPUTS_MAX 16
#define JOB_INPUT_MAX (64ull << 30)
#define ENGINE_REPORT_MAX (64 * 1024)
#define EVIDENCE_B64_MAX (256 * 1024)

int agent_job_parse(const char *arg, agent_job *ret)
{
    agent_job j = {0};
    const char *c1 = strchr(arg, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2 || (size_t)(c1 - arg) >= sizeof(j.name))
        return -EINVAL;
    memcpy(j.name, arg, (size_t)(c1 - arg));
    char *end;
    errno = 0;
    unsigned long long run = strtoull(c1 + 1, &end, 10);
    if (!resource_name_valid(j.name) || errno || end != c2 || run < 1 || c1[1] == '-' ||
        strlen(c2 + 1) != 64 || strspn(c2 + 1, "0123456789abcdef") != 64 || hex_decode(c2 + 1, 64, j.digest, 32) < 0)
        return -EINVAL;
    j.run = run;
    memcpy(j.digest_hex, c2 + 1, 65);
    *ret = j;
    return 0;
}

/* Ends the run at the API: REPORT is {sha256, size, rows} or {error}. */
static void finish(const agent_job_env *env, json_t *report /* stolen */)
{
    _cleanup_(json_decrefp) json_t *answer = NULL;
    int status = report ? channel_post(env->channel, "/v1/job/finish", report, &answer) : -ENOMEM;
    json_decref(report);
    if (status != 200) {
        char st[16];
        snprintf(st, sizeof(st), "%d", status);
        log_fields(LOG_LEVEL_ERROR, "the API did not take the run's end", "status", status > 0 ? st : strerror(-status),
                   "reason", status > 0 ? channel_error_message(answer, "") : "", NULL);
    }
}

/* Opens one release answer's JWE and writes its file key to the secrets
 * directory as <input>.key; the input's name into NAME. Every plaintext
 * copy is wiped (jansson's and cjose's buffers are wiped on free by the
 * agent's allocator). */
static int store_file_key(const agent_job_env *env, const char *jwe_text, const char *want)
{
    cjose_err err;
    cjose_jwe_t *jwe = cjose_jwe_import(jwe_text, strlen(jwe_text), &err);
    size_t len = 0;
    uint8_t *plain = jwe ? cjose_jwe_decrypt(jwe, env->jwk, &len, &err) : NULL;
    cjose_jwe_release(jwe);
    if (!plain)
        return -EBADMSG;
    json_t *doc = json_loadb((const char *)plain, len, 0, NULL);
    OPENSSL_cleanse(plain, len);
    cjose_get_dealloc()(plain);
    const char *input = json_string_value(json_object_get(doc, "input"));
    const char *b64 = json_string_value(json_object_get(doc, "fileKey"));
    uint8_t key[32];
    long n = input && b64 && strcmp(input, want) == 0 ? base64_decode(b64, strlen(b64), key, sizeof(key), false)
                                                      : -EBADMSG;
    if (b64)
        OPENSSL_cleanse((char *)b64, strlen(b64));
    json_decref(doc);
    int r = n == 16 ? 0 : -EBADMSG;
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s.key", env->secrets_dir, want);
    _cleanup_close_ int fd = r == 0 ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400) : -1;
    if (r == 0 && fd < 0)
        r = negative_errno();
    if (r == 0)
        r = fd_write_all(fd, key, 16);
    OPENSSL_cleanse(key, sizeof(key));
    return r;
}

/* Fetches input NAME (SIZE bytes) through the channel into PATH. */
static int fetch_input(const agent_job_env *env, const char *name, uint64_t size, const char *path)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return negative_errno();
    _cleanup_strbuf_ strbuf chunk;
    strbuf_init(&chunk, JOB_PART_MAX + 1);
    for (uint64_t offset = 0; offset < size;) {
        strbuf_reset(&chunk);
        char body[160];
        int n = snprintf(body, sizeof(body), "{\"name\":\"%s\",\"offset\":%llu}", name, (unsigned long long)offset);
        int status = channel_call(env->channel, "/v1/job/input", body, (size_t)n, "application/json", &chunk);
        if (status != 200 || chunk.len == 0) {
            char st[16];
            snprintf(st, sizeof(st), "%d", status);
            log_fields(LOG_LEVEL_ERROR, "cannot fetch an input", "input", name, "status",
                       status > 0 ? st : strerror(-status), NULL);
            return status < 0 ? status : -EIO;
        }
        int r = fd_write_all(fd, chunk.data, chunk.len);
        if (r < 0)
            return r;
        offset += chunk.len;
    }
    return fsync(fd) < 0 ? negative_errno() : 0;
}

/* Runs the engine on MANIFEST; its one-line JSON report into *RET. Returns
 * 0 or a negative errno (the engine could not be run or said nothing). */
static int run_engine(const agent_job_env *env, const char *manifest, json_t **ret)
{
    size_t n = 0;
    while (env->command[n])
        n++;
    char **argv = calloc(n + 3, sizeof(*argv));
    int pipefd[2];
    if (!argv || pipe2(pipefd, O_CLOEXEC) < 0) {
        free(argv);
        return -ENOMEM;
    }
    memcpy(argv, env->command, n * sizeof(*argv));
    argv[n] = (char *)"--manifest";
    argv[n + 1] = (char *)manifest;
    pid_t pid = fork();
    if (pid == 0) {
        sigprocmask(SIG_UNBLOCK, env->blocked, NULL);
        signal(SIGPIPE, SIG_DFL);
        dup2(pipefd[1], STDOUT_FILENO);
        if (env->memory_bytes) {
            struct rlimit rl = {env->memory_bytes, env->memory_bytes};
            if (setrlimit(RLIMIT_AS, &rl) < 0)
                _exit(127);
        }
        extern char **environ;
        execve(argv[0], argv, environ);
        _exit(127);
    }
    free(argv);
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        return -errno;
    }
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, ENGINE_REPORT_MAX);
    char buf[4096];
    ssize_t k;
    while ((k = read(pipefd[0], buf, sizeof(buf))) != 0) {
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 || strbuf_append(&out, buf, (size_t)k) < 0)
            break;
    }
    close(pipefd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    /* the report is the last line the engine printed */
    size_t end = out.len;
    while (end && (out.data[end - 1] == '\n' || out.data[end - 1] == '\r'))
        end--;
    size_t start = end;
    while (start && out.data[start - 1] != '\n')
        start--;
    json_t *report = end > start ? json_loadb(out.data + start, end - start, 0, NULL) : NULL;
    if (!json_is_object(report)) {
        json_decref(report);
        char how[48];
        snprintf(how, sizeof(how), WIFEXITED(status) ? "exit status %d" : "signal %d",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        log_fields(LOG_LEVEL_ERROR, "the engine ended without a report", "how", how, NULL);
        return WIFSIGNALED(status) ? -EINTR : -EBADMSG;
    }
    *ret = report;
    return 0;
}

/* Uploads the result file PATH through the channel in parts; its SHA-256
 * (hex) into SHA and its size into *RET_SIZE. */
static int upload_result(const agent_job_env *env, const char *path, char sha[65], uint64_t *ret_size)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return negative_errno();
    _cleanup_free_ uint8_t *part = malloc(JOB_PART_MAX);
    if (!part)
        return -ENOMEM;
    EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
    if (!md_ctx || EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md_ctx);
        return -ENOMEM;
    }
    int r = 0;
    uint64_t offset = 0;
    for (;;) {
        size_t got = 0;
        while (got < JOB_PART_MAX) {
            ssize_t k = read(fd, part + got, JOB_PART_MAX - got);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                break;
            got += (size_t)k;
        }
        if (got == 0)
            break;
        EVP_DigestUpdate(md_ctx, part, got);
        char p[64];
        snprintf(p, sizeof(p), "/v1/job/result/%llu", (unsigned long long)offset);
        _cleanup_strbuf_ strbuf answer;
        strbuf_init(&answer, 64 * 1024);
        int status = channel_call(env->channel, p, part, got, "application/octet-stream", &answer);
        if (status != 200) {
            char st[16];
            snprintf(st, sizeof(st), "%d", status);
            log_fields(LOG_LEVEL_ERROR, "cannot upload a part of the result", "status",
                       status > 0 ? st : strerror(-status), NULL);
            r = status < 0 ? status : -EIO;
            break;
        }
        offset += got;
    }
    uint8_t md[32];
    unsigned md_len = 0;
    if (r == 0 && EVP_DigestFinal_ex(md_ctx, md, &md_len) != 1)
        r = -EIO;
    EVP_MD_CTX_free(md_ctx);
    if (r < 0)
        return r;
    hex_encode(md, sizeof(md), sha);
    *ret_size = offset;
    return 0;
}

/* Asks for the file keys; the release answer into *RET or the reason logged. */
static int release(const agent_job *job, const agent_job_env *env, json_t **ret)
{
    uint8_t nonce[RELEASE_NONCE_LEN];
    release_job_nonce(job->digest, job->run, nonce);
    _cleanup_free_ uint8_t *doc = NULL;
    size_t doc_len = 0;
    int r = env->evidence(env->evidence_userdata, nonce, sizeof(nonce), job->digest, sizeof(job->digest), &doc,
                          &doc_len);
    if (r < 0)
        return r;
    _cleanup_free_ char *doc_b64 = malloc(base64_encoded_size(doc_len));
    _cleanup_free_ char *key_b64 = malloc(base64_encoded_size(env->spki_len));
    if (!doc_b64 || !key_b64)
        return -ENOMEM;
    base64_encode(doc, doc_len, doc_b64, false);
    base64_encode(env->spki, env->spki_len, key_b64, false);
    _cleanup_(json_decrefp) json_t *body = json_pack("{s:s, s:s, s:s}", "type", "sandbox", "evidence", doc_b64,
                                                     "publicKey", key_b64);
    json_t *answer = NULL;
    int status = body ? channel_post(env->channel, "/v1/job/release", body, &answer) : -ENOMEM;
    if (status != 200) {
        char st[16];
        snprintf(st, sizeof(st), "%d", status);
        log_fields(LOG_LEVEL_ERROR, "the inputs' keys were not released; the engine is not started", "job", job->name,
                   "status", status > 0 ? st : strerror(-status), "reason",
                   status > 0 ? channel_error_message(answer, "") : "", NULL);
        json_decref(answer);
        return status > 0 ? -EPERM : status;
    }
    *ret = answer;
    return 0;
}

/* Keys, inputs and the manifest: everything the engine needs, written
 * under the work and secrets directories; the manifest's path into PATH. */
static int prepare(const agent_job_env *env, const json_t *answer, char *path, size_t size, const char **ret_why)
{
    const json_t *keys = json_object_get(answer, "keys"), *spec = json_object_get(answer, "manifest");
    const json_t *inputs = json_object_get(spec, "inputs");
    if (!json_is_array(keys) || !json_is_object(spec) || !json_is_array(inputs) || json_array_size(inputs) == 0 ||
        json_array_size(inputs) > JOB_INPUTS_MAX || json_array_size(keys) != json_array_size(inputs)) {
        *ret_why = "the release answer holds no manifest with one key per input";
        return -EBADMSG;
    }
    _cleanup_(json_decrefp) json_t *manifest = json_deep_copy(spec);
    if (!manifest || mkdir(env->work_dir, 0700) < 0) {
        *ret_why = "cannot make the work directory";
        return -EIO;
    }
    size_t i;
    json_t *in;
    json_array_foreach(json_object_get(manifest, "inputs"), i, in)
    {
        const char *name = json_string_value(json_object_get(in, "name"));
        const json_t *sz = json_object_get(in, "size");
        const char *jwe = json_string_value(json_object_get(json_array_get(keys, i), "jwe"));
        if (!name || !resource_name_valid(name) || !json_is_integer(sz) || json_integer_value(sz) < 1 ||
            (uint64_t)json_integer_value(sz) > JOB_INPUT_MAX || !jwe) {
            *ret_why = "the manifest's inputs must be {name, size, …} with a key each";
            return -EBADMSG;
        }
        int r = store_file_key(env, jwe, name);
        if (r < 0) {
            *ret_why = "a released key could not be opened with this agent's key";
            return r;
        }
        char key_path[4200], ct_path[4200];
        snprintf(key_path, sizeof(key_path), "%s/%s.key", env->secrets_dir, name);
        snprintf(ct_path, sizeof(ct_path), "%s/%s.age", env->work_dir, name);
        r = fetch_input(env, name, (uint64_t)json_integer_value(sz), ct_path);
        if (r < 0) {
            *ret_why = "an input's ciphertext could not be fetched";
            return r;
        }
        json_object_set_new(in, "fileKey", json_string(key_path));
        json_object_set_new(in, "ciphertext", json_string(ct_path));
        json_object_del(in, "size");
    }
    char output[4200];
    snprintf(output, sizeof(output), "%s/result.age", env->work_dir);
    json_object_set_new(manifest, "output", json_string(output));
    snprintf(path, size, "%s/manifest.json", env->work_dir);
    if (json_dump_file(manifest, path, JSON_COMPACT) < 0) {
        *ret_why = "cannot write the manifest";
        return -EIO;
    }
    return 0;
}

int agent_job_main(const agent_job *job, const agent_job_env *env)
{
    _cleanup_(json_decrefp) json_t *answer = NULL;
    if (release(job, env, &answer) < 0)
        return 1; /* the API saw the refusal and ends the run with it */
    char manifest[4300];
    const char *why = "";
    int r = prepare(env, answer, manifest, sizeof(manifest), &why);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot prepare the engine's run", "job", job->name, "reason", why, NULL);
        finish(env, json_pack("{s:s}", "error", why));
        return 1;
    }
    _cleanup_(json_decrefp) json_t *report = NULL;
    r = run_engine(env, manifest, &report);
    if (r < 0 || !json_is_true(json_object_get(report, "ok"))) {
        const char *error = json_string_value(json_object_get(report, "error"));
        char reason[600];
        snprintf(reason, sizeof(reason), "%s", error ? error
                                              : r == -EINTR ? "the engine was killed (a memory or time limit)"
                                                            : "the engine ended without a report");
        log_fields(LOG_LEVEL_WARN, "the engine failed; nothing of a result is uploaded", "job", job->name, "reason",
                   reason, NULL);
        finish(env, json_pack("{s:s}", "error", reason));
        return 1;
    }
    char output[4200], sha[65];
    uint64_t size = 0;
    snprintf(output, sizeof(output), "%s/result.age", env->work_dir);
    r = upload_result(env, output, sha, &size);
    if (r < 0) {
        finish(env, json_pack("{s:s}", "error", "the encrypted result could not be uploaded"));
        return 1;
    }
    const char *engine_sha = json_string_value(json_object_get(report, "resultSha256"));
    finish(env, json_pack("{s:s, s:I, s:O, s:s?}", "sha256", sha, "size", (json_int_t)size, "rows",
                          json_object_get(report, "rows") ?: json_null(), "resultSha256", engine_sha));
    log_fields(LOG_LEVEL_INFO, "the run's result is uploaded", "job", job->name, "sha256", sha, NULL);
    return 0;
}
