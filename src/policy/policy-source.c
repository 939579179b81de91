/* A store's current policy set, rebuilt on change (see policy-source.h). */
#include "policy/policy-source.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "policy/policy-docs.h"

#define CHANGES_BATCH 1000

struct policy_source {
    store *store;
    pthread_mutex_t lock;    /* guards set and revision */
    pthread_mutex_t rebuild; /* one rebuild at a time; guards docs */
    policy_set *set;
    int64_t revision; /* the store revision SET was checked against */
    uint64_t epoch;   /* and the store's epoch then (revisions belong to one) */
    /* the documents SET was built from, kept current from the change feed
     * so a change costs its delta, not a re-read of every document; NULL
     * until the first full read */
    policy_docs *docs;
    uint64_t docs_epoch; /* the store's epoch when DOCS were read (guarded by rebuild) */
};

int policy_source_new(store *st, policy_source **ret)
{
    policy_source *src = calloc(1, sizeof(*src));
    if (!src)
        return -ENOMEM;
    src->store = st;
    src->revision = -1;
    pthread_mutex_init(&src->lock, NULL);
    pthread_mutex_init(&src->rebuild, NULL);
    *ret = src;
    return 0;
}

void policy_source_free(policy_source *src)
{
    if (!src)
        return;
    policy_set_unref(src->set);
    policy_docs_free(src->docs);
    pthread_mutex_destroy(&src->lock);
    pthread_mutex_destroy(&src->rebuild);
    free(src);
}

/* The set if it was checked against revision REV of EPOCH (a new reference), else NULL. */
static policy_set *current_at(policy_source *src, int64_t rev, uint64_t epoch)
{
    pthread_mutex_lock(&src->lock);
    policy_set *s = src->set && src->revision == rev && src->epoch == epoch ? policy_set_ref(src->set) : NULL;
    pthread_mutex_unlock(&src->lock);
    return s;
}

/* Reads every document of KIND into the docs. */
static int reload_kind(policy_source *src, const char *kind)
{
    json_t *items;
    int e = store_list(src->store, kind, &items, NULL);
    if (e < 0)
        return e;
    e = policy_docs_reset(src->docs, kind, items);
    json_decref(items);
    return e;
}

/* Brings the docs up to date with the changes after revision AFTER (-1:
 * read everything) of the store's epoch EPOCH (read before the revision).
 * Returns 1 when a document changed, 0 when none did, or a negative errno.
 * A history too old to replay, or a store reset (a new epoch), is read
 * again in full. */
static int refresh_docs(policy_source *src, int64_t after, uint64_t epoch)
{
    if (!src->docs) {
        if (!(src->docs = policy_docs_new()))
            return -ENOMEM;
        after = -1;
    }
    if (src->docs_epoch != epoch)
        after = -1;
    src->docs_epoch = epoch;
    int changed = 0;
    for (size_t k = 0; k < POLICY_DOCS_KINDS; k++) {
        const char *kind = policy_docs_kinds[k];
        if (after < 0) {
            int e = reload_kind(src, kind);
            if (e < 0)
                return e;
            changed = 1;
            continue;
        }
        for (int64_t from = after;;) {
            json_t *events;
            int e = store_changes_since_epoch(src->store, epoch, &kind, 1, from, CHANGES_BATCH, &events);
            if (e == -ESTALE) {
                e = reload_kind(src, kind);
                if (e < 0)
                    return e;
                changed = 1;
                break;
            }
            if (e < 0)
                return e;
            size_t i, n = json_array_size(events);
            json_t *ev;
            json_array_foreach(events, i, ev)
            {
                const char *type = json_string_value(json_object_get(ev, "type"));
                policy_docs_apply(src->docs, kind, type && strcmp(type, "DELETED") == 0, json_object_get(ev, "object"));
                from = json_integer_value(json_object_get(ev, "revision"));
                changed = 1;
            }
            json_decref(events);
            if (n < CHANGES_BATCH)
                break;
        }
    }
    return changed;
}

int policy_source_get(policy_source *src, policy_set **ret_set)
{
    uint64_t epoch = store_epoch(src->store); /* first: a new epoch's revision is set before it */
    int64_t rev = store_revision(src->store);
    policy_set *s = current_at(src, rev, epoch);
    if (s) {
        *ret_set = s;
        return 0;
    }
    pthread_mutex_lock(&src->rebuild);
    s = current_at(src, rev, epoch); /* another thread may have just done it */
    int e = 0;
    if (!s) {
        pthread_mutex_lock(&src->lock);
        int64_t checked = src->set ? src->revision : -1;
        pthread_mutex_unlock(&src->lock);
        e = refresh_docs(src, checked, epoch);
        policy_set *fresh = NULL;
        if (e == 1) {
            e = policy_docs_build(src->docs, &fresh);
            if (e == 0)
                log_fields(LOG_LEVEL_DEBUG, "policy set rebuilt", NULL);
        }
        if (e >= 0) {
            pthread_mutex_lock(&src->lock);
            if (fresh) {
                policy_set_unref(src->set);
                src->set = fresh;
            }
            src->revision = rev;
            src->epoch = epoch;
            s = policy_set_ref(src->set);
            pthread_mutex_unlock(&src->lock);
            e = 0;
        }
    }
    pthread_mutex_unlock(&src->rebuild);
    if (e < 0)
        return e;
    *ret_set = s;
    return 0;
}
