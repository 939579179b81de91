#include "resource/refs.h"

#include <string.h>

#include "basic/macro.h"

/* Every reference the schemas of resource.c know. Keep it in step with
 * them: test-resource.c checks that each path exists in its kind's schema. */
static const resource_ref refs[] = {
    {"User", "spec.groups[]", "Group", NULL},
    {"User", "spec.policies[]", "Policy", NULL},
    {"Group", "spec.policies[]", "Policy", NULL},
    {"Service", "spec.policies[]", "Policy", NULL},
    {"Service", "spec.upstream.enclave", "Enclave", NULL},
    {"Service", "spec.inject.secret", "Secret", NULL},
    {"Credential", "spec.user", "User", NULL},
    {"Credential", "spec.policies[]", "Policy", NULL},
    {"IdentityProvider", "spec.clientSecret.secret", "Secret", NULL},
    {"Key", "spec.release.attestationPolicy", "AttestationPolicy", NULL},
    {"Enclave", "spec.secrets[].secret", "Secret", NULL},
    {"Enclave", "spec.secrets[].key", "Key", "secret"},
    {"Enclave", "spec.attestationPolicy", "AttestationPolicy", NULL},
    {"Workspace", "spec.members[]", "User", NULL},
    {"Workspace", "spec.attestationPolicy", "AttestationPolicy", NULL},
    {"Dataset", "spec.workspace", "Workspace", NULL},
    {"Job", "spec.workspace", "Workspace", NULL},
    {"Job", "spec.inputs[]", "Dataset", NULL},
    {"Job", "spec.recipients[]", "User", NULL},
};

const resource_ref *resource_ref_get(size_t i)
{
    return i < ELEMENTSOF(refs) ? &refs[i] : NULL;
}

/* Walks V along PATH (the rest of a table path), calling FN on each string
 * found at its end. Returns 0, or what FN stopped with. */
static int walk(const resource_ref *ref, const json_t *v, const char *path,
                int (*fn)(const resource_ref *ref, const char *name, void *userdata), void *userdata)
{
    if (!v)
        return 0;
    if (*path == 0) {
        if (!json_is_string(v))
            return 0;
        return fn(ref, json_string_value(v), userdata);
    }
    if (*path == '.')
        path++;
    if (strncmp(path, "[]", 2) == 0) {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            int r = walk(ref, item, path + 2, fn, userdata);
            if (r != 0)
                return r;
        }
        return 0;
    }
    size_t n = strcspn(path, ".[");
    char key[64];
    if (n >= sizeof(key))
        return 0;
    memcpy(key, path, n);
    key[n] = 0;
    if (!json_is_object(v))
        return 0;
    /* the condition is about the object holding the last member */
    if (path[n] == 0 && ref->unless && json_object_get(v, ref->unless))
        return 0;
    return walk(ref, json_object_get(v, key), path + n, fn, userdata);
}

int resource_refs_foreach(const json_t *doc, int (*fn)(const resource_ref *ref, const char *name, void *userdata),
                          void *userdata)
{
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    if (!kind)
        return 0;
    for (size_t i = 0; i < ELEMENTSOF(refs); i++) {
        if (strcmp(refs[i].kind, kind) != 0)
            continue;
        int r = walk(&refs[i], doc, refs[i].path, fn, userdata);
        if (r != 0)
            return r;
    }
    return 0;
}

typedef struct names_search {
    const char *kind, *name;
    const char *path;
} names_search;

static int names_match(const resource_ref *ref, const char *name, void *userdata)
{
    names_search *s = userdata;
    if (strcmp(ref->target, s->kind) != 0 || strcmp(name, s->name) != 0)
        return 0;
    s->path = ref->path;
    return 1;
}

bool resource_refs_names(const json_t *doc, const char *target_kind, const char *target_name, const char **ret_path)
{
    names_search s = {.kind = target_kind, .name = target_name};
    if (resource_refs_foreach(doc, names_match, &s) == 0)
        return false;
    if (ret_path)
        *ret_path = s.path;
    return true;
}

bool resource_kind_referenced(const char *kind)
{
    for (size_t i = 0; i < ELEMENTSOF(refs); i++)
        if (strcmp(refs[i].target, kind) == 0)
            return true;
    return false;
}
