/* Unit tests of the KMS library: AES-256-GCM and HKDF against Wycheproof,
 * ciphertext decoding, the key ring (rotation, states, refusals) and root-key
 * sealing. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "kms/ciphertext.h"
#include "kms/crypto.h"
#include "kms/keyring.h"
#include "kms/seal.h"
static json_t *load_vectors(const char *name)
{
    const char *dir = getenv("CLOISTER_VECTORS");
    char path[4096];
    snprintf(path, sizeof(path), "%s/wycheproof/%s", dir ? dir : "../shared/vectors", name);
    json_error_t e;
    json_t *doc = json_load_file(path, 0, &e);
    cr_assert(doc, "cannot load %s: %s", path, e.text);
    return doc;
}

/* Hex field NAME of T into a new buffer; its length into *LEN. */
static uint8_t *hex_field(json_t *t, const char *name, size_t *len)
{
    const char *s = json_string_value(json_object_get(t, name));
    cr_assert(s, "no %s", name);
    *len = strlen(s) / 2;
    uint8_t *b = malloc(*len + 1);
    cr_assert(hex_decode(s, strlen(s), b, *len) == 0);
    return b;
}

Test(wycheproof, aes_256_gcm)
{
    json_t *doc = load_vectors("aes_gcm_test.json");
    size_t gi, ti, checked = 0;
    json_t *g, *t;
    json_array_foreach(json_object_get(doc, "testGroups"), gi, g)
    {
        /* OpenSSL takes IVs of at most 1024 bits; the KMS itself only uses 96 */
        if (json_integer_value(json_object_get(g, "keySize")) != 256 ||
            json_integer_value(json_object_get(g, "ivSize")) > 1024)
            continue;
        json_array_foreach(json_object_get(g, "tests"), ti, t)
        {
            size_t klen, ivlen, alen, mlen, clen, tlen;
            uint8_t *key = hex_field(t, "key", &klen), *iv = hex_field(t, "iv", &ivlen),
                    *aad = hex_field(t, "aad", &alen), *msg = hex_field(t, "msg", &mlen),
                    *ct = hex_field(t, "ct", &clen), *tag = hex_field(t, "tag", &tlen);
            bool valid = strcmp(json_string_value(json_object_get(t, "result")), "invalid") != 0;
            long id = (long)json_integer_value(json_object_get(t, "tcId"));
            uint8_t *out = malloc(clen + 1);
            int r = aead_open_ex(key, iv, ivlen, aad, alen, ct, clen, tag, tlen, out);
            if (valid) {
                cr_assert_eq(r, 0, "tcId %ld: valid ciphertext refused", id);
                cr_assert(mlen == clen && memcmp(out, msg, mlen) == 0, "tcId %ld: wrong plaintext", id);
            } else
                cr_assert_neq(r, 0, "tcId %ld: invalid ciphertext accepted", id);
            if (valid && ivlen == KMS_NONCE_BYTES && tlen == KMS_TAG_BYTES) {
                uint8_t got_tag[KMS_TAG_BYTES];
                cr_assert_eq(aead_seal(key, iv, aad, alen, msg, mlen, out, got_tag), 0);
                cr_assert(memcmp(out, ct, clen) == 0 && memcmp(got_tag, tag, tlen) == 0, "tcId %ld: seal differs", id);
            }
            free(key), free(iv), free(aad), free(msg), free(ct), free(tag), free(out);
            checked++;
        }
    }
    cr_assert_gt(checked, 50);
    json_decref(doc);
}

Test(wycheproof, hkdf_sha256)
{
    json_t *doc = load_vectors("hkdf_sha256_test.json");
    size_t gi, ti, checked = 0;
    json_t *g, *t;
    json_array_foreach(json_object_get(doc, "testGroups"), gi, g) json_array_foreach(json_object_get(g, "tests"), ti, t)
    {
        size_t ilen, slen, nlen, olen;
        uint8_t *ikm = hex_field(t, "ikm", &ilen), *salt = hex_field(t, "salt", &slen),
                *info = hex_field(t, "info", &nlen), *okm = hex_field(t, "okm", &olen);
        size_t size = (size_t)json_integer_value(json_object_get(t, "size"));
        bool valid = strcmp(json_string_value(json_object_get(t, "result")), "valid") == 0;
        long id = (long)json_integer_value(json_object_get(t, "tcId"));
        uint8_t *out = malloc(size + 1);
        int r = hkdf_sha256(ikm, ilen, salt, slen, info, nlen, out, size);
        if (valid)
            cr_assert(r == 0 && olen == size && memcmp(out, okm, size) == 0, "tcId %ld: wrong okm", id);
        else
            cr_assert_neq(r, 0, "tcId %ld: invalid size accepted", id);
        free(ikm), free(salt), free(info), free(okm), free(out);
        checked++;
    }
    cr_assert_gt(checked, 10);
    json_decref(doc);
}

Test(ciphertext, strict_decoder)
{
    uint8_t buf[256];
    size_t h = kms_header_encode("k-1", 7, buf);
    memset(buf + h, 0xAB, KMS_NONCE_BYTES + 3 + KMS_TAG_BYTES);
    kms_ciphertext c;
    cr_assert_eq(kms_ciphertext_decode(buf, h + KMS_NONCE_BYTES + 3 + KMS_TAG_BYTES, &c), 0);
    cr_assert_str_eq(c.key, "k-1");
    cr_assert_eq(c.version, 7);
    cr_assert_eq(c.data_len, 3);
    /* too short, bad magic, version 0, bad name character, empty name */
    cr_assert_eq(kms_ciphertext_decode(buf, h + KMS_NONCE_BYTES + KMS_TAG_BYTES - 1, &c), -EINVAL);
    buf[0] = 'x';
    cr_assert_eq(kms_ciphertext_decode(buf, h + 40, &c), -EINVAL);
    kms_header_encode("k-1", 0, buf);
    cr_assert_eq(kms_ciphertext_decode(buf, h + 40, &c), -EINVAL);
    kms_header_encode("K", 1, buf);
    cr_assert_eq(kms_ciphertext_decode(buf, h + 40, &c), -EINVAL);
    buf[4] = 0;
    cr_assert_eq(kms_ciphertext_decode(buf, h + 40, &c), -EINVAL);
}

Test(ciphertext, context_order_does_not_matter)
{
    uint8_t a[KMS_CONTEXT_ENCODED_MAX], b[KMS_CONTEXT_ENCODED_MAX];
    size_t la, lb;
    json_t *x = json_pack("{s:s, s:s}", "tenant", "t1", "app", "wiki");
    json_t *y = json_pack("{s:s, s:s}", "app", "wiki", "tenant", "t1");
    json_t *bad = json_pack("{s:i}", "n", 1);
    cr_assert_eq(kms_context_encode(x, a, &la), 0);
    cr_assert_eq(kms_context_encode(y, b, &lb), 0);
    cr_assert(la == lb && memcmp(a, b, la) == 0);
    cr_assert_eq(kms_context_encode(bad, a, &la), -EINVAL);
    json_decref(x), json_decref(y), json_decref(bad);
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/test-kms-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static kms_keyring *open_ring(const uint8_t *root)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/keyring.json", tmpdir);
    kms_keyring *kr;
    cr_assert_eq(kms_keyring_open(path, root, &kr), 0);
    return kr;
}

static size_t encrypt(kms_keyring *kr, const char *name, json_t *ctx, const char *msg, uint8_t *out)
{
    uint8_t c[KMS_CONTEXT_ENCODED_MAX];
    size_t cl, n;
    kms_err err;
    cr_assert_eq(kms_context_encode(ctx, c, &cl), 0);
    cr_assert_eq(kms_encrypt(kr, name, c, cl, (const uint8_t *)msg, strlen(msg), out, &n, &err), 0, "%s", err.message);
    return n;
}

static int decrypt(kms_keyring *kr, json_t *ctx, const uint8_t *in, size_t n, char *out, kms_err *err)
{
    uint8_t c[KMS_CONTEXT_ENCODED_MAX];
    size_t cl, len;
    char key[KMS_KEY_NAME_MAX + 1];
    uint32_t v;
    cr_assert_eq(kms_context_encode(ctx, c, &cl), 0);
    int r = kms_decrypt(kr, in, n, c, cl, (uint8_t *)out, &len, key, &v, err);
    if (r == 0)
        out[len] = 0;
    return r;
}

Test(keyring, rotation_states_and_refusals, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {1, 2, 3};
    kms_keyring *kr = open_ring(root);
    kms_err err;
    json_t *ctx = json_pack("{s:s}", "app", "wiki"), *other = json_pack("{s:s}", "app", "mail");
    cr_assert_eq(kms_keyring_ensure(kr, "k", "aes-256-gcm", &err), 0);
    uint8_t c1[256], c2[256];
    size_t n1 = encrypt(kr, "k", ctx, "hello v1", c1);
    uint32_t v;
    cr_assert_eq(kms_keyring_rotate(kr, "k", &v, &err), 0);
    cr_assert_eq(v, 2);
    size_t n2 = encrypt(kr, "k", ctx, "hello v2", c2);
    kms_ciphertext dc;
    cr_assert_eq(kms_ciphertext_decode(c2, n2, &dc), 0);
    cr_assert_eq(dc.version, 2);
    char out[256];
    /* both versions decrypt, also after reopening the ring from disk */
    kms_keyring_free(kr);
    kr = open_ring(root);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), 0, "%s", err.message);
    cr_assert_str_eq(out, "hello v1");
    cr_assert_eq(decrypt(kr, ctx, c2, n2, out, &err), 0);
    cr_assert_str_eq(out, "hello v2");
    /* wrong context, flipped byte anywhere */
    cr_assert_eq(decrypt(kr, other, c1, n1, out, &err), -EBADMSG);
    cr_assert_eq(decrypt(kr, NULL, c1, n1, out, &err), -EBADMSG);
    for (size_t i = 0; i < n1; i++) {
        c1[i] ^= 0x01;
        cr_assert_neq(decrypt(kr, ctx, c1, n1, out, &err), 0, "flipped byte %zu accepted", i);
        c1[i] ^= 0x01;
    }
    /* the primary cannot be disabled; an old version can, and then refuses */
    cr_assert_eq(kms_keyring_set_state(kr, "k", 2, KMS_STATE_DISABLED, false, &err), -EBUSY);
    cr_assert_eq(kms_keyring_set_state(kr, "k", 1, KMS_STATE_DISABLED, false, &err), 0);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), -EKEYREVOKED);
    cr_assert(strstr(err.message, "disabled"));
    cr_assert_eq(kms_keyring_set_state(kr, "k", 1, KMS_STATE_ENABLED, false, &err), 0);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), 0);
    /* scheduled destruction refuses at once and destroys when due */
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, KMS_DESTROY_MIN_SECONDS, 1000, &err), 0);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), -EKEYREVOKED);
    cr_assert_eq(kms_keyring_tick(kr, 1000 + KMS_DESTROY_MIN_SECONDS - 1), 0);
    cr_assert_eq(kms_keyring_tick(kr, 1000 + KMS_DESTROY_MIN_SECONDS), 1);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), -EKEYEXPIRED);
    cr_assert(strstr(err.message, "destroyed"));
    cr_assert_eq(kms_keyring_set_state(kr, "k", 1, KMS_STATE_ENABLED, true, &err), -EKEYEXPIRED);
    kms_keyring_free(kr);
    kr = open_ring(root);
    cr_assert_eq(decrypt(kr, ctx, c1, n1, out, &err), -EKEYEXPIRED);
    cr_assert_eq(decrypt(kr, ctx, c2, n2, out, &err), 0);
    /* an unknown key, and a purpose mismatch */
    cr_assert_eq(kms_keyring_ensure(kr, "k", "ed25519", &err), -EMEDIUMTYPE);
    kms_keyring_free(kr);
    /* another root key cannot open the ring */
    uint8_t wrong[KMS_KEY_BYTES] = {9};
    char path[128];
    snprintf(path, sizeof(path), "%s/keyring.json", tmpdir);
    cr_assert_eq(kms_keyring_open(path, wrong, &kr), -EBADMSG);
    json_decref(ctx), json_decref(other);
}

Test(keyring, sign_and_verify, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {4};
    kms_keyring *kr = open_ring(root);
    kms_err err;
    const char *algs[] = {"ecdsa-p256", "ed25519"};
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(kms_keyring_ensure(kr, algs[i], algs[i], &err), 0);
        uint8_t sig[KMS_SIGNATURE_MAX];
        size_t n;
        uint32_t v;
        cr_assert_eq(kms_sign(kr, algs[i], (const uint8_t *)"msg", 3, sig, &n, &v, &err), 0, "%s", err.message);
        cr_assert_eq(kms_verify(kr, algs[i], v, (const uint8_t *)"msg", 3, sig, n, &err), 0);
        cr_assert_eq(kms_verify(kr, algs[i], v, (const uint8_t *)"msh", 3, sig, n, &err), -EBADMSG);
        uint8_t out[256];
        cr_assert_eq(kms_encrypt(kr, algs[i], NULL, 0, (const uint8_t *)"x", 1, out, &n, &err), -EMEDIUMTYPE);
        json_t *d = kms_keyring_describe(kr, algs[i]);
        cr_assert(json_string_value(json_object_get(json_array_get(json_object_get(d, "versions"), 0), "publicKey")));
        json_decref(d);
    }
    kms_keyring_free(kr);
}

/* A workspace key: only its public half comes out, it survives a reopen,
 * and it neither encrypts nor signs. */
Test(keyring, x25519_public_half_only, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {5};
    kms_keyring *kr = open_ring(root);
    kms_err err;
    uint8_t pub[KMS_X25519_BYTES], again[KMS_X25519_BYTES], zero[KMS_X25519_BYTES] = {0}, sig[KMS_SIGNATURE_MAX];
    uint32_t v;
    size_t n;
    cr_assert_eq(kms_keyring_ensure(kr, "workspace_a", "x25519", &err), 0, "%s", err.message);
    cr_assert_str_eq(kms_algorithm_purpose("x25519"), "agreement");
    cr_assert_eq(kms_public_x25519(kr, "workspace_a", pub, &v, &err), 0, "%s", err.message);
    cr_assert_eq(v, 1);
    cr_assert_neq(memcmp(pub, zero, sizeof(pub)), 0);
    cr_assert_eq(kms_sign(kr, "workspace_a", (const uint8_t *)"m", 1, sig, &n, &v, &err), -EMEDIUMTYPE);
    cr_assert_eq(kms_encrypt(kr, "workspace_a", NULL, 0, (const uint8_t *)"x", 1, sig, &n, &err), -EMEDIUMTYPE);
    cr_assert_eq(kms_keyring_ensure(kr, "aes", "aes-256-gcm", &err), 0);
    cr_assert_eq(kms_public_x25519(kr, "aes", pub, &v, &err), -EMEDIUMTYPE);
    cr_assert_eq(kms_public_x25519(kr, "absent", pub, &v, &err), -ENOENT);
    kms_keyring_free(kr);
    kr = open_ring(root);
    cr_assert_eq(kms_public_x25519(kr, "workspace_a", again, &v, &err), 0, "%s", err.message);
    cr_assert_eq(memcmp(pub, again, sizeof(pub)), 0, "the same key after the ring is read back");
    kms_keyring_free(kr);
}

/* A growing buffer for age_encrypt()'s output. */
typedef struct membuf {
    uint8_t data[4096];
    size_t len, pos;
} membuf;

static int mem_write(void *userdata, const uint8_t *buf, size_t n)
{
    membuf *m = userdata;
    cr_assert_leq(m->len + n, sizeof(m->data));
    memcpy(m->data + m->len, buf, n);
    m->len += n;
    return 0;
}

static ssize_t mem_read(void *userdata, uint8_t *buf, size_t n)
{
    membuf *m = userdata;
    size_t k = n < m->len - m->pos ? n : m->len - m->pos;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (ssize_t)k;
}

/* A job's input: an age file to the workspace key and someone else opens
 * with the ring's key only (its header alone suffices), and the file key it
 * gives decrypts the file; a file not addressed to it, or with an altered
 * header, gives nothing. */
Test(keyring, age_unwrap_with_the_workspace_key, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {6};
    kms_keyring *kr = open_ring(root);
    kms_err err;
    uint32_t v;
    age_recipient to[2];
    age_identity other;
    cr_assert_eq(kms_keyring_ensure(kr, "workspace_b", "x25519", &err), 0, "%s", err.message);
    cr_assert_eq(kms_public_x25519(kr, "workspace_b", to[0].public, &v, &err), 0, "%s", err.message);
    cr_assert_eq(age_identity_generate(&other), 0);
    age_identity_recipient(&other, &to[1]);
    membuf plain = {.data = "id,city\n1,Lyon\n", .len = 16}, file = {0}, out = {0};
    cr_assert_eq(age_encrypt(to, 2, mem_read, &plain, mem_write, &file), 0);
    uint8_t key[AGE_FILE_KEY_SIZE];
    size_t header_len = (size_t)(strstr((char *)file.data, "\n--- ") - (char *)file.data) + 49; /* "\n--- " MAC "\n" */
    cr_assert_eq(kms_age_unwrap(kr, "workspace_b", file.data, header_len, key, &err), 0, "%s", err.message);
    cr_assert_eq(age_decrypt_with_file_key(key, mem_read, &file, mem_write, &out), 0);
    cr_assert_eq(out.len, 16);
    cr_assert_eq(memcmp(out.data, "id,city\n1,Lyon\n", 16), 0);
    /* addressed to someone else only */
    membuf alone = {0};
    plain.pos = 0;
    cr_assert_eq(age_encrypt(&to[1], 1, mem_read, &plain, mem_write, &alone), 0);
    cr_assert_eq(kms_age_unwrap(kr, "workspace_b", alone.data, alone.len, key, &err), -ENOKEY);
    /* an altered header (a byte of the MAC) */
    file.data[header_len - 2] ^= 1;
    cr_assert_eq(kms_age_unwrap(kr, "workspace_b", file.data, file.len, key, &err), -EBADMSG);
    cr_assert_eq(kms_keyring_ensure(kr, "aes", "aes-256-gcm", &err), 0);
    cr_assert_eq(kms_age_unwrap(kr, "aes", file.data, file.len, key, &err), -EMEDIUMTYPE);
    age_identity_wipe(&other);
    kms_keyring_free(kr);
}

Test(seal, passphrase_and_dev, .init = make_tmpdir, .fini = remove_tmpdir)
{
    char root_file[128], dev_file[128];
    snprintf(root_file, sizeof(root_file), "%s/root.json", tmpdir);
    snprintf(dev_file, sizeof(dev_file), "%s/dev.key", tmpdir);
    kms_seal_config cfg = {.mode = "passphrase", .root_file = root_file, .dev_key_file = dev_file};
    uint8_t *a = secmem_alloc(KMS_KEY_BYTES), *b = secmem_alloc(KMS_KEY_BYTES);
    bool created;
    kms_err err;
    cr_assert_eq(kms_root_unseal(&cfg, "short", 5, a, &created, &err), -EINVAL);
    cr_assert_eq(kms_root_unseal(&cfg, "correct horse", 13, a, &created, &err), 0, "%s", err.message);
    cr_assert(created);
    char *before;
    size_t len;
    cr_assert_eq(read_file(root_file, 4096, &before, &len), 0);
    cr_assert_eq(kms_root_unseal(&cfg, "wrong horse!!", 13, b, &created, &err), -EKEYREJECTED);
    cr_assert(strstr(err.message, "wrong passphrase"));
    cr_assert_eq(kms_root_unseal(&cfg, "correct horse", 13, b, &created, &err), 0);
    cr_assert(!created && memcmp(a, b, KMS_KEY_BYTES) == 0);
    char *after;
    cr_assert_eq(read_file(root_file, 4096, &after, &len), 0);
    cr_assert_str_eq(before, after, "a refused unseal changed the sealed root key");
    free(before), free(after);
    cfg.mode = "dev";
    cr_assert_eq(kms_root_unseal(&cfg, NULL, 0, b, &created, &err), -EMEDIUMTYPE);
    unlink(root_file);
    cr_assert_eq(kms_root_unseal(&cfg, NULL, 0, a, &created, &err), 0, "%s", err.message);
    cr_assert_eq(kms_root_unseal(&cfg, NULL, 0, b, &created, &err), 0);
    cr_assert(memcmp(a, b, KMS_KEY_BYTES) == 0);
    struct stat st;
    cr_assert_eq(stat(dev_file, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    secmem_free(a), secmem_free(b);
}

/* Destruction waits at least a day, can be cancelled only by who may
 * destroy, and happens only once its time has come. */
Test(keyring, destruction_waits_and_can_be_cancelled, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {7};
    kms_keyring *kr = open_ring(root);
    kms_err err = {""};
    uint32_t v;
    cr_assert_eq(kms_keyring_ensure(kr, "k", "aes-256-gcm", &err), 0);
    cr_assert_eq(kms_keyring_rotate(kr, "k", &v, &err), 0);
    const int64_t now = 1700000000;
    /* sooner than a day: refused, whatever the rest */
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, 0, now, &err), -ERANGE);
    cr_assert(strstr(err.message, "86400"), "%s", err.message);
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, KMS_DESTROY_MIN_SECONDS - 1, now, &err), -ERANGE);
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, -1, now, &err), -ERANGE);
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, KMS_DESTROY_MAX_SECONDS + 1, now, &err), -ERANGE);
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 2, KMS_DESTROY_MIN_SECONDS, now, &err), -EBUSY);
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 9, KMS_DESTROY_MIN_SECONDS, now, &err), -ENOENT);
    /* scheduled: described as pending destruction with its time */
    cr_assert_eq(kms_keyring_schedule_destroy(kr, "k", 1, KMS_DESTROY_DEFAULT_SECONDS, now, &err), 0);
    json_t *d = kms_keyring_describe(kr, "k");
    json_t *v1 = json_array_get(json_object_get(d, "versions"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(v1, "state")), "pendingDestruction");
    cr_assert_str_eq(json_string_value(json_object_get(v1, "destroyAt")), "2023-11-21T22:13:20Z");
    json_decref(d);
    /* nothing is destroyed before its time, also across a reopening */
    cr_assert_eq(kms_keyring_tick(kr, now + KMS_DESTROY_DEFAULT_SECONDS - 1), 0);
    kms_keyring_free(kr);
    kr = open_ring(root);
    /* leaving pending destruction needs the right to destroy (cancel) */
    cr_assert_eq(kms_keyring_set_state(kr, "k", 1, KMS_STATE_ENABLED, false, &err), -EPERM);
    cr_assert(strstr(err.message, "destroy"), "%s", err.message);
    cr_assert_eq(kms_keyring_set_state(kr, "k", 1, KMS_STATE_DISABLED, true, &err), 0);
    cr_assert_eq(kms_keyring_tick(kr, now + KMS_DESTROY_MAX_SECONDS), 0);
    d = kms_keyring_describe(kr, "k");
    v1 = json_array_get(json_object_get(d, "versions"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(v1, "state")), "disabled");
    cr_assert_null(json_object_get(v1, "destroyAt"));
    json_decref(d);
    kms_keyring_free(kr);
}

/* A deleted Workspace's key: kms_keyring_destroy_key() takes every version
 * out of the ring and rewrites the file without it (reopened, the ring has
 * no trace of it; the other keys are untouched); an unwrap then names the
 * missing key; destroying it again is no error. A ring that cannot be
 * written keeps the key whole. */
Test(keyring, destroying_a_workspace_key, .init = make_tmpdir, .fini = remove_tmpdir)
{
    uint8_t root[KMS_KEY_BYTES] = {8};
    kms_keyring *kr = open_ring(root);
    kms_err err;
    uint32_t v;
    bool existed;
    age_recipient to;
    uint8_t pub_b[KMS_X25519_BYTES], again[KMS_X25519_BYTES], key[AGE_FILE_KEY_SIZE];
    cr_assert_eq(kms_keyring_ensure(kr, "workspace_a", "x25519", &err), 0, "%s", err.message);
    cr_assert_eq(kms_keyring_rotate(kr, "workspace_a", &v, &err), 0, "%s", err.message);
    cr_assert_eq(kms_keyring_ensure(kr, "workspace_b", "x25519", &err), 0, "%s", err.message);
    cr_assert_eq(kms_public_x25519(kr, "workspace_b", pub_b, &v, &err), 0, "%s", err.message);
    cr_assert_eq(kms_public_x25519(kr, "workspace_a", to.public, &v, &err), 0, "%s", err.message);
    membuf plain = {.data = "id\n1\n", .len = 5}, file = {0};
    cr_assert_eq(age_encrypt(&to, 1, mem_read, &plain, mem_write, &file), 0);

    /* a ring file that cannot be replaced (a directory in its place): refused, the key stays usable */
    char path[128], blocker[160];
    snprintf(path, sizeof(path), "%s/keyring.json", tmpdir);
    snprintf(blocker, sizeof(blocker), "%s/x", path);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(mkdir(path, 0700), 0);
    cr_assert_eq(mkdir(blocker, 0700), 0);
    cr_assert_lt(kms_keyring_destroy_key(kr, "workspace_a", &existed, &err), 0);
    cr_assert(strstr(err.message, "cannot write the key ring"), "%s", err.message);
    cr_assert_eq(kms_age_unwrap(kr, "workspace_a", file.data, file.len, key, &err), 0, "%s", err.message);
    cr_assert_eq(rmdir(blocker), 0);
    cr_assert_eq(rmdir(path), 0);

    cr_assert_eq(kms_keyring_destroy_key(kr, "workspace_a", &existed, &err), 0, "%s", err.message);
    cr_assert(existed);
    cr_assert_null(kms_keyring_describe(kr, "workspace_a"));
    cr_assert_eq(kms_age_unwrap(kr, "workspace_a", file.data, file.len, key, &err), -ENOENT);
    cr_assert(strstr(err.message, "workspace key workspace_a is not in the key ring"), "%s", err.message);
    cr_assert_eq(kms_keyring_destroy_key(kr, "workspace_a", &existed, &err), 0);
    cr_assert_not(existed);
    kms_keyring_free(kr);

    /* durable: the file no longer names it, and a reopened ring has only the other key */
    char *text = NULL;
    size_t len;
    cr_assert_eq(read_file(path, 1 << 20, &text, &len), 0);
    cr_assert_null(strstr(text, "workspace_a"));
    cr_assert(strstr(text, "workspace_b"));
    free(text);
    kr = open_ring(root);
    cr_assert_null(kms_keyring_describe(kr, "workspace_a"));
    cr_assert_eq(kms_public_x25519(kr, "workspace_b", again, &v, &err), 0, "%s", err.message);
    cr_assert_eq(memcmp(again, pub_b, sizeof(again)), 0);
    cr_assert_eq(kms_age_unwrap(kr, "workspace_a", file.data, file.len, key, &err), -ENOENT);
    kms_keyring_free(kr);
}
