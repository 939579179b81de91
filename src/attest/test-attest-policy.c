#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/sha.h>
#include <string.h>

#include "attest/attest-policy.h"
#include "basic/encoding.h"

#define NOW 1725719900
static const uint8_t nonce[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                  17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t pubkey[5] = {0x04, 0xaa, 0xbb, 0xcc, 0xdd};
#define PCR0 "e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a"

static char *hex(const uint8_t *b, size_t n)
{
    static char buf[4][2200];
    static int next;
    char *out = buf[next++ % 4];
    hex_encode(b, n, out);
    return out;
}

static json_t *nitro_result(const char *type, const char *pcr0, int64_t ts_ms)
{
    return json_pack("{s:b, s:s, s:{s:s, s:I, s:{s:s, s:s}, s:s, s:s, s:s}}", "verified", 1, "type", type, "claims",
                     "module_id", "m", "timestamp", (json_int_t)ts_ms, "pcrs", "0", pcr0, "1", "00", "nonce",
                     hex(nonce, 32), "public_key", hex(pubkey, 5), "user_data", "");
}

static json_t *snp_result(bool debug, int microcode, const uint8_t report_data[64])
{
    return json_pack("{s:b, s:s, s:{s:s, s:b, s:s, s:{s:i, s:i, s:i, s:i}}}", "verified", 1, "type", "sev-snp",
                     "claims", "measurement", "abcd", "debug", debug, "report_data", hex(report_data, 64),
                     "reported_tcb", "bootloader", 3, "tee", 0, "snp", 8, "microcode", microcode);
}

static json_t *spec(const char *json)
{
    json_error_t e;
    json_t *s = json_loads(json, 0, &e);
    cr_assert_not_null(s, "%s", e.text);
    return s;
}

static const attest_expect full = {.now = NOW, .nonce = nonce, .nonce_len = 32, .public_key = pubkey, .public_key_len = 5};

static int eval(const char *spec_json, json_t *result, const attest_expect *e, char *reason)
{
    json_t *s = spec(spec_json);
    int r = attest_policy_evaluate(s, result, e, reason, 256);
    json_decref(s);
    json_decref(result);
    return r;
}

Test(attest_policy, matching_sandbox_evidence_is_allowed)
{
    char reason[256] = "";
    cr_assert_eq(eval("{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"maxAgeSeconds\":300,"
                      "\"referenceValues\":{\"pcr0\":[\"" PCR0 "\"]}}",
                      nitro_result("sandbox", PCR0, (NOW - 10) * 1000LL), &full, reason),
                 0, "%s", reason);
}

Test(attest_policy, each_failed_check_refuses_with_its_reason)
{
    struct {
        const char *spec;
        const char *type, *pcr0;
        int64_t age;
        const char *why;
    } cases[] = {
        {"{\"types\":[\"nitro\"]}", "sandbox", PCR0, 0, "not among the policy's types"},
        {"{\"types\":[\"sandbox\"]}", "sandbox", PCR0, 0, "sandbox (software) evidence is not allowed"},
        {"{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"referenceValues\":{\"pcr0\":[\"00ff\"]}}", "sandbox", PCR0, 0,
         "matches none of the policy's reference values"},
        {"{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"referenceValues\":{\"pcr7\":[\"00\"]}}", "sandbox", PCR0, 0,
         "has no pcr7"},
        {"{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"maxAgeSeconds\":60}", "sandbox", PCR0, 120, "120s old"},
        {"{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"maxAgeSeconds\":60}", "sandbox", PCR0, -3600, "in the future"},
        {"{\"types\":[\"nitro\"]}", "nitro", "000000000000", 0, "debug mode"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char reason[256] = "";
        int r = eval(cases[i].spec, nitro_result(cases[i].type, cases[i].pcr0, (NOW - cases[i].age) * 1000LL), &full,
                     reason);
        cr_expect_eq(r, -EPERM, "case %zu", i);
        cr_expect(strstr(reason, cases[i].why), "case %zu: %s", i, reason);
    }
}

Test(attest_policy, nonce_and_key_binding_for_nitro_documents)
{
    char reason[256];
    const char *p = "{\"types\":[\"sandbox\"],\"allowSandbox\":true}";
    uint8_t other_nonce[32] = {9};
    attest_expect e = full;
    e.nonce = other_nonce;
    cr_expect_eq(eval(p, nitro_result("sandbox", PCR0, NOW * 1000LL), &e, reason), -EPERM);
    cr_expect(strstr(reason, "challenge nonce"));
    uint8_t other_key[5] = {0x04, 1, 2, 3, 4};
    e = full;
    e.public_key = other_key;
    cr_expect_eq(eval(p, nitro_result("sandbox", PCR0, NOW * 1000LL), &e, reason), -EPERM);
    cr_expect(strstr(reason, "another public key"));
    /* no challenge at all: refused unless the policy waives it */
    e = full;
    e.nonce = NULL;
    cr_expect_eq(eval(p, nitro_result("sandbox", PCR0, NOW * 1000LL), &e, reason), -EPERM);
    cr_expect(strstr(reason, "requires a fresh challenge"));
    cr_expect_eq(eval("{\"types\":[\"sandbox\"],\"allowSandbox\":true,\"requireNonce\":false}",
                      nitro_result("sandbox", PCR0, NOW * 1000LL), &e, reason),
                 0);
}

Test(attest_policy, key_digest_in_user_data_binds_the_key)
{
    uint8_t d[32];
    SHA256(pubkey, sizeof(pubkey), d);
    json_t *r = nitro_result("sandbox", PCR0, NOW * 1000LL);
    json_t *claims = json_object_get(r, "claims");
    json_object_set_new(claims, "public_key", json_null());
    json_object_set_new(claims, "user_data", json_string(hex(d, 32)));
    char reason[256] = "";
    cr_expect_eq(eval("{\"types\":[\"sandbox\"],\"allowSandbox\":true}", r, &full, reason), 0, "%s", reason);
}

Test(attest_policy, sev_snp_report_data_debug_and_tcb)
{
    uint8_t rd[64];
    memcpy(rd, nonce, 32);
    SHA256(pubkey, sizeof(pubkey), rd + 32);
    char reason[256] = "";
    const char *p = "{\"types\":[\"sev-snp\"],\"maxAgeSeconds\":60,\"minTcb\":{\"snp\":8,\"microcode\":100},"
                    "\"referenceValues\":{\"measurement\":[\"abcd\"]}}";
    cr_expect_eq(eval(p, snp_result(false, 115, rd), &full, reason), 0, "%s", reason);
    cr_expect_eq(eval(p, snp_result(false, 99, rd), &full, reason), -EPERM);
    cr_expect(strstr(reason, "microcode is 99"), "%s", reason);
    cr_expect_eq(eval(p, snp_result(true, 115, rd), &full, reason), -EPERM);
    cr_expect(strstr(reason, "debug"));
    uint8_t bad[64];
    memcpy(bad, rd, 64);
    bad[40] ^= 1;
    cr_expect_eq(eval(p, snp_result(false, 115, bad), &full, reason), -EPERM);
    cr_expect(strstr(reason, "bind the public key"), "%s", reason);
    /* no time in the report and no nonce: freshness cannot be shown */
    attest_expect e = full;
    e.nonce = NULL;
    cr_expect_eq(eval(p, snp_result(false, 115, rd), &e, reason), -EPERM);
    cr_expect(strstr(reason, "carries no time"), "%s", reason);
}

Test(attest_policy, unverified_or_malformed_results_are_refused)
{
    char reason[256];
    json_t *r = nitro_result("sandbox", PCR0, NOW * 1000LL);
    json_object_set_new(r, "verified", json_false());
    cr_expect_eq(eval("{\"types\":[\"sandbox\"],\"allowSandbox\":true}", r, &full, reason), -EPERM);
    cr_expect_eq(eval("{\"types\":[\"sandbox\"]}", json_pack("{s:s}", "type", "sandbox"), &full, reason), -EINVAL);
}
