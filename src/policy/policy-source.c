/* A store's current policy set, rebuilt on change (see policy-source.h). */
#include "policy/policy-source.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "basic/log.h"
#include "basic/macro.h"

static const char *const source_kinds[] = {"Policy", "User", "Group", "Credential", "Service"};

struct policy_source {
    store *store;
    pthread_mutex_t lock;    /* guards set and revision */
    pthread_mutex_t rebuild; /* one rebuild at a time */
    policy_set *set;
    int64_t revision; /* the store revision SET was checked against */
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
    pthread_mutex_destroy(&src->lock);
    pthread_mutex_destroy(&src->rebuild);
    free(src);
}

/* The set if it was checked against revision REV (a new reference), else NULL. */
static policy_set *current_at(policy_source *src, int64_t rev)
{
    pthread_mutex_lock(&src->lock);
    policy_set *s = src->set && src->revision == rev ? policy_set_ref(src->set) : NULL;
    pthread_mutex_unlock(&src->lock);
    return s;
}

/* Whether a document of the kinds policies depend on changed after AFTER:
 * 1 yes (or unknown: the history is gone), 0 no, or a negative errno. */
static int relevant_change_since(policy_source *src, int64_t after)
{
    if (after < 0)
        return 1;
    for (size_t k = 0; k < ELEMENTSOF(source_kinds); k++) {
        json_t *events;
        int e = store_changes_since(src->store, source_kinds[k], after, 1, &events);
        if (e == -ESTALE)
            return 1;
        if (e < 0)
            return e;
        size_t n = json_array_size(events);
        json_decref(events);
        if (n > 0)
            return 1;
    }
    return 0;
}

/* Builds a set from the store's current documents into *ret_set. */
static int build(policy_source *src, policy_set **ret_set)
{
    json_t *lists[ELEMENTSOF(source_kinds)] = {0};
    int e = 0;
    for (size_t k = 0; k < ELEMENTSOF(source_kinds) && e == 0; k++)
        e = store_list(src->store, source_kinds[k], &lists[k], NULL);
    if (e == 0)
        e = policy_set_new(lists[0], lists[1], lists[2], lists[3], lists[4], ret_set);
    for (size_t k = 0; k < ELEMENTSOF(source_kinds); k++)
        json_decref(lists[k]);
    return e;
}

int policy_source_get(policy_source *src, policy_set **ret_set)
{
    int64_t rev = store_revision(src->store);
    policy_set *s = current_at(src, rev);
    if (s) {
        *ret_set = s;
        return 0;
    }
    pthread_mutex_lock(&src->rebuild);
    s = current_at(src, rev); /* another thread may have just done it */
    int e = 0;
    if (!s) {
        pthread_mutex_lock(&src->lock);
        int64_t checked = src->set ? src->revision : -1;
        pthread_mutex_unlock(&src->lock);
        e = relevant_change_since(src, checked);
        policy_set *fresh = NULL;
        if (e == 1) {
            e = build(src, &fresh);
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
