#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "job/digest.h"

/* The canonical text of the JSON document TEXT, or NULL when refused (R set). */
static char *jcs_of(const char *text, int *r)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    cr_assert(v, "test input does not parse: %s", err.text);
    char *out = NULL;
    *r = jcs_serialize(v, &out);
    json_decref(v);
    return out;
}

static void assert_jcs(const char *in, const char *want)
{
    int r;
    _cleanup_free_ char *got = jcs_of(in, &r);
    cr_assert_eq(r, 0, "jcs_serialize(%s) = %d", in, r);
    cr_assert_str_eq(got, want);
}

static void assert_jcs_refused(const char *in)
{
    int r;
    _cleanup_free_ char *got = jcs_of(in, &r);
    cr_assert_eq(r, -EINVAL, "jcs_serialize(%s) = %d, want -EINVAL", in, r);
    cr_assert_null(got);
}

/* RFC 8785 3.2.3: member names sorted by UTF-16 code units, so U+1F600
 * (D83D DE00) comes before U+FB33, unlike code point order. */
Test(jcs, rfc8785_sorting_example)
{
    assert_jcs("{\"\\u20ac\": \"Euro Sign\", \"\\r\": \"Carriage Return\", "
               "\"\\ufb33\": \"Hebrew Letter Dalet With Dagesh\", \"1\": \"One\", "
               "\"\\ud83d\\ude00\": \"Emoji: Grinning Face\", \"\\u0080\": \"Control\", "
               "\"\\u00f6\": \"Latin Small Letter O With Diaeresis\"}",
               "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\xc2\x80\":\"Control\","
               "\"\xc3\xb6\":\"Latin Small Letter O With Diaeresis\",\"\xe2\x82\xac\":\"Euro Sign\","
               "\"\xf0\x9f\x98\x80\":\"Emoji: Grinning Face\",\"\xef\xac\xb3\":\"Hebrew Letter Dalet With Dagesh\"}");
}

/* RFC 8785 3.2.2's example without its non-integer numbers (refused here). */
Test(jcs, rfc8785_string_and_literals_example)
{
    assert_jcs("{\n  \"string\": \"\\u20ac$\\u000F\\u000aA'\\u0042\\u0022\\u005c\\\\\\\"\\/\",\n"
               "  \"literals\": [null, true, false]\n}",
               "{\"literals\":[null,true,false],\"string\":\"\xe2\x82\xac$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}");
}

/* ECMAScript's escapes: the two-letter ones, \u00xx for other controls,
 * everything else (DEL, U+2028, non-ASCII) literal. */
Test(jcs, string_escaping)
{
    assert_jcs("\"\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\\u2028\\u0000x\"",
               "\"\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\xe2\x80\xa8\\u0000x\"");
    assert_jcs("[\"\", {}, []]", "[\"\",{},[]]");
}

Test(jcs, nested_objects_sorted_at_every_level)
{
    assert_jcs("{\"b\": {\"z\": 1, \"a\": [ {\"y\": 2, \"x\": 3} ]}, \"a\": \"\"}",
               "{\"a\":\"\",\"b\":{\"a\":[{\"x\":3,\"y\":2}],\"z\":1}}");
    assert_jcs("{\"aa\": 1, \"a\": 2, \"B\": 3}", "{\"B\":3,\"a\":2,\"aa\":1}");
}

/* Integers print in decimal up to 2^53 - 1; beyond that, or a fraction, refused. */
Test(jcs, integers)
{
    assert_jcs("[0, -1, 1, 100, 9007199254740991, -9007199254740991]",
               "[0,-1,1,100,9007199254740991,-9007199254740991]");
    assert_jcs_refused("9007199254740992");
    assert_jcs_refused("[-9007199254740992]");
    assert_jcs_refused("{\"a\": 1.5}");
    assert_jcs_refused("1.0");
    assert_jcs_refused("1e30");
}

Test(jcs, depth_capped)
{
    char text[81];
    memset(text, '[', 40);
    memset(text + 40, ']', 40);
    text[80] = 0;
    assert_jcs_refused(text);
    assert_jcs("[[[[[[1]]]]]]", "[[[[[[1]]]]]]");
}

#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SHA_B "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define PCR0 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define RECIPIENT "age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef"

static json_t *example_spec(void)
{
    return json_pack("{s:s, s:s, s:[s,s], s:[s,s], s:s}", "workspace", "cohort", "query",
                     "SELECT city, count(*) FROM patients GROUP BY city", "inputs", "patients", "visits",
                     "recipients", "alice", "bob", "notAfter", "2027-01-01T00:00:00Z");
}

static json_t *example_resolved(void)
{
    return json_pack("{s:[{s:s,s:s},{s:s,s:s}], s:[s], s:{s:s}}", "inputs", "name", "patients", "sha256", SHA_A,
                     "name", "visits", "sha256", SHA_B, "recipients", RECIPIENT, "engine", "pcr0", PCR0);
}

/* The digest input has exactly DESIGN.md's fields, maxRuns defaulting to 1;
 * the expected digest was computed by Python's hashlib over the same text. */
Test(job_digest, input_and_digest)
{
    json_t *spec = example_spec(), *resolved = example_resolved(), *in = NULL;
    cr_assert_eq(job_digest_input(spec, resolved, &in), 0);
    _cleanup_free_ char *text = NULL;
    cr_assert_eq(jcs_serialize(in, &text), 0);
    cr_assert_str_eq(text, "{\"apiVersion\":\"cloister.dev/v1\",\"engine\":{\"pcr0\":\"" PCR0 "\"},"
                           "\"inputs\":[{\"name\":\"patients\",\"sha256\":\"" SHA_A "\"},"
                           "{\"name\":\"visits\",\"sha256\":\"" SHA_B "\"}],\"maxRuns\":1,"
                           "\"notAfter\":\"2027-01-01T00:00:00Z\","
                           "\"query\":\"SELECT city, count(*) FROM patients GROUP BY city\","
                           "\"recipients\":[\"" RECIPIENT "\"],\"workspace\":\"cohort\"}");
    uint8_t d[JOB_DIGEST_SIZE];
    char hex[2 * JOB_DIGEST_SIZE + 1];
    cr_assert_eq(job_digest(in, d), 0);
    hex_encode(d, sizeof(d), hex);
    cr_assert_str_eq(hex, "16a5fa017adfb39325f43d63db180ba956b78a0e1936ee0ef6eb14f95bb76f5d");
    json_decref(in);

    /* no notAfter: null; maxRuns given: kept */
    json_object_del(spec, "notAfter");
    json_object_set_new(spec, "maxRuns", json_integer(3));
    cr_assert_eq(job_digest_input(spec, resolved, &in), 0);
    cr_assert(json_is_null(json_object_get(in, "notAfter")));
    cr_assert_eq(json_integer_value(json_object_get(in, "maxRuns")), 3);
    json_decref(in);
    json_decref(spec);
    json_decref(resolved);
}

/* Each malformed piece is refused rather than hashed. */
Test(job_digest, input_refuses_mismatches)
{
    json_t *in = NULL;
    struct {
        const char *path, *value;
    } bad[] = {
        {"inputs0name", "visits"}, {"inputs0sha", "AAAA"}, {"pcr0", "abc"}, {"recipient", "alice"},
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
        json_t *spec = example_spec(), *res = example_resolved();
        if (strcmp(bad[i].path, "inputs0name") == 0)
            json_object_set_new(json_array_get(json_object_get(res, "inputs"), 0), "name", json_string(bad[i].value));
        else if (strcmp(bad[i].path, "inputs0sha") == 0)
            json_object_set_new(json_array_get(json_object_get(res, "inputs"), 0), "sha256",
                                json_string(bad[i].value));
        else if (strcmp(bad[i].path, "pcr0") == 0)
            json_object_set_new(json_object_get(res, "engine"), "pcr0", json_string(bad[i].value));
        else
            json_array_set_new(json_object_get(res, "recipients"), 0, json_string(bad[i].value));
        cr_assert_eq(job_digest_input(spec, res, &in), -EINVAL, "%s", bad[i].path);
        json_decref(spec);
        json_decref(res);
    }
    json_t *spec = example_spec(), *res = example_resolved();
    json_array_remove(json_object_get(res, "inputs"), 1);
    cr_assert_eq(job_digest_input(spec, res, &in), -EINVAL);
    json_decref(res);
    res = example_resolved();
    json_object_set_new(spec, "maxRuns", json_integer(0));
    cr_assert_eq(job_digest_input(spec, res, &in), -EINVAL);
    json_decref(spec);
    json_decref(res);
}

/* An approval verifies only under the signer's key, over that digest's message. */
Test(job_approval, ed25519_verify)
{
    uint8_t digest[JOB_DIGEST_SIZE], other[JOB_DIGEST_SIZE];
    memset(digest, 0x42, sizeof(digest));
    memset(other, 0x43, sizeof(other));
    char msg[JOB_APPROVAL_MESSAGE_LEN + 1];
    job_approval_message(digest, msg);
    cr_assert_str_eq(msg, "cloister job approval v1\n"
                          "4242424242424242424242424242424242424242424242424242424242424242\n");

    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"), *key2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    uint8_t pub[32], pub2[32], sig[64];
    size_t n = 32, sn = 64;
    cr_assert_eq(EVP_PKEY_get_raw_public_key(key, pub, &n), 1);
    n = 32;
    cr_assert_eq(EVP_PKEY_get_raw_public_key(key2, pub2, &n), 1);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert_eq(EVP_DigestSignInit(ctx, NULL, NULL, NULL, key), 1);
    cr_assert_eq(EVP_DigestSign(ctx, sig, &sn, (const uint8_t *)msg, strlen(msg)), 1);
    EVP_MD_CTX_free(ctx);

    cr_assert(job_approval_verify(digest, pub, sig));
    cr_assert_not(job_approval_verify(other, pub, sig), "a signature over another digest");
    cr_assert_not(job_approval_verify(digest, pub2, sig), "another user's key");
    sig[10] ^= 1;
    cr_assert_not(job_approval_verify(digest, pub, sig), "a changed signature");
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
}
