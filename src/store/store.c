/* The store's front: picks the driver named by the URL and forwards to it,
 * and holds what every driver shares (synchronous writes, result cleanup). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "basic/log.h"
#include "store/store-driver.h"

struct store {
    const store_driver *driver;
    void *impl;
};

static const store_driver *const drivers[] = {
    &store_sqlite_driver,
    &store_postgres_driver,
    &store_postgresql_driver,
};

int store_open(const char *url, store **ret)
{
    const store_driver *driver = NULL;
    const char *location = url;
    const char *colon = strchr(url, ':');
    if (colon && colon != url) {
        for (size_t i = 0; i < sizeof(drivers) / sizeof(drivers[0]); i++)
            if (strlen(drivers[i]->scheme) == (size_t)(colon - url) &&
                strncmp(url, drivers[i]->scheme, (size_t)(colon - url)) == 0) {
                driver = drivers[i];
                location = colon + 1;
            }
        if (!driver && strstr(url, "://")) {
            log_debug("store: no driver for %.*s", (int)(colon - url), url);
            return -EPROTONOSUPPORT;
        }
    }
    if (!driver)
        driver = &store_sqlite_driver; /* a plain path */
    store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    int r = driver->open(location, &s->impl);
    if (r < 0) {
        free(s);
        return r;
    }
    s->driver = driver;
    *ret = s;
    return 0;
}

void store_free(store *s)
{
    if (!s)
        return;
    s->driver->close(s->impl);
    free(s);
}

int store_get(store *s, const char *kind, const char *name, json_t **ret_doc)
{
    return s->driver->get(s->impl, kind, name, ret_doc);
}

int store_get_by_lookup(store *s, const char *kind, const char *key, json_t **ret_doc)
{
    return s->driver->get_by_lookup(s->impl, kind, key, ret_doc);
}

int store_list(store *s, const char *kind, json_t **ret_items, int64_t *ret_revision)
{
    return s->driver->list(s->impl, &kind, 1, ret_items, ret_revision);
}

int store_list_prefix(store *s, const char *kind, const char *prefix, json_t **ret_items, int64_t *ret_revision)
{
    size_t n = prefix ? strlen(prefix) : 0;
    if (n == 0 || n > 63 || memchr(prefix, 0xff, n))
        return -EINVAL;
    /* the names in [PREFIX, PREFIX with its last byte one higher) */
    char to[64];
    memcpy(to, prefix, n + 1);
    to[n - 1] = (char)((unsigned char)to[n - 1] + 1);
    return s->driver->list_range(s->impl, kind, prefix, to, ret_items, ret_revision);
}

int store_list_kinds(store *s, const char *const *kinds, size_t n_kinds, json_t **ret_items,
                     int64_t *ret_revision)
{
    if (n_kinds == 0 || n_kinds > STORE_KINDS_MAX)
        return -EINVAL;
    return s->driver->list(s->impl, kinds, n_kinds, ret_items, ret_revision);
}

int store_view_list(store_view *view, const char *kind, json_t **ret_items)
{
    return view->list(view, kind, ret_items);
}

int store_changes_since(store *s, const char *kind, int64_t after, size_t max, json_t **ret_events)
{
    return s->driver->changes_since(s->impl, 0, &kind, kind ? 1 : 0, after, max, ret_events);
}

int store_changes_since_kinds(store *s, const char *const *kinds, size_t n_kinds, int64_t after, size_t max,
                              json_t **ret_events)
{
    if (n_kinds > STORE_KINDS_MAX)
        return -EINVAL;
    return s->driver->changes_since(s->impl, 0, kinds, n_kinds, after, max, ret_events);
}

int store_changes_since_epoch(store *s, uint64_t epoch, const char *const *kinds, size_t n_kinds, int64_t after,
                              size_t max, json_t **ret_events)
{
    if (n_kinds > STORE_KINDS_MAX)
        return -EINVAL;
    if (epoch != store_epoch(s))
        return -ESTALE; /* known already: the database was reset since the watcher listed */
    return s->driver->changes_since(s->impl, epoch, kinds, n_kinds, after, max, ret_events);
}

int64_t store_revision(store *s)
{
    return s->driver->revision(s->impl);
}

uint64_t store_epoch(store *s)
{
    return s->driver->epoch(s->impl);
}

bool store_lease_args_ok(const char *name, const char *holder, int64_t ttl_ms)
{
    size_t n = name ? strlen(name) : 0, h = holder ? strlen(holder) : 0;
    return n > 0 && n <= 200 && h > 0 && h <= 200 && ttl_ms > 0 && ttl_ms <= 86400000;
}

int store_lease_acquire(store *s, const char *name, const char *holder, int64_t ttl_ms, int64_t *ret_token)
{
    if (!store_lease_args_ok(name, holder, ttl_ms))
        return -EINVAL;
    return s->driver->lease_acquire(s->impl, name, holder, ttl_ms, ret_token);
}

int store_lease_renew(store *s, const char *name, const char *holder, int64_t token, int64_t ttl_ms)
{
    if (!store_lease_args_ok(name, holder, ttl_ms))
        return -EINVAL;
    return s->driver->lease_renew(s->impl, name, holder, token, ttl_ms);
}

int store_lease_release(store *s, const char *name, const char *holder, int64_t token)
{
    if (!store_lease_args_ok(name, holder, 1))
        return -EINVAL;
    return s->driver->lease_release(s->impl, name, holder, token);
}

/* Sweeps ended windows on one add in COUNTER_SWEEP_EVERY. */
#define COUNTER_SWEEP_EVERY 1024

int store_counter_add(store *s, const char *name, int64_t window_ms, int64_t *ret_count, int64_t *ret_left_ms)
{
    static _Atomic uint64_t adds;
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 200 || window_ms <= 0 || window_ms > 86400000)
        return -EINVAL;
    bool sweep = ++adds % COUNTER_SWEEP_EVERY == 0;
    return s->driver->counter_add(s->impl, name, window_ms, sweep, ret_count, ret_left_ms);
}

void store_url_redact(const char *url, char *out, size_t size)
{
    /* scheme://user:password@host…: the password is between the first ':'
     * after "//" and the last '@' before the path */
    const char *auth = strstr(url, "://");
    snprintf(out, size, "%s", url);
    if (!auth)
        return;
    auth += 3;
    size_t authority = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < auth + authority; p++)
        if (*p == '@')
            at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon)
        snprintf(out, size, "%.*s***%s", (int)(colon + 1 - url), url, at);
    /* every password=… parameter of the query string (not "xpassword=") */
    for (char *pw = strstr(out, "password="); pw; pw = strstr(pw + 9, "password=")) {
        if (pw == out || (pw[-1] != '?' && pw[-1] != '&'))
            continue;
        size_t len = strcspn(pw + 9, "&#");
        if (strlen(out) + 3 >= size) { /* no room for "***": cut the URL before the password */
            pw[9] = '\0';
            break;
        }
        memmove(pw + 12, pw + 9 + len, strlen(pw + 9 + len) + 1);
        memcpy(pw + 9, "***", 3);
    }
}

void store_write_async(store *s, store_txn *txn)
{
    txn->error = 0;
    txn->failed_op = 0;
    txn->next = NULL;
    for (size_t i = 0; i < txn->n_ops; i++)
        txn->ops[i].result = NULL;
    s->driver->write_async(s->impl, txn);
}

typedef struct sync_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} sync_wait;

static void sync_done(store_txn *txn, void *userdata)
{
    sync_wait *w = userdata;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int store_write(store *s, store_txn *txn)
{
    sync_wait w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    txn->done = sync_done;
    txn->userdata = &w;
    store_write_async(s, txn);
    pthread_mutex_lock(&w.lock);
    while (!w.done)
        pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    return txn->error;
}

void store_txn_clear(store_txn *txn)
{
    for (size_t i = 0; i < txn->n_ops; i++) {
        json_decref(txn->ops[i].result);
        txn->ops[i].result = NULL;
    }
}

const char *store_event_type_name(store_event_type t)
{
    static const char *const names[] = {"ADDED", "MODIFIED", "DELETED"};
    return names[t];
}

const char *store_action_name(store_action a)
{
    static const char *const names[] = {"created", "configured", "unchanged", "deleted"};
    return names[a];
}

bool store_same_content(const json_t *input, const json_t *old)
{
    json_t *empty = json_object();
    json_t *a = json_object_get(input, "spec"), *b = json_object_get(old, "spec");
    json_t *la = json_object_get(json_object_get(input, "metadata"), "labels");
    json_t *lb = json_object_get(json_object_get(old, "metadata"), "labels");
    bool same = json_equal(a ? a : empty, b ? b : empty) && json_equal(la ? la : empty, lb ? lb : empty);
    json_decref(empty);
    return same;
}
