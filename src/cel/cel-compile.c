/* Environments and compilation: parses, expands macros (has, all, exists,
 * exists_one, map, filter, transformList, transformMap, optMap, optFlatMap,
 * cel.bind), resolves identifiers to activation slots, locals or type
 * constants, binds calls to builtins, folds constant list and map literals and
 * precompiles constant regular expressions. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cel/cel-parse.h"

#define PROGRAM_MEM_MAX (64u * 1024u * 1024u)

struct cel_env {
    char **names;
    size_t n, cap;
    char *container;
    bool lenient;
};

cel_env *cel_env_new(void)
{
    return calloc(1, sizeof(cel_env));
}

void cel_env_free(cel_env *env)
{
    if (!env)
        return;
    for (size_t i = 0; i < env->n; i++)
        free(env->names[i]);
    free(env->names);
    free(env->container);
    free(env);
}

/* True for "ident(.ident)*". */
static bool valid_qualified_name(const char *s)
{
    bool start = true;
    if (!*s || strlen(s) > 1024)
        return false;
    for (; *s; s++) {
        char c = *s;
        if (c == '.') {
            if (start)
                return false;
            start = true;
            continue;
        }
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(c >= '0' && c <= '9' && !start))
            return false;
        start = false;
    }
    return !start;
}

int cel_env_lookup(const cel_env *env, const char *name)
{
    for (size_t i = 0; i < env->n; i++)
        if (!strcmp(env->names[i], name))
            return (int)i;
    return -ENOENT;
}

int cel_env_declare(cel_env *env, const char *name)
{
    if (!valid_qualified_name(name))
        return -EINVAL;
    if (cel_env_lookup(env, name) >= 0)
        return -EEXIST;
    if (env->n >= 65536)
        return -E2BIG;
    if (env->n == env->cap) {
        size_t cap = env->cap ? env->cap * 2 : 8;
        char **nn = realloc(env->names, cap * sizeof(char *));
        if (!nn)
            return -ENOMEM;
        env->names = nn;
        env->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    env->names[env->n] = copy;
    return (int)env->n++;
}

int cel_env_set_container(cel_env *env, const char *container)
{
    if (container && *container && !valid_qualified_name(container))
        return -EINVAL;
    char *copy = NULL;
    if (container && *container && !(copy = strdup(container)))
        return -ENOMEM;
    free(env->container);
    env->container = copy;
    return 0;
}

void cel_env_set_lenient(cel_env *env, bool lenient)
{
    env->lenient = lenient;
}

/* ---- resolver ---- */

typedef struct scope_var {
    const char *name;
    int32_t slot;
} scope_var;

typedef struct resolver {
    const cel_env *env;
    cel_program *prog;
    scope_var *scope;   /* innermost last */
    size_t nscope, scope_cap;
    int error;
    char *msg;
    size_t msg_size;
    uint32_t err_line, err_col;
} resolver;

/* Records the first resolution error at AT; later ones are ignored. */
static void _printf_(4, 5) rfail(resolver *r, int error, const node *at, const char *fmt, ...)
{
    if (r->error)
        return;
    r->error = error;
    r->err_line = at->line;
    r->err_col = at->col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, r->msg_size, fmt, ap);
    va_end(ap);
}

static const char *const type_names[] = {
    "bool", "int", "uint", "double", "string", "bytes", "list", "map", "null_type", "type",
    "optional_type", "net.IP", "net.CIDR", "google.protobuf.Timestamp", "google.protobuf.Duration",
};

/* Brings NAME into scope as a new local slot; returns the slot or -ENOMEM. */
static int push_local(resolver *r, const node *at, const char *name)
{
    if (r->nscope == r->scope_cap) {
        size_t cap = r->scope_cap ? r->scope_cap * 2 : 8;
        scope_var *ns = realloc(r->scope, cap * sizeof(scope_var));
        if (!ns) {
            rfail(r, -ENOMEM, at, "out of memory");
            return -ENOMEM;
        }
        r->scope = ns;
        r->scope_cap = cap;
    }
    int32_t slot = (int32_t)r->prog->nlocals++;
    r->scope[r->nscope++] = (scope_var){name, slot};
    return slot;
}

static int find_local(const resolver *r, const char *name)
{
    for (size_t i = r->nscope; i-- > 0;)
        if (!strcmp(r->scope[i].name, name))
            return r->scope[i].slot;
    return -1;
}

/* Slot of NAME as seen from the container (most specific candidate first), or -1.
 * A leading dot means the root namespace. */
static int find_var(const resolver *r, const char *name)
{
    if (name[0] == '.')
        return cel_env_lookup(r->env, name + 1) >= 0 ? cel_env_lookup(r->env, name + 1) : -1;
    const char *c = r->env->container;
    if (c) {
        char buf[2048];
        size_t clen = strlen(c);
        for (;;) {
            if ((size_t)snprintf(buf, sizeof(buf), "%.*s.%s", (int)clen, c, name) < sizeof(buf)) {
                int s = cel_env_lookup(r->env, buf);
                if (s >= 0)
                    return s;
            }
            while (clen > 0 && c[clen - 1] != '.')
                clen--;
            if (clen == 0)
                break;
            clen--; /* drop the dot */
        }
    }
    int s = cel_env_lookup(r->env, name);
    return s >= 0 ? s : -1;
}

static const char *find_type_name(const char *name)
{
    if (name[0] == '.')
        name++;
    for (size_t i = 0; i < ELEMENTSOF(type_names); i++)
        if (!strcmp(type_names[i], name))
            return type_names[i];
    return NULL;
}

/* A resolved node at AT's position with NARGS slots, in the program's memory; NULL on OOM. */
static node *new_node(resolver *r, node_kind kind, const node *at, size_t nargs)
{
    node *x = cel_arena_alloc(r->prog->mem, sizeof(node) + nargs * sizeof(node *));
    if (!x) {
        rfail(r, -ENOMEM, at, "out of memory");
        return NULL;
    }
    *x = (node){.kind = kind, .line = at->line, .col = at->col, .nargs = (uint32_t)nargs, .slot = -1,
                .slot2 = -1};
    x->args = (node **)(x + 1);
    return x;
}

/* Collects the dotted name of a chain of plain selects rooted at an identifier
 * ("a.b.c") into BUF; returns the number of segments or 0 when X is not such a chain. */
static size_t chain_name(const node *x, char *buf, size_t size)
{
    const node *segs[CEL_MAX_NESTING + 2];
    size_t n = 0;
    while (x->kind == N_SELECT && !(x->flags & (F_OPTIONAL | F_QUOTED))) {
        if (n == ELEMENTSOF(segs) - 1)
            return 0;
        segs[n++] = x;
        x = x->args[0];
    }
    if (x->kind != N_IDENT)
        return 0;
    segs[n++] = x;
    size_t len = 0;
    for (size_t i = n; i-- > 0;) {
        size_t l = segs[i]->name_len;
        if (len + l + 2 > size)
            return 0;
        if (i != n - 1)
            buf[len++] = '.';
        memcpy(buf + len, segs[i]->name, l);
        len += l;
    }
    buf[len] = 0;
    return n;
}

static node *resolve(resolver *r, node *x, unsigned depth);

static node *make_type_literal(resolver *r, const node *at, const char *tname)
{
    node *t = new_node(r, N_LITERAL, at, 0);
    if (t)
        t->val = cel_type_value(tname);
    return t;
}

/* Resolves an identifier or a chain of selects on one: the longest prefix that
 * names a declared variable wins (a.b.c before a.b before a); locals shadow all. */
static node *resolve_name(resolver *r, node *x, unsigned depth)
{
    char buf[2048];
    size_t nseg = chain_name(x, buf, sizeof(buf));
    if (nseg == 0 || depth + nseg > CEL_MAX_NESTING) {
        rfail(r, -E2BIG, x, "expression nested too deeply (the limit is %u)", CEL_MAX_NESTING);
        return NULL;
    }
    /* the root identifier of the chain */
    node *root = x;
    while (root->kind == N_SELECT)
        root = root->args[0];
    int local = root->name[0] != '.' ? find_local(r, root->name) : -1;
    if (local >= 0) {
        /* rebuild the chain on top of the local */
        root->kind = N_LOCAL;
        root->slot = local;
        return x;
    }
    /* try prefixes of the chain, longest first */
    for (size_t k = nseg; k >= 1; k--) {
        /* node at depth k from the root: walk down nseg-k selects */
        node *at = x;
        for (size_t i = 0; i < nseg - k; i++)
            at = at->args[0];
        /* truncate buf to k segments */
        char name[2048];
        size_t len = 0, seg = 0;
        for (; buf[len]; len++) {
            if (buf[len] == '.' && len > 0 && ++seg == k)
                break;
        }
        memcpy(name, buf, len);
        name[len] = 0;
        int slot = find_var(r, name);
        const char *tname = slot < 0 ? find_type_name(name) : NULL;
        if (slot < 0 && !tname)
            continue;
        node *base;
        if (slot >= 0) {
            base = new_node(r, N_VAR, at, 0);
            if (!base)
                return NULL;
            base->slot = slot;
            base->name = cel_arena_strndup(r->prog->mem, name, len);
            if (!base->name) {
                rfail(r, -ENOMEM, at, "out of memory");
                return NULL;
            }
        } else {
            base = make_type_literal(r, at, tname);
        }
        if (!base)
            return NULL;
        if (at == x)
            return base;
        /* replace AT in its parent select */
        node *parent = x;
        while (parent->args[0] != at)
            parent = parent->args[0];
        parent->args[0] = base;
        return x;
    }
    if (!r->env->lenient) {
        rfail(r, -EINVAL, root, "undeclared reference to '%s'", buf);
        return NULL;
    }
    root->kind = N_UNDECLARED;
    return x;
}

static bool is_simple_ident(const node *x)
{
    return x->kind == N_IDENT && x->name[0] != '.';
}

/* Expands a comprehension macro call X (receiver in args[0]) into N_LOOP, or
 * returns X unchanged when it is not a macro. */
static node *expand_loop(resolver *r, node *x, unsigned depth, bool *ret_expanded)
{
    static const struct {
        const char *name;
        loop_kind kind;
        uint8_t nvars;
        uint8_t nargs; /* receiver included */
    } macros[] = {
        {"all", LOOP_ALL, 1, 3},
        {"all", LOOP_ALL, 2, 4},
        {"exists", LOOP_EXISTS, 1, 3},
        {"exists", LOOP_EXISTS, 2, 4},
        {"exists_one", LOOP_EXISTS_ONE, 1, 3},
        {"existsOne", LOOP_EXISTS_ONE, 1, 3},
        {"existsOne", LOOP_EXISTS_ONE, 2, 4},
        {"map", LOOP_MAP, 1, 3},
        {"map", LOOP_MAP, 1, 4},
        {"filter", LOOP_FILTER, 1, 3},
        {"transformList", LOOP_TRANSFORM_LIST, 2, 4},
        {"transformList", LOOP_TRANSFORM_LIST, 2, 5},
        {"transformMap", LOOP_TRANSFORM_MAP, 2, 4},
        {"transformMap", LOOP_TRANSFORM_MAP, 2, 5},
    };
    *ret_expanded = false;
    for (size_t i = 0; i < ELEMENTSOF(macros); i++) {
        if (strcmp(macros[i].name, x->name) || macros[i].nargs != x->nargs)
            continue;
        for (size_t v = 1; v <= macros[i].nvars; v++)
            if (!is_simple_ident(x->args[v])) {
                rfail(r, -EINVAL, x->args[v], "%s() macro: argument %zu must be a simple name", x->name, v);
                return NULL;
            }
        *ret_expanded = true;
        size_t rest = x->nargs - 1 - macros[i].nvars; /* step [+ filter] */
        node *loop = new_node(r, N_LOOP, x, 1 + rest);
        if (!loop)
            return NULL;
        loop->op = macros[i].kind;
        loop->name = x->name;
        loop->args[0] = resolve(r, x->args[0], depth + 1);
        if (!loop->args[0])
            return NULL;
        size_t mark = r->nscope;
        loop->slot = push_local(r, x, x->args[1]->name);
        if (macros[i].nvars == 2)
            loop->slot2 = push_local(r, x, x->args[2]->name);
        if (r->error)
            return NULL;
        node *first = resolve(r, x->args[1 + macros[i].nvars], depth + 1);
        node *second = rest == 2 ? resolve(r, x->args[2 + macros[i].nvars], depth + 1) : NULL;
        r->nscope = mark;
        if (!first || (rest == 2 && !second))
            return NULL;
        /* layout: args[1] = step, args[2] = filter */
        if (rest == 2) {
            loop->args[1] = second;
            loop->args[2] = first;
        } else {
            loop->args[1] = first;
        }
        return loop;
    }
    return x;
}

/* Resolves a call node: macros, namespaced functions, operators and methods. */
static node *resolve_call(resolver *r, node *x, unsigned depth)
{
    bool receiver = x->flags & F_RECEIVER;
    char qname[2048];
    const char *fname = x->name;

    if (!receiver && !strcmp(x->name, "has")) {
        if (x->nargs != 1 || x->args[0]->kind != N_SELECT) {
            rfail(r, -EINVAL, x, "has() macro: argument must be a field selection");
            return NULL;
        }
        node *sel = x->args[0];
        node *h = new_node(r, N_HAS, sel, 1);
        if (!h)
            return NULL;
        h->name = sel->name;
        h->name_len = sel->name_len;
        h->args[0] = resolve(r, sel->args[0], depth + 1);
        return h->args[0] ? h : NULL;
    }

    if (receiver) {
        /* a receiver that is a namespace, as in math.greatest(...) */
        node *recv = x->args[0];
        node *root = recv;
        while (root->kind == N_SELECT)
            root = root->args[0];
        size_t nseg = chain_name(recv, qname, sizeof(qname) - 64);
        bool shadowed = root->kind == N_IDENT && root->name[0] != '.' &&
                        (find_local(r, root->name) >= 0 || find_var(r, root->name) >= 0);
        if (nseg && !shadowed) {
            size_t l = strlen(qname);
            snprintf(qname + l, sizeof(qname) - l, ".%s", x->name);
            const char *q = qname[0] == '.' ? qname + 1 : qname;
            if (!strcmp(q, "cel.bind") && x->nargs == 4) {
                if (!is_simple_ident(x->args[1])) {
                    rfail(r, -EINVAL, x->args[1], "cel.bind() macro: the first argument must be a simple name");
                    return NULL;
                }
                node *b = new_node(r, N_BIND, x, 2);
                if (!b)
                    return NULL;
                b->args[0] = resolve(r, x->args[2], depth + 1);
                size_t mark = r->nscope;
                b->slot = push_local(r, x, x->args[1]->name);
                b->args[1] = b->args[0] ? resolve(r, x->args[3], depth + 1) : NULL;
                r->nscope = mark;
                return b->args[1] ? b : NULL;
            }
            if (cel_builtin_named(q, false) >= 0) {
                /* drop the receiver: a global call of the qualified name */
                memmove(x->args, x->args + 1, (x->nargs - 1) * sizeof(node *));
                x->nargs--;
                receiver = false;
                fname = cel_arena_strndup(r->prog->mem, q, strlen(q));
                if (!fname) {
                    rfail(r, -ENOMEM, x, "out of memory");
                    return NULL;
                }
            }
        }
    }

    if (receiver) {
        bool expanded;
        node *loop = expand_loop(r, x, depth, &expanded);
        if (expanded || !loop)
            return loop;
        if ((!strcmp(x->name, "optMap") || !strcmp(x->name, "optFlatMap")) && x->nargs == 3) {
            if (!is_simple_ident(x->args[1])) {
                rfail(r, -EINVAL, x->args[1], "%s() macro: the first argument must be a simple name", x->name);
                return NULL;
            }
            node *m = new_node(r, N_OPTMAP, x, 2);
            if (!m)
                return NULL;
            m->flags = x->name[3] == 'F' ? F_FLAT : 0;
            m->args[0] = resolve(r, x->args[0], depth + 1);
            size_t mark = r->nscope;
            m->slot = push_local(r, x, x->args[1]->name);
            m->args[1] = m->args[0] ? resolve(r, x->args[2], depth + 1) : NULL;
            r->nscope = mark;
            return m->args[1] ? m : NULL;
        }
    }

    for (size_t i = 0; i < x->nargs; i++) {
        x->args[i] = resolve(r, x->args[i], depth + 1);
        if (!x->args[i])
            return NULL;
    }
    int b = cel_builtin_find(fname, receiver, x->nargs);
    if (b < 0) {
        if (!r->env->lenient) {
            if (cel_builtin_named(fname, receiver) >= 0)
                rfail(r, -EINVAL, x, "found no matching overload for '%s' with %u argument%s", fname,
                      x->nargs - receiver, x->nargs - receiver == 1 ? "" : "s");
            else
                rfail(r, -EINVAL, x, "undeclared reference to function '%s'", fname);
            return NULL;
        }
        x->kind = N_UNBOUND;
        x->name = fname;
        return x;
    }
    x->kind = N_FUNC;
    x->op = (uint16_t)b;
    x->name = fname;
    /* fold pure calls on literals, such as cidr('10.0.0.0/8') or duration('1h') */
    bool literal_args = strcmp(fname, "now") != 0;
    for (size_t i = 0; i < x->nargs && literal_args; i++)
        literal_args = x->args[i]->kind == N_LITERAL;
    cel_value folded;
    if (literal_args && cel_fold(r->prog, x, &folded) == 0) {
        x->kind = N_LITERAL;
        x->nargs = 0;
        x->val = folded;
        return x;
    }
    if (!strcmp(fname, "matches") && x->nargs == 2 && x->args[1]->kind == N_LITERAL &&
        x->args[1]->val.kind == CEL_STRING) {
        char err[256];
        void **nr = realloc(r->prog->regexes, (r->prog->nregexes + 1) * sizeof(void *));
        if (!nr) {
            rfail(r, -ENOMEM, x, "out of memory");
            return NULL;
        }
        r->prog->regexes = nr;
        x->regex = cel_regex_compile(x->args[1]->val.str, x->args[1]->val.len, NULL, err, sizeof(err));
        if (!x->regex) {
            rfail(r, -EINVAL, x->args[1], "invalid regular expression: %s", err);
            return NULL;
        }
        nr[r->prog->nregexes++] = x->regex;
    }
    return x;
}

static bool all_literal(const node *x)
{
    for (size_t i = 0; i < x->nargs; i++)
        if (x->args[i]->kind != N_LITERAL)
            return false;
    return !x->optmask;
}

/* Replaces a list literal of constants by one constant (built once, in the program). */
static node *fold_list(resolver *r, node *x)
{
    cel_value *items;
    cel_list *l = cel_list_new(r->prog->mem, x->nargs, &items);
    if (!l) {
        rfail(r, -ENOMEM, x, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < x->nargs; i++)
        items[i] = x->args[i]->val;
    x->kind = N_LITERAL;
    x->nargs = 0;
    x->val = cel_list_value(l);
    return x;
}

/* Same for maps whose keys are valid and distinct (otherwise the error is raised at run time). */
static node *fold_map(resolver *r, node *x)
{
    size_t n = x->nargs / 2;
    for (size_t i = 0; i < n; i++) {
        const cel_value *k = &x->args[2 * i]->val;
        if (!cel_valid_key_kind(k))
            return x;
        for (size_t j = 0; j < i; j++)
            if (cel_equal(k, &x->args[2 * j]->val))
                return x;
    }
    cel_map_entry *entries;
    cel_map *m = cel_map_new(r->prog->mem, n, &entries);
    if (!m) {
        rfail(r, -ENOMEM, x, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        entries[i].key = x->args[2 * i]->val;
        entries[i].value = x->args[2 * i + 1]->val;
    }
    x->kind = N_LITERAL;
    x->nargs = 0;
    x->val = cel_map_value(m);
    return x;
}

/* Returns the resolved form of X (possibly X itself, modified), or NULL on error. */
static node *resolve(resolver *r, node *x, unsigned depth)
{
    if (r->error)
        return NULL;
    if (depth > CEL_MAX_NESTING) {
        rfail(r, -E2BIG, x, "expression nested too deeply (the limit is %u)", CEL_MAX_NESTING);
        return NULL;
    }
    switch (x->kind) {
    case N_LITERAL:
        return x;
    case N_IDENT:
        return resolve_name(r, x, depth);
    case N_SELECT: {
        node *root = x;
        while (root->kind == N_SELECT && !(root->flags & (F_OPTIONAL | F_QUOTED)))
            root = root->args[0];
        if (root->kind == N_IDENT)
            return resolve_name(r, x, depth);
        x->args[0] = resolve(r, x->args[0], depth + 1);
        return x->args[0] ? x : NULL;
    }
    case N_INDEX:
    case N_COND:
    case N_AND:
    case N_OR:
        for (size_t i = 0; i < x->nargs; i++) {
            x->args[i] = resolve(r, x->args[i], depth + 1);
            if (!x->args[i])
                return NULL;
        }
        return x;
    case N_LIST:
    case N_MAP:
        for (size_t i = 0; i < x->nargs; i++) {
            x->args[i] = resolve(r, x->args[i], depth + 1);
            if (!x->args[i])
                return NULL;
        }
        if (!all_literal(x))
            return x;
        return x->kind == N_LIST ? fold_list(r, x) : fold_map(r, x);
    case N_CALL:
        return resolve_call(r, x, depth);
    default:
        rfail(r, -EINVAL, x, "internal error: unexpected node");
        return NULL;
    }
}

static _Thread_local char compile_msg[512];

int cel_compile(const cel_env *env, const char *src, size_t len, cel_program **ret_program, cel_error *err)
{
    static const cel_env empty_env;
    if (!env)
        env = &empty_env;
    cel_program *prog = calloc(1, sizeof(*prog));
    if (!prog)
        return -ENOMEM;
    prog->nvars = env->n;
    prog->fold_budget = CEL_FOLD_BUDGET;
    prog->mem = cel_arena_new(PROGRAM_MEM_MAX);
    if (!prog->mem) {
        free(prog);
        return -ENOMEM;
    }
    node *root = NULL;
    uint32_t line = 0, col = 0;
    int r = cel_parse(src, len, prog->mem, &root, compile_msg, sizeof(compile_msg), &line, &col);
    if (r == 0) {
        resolver rs = {.env = env, .prog = prog, .msg = compile_msg, .msg_size = sizeof(compile_msg)};
        root = resolve(&rs, root, 0);
        free(rs.scope);
        r = rs.error;
        line = rs.err_line;
        col = rs.err_col;
    }
    if (r < 0) {
        cel_program_free(prog);
        if (r == -ENOMEM)
            snprintf(compile_msg, sizeof(compile_msg), "out of memory");
        if (err)
            *err = (cel_error){.message = compile_msg, .line = line, .column = col};
        return r;
    }
    prog->root = root;
    *ret_program = prog;
    return 0;
}

void cel_program_free(cel_program *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nregexes; i++)
        cel_regex_free(p->regexes[i]);
    free(p->regexes);
    cel_arena_free(p->mem);
    free(p);
}

size_t cel_program_nvars(const cel_program *p)
{
    return p->nvars;
}
