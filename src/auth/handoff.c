/* The browser login, both halves (see handoff.h). */
#include "auth/handoff.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/encoding.h"
#include "basic/fileio.h"

#define HANDOFF_AAD "cloister-handoff-v1"
#define HANDOFF_IV_LEN 12
#define HANDOFF_TAG_LEN 16
#define HANDOFF_NONCE_LEN 16 /* bytes; HANDOFF_NONCE_HEX_MAX hex digits */
#define LOGIN_LINK_LABEL "cloister-login-link-v1" /* HKDF info of the login link MAC key */
#define LOGIN_LINK_SKEW_S 60 /* an exp this far beyond the TTL is still the proxy's clock */

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

void login_bind_of(const char *cookie, size_t len, char ret[LOGIN_BIND_LEN + 1])
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)cookie, len, digest);
    hex_encode(digest, sizeof(digest), ret);
}

/* The login link MAC key: HKDF-SHA256 of the handoff KEY with its own
 * label (no salt), into OUT. Returns 0 or -EIO. */
static int link_key(const uint8_t key[HANDOFF_KEY_LEN], uint8_t out[SHA256_DIGEST_LENGTH])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, HANDOFF_KEY_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)LOGIN_LINK_LABEL, strlen(LOGIN_LINK_LABEL)),
        OSSL_PARAM_construct_end(),
    };
    bool ok = ctx && EVP_KDF_derive(ctx, out, SHA256_DIGEST_LENGTH, params) == 1;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok ? 0 : -EIO;
}

int login_link_mac(const uint8_t key[HANDOFF_KEY_LEN], const char *url, const char *bind, int64_t exp,
                   char ret[LOGIN_MAC_LEN + 1])
{
    if (!url || !login_bind_valid(bind))
        return -EINVAL;
    uint8_t mkey[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
    if (link_key(key, mkey) < 0)
        return -EIO;
    /* url, bind and exp, each ended by a NUL: an rd never holds one */
    char exp_text[24];
    int n = snprintf(exp_text, sizeof(exp_text), "%lld", (long long)exp);
    size_t ulen = strlen(url), blen = strlen(bind), len = ulen + 1 + blen + 1 + (size_t)n;
    uint8_t *msg = malloc(len);
    unsigned mac_len = 0;
    bool ok = msg != NULL;
    if (ok) {
        memcpy(msg, url, ulen + 1);
        memcpy(msg + ulen + 1, bind, blen + 1);
        memcpy(msg + ulen + 1 + blen + 1, exp_text, (size_t)n);
        ok = HMAC(EVP_sha256(), mkey, sizeof(mkey), msg, len, mac, &mac_len) && mac_len == sizeof(mac);
    }
    free(msg);
    OPENSSL_cleanse(mkey, sizeof(mkey));
    if (!ok)
        return msg ? -EIO : -ENOMEM;
    hex_encode(mac, sizeof(mac), ret);
    return 0;
}

int login_link_check(const uint8_t key[HANDOFF_KEY_LEN], const char *url, const char *bind, const char *exp_text,
                     const char *mac, int64_t now, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    size_t n = exp_text ? strlen(exp_text) : 0;
    if (n == 0 || n > 12 || strspn(exp_text, "0123456789") != n || !mac || strlen(mac) != LOGIN_MAC_LEN ||
        !login_bind_valid(bind)) {
        *why = "a login with rd needs the bind, exp and mac the proxy issues: start the login from the service's "
               "address";
        return -EINVAL;
    }
    int64_t exp = strtoll(exp_text, NULL, 10);
    char want[LOGIN_MAC_LEN + 1];
    int r = login_link_mac(key, url, bind, exp, want);
    if (r < 0) {
        *why = "the login link could not be checked";
        return r;
    }
    bool same = memeq_consttime(want, mac, LOGIN_MAC_LEN);
    OPENSSL_cleanse(want, sizeof(want));
    if (!same) {
        *why = "the login link was not issued by the proxy (its rd, bind or exp changed): start the login from the "
               "service's address";
        return -EKEYREJECTED;
    }
    if (exp < now || exp > now + LOGIN_LINK_TTL_S + LOGIN_LINK_SKEW_S) {
        *why = "the login link has expired: open the service's address again to log in";
        return -ETIMEDOUT;
    }
    return 0;
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

/* Decrypts the LEN bytes at RAW (IV || ciphertext || tag) under KEY into
 * PLAIN (capacity LEN). Returns the plaintext's length, or -EBADMSG. */
static long gcm_open(const uint8_t *key, const uint8_t *raw, size_t len, uint8_t *plain)
{
    if (len < HANDOFF_IV_LEN + HANDOFF_TAG_LEN + 2 || len > INT32_MAX)
        return -EBADMSG;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int out = 0, fin = 0;
    int clen = (int)(len - HANDOFF_IV_LEN - HANDOFF_TAG_LEN);
    bool ok = ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, HANDOFF_IV_LEN, NULL) == 1 &&
              EVP_DecryptInit_ex(ctx, NULL, NULL, key, raw) == 1 &&
              EVP_DecryptUpdate(ctx, NULL, &out, (const uint8_t *)HANDOFF_AAD, (int)strlen(HANDOFF_AAD)) == 1 &&
              EVP_DecryptUpdate(ctx, plain, &out, raw + HANDOFF_IV_LEN, clen) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, HANDOFF_TAG_LEN, (void *)(raw + len - HANDOFF_TAG_LEN)) == 1 &&
              EVP_DecryptFinal_ex(ctx, plain + out, &fin) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? (long)(out + fin) : -EBADMSG;
}

/* Whether S can go in a header value as is: printable ASCII, no spaces. */
static bool header_safe(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

void handoff_claims_done(handoff_claims *c)
{
    if (c->token)
        OPENSSL_cleanse((char *)c->token, strlen(c->token));
    json_decref(c->doc);
    *c = (handoff_claims){0};
}

int handoff_open(const uint8_t key[HANDOFF_KEY_LEN], const char *enc, size_t len, handoff_claims *ret,
                 const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    static const char malformed[] = "the login handoff is missing, malformed or not for this proxy; log in again";
    if (!enc || len == 0 || len > HANDOFF_ENCODED_MAX) {
        *why = malformed;
        return -EBADMSG;
    }
    uint8_t *raw = malloc(len), *plain = malloc(len);
    long n = raw && plain ? base64_decode(enc, len, raw, len, true) : -ENOMEM;
    long plen = n >= 0 ? gcm_open(key, raw, (size_t)n, plain) : -EBADMSG;
    json_t *doc = plen >= 0 ? json_loadb((const char *)plain, (size_t)plen, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (plain)
        OPENSSL_cleanse(plain, len);
    free(raw);
    free(plain);
    if (!doc) {
        *why = malformed;
        return -EBADMSG;
    }
    handoff_claims c = {
        .doc = doc,
        .token = json_string_value(json_object_get(doc, "token")),
        .host = json_string_value(json_object_get(doc, "host")),
        .path = json_string_value(json_object_get(doc, "path")),
        .nonce = json_string_value(json_object_get(doc, "nonce")),
        .bind = json_string_value(json_object_get(doc, "bind")),
        .exp = json_integer_value(json_object_get(doc, "exp")),
    };
    if (!c.token || !c.host || !c.path || !c.nonce || !json_is_integer(json_object_get(doc, "exp")) ||
        strlen(c.nonce) == 0 || strlen(c.nonce) > HANDOFF_NONCE_HEX_MAX || c.path[0] != '/' || c.path[1] == '/' ||
        c.path[1] == '\\' || !header_safe(c.path) || !header_safe(c.token) || strchr(c.token, ';') ||
        !login_bind_valid(c.bind)) {
        handoff_claims_done(&c);
        *why = "the login handoff is incomplete";
        return -EINVAL;
    }
    *ret = c;
    return 0;
}
