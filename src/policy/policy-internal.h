/* The structures of a compiled policy set, shared by policy.c and its tests. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cel/cel.h"
#include "policy/policy.h"

/* HTTP method classes: GET HEAD POST PUT PATCH DELETE OPTIONS CONNECT TRACE, other. */
#define METHOD_CLASSES 10u
#define METHOD_ALL ((1u << METHOD_CLASSES) - 1)

typedef enum cond_kind {
    COND_MATCH,  /* prog */
    COND_ALL,    /* kids[0..n) */
    COND_ANY,
    COND_NOT,    /* kids[0] */
    COND_TRUE,   /* matchAny */
    COND_BROKEN, /* did not compile: error says why; evaluating it is an error */
} cond_kind;

typedef struct cond cond;
struct cond {
    cond_kind kind;
    uint32_t n;
    cond *kids;
    cel_program *prog;
    char *error;
};

/* What a rule's condition requires, read from its syntax: a request that
 * fails any part of it cannot satisfy the condition. */
typedef struct guard {
    uint32_t methods; /* bit per method class the request may have (METHOD_ALL: any) */
    char *group;      /* a group the user must be in, or NULL */
    size_t group_len;
    char *prefix;     /* a prefix the path must have, or NULL */
    size_t prefix_len;
    char *kind;       /* the API kind the request must name, or NULL */
    size_t kind_len;
    char *hname;      /* headers[hname] == hvalue, or NULL */
    size_t hname_len;
    char *hvalue;
    size_t hvalue_len;
    bool has_cidr;    /* cidr(...).containsIP(ctx.request.ip) */
    cel_ipnet cidr;
} guard;

typedef struct prule {
    int8_t priority;
    bool deny;
    uint32_t policy; /* index in policy_set.policies */
    uint32_t index;  /* position in its policy */
    char *name;
    cond cond;
    guard guard;
    uint32_t feature;     /* the index feature the rule is listed under, or NO_FEATURE */
    uint32_t feature_alt; /* a second one (header absent), or NO_FEATURE */
} prule;

#define NO_FEATURE UINT32_MAX

/* A fact about a request that a rule's guard needs ("the path starts with
 * /a", "header x is y", "the address is in 10.0.0.0/8"), and the rules
 * listed under it, in decision order. */
typedef struct feature {
    char *key; /* a kind byte and the literal: see policy-index.c */
    size_t key_len;
    uint64_t hash;
    uint32_t *rules;
    size_t n_rules;
} feature;

typedef struct net_shape {
    uint8_t family, prefix;
} net_shape;

/* The features of a set, looked up by hash, and what must be computed from
 * a request to find the ones it has. */
typedef struct feature_index {
    feature *features;
    size_t n;
    uint32_t *slots; /* open addressing: feature id + 1, 0 when empty */
    size_t mask;
    size_t *prefix_lens; /* distinct lengths of path prefixes, ascending */
    size_t n_prefix_lens;
    feature **header_names; /* one feature per distinct header name: its absent feature */
    size_t n_header_names;
    net_shape *nets; /* distinct families and prefix lengths of networks */
    size_t n_nets;
    uint32_t *cidr_features; /* every network feature (for an unparsable address) */
    size_t n_cidr_features;
    bool kinds;
} feature_index;

typedef struct ppolicy {
    char *name;
    uint32_t added;  /* position before sorting by name (used while building) */
    uint32_t *rules; /* indexes into policy_set.rules, in decision order */
    size_t n_rules;
} ppolicy;

typedef enum target_kind {
    TARGET_SERVICE,
    TARGET_USER,
    TARGET_GROUP,
    TARGET_CREDENTIAL,
    TARGET_KINDS,
} target_kind;

/* A document policies attach to, and the policies attached. */
typedef struct target {
    char *name;
    uint32_t *policies;
    size_t n;
} target;

/* The rules that can apply to one combination of service, user, credential
 * and groups, per method class, in decision order. */
typedef struct combo {
    uint64_t hash;
    char *key;
    size_t key_len;
    uint8_t *member;  /* bit per rule of the set: attached and admitted by its group guard */
    uint32_t *rules;  /* backs the lists */
    uint32_t *lists[METHOD_CLASSES]; /* member rules listed under no feature, per method class */
    uint32_t lens[METHOD_CLASSES];
    size_t bytes;
} combo;

struct policy_set {
    _Atomic size_t refs;
    prule *rules; /* all rules in decision order */
    size_t n_rules;
    ppolicy *policies; /* sorted by name */
    size_t n_policies;
    target *targets[TARGET_KINDS]; /* each sorted by name */
    size_t n_targets[TARGET_KINDS];
    feature_index index;
    _Atomic(combo *) *combos; /* COMBO_SLOTS slots, filled once each */
    _Atomic size_t cached_bytes;
};

/* Lists every rule of S under its most selective feature (rule->feature)
 * and fills s->index. Returns 0 or -ENOMEM. */
int feature_index_build(policy_set *s);
void feature_index_clear(feature_index *fi);
/* Writes to OUT (room for CAP) the ids of the features REQ has. Returns their
 * number, or -E2BIG when there are more than CAP (decide unindexed then). */
ssize_t feature_index_match(const feature_index *fi, const policy_request *req, uint32_t *out, size_t cap);

/* The name a Service's inline policy gets in a set: "<service>/<name>", or
 * "<service>/#<index>" when unnamed. */
void policy_inline_name(const char *service, const char *name, size_t index, char *out, size_t size);
