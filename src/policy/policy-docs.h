/* The documents a policy set is built from — Policy, User, Group, Credential
 * and Service — kept per kind as name -> document and brought up to date by
 * applying changes one by one, so that a change costs its delta. Used by the
 * API's policy source (fed by the store's change feed) and by the proxy (fed
 * by the API's configuration stream).
 *
 * Not thread-safe: one owner at a time. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "policy/policy.h"

typedef struct policy_docs policy_docs;

/* The kinds, in the order policy_set_new() takes them. */
extern const char *const policy_docs_kinds[5];
#define POLICY_DOCS_KINDS 5

/* Empty maps for every kind. Returns NULL on allocation failure. */
policy_docs *policy_docs_new(void);
void policy_docs_free(policy_docs *d);
/* Whether KIND is one of policy_docs_kinds. */
bool policy_docs_tracks(const char *kind);
/* Replaces every document of KIND by those of ITEMS (an array, borrowed).
 * Returns 0, -EINVAL for a kind not tracked, or -ENOMEM. */
int policy_docs_reset(policy_docs *d, const char *kind, const json_t *items);
/* Applies one change to KIND: DOC (borrowed) replaces the document of its
 * name, or removes it when DELETED. Returns 0, -EINVAL (kind not tracked, or
 * DOC has no metadata.name) or -ENOMEM. */
int policy_docs_apply(policy_docs *d, const char *kind, bool deleted, json_t *doc);
/* The name -> document map of KIND (borrowed), or NULL for a kind not tracked. */
json_t *policy_docs_get(const policy_docs *d, const char *kind);
/* A new set from the documents, as policy_set_new(). */
int policy_docs_build(const policy_docs *d, policy_set **ret_set);
