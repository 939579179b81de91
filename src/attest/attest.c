/* attest_verify(): evidence decoding, dispatch to the verifiers and the
 * DESIGN.md result document. */
#include <errno.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "attest/attest-internal.h"
#include "basic/encoding.h"

static const char *const type_names[_ATTEST_TYPE_MAX] = {
    [ATTEST_NITRO] = "nitro",
    [ATTEST_SEV_SNP] = "sev-snp",
    [ATTEST_TDX] = "tdx",
    [ATTEST_SANDBOX] = "sandbox",
};

const char *attest_type_to_string(attest_type type)
{
    if ((unsigned)type >= _ATTEST_TYPE_MAX)
        return NULL;
    return type_names[type];
}

int attest_type_from_string(const char *s, attest_type *ret_type)
{
    if (!s)
        return -EINVAL;
    for (unsigned i = 0; i < _ATTEST_TYPE_MAX; i++)
        if (strcmp(s, type_names[i]) == 0) {
            *ret_type = (attest_type)i;
            return 0;
        }
    return -EINVAL;
}

bool attest_all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

int attest_fail(attest_error *error, int err, const char *fmt, ...)
{
    if (error) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error->text, sizeof(error->text), fmt, ap);
        va_end(ap);
    }
    return err;
}

int attest_json_set_new(json_t *obj, const char *key, json_t *value)
{
    if (!value)
        return -ENOMEM;
    return json_object_set_new(obj, key, value) == 0 ? 0 : -ENOMEM;
}

int attest_json_set_hex(json_t *obj, const char *key, const uint8_t *p, size_t n)
{
    _cleanup_free_ char *hex = malloc(2 * n + 1);
    if (!hex)
        return -ENOMEM;
    hex_encode(p, n, hex);
    return attest_json_set_new(obj, key, json_stringn(hex, 2 * n));
}

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_base64_char(uint8_t c, bool *url)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
        c == '/' || c == '=')
        return true;
    if (c == '-' || c == '_') {
        *url = true;
        return true;
    }
    return false;
}

/* Evidence may be given as its base64 text (standard or URL-safe alphabet,
 * padding optional, whitespace ignored). Returns 1 and a heap copy of the
 * decoded bytes in *ret_raw / *ret_len when IN is such text, 0 when IN is
 * binary (a byte outside the alphabet), a negative errno when the text is
 * not valid base64 or too large. */
static int evidence_decode_base64(const uint8_t *in, size_t len, uint8_t **ret_raw, size_t *ret_len,
                                  attest_error *error)
{
    bool url = false;
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        if (!is_space(in[i]) && !is_base64_char(in[i], &url))
            return 0;
    if (len > ATTEST_EVIDENCE_MAX * 2)
        return attest_fail(error, -E2BIG, "evidence: %zu bytes of base64 text, at most %d", len,
                           ATTEST_EVIDENCE_MAX * 2);

    _cleanup_free_ char *text = malloc(len + 3);
    _cleanup_free_ uint8_t *raw = malloc(ATTEST_EVIDENCE_MAX);
    if (!text || !raw)
        return attest_fail(error, -ENOMEM, "evidence: out of memory");
    for (size_t i = 0; i < len; i++)
        if (!is_space(in[i]))
            text[n++] = (char)in[i];
    if (url) {
        while (n > 0 && text[n - 1] == '=')
            n--;
    } else
        while (n % 4 != 0)
            text[n++] = '=';

    long r = base64_decode(text, n, raw, ATTEST_EVIDENCE_MAX, url);
    if (r == -E2BIG)
        return attest_fail(error, -E2BIG, "evidence: more than %d bytes", ATTEST_EVIDENCE_MAX);
    if (r <= 0)
        return attest_fail(error, -EBADMSG, "evidence: text that is not valid base64");
    *ret_raw = TAKE_PTR(raw);
    *ret_len = (size_t)r;
    return 1;
}

json_t *attest_refusal_new(attest_type type, const char *reason)
{
    const char *name = attest_type_to_string(type);
    return json_pack("{s:b, s:s?, s:{}, s:s}", "verified", 0, "type", name, "claims", "error",
                     reason ? reason : "evidence refused");
}

int attest_verify(attest_type type, const uint8_t *evidence, size_t len, const attest_options *opts,
                  json_t **ret_result, attest_error *error)
{
    _cleanup_free_ uint8_t *decoded = NULL;
    _cleanup_(json_decrefp) json_t *claims = NULL;
    size_t raw_len = len;
    int r;

    if (!attest_type_to_string(type) || !evidence || !opts || !ret_result)
        return attest_fail(error, -EINVAL, "invalid arguments");
    if (len == 0)
        return attest_fail(error, -EBADMSG, "evidence: empty");

    r = evidence_decode_base64(evidence, len, &decoded, &raw_len, error);
    if (r < 0)
        return r;
    const uint8_t *raw = r > 0 ? decoded : evidence;
    if (raw_len > ATTEST_EVIDENCE_MAX)
        return attest_fail(error, -E2BIG, "evidence: %zu bytes, at most %d", raw_len,
                           ATTEST_EVIDENCE_MAX);

    switch (type) {
    case ATTEST_NITRO:
    case ATTEST_SANDBOX:
        r = attest_nitro_verify(raw, raw_len, type == ATTEST_SANDBOX, opts, &claims, error);
        break;
    case ATTEST_SEV_SNP:
        r = attest_sev_snp_verify(raw, raw_len, opts, &claims, error);
        break;
    case ATTEST_TDX:
        r = attest_tdx_verify(raw, raw_len, opts, &claims, error);
        break;
    default:
        r = attest_fail(error, -EINVAL, "invalid evidence type");
        break;
    }
    /* leave nothing of this evidence in the thread's OpenSSL error queue */
    ERR_clear_error();
    if (r < 0)
        return r;

    json_t *result = json_pack("{s:b, s:s, s:O}", "verified", 1, "type",
                               attest_type_to_string(type), "claims", claims);
    if (!result)
        return attest_fail(error, -ENOMEM, "out of memory");
    *ret_result = result;
    return 0;
}
