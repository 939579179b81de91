#include "attest/attest-policy.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/macro.h"

#define CLOCK_SKEW_SECONDS 60

static int refuse(char *reason, size_t size, const char *fmt, ...) _printf_(3, 4);
static int refuse(char *reason, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, size, fmt, ap);
    va_end(ap);
    return -EPERM;
}

static bool string_in_array(const json_t *array, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(array, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

/* The claim a reference value names: "pcr3" is claims.pcrs["3"]. */
static const char *measured_claim(const json_t *claims, const char *name)
{
    if (strncmp(name, "pcr", 3) == 0)
        return json_string_value(json_object_get(json_object_get(claims, "pcrs"), name + 3));
    return json_string_value(json_object_get(claims, name));
}

/* Nitro enclaves started in debug mode report all-zero PCRs 0-2. */
static bool nitro_debug(const json_t *claims)
{
    const char *pcr0 = measured_claim(claims, "pcr0");
    if (!pcr0 || !*pcr0)
        return false;
    for (const char *p = pcr0; *p; p++)
        if (*p != '0')
            return false;
    return true;
}

static int check_tcb(const json_t *min, const json_t *claims, bool snp, char *reason, size_t size)
{
    if (snp) {
        static const char *const parts[] = {"bootloader", "tee", "snp", "microcode"};
        const json_t *have = json_object_get(claims, "reported_tcb");
        for (size_t i = 0; i < ELEMENTSOF(parts); i++) {
            const json_t *want = json_object_get(min, parts[i]);
            if (!want)
                continue;
            const json_t *got = json_object_get(have, parts[i]);
            if (!json_is_integer(got) || json_integer_value(got) < json_integer_value(want))
                return refuse(reason, size, "reported TCB %s is %lld, below the minimum %lld", parts[i],
                              got ? (long long)json_integer_value(got) : -1LL, (long long)json_integer_value(want));
        }
        return 0;
    }
    const char *want = json_string_value(json_object_get(min, "teeTcbSvn"));
    if (!want)
        return 0;
    const char *got = json_string_value(json_object_get(claims, "tee_tcb_svn"));
    if (!got || strlen(got) != strlen(want))
        return refuse(reason, size, "tee_tcb_svn is missing or not %zu hex digits", strlen(want));
    for (size_t i = 0; i + 1 < strlen(want); i += 2) {
        unsigned g, w;
        sscanf(got + i, "%2x", &g);
        sscanf(want + i, "%2x", &w);
        if (g < w)
            return refuse(reason, size, "tee_tcb_svn component %zu is %u, below the minimum %u", i / 2, g, w);
    }
    return 0;
}

/* Checks that the evidence carries the challenge and binds the key. */
static int check_binding(const char *type, const json_t *claims, const attest_expect *e, char *reason, size_t size)
{
    uint8_t key_digest[SHA256_DIGEST_LENGTH];
    char key_digest_hex[2 * SHA256_DIGEST_LENGTH + 1];
    if (e->public_key) {
        SHA256(e->public_key, e->public_key_len, key_digest);
        hex_encode(key_digest, sizeof(key_digest), key_digest_hex);
    }
    if (strcmp(type, "nitro") == 0 || strcmp(type, "sandbox") == 0) {
        if (e->nonce) {
            const char *nonce = json_string_value(json_object_get(claims, "nonce"));
            uint8_t got[1024];
            if (!nonce || strlen(nonce) != 2 * e->nonce_len || e->nonce_len > sizeof(got) ||
                hex_decode(nonce, strlen(nonce), got, e->nonce_len) < 0 || !memeq_consttime(got, e->nonce, e->nonce_len))
                return refuse(reason, size, "the evidence does not carry the challenge nonce");
        }
        if (e->public_key) {
            const char *pk = json_string_value(json_object_get(claims, "public_key"));
            const char *ud = json_string_value(json_object_get(claims, "user_data"));
            uint8_t got[1024];
            bool by_key = pk && strlen(pk) == 2 * e->public_key_len && e->public_key_len <= sizeof(got) &&
                          hex_decode(pk, strlen(pk), got, e->public_key_len) == 0 &&
                          memcmp(got, e->public_key, e->public_key_len) == 0;
            bool by_digest = ud && strcmp(ud, key_digest_hex) == 0;
            if (!by_key && !by_digest)
                return refuse(reason, size, "the evidence binds another public key");
        }
        return 0;
    }
    /* sev-snp, tdx: report_data = nonce (32 bytes) || SHA-256(public key) */
    const char *rd = json_string_value(json_object_get(claims, "report_data"));
    uint8_t report_data[64];
    if (!rd || hex_decode(rd, strlen(rd), report_data, sizeof(report_data)) < 0)
        return refuse(reason, size, "the evidence has no 64-byte report_data");
    if (e->nonce && (e->nonce_len != 32 || !memeq_consttime(report_data, e->nonce, 32)))
        return refuse(reason, size, "report_data does not start with the challenge nonce");
    if (e->public_key && memcmp(report_data + 32, key_digest, 32) != 0)
        return refuse(reason, size, "report_data does not bind the public key (SHA-256 at bytes 32-63)");
    return 0;
}

int attest_policy_evaluate(const json_t *spec, const json_t *result, const attest_expect *expect, char *reason,
                           size_t reason_size)
{
    const char *type = json_string_value(json_object_get(result, "type"));
    const json_t *claims = json_object_get(result, "claims");
    if (!json_is_object(spec) || !type || !json_is_object(claims))
        return -EINVAL;
    if (!json_is_true(json_object_get(result, "verified")))
        return refuse(reason, reason_size, "the evidence did not verify");
    if (!string_in_array(json_object_get(spec, "types"), type))
        return refuse(reason, reason_size, "%s evidence is not among the policy's types", type);
    bool sandbox = strcmp(type, "sandbox") == 0 || json_is_true(json_object_get(claims, "sandbox"));
    if (sandbox && !json_is_true(json_object_get(spec, "allowSandbox")))
        return refuse(reason, reason_size, "sandbox (software) evidence is not allowed by the policy");
    bool debug = json_is_true(json_object_get(claims, "debug")) || (strcmp(type, "nitro") == 0 && nitro_debug(claims));
    if (debug && !json_is_true(json_object_get(spec, "allowDebug")))
        return refuse(reason, reason_size, "the workload runs in debug mode, which the policy refuses");

    const json_t *max_age = json_object_get(spec, "maxAgeSeconds");
    if (max_age) {
        const json_t *ts = json_object_get(claims, "timestamp"); /* ms, nitro and sandbox */
        if (json_is_integer(ts)) {
            int64_t at = json_integer_value(ts) / 1000;
            if (at > expect->now + CLOCK_SKEW_SECONDS)
                return refuse(reason, reason_size, "the evidence is dated %llds in the future",
                              (long long)(at - expect->now));
            if (expect->now - at > json_integer_value(max_age))
                return refuse(reason, reason_size, "the evidence is %llds old; the policy allows %llds",
                              (long long)(expect->now - at), (long long)json_integer_value(max_age));
        } else if (!expect->nonce)
            return refuse(reason, reason_size, "%s evidence carries no time; its freshness needs a challenge nonce", type);
    }
    if (!expect->nonce && !json_is_false(json_object_get(spec, "requireNonce")))
        return refuse(reason, reason_size, "the policy requires a fresh challenge nonce");

    const char *name;
    const json_t *values;
    json_object_foreach((json_t *)json_object_get(spec, "referenceValues"), name, values)
    {
        const char *got = measured_claim(claims, name);
        if (!got)
            return refuse(reason, reason_size, "%s evidence has no %s to compare with the reference values", type, name);
        if (!string_in_array(values, got))
            return refuse(reason, reason_size, "%s %.16s… matches none of the policy's reference values", name, got);
    }
    const json_t *min_tcb = json_object_get(spec, "minTcb");
    if (min_tcb && (strcmp(type, "sev-snp") == 0 || strcmp(type, "tdx") == 0)) {
        int r = check_tcb(min_tcb, claims, strcmp(type, "sev-snp") == 0, reason, reason_size);
        if (r < 0)
            return r;
    }
    return check_binding(type, claims, expect, reason, reason_size);
}
