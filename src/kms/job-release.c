/* The kms role's job release: see job-release.h. */
#include "kms/job-release.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attest/attest-policy.h"
#include "attest/attest.h"
#include "attest/release.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "job/digest.h"
#include "kms/client.h"
#include "resource/resource.h"

#define EVIDENCE_MAX (96 * 1024)
#define PUBLIC_KEY_MAX 1024
#define RUNS_FILE_MAX 32

/* One release being decided: what the audit entry reports. */
typedef struct decision {
    const char *job;
    char digest[65];
    uint64_t run;      /* the api's number of this run: the evidence's nonce binds it */
    uint64_t released; /* the runs of this digest released, this one included */
    const char *check; /* the failed check, NULL while all pass */
} decision;

/* Refuses with 403 naming CHECK and the reason (printf). */
static int refuse(decision *d, api_error *err, const char *check, const char *fmt, ...) _printf_(4, 5);
static int refuse(decision *d, api_error *err, const char *check, const char *fmt, ...)
{
    char why[sizeof(err->message) - 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    d->check = check;
    return api_fail(err, 403, "release_refused", "%s: %s", check, why);
}

/* Decodes base64 string V (at most MAX bytes) into a new buffer; -EINVAL. */
static int b64_field(const json_t *v, size_t max, uint8_t **ret, size_t *ret_len)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || n > (max + 2) / 3 * 4)
        return -EINVAL;
    uint8_t *b = malloc(n / 4 * 3 + 3);
    long got = b ? base64_decode(s, n, b, n / 4 * 3 + 3, false) : -ENOMEM;
    if (got <= 0 || (size_t)got > max) {
        free(b);
        return got == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    *ret = b;
    *ret_len = (size_t)got;
    return 0;
}

/* The runs of DIGEST_HEX released so far (0 when none). */
static int runs_read(const kms_job_config *cfg, const char *digest_hex, uint64_t *ret)
{
    char path[4300];
    snprintf(path, sizeof(path), "%s/%s", cfg->runs_dir, digest_hex);
    _cleanup_free_ char *text = NULL;
    size_t len;
    int r = read_file(path, RUNS_FILE_MAX, &text, &len);
    if (r == -ENOENT) {
        *ret = 0;
        return 0;
    }
    if (r < 0)
        return r;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || (*end && *end != '\n'))
        return -EBADMSG;
    *ret = v;
    return 0;
}

/* Records that DIGEST_HEX ran RUNS times, durably (before a key leaves). */
static int runs_write(const kms_job_config *cfg, const char *digest_hex, uint64_t runs)
{
    char path[4300], text[32];
    int r = mkdir_p(cfg->runs_dir, 0700);
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s/%s", cfg->runs_dir, digest_hex);
    int n = snprintf(text, sizeof(text), "%" PRIu64 "\n", runs);
    return write_file_atomic(path, text, (size_t)n, 0600);
}

/* The evidence: verified, its policy satisfied, bound to PUBLIC_KEY and to
 * this run's nonce, PCR0 the engine's. Returns 0 or -1 with ERR. */
static int check_evidence(const kms_job_config *cfg, const json_t *body, const json_t *digest_input,
                          const uint8_t digest[32], decision *d, const uint8_t *public_key, size_t public_key_len,
                          uint8_t ret_evidence_sha[32], api_error *err)
{
    const char *type_s = json_string_value(json_object_get(body, "type"));
    attest_type type;
    if (!type_s || attest_type_from_string(type_s, &type) < 0)
        return api_fail(err, 400, "invalid", "type must be nitro, sev-snp, tdx or sandbox");
    _cleanup_free_ uint8_t *evidence = NULL;
    size_t evidence_len;
    if (b64_field(json_object_get(body, "evidence"), EVIDENCE_MAX, &evidence, &evidence_len) < 0)
        return api_fail(err, 400, "invalid", "evidence must be standard base64 of at most %d bytes", EVIDENCE_MAX);
    SHA256(evidence, evidence_len, ret_evidence_sha);
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    attest_options opts = {.time = now};
    if (type == ATTEST_SANDBOX)
        opts.roots = (attest_blob){(const uint8_t *)cfg->platform_ca, cfg->platform_ca_len};
    _cleanup_(json_decrefp) json_t *result = NULL;
    attest_error aerr = {{0}};
    if (attest_verify(type, evidence, evidence_len, &opts, &result, &aerr) < 0)
        return refuse(d, err, "evidence", "%s", aerr.text);

    const char *engine = json_string_value(json_object_get(json_object_get(digest_input, "engine"), "pcr0"));
    const char *pcr0 = json_string_value(json_object_get(json_object_get(json_object_get(result, "claims"), "pcrs"), "0"));
    if (!engine)
        return refuse(d, err, "digest", "the digest input names no engine.pcr0");
    if (!pcr0 || strcmp(pcr0, engine) != 0)
        return refuse(d, err, "pcr0", "the sandbox's PCR0 %.16s… is not the job engine's %.16s… named in the digest",
                      pcr0 ? pcr0 : "(none)", engine);

    /* the workspace's policy, or the built-in cloister-jobs */
    const json_t *policy = json_object_get(body, "attestationPolicy");
    _cleanup_(json_decrefp) json_t *builtin = NULL;
    if (!policy || json_is_null(policy)) {
        builtin = json_pack("{s:[s], s:b, s:b, s:i, s:{s:[s]}}", "types", "sandbox", "allowSandbox", cfg->dev,
                            "allowDebug", false, "maxAgeSeconds", 300, "referenceValues", "pcr0", engine);
        policy = builtin;
    }
    if (!json_is_object(policy))
        return api_fail(err, 400, "invalid", "attestationPolicy must be an AttestationPolicy spec or null");
    uint8_t nonce[32];
    release_job_nonce(digest, d->run, nonce);
    attest_expect expect = {.now = now, .nonce = nonce, .nonce_len = sizeof(nonce), .public_key = public_key,
                            .public_key_len = public_key_len};
    char reason[ATTEST_REASON_MAX] = "";
    int e = attest_policy_evaluate(policy, result, &expect, reason, sizeof(reason));
    if (e == -EPERM)
        return refuse(d, err, "evidence", "%s%s", reason,
                      strstr(reason, "nonce") ? " (evidence made for another job or another run)" : "");
    if (e < 0)
        return refuse(d, err, "evidence", "the AttestationPolicy is malformed");
    return 0;
}

/* Every required approver's signature over DIGEST verifies against their
 * registered key; no veto. Returns 0 or -1 with ERR. */
static int check_approvals(const json_t *body, const uint8_t digest[32], decision *d, api_error *err)
{
    const json_t *required = json_object_get(body, "requiredApprovers"), *approvals = json_object_get(body, "approvals");
    const json_t *keys = json_object_get(body, "approvalKeys"), *vetoes = json_object_get(body, "vetoes");
    if (!json_is_array(required) || json_array_size(required) == 0 ||
        json_array_size(required) > KMS_JOB_APPROVERS_MAX || !json_is_array(approvals) ||
        json_array_size(approvals) > KMS_JOB_APPROVERS_MAX || !json_is_object(keys) ||
        (vetoes && !json_is_array(vetoes)))
        return api_fail(err, 400, "invalid",
                        "requiredApprovers (1-%d users), approvals [{user, signature}], approvalKeys {user: key} and "
                        "vetoes [user] are required", KMS_JOB_APPROVERS_MAX);
    if (json_array_size(vetoes) > 0)
        return refuse(d, err, "veto", "vetoed by %s", json_string_value(json_array_get(vetoes, 0)) ?: "an owner");
    char missing[200] = "";
    size_t i, j, n_missing = 0;
    json_t *user, *a;
    json_array_foreach(required, i, user)
    {
        const char *name = json_string_value(user);
        if (!name)
            return api_fail(err, 400, "invalid", "requiredApprovers must be user names");
        bool ok = false;
        uint8_t pub[32], sig[64];
        const char *key = json_string_value(json_object_get(keys, name));
        json_array_foreach(approvals, j, a) if (!ok && json_is_string(json_object_get(a, "user")) &&
                                                strcmp(json_string_value(json_object_get(a, "user")), name) == 0)
        {
            const char *s = json_string_value(json_object_get(a, "signature"));
            ok = key && s && base64_decode(key, strlen(key), pub, sizeof(pub), false) == 32 &&
                 base64_decode(s, strlen(s), sig, sizeof(sig), false) == 64 && job_approval_verify(digest, pub, sig);
        }
        if (!ok) {
            size_t l = strlen(missing);
            snprintf(missing + l, sizeof(missing) - l, "%s%s", n_missing ? ", " : "", name);
            n_missing++;
        }
    }
    if (n_missing)
        return refuse(d, err, "approval", "no valid signature over digest %.16s… by %s (each required approver signs "
                      "the digest with their registered approval key)", d->digest, missing);
    return 0;
}

/* The run count below maxRuns and notAfter not passed; the count with
 * this run into D. Returns 0 or -1 with ERR. */
static int check_runs(const kms_job_config *cfg, const json_t *digest_input, decision *d, api_error *err)
{
    const json_t *max = json_object_get(digest_input, "maxRuns");
    const json_t *not_after = json_object_get(digest_input, "notAfter");
    if (!json_is_integer(max) || json_integer_value(max) < 1)
        return refuse(d, err, "digest", "the digest input has no maxRuns");
    uint64_t done;
    int r = runs_read(cfg, d->digest, &done);
    if (r < 0)
        return api_fail(err, 500, "internal", "cannot read the run count: %s", strerror(-r));
    if (done >= (uint64_t)json_integer_value(max))
        return refuse(d, err, "runs", "the job ran %" PRIu64 " time%s; its approvers allowed %lld", done,
                      done == 1 ? "" : "s", (long long)json_integer_value(max));
    if (not_after && !json_is_null(not_after)) {
        int64_t until;
        if (!json_is_string(not_after) || time_parse_rfc3339(json_string_value(not_after), &until) < 0)
            return refuse(d, err, "digest", "notAfter is not an RFC 3339 time");
        if ((int64_t)(time_now_ns() / NSEC_PER_SEC) > until)
            return refuse(d, err, "notAfter", "the job may not run after %s", json_string_value(not_after));
    }
    d->released = done + 1;
    return 0;
}

/* Opens each input's header with the workspace key and seals its file key
 * to PUBLIC_KEY; the [{name, jwe}] or NULL with ERR. */
static json_t *unwrap_inputs(kms_keyring *ring, const json_t *body, const json_t *digest_input, decision *d,
                             const uint8_t *public_key, size_t public_key_len, api_error *err)
{
    const json_t *inputs = json_object_get(body, "inputs"), *named = json_object_get(digest_input, "inputs");
    const char *wkey = json_string_value(json_object_get(body, "workspaceKey"));
    if (!wkey || !json_is_array(inputs) || json_array_size(inputs) == 0 ||
        json_array_size(inputs) > KMS_JOB_INPUTS_MAX || json_array_size(inputs) != json_array_size(named)) {
        api_fail(err, 400, "invalid", "workspaceKey and inputs [{name, header}] (one per input of the digest) are required");
        return NULL;
    }
    _cleanup_(json_decrefp) json_t *keys = json_array();
    size_t i;
    json_t *in;
    json_array_foreach(inputs, i, in)
    {
        const char *name = json_string_value(json_object_get(in, "name"));
        const char *want = json_string_value(json_object_get(json_array_get(named, i), "name"));
        if (!name || !want || strcmp(name, want) != 0) {
            api_fail(err, 400, "invalid", "inputs[%zu] must be the digest's input %s", i, want ? want : "?");
            return NULL;
        }
        _cleanup_free_ uint8_t *header = NULL;
        size_t header_len;
        if (b64_field(json_object_get(in, "header"), KMS_JOB_HEADER_MAX, &header, &header_len) < 0) {
            api_fail(err, 400, "invalid", "inputs[%zu].header must be base64 of at most %d bytes", i,
                     KMS_JOB_HEADER_MAX);
            return NULL;
        }
        uint8_t file_key[AGE_FILE_KEY_SIZE];
        kms_err kerr = {""};
        int r = kms_age_unwrap(ring, wkey, header, header_len, file_key, &kerr);
        if (r < 0) {
            refuse(d, err, "unwrap", "input %s: %s", name, kerr.message);
            return NULL;
        }
        char b64[32];
        base64_encode(file_key, sizeof(file_key), b64, false);
        OPENSSL_cleanse(file_key, sizeof(file_key));
        _cleanup_free_ char *text = NULL;
        int n = asprintf(&text, "{\"input\":\"%s\",\"fileKey\":\"%s\"}", name, b64);
        OPENSSL_cleanse(b64, sizeof(b64));
        char *jwe = NULL;
        r = n < 0 ? -ENOMEM : release_seal_jwe(public_key, public_key_len, (const uint8_t *)text, (size_t)n, &jwe);
        if (n > 0)
            OPENSSL_cleanse(text, (size_t)n);
        if (r < 0) {
            if (r == -EINVAL)
                refuse(d, err, "evidence", "publicKey is not a DER SubjectPublicKeyInfo of an EC key");
            else
                api_fail(err, 500, "internal", "cannot seal the file key: %s", strerror(-r));
            return NULL;
        }
        json_array_append_new(keys, json_pack("{s:s, s:s}", "name", name, "jwe", jwe));
        free(jwe);
    }
    return TAKE_PTR(keys);
}

/* The whole decision; the answer or NULL with ERR (D says what failed). */
static json_t *decide(kms_keyring *ring, const kms_job_config *cfg, const json_t *body, decision *d, api_error *err)
{
    const json_t *digest_input = json_object_get(body, "digestInput");
    if (!d->job || !resource_name_valid(d->job) || !json_is_object(digest_input)) {
        api_fail(err, 400, "invalid", "job (a name) and digestInput are required");
        return NULL;
    }
    uint8_t digest[32];
    if (job_digest(digest_input, digest) < 0) {
        refuse(d, err, "digest", "the digest input cannot be made canonical (RFC 8785)");
        return NULL;
    }
    hex_encode(digest, sizeof(digest), d->digest);
    const json_t *run = json_object_get(body, "run");
    if (!json_is_integer(run) || json_integer_value(run) < 1) {
        api_fail(err, 400, "invalid", "run (the run's number, 1 or more) is required");
        return NULL;
    }
    d->run = (uint64_t)json_integer_value(run);
    _cleanup_free_ uint8_t *public_key = NULL;
    size_t public_key_len;
    if (b64_field(json_object_get(body, "publicKey"), PUBLIC_KEY_MAX, &public_key, &public_key_len) < 0) {
        api_fail(err, 400, "invalid", "publicKey must be base64 of the sandbox's DER SubjectPublicKeyInfo");
        return NULL;
    }
    uint8_t evidence_sha[32];
    if (check_approvals(body, digest, d, err) < 0 || check_runs(cfg, digest_input, d, err) < 0 ||
        check_evidence(cfg, body, digest_input, digest, d, public_key, public_key_len, evidence_sha, err) < 0)
        return NULL;
    _cleanup_(json_decrefp) json_t *keys = unwrap_inputs(ring, body, digest_input, d, public_key, public_key_len, err);
    if (!keys)
        return NULL;
    /* the run is spent before any key leaves: a crash from here on loses the run, never repeats it */
    int r = runs_write(cfg, d->digest, d->released);
    if (r < 0) {
        api_fail(err, 500, "internal", "cannot record the run: %s", strerror(-r));
        return NULL;
    }
    char evidence_hex[65];
    hex_encode(evidence_sha, sizeof(evidence_sha), evidence_hex);
    return json_pack("{s:I, s:I, s:s, s:s, s:O}", "run", (json_int_t)d->run, "runsReleased",
                     (json_int_t)d->released, "digest", d->digest, "evidenceSha256", evidence_hex, "keys", keys);
}

json_t *kms_job_release(kms_keyring *ring, const kms_job_config *cfg, const json_t *body, api_error *err)
{
    decision d = {.job = json_string_value(json_object_get(body, "job"))};
    json_t *answer = decide(ring, cfg, body, &d, err);
    json_t *details = json_pack("{s:s, s:I, s:s?, s:s?}", "digest", d.digest, "run", (json_int_t)d.run, "check",
                                d.check, "reason", answer ? NULL : err->message);
    audit_event_emit(&(audit_event){.action = "kms.job.release", .user = "system:kms", .kind = "Job",
                                    .name = d.job && resource_name_valid(d.job) ? d.job : NULL,
                                    .outcome = answer ? "success" : d.check ? "denied" : "failure",
                                    .details = details});
    json_decref(details);
    return answer;
}
