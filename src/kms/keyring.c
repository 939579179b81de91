#include "kms/keyring.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "age/age.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define KEYRING_FILE_MAX (8 * 1024 * 1024)
#define WRAP_INFO "cloister-kms keyring wrap v1"

typedef struct kms_version {
    uint32_t version;
    kms_state state;
    int64_t created_at, destroy_at;
    uint8_t *material; /* secmem; NULL once destroyed */
    size_t material_len;
    char *wrapped; /* base64 of nonce | wrapped material | tag, as persisted */
} kms_version;

typedef struct kms_key {
    char name[KMS_KEY_NAME_MAX + 1];
    const char *algorithm; /* one of the static names below */
    uint32_t primary;
    size_t n_versions;
    kms_version versions[KMS_VERSIONS_MAX];
} kms_key;

struct kms_keyring {
    char *path;
    uint8_t *wrap_key; /* secmem */
    size_t n_keys;
    kms_key *keys[KMS_KEYS_MAX];
};

static const char *const algorithms[][2] = {
    {"aes-256-gcm", "encrypt"},
    {"ecdsa-p256", "sign"},
    {"ed25519", "sign"},
    {"x25519", "agreement"}, /* workspace keys: age stanzas addressed to them are unwrapped here only */
};
static const char *const state_names[] = {
    [KMS_STATE_ENABLED] = "enabled",
    [KMS_STATE_DISABLED] = "disabled",
    [KMS_STATE_SCHEDULED] = "scheduled",
    [KMS_STATE_DESTROYED] = "destroyed",
};

static int fail(kms_err *err, int e, const char *fmt, ...) _printf_(3, 4);
static int fail(kms_err *err, int e, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return e;
}

/* The static name of ALGORITHM, so keys can point at it; NULL if unknown. */
static const char *algorithm_name(const char *algorithm)
{
    for (size_t i = 0; i < ELEMENTSOF(algorithms); i++)
        if (algorithm && strcmp(algorithm, algorithms[i][0]) == 0)
            return algorithms[i][0];
    return NULL;
}

const char *kms_algorithm_purpose(const char *algorithm)
{
    for (size_t i = 0; i < ELEMENTSOF(algorithms); i++)
        if (algorithm && strcmp(algorithm, algorithms[i][0]) == 0)
            return algorithms[i][1];
    return NULL;
}

/* The AAD that binds wrapped material to its key, version and algorithm. */
static size_t wrap_aad(const kms_key *k, uint32_t version, uint8_t *out)
{
    int n = snprintf((char *)out, 160, "%s|%s|%u|%s", WRAP_INFO, k->name, version, k->algorithm);
    return (size_t)n;
}

/* Wraps V's material under the ring's wrap key into V->wrapped. */
static int version_wrap(const kms_keyring *kr, const kms_key *k, kms_version *v)
{
    uint8_t buf[KMS_NONCE_BYTES + SECMEM_SLOT_BYTES + KMS_TAG_BYTES], aad[160];
    int r = random_bytes(buf, KMS_NONCE_BYTES);
    if (r < 0)
        return r;
    r = aead_seal(kr->wrap_key, buf, aad, wrap_aad(k, v->version, aad), v->material, v->material_len,
                  buf + KMS_NONCE_BYTES, buf + KMS_NONCE_BYTES + v->material_len);
    if (r < 0)
        return r;
    size_t n = KMS_NONCE_BYTES + v->material_len + KMS_TAG_BYTES;
    char *s = malloc(base64_encoded_size(n));
    if (!s)
        return -ENOMEM;
    base64_encode(buf, n, s, false);
    free(v->wrapped);
    v->wrapped = s;
    return 0;
}

/* Unwraps the base64 text WRAPPED into V's locked material. */
static int version_unwrap(const kms_keyring *kr, const kms_key *k, kms_version *v, const char *wrapped)
{
    uint8_t buf[KMS_NONCE_BYTES + SECMEM_SLOT_BYTES + KMS_TAG_BYTES], aad[160];
    long n = base64_decode(wrapped, strlen(wrapped), buf, sizeof(buf), false);
    if (n < KMS_NONCE_BYTES + KMS_TAG_BYTES + 1)
        return -EINVAL;
    size_t len = (size_t)n - KMS_NONCE_BYTES - KMS_TAG_BYTES;
    uint8_t *m = secmem_alloc(len);
    if (!m)
        return -ENOSPC;
    int r = aead_open(kr->wrap_key, buf, aad, wrap_aad(k, v->version, aad), buf + KMS_NONCE_BYTES, len,
                      buf + KMS_NONCE_BYTES + len, m);
    if (r < 0) {
        secmem_free(m);
        return r;
    }
    v->wrapped = strdup(wrapped);
    if (!v->wrapped) {
        secmem_free(m);
        return -ENOMEM;
    }
    v->material = m;
    v->material_len = len;
    return 0;
}

static void version_destroy_material(kms_version *v)
{
    secmem_free(v->material);
    v->material = NULL;
    v->material_len = 0;
    free(v->wrapped);
    v->wrapped = NULL;
}

/* Creates fresh material for K's algorithm into V (locked). */
static int version_generate(kms_key *k, kms_version *v)
{
    if (strcmp(k->algorithm, "aes-256-gcm") == 0) {
        uint8_t *m = secmem_alloc(KMS_KEY_BYTES);
        if (!m)
            return -ENOSPC;
        int r = random_bytes(m, KMS_KEY_BYTES);
        if (r < 0) {
            secmem_free(m);
            return r;
        }
        v->material = m;
        v->material_len = KMS_KEY_BYTES;
        return 0;
    }
    EVP_PKEY *pkey = strcmp(k->algorithm, "ed25519") == 0  ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                     : strcmp(k->algorithm, "x25519") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "X25519")
                                                           : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!pkey)
        return -EIO;
    int len = i2d_PrivateKey(pkey, NULL);
    uint8_t *m = len > 0 ? secmem_alloc((size_t)len) : NULL;
    uint8_t *p = m;
    if (!m || i2d_PrivateKey(pkey, &p) != len) {
        secmem_free(m);
        EVP_PKEY_free(pkey);
        return len > SECMEM_SLOT_BYTES ? -E2BIG : -ENOSPC;
    }
    EVP_PKEY_free(pkey);
    v->material = m;
    v->material_len = (size_t)len;
    return 0;
}

/* The private key of a sign or agreement version; the caller frees it with EVP_PKEY_free. */
static EVP_PKEY *version_pkey(const kms_key *k, const kms_version *v)
{
    const uint8_t *p = v->material;
    int type = strcmp(k->algorithm, "ed25519") == 0  ? EVP_PKEY_ED25519
               : strcmp(k->algorithm, "x25519") == 0 ? EVP_PKEY_X25519
                                                     : EVP_PKEY_EC;
    return d2i_PrivateKey(type, NULL, &p, (long)v->material_len);
}

static kms_key *find_key(const kms_keyring *kr, const char *name)
{
    for (size_t i = 0; i < kr->n_keys; i++)
        if (strcmp(kr->keys[i]->name, name) == 0)
            return kr->keys[i];
    return NULL;
}

static kms_version *find_version(kms_key *k, uint32_t version)
{
    for (size_t i = 0; i < k->n_versions; i++)
        if (k->versions[i].version == version)
            return &k->versions[i];
    return NULL;
}

static void key_free(kms_key *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n_versions; i++)
        version_destroy_material(&k->versions[i]);
    free(k);
}

void kms_keyring_free(kms_keyring *kr)
{
    if (!kr)
        return;
    for (size_t i = 0; i < kr->n_keys; i++)
        key_free(kr->keys[i]);
    secmem_free(kr->wrap_key);
    free(kr->path);
    free(kr);
}

/* Writes the ring (wrapped material only) to its file, atomically. */
static int keyring_save(const kms_keyring *kr)
{
    json_t *keys = json_object();
    char created[40], destroy[40];
    for (size_t i = 0; keys && i < kr->n_keys; i++) {
        const kms_key *k = kr->keys[i];
        json_t *versions = json_array();
        for (size_t j = 0; versions && j < k->n_versions; j++) {
            const kms_version *v = &k->versions[j];
            json_t *jv = json_pack("{s:I, s:s, s:s}", "version", (json_int_t)v->version, "state",
                                   state_names[v->state], "createdAt",
                                   time_format_rfc3339(v->created_at, created, sizeof(created)));
            if (jv && v->state == KMS_STATE_SCHEDULED)
                json_object_set_new(jv, "destroyAt",
                                    json_string(time_format_rfc3339(v->destroy_at, destroy, sizeof(destroy))));
            if (jv && v->wrapped)
                json_object_set_new(jv, "material", json_string(v->wrapped));
            json_array_append_new(versions, jv);
        }
        json_object_set_new(keys, k->name,
                            json_pack("{s:s, s:I, s:o}", "algorithm", k->algorithm, "primary",
                                      (json_int_t)k->primary, "versions", versions));
    }
    json_t *doc = json_pack("{s:i, s:o}", "format", 1, "keys", keys);
    char *text = doc ? json_dumps(doc, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    json_decref(doc);
    if (!text)
        return -ENOMEM;
    int r = write_file_atomic(kr->path, text, strlen(text), 0600);
    free(text);
    return r;
}

/* Reads one version of K from the file's JSON V. */
static int load_version(kms_keyring *kr, kms_key *k, json_t *jv)
{
    if (k->n_versions >= KMS_VERSIONS_MAX)
        return -E2BIG;
    json_int_t version = json_integer_value(json_object_get(jv, "version"));
    const char *state = json_string_value(json_object_get(jv, "state"));
    const char *created = json_string_value(json_object_get(jv, "createdAt"));
    const char *destroy = json_string_value(json_object_get(jv, "destroyAt"));
    const char *material = json_string_value(json_object_get(jv, "material"));
    kms_version v = {.version = (uint32_t)version};
    if (version < 1 || version > UINT32_MAX || !state || !created ||
        time_parse_rfc3339(created, &v.created_at) < 0)
        return -EINVAL;
    size_t s;
    for (s = 0; s < ELEMENTSOF(state_names) && strcmp(state, state_names[s]) != 0; s++)
        ;
    if (s == ELEMENTSOF(state_names))
        return -EINVAL;
    v.state = (kms_state)s;
    if (v.state == KMS_STATE_SCHEDULED && (!destroy || time_parse_rfc3339(destroy, &v.destroy_at) < 0))
        return -EINVAL;
    if ((v.state == KMS_STATE_DESTROYED) != !material || find_version(k, v.version))
        return -EINVAL;
    if (material) {
        int r = version_unwrap(kr, k, &v, material);
        if (r < 0)
            return r;
    }
    k->versions[k->n_versions++] = v;
    return 0;
}

/* Parses the ring file TEXT into KR strictly (known algorithms, valid names,
 * an enabled primary per key, caps) and unwraps every live version. */
static int keyring_load(kms_keyring *kr, const char *text)
{
    json_error_t jerr;
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    json_t *keys = json_object_get(doc, "keys");
    int r = 0;
    if (!json_is_object(keys) || json_integer_value(json_object_get(doc, "format")) != 1) {
        json_decref(doc);
        return -EINVAL;
    }
    const char *name;
    json_t *jk;
    json_object_foreach(keys, name, jk)
    {
        json_t *versions = json_object_get(jk, "versions");
        const char *alg = algorithm_name(json_string_value(json_object_get(jk, "algorithm")));
        json_int_t primary = json_integer_value(json_object_get(jk, "primary"));
        if (kr->n_keys >= KMS_KEYS_MAX) {
            r = -E2BIG;
            break;
        }
        if (!kms_key_name_valid(name) || !alg || !json_is_array(versions)) {
            r = -EINVAL;
            break;
        }
        kms_key *k = calloc(1, sizeof(*k));
        if (!k) {
            r = -ENOMEM;
            break;
        }
        snprintf(k->name, sizeof(k->name), "%s", name);
        k->algorithm = alg;
        k->primary = (uint32_t)primary;
        kr->keys[kr->n_keys++] = k;
        size_t i;
        json_t *jv;
        json_array_foreach(versions, i, jv) if ((r = load_version(kr, k, jv)) < 0) break;
        kms_version *p = r == 0 ? find_version(k, k->primary) : NULL;
        if (r == 0 && (!p || p->state != KMS_STATE_ENABLED))
            r = -EINVAL;
        if (r < 0)
            break;
    }
    json_decref(doc);
    return r;
}

int kms_keyring_open(const char *path, const uint8_t root[KMS_KEY_BYTES], kms_keyring **ret)
{
    kms_keyring *kr = calloc(1, sizeof(*kr));
    if (!kr)
        return -ENOMEM;
    kr->path = strdup(path);
    kr->wrap_key = secmem_alloc(KMS_KEY_BYTES);
    int r = !kr->path ? -ENOMEM : !kr->wrap_key ? -ENOSPC : 0;
    if (r == 0)
        r = hkdf_sha256(root, KMS_KEY_BYTES, NULL, 0, (const uint8_t *)WRAP_INFO, strlen(WRAP_INFO), kr->wrap_key,
                        KMS_KEY_BYTES);
    char *text = NULL;
    size_t len;
    if (r == 0) {
        r = read_file(path, KEYRING_FILE_MAX, &text, &len);
        if (r == -ENOENT)
            r = 0;
        else if (r == 0)
            r = keyring_load(kr, text);
    }
    free(text);
    if (r < 0) {
        kms_keyring_free(kr);
        return r;
    }
    *ret = kr;
    return 0;
}

/* Appends a fresh version to K and makes it primary; saved by the caller. */
static int add_version(kms_key *k, int64_t now, uint32_t *ret_version)
{
    if (k->n_versions >= KMS_VERSIONS_MAX)
        return -E2BIG;
    uint32_t next = 1;
    for (size_t i = 0; i < k->n_versions; i++)
        next = MAX(next, k->versions[i].version + 1);
    kms_version v = {.version = next, .state = KMS_STATE_ENABLED, .created_at = now};
    int r = version_generate(k, &v);
    if (r < 0)
        return r;
    k->versions[k->n_versions++] = v;
    k->primary = next;
    *ret_version = next;
    return 0;
}

/* Saves KR after a change; on failure undoes nothing but reports it, since
 * the in-memory ring is still consistent and the next save retries. */
static int save_or_fail(const kms_keyring *kr, kms_err *err)
{
    int r = keyring_save(kr);
    return r < 0 ? fail(err, r, "cannot write the key ring: %s", strerror(-r)) : 0;
}

int kms_keyring_ensure(kms_keyring *kr, const char *name, const char *algorithm, kms_err *err)
{
    const char *alg = algorithm_name(algorithm);
    if (!alg)
        return fail(err, -EINVAL, "unknown algorithm %s", algorithm ? algorithm : "(none)");
    if (!kms_key_name_valid(name))
        return fail(err, -EINVAL, "invalid key name");
    kms_key *k = find_key(kr, name);
    if (k)
        return k->algorithm == alg ? 0
                                   : fail(err, -EMEDIUMTYPE, "key %s holds %s material, not %s", name,
                                          k->algorithm, alg);
    if (kr->n_keys >= KMS_KEYS_MAX)
        return fail(err, -E2BIG, "the key ring is full (%d keys)", KMS_KEYS_MAX);
    k = calloc(1, sizeof(*k));
    if (!k)
        return fail(err, -ENOMEM, "out of memory");
    snprintf(k->name, sizeof(k->name), "%s", name);
    k->algorithm = alg;
    uint32_t v;
    int r = add_version(k, (int64_t)(time_now_ns() / NSEC_PER_SEC), &v);
    if (r == 0)
        r = version_wrap(kr, k, &k->versions[0]);
    if (r < 0) {
        key_free(k);
        return fail(err, r, "cannot create key material: %s", strerror(-r));
    }
    kr->keys[kr->n_keys++] = k;
    return save_or_fail(kr, err);
}

int kms_keyring_rotate(kms_keyring *kr, const char *name, uint32_t *ret_version, kms_err *err)
{
    kms_key *k = find_key(kr, name);
    if (!k)
        return fail(err, -ENOENT, "key %s has no material yet", name);
    uint32_t v, old = k->primary;
    int r = add_version(k, (int64_t)(time_now_ns() / NSEC_PER_SEC), &v);
    if (r == 0 && (r = version_wrap(kr, k, &k->versions[k->n_versions - 1])) < 0) {
        version_destroy_material(&k->versions[--k->n_versions]);
        k->primary = old;
    }
    if (r < 0)
        return fail(err, r, r == -E2BIG ? "key %s has the most versions allowed (%d)" : "cannot rotate key %s", name,
                    KMS_VERSIONS_MAX);
    r = save_or_fail(kr, err);
    if (r == 0)
        *ret_version = v;
    return r;
}

/* Finds version VERSION of key NAME for a change of its state into *RET:
 * -ENOENT no such version, -EKEYEXPIRED destroyed (final), -EBUSY when the
 * change LEAVES_ENABLED and it is the primary version. */
static int version_for_change(kms_keyring *kr, const char *name, uint32_t version, bool leaves_enabled,
                              kms_version **ret, kms_err *err)
{
    kms_key *k = find_key(kr, name);
    kms_version *v = k ? find_version(k, version) : NULL;
    if (!v)
        return fail(err, -ENOENT, "key %s has no version %u", name, version);
    if (v->state == KMS_STATE_DESTROYED)
        return fail(err, -EKEYEXPIRED, "version %u of key %s is destroyed", version, name);
    if (leaves_enabled && version == k->primary)
        return fail(err, -EBUSY, "version %u is the primary version of key %s; rotate the key first", version, name);
    *ret = v;
    return 0;
}

int kms_keyring_set_state(kms_keyring *kr, const char *name, uint32_t version, kms_state state, bool cancel,
                          kms_err *err)
{
    if (state != KMS_STATE_ENABLED && state != KMS_STATE_DISABLED)
        return fail(err, -EINVAL, "a version is set enabled or disabled here; destruction is scheduled");
    kms_version *v;
    int e = version_for_change(kr, name, version, state != KMS_STATE_ENABLED, &v, err);
    if (e < 0)
        return e;
    if (v->state == KMS_STATE_SCHEDULED && !cancel)
        return fail(err, -EPERM,
                    "version %u of key %s is pending destruction; cancelling it needs the destroy right", version,
                    name);
    v->state = state;
    v->destroy_at = 0;
    return save_or_fail(kr, err);
}

int kms_keyring_schedule_destroy(kms_keyring *kr, const char *name, uint32_t version, int64_t after, int64_t now,
                                 kms_err *err)
{
    if (after < KMS_DESTROY_MIN_SECONDS || after > KMS_DESTROY_MAX_SECONDS)
        return fail(err, -ERANGE,
                    "destroyAfterSeconds must be from %d (24 hours: the least a destruction waits, to be "
                    "cancellable) to %d",
                    KMS_DESTROY_MIN_SECONDS, KMS_DESTROY_MAX_SECONDS);
    kms_version *v;
    int e = version_for_change(kr, name, version, true, &v, err);
    if (e < 0)
        return e;
    v->state = KMS_STATE_SCHEDULED;
    v->destroy_at = now + after;
    return save_or_fail(kr, err);
}

int kms_keyring_destroy_key(kms_keyring *kr, const char *name, bool *ret_existed, kms_err *err)
{
    size_t i;
    for (i = 0; i < kr->n_keys && strcmp(kr->keys[i]->name, name) != 0; i++)
        ;
    if (i == kr->n_keys) {
        *ret_existed = false;
        return 0;
    }
    /* out of the ring, the ring saved, and only then the material wiped: a
     * save that fails puts the key back, so memory and file never disagree */
    kms_key *k = kr->keys[i];
    memmove(&kr->keys[i], &kr->keys[i + 1], (kr->n_keys - i - 1) * sizeof(kr->keys[0]));
    kr->n_keys--;
    int r = save_or_fail(kr, err);
    if (r < 0) {
        memmove(&kr->keys[i + 1], &kr->keys[i], (kr->n_keys - i) * sizeof(kr->keys[0]));
        kr->keys[i] = k;
        kr->n_keys++;
        return r;
    }
    key_free(k);
    *ret_existed = true;
    return 0;
}

int kms_keyring_tick(kms_keyring *kr, int64_t now)
{
    int n = 0;
    for (size_t i = 0; i < kr->n_keys; i++)
        for (size_t j = 0; j < kr->keys[i]->n_versions; j++) {
            kms_version *v = &kr->keys[i]->versions[j];
            if (v->state == KMS_STATE_SCHEDULED && v->destroy_at <= now) {
                v->state = KMS_STATE_DESTROYED;
                version_destroy_material(v);
                n++;
            }
        }
    if (n > 0) {
        int r = keyring_save(kr);
        if (r < 0)
            return r;
    }
    return n;
}

json_t *kms_keyring_describe(const kms_keyring *kr, const char *name)
{
    kms_key *k = find_key(kr, name);
    if (!k)
        return NULL;
    json_t *versions = json_array();
    char created[40], destroy[40];
    for (size_t i = 0; versions && i < k->n_versions; i++) {
        const kms_version *v = &k->versions[i];
        const char *state = v->state == KMS_STATE_SCHEDULED ? "pendingDestruction" : state_names[v->state];
        json_t *jv = json_pack("{s:I, s:s, s:s}", "version", (json_int_t)v->version, "state", state, "createdAt",
                               time_format_rfc3339(v->created_at, created, sizeof(created)));
        if (jv && v->state == KMS_STATE_SCHEDULED)
            json_object_set_new(jv, "destroyAt",
                                json_string(time_format_rfc3339(v->destroy_at, destroy, sizeof(destroy))));
        EVP_PKEY *pkey = v->material && strcmp(k->algorithm, "aes-256-gcm") != 0 ? version_pkey(k, v) : NULL;
        uint8_t *der = NULL;
        int der_len = pkey ? i2d_PUBKEY(pkey, &der) : 0;
        if (jv && der_len > 0) {
            char *b64 = malloc(base64_encoded_size((size_t)der_len));
            if (b64) {
                base64_encode(der, (size_t)der_len, b64, false);
                json_object_set_new(jv, "publicKey", json_string(b64));
                free(b64);
            }
        }
        OPENSSL_free(der);
        EVP_PKEY_free(pkey);
        json_array_append_new(versions, jv);
    }
    return json_pack("{s:s, s:s, s:s, s:I, s:o}", "name", k->name, "algorithm", k->algorithm, "purpose",
                     kms_algorithm_purpose(k->algorithm), "primaryVersion", (json_int_t)k->primary, "versions",
                     versions);
}

/* The usable version VERSION of key K for an operation, or a refusal. */
static int usable_version(kms_key *k, uint32_t version, kms_version **ret, kms_err *err)
{
    kms_version *v = find_version(k, version);
    if (!v)
        return fail(err, -ENOENT, "key %s has no version %u", k->name, version);
    switch (v->state) {
    case KMS_STATE_ENABLED:
        *ret = v;
        return 0;
    case KMS_STATE_DISABLED:
        return fail(err, -EKEYREVOKED, "version %u of key %s is disabled", version, k->name);
    case KMS_STATE_SCHEDULED:
        return fail(err, -EKEYREVOKED, "version %u of key %s is scheduled for destruction", version, k->name);
    default:
        return fail(err, -EKEYEXPIRED, "version %u of key %s is destroyed", version, k->name);
    }
}

/* Key NAME for PURPOSE ("encrypt" or "sign"), or a refusal. */
static int key_for(kms_keyring *kr, const char *name, const char *purpose, kms_key **ret, kms_err *err)
{
    kms_key *k = find_key(kr, name);
    if (!k)
        return fail(err, -ENOENT, "key %s has no material", name);
    if (strcmp(kms_algorithm_purpose(k->algorithm), purpose) != 0)
        return fail(err, -EMEDIUMTYPE, "key %s is a %s key (%s), it cannot %s", name,
                    kms_algorithm_purpose(k->algorithm), k->algorithm, purpose);
    *ret = k;
    return 0;
}

int kms_encrypt(kms_keyring *kr, const char *name, const uint8_t *ctx, size_t ctx_len, const uint8_t *in, size_t n,
                uint8_t *out, size_t *ret_len, kms_err *err)
{
    kms_key *k;
    kms_version *v;
    if (n > KMS_PLAINTEXT_MAX)
        return fail(err, -E2BIG, "at most %d bytes can be encrypted at once; use a data key", KMS_PLAINTEXT_MAX);
    int r = key_for(kr, name, "encrypt", &k, err);
    if (r < 0 || (r = usable_version(k, k->primary, &v, err)) < 0)
        return r;
    uint8_t aad[KMS_HEADER_MAX + KMS_CONTEXT_ENCODED_MAX];
    size_t h = kms_header_encode(name, v->version, out);
    memcpy(aad, out, h);
    memcpy(aad + h, ctx, ctx_len);
    uint8_t *nonce = out + h;
    if ((r = random_bytes(nonce, KMS_NONCE_BYTES)) < 0 ||
        (r = aead_seal(v->material, nonce, aad, h + ctx_len, in, n, nonce + KMS_NONCE_BYTES,
                       nonce + KMS_NONCE_BYTES + n)) < 0)
        return fail(err, r, "encryption failed");
    *ret_len = h + KMS_NONCE_BYTES + n + KMS_TAG_BYTES;
    return 0;
}

int kms_decrypt(kms_keyring *kr, const uint8_t *in, size_t n, const uint8_t *ctx, size_t ctx_len, uint8_t *out,
                size_t *ret_len, char *ret_key, uint32_t *ret_version, kms_err *err)
{
    kms_ciphertext c;
    kms_key *k;
    kms_version *v;
    int r = kms_ciphertext_decode(in, n, &c);
    if (r < 0)
        return fail(err, -EINVAL, "not a KMS ciphertext (bad format, key name or length)");
    if ((r = key_for(kr, c.key, "encrypt", &k, err)) < 0 || (r = usable_version(k, c.version, &v, err)) < 0)
        return r;
    uint8_t aad[KMS_HEADER_MAX + KMS_CONTEXT_ENCODED_MAX];
    memcpy(aad, c.header, c.header_len);
    memcpy(aad + c.header_len, ctx, ctx_len);
    r = aead_open(v->material, c.nonce, aad, c.header_len + ctx_len, c.data, c.data_len, c.tag, out);
    if (r < 0)
        return fail(err, r == -EBADMSG ? -EBADMSG : r,
                    "the ciphertext does not authenticate: wrong encryption context, or it was altered");
    *ret_len = c.data_len;
    strcpy(ret_key, c.key);
    *ret_version = c.version;
    return 0;
}

int kms_sign(kms_keyring *kr, const char *name, const uint8_t *msg, size_t n, uint8_t *sig, size_t *ret_len,
             uint32_t *ret_version, kms_err *err)
{
    kms_key *k;
    kms_version *v;
    int r = key_for(kr, name, "sign", &k, err);
    if (r < 0 || (r = usable_version(k, k->primary, &v, err)) < 0)
        return r;
    EVP_PKEY *pkey = version_pkey(k, v);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ed = strcmp(k->algorithm, "ed25519") == 0;
    size_t len = KMS_SIGNATURE_MAX;
    r = pkey && md && EVP_DigestSignInit(md, NULL, ed ? NULL : EVP_sha256(), NULL, pkey) == 1 &&
                EVP_DigestSign(md, sig, &len, msg, n) == 1
            ? 0
            : -EIO;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    if (r < 0)
        return fail(err, r, "signing failed");
    *ret_len = len;
    *ret_version = v->version;
    return 0;
}

int kms_verify(kms_keyring *kr, const char *name, uint32_t version, const uint8_t *msg, size_t n,
               const uint8_t *sig, size_t sig_len, kms_err *err)
{
    kms_key *k;
    kms_version *v;
    int r = key_for(kr, name, "sign", &k, err);
    if (r < 0 || (r = usable_version(k, version, &v, err)) < 0)
        return r;
    EVP_PKEY *pkey = version_pkey(k, v);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ed = strcmp(k->algorithm, "ed25519") == 0;
    r = -EIO;
    if (pkey && md && EVP_DigestVerifyInit(md, NULL, ed ? NULL : EVP_sha256(), NULL, pkey) == 1)
        r = EVP_DigestVerify(md, sig, sig_len, msg, n) == 1 ? 0 : -EBADMSG;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    if (r == -EBADMSG)
        return fail(err, r, "the signature does not verify");
    return r < 0 ? fail(err, r, "verification failed") : 0;
}

int kms_public_x25519(kms_keyring *kr, const char *name, uint8_t out[static KMS_X25519_BYTES], uint32_t *ret_version,
                      kms_err *err)
{
    kms_key *k;
    kms_version *v;
    int r = key_for(kr, name, "agreement", &k, err);
    if (r < 0 || (r = usable_version(k, k->primary, &v, err)) < 0)
        return r;
    EVP_PKEY *pkey = version_pkey(k, v);
    size_t len = KMS_X25519_BYTES;
    r = pkey && EVP_PKEY_get_raw_public_key(pkey, out, &len) == 1 && len == KMS_X25519_BYTES ? 0 : -EIO;
    EVP_PKEY_free(pkey);
    if (r < 0)
        return fail(err, r, "cannot derive the public key of %s", name);
    *ret_version = v->version;
    return 0;
}

/* Reads an age header from a buffer, for age_unwrap_file_key(). */
typedef struct header_reader {
    const uint8_t *p;
    size_t left;
} header_reader;

static ssize_t header_read(void *userdata, uint8_t *buf, size_t n)
{
    header_reader *hr = userdata;
    size_t k = MIN(n, hr->left);
    memcpy(buf, hr->p, k);
    hr->p += k;
    hr->left -= k;
    return (ssize_t)k;
}

int kms_age_unwrap(kms_keyring *kr, const char *name, const uint8_t *header, size_t len,
                   uint8_t ret_file_key[static AGE_FILE_KEY_SIZE], kms_err *err)
{
    kms_key *k;
    if (!find_key(kr, name))
        return fail(err, -ENOENT,
                    "workspace key %s is not in the key ring: it was destroyed when its Workspace was deleted", name);
    int r = key_for(kr, name, "agreement", &k, err);
    if (r < 0)
        return r;
    /* every usable version: a workspace key rotated after an upload still opens it */
    for (size_t i = 0; i < k->n_versions; i++) {
        kms_version *v = &k->versions[i];
        if (v->state != KMS_STATE_ENABLED)
            continue;
        EVP_PKEY *pkey = version_pkey(k, v);
        age_identity id;
        size_t sl = sizeof(id.secret), pl = sizeof(id.public);
        r = pkey && EVP_PKEY_get_raw_private_key(pkey, id.secret, &sl) == 1 &&
                    EVP_PKEY_get_raw_public_key(pkey, id.public, &pl) == 1 && sl == AGE_KEY_SIZE && pl == AGE_KEY_SIZE
                ? 0
                : -EIO;
        EVP_PKEY_free(pkey);
        header_reader hr = {header, len};
        if (r == 0)
            r = age_unwrap_file_key(&id, 1, header_read, &hr, ret_file_key);
        age_identity_wipe(&id);
        if (r != AGE_ERR_NO_MATCH)
            break;
    }
    if (r == AGE_ERR_NO_MATCH)
        return fail(err, -ENOKEY, "the file has no stanza for key %s", name);
    if (r < 0)
        return fail(err, r == -EIO ? -EIO : -EBADMSG, "cannot open the file's header with key %s: %s", name,
                    age_strerror(r));
    return 0;
}
