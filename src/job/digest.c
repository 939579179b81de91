/* A job's digest (RFC 8785 JCS + SHA-256) and the Ed25519 check of an approval. */
#include "job/digest.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/strbuf.h"

#define JCS_MAX_DEPTH 32
#define JCS_MAX_SAFE_INTEGER 9007199254740991LL /* 2^53 - 1: exact as an IEEE double */

/* Walks a UTF-8 string (jansson holds only valid UTF-8) as UTF-16 code units. */
typedef struct utf16_iter {
    const unsigned char *p;
    uint16_t pending; /* the low surrogate of the last code point, or 0 */
} utf16_iter;

/* The next UTF-16 code unit, or -1 at the end of the string. */
static int utf16_next(utf16_iter *it)
{
    if (it->pending) {
        uint16_t u = it->pending;
        it->pending = 0;
        return u;
    }
    const unsigned char *p = it->p;
    if (!*p)
        return -1;
    uint32_t cp;
    if (p[0] < 0x80) {
        cp = p[0];
        it->p += 1;
    } else if ((p[0] & 0xe0) == 0xc0 && p[1]) {
        cp = (uint32_t)(p[0] & 0x1f) << 6 | (p[1] & 0x3f);
        it->p += 2;
    } else if ((p[0] & 0xf0) == 0xe0 && p[1] && p[2]) {
        cp = (uint32_t)(p[0] & 0x0f) << 12 | (uint32_t)(p[1] & 0x3f) << 6 | (p[2] & 0x3f);
        it->p += 3;
    } else if (p[1] && p[2] && p[3]) {
        cp = (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3f) << 12 | (uint32_t)(p[2] & 0x3f) << 6 |
             (p[3] & 0x3f);
        it->p += 4;
    } else {
        /* truncated sequence: cannot come from jansson; end the walk */
        it->p += strlen((const char *)p);
        return -1;
    }
    if (cp < 0x10000)
        return (int)cp;
    cp -= 0x10000;
    it->pending = (uint16_t)(0xdc00 | (cp & 0x3ff));
    return (int)(0xd800 | (cp >> 10));
}

/* Orders two member names by their UTF-16 code units (RFC 8785 3.2.3). */
static int jcs_key_cmp(const void *a, const void *b)
{
    utf16_iter x = {.p = *(const unsigned char *const *)a}, y = {.p = *(const unsigned char *const *)b};
    for (;;) {
        int u = utf16_next(&x), v = utf16_next(&y);
        if (u != v)
            return u < v ? -1 : 1;
        if (u < 0)
            return 0;
    }
}

/* Appends the N bytes at S as a JSON string the way ECMAScript's
 * JSON.stringify writes it (RFC 8785 3.2.2.2). Not strbuf_put_json_string():
 * that one escapes DEL and writes \b, \f as \u00xx, and the audit log's
 * existing hashes depend on it. */
static int jcs_put_string(strbuf *b, const char *s, size_t n)
{
    static const char hexdig[] = "0123456789abcdef";
    int r = strbuf_putc(b, '"');
    for (size_t i = 0; r == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            r = strbuf_puts(b, "\\\"");
            break;
        case '\\':
            r = strbuf_puts(b, "\\\\");
            break;
        case '\b':
            r = strbuf_puts(b, "\\b");
            break;
        case '\f':
            r = strbuf_puts(b, "\\f");
            break;
        case '\n':
            r = strbuf_puts(b, "\\n");
            break;
        case '\r':
            r = strbuf_puts(b, "\\r");
            break;
        case '\t':
            r = strbuf_puts(b, "\\t");
            break;
        default:
            if (c < 0x20) {
                char esc[7] = {'\\', 'u', '0', '0', hexdig[c >> 4], hexdig[c & 15], 0};
                r = strbuf_puts(b, esc);
            } else
                r = strbuf_putc(b, (char)c);
        }
    }
    return r ? r : strbuf_putc(b, '"');
}

static int jcs_put(strbuf *b, const json_t *v, unsigned depth);

/* Appends the object O with its members sorted (RFC 8785 3.2.3). */
static int jcs_put_object(strbuf *b, const json_t *o, unsigned depth)
{
    size_t n = json_object_size(o);
    _cleanup_free_ const char **keys = calloc(n ? n : 1, sizeof(*keys));
    if (!keys)
        return -ENOMEM;
    size_t i = 0;
    for (void *it = json_object_iter((json_t *)o); it && i < n; it = json_object_iter_next((json_t *)o, it))
        keys[i++] = json_object_iter_key(it);
    qsort(keys, n, sizeof(*keys), jcs_key_cmp);
    int r = strbuf_putc(b, '{');
    for (i = 0; r == 0 && i < n; i++) {
        if (i > 0 && (r = strbuf_putc(b, ',')) < 0)
            break;
        if ((r = jcs_put_string(b, keys[i], strlen(keys[i]))) < 0 || (r = strbuf_putc(b, ':')) < 0)
            break;
        r = jcs_put(b, json_object_get(o, keys[i]), depth + 1);
    }
    return r ? r : strbuf_putc(b, '}');
}

/* Appends V in canonical form; DEPTH counts the containers around it. */
static int jcs_put(strbuf *b, const json_t *v, unsigned depth)
{
    if (depth > JCS_MAX_DEPTH)
        return -EINVAL;
    switch (json_typeof(v)) {
    case JSON_NULL:
        return strbuf_puts(b, "null");
    case JSON_TRUE:
        return strbuf_puts(b, "true");
    case JSON_FALSE:
        return strbuf_puts(b, "false");
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i > JCS_MAX_SAFE_INTEGER || i < -JCS_MAX_SAFE_INTEGER)
            return -EINVAL;
        return strbuf_printf(b, "%" JSON_INTEGER_FORMAT, i);
    }
    case JSON_REAL:
        return -EINVAL; /* ES6 number formatting is not needed by any job field */
    case JSON_STRING:
        return jcs_put_string(b, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
        int r = strbuf_putc(b, '[');
        for (size_t i = 0; r == 0 && i < json_array_size(v); i++) {
            if (i > 0 && (r = strbuf_putc(b, ',')) < 0)
                break;
            r = jcs_put(b, json_array_get(v, i), depth + 1);
        }
        return r ? r : strbuf_putc(b, ']');
    }
    case JSON_OBJECT:
        return jcs_put_object(b, v, depth);
    }
    return -EINVAL;
}

int jcs_serialize(const json_t *v, char **ret)
{
    if (!v)
        return -EINVAL;
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, JCS_MAX_SIZE);
    int r = jcs_put(&b, v, 0);
    if (r < 0)
        return r;
    char *text = strbuf_steal(&b);
    if (!text)
        return -ENOMEM;
    *ret = text;
    return 0;
}

/* Whether S is exactly N lower-case hex digits. */
static bool is_lower_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* The digest's inputs: RESOLVED's [{name, sha256}] checked against the spec's
 * dataset names, in the spec's order. A new reference or NULL. */
static json_t *digest_inputs(const json_t *spec_inputs, const json_t *resolved_inputs)
{
    if (!json_is_array(spec_inputs) || !json_is_array(resolved_inputs) || json_array_size(spec_inputs) == 0 ||
        json_array_size(spec_inputs) != json_array_size(resolved_inputs))
        return NULL;
    json_t *out = json_array();
    for (size_t i = 0; out && i < json_array_size(spec_inputs); i++) {
        const char *name = json_string_value(json_array_get(spec_inputs, i));
        const json_t *r = json_array_get(resolved_inputs, i);
        const char *rname = json_string_value(json_object_get(r, "name"));
        const char *sha = json_string_value(json_object_get(r, "sha256"));
        if (!name || !rname || strcmp(name, rname) != 0 || !is_lower_hex(sha, 2 * SHA256_DIGEST_LENGTH) ||
            json_array_append_new(out, json_pack("{s:s, s:s}", "name", name, "sha256", sha)) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* RESOLVED's recipients ["age1…"] copied after a shape check; a new reference or NULL. */
static json_t *digest_recipients(const json_t *resolved_recipients)
{
    if (!json_is_array(resolved_recipients) || json_array_size(resolved_recipients) == 0)
        return NULL;
    json_t *out = json_array();
    for (size_t i = 0; out && i < json_array_size(resolved_recipients); i++) {
        const char *s = json_string_value(json_array_get(resolved_recipients, i));
        if (!s || strncmp(s, "age1", 4) != 0 || json_array_append_new(out, json_string(s)) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

int job_digest_input(const json_t *job_spec, const json_t *resolved, json_t **ret)
{
    const char *workspace = json_string_value(json_object_get(job_spec, "workspace"));
    const char *query = json_string_value(json_object_get(job_spec, "query"));
    const char *pcr0 = json_string_value(json_object_get(json_object_get(resolved, "engine"), "pcr0"));
    const json_t *max_runs = json_object_get(job_spec, "maxRuns");
    const json_t *not_after = json_object_get(job_spec, "notAfter");
    if (!workspace || !query || !is_lower_hex(pcr0, 2 * SHA384_DIGEST_LENGTH))
        return -EINVAL;
    if (max_runs && (!json_is_integer(max_runs) || json_integer_value(max_runs) < 1))
        return -EINVAL;
    if (not_after && !json_is_string(not_after) && !json_is_null(not_after))
        return -EINVAL;

    json_t *inputs = digest_inputs(json_object_get(job_spec, "inputs"), json_object_get(resolved, "inputs"));
    json_t *recipients = digest_recipients(json_object_get(resolved, "recipients"));
    if (!inputs || !recipients) {
        json_decref(inputs);
        json_decref(recipients);
        return -EINVAL;
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:{s:s}, s:I, s:O}", "apiVersion", JOB_API_VERSION,
                          "workspace", workspace, "query", query, "inputs", inputs, "recipients", recipients,
                          "engine", "pcr0", pcr0, "maxRuns",
                          (json_int_t)(max_runs ? json_integer_value(max_runs) : JOB_MAX_RUNS_DEFAULT),
                          "notAfter", not_after ? (json_t *)not_after : json_null());
    if (!o)
        return -ENOMEM;
    *ret = o;
    return 0;
}

int job_digest(const json_t *digest_input, uint8_t ret[JOB_DIGEST_SIZE])
{
    _cleanup_free_ char *text = NULL;
    int r = jcs_serialize(digest_input, &text);
    if (r < 0)
        return r;
    SHA256((const unsigned char *)text, strlen(text), ret);
    return 0;
}

void job_approval_message(const uint8_t digest[JOB_DIGEST_SIZE], char out[JOB_APPROVAL_MESSAGE_LEN + 1])
{
    size_t p = STRLEN(JOB_APPROVAL_PREFIX);
    memcpy(out, JOB_APPROVAL_PREFIX, p);
    hex_encode(digest, JOB_DIGEST_SIZE, out + p);
    p += 2 * JOB_DIGEST_SIZE;
    out[p++] = '\n';
    out[p] = 0;
}

bool job_approval_verify(const uint8_t digest[JOB_DIGEST_SIZE], const uint8_t ed25519_pub[JOB_ED25519_PUBLIC_SIZE],
                         const uint8_t sig[JOB_ED25519_SIGNATURE_SIZE])
{
    char msg[JOB_APPROVAL_MESSAGE_LEN + 1];
    job_approval_message(digest, msg);
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, ed25519_pub, JOB_ED25519_PUBLIC_SIZE);
    EVP_MD_CTX *ctx = key ? EVP_MD_CTX_new() : NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
              EVP_DigestVerify(ctx, sig, JOB_ED25519_SIGNATURE_SIZE, (const unsigned char *)msg,
                               JOB_APPROVAL_MESSAGE_LEN) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok;
}
