/* Compiling Policy resources into an indexed rule set, and deciding with it.
 * See policy.h for the semantics and the index. */
#include "policy/policy.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "cel/cel-parse.h"
#include "policy/policy-internal.h"

#define COMBO_SLOTS 4096u             /* cached combinations of one set (power of two) */
#define COMBO_PROBES 16u
#define COMBO_CACHE_MAX (64u << 20)   /* bytes of cached combinations of one set */

/* ---- the CEL environment: the leaves of ctx ---- */

static const char *const var_names[POLICY_VAR_COUNT_] = {
    [POLICY_VAR_USER_NAME] = "ctx.user.name",
    [POLICY_VAR_USER_EMAIL] = "ctx.user.email",
    [POLICY_VAR_USER_TYPE] = "ctx.user.type",
    [POLICY_VAR_USER_GROUPS] = "ctx.user.groups",
    [POLICY_VAR_USER_ATTRS] = "ctx.user.attrs",
    [POLICY_VAR_SESSION_ID] = "ctx.session.id",
    [POLICY_VAR_SESSION_TYPE] = "ctx.session.type",
    [POLICY_VAR_SESSION_AUTH_METHOD] = "ctx.session.authMethod",
    [POLICY_VAR_SESSION_CREATED_AT] = "ctx.session.createdAt",
    [POLICY_VAR_SESSION_EXPIRES_AT] = "ctx.session.expiresAt",
    [POLICY_VAR_SESSION_IS_BROWSER] = "ctx.session.isBrowser",
    [POLICY_VAR_SERVICE_NAME] = "ctx.service.name",
    [POLICY_VAR_SERVICE_ATTRS] = "ctx.service.attrs",
    [POLICY_VAR_REQUEST_IP] = "ctx.request.ip",
    [POLICY_VAR_HTTP_METHOD] = "ctx.request.http.method",
    [POLICY_VAR_HTTP_PATH] = "ctx.request.http.path",
    [POLICY_VAR_HTTP_QUERY] = "ctx.request.http.query",
    [POLICY_VAR_HTTP_HEADERS] = "ctx.request.http.headers",
    [POLICY_VAR_HTTP_HOST] = "ctx.request.http.host",
    [POLICY_VAR_HTTP_SCHEME] = "ctx.request.http.scheme",
    [POLICY_VAR_API_VERB] = "ctx.request.api.verb",
    [POLICY_VAR_API_KIND] = "ctx.request.api.kind",
    [POLICY_VAR_API_NAME] = "ctx.request.api.name",
};

static cel_env *the_env;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

/* Declares the ctx leaves once per process, each at the slot of its
 * policy_var. the_env stays NULL when out of memory. */
static void env_init(void)
{
    cel_env *env = cel_env_new();
    if (!env)
        return;
    for (size_t v = 0; v < POLICY_VAR_COUNT_; v++)
        if (cel_env_declare(env, var_names[v]) != (int)v) {
            cel_env_free(env);
            return;
        }
    the_env = env;
}

/* The shared environment, or NULL when it could not be created. */
static const cel_env *policy_env(void)
{
    pthread_once(&env_once, env_init);
    return the_env;
}

static cel_program *cidr_program; /* cidr(s): parses network literals exactly as conditions do */
static pthread_once_t cidr_once = PTHREAD_ONCE_INIT;

static void cidr_init(void)
{
    cel_env *env = cel_env_new();
    if (env && cel_env_declare(env, "s") == 0)
        (void)cel_compile(env, "cidr(s)", STRLEN("cidr(s)"), &cidr_program, NULL);
    cel_env_free(env);
}

/* Parses the network literal LIT with CEL's own cidr(). Returns 0, -EINVAL
 * when CEL refuses it, or -ENOMEM. */
static int cidr_literal(const cel_value *lit, cel_ipnet *ret)
{
    pthread_once(&cidr_once, cidr_init);
    if (!cidr_program)
        return -ENOMEM;
    cel_arena *a = cel_arena_new(64 * 1024);
    if (!a)
        return -ENOMEM;
    cel_activation act = {.vars = lit, .nvars = 1};
    cel_value v;
    int r = cel_eval(cidr_program, &act, a, POLICY_COST_LIMIT, &v);
    if (r == 0 && v.kind == CEL_CIDR)
        *ret = *v.ip;
    else if (r == 0)
        r = -EINVAL;
    cel_arena_free(a);
    return r;
}

/* ---- HTTP method classes (the index's second level) ---- */

static const char *const method_names[METHOD_CLASSES - 1] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
};

/* The class of method M (LEN bytes): a standard method's own, else the last. */
static unsigned method_class(const char *m, size_t len)
{
    for (unsigned i = 0; i < ELEMENTSOF(method_names); i++)
        if (strlen(method_names[i]) == len && memcmp(method_names[i], m, len) == 0)
            return i;
    return METHOD_CLASSES - 1;
}

/* ---- guards: necessary conditions read from a condition's syntax ---- */

/* Whether X is the plain selection chain spelling NAME ("ctx.user.groups"). */
static bool node_is_var(const node *x, const char *name)
{
    size_t end = strlen(name);
    while (x->kind == N_SELECT && !(x->flags & (F_OPTIONAL | F_QUOTED))) {
        size_t l = x->name_len;
        if (end < l + 1 || name[end - l - 1] != '.' || memcmp(name + end - l, x->name, l) != 0)
            return false;
        end -= l + 1;
        x = x->args[0];
    }
    return x->kind == N_IDENT && x->name_len == end && memcmp(x->name, name, end) == 0;
}

static bool node_is_string(const node *x)
{
    return x->kind == N_LITERAL && x->val.kind == CEL_STRING;
}

static bool node_is_call(const node *x, const char *name, uint32_t nargs, bool receiver)
{
    return x->kind == N_CALL && x->nargs == nargs && !!(x->flags & F_RECEIVER) == receiver &&
           strcmp(x->name, name) == 0;
}

static int guard_set_string(char **dst, size_t *dst_len, const cel_value *v)
{
    if (*dst)
        return 0; /* the first guard of a kind is kept: any of them is necessary */
    char *s = strndup(v->str, v->len);
    if (!s)
        return -ENOMEM;
    *dst = s;
    *dst_len = v->len;
    return 0;
}

static void guard_restrict_methods(guard *g, uint32_t mask)
{
    g->methods &= mask;
}

static uint32_t method_bit(const cel_value *v)
{
    return 1u << method_class(v->str, v->len);
}

/* The header name X reads (headers["n"] or headers.n), or NULL. */
static const cel_value *header_read(const node *x, cel_value *name)
{
    const char *headers = var_names[POLICY_VAR_HTTP_HEADERS];
    if (x->kind == N_INDEX && !(x->flags & F_OPTIONAL) && node_is_var(x->args[0], headers) &&
        node_is_string(x->args[1]))
        return &x->args[1]->val;
    if (x->kind == N_SELECT && !(x->flags & F_OPTIONAL) && node_is_var(x->args[0], headers)) {
        *name = cel_string(x->name, x->name_len);
        return name;
    }
    return NULL;
}

static int guard_set_header(guard *g, const cel_value *name, const cel_value *value)
{
    if (g->hname)
        return 0;
    g->hname = strndup(name->str, name->len);
    g->hvalue = strndup(value->str, value->len);
    if (!g->hname || !g->hvalue)
        return -ENOMEM;
    g->hname_len = name->len;
    g->hvalue_len = value->len;
    return 0;
}

/* Adds to G what conjunct X requires: `"g" in ctx.user.groups`,
 * `ctx.request.http.method == "M"` or `in [...]`,
 * `ctx.request.http.path.startsWith("/p")`, `ctx.request.api.kind == "K"`.
 * Top-level && is walked: CEL's && is false when either side is false, even
 * when the other is an error, so each conjunct is necessary. Returns 0 or -ENOMEM. */
static int guard_from_node(guard *g, const node *x)
{
    if (x->kind == N_AND)
        return guard_from_node(g, x->args[0]) < 0 ? -ENOMEM : guard_from_node(g, x->args[1]);
    if (node_is_call(x, "@in", 2, false)) {
        const node *a = x->args[0], *b = x->args[1];
        if (node_is_string(a) && node_is_var(b, var_names[POLICY_VAR_USER_GROUPS]))
            return guard_set_string(&g->group, &g->group_len, &a->val);
        if (node_is_var(a, var_names[POLICY_VAR_HTTP_METHOD]) && b->kind == N_LIST && !b->optmask) {
            uint32_t mask = 0;
            for (uint32_t i = 0; i < b->nargs; i++) {
                if (!node_is_string(b->args[i]))
                    return 0;
                mask |= method_bit(&b->args[i]->val);
            }
            guard_restrict_methods(g, mask);
        }
        return 0;
    }
    if (node_is_call(x, "_==_", 2, false)) {
        const node *a = x->args[0], *b = x->args[1];
        if (node_is_string(a)) {
            const node *t = a;
            a = b;
            b = t;
        }
        if (!node_is_string(b))
            return 0;
        cel_value selected;
        const cel_value *header = header_read(a, &selected);
        if (header)
            return guard_set_header(g, header, &b->val);
        if (node_is_var(a, var_names[POLICY_VAR_HTTP_METHOD]))
            guard_restrict_methods(g, method_bit(&b->val));
        else if (node_is_var(a, var_names[POLICY_VAR_API_KIND]))
            return guard_set_string(&g->kind, &g->kind_len, &b->val);
        return 0;
    }
    if (node_is_call(x, "startsWith", 2, true) && node_is_var(x->args[0], var_names[POLICY_VAR_HTTP_PATH]) &&
        node_is_string(x->args[1]))
        return guard_set_string(&g->prefix, &g->prefix_len, &x->args[1]->val);
    if (node_is_call(x, "containsIP", 2, true) && node_is_call(x->args[0], "cidr", 1, false) &&
        node_is_string(x->args[0]->args[0]) && node_is_var(x->args[1], var_names[POLICY_VAR_REQUEST_IP]) &&
        !g->has_cidr) {
        int r = cidr_literal(&x->args[0]->args[0]->val, &g->cidr);
        if (r == -ENOMEM)
            return r;
        g->has_cidr = r == 0;
    }
    return 0;
}

/* Reads the guards of the CEL text SRC, which compiled, into G. Returns 0 or -ENOMEM. */
static int guard_from_source(guard *g, const char *src, size_t len)
{
    cel_arena *mem = cel_arena_new(0);
    if (!mem)
        return -ENOMEM;
    node *root;
    char msg[128];
    uint32_t line, col;
    int r = cel_parse(src, len, mem, &root, msg, sizeof(msg), &line, &col);
    if (r == 0)
        r = guard_from_node(g, root);
    else if (r != -ENOMEM)
        r = 0; /* compiled before, so this cannot happen; no guard is always safe */
    cel_arena_free(mem);
    return r;
}

static void guard_clear(guard *g)
{
    free(g->group);
    free(g->prefix);
    free(g->kind);
    free(g->hname);
    free(g->hvalue);
}

/* ---- conditions ---- */

static void cond_clear(cond *c)
{
    for (uint32_t i = 0; i < c->n; i++)
        cond_clear(&c->kids[i]);
    free(c->kids);
    cel_program_free(c->prog);
    free(c->error);
    *c = (cond){0};
}

/* A path under construction ("spec.rules[0].condition") with room to grow. */
typedef struct field_path {
    char buf[256];
    size_t len;
} field_path;

static size_t path_push(field_path *p, const char *fmt, ...) _printf_(2, 3);
static size_t path_push(field_path *p, const char *fmt, ...)
{
    size_t saved = p->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->len, sizeof(p->buf) - p->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        p->len = MIN(p->len + (size_t)n, sizeof(p->buf) - 1);
    return saved;
}

static void path_pop(field_path *p, size_t saved)
{
    p->len = saved;
    p->buf[saved] = 0;
}

/* Compiles condition J (schema-valid) into *OUT and adds what it requires to
 * G (NULL: below `any` or `not`, where nothing is necessary). Returns 0,
 * -EINVAL with PROBLEM naming the field and CEL position, or -ENOMEM. On
 * failure *OUT holds what was built so far (cond_clear() releases it). */
static int cond_compile(const json_t *j, cond *out, guard *g, field_path *path, policy_problem *problem,
                        unsigned depth)
{
    const cel_env *env = policy_env();
    if (!env)
        return -ENOMEM;
    if (depth > 32) {
        snprintf(problem->field, sizeof(problem->field), "%s", path->buf);
        snprintf(problem->message, sizeof(problem->message), "conditions nested too deeply (the limit is 32)");
        return -EINVAL;
    }
    const json_t *v;
    if ((v = json_object_get(j, "match"))) {
        out->kind = COND_MATCH;
        cel_error e = {0};
        const char *src = json_string_value(v);
        size_t len = json_string_length(v);
        int r = cel_compile(env, src, len, &out->prog, &e);
        if (r < 0) {
            if (r == -ENOMEM)
                return r;
            size_t saved = path_push(path, ".match");
            snprintf(problem->field, sizeof(problem->field), "%s", path->buf);
            path_pop(path, saved);
            problem->line = e.line;
            problem->column = e.column;
            snprintf(problem->message, sizeof(problem->message), "%s", e.message ? e.message : "invalid CEL");
            return -EINVAL;
        }
        return g ? guard_from_source(g, src, len) : 0;
    }
    if ((v = json_object_get(j, "matchAny"))) {
        out->kind = COND_TRUE;
        return 0;
    }
    if ((v = json_object_get(j, "not"))) {
        out->kind = COND_NOT;
        out->kids = calloc(1, sizeof(cond));
        if (!out->kids)
            return -ENOMEM;
        out->n = 1;
        size_t saved = path_push(path, ".not");
        int r = cond_compile(v, &out->kids[0], NULL, path, problem, depth + 1);
        path_pop(path, saved);
        return r;
    }
    bool all = (v = json_object_get(j, "all")) != NULL;
    if (!all)
        v = json_object_get(j, "any");
    size_t n = json_array_size(v);
    out->kind = all ? COND_ALL : COND_ANY;
    out->kids = calloc(n ? n : 1, sizeof(cond));
    if (!out->kids)
        return -ENOMEM;
    out->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        size_t saved = path_push(path, ".%s[%zu]", all ? "all" : "any", i);
        int r = cond_compile(json_array_get(v, i), &out->kids[i], all ? g : NULL, path, problem, depth + 1);
        path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Checks the rules array RULES found at PATH. Returns 0, -EINVAL or -ENOMEM. */
static int validate_rules(const json_t *rules, field_path *path, policy_problem *problem)
{
    if (json_array_size(rules) > POLICY_MAX_RULES) {
        snprintf(problem->field, sizeof(problem->field), "%s", path->buf);
        snprintf(problem->message, sizeof(problem->message), "a policy has at most %u rules, this one has %zu",
                 POLICY_MAX_RULES, json_array_size(rules));
        return -EINVAL;
    }
    size_t i;
    const json_t *rule;
    json_array_foreach(rules, i, rule)
    {
        size_t saved = path_push(path, "[%zu].condition", i);
        cond c = {0};
        guard g = {.methods = METHOD_ALL};
        int r = cond_compile(json_object_get(rule, "condition"), &c, &g, path, problem, 0);
        cond_clear(&c);
        guard_clear(&g);
        path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return 0;
}

int policy_condition_compile(const char *src, size_t len, cel_program **ret, policy_problem *problem)
{
    const cel_env *env = policy_env();
    if (!env)
        return -ENOMEM;
    cel_error e = {0};
    int r = cel_compile(env, src, len, ret, &e);
    if (r < 0 && r != -ENOMEM && problem) {
        problem->line = e.line;
        problem->column = e.column;
        snprintf(problem->message, sizeof(problem->message), "%s", e.message ? e.message : "invalid CEL");
    }
    return r;
}

int policy_condition_holds(const cel_program *p, const policy_request *req, cel_arena *arena, bool *ret)
{
    cel_activation act = {.vars = req->vars, .nvars = POLICY_VAR_COUNT_, .now_sec = req->now_sec,
                          .now_nsec = req->now_nsec};
    cel_value v;
    int r = cel_eval(p, &act, arena, POLICY_COST_LIMIT, &v);
    if (r < 0)
        return r;
    if (v.kind != CEL_BOOL)
        return -EINVAL;
    *ret = v.b;
    return 0;
}

int policy_validate_document(const json_t *doc, policy_problem *problem)
{
    policy_problem scratch;
    if (!problem)
        problem = &scratch;
    *problem = (policy_problem){0};
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const json_t *spec = json_object_get(doc, "spec");
    field_path path = {.buf = "spec.rules", .len = STRLEN("spec.rules")};
    if (kind && strcmp(kind, "Policy") == 0)
        return validate_rules(json_object_get(spec, "rules"), &path, problem);
    if (!kind || (strcmp(kind, "Service") != 0 && strcmp(kind, "Enclave") != 0))
        return 0;
    size_t i;
    const json_t *ip;
    json_array_foreach(json_object_get(spec, "plugins"), i, ip)
    {
        const json_t *when = json_object_get(ip, "when");
        if (!json_is_string(when))
            continue;
        cel_program *prog = NULL;
        int r = policy_condition_compile(json_string_value(when), json_string_length(when), &prog, problem);
        cel_program_free(prog);
        if (r < 0) {
            snprintf(problem->field, sizeof(problem->field), "spec.plugins[%zu].when", i);
            return r;
        }
    }
    json_array_foreach(json_object_get(spec, "inlinePolicies"), i, ip)
    {
        path_pop(&path, 0);
        path_push(&path, "spec.inlinePolicies[%zu].rules", i);
        int r = validate_rules(json_object_get(ip, "rules"), &path, problem);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- building a set ---- */

static void target_clear(target *t)
{
    free(t->name);
    free(t->policies);
}

static void combo_free(combo *c)
{
    if (!c)
        return;
    free(c->key);
    free(c->member);
    free(c->rules);
    free(c);
}

static void set_free(policy_set *s)
{
    for (size_t i = 0; i < s->n_rules; i++) {
        cond_clear(&s->rules[i].cond);
        guard_clear(&s->rules[i].guard);
        free(s->rules[i].name);
    }
    free(s->rules);
    for (size_t i = 0; i < s->n_policies; i++) {
        free(s->policies[i].name);
        free(s->policies[i].rules);
    }
    free(s->policies);
    for (size_t k = 0; k < TARGET_KINDS; k++) {
        for (size_t i = 0; i < s->n_targets[k]; i++)
            target_clear(&s->targets[k][i]);
        free(s->targets[k]);
    }
    for (size_t i = 0; i < COMBO_SLOTS; i++)
        combo_free(atomic_load_explicit(&s->combos[i], memory_order_relaxed));
    free(s->combos);
    feature_index_clear(&s->index);
    free(s);
}

/* Grows ARRAY (of N elements of SIZE bytes, capacity *CAP) to hold one more. */
static int grow(void **array, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    void *p = reallocarray(*array, nc, size);
    if (!p)
        return -ENOMEM;
    *array = p;
    *cap = nc;
    return 0;
}

/* Adds policy NAME with RULES (a schema-valid array) to S. Rules whose CEL
 * does not compile deny when reached. Returns 0 or -ENOMEM. */
static int add_policy(policy_set *s, const char *name, const json_t *rules, size_t *policies_cap,
                      size_t *rules_cap)
{
    if (grow((void **)&s->policies, s->n_policies, policies_cap, sizeof(ppolicy)) < 0)
        return -ENOMEM;
    ppolicy *p = &s->policies[s->n_policies];
    *p = (ppolicy){.name = strdup(name), .added = (uint32_t)s->n_policies};
    if (!p->name)
        return -ENOMEM;
    s->n_policies++;
    size_t i;
    const json_t *rule;
    json_array_foreach(rules, i, rule)
    {
        if (grow((void **)&s->rules, s->n_rules, rules_cap, sizeof(prule)) < 0)
            return -ENOMEM;
        prule *r = &s->rules[s->n_rules];
        const char *rname = json_string_value(json_object_get(rule, "name"));
        char num[24];
        snprintf(num, sizeof(num), "#%zu", i);
        *r = (prule){.priority = (int8_t)json_integer_value(json_object_get(rule, "priority")),
                     .deny = strcmp(json_string_value(json_object_get(rule, "effect")) ?: "deny", "allow") != 0,
                     .policy = (uint32_t)(s->n_policies - 1),
                     .index = (uint32_t)i,
                     .name = strdup(rname ? rname : num),
                     .guard = {.methods = METHOD_ALL}};
        s->n_rules++;
        if (!r->name)
            return -ENOMEM;
        field_path path = {0};
        policy_problem problem;
        int e = cond_compile(json_object_get(rule, "condition"), &r->cond, &r->guard, &path, &problem, 0);
        if (e == -ENOMEM)
            return e;
        if (e < 0) {
            cond_clear(&r->cond);
            guard_clear(&r->guard);
            r->guard = (guard){.methods = METHOD_ALL};
            r->cond.kind = COND_BROKEN;
            char msg[1024];
            snprintf(msg, sizeof(msg), "condition%s does not compile: %u:%u: %s", problem.field, problem.line,
                     problem.column, problem.message);
            r->cond.error = strdup(msg);
            if (!r->cond.error)
                return -ENOMEM;
        }
    }
    return 0;
}

static int cmp_ppolicy_name(const void *a, const void *b)
{
    return strcmp(((const ppolicy *)a)->name, ((const ppolicy *)b)->name);
}

/* Decision order: priority, deny first, policy name, position in the policy.
 * Policies are sorted by name before this runs, so their index orders names. */
static int cmp_rule(const void *a, const void *b)
{
    const prule *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority < y->priority ? -1 : 1;
    if (x->deny != y->deny)
        return x->deny ? -1 : 1;
    if (x->policy != y->policy)
        return x->policy < y->policy ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int cmp_target(const void *a, const void *b)
{
    return strcmp(((const target *)a)->name, ((const target *)b)->name);
}

/* Index of the policy named NAME, or -1. */
static ssize_t find_policy(const policy_set *s, const char *name)
{
    size_t lo = 0, hi = s->n_policies;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->policies[mid].name, name);
        if (c == 0)
            return (ssize_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* The target of KIND named NAME, or NULL. */
static const target *find_target(const policy_set *s, target_kind kind, const char *name, size_t len)
{
    size_t lo = 0, hi = s->n_targets[kind];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *t = s->targets[kind][mid].name;
        size_t tlen = strlen(t);
        int c = memcmp(t, name, MIN(tlen, len));
        if (c == 0)
            c = tlen < len ? -1 : tlen > len;
        if (c == 0)
            return &s->targets[kind][mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Records target DOC (its spec.policies, and for a service the inline
 * policies named INLINE_PREFIX + i, already added) in S. Returns 0 or -ENOMEM. */
static int add_target(policy_set *s, target_kind kind, const json_t *doc, size_t *cap)
{
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    if (!name)
        return 0;
    const json_t *spec = json_object_get(doc, "spec");
    const json_t *names = json_object_get(spec, "policies");
    const json_t *inl = kind == TARGET_SERVICE ? json_object_get(spec, "inlinePolicies") : NULL;
    size_t n = json_array_size(names) + json_array_size(inl);
    if (grow((void **)&s->targets[kind], s->n_targets[kind], cap, sizeof(target)) < 0)
        return -ENOMEM;
    target *t = &s->targets[kind][s->n_targets[kind]];
    *t = (target){.name = strdup(name), .policies = calloc(n ? n : 1, sizeof(uint32_t))};
    s->n_targets[kind]++;
    if (!t->name || !t->policies)
        return -ENOMEM;
    size_t i;
    const json_t *v;
    json_array_foreach(names, i, v)
    {
        ssize_t p = json_is_string(v) ? find_policy(s, json_string_value(v)) : -1;
        if (p >= 0)
            t->policies[t->n++] = (uint32_t)p;
    }
    json_array_foreach(inl, i, v)
    {
        char pname[256];
        policy_inline_name(name, json_string_value(json_object_get(v, "name")), i, pname, sizeof(pname));
        ssize_t p = find_policy(s, pname);
        if (p >= 0)
            t->policies[t->n++] = (uint32_t)p;
    }
    return 0;
}

void policy_inline_name(const char *service, const char *name, size_t index, char *out, size_t size)
{
    if (name)
        snprintf(out, size, "%s/%s", service, name);
    else
        snprintf(out, size, "%s/#%zu", service, index);
}

int policy_set_new(const json_t *policies, const json_t *users, const json_t *groups, const json_t *credentials,
                   const json_t *services, policy_set **ret_set)
{
    policy_set *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    atomic_init(&s->refs, 1);
    s->combos = calloc(COMBO_SLOTS, sizeof(*s->combos));
    int r = s->combos ? 0 : -ENOMEM;
    size_t pcap = 0, rcap = 0;
    size_t i;
    const json_t *doc;
    json_array_foreach(policies, i, doc)
    {
        if (r < 0)
            break;
        const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
        if (name)
            r = add_policy(s, name, json_object_get(json_object_get(doc, "spec"), "rules"), &pcap, &rcap);
    }
    json_array_foreach(services, i, doc)
    {
        const char *svc = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
        size_t j;
        const json_t *ip;
        json_array_foreach(json_object_get(json_object_get(doc, "spec"), "inlinePolicies"), j, ip)
        {
            if (r < 0 || !svc)
                break;
            char pname[256];
            policy_inline_name(svc, json_string_value(json_object_get(ip, "name")), j, pname, sizeof(pname));
            r = add_policy(s, pname, json_object_get(ip, "rules"), &pcap, &rcap);
        }
    }
    if (r < 0) {
        set_free(s);
        return r;
    }

    /* policies sorted by name (rules renumbered), then all rules in decision order */
    uint32_t *old_to_new = calloc(s->n_policies ? s->n_policies : 1, sizeof(uint32_t));
    if (!old_to_new) {
        set_free(s);
        return -ENOMEM;
    }
    if (s->n_policies > 1)
        qsort(s->policies, s->n_policies, sizeof(ppolicy), cmp_ppolicy_name);
    for (size_t p = 0; p < s->n_policies; p++)
        old_to_new[s->policies[p].added] = (uint32_t)p;
    for (size_t k = 0; k < s->n_rules; k++)
        s->rules[k].policy = old_to_new[s->rules[k].policy];
    free(old_to_new);
    if (s->n_rules > 1)
        qsort(s->rules, s->n_rules, sizeof(prule), cmp_rule);
    for (size_t k = 0; k < s->n_rules && r == 0; k++) {
        ppolicy *p = &s->policies[s->rules[k].policy];
        uint32_t *nr = reallocarray(p->rules, p->n_rules + 1, sizeof(uint32_t));
        if (!nr)
            r = -ENOMEM;
        else {
            p->rules = nr;
            p->rules[p->n_rules++] = (uint32_t)k;
        }
    }

    if (r == 0)
        r = feature_index_build(s);
    const json_t *lists[TARGET_KINDS] = {
        [TARGET_SERVICE] = services, [TARGET_USER] = users, [TARGET_GROUP] = groups,
        [TARGET_CREDENTIAL] = credentials,
    };
    for (size_t k = 0; k < TARGET_KINDS && r == 0; k++) {
        size_t cap = 0;
        json_array_foreach(lists[k], i, doc)
        {
            r = add_target(s, (target_kind)k, doc, &cap);
            if (r < 0)
                break;
        }
        if (s->n_targets[k] > 1)
            qsort(s->targets[k], s->n_targets[k], sizeof(target), cmp_target);
    }
    if (r < 0) {
        set_free(s);
        return r;
    }
    *ret_set = s;
    return 0;
}

policy_set *policy_set_ref(policy_set *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void policy_set_unref(policy_set *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        set_free(s);
}

/* ---- combinations: the rules that can apply to one principal and service ---- */

static bool request_valid(const policy_request *req)
{
    const cel_value *v = req->vars;
    if (v[POLICY_VAR_HTTP_METHOD].kind != CEL_STRING || v[POLICY_VAR_HTTP_PATH].kind != CEL_STRING ||
        v[POLICY_VAR_API_KIND].kind != CEL_STRING || v[POLICY_VAR_USER_NAME].kind != CEL_STRING ||
        v[POLICY_VAR_SERVICE_NAME].kind != CEL_STRING || v[POLICY_VAR_USER_GROUPS].kind != CEL_LIST)
        return false;
    const cel_list *g = v[POLICY_VAR_USER_GROUPS].list;
    if (g->len > POLICY_MAX_GROUPS)
        return false;
    for (size_t i = 0; i < g->len; i++)
        if (g->items[i].kind != CEL_STRING)
            return false;
    return true;
}

/* Appends component S (LEN bytes) to the key at P with its length first, so
 * no two different combinations share a key. Returns the end. */
static char *key_put(char *p, const char *s, uint32_t len)
{
    memcpy(p, &len, sizeof(len));
    memcpy(p + sizeof(len), s, len);
    return p + sizeof(len) + len;
}

#define COMBO_KEY_INLINE 512 /* a key this long is made on the stack (every request) */

/* The combination key of REQ: service, user, credential and groups, of
 * *ret_len bytes, into BUF (COMBO_KEY_INLINE bytes) when it fits, else into
 * a new string. NULL on OOM. */
static char *combo_key(const policy_request *req, char *buf, size_t *ret_len)
{
    const cel_value *v = req->vars;
    const cel_list *g = v[POLICY_VAR_USER_GROUPS].list;
    const char *cred = req->credential ? req->credential : "";
    size_t cred_len = strlen(cred);
    if (cred_len > UINT32_MAX)
        return NULL;
    size_t len = v[POLICY_VAR_SERVICE_NAME].len + v[POLICY_VAR_USER_NAME].len + cred_len + 3 * sizeof(uint32_t);
    for (size_t i = 0; i < g->len; i++)
        len += g->items[i].len + sizeof(uint32_t);
    char *key = len <= COMBO_KEY_INLINE ? buf : malloc(len), *p = key;
    if (!key)
        return NULL;
    p = key_put(p, v[POLICY_VAR_SERVICE_NAME].str, v[POLICY_VAR_SERVICE_NAME].len);
    p = key_put(p, v[POLICY_VAR_USER_NAME].str, v[POLICY_VAR_USER_NAME].len);
    p = key_put(p, cred, (uint32_t)cred_len);
    for (size_t i = 0; i < g->len; i++)
        p = key_put(p, g->items[i].str, g->items[i].len);
    *ret_len = len;
    return key;
}

static uint64_t hash_bytes(const char *p, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

/* Marks in SEEN (one byte per policy) and appends to OUT the policies attached
 * to target NAME of KIND; returns the new count. */
static size_t collect_target(const policy_set *s, target_kind kind, const char *name, size_t len, uint8_t *seen,
                             uint32_t *out, size_t n)
{
    const target *t = len ? find_target(s, kind, name, len) : NULL;
    for (size_t i = 0; t && i < t->n; i++)
        if (!seen[t->policies[i]]) {
            seen[t->policies[i]] = 1;
            out[n++] = t->policies[i];
        }
    return n;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The rules (indexes into s->rules, in decision order) of every policy
 * attached to REQ's service, user, groups and credential, in a new array of
 * *ret_n entries. With GUARDED, rules needing a group REQ's user lacks are left
 * out. Returns NULL on OOM. */
static uint32_t *attached_rules(const policy_set *s, const policy_request *req, bool guarded, size_t *ret_n)
{
    const cel_value *v = req->vars;
    const cel_list *g = v[POLICY_VAR_USER_GROUPS].list;
    _cleanup_free_ uint8_t *seen = calloc(s->n_policies + 1, 1);
    _cleanup_free_ uint32_t *pols = calloc(s->n_policies + 1, sizeof(uint32_t));
    if (!seen || !pols)
        return NULL;
    size_t np = 0;
    np = collect_target(s, TARGET_SERVICE, v[POLICY_VAR_SERVICE_NAME].str, v[POLICY_VAR_SERVICE_NAME].len, seen,
                        pols, np);
    np = collect_target(s, TARGET_USER, v[POLICY_VAR_USER_NAME].str, v[POLICY_VAR_USER_NAME].len, seen, pols, np);
    for (size_t i = 0; i < g->len; i++)
        np = collect_target(s, TARGET_GROUP, g->items[i].str, g->items[i].len, seen, pols, np);
    if (req->credential)
        np = collect_target(s, TARGET_CREDENTIAL, req->credential, strlen(req->credential), seen, pols, np);
    size_t total = 0;
    for (size_t i = 0; i < np; i++)
        total += s->policies[pols[i]].n_rules;
    uint32_t *rules = calloc(total + 1, sizeof(uint32_t));
    if (!rules)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < np; i++) {
        const ppolicy *p = &s->policies[pols[i]];
        for (size_t k = 0; k < p->n_rules; k++) {
            const guard *gd = &s->rules[p->rules[k]].guard;
            if (guarded && gd->group) {
                bool member = false;
                for (size_t j = 0; j < g->len && !member; j++)
                    member = g->items[j].len == gd->group_len && memcmp(g->items[j].str, gd->group, gd->group_len) == 0;
                if (!member)
                    continue;
            }
            rules[n++] = p->rules[k];
        }
    }
    if (n > 1)
        qsort(rules, n, sizeof(uint32_t), cmp_u32);
    *ret_n = n;
    return rules;
}

/* Builds the combination of REQ (taking KEY): a bit per rule of the set that
 * is attached and admitted by its group guard, and those of them listed under
 * no feature, per method class. NULL on OOM. */
static combo *combo_build(const policy_set *s, const policy_request *req, char *key, size_t key_len, uint64_t hash)
{
    size_t n;
    _cleanup_free_ uint32_t *rules = attached_rules(s, req, true, &n);
    if (!rules) {
        free(key);
        return NULL;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (s->rules[rules[i]].feature == NO_FEATURE)
            total += (size_t)__builtin_popcount(s->rules[rules[i]].guard.methods);
    size_t member_bytes = s->n_rules / 8 + 1;
    combo *c = calloc(1, sizeof(*c));
    uint32_t *all = calloc(total + 1, sizeof(uint32_t));
    uint8_t *member = calloc(member_bytes, 1);
    if (!c || !all || !member) {
        free(c);
        free(all);
        free(member);
        free(key);
        return NULL;
    }
    *c = (combo){.hash = hash, .key = key, .key_len = key_len, .member = member, .rules = all,
                 .bytes = sizeof(*c) + key_len + member_bytes + (total + 1) * sizeof(uint32_t)};
    for (size_t i = 0; i < n; i++)
        member[rules[i] / 8] |= (uint8_t)(1u << (rules[i] % 8));
    size_t at = 0;
    for (unsigned m = 0; m < METHOD_CLASSES; m++) {
        c->lists[m] = all + at;
        for (size_t i = 0; i < n; i++) {
            const prule *r = &s->rules[rules[i]];
            if (r->feature == NO_FEATURE && (r->guard.methods & (1u << m)))
                all[at++] = rules[i];
        }
        c->lens[m] = (uint32_t)(all + at - c->lists[m]);
    }
    return c;
}

/* combo_build() with KEY, made by combo_key() into BUF or the heap (taken
 * either way). */
static combo *combo_build_keyed(const policy_set *s, const policy_request *req, char *key, const char *buf,
                                size_t key_len, uint64_t hash)
{
    if (key == buf && (key = malloc(key_len)))
        memcpy(key, buf, key_len);
    return key ? combo_build(s, req, key, key_len, hash) : NULL;
}

/* The combination of REQ from S's cache, built and cached on first use.
 * Returns it, with *ret_owned set when it could not be cached (the caller
 * frees it with combo_free()); NULL on OOM. */
static combo *combo_get(policy_set *s, const policy_request *req, bool *ret_owned)
{
    size_t key_len;
    char buf[COMBO_KEY_INLINE];
    char *key = combo_key(req, buf, &key_len);
    if (!key)
        return NULL;
    uint64_t h = hash_bytes(key, key_len);
    combo *fresh = NULL;
    for (unsigned probe = 0; probe < COMBO_PROBES; probe++) {
        _Atomic(combo *) *slot = &s->combos[(h + probe) & (COMBO_SLOTS - 1)];
        combo *c = atomic_load_explicit(slot, memory_order_acquire);
        if (!c) {
            if (!fresh) {
                fresh = combo_build_keyed(s, req, key, buf, key_len, h);
                key = NULL;
                if (!fresh)
                    return NULL;
            }
            size_t used = atomic_fetch_add_explicit(&s->cached_bytes, fresh->bytes, memory_order_relaxed);
            if (used + fresh->bytes > COMBO_CACHE_MAX) {
                atomic_fetch_sub_explicit(&s->cached_bytes, fresh->bytes, memory_order_relaxed);
                break; /* the cache is full: decide uncached */
            }
            combo *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(slot, &expected, fresh, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                *ret_owned = false;
                return fresh;
            }
            atomic_fetch_sub_explicit(&s->cached_bytes, fresh->bytes, memory_order_relaxed);
            c = expected; /* another thread filled the slot first */
        }
        if (c->hash == h && c->key_len == key_len && memcmp(c->key, fresh ? fresh->key : key, key_len) == 0) {
            combo_free(fresh);
            if (key != buf)
                free(key);
            *ret_owned = false;
            return c;
        }
    }
    if (!fresh) {
        fresh = combo_build_keyed(s, req, key, buf, key_len, h);
        if (!fresh)
            return NULL;
    }
    *ret_owned = true;
    return fresh;
}

/* ---- evaluation ---- */

/* Evaluates condition C. Returns 1 (holds), 0 (does not), or -1 with the
 * error in ERRBUF. `all` is false when any part is false, even if another
 * erred (and `any` true when any part is true), as CEL's && and ||: the
 * outcome does not depend on the order of parts, which the index relies on. */
static int cond_eval(const cond *c, const cel_activation *act, cel_arena *arena, unsigned *evals, char *errbuf,
                     size_t errsize)
{
    switch (c->kind) {
    case COND_TRUE:
        return 1;
    case COND_BROKEN:
        snprintf(errbuf, errsize, "%s", c->error);
        return -1;
    case COND_MATCH: {
        if (++*evals > POLICY_MAX_EVALS) {
            snprintf(errbuf, errsize, "more than %u conditions were evaluated in one decision", POLICY_MAX_EVALS);
            return -1;
        }
        cel_arena_reset(arena);
        cel_value v;
        int r = cel_eval(c->prog, act, arena, POLICY_COST_LIMIT, &v);
        if (r == -ECANCELED) {
            snprintf(errbuf, errsize, "the cost limit (%u) was exceeded", POLICY_COST_LIMIT);
            return -1;
        }
        if (r < 0) {
            snprintf(errbuf, errsize, "evaluation ran out of memory");
            return -1;
        }
        if (v.kind == CEL_BOOL)
            return v.b ? 1 : 0;
        if (v.kind == CEL_ERROR)
            snprintf(errbuf, errsize, "%u:%u: %s", v.err->line, v.err->column, v.err->message);
        else
            snprintf(errbuf, errsize, "the condition is a %s, not a bool", cel_kind_name((cel_kind)v.kind));
        return -1;
    }
    case COND_NOT: {
        int r = cond_eval(&c->kids[0], act, arena, evals, errbuf, errsize);
        return r < 0 ? r : !r;
    }
    case COND_ALL:
    case COND_ANY: {
        int decisive = c->kind == COND_ANY, failed = 0;
        char scratch[128]; /* later errors: the first one is reported */
        for (uint32_t i = 0; i < c->n; i++) {
            int r = cond_eval(&c->kids[i], act, arena, evals, failed ? scratch : errbuf,
                              failed ? sizeof(scratch) : errsize);
            if (r == decisive)
                return r;
            if (r < 0)
                failed = 1;
        }
        return failed ? -1 : !decisive;
    }
    }
    return -1;
}

/* Appends S at *AT, cut to leave room for the terminator before END, and
 * terminates: snprintf's "%s" without its format parsing. */
static void put_text(char **at, char *end, const char *s)
{
    size_t n = MIN(strlen(s), (size_t)(end - *at) - 1);
    memcpy(*at, s, n);
    *at += n;
    **at = 0;
}

/* Fills *RET for rule R of S given its evaluation result RES (1 or -1).
 * Decisions are made on every proxied request: the usual case is written
 * without printf. */
static void decide_rule(const policy_set *s, const prule *r, int res, const char *error, policy_decision *ret)
{
    const char *pname = s->policies[r->policy].name;
    char *at = ret->policy;
    put_text(&at, ret->policy + sizeof(ret->policy), pname);
    at = ret->rule;
    put_text(&at, ret->rule + sizeof(ret->rule), r->name);
    if (res < 0) {
        ret->allow = false;
        snprintf(ret->reason, sizeof(ret->reason), "rule %s of policy %s could not be evaluated (denied): %s",
                 r->name, pname, error);
        return;
    }
    ret->allow = !r->deny;
    /* "rule R of policy P (deny|allow, priority N) matched" */
    char priority[8], *digit = priority + sizeof(priority);
    unsigned magnitude = r->priority < 0 ? (unsigned)-r->priority : (unsigned)r->priority;
    *--digit = 0;
    do
        *--digit = (char)('0' + magnitude % 10);
    while (magnitude /= 10);
    if (r->priority < 0)
        *--digit = '-';
    char *end = ret->reason + sizeof(ret->reason);
    at = ret->reason;
    put_text(&at, end, "rule ");
    put_text(&at, end, r->name);
    put_text(&at, end, " of policy ");
    put_text(&at, end, pname);
    put_text(&at, end, r->deny ? " (deny, priority " : " (allow, priority ");
    put_text(&at, end, digit);
    put_text(&at, end, ") matched");
}

static void decide_default(policy_decision *ret)
{
    *ret = (policy_decision){.allow = false};
    snprintf(ret->reason, sizeof(ret->reason), POLICY_REASON_DEFAULT_DENY);
}

static bool guard_admits(const guard *g, const cel_value *vars)
{
    const cel_value *path = &vars[POLICY_VAR_HTTP_PATH], *kind = &vars[POLICY_VAR_API_KIND];
    if (g->prefix && (path->len < g->prefix_len || memcmp(path->str, g->prefix, g->prefix_len) != 0))
        return false;
    if (g->kind && (kind->len != g->kind_len || memcmp(kind->str, g->kind, g->kind_len) != 0))
        return false;
    return true;
}

/* Evaluates rules of S for REQ in order (indexes in RULES) into *D; true
 * when one decided. */
static bool decide_rules(const policy_set *s, const uint32_t *rules, size_t n, const policy_request *req,
                         bool check_guards, cel_arena *arena, unsigned *evals, policy_decision *d)
{
    const cel_activation act = {.vars = req->vars, .nvars = POLICY_VAR_COUNT_, .now_sec = req->now_sec,
                                .now_nsec = req->now_nsec};
    char error[320];
    for (size_t i = 0; i < n; i++) {
        const prule *r = &s->rules[rules[i]];
        if (check_guards && !guard_admits(&r->guard, req->vars))
            continue;
        int res = cond_eval(&r->cond, &act, arena, evals, error, sizeof(error));
        if (res != 0) {
            decide_rule(s, r, res, error, d);
            return true;
        }
    }
    return false;
}

static bool combo_has(const combo *c, uint32_t r)
{
    return c->member[r / 8] & (1u << (r % 8));
}

/* Sorts the small array A of N rule indexes (insertion sort: N is the count
 * of candidates a request's features list, usually a handful). */
static void sort_small(uint32_t *a, size_t n)
{
    if (n > 64) {
        qsort(a, n, sizeof(uint32_t), cmp_u32);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        uint32_t v = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] > v; j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

#define MATCH_FEATURES_MAX 256u
#define MATCH_CANDIDATES_MAX 1024u

int policy_decide(policy_set *s, const policy_request *req, cel_arena *arena, policy_decision *ret)
{
    if (!request_valid(req))
        return -EINVAL;
    uint32_t features[MATCH_FEATURES_MAX];
    ssize_t nf = feature_index_match(&s->index, req, features, ELEMENTSOF(features));
    if (nf < 0)
        return policy_decide_unindexed(s, req, arena, ret); /* more facts than the index handles at once */
    bool owned;
    combo *c = combo_get(s, req, &owned);
    if (!c)
        return -ENOMEM;
    const cel_value *method = &req->vars[POLICY_VAR_HTTP_METHOD];
    unsigned m = method_class(method->str, method->len);
    uint32_t mbit = 1u << m;

    /* the member rules listed under the request's features, in decision order */
    uint32_t cand[MATCH_CANDIDATES_MAX];
    size_t nc = 0;
    bool overflow = false;
    for (ssize_t i = 0; i < nf && !overflow; i++) {
        const feature *f = &s->index.features[features[i]];
        for (size_t k = 0; k < f->n_rules; k++) {
            uint32_t r = f->rules[k];
            if (!combo_has(c, r) || !(s->rules[r].guard.methods & mbit))
                continue;
            if (nc == ELEMENTSOF(cand)) {
                overflow = true;
                break;
            }
            cand[nc++] = r;
        }
    }
    policy_decision d;
    decide_default(&d);
    int e = 0;
    if (overflow)
        e = policy_decide_unindexed(s, req, arena, &d);
    else {
        sort_small(cand, nc);
        unsigned evals = 0;
        /* merge with the rules listed under no feature */
        const uint32_t *always = c->lists[m];
        size_t na = c->lens[m], ia = 0, ic = 0;
        while (ia < na || ic < nc) {
            size_t run = 0;
            const uint32_t *from;
            if (ic == nc || (ia < na && always[ia] < cand[ic])) {
                from = always + ia;
                while (ia + run < na && (ic == nc || always[ia + run] < cand[ic]))
                    run++;
                ia += run;
            } else {
                from = cand + ic;
                while (ic + run < nc && (ia == na || cand[ic + run] < always[ia]))
                    run++;
                ic += run;
            }
            if (decide_rules(s, from, run, req, true, arena, &evals, &d))
                break;
        }
    }
    if (owned)
        combo_free(c);
    if (e < 0)
        return e;
    *ret = d;
    return 0;
}

int policy_decide_unindexed(const policy_set *s, const policy_request *req, cel_arena *arena, policy_decision *ret)
{
    if (!request_valid(req))
        return -EINVAL;
    size_t n;
    _cleanup_free_ uint32_t *rules = attached_rules(s, req, false, &n);
    if (!rules)
        return -ENOMEM;
    policy_decision d;
    decide_default(&d);
    unsigned evals = 0;
    decide_rules(s, rules, n, req, false, arena, &evals, &d);
    *ret = d;
    return 0;
}
