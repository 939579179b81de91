/* The documents policy sets are built from (see policy-docs.h). */
#include "policy/policy-docs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *const policy_docs_kinds[POLICY_DOCS_KINDS] = {"Policy", "User", "Group", "Credential", "Service"};

struct policy_docs {
    json_t *maps[POLICY_DOCS_KINDS]; /* name -> document */
};

static int kind_index(const char *kind)
{
    for (int k = 0; k < POLICY_DOCS_KINDS; k++)
        if (kind && strcmp(kind, policy_docs_kinds[k]) == 0)
            return k;
    return -1;
}

policy_docs *policy_docs_new(void)
{
    policy_docs *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    for (size_t k = 0; k < POLICY_DOCS_KINDS; k++)
        if (!(d->maps[k] = json_object())) {
            policy_docs_free(d);
            return NULL;
        }
    return d;
}

void policy_docs_free(policy_docs *d)
{
    if (!d)
        return;
    for (size_t k = 0; k < POLICY_DOCS_KINDS; k++)
        json_decref(d->maps[k]);
    free(d);
}

bool policy_docs_tracks(const char *kind)
{
    return kind_index(kind) >= 0;
}

static const char *doc_name(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
}

int policy_docs_reset(policy_docs *d, const char *kind, const json_t *items)
{
    int k = kind_index(kind);
    if (k < 0)
        return -EINVAL;
    json_t *map = json_object();
    if (!map)
        return -ENOMEM;
    size_t i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        const char *name = doc_name(doc);
        if (name && json_object_set(map, name, doc) < 0) {
            json_decref(map);
            return -ENOMEM;
        }
    }
    json_decref(d->maps[k]);
    d->maps[k] = map;
    return 0;
}

int policy_docs_apply(policy_docs *d, const char *kind, bool deleted, json_t *doc)
{
    int k = kind_index(kind);
    const char *name = doc_name(doc);
    if (k < 0 || !name)
        return -EINVAL;
    if (deleted) {
        json_object_del(d->maps[k], name);
        return 0;
    }
    return json_object_set(d->maps[k], name, doc) < 0 ? -ENOMEM : 0;
}

json_t *policy_docs_get(const policy_docs *d, const char *kind)
{
    int k = kind_index(kind);
    return k < 0 ? NULL : d->maps[k];
}

int policy_docs_build(const policy_docs *d, policy_set **ret_set)
{
    json_t *lists[POLICY_DOCS_KINDS] = {0};
    int e = 0;
    for (size_t k = 0; k < POLICY_DOCS_KINDS && e == 0; k++) {
        if (!(lists[k] = json_array())) {
            e = -ENOMEM;
            break;
        }
        const char *name;
        json_t *doc;
        json_object_foreach(d->maps[k], name, doc)
        {
            if (json_array_append(lists[k], doc) < 0) {
                e = -ENOMEM;
                break;
            }
        }
    }
    if (e == 0)
        e = policy_set_new(lists[0], lists[1], lists[2], lists[3], lists[4], ret_set);
    for (size_t k = 0; k < POLICY_DOCS_KINDS; k++)
        json_decref(lists[k]);
    return e;
}
