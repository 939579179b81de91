/* age v1: keys, the header (stanzas and MAC) and the STREAM payload.
 * The spec's algorithms as it writes them; every parse is strict and every
 * failure is one of its classes (age.h). */
#include "age/age.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "age/bech32.h"
#include "basic/encoding.h"
#include "basic/macro.h"

#define TAG_SIZE 16
#define ENC_CHUNK_SIZE (AGE_CHUNK_SIZE + TAG_SIZE)
#define NONCE_SIZE 16
#define MAC_SIZE 32
#define BODY_COLUMNS 64

static const char version_line[] = "age-encryption.org/v1\n";
static const char x25519_label[] = "age-encryption.org/v1/X25519";
static const char recipient_hrp[] = "age";
static const char identity_hrp[] = "AGE-SECRET-KEY-";

ssize_t age_fd_read(void *userdata, uint8_t *buf, size_t n)
{
    int fd = *(int *)userdata;
    for (;;) {
        ssize_t k = read(fd, buf, n);
        if (k >= 0)
            return k;
        if (errno != EINTR)
            return negative_errno();
    }
}

int age_fd_write(void *userdata, const uint8_t *buf, size_t n)
{
    int fd = *(int *)userdata;
    while (n > 0) {
        ssize_t k = write(fd, buf, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return negative_errno();
        buf += k;
        n -= (size_t)k;
    }
    return 0;
}

const char *age_strerror(int r)
{
    switch (r) {
    case 0:
        return "success";
    case AGE_ERR_HEADER:
        return "the age header is malformed (not an age v1 file, or a corrupted one)";
    case AGE_ERR_NO_MATCH:
        return "no identity matches any recipient of the file";
    case AGE_ERR_HMAC:
        return "the age header's MAC does not verify (the header was altered)";
    case AGE_ERR_PAYLOAD:
        return "the age payload does not verify (corrupted, truncated or reordered)";
    default:
        return strerror(-r);
    }
}

/* ---- primitives ---- */

/* HKDF-SHA-256 of IKM with SALT and INFO into OUT (N bytes). Returns 0 or -EIO. */
static int hkdf(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len, const char *info,
                uint8_t *out, size_t n)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!kctx)
        return -EIO;
    /* an empty salt is left out: HKDF then uses HashLen zero bytes, the same HMAC key */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len),
        OSSL_PARAM_construct_end(),
    };
    if (salt_len == 0)
        params[3] = OSSL_PARAM_construct_end();
    int ok = EVP_KDF_derive(kctx, out, n, params);
    EVP_KDF_CTX_free(kctx);
    return ok == 1 ? 0 : -EIO;
}

/* ChaCha20-Poly1305 of N bytes IN→OUT (N+16 with the tag when ENCRYPT; IN
 * holds N+16 when decrypting). Returns 0, -EBADMSG on a bad tag, or -EIO. */
static int aead(EVP_CIPHER_CTX *c, bool encrypt, const uint8_t nonce[12], const uint8_t *in, size_t n, uint8_t *out)
{
    int len, ok;
    if (encrypt) {
        ok = EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) == 1 &&
             (n == 0 || EVP_EncryptUpdate(c, out, &len, in, (int)n) == 1) && EVP_EncryptFinal_ex(c, out + n, &len) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, out + n) == 1;
        return ok ? 0 : -EIO;
    }
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, (void *)(in + n)) != 1 ||
        (n > 0 && EVP_DecryptUpdate(c, out, &len, in, (int)n) != 1))
        return -EIO;
    if (EVP_DecryptFinal_ex(c, out + n, &len) != 1) {
        OPENSSL_cleanse(out, n);
        return -EBADMSG;
    }
    return 0;
}

/* A ChaCha20-Poly1305 context keyed with KEY, or NULL. */
static EVP_CIPHER_CTX *aead_new(const uint8_t key[32], bool encrypt)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c)
        return NULL;
    if ((encrypt ? EVP_EncryptInit_ex(c, EVP_chacha20_poly1305(), NULL, key, NULL)
                 : EVP_DecryptInit_ex(c, EVP_chacha20_poly1305(), NULL, key, NULL)) != 1) {
        EVP_CIPHER_CTX_free(c);
        return NULL;
    }
    return c;
}

static void aead_freep(EVP_CIPHER_CTX **c)
{
    EVP_CIPHER_CTX_free(*c);
}

/* X25519 of SECRET and PEER into OUT. Returns 0, -EBADMSG when the result
 * is all zero (PEER is a low-order point), or -EIO. */
static int x25519(const uint8_t secret[32], const uint8_t peer[32], uint8_t out[32])
{
    EVP_PKEY *sk = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, secret, 32);
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer, 32);
    EVP_PKEY_CTX *ctx = sk && pk ? EVP_PKEY_CTX_new(sk, NULL) : NULL;
    size_t len = 32;
    int r = -EIO;
    if (ctx && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, pk) == 1) {
        /* OpenSSL refuses an all-zero result itself; check again regardless */
        if (EVP_PKEY_derive(ctx, out, &len) == 1 && len == 32) {
            uint8_t acc = 0;
            for (size_t i = 0; i < 32; i++)
                acc |= out[i];
            r = acc ? 0 : -EBADMSG;
        } else
            r = -EBADMSG;
    }
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pk);
    EVP_PKEY_free(sk);
    return r;
}

/* The X25519 public key of SECRET. Returns 0 or -EIO. */
static int x25519_public(const uint8_t secret[32], uint8_t out[32])
{
    EVP_PKEY *sk = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, secret, 32);
    size_t len = 32;
    int ok = sk && EVP_PKEY_get_raw_public_key(sk, out, &len) == 1 && len == 32;
    EVP_PKEY_free(sk);
    return ok ? 0 : -EIO;
}

/* ---- keys ---- */

int age_identity_generate(age_identity *ret)
{
    age_identity id;
    if (RAND_priv_bytes(id.secret, sizeof(id.secret)) != 1 || x25519_public(id.secret, id.public) < 0) {
        age_identity_wipe(&id);
        return -EIO;
    }
    *ret = id;
    age_identity_wipe(&id);
    return 0;
}

int age_identity_parse(const char *s, age_identity *ret)
{
    age_identity id;
    /* canonical upper case only, as age-keygen writes it */
    for (const char *p = s; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            return -EINVAL;
    int r = bech32_decode(s, identity_hrp, id.secret, sizeof(id.secret));
    if (r == 0)
        r = x25519_public(id.secret, id.public);
    if (r == 0)
        *ret = id;
    age_identity_wipe(&id);
    return r < 0 ? -EINVAL : 0;
}

void age_identity_format(const age_identity *id, char out[static AGE_IDENTITY_STRLEN])
{
    bech32_encode(identity_hrp, id->secret, sizeof(id->secret), true, out, AGE_IDENTITY_STRLEN);
}

void age_identity_recipient(const age_identity *id, age_recipient *ret)
{
    memcpy(ret->public, id->public, sizeof(ret->public));
}

void age_identity_wipe(age_identity *id)
{
    OPENSSL_cleanse(id, sizeof(*id));
}

void age_identities_free(age_identity *ids, size_t n)
{
    if (!ids)
        return;
    OPENSSL_cleanse(ids, n * sizeof(*ids));
    free(ids);
}

int age_identities_parse(const char *text, size_t len, age_identity **ret, size_t *ret_n)
{
    age_identity *ids = NULL;
    size_t n = 0;
    int r = 0;
    for (size_t pos = 0; pos < len && r == 0;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len, l = end - pos;
        const char *line = text + pos;
        pos = end + 1;
        if (l > 0 && line[l - 1] == '\r')
            l--;
        if (l == 0 || line[0] == '#')
            continue;
        char buf[AGE_IDENTITY_STRLEN];
        if (l >= sizeof(buf) || memchr(line, '\0', l) || n >= AGE_STANZAS_MAX) {
            r = -EINVAL;
            break;
        }
        memcpy(buf, line, l);
        buf[l] = '\0';
        age_identity *grown = realloc(ids, (n + 1) * sizeof(*ids));
        if (!grown) {
            r = -ENOMEM;
        } else {
            ids = grown;
            r = age_identity_parse(buf, &ids[n]);
            if (r == 0)
                n++;
        }
        OPENSSL_cleanse(buf, sizeof(buf));
    }
    if (r == 0 && n == 0)
        r = -EINVAL;
    if (r < 0) {
        age_identities_free(ids, n);
        return r;
    }
    *ret = ids;
    *ret_n = n;
    return 0;
}

int age_recipient_parse(const char *s, age_recipient *ret)
{
    uint8_t pub[AGE_KEY_SIZE];
    for (const char *p = s; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            return -EINVAL;
    if (bech32_decode(s, recipient_hrp, pub, sizeof(pub)) < 0)
        return -EINVAL;
    /* a low-order point gives the all-zero secret whatever the scalar: no
     * file could be encrypted to it */
    static const uint8_t probe[32] = {0x58, 0x2e, 0x41, 0x9c, 0x07, 0x73, 0x11, 0x6a, 0x3d, 0x95, 0x20,
                                      0xc4, 0x8f, 0x5b, 0x12, 0xe6, 0x77, 0x09, 0xab, 0x34, 0x61, 0xd0,
                                      0x1e, 0x8c, 0x45, 0xf2, 0x3a, 0x96, 0x0b, 0x57, 0xcd, 0x48};
    uint8_t shared[32];
    if (x25519(probe, pub, shared) < 0)
        return -EINVAL;
    memcpy(ret->public, pub, sizeof(pub));
    return 0;
}

void age_recipient_format(const age_recipient *r, char out[static AGE_RECIPIENT_STRLEN])
{
    bech32_encode(recipient_hrp, r->public, sizeof(r->public), false, out, AGE_RECIPIENT_STRLEN);
}

/* ---- the input: a buffer over the read callback ---- */

typedef struct source {
    age_read_fn read;
    void *userdata;
    uint8_t *buf; /* ENC_CHUNK_SIZE + 1 bytes: the header's reads, then one chunk and a byte of look-ahead */
    size_t pos, len;
    bool eof;
} source;

/* Reads until the buffer holds WANT bytes past POS or the input ends.
 * Returns 0 or the callback's negative errno. */
static int source_fill(source *s, size_t want)
{
    if (s->pos > 0 && s->pos + want > ENC_CHUNK_SIZE + 1) {
        memmove(s->buf, s->buf + s->pos, s->len - s->pos);
        s->len -= s->pos;
        s->pos = 0;
    }
    while (!s->eof && s->len - s->pos < want) {
        ssize_t k = s->read(s->userdata, s->buf + s->len, ENC_CHUNK_SIZE + 1 - s->len);
        if (k < 0)
            return (int)k;
        if (k == 0)
            s->eof = true;
        s->len += (size_t)k;
    }
    return 0;
}

/* ---- the header ---- */

typedef struct stanza {
    size_t argc;
    char **argv;  /* argv[0] is the type */
    uint8_t *body;
    size_t body_len;
} stanza;

typedef struct header {
    char *text; /* every byte read, for the MAC */
    size_t len, cap;
    size_t mac_end; /* the MAC covers text[0, mac_end): up to and including "---" */
    uint8_t mac[MAC_SIZE];
    stanza *stanzas;
    size_t n;
} header;

static void header_done(header *h)
{
    for (size_t i = 0; i < h->n; i++) {
        for (size_t j = 0; j < h->stanzas[i].argc; j++)
            free(h->stanzas[i].argv[j]);
        free(h->stanzas[i].argv);
        free(h->stanzas[i].body);
    }
    free(h->stanzas);
    free(h->text);
}

/* Reads one line (without its '\n') from S into the header text. Returns
 * its offset in h->text and length, AGE_ERR_HEADER when the input ends
 * first or the header outgrows its cap, or a callback error. */
static int read_line(source *s, header *h, size_t *ret_off, size_t *ret_len)
{
    size_t off = h->len;
    for (;;) {
        if (s->pos == s->len) {
            int r = source_fill(s, 1);
            if (r < 0)
                return r;
            if (s->pos == s->len)
                return AGE_ERR_HEADER;
        }
        const uint8_t *start = s->buf + s->pos;
        const uint8_t *nl = memchr(start, '\n', s->len - s->pos);
        size_t take = nl ? (size_t)(nl - start) + 1 : s->len - s->pos;
        if (h->len + take > AGE_HEADER_MAX)
            return AGE_ERR_HEADER;
        if (h->len + take + 1 > h->cap) {
            size_t cap = MAX(h->cap * 2, h->len + take + 1);
            cap = MIN(cap, (size_t)AGE_HEADER_MAX + 1);
            char *t = realloc(h->text, cap);
            if (!t)
                return -ENOMEM;
            h->text = t;
            h->cap = cap;
        }
        memcpy(h->text + h->len, start, take);
        h->len += take;
        s->pos += take;
        if (nl) {
            h->text[h->len] = '\0';
            *ret_off = off;
            *ret_len = h->len - off - 1;
            return 0;
        }
    }
}

/* Parses a stanza line ("-> " then arguments, each one or more VCHARs,
 * separated by single spaces) and its body lines into a new stanza. */
static int parse_stanza(source *s, header *h, const char *line, size_t len)
{
    if (h->n >= AGE_STANZAS_MAX)
        return AGE_ERR_HEADER;
    stanza *grown = realloc(h->stanzas, (h->n + 1) * sizeof(*grown));
    if (!grown)
        return -ENOMEM;
    h->stanzas = grown;
    stanza *st = &h->stanzas[h->n++];
    *st = (stanza){};
    const char *p = line + 3, *end = line + len;
    for (;;) {
        const char *q = p;
        while (q < end && *q != ' ') {
            if (*q < 0x21 || *q > 0x7e)
                return AGE_ERR_HEADER;
            q++;
        }
        if (q == p)
            return AGE_ERR_HEADER; /* no arguments, or an empty one */
        char **argv = realloc(st->argv, (st->argc + 1) * sizeof(*argv));
        if (!argv)
            return -ENOMEM;
        st->argv = argv;
        if (!(st->argv[st->argc] = strndup(p, (size_t)(q - p))))
            return -ENOMEM;
        st->argc++;
        if (q == end)
            break;
        p = q + 1;
    }
    /* the body: full 64-column lines, then one shorter (maybe empty) line */
    size_t b64_len = 0;
    _cleanup_free_ char *b64 = NULL;
    for (;;) {
        size_t off, l;
        int r = read_line(s, h, &off, &l);
        if (r < 0)
            return r;
        if (l > BODY_COLUMNS)
            return AGE_ERR_HEADER;
        char *t = realloc(b64, b64_len + l + 1);
        if (!t)
            return -ENOMEM;
        b64 = t;
        memcpy(b64 + b64_len, h->text + off, l);
        b64_len += l;
        if (l < BODY_COLUMNS)
            break;
    }
    st->body = malloc(b64_len / 4 * 3 + 3);
    if (!st->body)
        return -ENOMEM;
    long n = base64_decode_unpadded(b64 ? b64 : "", b64_len, st->body, b64_len / 4 * 3 + 3);
    if (n < 0)
        return AGE_ERR_HEADER;
    st->body_len = (size_t)n;
    return 0;
}

/* Reads and parses the header: the version line, one or more stanzas, the
 * MAC line. Returns 0 or AGE_ERR_HEADER (or a callback error). */
static int parse_header(source *s, header *h)
{
    size_t off, len;
    int r = read_line(s, h, &off, &len);
    if (r < 0)
        return r;
    if (len != STRLEN(version_line) - 1 || memcmp(h->text, version_line, len) != 0)
        return AGE_ERR_HEADER;
    for (;;) {
        r = read_line(s, h, &off, &len);
        if (r < 0)
            return r;
        const char *line = h->text + off;
        if (len >= 3 && memcmp(line, "-> ", 3) == 0) {
            r = parse_stanza(s, h, line, len);
            if (r < 0)
                return r;
            continue;
        }
        if (len >= 3 && memcmp(line, "---", 3) == 0)
            break;
        return AGE_ERR_HEADER;
    }
    /* "--- " and the canonical base64 of 32 bytes (43 characters), nothing else */
    const char *line = h->text + off;
    if (h->n == 0 || len != 4 + 43 || line[3] != ' ' || base64_decode_unpadded(line + 4, 43, h->mac, sizeof(h->mac)) != MAC_SIZE)
        return AGE_ERR_HEADER;
    h->mac_end = off + 3;
    /* an scrypt stanza must be alone (spec: it cannot be mixed with other recipients) */
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->stanzas[i].argv[0], "scrypt") == 0 && h->n != 1)
            return AGE_ERR_HEADER;
    return 0;
}

/* Opens an X25519 stanza with ID into FILE_KEY. Returns 0, AGE_ERR_NO_MATCH
 * when ID is not its recipient, AGE_ERR_HEADER for a malformed stanza or a
 * low-order share, or -EIO. */
static int x25519_unwrap(const stanza *st, const age_identity *id, uint8_t file_key[AGE_FILE_KEY_SIZE])
{
    uint8_t share[AGE_KEY_SIZE], shared[32], salt[64], key[32];
    if (st->argc != 2 || strlen(st->argv[1]) != 43 || base64_decode_unpadded(st->argv[1], 43, share, sizeof(share)) != 32 ||
        st->body_len != AGE_FILE_KEY_SIZE + TAG_SIZE)
        return AGE_ERR_HEADER;
    int r = x25519(id->secret, share, shared);
    if (r == -EBADMSG)
        r = AGE_ERR_HEADER;
    if (r == 0) {
        memcpy(salt, share, 32);
        memcpy(salt + 32, id->public, 32);
        r = hkdf(shared, sizeof(shared), salt, sizeof(salt), x25519_label, key, sizeof(key));
    }
    if (r == 0) {
        static const uint8_t zero_nonce[12];
        EVP_CIPHER_CTX *c = aead_new(key, false);
        r = c ? aead(c, false, zero_nonce, st->body, AGE_FILE_KEY_SIZE, file_key) : -EIO;
        EVP_CIPHER_CTX_free(c);
        if (r == -EBADMSG)
            r = AGE_ERR_NO_MATCH;
    }
    OPENSSL_cleanse(shared, sizeof(shared));
    OPENSSL_cleanse(key, sizeof(key));
    return r;
}

/* HMAC-SHA-256 of the header text under the file key's "header" key. */
static int header_mac(const uint8_t file_key[AGE_FILE_KEY_SIZE], const char *text, size_t len, uint8_t out[MAC_SIZE])
{
    uint8_t key[32];
    unsigned int mlen = MAC_SIZE;
    int r = hkdf(file_key, AGE_FILE_KEY_SIZE, NULL, 0, "header", key, sizeof(key));
    if (r == 0 && (!HMAC(EVP_sha256(), key, sizeof(key), (const uint8_t *)text, len, out, &mlen) || mlen != MAC_SIZE))
        r = -EIO;
    OPENSSL_cleanse(key, sizeof(key));
    return r;
}

/* Sets the STREAM nonce for chunk COUNTER (11 bytes big-endian, then the last flag). */
static void stream_nonce(uint8_t nonce[12], uint64_t counter, bool last)
{
    memset(nonce, 0, 12);
    for (int i = 0; i < 8; i++)
        nonce[10 - i] = (uint8_t)(counter >> (8 * i));
    nonce[11] = last ? 1 : 0;
}

static void cleanse_free(void *p, size_t n)
{
    if (p)
        OPENSSL_cleanse(p, n);
    free(p);
}

/* Finds the file key of the parsed header H with the first of the N
 * identities that opens an X25519 stanza. Returns 0, AGE_ERR_NO_MATCH,
 * AGE_ERR_HEADER or -EIO. */
static int find_file_key(const header *h, const age_identity *ids, size_t n, uint8_t file_key[AGE_FILE_KEY_SIZE])
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < h->n; j++) {
            if (strcmp(h->stanzas[j].argv[0], "X25519") != 0)
                continue;
            int r = x25519_unwrap(&h->stanzas[j], &ids[i], file_key);
            if (r != AGE_ERR_NO_MATCH)
                return r;
        }
    return AGE_ERR_NO_MATCH;
}

/* Checks H's MAC under FILE_KEY. Returns 0, AGE_ERR_HMAC or -EIO. */
static int header_verify(const header *h, const uint8_t file_key[AGE_FILE_KEY_SIZE])
{
    uint8_t mac[MAC_SIZE];
    int r = header_mac(file_key, h->text, h->mac_end, mac);
    if (r == 0 && CRYPTO_memcmp(mac, h->mac, MAC_SIZE) != 0)
        r = AGE_ERR_HMAC;
    return r;
}

/* Decrypts the payload that follows the header in S with FILE_KEY (the
 * header already verified), writing each verified chunk through WRITE. */
static int decrypt_payload(source *s, const uint8_t file_key[AGE_FILE_KEY_SIZE], age_write_fn write,
                           void *write_userdata)
{
    uint8_t payload_key[32], nonce[12];
    _cleanup_(aead_freep) EVP_CIPHER_CTX *c = NULL;
    /* the payload: a 16-byte nonce, then chunks */
    int r = source_fill(s, NONCE_SIZE);
    if (r == 0 && s->len - s->pos < NONCE_SIZE)
        r = AGE_ERR_HEADER;
    if (r == 0) {
        r = hkdf(file_key, AGE_FILE_KEY_SIZE, s->buf + s->pos, NONCE_SIZE, "payload", payload_key, sizeof(payload_key));
        s->pos += NONCE_SIZE;
    }
    if (r == 0 && !(c = aead_new(payload_key, false)))
        r = -EIO;
    /* Each chunk is read with one byte of look-ahead: a full chunk followed
     * by more input is not the last; whatever the input ends with is. */
    for (uint64_t counter = 0; r == 0; counter++) {
        if (counter >= (1ULL << 40)) {
            r = AGE_ERR_PAYLOAD;
            break;
        }
        if (s->pos > 0) {
            memmove(s->buf, s->buf + s->pos, s->len - s->pos);
            s->len -= s->pos;
            s->pos = 0;
        }
        r = source_fill(s, ENC_CHUNK_SIZE + 1);
        if (r < 0)
            break;
        bool last = s->len <= ENC_CHUNK_SIZE;
        size_t clen = last ? s->len : ENC_CHUNK_SIZE;
        /* a last chunk may be empty only when it is the only one */
        if (clen < TAG_SIZE || (last && clen == TAG_SIZE && counter > 0)) {
            r = AGE_ERR_PAYLOAD;
            break;
        }
        stream_nonce(nonce, counter, last);
        r = aead(c, false, nonce, s->buf, clen - TAG_SIZE, s->buf);
        if (r == -EBADMSG)
            r = AGE_ERR_PAYLOAD;
        if (r == 0 && clen > TAG_SIZE)
            r = write(write_userdata, s->buf, clen - TAG_SIZE);
        s->pos = clen;
        if (last)
            break;
    }
    OPENSSL_cleanse(payload_key, sizeof(payload_key));
    return r;
}

/* Decrypts the age file READ gives: with FILE_KEY when not NULL, else with
 * the file key the first of the N identities opens (then wiped). */
static int decrypt(const uint8_t *file_key, const age_identity *ids, size_t n, age_read_fn read, void *read_userdata,
                   age_write_fn write, void *write_userdata)
{
    source s = {.read = read, .userdata = read_userdata, .buf = malloc(ENC_CHUNK_SIZE + 1)};
    header h = {};
    uint8_t found[AGE_FILE_KEY_SIZE];
    int r = s.buf ? parse_header(&s, &h) : -ENOMEM;
    if (r == 0 && !file_key) {
        r = find_file_key(&h, ids, n, found);
        file_key = found;
    }
    if (r == 0)
        r = header_verify(&h, file_key);
    if (r == 0)
        r = decrypt_payload(&s, file_key, write, write_userdata);
    OPENSSL_cleanse(found, sizeof(found));
    cleanse_free(s.buf, ENC_CHUNK_SIZE + 1);
    header_done(&h);
    return r;
}

int age_decrypt(const age_identity *ids, size_t n, age_read_fn read, void *read_userdata, age_write_fn write,
                void *write_userdata)
{
    return decrypt(NULL, ids, n, read, read_userdata, write, write_userdata);
}

int age_decrypt_with_file_key(const uint8_t file_key[AGE_FILE_KEY_SIZE], age_read_fn read, void *read_userdata,
                              age_write_fn write, void *write_userdata)
{
    return decrypt(file_key, NULL, 0, read, read_userdata, write, write_userdata);
}

int age_unwrap_file_key(const age_identity *ids, size_t n, age_read_fn read, void *read_userdata,
                        uint8_t ret[AGE_FILE_KEY_SIZE])
{
    source s = {.read = read, .userdata = read_userdata, .buf = malloc(ENC_CHUNK_SIZE + 1)};
    header h = {};
    uint8_t file_key[AGE_FILE_KEY_SIZE];
    int r = s.buf ? parse_header(&s, &h) : -ENOMEM;
    if (r == 0)
        r = find_file_key(&h, ids, n, file_key);
    if (r == 0)
        r = header_verify(&h, file_key);
    if (r == 0)
        memcpy(ret, file_key, AGE_FILE_KEY_SIZE);
    OPENSSL_cleanse(file_key, sizeof(file_key));
    cleanse_free(s.buf, ENC_CHUNK_SIZE + 1);
    header_done(&h);
    return r;
}

/* Appends the X25519 stanza wrapping FILE_KEY to R ("-> X25519 share\nbody\n") at OUT; returns its length or -EIO. */
static int x25519_wrap(const age_recipient *rcpt, const uint8_t file_key[AGE_FILE_KEY_SIZE], char *out)
{
    uint8_t eph[32], share[32], shared[32], salt[64], key[32], body[AGE_FILE_KEY_SIZE + TAG_SIZE];
    static const uint8_t zero_nonce[12];
    int r = RAND_priv_bytes(eph, sizeof(eph)) == 1 ? 0 : -EIO;
    if (r == 0)
        r = x25519_public(eph, share);
    if (r == 0)
        r = x25519(eph, rcpt->public, shared) < 0 ? -EIO : 0;
    if (r == 0) {
        memcpy(salt, share, 32);
        memcpy(salt + 32, rcpt->public, 32);
        r = hkdf(shared, sizeof(shared), salt, sizeof(salt), x25519_label, key, sizeof(key));
    }
    if (r == 0) {
        EVP_CIPHER_CTX *c = aead_new(key, true);
        r = c ? aead(c, true, zero_nonce, file_key, AGE_FILE_KEY_SIZE, body) : -EIO;
        EVP_CIPHER_CTX_free(c);
    }
    if (r == 0) {
        size_t o = (size_t)sprintf(out, "-> X25519 ");
        o += base64_encode_unpadded(share, sizeof(share), out + o);
        out[o++] = '\n';
        o += base64_encode_unpadded(body, sizeof(body), out + o);
        out[o++] = '\n';
        out[o] = '\0';
        r = (int)o;
    }
    OPENSSL_cleanse(eph, sizeof(eph));
    OPENSSL_cleanse(shared, sizeof(shared));
    OPENSSL_cleanse(key, sizeof(key));
    return r;
}

/* One stanza's length at most: "-> X25519 " 43 "\n" 43 "\n" */
#define X25519_STANZA_MAX 128

int age_encrypt(const age_recipient *recipients, size_t n, age_read_fn read, void *read_userdata,
                age_write_fn write, void *write_userdata)
{
    if (n == 0 || n > AGE_STANZAS_MAX)
        return -EINVAL;
    uint8_t file_key[AGE_FILE_KEY_SIZE], mac[MAC_SIZE], payload_key[32], nonce[12], stream_salt[NONCE_SIZE];
    size_t cap = STRLEN(version_line) + n * X25519_STANZA_MAX + 4 + 44 + 1, len = 0;
    _cleanup_free_ char *text = malloc(cap);
    uint8_t *buf = malloc(ENC_CHUNK_SIZE + 1);
    _cleanup_(aead_freep) EVP_CIPHER_CTX *c = NULL;
    int r = text && buf ? 0 : -ENOMEM;
    if (r == 0 && (RAND_priv_bytes(file_key, sizeof(file_key)) != 1 || RAND_bytes(stream_salt, sizeof(stream_salt)) != 1))
        r = -EIO;
    if (r == 0) {
        memcpy(text, version_line, STRLEN(version_line));
        len = STRLEN(version_line);
    }
    for (size_t i = 0; i < n && r == 0; i++) {
        int k = x25519_wrap(&recipients[i], file_key, text + len);
        if (k < 0)
            r = k;
        else
            len += (size_t)k;
    }
    if (r == 0) {
        memcpy(text + len, "---", 3);
        len += 3;
        r = header_mac(file_key, text, len, mac);
    }
    if (r == 0) {
        text[len++] = ' ';
        len += base64_encode_unpadded(mac, sizeof(mac), text + len);
        text[len++] = '\n';
        r = write(write_userdata, (const uint8_t *)text, len);
    }
    if (r == 0)
        r = write(write_userdata, stream_salt, sizeof(stream_salt));
    if (r == 0)
        r = hkdf(file_key, sizeof(file_key), stream_salt, sizeof(stream_salt), "payload", payload_key, sizeof(payload_key));
    if (r == 0 && !(c = aead_new(payload_key, true)))
        r = -EIO;
    /* plaintext chunks with one byte of look-ahead, so the last chunk is known when it is sealed */
    size_t have = 0;
    bool eof = false;
    for (uint64_t counter = 0; r == 0; counter++) {
        while (!eof && have < AGE_CHUNK_SIZE + 1) {
            ssize_t k = read(read_userdata, buf + have, AGE_CHUNK_SIZE + 1 - have);
            if (k < 0) {
                r = (int)k;
                break;
            }
            eof = k == 0;
            have += (size_t)k;
        }
        if (r < 0)
            break;
        bool last = have <= AGE_CHUNK_SIZE;
        size_t plen = last ? have : AGE_CHUNK_SIZE;
        uint8_t extra = last ? 0 : buf[AGE_CHUNK_SIZE];
        stream_nonce(nonce, counter, last);
        r = aead(c, true, nonce, buf, plen, buf);
        if (r == 0)
            r = write(write_userdata, buf, plen + TAG_SIZE);
        if (last)
            break;
        buf[0] = extra;
        have = 1;
    }
    OPENSSL_cleanse(file_key, sizeof(file_key));
    OPENSSL_cleanse(payload_key, sizeof(payload_key));
    cleanse_free(buf, ENC_CHUNK_SIZE + 1);
    return r;
}
