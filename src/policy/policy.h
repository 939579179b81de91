/* The policy decision point: Policy resources and their attachments compiled
 * into an immutable, indexed rule set that decides request contexts.
 *
 * Semantics (DESIGN.md, "Policies", as in Octelium): the rules of every policy
 * attached to the service, the user, the user's groups and the credential are
 * ordered by priority (-4 .. 4, lower first), deny before allow at equal
 * priority, then by policy name and rule position; the first rule whose
 * condition holds decides; nothing matching denies; any evaluation error
 * (including the cost limit of a condition and the cap on conditions
 * evaluated in one decision) denies.
 *
 * Index: each rule carries guards taken from its condition's top-level
 * conjunctions (a group, HTTP methods, a path prefix, a header value, a
 * network, an API kind): a rule whose guard fails cannot hold. For each
 * combination of service, user, groups and credential the attached rules
 * whose group guard holds are found once and cached in the set; each rule is
 * listed under the most selective fact its guard needs (policy-index.c), so a
 * decision evaluates only the rules listed under facts the request has, plus
 * those listed under none, in order. The outcome is the unindexed one, except
 * that skipped rules do not count towards the limits.
 *
 * CEL sees the leaves of `ctx` (POLICY_VAR_*) and now(). Only those leaves are
 * declared, so a misspelt field (ctx.user.nmae) is a compile error; maps
 * (attrs, headers) are indexed or selected below their leaf.
 *
 * Ownership: a policy_set is reference counted and immutable once built (its
 * combination cache is internally synchronised): any number of threads may
 * decide with it at once. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cel/cel.h"

#define POLICY_COST_LIMIT 20000u     /* CEL cost units per condition evaluation */
#define POLICY_MAX_EVALS 4096u       /* CEL conditions evaluated in one decision */
#define POLICY_MAX_RULES 256u        /* rules of one policy */
#define POLICY_MAX_GROUPS 256u       /* groups of one user in a decision */
#define POLICY_ARENA_MAX (1u << 20)  /* bytes a decision's scratch arena may hold */

/* The ctx leaves CEL sees, in activation slot order. */
typedef enum policy_var {
    POLICY_VAR_USER_NAME,
    POLICY_VAR_USER_EMAIL,
    POLICY_VAR_USER_TYPE,
    POLICY_VAR_USER_GROUPS, /* list of strings */
    POLICY_VAR_USER_ATTRS,  /* map */
    POLICY_VAR_SESSION_ID,
    POLICY_VAR_SESSION_TYPE,
    POLICY_VAR_SESSION_AUTH_METHOD,
    POLICY_VAR_SESSION_CREATED_AT, /* timestamp */
    POLICY_VAR_SESSION_EXPIRES_AT, /* timestamp */
    POLICY_VAR_SESSION_IS_BROWSER, /* bool */
    POLICY_VAR_SERVICE_NAME,
    POLICY_VAR_SERVICE_ATTRS, /* map */
    POLICY_VAR_REQUEST_IP,
    POLICY_VAR_HTTP_METHOD,
    POLICY_VAR_HTTP_PATH,
    POLICY_VAR_HTTP_QUERY, /* the raw query string, without '?' */
    POLICY_VAR_HTTP_HEADERS, /* map: lower-case name -> string */
    POLICY_VAR_HTTP_HOST,
    POLICY_VAR_HTTP_SCHEME,
    POLICY_VAR_API_VERB,
    POLICY_VAR_API_KIND,
    POLICY_VAR_API_NAME,
    POLICY_VAR_COUNT_,
} policy_var;

/* What is decided. Values are borrowed by the decision: they must stay alive
 * and unchanged while it runs. USER_NAME, USER_GROUPS and SERVICE_NAME also
 * select the attached policies. */
typedef struct policy_request {
    cel_value vars[POLICY_VAR_COUNT_];
    const char *credential; /* the credential whose policies apply, or NULL */
    int64_t now_sec;        /* now() */
    uint32_t now_nsec;
} policy_request;

/* Sets every variable to its empty value ("", [], {}, false, the epoch), no
 * credential, and now() to the current time. */
void policy_request_init(policy_request *r);
/* Sets R's now() to NOW_NS (realtime ns; policy_request_init() sets the
 * present): for a request filled once and decided again later. */
void policy_request_stamp(policy_request *r, uint64_t now_ns);
/* Fills ctx.user from a User document (name, email, type, groups, attrs);
 * values are allocated from A or borrowed from USER, which must outlive the
 * decision. Returns 0 or -ENOMEM. */
int policy_request_set_user(policy_request *r, const json_t *user, cel_arena *a);
/* Fills ctx.service from a Service document (name, attrs), as above. */
int policy_request_set_service(policy_request *r, const json_t *service, cel_arena *a);
/* policy_request_set_service() from the Service's NAME (LEN bytes, kept
 * by reference; NULL: left as it is) and spec.attrs ATTRS (or NULL),
 * looked up once by the caller. */
int policy_request_set_service_parts(policy_request *r, const char *name, size_t len, const json_t *attrs,
                                     cel_arena *a);
/* Fills ctx.session from a Session document (borrowed; must outlive the
 * decision): its id, its authMethod ("token", "oidc", or "" for anything
 * else), CREATED and EXPIRES (seconds, as the caller parsed them once), and
 * its type: "browser" (a session cookie) or "client" by BROWSER. */
void policy_request_set_session(policy_request *r, const json_t *session, int64_t created, int64_t expires,
                                bool browser);
/* Sets ctx.session's type ("browser" or "client") and isBrowser by BROWSER. */
void policy_request_set_browser(policy_request *r, bool browser);
/* Sets slot V to the string S (borrowed, NUL-terminated). */
void policy_request_set_string(policy_request *r, policy_var v, const char *s);
#define POLICY_HEADERS_MAX 64 /* distinct request headers CEL sees */

/* One request header as the HTTP layer holds it (borrowed bytes; the name in
 * lower case). */
typedef struct policy_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} policy_header;

/* Sets ctx.request.http.headers from the N headers H: credential-bearing
 * headers (authorization, cookie, proxy-authorization) and values that are
 * not UTF-8 are left out, repeated names are joined with ", ", at most
 * POLICY_HEADERS_MAX names. Values are borrowed from H or allocated from A.
 * Returns 0 or -ENOMEM. */
int policy_request_set_headers(policy_request *r, const policy_header *h, size_t n, cel_arena *a);
/* Whether the LEN bytes at S are valid UTF-8, as CEL strings must be. */
bool policy_text_valid(const char *s, size_t len);
/* Converts JSON to a CEL value in A (objects become maps with string keys,
 * integers int, reals double); 0, -E2BIG beyond 32 levels or -ENOMEM. */
int policy_value_from_json(const json_t *j, cel_arena *a, cel_value *ret);

/* The reason of a decision no rule matched. */
#define POLICY_REASON_DEFAULT_DENY "no rule matched (default deny)"

typedef struct policy_decision {
    bool allow;
    char policy[128]; /* the deciding policy ("" when no rule matched) */
    char rule[128];   /* the deciding rule's name, or "#N" (0-based) when unnamed */
    char reason[512];
} policy_decision;

typedef struct policy_set policy_set;

/* A problem found while validating: FIELD names the offending condition
 * ("spec.rules[0].condition.all[1].match"), LINE and COLUMN are 1-based in
 * its CEL text, MESSAGE says why. */
typedef struct policy_problem {
    char field[256];
    uint32_t line, column;
    char message[512];
} policy_problem;

/* Checks the CEL of every condition of a Policy document or of a Service's
 * inlinePolicies (other kinds have none). DOC must already have passed the
 * resource schema. Returns 0, -EINVAL with *PROBLEM filled (when not NULL),
 * or -ENOMEM. */
int policy_validate_document(const json_t *doc, policy_problem *problem);

/* Compiles one condition (a plugin's `when`) as a rule's match is
 * compiled: the ctx leaves and now(). Returns 0 and the program in *RET
 * (cel_program_free), -EINVAL with the line, column and message in
 * *PROBLEM (when not NULL), or -ENOMEM. */
int policy_condition_compile(const char *src, size_t len, cel_program **ret, policy_problem *problem);
/* Evaluates P on REQ with ARENA (reset by the caller) within the rules'
 * cost limit. Returns 0 and whether it holds in *RET; -EINVAL when it is
 * not a boolean (an error value), -ECANCELED past the cost, -ENOMEM. */
int policy_condition_holds(const cel_program *p, const policy_request *req, cel_arena *arena, bool *ret);

/* Builds a rule set from arrays of stored documents (each may be NULL):
 * POLICIES, USERS, GROUPS, CREDENTIALS and SERVICES. References to missing
 * policies are ignored; a rule whose CEL does not compile (stored before
 * validation existed) denies when reached. Returns 0 and a set with one
 * reference in *ret_set, or -ENOMEM / -E2BIG. */
int policy_set_new(const json_t *policies, const json_t *users, const json_t *groups, const json_t *credentials,
                   const json_t *services, policy_set **ret_set);
policy_set *policy_set_ref(policy_set *s);
/* Drops a reference; the last one frees the set. Accepts NULL. */
void policy_set_unref(policy_set *s);

/* Decides REQ with S. ARENA is scratch space for evaluation: it is reset
 * before each condition, so REQ's values must not live in it. Returns 0 with
 * the decision in *ret (an evaluation error is a deny decision, not a failure),
 * or -EINVAL when the request lacks a string method/path or groups list. */
int policy_decide(policy_set *s, const policy_request *req, cel_arena *arena, policy_decision *ret);
/* The same decision without the index or the cache: every attached rule in
 * order. The reference the index is checked against (tests, fuzzer). */
int policy_decide_unindexed(const policy_set *s, const policy_request *req, cel_arena *arena, policy_decision *ret);
