/* The current policy set of a store: rebuilt when a document that shapes it
 * (Policy, User, Group, Credential, Service) changes, and swapped atomically,
 * so a decision made after a write is acknowledged sees that write. */
#pragma once

#include "policy/policy.h"
#include "store/store.h"

typedef struct policy_source policy_source;

/* A source reading ST (borrowed; must outlive the source). Returns 0 and the
 * source in *ret (free with policy_source_free()), or -ENOMEM. */
int policy_source_new(store *st, policy_source **ret);
void policy_source_free(policy_source *src);
/* The set reflecting the store as of this call, as a new reference the
 * caller drops with policy_set_unref(). Rebuilds first when the store changed
 * the documents policies depend on. Returns 0, or a negative errno from the
 * store or -ENOMEM (the caller must then deny). */
int policy_source_get(policy_source *src, policy_set **ret_set);
