#include "auth/keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define KEYRING_FILE_MAX (256 * 1024)
/* a shared keyring is read again at most this often for the JWKS (and for
 * each token naming a kid it does not know: one read of the version) */
#define KEYRING_REFRESH_EVERY_NS (1 * NSEC_PER_SEC)

typedef struct keyring_entry {
    jwt_key *key;
    int64_t created;
    int64_t retired; /* when it stopped signing; 0 while current */
} keyring_entry;

struct auth_keyring {
    pthread_rwlock_t lock;
    auth_keyring_backing backing;
    char *path; /* the file backing's */
    int64_t rotate_every, retain;
    keyring_entry keys[KEYRING_MAX_KEYS]; /* oldest first; the last one signs */
    size_t n_keys;
    int64_t version;            /* the backing's version of what KEYS holds */
    uint64_t refreshed_mono_ns; /* when the JWKS last had a shared keyring read again */
    pthread_mutex_t refresh_lock;
};

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

/* Wipes the string members of a private JWK (in place). */
static void jwk_wipe(json_t *jwk)
{
    const char *name;
    json_t *v;
    json_object_foreach(jwk, name, v) if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
}

void auth_keyring_saved_free(json_t *keys)
{
    size_t i;
    json_t *e;
    json_array_foreach(keys, i, e) jwk_wipe(json_object_get(e, "jwk"));
    json_decref(keys);
}

/* The saved form of KR's keys, private parts included: [{created, retired,
 * jwk}], oldest first (new reference; wipe with auth_keyring_saved_free()),
 * or NULL on allocation failure. Caller holds the lock. */
static json_t *keys_to_json(const auth_keyring *kr)
{
    json_t *keys = json_array();
    for (size_t i = 0; keys && i < kr->n_keys; i++) {
        json_t *jwk = jwt_key_to_json(kr->keys[i].key, true);
        json_t *e = jwk ? json_pack("{s:I, s:I, s:o}", "created", (json_int_t)kr->keys[i].created, "retired",
                                    (json_int_t)kr->keys[i].retired, "jwk", jwk)
                        : NULL;
        if (!e || json_array_append_new(keys, e) < 0) {
            auth_keyring_saved_free(keys);
            return NULL;
        }
    }
    return keys;
}

/* Reads KEYS (the saved form) into OUT and *RET_N: 0, or -EINVAL when it is
 * malformed or its newest key is retired, -ENOMEM. OUT is left empty on
 * failure. KEYS stays the caller's. */
static int keys_from_json(const json_t *keys, keyring_entry out[KEYRING_MAX_KEYS], size_t *ret_n)
{
    if (!json_is_array(keys) || json_array_size(keys) == 0 || json_array_size(keys) > KEYRING_MAX_KEYS)
        return -EINVAL;
    size_t n = 0, i;
    json_t *e;
    int r = 0;
    json_array_foreach(keys, i, e)
    {
        jwt_key *k = NULL;
        r = json_is_integer(json_object_get(e, "created")) && json_is_integer(json_object_get(e, "retired"))
                ? jwt_key_from_json(json_object_get(e, "jwk"), JWT_ALG_ES256, &k)
                : -EINVAL;
        if (r < 0)
            break;
        out[n++] = (keyring_entry){k, json_integer_value(json_object_get(e, "created")),
                                   json_integer_value(json_object_get(e, "retired"))};
    }
    if (r == 0 && out[n - 1].retired != 0)
        r = -EINVAL;
    if (r < 0) {
        for (i = 0; i < n; i++)
            jwt_key_free(out[i].key);
        return r;
    }
    *ret_n = n;
    return 0;
}

/* Replaces KR's keys with N of ENTRIES at VERSION. Caller holds the write lock. */
static void keys_replace(auth_keyring *kr, keyring_entry *entries, size_t n, int64_t version)
{
    for (size_t i = 0; i < kr->n_keys; i++)
        jwt_key_free(kr->keys[i].key);
    memcpy(kr->keys, entries, n * sizeof(*entries));
    kr->n_keys = n;
    kr->version = version;
}

/* Reads the keys from KR's backing into KR when its version differs from
 * the one held. Returns 0, -ENOENT when nothing is saved, or a negative
 * errno. Caller holds the write lock. */
static int keyring_reload_locked(auth_keyring *kr)
{
    json_t *keys = NULL;
    int64_t version = 0;
    int r = kr->backing.load(kr->backing.userdata, kr->n_keys ? kr->version : 0, &keys, &version);
    if (r < 0 || !keys)
        return r;
    keyring_entry entries[KEYRING_MAX_KEYS];
    size_t n = 0;
    r = keys_from_json(keys, entries, &n);
    auth_keyring_saved_free(keys);
    if (r == 0)
        keys_replace(kr, entries, n, version);
    return r;
}

/* Saves KR's keys if the backing still holds the version KR read. Returns 0,
 * -ESTALE when another process saved first, or a negative errno. Caller
 * holds the write lock. */
static int keyring_save_locked(auth_keyring *kr)
{
    json_t *keys = keys_to_json(kr);
    if (!keys)
        return -ENOMEM;
    int64_t version = 0;
    int r = kr->backing.save(kr->backing.userdata, keys, kr->version, &version);
    auth_keyring_saved_free(keys);
    if (r == 0)
        kr->version = version;
    return r;
}

/* Retires the current key and appends a fresh one, dropping keys whose
 * tokens have all expired, then saves. Another process that rotated the
 * shared keys first wins: its keys are read back and kept (still 0).
 * Caller holds the write lock. */
static int keyring_rotate_locked(auth_keyring *kr, int64_t now)
{
    uint8_t rnd[8];
    char hex[sizeof(rnd) * 2 + 1], kid[32];
    int r = random_bytes(rnd, sizeof(rnd));
    if (r < 0)
        return r;
    hex_encode(rnd, sizeof(rnd), hex);
    snprintf(kid, sizeof(kid), "k%s", hex);
    jwt_key *k;
    r = jwt_key_generate_es256(kid, &k);
    if (r < 0)
        return r;
    keyring_entry before[KEYRING_MAX_KEYS];
    size_t n_before = kr->n_keys;
    for (size_t i = 0; i < kr->n_keys; i++)
        before[i] = kr->keys[i];
    size_t kept = 0;
    keyring_entry dropped[KEYRING_MAX_KEYS];
    size_t n_dropped = 0;
    for (size_t i = 0; i < kr->n_keys; i++) {
        keyring_entry e = kr->keys[i];
        if (e.retired == 0)
            e.retired = now;
        bool expired = e.retired + kr->retain < now;
        bool no_room = kr->n_keys - i >= KEYRING_MAX_KEYS; /* keep the newest KEYRING_MAX_KEYS - 1 */
        if (expired || no_room)
            dropped[n_dropped++] = e;
        else
            kr->keys[kept++] = e;
    }
    kr->n_keys = kept;
    kr->keys[kr->n_keys++] = (keyring_entry){k, now, 0};
    r = keyring_save_locked(kr);
    if (r == 0) {
        for (size_t i = 0; i < n_dropped; i++)
            jwt_key_free(dropped[i].key);
        return 0;
    }
    /* not saved: the keys as they were, then (another saved first) theirs */
    jwt_key_free(k);
    memcpy(kr->keys, before, n_before * sizeof(*before));
    kr->n_keys = n_before;
    return r == -ESTALE ? keyring_reload_locked(kr) : r;
}

void auth_keyring_free(auth_keyring *kr)
{
    if (!kr)
        return;
    for (size_t i = 0; i < kr->n_keys; i++)
        jwt_key_free(kr->keys[i].key);
    pthread_rwlock_destroy(&kr->lock);
    pthread_mutex_destroy(&kr->refresh_lock);
    free(kr->path);
    free(kr);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(auth_keyring *, auth_keyring_free);

int auth_keyring_open_backed(const auth_keyring_backing *backing, int64_t rotate_every, int64_t retain,
                             auth_keyring **ret)
{
    if (rotate_every <= 0 || retain < 0 || !backing->load || !backing->save)
        return -EINVAL;
    _cleanup_(auth_keyring_freep) auth_keyring *kr = calloc(1, sizeof(*kr));
    if (!kr)
        return -ENOMEM;
    pthread_rwlock_init(&kr->lock, NULL);
    pthread_mutex_init(&kr->refresh_lock, NULL);
    kr->backing = *backing;
    kr->rotate_every = rotate_every;
    kr->retain = retain;
    int r = keyring_reload_locked(kr);
    if (r == -ENOENT)
        r = keyring_rotate_locked(kr, now_s()); /* the first key; a replica that made one first wins */
    if (r < 0)
        return r;
    kr->refreshed_mono_ns = time_mono_ns();
    *ret = TAKE_PTR(kr);
    return 0;
}

/* ---- the file backing: one JSON file, mode 0600 ---- */

int auth_keyring_file_read(const char *path, json_t **ret_keys)
{
    char *data = NULL;
    size_t len;
    int r = read_private_file(path, geteuid(), KEYRING_FILE_MAX, &data, &len);
    if (r < 0)
        return r;
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    OPENSSL_cleanse(data, len);
    free(data);
    if (!v)
        return -EINVAL;
    *ret_keys = v;
    return 0;
}

static int file_load(void *userdata, int64_t known, json_t **ret_keys, int64_t *ret_version)
{
    (void)known; /* read once, at open */
    int r = auth_keyring_file_read(userdata, ret_keys);
    if (r == 0)
        *ret_version = 1; /* one process owns the file */
    return r;
}

static int file_save(void *userdata, const json_t *keys, int64_t expected, int64_t *ret_version)
{
    (void)expected;
    char *text = json_dumps(keys, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    int r = write_file_atomic(userdata, text, n, 0600);
    OPENSSL_cleanse(text, n);
    free(text);
    if (r == 0)
        *ret_version = 1;
    return r;
}

int auth_keyring_open(const char *path, int64_t rotate_every, int64_t retain, auth_keyring **ret)
{
    _cleanup_free_ char *owned = strdup(path);
    if (!owned)
        return -ENOMEM;
    auth_keyring *kr;
    int r = auth_keyring_open_backed(&(auth_keyring_backing){.load = file_load, .save = file_save, .userdata = owned},
                                     rotate_every, retain, &kr);
    if (r < 0)
        return r;
    kr->path = TAKE_PTR(owned); /* the backing's userdata, freed with KR */
    *ret = kr;
    return 0;
}

/* Reads a shared keyring's keys again, so a key another replica made
 * verifies here and shows in the JWKS: when EVERY nanoseconds have passed
 * since *LAST (one of KR's times), or always when EVERY is 0. Only the
 * version is read when it is the one held; the read is made outside the
 * lock. A failed read keeps the keys held (the next call tries again). */
static void keyring_refresh(auth_keyring *kr, uint64_t *last, uint64_t every)
{
    if (!kr->backing.shared)
        return;
    if (every) {
        uint64_t now = time_mono_ns();
        pthread_mutex_lock(&kr->refresh_lock);
        bool due = now - *last >= every;
        if (due)
            *last = now;
        pthread_mutex_unlock(&kr->refresh_lock);
        if (!due)
            return;
    }
    pthread_rwlock_rdlock(&kr->lock);
    int64_t known = kr->version;
    pthread_rwlock_unlock(&kr->lock);
    json_t *keys = NULL;
    int64_t version = 0;
    if (kr->backing.load(kr->backing.userdata, known, &keys, &version) < 0 || !keys)
        return;
    keyring_entry entries[KEYRING_MAX_KEYS];
    size_t n = 0;
    int r = keys_from_json(keys, entries, &n);
    auth_keyring_saved_free(keys);
    if (r < 0)
        return;
    pthread_rwlock_wrlock(&kr->lock);
    if (version != kr->version)
        keys_replace(kr, entries, n, version);
    else
        for (size_t i = 0; i < n; i++)
            jwt_key_free(entries[i].key);
    pthread_rwlock_unlock(&kr->lock);
}

int auth_keyring_sign(auth_keyring *kr, const json_t *claims, char **ret)
{
    int64_t now = now_s();
    pthread_rwlock_rdlock(&kr->lock);
    if (now - kr->keys[kr->n_keys - 1].created >= kr->rotate_every) {
        pthread_rwlock_unlock(&kr->lock);
        pthread_rwlock_wrlock(&kr->lock);
        /* another thread, or another replica, may have rotated meanwhile */
        int r = kr->backing.shared ? keyring_reload_locked(kr) : 0;
        if (r == 0 && now - kr->keys[kr->n_keys - 1].created >= kr->rotate_every)
            r = keyring_rotate_locked(kr, now);
        pthread_rwlock_unlock(&kr->lock);
        if (r < 0)
            return r;
        pthread_rwlock_rdlock(&kr->lock);
    }
    int r = jwt_sign(kr->keys[kr->n_keys - 1].key, claims, ret);
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

/* The keys valid for verification at NOW into OUT; returns their count.
 * Caller holds the lock. */
static size_t valid_keys(auth_keyring *kr, int64_t now, jwt_key **out)
{
    size_t n = 0;
    for (size_t i = 0; i < kr->n_keys; i++)
        if (kr->keys[i].retired == 0 || now <= kr->keys[i].retired + kr->retain)
            out[n++] = kr->keys[i].key;
    return n;
}

/* jwt_verify() or, with CACHE, jwt_verify_cached() against KR's valid keys. */
static int verify_once(auth_keyring *kr, jwt_cache *cache, const char *token, size_t len, const jwt_expect *expect,
                       json_t **ret_claims)
{
    jwt_key *keys[KEYRING_MAX_KEYS];
    pthread_rwlock_rdlock(&kr->lock);
    size_t n = valid_keys(kr, expect->now, keys);
    int r = cache ? jwt_verify_cached(cache, token, len, keys, n, expect, ret_claims)
                  : jwt_verify(token, len, keys, n, expect, ret_claims);
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

/* Verifies; a kid this replica does not know yet (another replica's new
 * key) has the shared keys read again, then one more try. */
static int verify_refreshing(auth_keyring *kr, jwt_cache *cache, const char *token, size_t len,
                             const jwt_expect *expect, json_t **ret_claims)
{
    int r = verify_once(kr, cache, token, len, expect, ret_claims);
    if (r != -ENOKEY || !kr->backing.shared)
        return r;
    keyring_refresh(kr, NULL, 0);
    return verify_once(kr, cache, token, len, expect, ret_claims);
}

int auth_keyring_verify(auth_keyring *kr, const char *token, size_t len, const jwt_expect *expect,
                        json_t **ret_claims)
{
    return verify_refreshing(kr, NULL, token, len, expect, ret_claims);
}

int auth_keyring_verify_cached(auth_keyring *kr, jwt_cache *cache, const char *token, size_t len,
                               const jwt_expect *expect, json_t **ret_claims)
{
    return verify_refreshing(kr, cache, token, len, expect, ret_claims);
}

int auth_keyring_rotate(auth_keyring *kr, char *ret_kid)
{
    pthread_rwlock_wrlock(&kr->lock);
    int r = kr->backing.shared ? keyring_reload_locked(kr) : 0;
    if (r == 0)
        r = keyring_rotate_locked(kr, now_s());
    if (r == 0)
        snprintf(ret_kid, JWT_KID_MAX + 1, "%s", jwt_key_kid(kr->keys[kr->n_keys - 1].key));
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

json_t *auth_keyring_jwks(auth_keyring *kr)
{
    keyring_refresh(kr, &kr->refreshed_mono_ns, KEYRING_REFRESH_EVERY_NS);
    jwt_key *keys[KEYRING_MAX_KEYS];
    json_auto_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_rwlock_rdlock(&kr->lock);
    size_t n = valid_keys(kr, now_s(), keys);
    int r = 0;
    for (size_t i = n; i-- > 0 && r == 0;) /* the current key first */
        r = json_array_append_new(arr, jwt_key_to_json(keys[i], false));
    pthread_rwlock_unlock(&kr->lock);
    if (r < 0)
        return NULL;
    return json_pack("{s:O}", "keys", arr);
}
