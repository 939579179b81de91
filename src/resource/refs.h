/* References between resources: one table of which field of which kind
 * names a resource of which other kind (a Service's spec.policies name
 * Policies, a User's spec.groups name Groups, ...). apply warns about
 * references to missing resources with it, delete refuses (without force)
 * to remove a resource still referenced, and describe lists the referrers:
 * all three read this table, so a new reference is one entry in refs.c. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Referrers a reverse lookup reports at most (the rest is counted). */
#define RESOURCE_REFERRERS_MAX 100

typedef struct resource_ref {
    const char *kind;   /* the referring kind: "Service" */
    const char *path;   /* where the names are: "spec.policies[]" ("[]": each element of an array) */
    const char *target; /* the kind named there: "Policy" */
    /* set: the reference counts only in objects without this member (an
     * Enclave secret's key names a Key only when the item has no secret) */
    const char *unless;
} resource_ref;

/* The I-th entry of the table, NULL past the last. */
const resource_ref *resource_ref_get(size_t i);

/* Calls FN(REF, NAME, USERDATA) for every name DOC (a document of any kind)
 * references, in table order; FN returns 0 to go on, anything else stops
 * the walk and is returned. Returns 0 when the walk ended. */
int resource_refs_foreach(const json_t *doc, int (*fn)(const resource_ref *ref, const char *name, void *userdata),
                          void *userdata);

/* Whether DOC references TARGET_KIND/TARGET_NAME; when it does and
 * RET_PATH is set, *RET_PATH is the table's path of the first reference. */
bool resource_refs_names(const json_t *doc, const char *target_kind, const char *target_name, const char **ret_path);

/* Whether any kind references resources of KIND (worth a reverse lookup). */
bool resource_kind_referenced(const char *kind);
