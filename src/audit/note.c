#include "audit/note.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/entry.h"
#include "basic/encoding.h"
#include "basic/strbuf.h"

#define SIG_PREFIX "\xE2\x80\x94 "
#define ED25519_TYPE 0x01
#define NOTE_SIGNATURES_MAX 100

bool audit_key_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > AUDIT_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] <= ' ' || name[i] > '~' || name[i] == '+')
            return false;
    return true;
}

uint32_t audit_key_id(const char *name, const uint8_t pub[32])
{
    uint8_t buf[AUDIT_NAME_MAX + 2 + 32], md[SHA256_DIGEST_LENGTH];
    size_t n = strnlen(name, AUDIT_NAME_MAX);
    memcpy(buf, name, n);
    buf[n] = '\n';
    buf[n + 1] = ED25519_TYPE;
    memcpy(buf + n + 2, pub, 32);
    SHA256(buf, n + 2 + 32, md);
    return (uint32_t)md[0] << 24 | (uint32_t)md[1] << 16 | (uint32_t)md[2] << 8 | md[3];
}

int audit_verifier_format(const char *name, const uint8_t pub[32], char **ret)
{
    if (!audit_key_name_valid(name))
        return -EINVAL;
    uint8_t raw[33];
    raw[0] = ED25519_TYPE;
    memcpy(raw + 1, pub, 32);
    char b64[64];
    base64_encode(raw, sizeof(raw), b64, false);
    char *s;
    if (asprintf(&s, "%s+%08x+%s", name, audit_key_id(name, pub), b64) < 0)
        return -ENOMEM;
    *ret = s;
    return 0;
}

int audit_verifier_parse(const char *s, audit_verifier *ret)
{
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' ' || s[len - 1] == '\r'))
        len--;
    const char *p1 = memchr(s, '+', len);
    if (!p1 || (size_t)(p1 - s) > AUDIT_NAME_MAX)
        return -EINVAL;
    const char *p2 = memchr(p1 + 1, '+', len - (size_t)(p1 + 1 - s));
    if (!p2 || p2 - p1 - 1 != 8)
        return -EINVAL;
    audit_verifier v = {0};
    memcpy(v.name, s, (size_t)(p1 - s));
    if (!audit_key_name_valid(v.name))
        return -EINVAL;
    uint8_t id[4], raw[34];
    if (hex_decode(p1 + 1, 8, id, 4) < 0)
        return -EINVAL;
    long n = base64_decode(p2 + 1, len - (size_t)(p2 + 1 - s), raw, sizeof(raw), false);
    if (n != 33 || raw[0] != ED25519_TYPE)
        return -EINVAL;
    memcpy(v.pub, raw + 1, 32);
    v.key_id = (uint32_t)id[0] << 24 | (uint32_t)id[1] << 16 | (uint32_t)id[2] << 8 | id[3];
    if (v.key_id != audit_key_id(v.name, v.pub))
        return -EINVAL;
    *ret = v;
    return 0;
}

int audit_ed25519_public(EVP_PKEY *key, uint8_t pub[32])
{
    size_t n = 32;
    if (EVP_PKEY_get_raw_public_key(key, pub, &n) != 1 || n != 32)
        return -EINVAL;
    return 0;
}

/* Signs or verifies MSG with the Ed25519 KEY; returns 0 or -EPERM/-ENOMEM. */
static int ed25519(EVP_PKEY *key, bool sign, const void *msg, size_t len, uint8_t sig[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return -ENOMEM;
    int r;
    if (sign) {
        size_t n = 64;
        r = EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
                    EVP_DigestSign(ctx, sig, &n, msg, len) == 1 && n == 64
                ? 0
                : -ENOMEM;
    } else
        r = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 && EVP_DigestVerify(ctx, sig, 64, msg, len) == 1
                ? 0
                : -EPERM;
    EVP_MD_CTX_free(ctx);
    return r;
}

int audit_note_sign(EVP_PKEY *key, const char *name, const char *text, char **ret)
{
    size_t len = strlen(text);
    if (!audit_key_name_valid(name) || len == 0 || text[len - 1] != '\n' || strstr(text, "\n\n") ||
        len > AUDIT_NOTE_MAX)
        return -EINVAL;
    uint8_t pub[32], blob[4 + 64];
    if (audit_ed25519_public(key, pub) < 0)
        return -EINVAL;
    uint32_t id = audit_key_id(name, pub);
    blob[0] = (uint8_t)(id >> 24);
    blob[1] = (uint8_t)(id >> 16);
    blob[2] = (uint8_t)(id >> 8);
    blob[3] = (uint8_t)id;
    int r = ed25519(key, true, text, len, blob + 4);
    if (r < 0)
        return r;
    char b64[100];
    base64_encode(blob, sizeof(blob), b64, false);
    char *s;
    if (asprintf(&s, "%s\n" SIG_PREFIX "%s %s\n", text, name, b64) < 0)
        return -ENOMEM;
    *ret = s;
    return 0;
}

/* The last occurrence of "\n\n" in S (LEN bytes), or NULL. */
static const char *last_blank_line(const char *s, size_t len)
{
    for (size_t i = len; i-- > 1;)
        if (s[i] == '\n' && s[i - 1] == '\n')
            return s + i - 1;
    return NULL;
}

int audit_note_verify(const char *note, size_t len, const audit_verifier *v, size_t *ret_text_len)
{
    if (len > AUDIT_NOTE_MAX || len == 0 || note[len - 1] != '\n' || memchr(note, 0, len))
        return -EBADMSG;
    const char *sep = last_blank_line(note, len);
    if (!sep || sep == note)
        return -EBADMSG;
    size_t text_len = (size_t)(sep - note) + 1;
    const char *p = sep + 2, *end = note + len;
    bool verified = false;
    unsigned n_sigs = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t line = (size_t)(nl - p);
        if (++n_sigs > NOTE_SIGNATURES_MAX || line < STRLEN(SIG_PREFIX) || memcmp(p, SIG_PREFIX, STRLEN(SIG_PREFIX)))
            return -EBADMSG;
        const char *name = p + STRLEN(SIG_PREFIX);
        const char *sp = memchr(name, ' ', (size_t)(nl - name));
        if (!sp || sp == name || (size_t)(sp - name) > AUDIT_NAME_MAX)
            return -EBADMSG;
        uint8_t blob[4 + 512];
        long n = base64_decode(sp + 1, (size_t)(nl - sp - 1), blob, sizeof(blob), false);
        if (n < 5)
            return -EBADMSG;
        uint32_t id = (uint32_t)blob[0] << 24 | (uint32_t)blob[1] << 16 | (uint32_t)blob[2] << 8 | blob[3];
        if ((size_t)(sp - name) == strlen(v->name) && memcmp(name, v->name, (size_t)(sp - name)) == 0 &&
            id == v->key_id && !verified) {
            if (n != 4 + 64)
                return -EPERM;
            EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, v->pub, 32);
            if (!key)
                return -ENOMEM;
            int r = ed25519(key, false, note, text_len, blob + 4);
            EVP_PKEY_free(key);
            if (r < 0)
                return -EPERM;
            verified = true;
        }
        p = nl + 1;
    }
    if (!verified)
        return -EPERM;
    *ret_text_len = text_len;
    return 0;
}

int audit_checkpoint_format(const char *origin, uint64_t size, const merkle_hash root, char **ret)
{
    char b64[64];
    base64_encode(root, MERKLE_HASH_LEN, b64, false);
    char *s;
    if (asprintf(&s, "%s\n%llu\n%s\n", origin, (unsigned long long)size, b64) < 0)
        return -ENOMEM;
    *ret = s;
    return 0;
}

int audit_checkpoint_parse(const char *text, size_t len, char *origin_out, uint64_t *ret_size, merkle_hash ret_root)
{
    const char *end = text + len, *l1 = memchr(text, '\n', len);
    if (!l1 || l1 == text || (size_t)(l1 - text) > AUDIT_NAME_MAX)
        return -EINVAL;
    const char *l2 = memchr(l1 + 1, '\n', (size_t)(end - l1 - 1));
    if (!l2)
        return -EINVAL;
    const char *l3 = memchr(l2 + 1, '\n', (size_t)(end - l2 - 1));
    if (!l3)
        return -EINVAL;
    uint64_t size;
    merkle_hash root;
    if (audit_parse_index(l1 + 1, (size_t)(l2 - l1 - 1), &size) < 0 ||
        base64_decode(l2 + 1, (size_t)(l3 - l2 - 1), root, sizeof(root), false) != MERKLE_HASH_LEN)
        return -EINVAL;
    if (memchr(text, 0, (size_t)(l1 - text)))
        return -EINVAL;
    memcpy(origin_out, text, (size_t)(l1 - text));
    origin_out[l1 - text] = 0;
    *ret_size = size;
    memcpy(ret_root, root, MERKLE_HASH_LEN);
    return 0;
}
