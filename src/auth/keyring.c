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

typedef struct keyring_entry {
    jwt_key *key;
    int64_t created;
    int64_t retired; /* when it stopped signing; 0 while current */
} keyring_entry;

struct auth_keyring {
    pthread_rwlock_t lock;
    char *path;
    int64_t rotate_every, retain;
    keyring_entry keys[KEYRING_MAX_KEYS]; /* oldest first; the last one signs */
    size_t n_keys;
};

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

/* Wipes the string members of a private JWK before it is released. */
static void jwk_wipe(json_t *jwk)
{
    const char *name;
    json_t *v;
    json_object_foreach(jwk, name, v) if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
}

/* Writes every key (private parts included) to the file, mode 0600. */
static int keyring_save(auth_keyring *kr)
{
    json_auto_t *keys = json_array();
    if (!keys)
        return -ENOMEM;
    int r = 0;
    for (size_t i = 0; i < kr->n_keys && r == 0; i++) {
        json_t *jwk = jwt_key_to_json(kr->keys[i].key, true);
        json_t *e = jwk ? json_pack("{s:I, s:I, s:o}", "created", (json_int_t)kr->keys[i].created, "retired",
                                    (json_int_t)kr->keys[i].retired, "jwk", jwk)
                        : NULL;
        if (!e || json_array_append_new(keys, e) < 0)
            r = -ENOMEM;
    }
    char *text = r == 0 ? json_dumps(keys, JSON_COMPACT) : NULL;
    if (r == 0 && !text)
        r = -ENOMEM;
    if (text) {
        size_t n = strlen(text);
        r = write_file_atomic(kr->path, text, n, 0600);
        OPENSSL_cleanse(text, n);
        free(text);
    }
    size_t i;
    json_t *e;
    json_array_foreach(keys, i, e) jwk_wipe(json_object_get(e, "jwk"));
    return r;
}

/* Loads the key file; -ENOENT when there is none. */
static int keyring_load(auth_keyring *kr)
{
    _cleanup_close_ int fd = open(kr->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return negative_errno();
    struct stat st;
    if (fstat(fd, &st) < 0)
        return negative_errno();
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return -EPERM;
    char *data = NULL;
    size_t len;
    int r = read_fd(fd, KEYRING_FILE_MAX, &data, &len);
    if (r < 0)
        return r;
    json_auto_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    OPENSSL_cleanse(data, len);
    free(data);
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > KEYRING_MAX_KEYS)
        return -EINVAL;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        json_t *jwk = json_object_get(e, "jwk");
        jwt_key *k = NULL;
        r = json_is_integer(json_object_get(e, "created")) && json_is_integer(json_object_get(e, "retired"))
                ? jwt_key_from_json(jwk, JWT_ALG_ES256, &k)
                : -EINVAL;
        jwk_wipe(jwk);
        if (r < 0)
            break;
        kr->keys[kr->n_keys++] = (keyring_entry){k, json_integer_value(json_object_get(e, "created")),
                                                 json_integer_value(json_object_get(e, "retired"))};
    }
    if (r == 0 && kr->keys[kr->n_keys - 1].retired != 0)
        r = -EINVAL;
    return r;
}

/* Retires the current key and appends a fresh one, dropping keys whose
 * tokens have all expired. Caller holds the write lock. */
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
    size_t kept = 0;
    for (size_t i = 0; i < kr->n_keys; i++) {
        keyring_entry *e = &kr->keys[i];
        if (e->retired == 0)
            e->retired = now;
        bool expired = e->retired + kr->retain < now;
        bool no_room = kr->n_keys - i >= KEYRING_MAX_KEYS; /* keep the newest KEYRING_MAX_KEYS - 1 */
        if (expired || no_room)
            jwt_key_free(e->key);
        else
            kr->keys[kept++] = *e;
    }
    kr->n_keys = kept;
    kr->keys[kr->n_keys++] = (keyring_entry){k, now, 0};
    return keyring_save(kr);
}

void auth_keyring_free(auth_keyring *kr)
{
    if (!kr)
        return;
    for (size_t i = 0; i < kr->n_keys; i++)
        jwt_key_free(kr->keys[i].key);
    pthread_rwlock_destroy(&kr->lock);
    free(kr->path);
    free(kr);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(auth_keyring *, auth_keyring_free);

int auth_keyring_open(const char *path, int64_t rotate_every, int64_t retain, auth_keyring **ret)
{
    if (rotate_every <= 0 || retain < 0)
        return -EINVAL;
    _cleanup_(auth_keyring_freep) auth_keyring *kr = calloc(1, sizeof(*kr));
    if (!kr)
        return -ENOMEM;
    pthread_rwlock_init(&kr->lock, NULL);
    kr->path = strdup(path);
    if (!kr->path)
        return -ENOMEM;
    kr->rotate_every = rotate_every;
    kr->retain = retain;
    int r = keyring_load(kr);
    if (r == -ENOENT)
        r = keyring_rotate_locked(kr, now_s());
    if (r < 0)
        return r;
    *ret = TAKE_PTR(kr);
    return 0;
}

int auth_keyring_sign(auth_keyring *kr, const json_t *claims, char **ret)
{
    int64_t now = now_s();
    pthread_rwlock_rdlock(&kr->lock);
    if (now - kr->keys[kr->n_keys - 1].created >= kr->rotate_every) {
        pthread_rwlock_unlock(&kr->lock);
        pthread_rwlock_wrlock(&kr->lock);
        /* another thread may have rotated meanwhile */
        int r = now - kr->keys[kr->n_keys - 1].created >= kr->rotate_every ? keyring_rotate_locked(kr, now) : 0;
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

int auth_keyring_verify(auth_keyring *kr, const char *token, size_t len, const jwt_expect *expect,
                        json_t **ret_claims)
{
    jwt_key *keys[KEYRING_MAX_KEYS];
    pthread_rwlock_rdlock(&kr->lock);
    size_t n = valid_keys(kr, expect->now, keys);
    int r = jwt_verify(token, len, keys, n, expect, ret_claims);
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

int auth_keyring_verify_cached(auth_keyring *kr, jwt_cache *cache, const char *token, size_t len,
                               const jwt_expect *expect, json_t **ret_claims)
{
    jwt_key *keys[KEYRING_MAX_KEYS];
    pthread_rwlock_rdlock(&kr->lock);
    size_t n = valid_keys(kr, expect->now, keys);
    int r = jwt_verify_cached(cache, token, len, keys, n, expect, ret_claims);
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

int auth_keyring_rotate(auth_keyring *kr, char *ret_kid)
{
    pthread_rwlock_wrlock(&kr->lock);
    int r = keyring_rotate_locked(kr, now_s());
    if (r == 0)
        snprintf(ret_kid, JWT_KID_MAX + 1, "%s", jwt_key_kid(kr->keys[kr->n_keys - 1].key));
    pthread_rwlock_unlock(&kr->lock);
    return r;
}

json_t *auth_keyring_jwks(auth_keyring *kr)
{
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
