#include "api/handoff.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/encoding.h"
#include "basic/fileio.h"

#define HANDOFF_AAD "cloister-handoff-v1"
#define HANDOFF_IV_LEN 12
#define HANDOFF_TAG_LEN 16
#define HANDOFF_NONCE_LEN 16 /* bytes; 32 hex digits */

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Checks the authority A (N bytes): a DNS name of letters, digits, '-' and
 * '.', then an optional ":PORT" (1..65535). Returns the host's length, or
 * -1 with *WHY set. */
static long authority_check(const char *a, size_t n, const char **why)
{
    size_t h = 0;
    while (h < n && a[h] != ':')
        h++;
    for (size_t i = 0; i < n; i++) {
        if (a[i] == '@') {
            *why = "rd must not carry user information (user@host)";
            return -1;
        }
        if (a[i] == '\\') {
            *why = "rd's host must not contain a backslash";
            return -1;
        }
    }
    if (h == 0) {
        *why = "rd names no host";
        return -1;
    }
    if (h > LOGIN_RD_HOST_MAX || !is_alnum(a[0])) {
        *why = "rd's host must be a DNS name of at most 253 letters, digits, '-' and '.'";
        return -1;
    }
    for (size_t i = 0; i < h; i++)
        if (!is_alnum(a[i]) && a[i] != '-' && !(a[i] == '.' && a[i - 1] != '.')) {
            *why = "rd's host must be a DNS name of at most 253 letters, digits, '-' and '.'";
            return -1;
        }
    if (h < n) {
        size_t digits = n - h - 1;
        unsigned long port = 0;
        for (size_t i = h + 1; i < n && digits <= 5; i++) {
            if (a[i] < '0' || a[i] > '9') {
                digits = 0;
                break;
            }
            port = port * 10 + (unsigned long)(a[i] - '0');
        }
        if (digits == 0 || digits > 5 || port == 0 || port > 65535) {
            *why = "rd's port must be a number from 1 to 65535";
            return -1;
        }
    }
    return (long)h;
}

int login_rd_parse(const char *text, size_t len, login_rd *ret, const char **why)
{
    const char *w = NULL, *dummy;
    if (!why)
        why = &dummy;
    size_t skip = 0;
    if (len == 0 || memchr(text, 0, len))
        w = "rd must be an absolute http:// or https:// URL";
    else if (len > LOGIN_RD_MAX)
        w = "rd is longer than 2048 bytes";
    else if (len >= 7 && strncasecmp(text, "http://", 7) == 0)
        skip = 7;
    else if (len >= 8 && strncasecmp(text, "https://", 8) == 0)
        skip = 8;
    else
        w = "rd must be an absolute http:// or https:// URL";
    if (w) {
        *why = w;
        return -EINVAL;
    }
    const char *a = text + skip, *end = text + len;
    size_t alen = 0;
    while (a + alen < end && a[alen] != '/' && a[alen] != '?' && a[alen] != '#')
        alen++;
    long hlen = authority_check(a, alen, why);
    if (hlen < 0)
        return -EINVAL;
    /* path and query, up to a fragment (browsers never send one) */
    const char *rest = a + alen;
    size_t rlen = 0;
    while (rest + rlen < end && rest[rlen] != '#')
        rlen++;
    if (rlen >= 2 && rest[0] == '/' && (rest[1] == '/' || rest[1] == '\\')) {
        *why = "rd's path must not start with // (that names another host)";
        return -EINVAL;
    }
    for (size_t i = 0; i < rlen; i++)
        if ((unsigned char)rest[i] <= 0x20 || (unsigned char)rest[i] >= 0x7f || rest[i] == '\\') {
            *why = "rd's path and query may hold only printable ASCII without spaces or backslashes "
                   "(percent-encode the rest)";
            return -EINVAL;
        }

    const char *scheme = skip == 7 ? "http" : "https";
    bool slash = rlen == 0 || rest[0] == '?'; /* "https://host?q" is "https://host/?q" */
    size_t path_len = rlen + slash, url_len = strlen(scheme) + 3 + alen + path_len;
    if (url_len > LOGIN_RD_MAX) {
        *why = "rd is longer than 2048 bytes";
        return -EINVAL;
    }

    login_rd *rd = ret; /* filled below only: nothing can fail from here on */
    memcpy(rd->scheme, scheme, strlen(scheme) + 1);
    memcpy(rd->authority, a, alen);
    rd->authority[alen] = 0;
    size_t h = (size_t)hlen;
    if (h > 1 && a[h - 1] == '.')
        h--; /* "wiki.example.com." is "wiki.example.com" */
    for (size_t i = 0; i < h; i++)
        rd->host[i] = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] + 32) : a[i];
    rd->host[h] = 0;
    rd->path[0] = '/';
    memcpy(rd->path + slash, rest, rlen);
    rd->path[path_len] = 0;
    char *u = rd->url;
    u = mempcpy(u, scheme, strlen(scheme));
    u = mempcpy(u, "://", 3);
    u = mempcpy(u, a, alen);
    memcpy(u, rd->path, path_len + 1);
    return 0;
}

/* Encrypts PLAIN (PLEN bytes) under KEY with IV into OUT (PLEN bytes of
 * ciphertext, then the tag). Returns 0 or -EIO. */
static int gcm_seal(const uint8_t *key, const uint8_t iv[HANDOFF_IV_LEN], const uint8_t *plain, size_t plen,
                    uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0;
    bool ok = ctx && plen <= INT32_MAX &&
              EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, HANDOFF_IV_LEN, NULL) == 1 &&
              EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) == 1 &&
              EVP_EncryptUpdate(ctx, NULL, &n, (const uint8_t *)HANDOFF_AAD, (int)strlen(HANDOFF_AAD)) == 1 &&
              EVP_EncryptUpdate(ctx, out, &n, plain, (int)plen) == 1 && EVP_EncryptFinal_ex(ctx, out + n, &fin) == 1 &&
              (size_t)(n + fin) == plen &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, HANDOFF_TAG_LEN, out + plen) == 1;
    EVP_CIPHER_CTX_free(ctx); /* wipes the key schedule */
    return ok ? 0 : -EIO;
}

bool login_bind_valid(const char *text)
{
    if (!text || strlen(text) != LOGIN_BIND_LEN)
        return false;
    for (const char *p = text; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

int handoff_seal(const uint8_t key[HANDOFF_KEY_LEN], const char *token, const char *host, const char *path,
                 const char *bind, int64_t exp, char **ret)
{
    if (!login_bind_valid(bind))
        return -EINVAL;
    uint8_t nonce_raw[HANDOFF_NONCE_LEN], iv[HANDOFF_IV_LEN];
    char nonce[2 * HANDOFF_NONCE_LEN + 1];
    if (random_bytes(nonce_raw, sizeof(nonce_raw)) < 0 || random_bytes(iv, sizeof(iv)) < 0)
        return -EIO;
    hex_encode(nonce_raw, sizeof(nonce_raw), nonce);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "token", token, "host", host, "path", path, "exp",
                               (json_int_t)exp, "nonce", nonce, "bind", bind);
    if (!claims)
        return -ENOMEM;
    char *plain = json_dumps(claims, JSON_COMPACT);
    json_t *t = json_object_get(claims, "token");
    OPENSSL_cleanse((char *)json_string_value(t), json_string_length(t));
    json_decref(claims);
    if (!plain)
        return -ENOMEM;
    size_t plen = strlen(plain), raw_len = HANDOFF_IV_LEN + plen + HANDOFF_TAG_LEN;
    int r = base64_encoded_size(raw_len) - 1 > HANDOFF_ENCODED_MAX ? -E2BIG : 0;
    uint8_t *raw = r == 0 ? malloc(raw_len) : NULL;
    char *out = r == 0 ? malloc(base64_encoded_size(raw_len)) : NULL;
    if (r == 0 && (!raw || !out))
        r = -ENOMEM;
    if (r == 0) {
        memcpy(raw, iv, HANDOFF_IV_LEN);
        r = gcm_seal(key, iv, (const uint8_t *)plain, plen, raw + HANDOFF_IV_LEN);
    }
    OPENSSL_cleanse(plain, plen);
    free(plain);
    if (r == 0)
        base64_encode(raw, raw_len, out, true);
    free(raw);
    if (r < 0) {
        free(out);
        return r;
    }
    *ret = out;
    return 0;
}
