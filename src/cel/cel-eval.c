/* The tree-walking evaluator. Every node charges one unit of cost and every
 * comprehension iteration another; allocation goes to the evaluation arena.
 * Errors and unknowns are values that propagate through strict functions and
 * are absorbed by &&, || and ?: as the CEL specification defines. Exceeding
 * the cost limit or the arena aborts the whole evaluation (e->abort), which
 * no operator can absorb. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cel/cel-internal.h"

static const cel_error oom_error = {.message = "out of memory"};
static const cel_error cost_error = {.message = "cost limit exceeded"};

bool cel_charge(ev *e, uint64_t cost)
{
    e->cost = cost > UINT64_MAX - e->cost ? UINT64_MAX : e->cost + cost;
    if (e->cost > e->limit && !e->abort)
        e->abort = -ECANCELED;
    return !e->abort;
}

void *cel_ev_alloc(ev *e, size_t n)
{
    if (!cel_charge(e, n / 64))
        return NULL;
    void *p = cel_arena_alloc(e->arena, n);
    if (!p && !e->abort)
        e->abort = -ENOMEM;
    return p;
}

static cel_value aborted(const ev *e)
{
    return (cel_value){.kind = CEL_ERROR, .err = e->abort == -ECANCELED ? &cost_error : &oom_error};
}

cel_value cel_err(ev *e, const node *n, const char *fmt, ...)
{
    if (e->abort)
        return aborted(e);
    cel_error *er = cel_arena_alloc(e->arena, sizeof(cel_error));
    va_list ap;
    va_start(ap, fmt);
    char *msg = er ? cel_arena_vprintf(e->arena, fmt, ap) : NULL;
    va_end(ap);
    if (!msg) {
        e->abort = -ENOMEM;
        return aborted(e);
    }
    er->message = msg;
    er->line = n ? n->line : 0;
    er->column = n ? n->col : 0;
    return (cel_value){.kind = CEL_ERROR, .err = er};
}

cel_value cel_err_no_overload(ev *e, const node *n)
{
    return cel_err(e, n, "found no matching overload for '%s'", n && n->name ? n->name : "operator");
}

cel_value cel_make_string(ev *e, const char *s, size_t n)
{
    char *p = cel_ev_alloc(e, n + 1);
    if (!p)
        return aborted(e);
    if (n)
        memcpy(p, s, n);
    p[n] = 0;
    return cel_string(p, n);
}

cel_value cel_make_optional(ev *e, const cel_value *v)
{
    if (!v)
        return (cel_value){.kind = CEL_OPTIONAL};
    cel_value *p = cel_ev_alloc(e, sizeof(cel_value));
    if (!p)
        return aborted(e);
    *p = *v;
    return (cel_value){.kind = CEL_OPTIONAL, .opt = p};
}

cel_value cel_make_list(ev *e, size_t n, cel_value **ret_items)
{
    if (!cel_charge(e, n / 4))
        return aborted(e);
    cel_list *l = cel_list_new(e->arena, n, ret_items);
    if (!l) {
        e->abort = -ENOMEM;
        return aborted(e);
    }
    return cel_list_value(l);
}

static bool is_err_or_unknown(const cel_value *v)
{
    return v->kind == CEL_ERROR || v->kind == CEL_UNKNOWN;
}

/* The union of two unknown values' ids. */
static cel_value merge_unknown(ev *e, const cel_value *a, const cel_value *b)
{
    size_t na = a->unk ? a->unk->len : 0, nb = b->unk ? b->unk->len : 0;
    cel_unknown *u = cel_ev_alloc(e, sizeof(cel_unknown) + (na + nb) * sizeof(uint64_t));
    if (!u)
        return aborted(e);
    uint64_t *ids = (uint64_t *)(u + 1);
    size_t n = 0;
    for (size_t i = 0; i < na; i++)
        ids[n++] = a->unk->ids[i];
    for (size_t i = 0; i < nb; i++) {
        bool dup = false;
        for (size_t j = 0; j < na && !dup; j++)
            dup = ids[j] == b->unk->ids[i];
        if (!dup)
            ids[n++] = b->unk->ids[i];
    }
    u->len = n;
    u->ids = ids;
    return cel_unknown_value(u);
}

/* Combines the error/unknown arguments of a strict call: unknowns win, else the first error. */
static bool strict_args(ev *e, cel_value *args, size_t n, cel_value *ret)
{
    int unk = -1, err = -1;
    for (size_t i = 0; i < n; i++) {
        if (args[i].kind == CEL_UNKNOWN) {
            if (unk < 0)
                *ret = args[i];
            else
                *ret = merge_unknown(e, ret, &args[i]);
            unk = (int)i;
        } else if (args[i].kind == CEL_ERROR && err < 0) {
            err = (int)i;
        }
    }
    if (unk >= 0)
        return true;
    if (err >= 0) {
        *ret = args[err];
        return true;
    }
    return false;
}

static cel_value eval(ev *e, const node *n);

/* && and || with commutative short-circuit: a deciding value (false for &&,
 * true for ||) on either side wins over errors and unknowns on the other. */
static cel_value eval_logic(ev *e, const node *n, bool is_and)
{
    bool decide = !is_and;
    cel_value l = eval(e, n->args[0]);
    if (e->abort)
        return aborted(e);
    if (l.kind == CEL_BOOL && l.b == decide)
        return l;
    cel_value r = eval(e, n->args[1]);
    if (e->abort)
        return aborted(e);
    if (r.kind == CEL_BOOL && r.b == decide)
        return r;
    if (l.kind == CEL_BOOL && r.kind == CEL_BOOL)
        return cel_bool(!decide);
    if (l.kind == CEL_UNKNOWN && r.kind == CEL_UNKNOWN)
        return merge_unknown(e, &l, &r);
    if (l.kind == CEL_UNKNOWN)
        return l;
    if (r.kind == CEL_UNKNOWN)
        return r;
    if (l.kind == CEL_ERROR)
        return l;
    if (l.kind != CEL_BOOL)
        return cel_err(e, n, "found no matching overload for '%s' applied to '%s'", is_and ? "_&&_" : "_||_",
                       cel_kind_name(l.kind));
    if (r.kind == CEL_ERROR)
        return r;
    return cel_err(e, n, "found no matching overload for '%s' applied to '%s'", is_and ? "_&&_" : "_||_",
                   cel_kind_name(r.kind));
}

/* Index of a list from an int, uint or integral double; false when none fits. */
static bool list_index(const cel_value *idx, size_t len, size_t *ret, bool *ret_bad_type)
{
    int64_t i;
    *ret_bad_type = false;
    switch (idx->kind) {
    case CEL_INT:
        i = idx->i;
        break;
    case CEL_UINT:
        if (idx->u > (uint64_t)INT64_MAX)
            return false;
        i = (int64_t)idx->u;
        break;
    case CEL_DOUBLE:
        if (!(idx->d >= -9.2e18 && idx->d <= 9.2e18) || idx->d != (double)(int64_t)idx->d) {
            *ret_bad_type = true;
            return false;
        }
        i = (int64_t)idx->d;
        break;
    default:
        *ret_bad_type = true;
        return false;
    }
    if (i < 0 || (uint64_t)i >= len)
        return false;
    *ret = (size_t)i;
    return true;
}

/* container[index]; OPTIONAL yields optional.none() instead of a missing-key error. */
static cel_value do_index(ev *e, const node *n, const cel_value *c, const cel_value *idx, bool optional)
{
    if (c->kind == CEL_LIST) {
        size_t i;
        bool bad_type;
        if (list_index(idx, c->list->len, &i, &bad_type))
            return optional ? cel_make_optional(e, &c->list->items[i]) : c->list->items[i];
        if (bad_type)
            return cel_err(e, n, "invalid_argument: list index of type '%s'", cel_kind_name(idx->kind));
        if (optional)
            return cel_make_optional(e, NULL);
        char buf[64] = "";
        if (idx->kind == CEL_INT)
            snprintf(buf, sizeof(buf), "%lld", (long long)idx->i);
        else if (idx->kind == CEL_UINT)
            snprintf(buf, sizeof(buf), "%llu", (unsigned long long)idx->u);
        return cel_err(e, n, "invalid_argument: index out of range: %s", buf);
    }
    if (c->kind == CEL_MAP) {
        uint64_t work = 0;
        const cel_value *v = cel_map_find_work(c->map, idx, &work);
        cel_charge(e, work / 8);
        if (v)
            return optional ? cel_make_optional(e, v) : *v;
        if (optional)
            return cel_make_optional(e, NULL);
        if (idx->kind == CEL_STRING)
            return cel_err(e, n, "no such key: '%.*s'", (int)MIN(idx->len, 256u), idx->str);
        return cel_err(e, n, "no such key");
    }
    return cel_err(e, n, "found no matching overload for '_[_]' applied to '%s'", cel_kind_name(c->kind));
}

/* The value of string key N->name in M, or NULL. Host maps usually have the
 * same layout on every request, so the entry found last time is tried first. */
static const cel_value *find_field(ev *e, const node *n, const cel_map *m)
{
    uint32_t hint = __atomic_load_n(&((node *)n)->hint, __ATOMIC_RELAXED);
    size_t len = n->name_len;
    if (hint < m->len) {
        const cel_value *k = &m->entries[hint].key;
        if (k->kind == CEL_STRING && k->len == len && cel_bytes_eq(k->str, n->name, len))
            return &m->entries[hint].value;
    }
    cel_charge(e, m->len / 8);
    for (size_t i = 0; i < m->len; i++) {
        const cel_value *k = &m->entries[i].key;
        if (k->kind == CEL_STRING && k->len == len && cel_bytes_eq(k->str, n->name, len)) {
            __atomic_store_n(&((node *)n)->hint, (uint32_t)i, __ATOMIC_RELAXED);
            return &m->entries[i].value;
        }
    }
    return NULL;
}

/* operand.field on a map; OPTIONAL as for do_index. */
static cel_value do_select(ev *e, const node *n, const cel_value *c, bool optional)
{
    if (c->kind == CEL_MAP) {
        const cel_value *v = find_field(e, n, c->map);
        if (v)
            return optional ? cel_make_optional(e, v) : *v;
        if (optional)
            return cel_make_optional(e, NULL);
        return cel_err(e, n, "no such key: '%s'", n->name);
    }
    return cel_err(e, n, "type '%s' does not support field selection", cel_kind_name(c->kind));
}

/* operand.field and operand.?field, with optional chaining through optional operands. */
static cel_value eval_select(ev *e, const node *n)
{
    cel_value c = eval(e, n->args[0]);
    if (is_err_or_unknown(&c))
        return c;
    if (c.kind == CEL_OPTIONAL) {
        /* optional chaining: none stays none, a value is selected and re-wrapped */
        if (!c.opt)
            return c;
        return do_select(e, n, c.opt, true);
    }
    return do_select(e, n, &c, n->flags & F_OPTIONAL);
}

/* operand[index] and operand[?index], with optional chaining. */
static cel_value eval_index(ev *e, const node *n)
{
    cel_value c = eval(e, n->args[0]);
    cel_value i = eval(e, n->args[1]);
    cel_value args[2] = {c, i}, r;
    if (strict_args(e, args, 2, &r))
        return r;
    if (c.kind == CEL_OPTIONAL) {
        if (!c.opt)
            return c;
        return do_index(e, n, c.opt, &i, true);
    }
    return do_index(e, n, &c, &i, n->flags & F_OPTIONAL);
}

/* has(operand.field): false for an empty optional, an error for non-maps. */
static cel_value eval_has(ev *e, const node *n)
{
    cel_value c = eval(e, n->args[0]);
    if (is_err_or_unknown(&c))
        return c;
    if (c.kind == CEL_OPTIONAL) {
        if (!c.opt)
            return cel_bool(false);
        c = *c.opt;
    }
    if (c.kind == CEL_MAP)
        return cel_bool(find_field(e, n, c.map) != NULL);
    return cel_err(e, n, "invalid type for field selection: '%s'", cel_kind_name(c.kind));
}

/* A list literal; ?elements are kept only when their optional has a value. */
static cel_value eval_list(ev *e, const node *n)
{
    cel_value *items;
    cel_value l = cel_make_list(e, n->nargs, &items);
    if (e->abort)
        return aborted(e);
    size_t k = 0;
    cel_value bad = {.kind = CEL_NULL};
    bool have_bad = false;
    for (size_t i = 0; i < n->nargs; i++) {
        cel_value v = eval(e, n->args[i]);
        if (e->abort)
            return aborted(e);
        if (is_err_or_unknown(&v)) {
            if (!have_bad || (v.kind == CEL_UNKNOWN && bad.kind != CEL_UNKNOWN))
                bad = v;
            else if (v.kind == CEL_UNKNOWN)
                bad = merge_unknown(e, &bad, &v);
            have_bad = true;
            continue;
        }
        if (n->optmask && n->optmask[i]) {
            if (v.kind != CEL_OPTIONAL)
                return cel_err(e, n->args[i], "optional list element of type '%s' is not optional",
                               cel_kind_name(v.kind));
            if (v.opt)
                items[k++] = *v.opt;
            continue;
        }
        items[k++] = v;
    }
    if (have_bad)
        return bad;
    ((cel_list *)l.list)->len = k;
    return l;
}

/* A map literal: keys must be bool, int, uint or string and distinct (1 and 1u clash). */
static cel_value eval_map(ev *e, const node *n)
{
    size_t count = n->nargs / 2;
    cel_map_entry *entries;
    cel_map *m = cel_map_new(e->arena, count, &entries);
    if (!m || !cel_charge(e, count)) {
        if (!e->abort)
            e->abort = -ENOMEM;
        return aborted(e);
    }
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        cel_value kv[2] = {eval(e, n->args[2 * i]), eval(e, n->args[2 * i + 1])}, r;
        if (e->abort)
            return aborted(e);
        if (strict_args(e, kv, 2, &r))
            return r;
        if (!cel_valid_key_kind(&kv[0]))
            return cel_err(e, n->args[2 * i], "unsupported map key type '%s'", cel_kind_name(kv[0].kind));
        if (n->optmask && n->optmask[2 * i]) {
            if (kv[1].kind != CEL_OPTIONAL)
                return cel_err(e, n->args[2 * i + 1], "optional map entry of type '%s' is not optional",
                               cel_kind_name(kv[1].kind));
            if (!kv[1].opt)
                continue;
            kv[1] = *kv[1].opt;
        }
        cel_charge(e, k / 8);
        for (size_t j = 0; j < k; j++)
            if (cel_equal(&entries[j].key, &kv[0]))
                return cel_err(e, n->args[2 * i], "Failed with repeated key");
        entries[k].key = kv[0];
        entries[k].value = kv[1];
        k++;
    }
    m->len = k;
    return cel_map_value(m);
}

/* Sets the loop variables for element I of RANGE. */
static void loop_vars(ev *e, const node *n, const cel_value *range, size_t i)
{
    if (range->kind == CEL_LIST) {
        if (n->slot2 >= 0) {
            e->locals[n->slot] = cel_int((int64_t)i);
            e->locals[n->slot2] = range->list->items[i];
        } else {
            e->locals[n->slot] = range->list->items[i];
        }
    } else {
        e->locals[n->slot] = range->map->entries[i].key;
        if (n->slot2 >= 0)
            e->locals[n->slot2] = range->map->entries[i].value;
    }
}

static cel_value not_bool(ev *e, const node *n, const cel_value *v)
{
    if (v->kind == CEL_ERROR || v->kind == CEL_UNKNOWN)
        return *v;
    return cel_err(e, n, "found no matching overload for '%s' with a result of type '%s'", n->name,
                   cel_kind_name(v->kind));
}

/* The comprehension macros. all/exists short-circuit on a deciding value and
 * otherwise report the first error (unknowns win); the others propagate the
 * first error at once. Each iteration costs one unit. */
static cel_value eval_loop(ev *e, const node *n)
{
    cel_value range = eval(e, n->args[0]);
    if (is_err_or_unknown(&range))
        return range;
    if (range.kind != CEL_LIST && range.kind != CEL_MAP)
        return cel_err(e, n, "%s() cannot range over a value of type '%s'", n->name, cel_kind_name(range.kind));
    size_t len = range.kind == CEL_LIST ? range.list->len : range.map->len;
    const node *step = n->args[1], *filter = n->nargs > 2 ? n->args[2] : NULL;
    loop_kind kind = n->op;
    cel_value pending = {.kind = CEL_NULL}; /* first error or merged unknowns */
    bool have_pending = false;
    int64_t count = 0;
    cel_value *items = NULL;
    cel_map_entry *entries = NULL;
    cel_value result = {.kind = CEL_NULL};
    size_t k = 0;

    if (kind == LOOP_MAP || kind == LOOP_FILTER || kind == LOOP_TRANSFORM_LIST) {
        result = cel_make_list(e, len, &items);
    } else if (kind == LOOP_TRANSFORM_MAP) {
        cel_map *m = cel_map_new(e->arena, len, &entries);
        if (!m)
            e->abort = -ENOMEM;
        else
            result = cel_map_value(m);
    }
    if (e->abort)
        return aborted(e);

    for (size_t i = 0; i < len; i++) {
        if (!cel_charge(e, 1))
            return aborted(e);
        loop_vars(e, n, &range, i);
        if (filter) {
            cel_value f = eval(e, filter);
            if (e->abort)
                return aborted(e);
            if (f.kind != CEL_BOOL)
                return not_bool(e, filter, &f);
            if (!f.b)
                continue;
        }
        cel_value v = eval(e, step);
        if (e->abort)
            return aborted(e);
        switch (kind) {
        case LOOP_ALL:
        case LOOP_EXISTS: {
            bool decide = kind == LOOP_EXISTS;
            if (v.kind == CEL_BOOL) {
                if (v.b == decide)
                    return v;
                continue;
            }
            if (v.kind != CEL_ERROR && v.kind != CEL_UNKNOWN)
                v = not_bool(e, n, &v);
            if (v.kind == CEL_UNKNOWN)
                pending = have_pending && pending.kind == CEL_UNKNOWN ? merge_unknown(e, &pending, &v) : v;
            else if (!have_pending)
                pending = v;
            have_pending = true;
            continue;
        }
        case LOOP_EXISTS_ONE:
            if (v.kind != CEL_BOOL)
                return not_bool(e, n, &v);
            count += v.b;
            continue;
        case LOOP_FILTER:
            if (v.kind != CEL_BOOL)
                return not_bool(e, n, &v);
            if (v.b)
                items[k++] = range.kind == CEL_LIST ? range.list->items[i] : range.map->entries[i].key;
            continue;
        case LOOP_MAP:
        case LOOP_TRANSFORM_LIST:
            if (is_err_or_unknown(&v))
                return v;
            items[k++] = v;
            continue;
        case LOOP_TRANSFORM_MAP:
            if (is_err_or_unknown(&v))
                return v;
            entries[k].key = range.kind == CEL_LIST ? cel_int((int64_t)i) : range.map->entries[i].key;
            entries[k].value = v;
            k++;
            continue;
        }
    }
    switch (kind) {
    case LOOP_ALL:
    case LOOP_EXISTS:
        return have_pending ? pending : cel_bool(kind == LOOP_ALL);
    case LOOP_EXISTS_ONE:
        return cel_bool(count == 1);
    case LOOP_TRANSFORM_MAP:
        ((cel_map *)result.map)->len = k;
        return result;
    default:
        ((cel_list *)result.list)->len = k;
        return result;
    }
}

/* optMap / optFlatMap: applies args[1] to the optional's value, if any. */
static cel_value eval_optmap(ev *e, const node *n)
{
    cel_value o = eval(e, n->args[0]);
    if (is_err_or_unknown(&o))
        return o;
    if (o.kind != CEL_OPTIONAL)
        return cel_err(e, n, "%s() applied to a non-optional value of type '%s'",
                       n->flags & F_FLAT ? "optFlatMap" : "optMap", cel_kind_name(o.kind));
    if (!o.opt)
        return o;
    e->locals[n->slot] = *o.opt;
    cel_value r = eval(e, n->args[1]);
    if (is_err_or_unknown(&r))
        return r;
    if (n->flags & F_FLAT) {
        if (r.kind != CEL_OPTIONAL)
            return cel_err(e, n, "optFlatMap() function must return an optional, not '%s'", cel_kind_name(r.kind));
        return r;
    }
    return cel_make_optional(e, &r);
}

/* Calls a builtin on its evaluated arguments, after error/unknown propagation. */
static cel_value eval_func(ev *e, const node *n)
{
    cel_value small[4];
    cel_value *args = small;
    if (n->nargs > ELEMENTSOF(small)) {
        args = cel_ev_alloc(e, n->nargs * sizeof(cel_value));
        if (!args)
            return aborted(e);
    }
    for (size_t i = 0; i < n->nargs; i++) {
        args[i] = eval(e, n->args[i]);
        if (e->abort)
            return aborted(e);
    }
    cel_value r;
    if (strict_args(e, args, n->nargs, &r))
        return r;
    return cel_builtins[n->op].fn(e, n, args, n->nargs);
}

/* Returns the value of N; on abort, an error value (the caller checks e->abort). */
static cel_value eval(ev *e, const node *n)
{
    if (++e->cost > e->limit) {
        if (!e->abort)
            e->abort = -ECANCELED;
        return aborted(e);
    }
    if (e->abort)
        return aborted(e);
    switch ((node_kind)n->kind) {
    case N_LITERAL:
        return n->val;
    case N_VAR:
        if ((size_t)n->slot < e->act->nvars)
            return e->act->vars[n->slot];
        return cel_err(e, n, "no such attribute: '%s'", n->name);
    case N_LOCAL:
        return e->locals[n->slot];
    case N_UNDECLARED:
        return cel_err(e, n, "undeclared reference to '%s' (unknown variable)", n->name);
    case N_UNBOUND:
        return cel_err(e, n, "unbound function '%s'", n->name);
    case N_SELECT:
        return eval_select(e, n);
    case N_INDEX:
        return eval_index(e, n);
    case N_HAS:
        return eval_has(e, n);
    case N_FUNC:
        return eval_func(e, n);
    case N_AND:
        return eval_logic(e, n, true);
    case N_OR:
        return eval_logic(e, n, false);
    case N_COND: {
        cel_value c = eval(e, n->args[0]);
        if (is_err_or_unknown(&c))
            return c;
        if (c.kind != CEL_BOOL)
            return cel_err(e, n, "found no matching overload for '_?_:_' applied to '%s'", cel_kind_name(c.kind));
        return eval(e, n->args[c.b ? 1 : 2]);
    }
    case N_LIST:
        return eval_list(e, n);
    case N_MAP:
        return eval_map(e, n);
    case N_LOOP:
        return eval_loop(e, n);
    case N_BIND:
        e->locals[n->slot] = eval(e, n->args[0]);
        if (e->abort)
            return aborted(e);
        return eval(e, n->args[1]);
    case N_OPTMAP:
        return eval_optmap(e, n);
    case N_IDENT:
    case N_CALL:
        break;
    }
    return cel_err(e, n, "internal error: unresolved node");
}

int cel_fold(cel_program *p, const node *n, cel_value *ret_value)
{
    static const cel_activation empty = {0};
    ev e = {.prog = p, .act = &empty, .arena = p->mem, .limit = p->fold_budget};
    cel_value v = eval(&e, n);
    p->fold_budget -= MIN(e.cost, p->fold_budget);
    if (e.abort || cel_arena_exhausted(p->mem) || v.kind == CEL_ERROR || v.kind == CEL_UNKNOWN)
        return -EINVAL;
    *ret_value = v;
    return 0;
}

int cel_eval(const cel_program *p, const cel_activation *act, cel_arena *arena, uint64_t cost_limit,
             cel_value *ret_value)
{
    static const cel_activation empty = {0};
    ev e = {.prog = p, .act = act ? act : &empty, .arena = arena, .limit = cost_limit};
    if (p->nlocals) {
        e.locals = cel_arena_alloc(arena, p->nlocals * sizeof(cel_value));
        if (!e.locals)
            return -ENOMEM;
        memset(e.locals, 0, p->nlocals * sizeof(cel_value));
    }
    cel_value v = eval(&e, p->root);
    /* any failed allocation (even one a function turned into an error value) aborts */
    if (!e.abort && cel_arena_exhausted(arena))
        e.abort = -ENOMEM;
    if (e.abort)
        return e.abort;
    *ret_value = v;
    return 0;
}
