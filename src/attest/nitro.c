/* AWS Nitro Enclaves attestation documents, and Cloister sandbox documents
 * in the same format: a COSE_Sign1 (RFC 9052, tagged or not) signed with
 * ES384 by the leaf certificate of the payload, whose chain runs through the
 * payload's cabundle to the pinned AWS Nitro root (or, for sandbox
 * documents, to the caller's platform CA).
 *
 * Everything is checked before use: the CBOR is scanned first (definite
 * lengths only, bounded nesting, sizes within the input, no trailing bytes),
 * then each field's type and size. */
#include <cbor.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <string.h>

#include "attest/attest-internal.h"
#include "basic/cbor-scan.h"

#define CBOR_DEPTH_MAX 8
#define COSE_ALG_ES384 (-35)
#define COSE_TAG_SIGN1 18
#define COSE_TAG_SIGN1_BYTE 0xd2
#define ES384_SIG_LEN 96
#define MODULE_ID_MAX 256
#define CERT_MAX 1024
#define CABUNDLE_MAX 8
#define OPTIONAL_FIELD_MAX 1024
#define PCRS_MAX 32


/* Checks that DATA is exactly one well-formed CBOR item that libcbor can
 * load without surprises (basic/cbor-scan.h), nesting of at most
 * CBOR_DEPTH_MAX, no trailing bytes. WHAT names the input in errors. */
static int cbor_check(const char *what, const uint8_t *data, size_t len, attest_error *error)
{
    size_t item_len, pos;
    cbor_scan_error why;
    if (cbor_scan_item(data, len, CBOR_DEPTH_MAX, &item_len, &why, &pos) < 0) {
        switch (why) {
        case CBOR_SCAN_UNSUPPORTED:
            return attest_fail(error, -EBADMSG,
                               "%s: unsupported CBOR item at byte %zu (indefinite length, "
                               "float, undefined or impossible size)",
                               what, pos);
        case CBOR_SCAN_TOO_DEEP:
            return attest_fail(error, -EBADMSG, "%s: CBOR nested deeper than %d at byte %zu", what, CBOR_DEPTH_MAX,
                               pos);
        case CBOR_SCAN_TRUNCATED:
            return attest_fail(error, -EBADMSG, "%s: truncated CBOR (%zu bytes)", what, len);
        default:
            return attest_fail(error, -EBADMSG, "%s: malformed or truncated CBOR at byte %zu", what, pos);
        }
    }
    if (item_len != len)
        return attest_fail(error, -EBADMSG, "%s: %zu trailing bytes after the CBOR item", what, len - item_len);
    return 0;
}

/* Scans then loads DATA into a new item the caller decrefs. */
static int cbor_parse(const char *what, const uint8_t *data, size_t len, cbor_item_t **ret_item,
                      attest_error *error)
{
    struct cbor_load_result res;
    int r = cbor_check(what, data, len, error);
    if (r < 0)
        return r;
    cbor_item_t *item = cbor_load(data, len, &res);
    if (!item || res.error.code != CBOR_ERR_NONE || res.read != len) {
        if (item)
            cbor_decref(&item);
        return attest_fail(error, res.error.code == CBOR_ERR_MEMERROR ? -ENOMEM : -EBADMSG,
                           "%s: CBOR does not load (error %d at byte %zu)", what,
                           (int)res.error.code, res.error.position);
    }
    *ret_item = item;
    return 0;
}

static bool is_printable_ascii(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return false;
    return true;
}

typedef struct bytes {
    const uint8_t *p;
    size_t len;
} bytes;

/* The signed payload; everything points into the loaded CBOR items. */
typedef struct nitro_doc {
    const char *module_id;
    size_t module_id_len;
    const char *digest;
    size_t digest_len;
    uint64_t timestamp;
    bytes pcrs[PCRS_MAX];
    size_t n_pcrs;
    bytes certificate;
    bytes cabundle[CABUNDLE_MAX];
    size_t n_cabundle;
    bytes public_key, user_data, nonce; /* .p NULL when absent or null */
    bool has_public_key, has_user_data, has_nonce;
} nitro_doc;

/* Checks the COSE protected header: exactly {1 (alg): -35 (ES384)}. */
static int check_protected(const uint8_t *p, size_t len, attest_error *error)
{
    _cleanup_cbor_ cbor_item_t *hdr = NULL;
    int r = cbor_parse("COSE protected header", p, len, &hdr, error);
    if (r < 0)
        return r;
    if (!cbor_isa_map(hdr) || cbor_map_size(hdr) != 1)
        return attest_fail(error, -EBADMSG, "COSE protected header: not a map of one entry");
    struct cbor_pair *pair = cbor_map_handle(hdr);
    if (!cbor_isa_uint(pair[0].key) || cbor_get_int(pair[0].key) != 1)
        return attest_fail(error, -EBADMSG, "COSE protected header: the entry is not alg (1)");
    if (!cbor_isa_negint(pair[0].value) ||
        cbor_get_int(pair[0].value) != (uint64_t)(-1 - COSE_ALG_ES384))
        return attest_fail(error, -EKEYREJECTED, "COSE protected header: alg is not ES384 (-35)");
    return 0;
}

/* Optional bytes of at most OPTIONAL_FIELD_MAX (at least MIN); CBOR null
 * means absent. */
static int parse_optional(const char *name, const cbor_item_t *v, size_t min, bytes *ret,
                          bool *ret_present, attest_error *error)
{
    if (cbor_is_null(v)) {
        *ret = (bytes){NULL, 0};
        *ret_present = false;
        return 0;
    }
    bytes b;
    if (!cbor_get_bytes(v, &b.p, &b.len))
        return attest_fail(error, -EBADMSG, "payload field %s: not a byte string or null", name);
    if (b.len < min || b.len > OPTIONAL_FIELD_MAX)
        return attest_fail(error, -EBADMSG, "payload field %s: %zu bytes, expected %zu to %d",
                           name, b.len, min, OPTIONAL_FIELD_MAX);
    *ret = b;
    *ret_present = true;
    return 0;
}

/* Byte length of a PCR under DIGEST ("SHA256", "SHA384", "SHA512"), 0 if unknown. */
static size_t digest_size(const char *digest, size_t len)
{
    static const struct {
        const char *name;
        size_t size;
    } table[] = {{"SHA256", 32}, {"SHA384", 48}, {"SHA512", 64}};
    for (size_t i = 0; i < ELEMENTSOF(table); i++)
        if (len == strlen(table[i].name) && memcmp(digest, table[i].name, len) == 0)
            return table[i].size;
    return 0;
}

/* Parses the pcrs map: 16 or 32 entries, keys 0…n-1 each once, values of
 * PCR_LEN bytes. */
static int parse_pcrs(const cbor_item_t *v, size_t pcr_len, nitro_doc *doc, attest_error *error)
{
    if (!cbor_isa_map(v))
        return attest_fail(error, -EBADMSG, "payload field pcrs: not a map");
    size_t n = cbor_map_size(v);
    if (n != 16 && n != 32)
        return attest_fail(error, -EBADMSG, "payload field pcrs: %zu entries, expected 16 or 32", n);
    struct cbor_pair *pairs = cbor_map_handle(v);
    uint32_t seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!cbor_isa_uint(pairs[i].key) || cbor_get_int(pairs[i].key) >= n)
            return attest_fail(error, -EBADMSG, "payload field pcrs: entry %zu has a bad index", i);
        unsigned idx = (unsigned)cbor_get_int(pairs[i].key);
        if (seen & (UINT32_C(1) << idx))
            return attest_fail(error, -EBADMSG, "payload field pcrs: index %u repeated", idx);
        seen |= UINT32_C(1) << idx;
        bytes b;
        if (!cbor_get_bytes(pairs[i].value, &b.p, &b.len))
            return attest_fail(error, -EBADMSG, "payload field pcrs: PCR %u is not bytes", idx);
        if (b.len != pcr_len)
            return attest_fail(error, -EBADMSG, "payload field pcrs: PCR %u has %zu bytes, expected %zu",
                               idx, b.len, pcr_len);
        doc->pcrs[idx] = b;
    }
    doc->n_pcrs = n;
    return 0;
}

static int parse_cabundle(const cbor_item_t *v, nitro_doc *doc, attest_error *error)
{
    if (!cbor_isa_array(v))
        return attest_fail(error, -EBADMSG, "payload field cabundle: not an array");
    size_t n = cbor_array_size(v);
    if (n < 1 || n > CABUNDLE_MAX)
        return attest_fail(error, -EBADMSG, "payload field cabundle: %zu certificates, expected 1 to %d",
                           n, CABUNDLE_MAX);
    cbor_item_t **items = cbor_array_handle(v);
    for (size_t i = 0; i < n; i++) {
        bytes b;
        if (!cbor_get_bytes(items[i], &b.p, &b.len) || b.len < 1 || b.len > CERT_MAX)
            return attest_fail(error, -EBADMSG,
                               "payload field cabundle: entry %zu is not 1 to %d bytes", i, CERT_MAX);
        doc->cabundle[i] = b;
    }
    doc->n_cabundle = n;
    return 0;
}

enum {
    F_MODULE_ID = 1 << 0,
    F_DIGEST = 1 << 1,
    F_TIMESTAMP = 1 << 2,
    F_PCRS = 1 << 3,
    F_CERTIFICATE = 1 << 4,
    F_CABUNDLE = 1 << 5,
    F_PUBLIC_KEY = 1 << 6,
    F_USER_DATA = 1 << 7,
    F_NONCE = 1 << 8,
    F_REQUIRED = F_MODULE_ID | F_DIGEST | F_TIMESTAMP | F_PCRS | F_CERTIFICATE | F_CABUNDLE,
};

static const struct {
    const char *name;
    unsigned flag;
} payload_fields[] = {
    {"module_id", F_MODULE_ID}, {"digest", F_DIGEST},         {"timestamp", F_TIMESTAMP},
    {"pcrs", F_PCRS},           {"certificate", F_CERTIFICATE}, {"cabundle", F_CABUNDLE},
    {"public_key", F_PUBLIC_KEY}, {"user_data", F_USER_DATA}, {"nonce", F_NONCE},
};

/* Parses one payload entry whose key is the field FLAG. */
static int parse_field(unsigned flag, const cbor_item_t *v, nitro_doc *doc, attest_error *error)
{
    switch (flag) {
    case F_MODULE_ID:
        if (!cbor_get_text(v, &doc->module_id, &doc->module_id_len) || doc->module_id_len < 1 ||
            doc->module_id_len > MODULE_ID_MAX || !is_printable_ascii(doc->module_id, doc->module_id_len))
            return attest_fail(error, -EBADMSG,
                               "payload field module_id: not printable text of 1 to %d bytes",
                               MODULE_ID_MAX);
        return 0;
    case F_DIGEST:
        if (!cbor_get_text(v, &doc->digest, &doc->digest_len) ||
            !digest_size(doc->digest, doc->digest_len))
            return attest_fail(error, -EBADMSG,
                               "payload field digest: not SHA256, SHA384 or SHA512");
        return 0;
    case F_TIMESTAMP:
        if (!cbor_isa_uint(v) || cbor_get_int(v) == 0)
            return attest_fail(error, -EBADMSG, "payload field timestamp: not a positive integer");
        doc->timestamp = cbor_get_int(v);
        if (doc->timestamp > INT64_MAX)
            return attest_fail(error, -EBADMSG, "payload field timestamp: %llu out of range",
                               (unsigned long long)doc->timestamp);
        return 0;
    case F_CERTIFICATE:
        if (!cbor_get_bytes(v, &doc->certificate.p, &doc->certificate.len) ||
            doc->certificate.len < 1 || doc->certificate.len > CERT_MAX)
            return attest_fail(error, -EBADMSG,
                               "payload field certificate: not a byte string of 1 to %d bytes",
                               CERT_MAX);
        return 0;
    case F_CABUNDLE:
        return parse_cabundle(v, doc, error);
    case F_PUBLIC_KEY:
        return parse_optional("public_key", v, 1, &doc->public_key, &doc->has_public_key, error);
    case F_USER_DATA:
        return parse_optional("user_data", v, 0, &doc->user_data, &doc->has_user_data, error);
    case F_NONCE:
        return parse_optional("nonce", v, 0, &doc->nonce, &doc->has_nonce, error);
    default: /* F_PCRS is parsed once the digest is known */
        return 0;
    }
}

/* Parses the payload map into DOC, which then points into ITEM. */
static int parse_payload(const cbor_item_t *item, nitro_doc *doc, attest_error *error)
{
    const cbor_item_t *pcrs = NULL;
    unsigned seen = 0;
    int r;

    if (!cbor_isa_map(item))
        return attest_fail(error, -EBADMSG, "payload: not a map");
    size_t n = cbor_map_size(item);
    struct cbor_pair *pairs = cbor_map_handle(item);
    for (size_t i = 0; i < n; i++) {
        const char *key;
        size_t key_len;
        unsigned flag = 0;
        if (!cbor_get_text(pairs[i].key, &key, &key_len))
            return attest_fail(error, -EBADMSG, "payload: entry %zu has a key that is not text", i);
        for (size_t j = 0; j < ELEMENTSOF(payload_fields); j++)
            if (key_len == strlen(payload_fields[j].name) &&
                memcmp(key, payload_fields[j].name, key_len) == 0)
                flag = payload_fields[j].flag;
        if (!flag && is_printable_ascii(key, key_len))
            return attest_fail(error, -EBADMSG, "payload: unknown field \"%.*s\"",
                               (int)MIN(key_len, (size_t)64), key);
        if (!flag)
            return attest_fail(error, -EBADMSG, "payload: unknown field of %zu bytes", key_len);
        if (seen & flag)
            return attest_fail(error, -EBADMSG, "payload: field %.*s repeated", (int)key_len, key);
        seen |= flag;
        if (flag == F_PCRS)
            pcrs = pairs[i].value;
        r = parse_field(flag, pairs[i].value, doc, error);
        if (r < 0)
            return r;
    }
    if ((seen & F_REQUIRED) != F_REQUIRED) {
        for (size_t j = 0; j < ELEMENTSOF(payload_fields); j++)
            if ((F_REQUIRED & payload_fields[j].flag) && !(seen & payload_fields[j].flag))
                return attest_fail(error, -EBADMSG, "payload: field %s missing",
                                   payload_fields[j].name);
    }
    return parse_pcrs(pcrs, digest_size(doc->digest, doc->digest_len), doc, error);
}

/* Builds the COSE Sig_structure ["Signature1", protected, h'', payload]
 * into a new buffer the caller frees. */
static int sig_structure(const uint8_t *prot, size_t prot_len, const uint8_t *payload,
                         size_t payload_len, uint8_t **ret_buf, size_t *ret_len)
{
    static const char context[] = "Signature1";
    size_t cap = 1 + 9 + STRLEN(context) + 9 + prot_len + 1 + 9 + payload_len, n = 0, w;
    _cleanup_free_ uint8_t *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;

    n += cbor_encode_array_start(4, buf, cap);
    w = cbor_encode_string_start(STRLEN(context), buf + n, cap - n);
    memcpy(buf + n + w, context, STRLEN(context));
    n += w + STRLEN(context);
    w = cbor_encode_bytestring_start(prot_len, buf + n, cap - n);
    memcpy(buf + n + w, prot, prot_len);
    n += w + prot_len;
    n += cbor_encode_bytestring_start(0, buf + n, cap - n); /* external_aad */
    w = cbor_encode_bytestring_start(payload_len, buf + n, cap - n);
    memcpy(buf + n + w, payload, payload_len);
    n += w + payload_len;

    *ret_buf = TAKE_PTR(buf);
    *ret_len = n;
    return 0;
}

/* Verifies the ES384 signature (raw r‖s) over the Sig_structure with LEAF's key. */
static int check_signature(X509 *leaf, const uint8_t *prot, size_t prot_len, const uint8_t *payload,
                           size_t payload_len, const uint8_t *sig, attest_error *error)
{
    _cleanup_free_ uint8_t *tbs = NULL;
    size_t tbs_len;
    if (sig_structure(prot, prot_len, payload, payload_len, &tbs, &tbs_len) < 0)
        return attest_fail(error, -ENOMEM, "out of memory");
    return attest_ecdsa_verify("signature", X509_get0_pubkey(leaf), NID_secp384r1, EVP_sha384(),
                               sig, sig + ES384_SIG_LEN / 2, ES384_SIG_LEN / 2, tbs, tbs_len,
                               error);
}

/* Parses the cabundle certificates into a new stack. */
static int parse_bundle(const nitro_doc *doc, STACK_OF(X509) **ret, attest_error *error)
{
    _cleanup_x509_stack_ STACK_OF(X509) *certs = sk_X509_new_null();
    if (!certs)
        return attest_fail(error, -ENOMEM, "out of memory");
    for (size_t i = 0; i < doc->n_cabundle; i++) {
        X509 *x;
        char what[32];
        snprintf(what, sizeof(what), "cabundle[%zu]", i);
        int r = attest_cert_parse(what, doc->cabundle[i].p, doc->cabundle[i].len, &x, error);
        if (r < 0)
            return r;
        if (!sk_X509_push(certs, x)) {
            X509_free(x);
            return attest_fail(error, -ENOMEM, "out of memory");
        }
    }
    *ret = TAKE_PTR(certs);
    return 0;
}

static int set_optional(json_t *claims, const char *name, bool present, const bytes *b)
{
    if (!present)
        return attest_json_set_new(claims, name, json_null());
    return attest_json_set_hex(claims, name, b->p, b->len);
}

/* The claims of DESIGN.md: module_id, digest, timestamp, pcrs, user_data,
 * nonce, public_key (null when absent), and "sandbox": true for sandbox
 * documents. */
static int make_claims(const nitro_doc *doc, bool sandbox, json_t **ret)
{
    _cleanup_(json_decrefp) json_t *claims = json_object(), *pcrs = json_object();
    if (!claims || !pcrs)
        return -ENOMEM;
    for (size_t i = 0; i < doc->n_pcrs; i++) {
        char idx[24];
        snprintf(idx, sizeof(idx), "%zu", i);
        if (attest_json_set_hex(pcrs, idx, doc->pcrs[i].p, doc->pcrs[i].len) < 0)
            return -ENOMEM;
    }
    if (attest_json_set_new(claims, "module_id", json_stringn(doc->module_id, doc->module_id_len)) < 0 ||
        attest_json_set_new(claims, "digest", json_stringn(doc->digest, doc->digest_len)) < 0 ||
        attest_json_set_new(claims, "timestamp", json_integer((json_int_t)doc->timestamp)) < 0 ||
        attest_json_set_new(claims, "pcrs", TAKE_PTR(pcrs)) < 0 ||
        set_optional(claims, "user_data", doc->has_user_data, &doc->user_data) < 0 ||
        set_optional(claims, "nonce", doc->has_nonce, &doc->nonce) < 0 ||
        set_optional(claims, "public_key", doc->has_public_key, &doc->public_key) < 0)
        return -ENOMEM;
    if (sandbox && attest_json_set_new(claims, "sandbox", json_true()) < 0)
        return -ENOMEM;
    *ret = TAKE_PTR(claims);
    return 0;
}

int attest_nitro_verify(const uint8_t *data, size_t len, bool sandbox, const attest_options *opts,
                        json_t **ret_claims, attest_error *error)
{
    _cleanup_cbor_ cbor_item_t *top = NULL, *tagged = NULL, *payload_item = NULL;
    _cleanup_(X509_freep) X509 *leaf = NULL;
    _cleanup_x509_stack_ STACK_OF(X509) *bundle = NULL;
    _cleanup_(attest_roots_done) attest_roots roots = {};
    nitro_doc doc = {};
    const uint8_t *prot, *payload, *sig;
    size_t prot_len, payload_len, sig_len;
    int r;

    /* libcbor 0.8 refuses one-byte tags 6 to 20 (0xc6-0xd4) as unassigned,
     * tag 18 among them: take it off here. */
    if (len > 0 && data[0] == COSE_TAG_SIGN1_BYTE) {
        data++;
        len--;
    }
    r = cbor_parse("COSE_Sign1", data, len, &top, error);
    if (r < 0)
        return r;
    const cbor_item_t *cose = top;
    if (cbor_isa_tag(top)) { /* tag 18 in a longer encoding, or another tag */
        if (cbor_tag_value(top) != COSE_TAG_SIGN1)
            return attest_fail(error, -EBADMSG, "COSE_Sign1: tag %llu, expected %d",
                               (unsigned long long)cbor_tag_value(top), COSE_TAG_SIGN1);
        cose = tagged = cbor_tag_item(top);
    }
    if (!cbor_isa_array(cose) || cbor_array_size(cose) != 4)
        return attest_fail(error, -EBADMSG, "COSE_Sign1: not an array of 4 items");
    cbor_item_t **parts = cbor_array_handle(cose);
    if (!cbor_get_bytes(parts[0], &prot, &prot_len))
        return attest_fail(error, -EBADMSG, "COSE_Sign1: protected header is not a byte string");
    if (!cbor_isa_map(parts[1]) || cbor_map_size(parts[1]) != 0)
        return attest_fail(error, -EBADMSG, "COSE_Sign1: unprotected header is not an empty map");
    if (!cbor_get_bytes(parts[2], &payload, &payload_len))
        return attest_fail(error, -EBADMSG, "COSE_Sign1: payload is not a byte string");
    if (!cbor_get_bytes(parts[3], &sig, &sig_len) || sig_len != ES384_SIG_LEN)
        return attest_fail(error, -EBADMSG, "COSE_Sign1: signature is not %d bytes", ES384_SIG_LEN);

    r = check_protected(prot, prot_len, error);
    if (r < 0)
        return r;
    r = cbor_parse("payload", payload, payload_len, &payload_item, error);
    if (r < 0)
        return r;
    r = parse_payload(payload_item, &doc, error);
    if (r < 0)
        return r;

    r = attest_cert_parse("certificate", doc.certificate.p, doc.certificate.len, &leaf, error);
    if (r < 0)
        return r;
    r = check_signature(leaf, prot, prot_len, payload, payload_len, sig, error);
    if (r < 0)
        return r;

    r = parse_bundle(&doc, &bundle, error);
    if (r < 0)
        return r;
    r = attest_roots_load(sandbox ? ATTEST_SANDBOX : ATTEST_NITRO, opts, &roots, error);
    if (r < 0)
        return r;
    r = attest_chain_verify(leaf, bundle, &roots, NULL, opts->time, error);
    if (r < 0)
        return r;

    r = make_claims(&doc, sandbox, ret_claims);
    if (r < 0)
        return attest_fail(error, r, "out of memory");
    return 0;
}
