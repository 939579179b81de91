#include "api/tickets.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "api/sealed.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"

#define TICKET_NAME_LEN (2 + 2 * SHA256_DIGEST_LENGTH)

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

/* The record name of KEY: CLASS, '-', the hex SHA-256 of KEY. */
static void ticket_name(char class, const char *key, char name[TICKET_NAME_LEN + 1])
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)key, strlen(key), digest);
    name[0] = class;
    name[1] = '-';
    hex_encode(digest, sizeof(digest), name + 2);
}

static int64_t doc_rv(const json_t *doc)
{
    const char *rv = json_string_value(json_object_get(json_object_get(doc, "metadata"), "resourceVersion"));
    return rv ? strtoll(rv, NULL, 10) : 0;
}

typedef struct ticket_age {
    int64_t created;
    size_t index;
} ticket_age;

static int newest_first(const void *a, const void *b)
{
    int64_t x = ((const ticket_age *)a)->created, y = ((const ticket_age *)b)->created;
    return (x < y) - (x > y);
}

/* Removes K's records past their time, and the oldest beyond K's
 * max_live, at most once per API_TICKET_SWEEP_EVERY_S in this process. A
 * record another replica removed or took meanwhile is no error. */
static void ticket_sweep(api_server *srv, api_ticket_kind *k, int64_t now)
{
    int64_t last = atomic_load(&k->swept);
    if (now - last < API_TICKET_SWEEP_EVERY_S || !atomic_compare_exchange_strong(&k->swept, &last, now))
        return;
    json_t *items = NULL;
    if (store_list(srv->cfg->store, k->kind, &items, NULL) < 0)
        return;
    /* newest first, so the ones kept are the newest */
    size_t n = json_array_size(items), live = 0;
    ticket_age *order = calloc(n ? n : 1, sizeof(*order));
    for (size_t i = 0; order && i < n; i++)
        order[i] = (ticket_age){json_integer_value(json_object_get(json_object_get(json_array_get(items, i), "spec"),
                                                                   "created")),
                                i};
    if (order)
        qsort(order, n, sizeof(*order), newest_first);
    for (size_t o = 0; order && o < n; o++) {
        const json_t *doc = json_array_get(items, order[o].index);
        if (now - order[o].created <= k->ttl_s && live < k->max_live) {
            live++;
            continue;
        }
        store_op op = {.type = STORE_REMOVE, .kind = k->kind,
                       .name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name")),
                       .expected_rv = doc_rv(doc)};
        store_txn txn = {.ops = &op, .n_ops = 1};
        (void)store_write(srv->cfg->store, &txn);
        store_txn_clear(&txn);
    }
    free(order);
    json_decref(items);
}

int api_ticket_put(api_server *srv, api_ticket_kind *k, char class, const char *key, int64_t created,
                   const json_t *content)
{
    if (!srv->cfg->handoff_key)
        return -ENOKEY;
    char name[TICKET_NAME_LEN + 1];
    ticket_name(class, key, name);
    uint8_t seal[API_SEAL_KEY_LEN];
    char *sealed = NULL;
    int r = api_seal_key(srv->cfg->handoff_key, k->seal_label, seal);
    if (r == 0)
        r = api_seal_json(seal, name, content, k->content_max, &sealed);
    OPENSSL_cleanse(seal, sizeof(seal));
    if (r < 0)
        return r;
    json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:I, s:s}}", "apiVersion", "cloister.dev/v1", "kind", k->kind,
                            "metadata", "name", name, "spec", "created", (json_int_t)created, "sealed", sealed);
    free(sealed);
    if (!doc)
        return -ENOMEM;
    store_op op = {.type = STORE_CREATE, .kind = k->kind, .name = name, .doc = doc};
    store_txn txn = {.ops = &op, .n_ops = 1};
    r = store_write(srv->cfg->store, &txn);
    store_txn_clear(&txn);
    json_decref(doc);
    ticket_sweep(srv, k, now_s());
    return r;
}

int api_ticket_take(api_server *srv, api_ticket_kind *k, char class, const char *key, json_t **ret)
{
    if (!srv->cfg->handoff_key)
        return -ENOKEY;
    char name[TICKET_NAME_LEN + 1];
    ticket_name(class, key, name);
    json_auto_t *doc = NULL;
    int r = store_get(srv->cfg->store, k->kind, name, &doc);
    if (r < 0)
        return r;
    store_op op = {.type = STORE_DELETE, .kind = k->kind, .name = name, .expected_rv = doc_rv(doc)};
    store_txn txn = {.ops = &op, .n_ops = 1};
    r = store_write(srv->cfg->store, &txn);
    store_txn_clear(&txn);
    if (r == -ESTALE)
        r = -ENOENT; /* another replica took it first */
    if (r < 0)
        return r;
    const json_t *spec = json_object_get(doc, "spec");
    if (now_s() - json_integer_value(json_object_get(spec, "created")) > k->ttl_s)
        return -ENOENT;
    const char *sealed = json_string_value(json_object_get(spec, "sealed"));
    uint8_t seal[API_SEAL_KEY_LEN];
    r = sealed ? api_seal_key(srv->cfg->handoff_key, k->seal_label, seal) : -EINVAL;
    if (r == 0)
        r = api_open_json(seal, name, sealed, k->content_max, ret);
    OPENSSL_cleanse(seal, sizeof(seal));
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot open a record of the store (sealed under another api replica's "
                                   "auth/handoff.key?)", "kind", k->kind, "error", strerror(-r), NULL);
    return r;
}

bool api_ticket_string(const json_t *v, const char *name, char *dst, size_t size)
{
    const char *s = json_string_value(json_object_get(v, name));
    if (!s || strlen(s) >= size)
        return false;
    memcpy(dst, s, strlen(s) + 1);
    return true;
}

void api_ticket_content_free(json_t *v)
{
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m)
    {
        if (json_is_string(m))
            OPENSSL_cleanse((char *)json_string_value(m), json_string_length(m));
        else if (json_is_object(m))
            api_ticket_content_free(json_incref(m));
    }
    json_decref(v);
}
