/* The standard function library (operators, size, string predicates,
 * conversions, type, optionals), the math and encoder extensions, and the
 * table that binds names to implementations. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "cel/cel-lib.h"

#define FN(name) static cel_value name(ev *e, const node *n, cel_value *a, size_t na)

static cel_value overflow(ev *e, const node *n)
{
    return cel_err(e, n, "return error for overflow");
}

/* ---- arithmetic ---- */

/* Concatenation of two lists into the arena. */
static cel_value concat_lists(ev *e, const cel_list *x, const cel_list *y)
{
    cel_value *items;
    cel_value r = cel_make_list(e, x->len + y->len, &items);
    if (r.kind == CEL_ERROR)
        return r;
    if (x->len)
        memcpy(items, x->items, x->len * sizeof(cel_value));
    if (y->len)
        memcpy(items + x->len, y->items, y->len * sizeof(cel_value));
    return r;
}

/* X + Y for strings or bytes, into the arena. */
static cel_value concat_bytes(ev *e, const cel_value *x, const cel_value *y, bool is_string)
{
    size_t len = (size_t)x->len + y->len;
    if (len > UINT32_MAX)
        return cel_err(e, NULL, "string too long");
    char *p = cel_ev_alloc(e, len + 1);
    if (!p)
        return cel_err(e, NULL, "out of memory");
    if (x->len)
        memcpy(p, x->str, x->len);
    if (y->len)
        memcpy(p + x->len, y->str, y->len);
    p[len] = 0;
    return is_string ? cel_string(p, len) : cel_bytes(p, len);
}

/* A normalised timestamp from SEC and possibly out-of-range NSEC; range-checked. */
static cel_value make_timestamp(ev *e, const node *n, int64_t sec, int64_t nsec)
{
    sec += nsec / 1000000000;
    nsec %= 1000000000;
    if (nsec < 0) {
        nsec += 1000000000;
        sec--;
    }
    if (sec < CEL_TS_MIN || sec > CEL_TS_MAX)
        return cel_err(e, n, "timestamp out of range");
    return cel_timestamp(sec, (uint32_t)nsec);
}

/* timestamp + duration, with range checks. */
static cel_value ts_add(ev *e, const node *n, const cel_value *ts, int64_t dur_ns)
{
    return make_timestamp(e, n, ts->i + dur_ns / 1000000000, (int64_t)ts->len + dur_ns % 1000000000);
}

FN(f_add)
{
    cel_value *x = &a[0], *y = &a[1];
    if (x->kind == CEL_INT && y->kind == CEL_INT) {
        int64_t r;
        if (__builtin_add_overflow(x->i, y->i, &r))
            return overflow(e, n);
        return cel_int(r);
    }
    if (x->kind == CEL_UINT && y->kind == CEL_UINT) {
        uint64_t r;
        if (__builtin_add_overflow(x->u, y->u, &r))
            return overflow(e, n);
        return cel_uint(r);
    }
    if (x->kind == CEL_DOUBLE && y->kind == CEL_DOUBLE)
        return cel_double(x->d + y->d);
    if (x->kind == CEL_STRING && y->kind == CEL_STRING)
        return concat_bytes(e, x, y, true);
    if (x->kind == CEL_BYTES && y->kind == CEL_BYTES)
        return concat_bytes(e, x, y, false);
    if (x->kind == CEL_LIST && y->kind == CEL_LIST)
        return concat_lists(e, x->list, y->list);
    if (x->kind == CEL_DURATION && y->kind == CEL_DURATION) {
        int64_t r;
        if (__builtin_add_overflow(x->i, y->i, &r))
            return cel_err(e, n, "duration out of range");
        return cel_duration(r);
    }
    if (x->kind == CEL_TIMESTAMP && y->kind == CEL_DURATION)
        return ts_add(e, n, x, y->i);
    if (x->kind == CEL_DURATION && y->kind == CEL_TIMESTAMP)
        return ts_add(e, n, y, x->i);
    return cel_err_no_overload(e, n);
}

FN(f_sub)
{
    cel_value *x = &a[0], *y = &a[1];
    if (x->kind == CEL_INT && y->kind == CEL_INT) {
        int64_t r;
        if (__builtin_sub_overflow(x->i, y->i, &r))
            return overflow(e, n);
        return cel_int(r);
    }
    if (x->kind == CEL_UINT && y->kind == CEL_UINT) {
        uint64_t r;
        if (__builtin_sub_overflow(x->u, y->u, &r))
            return overflow(e, n);
        return cel_uint(r);
    }
    if (x->kind == CEL_DOUBLE && y->kind == CEL_DOUBLE)
        return cel_double(x->d - y->d);
    if (x->kind == CEL_DURATION && y->kind == CEL_DURATION) {
        int64_t r;
        if (__builtin_sub_overflow(x->i, y->i, &r))
            return cel_err(e, n, "duration out of range");
        return cel_duration(r);
    }
    if (x->kind == CEL_TIMESTAMP && y->kind == CEL_DURATION) {
        if (y->i == INT64_MIN)
            return cel_err(e, n, "timestamp out of range");
        return ts_add(e, n, x, -y->i);
    }
    if (x->kind == CEL_TIMESTAMP && y->kind == CEL_TIMESTAMP) {
        /* seconds differ by less than 2^39, so this cannot overflow before the check */
        int64_t secs = x->i - y->i, ns = (int64_t)x->len - (int64_t)y->len, r;
        if (__builtin_mul_overflow(secs, INT64_C(1000000000), &r) || __builtin_add_overflow(r, ns, &r))
            return cel_err(e, n, "duration out of range");
        return cel_duration(r);
    }
    return cel_err_no_overload(e, n);
}

FN(f_mul)
{
    cel_value *x = &a[0], *y = &a[1];
    if (x->kind == CEL_INT && y->kind == CEL_INT) {
        int64_t r;
        if (__builtin_mul_overflow(x->i, y->i, &r))
            return overflow(e, n);
        return cel_int(r);
    }
    if (x->kind == CEL_UINT && y->kind == CEL_UINT) {
        uint64_t r;
        if (__builtin_mul_overflow(x->u, y->u, &r))
            return overflow(e, n);
        return cel_uint(r);
    }
    if (x->kind == CEL_DOUBLE && y->kind == CEL_DOUBLE)
        return cel_double(x->d * y->d);
    return cel_err_no_overload(e, n);
}

FN(f_div)
{
    cel_value *x = &a[0], *y = &a[1];
    if (x->kind == CEL_INT && y->kind == CEL_INT) {
        if (y->i == 0)
            return cel_err(e, n, "divide by zero");
        if (x->i == INT64_MIN && y->i == -1)
            return overflow(e, n);
        return cel_int(x->i / y->i);
    }
    if (x->kind == CEL_UINT && y->kind == CEL_UINT) {
        if (y->u == 0)
            return cel_err(e, n, "divide by zero");
        return cel_uint(x->u / y->u);
    }
    if (x->kind == CEL_DOUBLE && y->kind == CEL_DOUBLE)
        return cel_double(x->d / y->d);
    return cel_err_no_overload(e, n);
}

FN(f_mod)
{
    cel_value *x = &a[0], *y = &a[1];
    if (x->kind == CEL_INT && y->kind == CEL_INT) {
        if (y->i == 0)
            return cel_err(e, n, "modulus by zero");
        if (x->i == INT64_MIN && y->i == -1)
            return overflow(e, n);
        return cel_int(x->i % y->i);
    }
    if (x->kind == CEL_UINT && y->kind == CEL_UINT) {
        if (y->u == 0)
            return cel_err(e, n, "modulus by zero");
        return cel_uint(x->u % y->u);
    }
    return cel_err_no_overload(e, n);
}

FN(f_neg)
{
    if (a[0].kind == CEL_INT) {
        if (a[0].i == INT64_MIN)
            return overflow(e, n);
        return cel_int(-a[0].i);
    }
    if (a[0].kind == CEL_DOUBLE)
        return cel_double(-a[0].d);
    if (a[0].kind == CEL_DURATION && a[0].i != INT64_MIN)
        return cel_duration(-a[0].i);
    return cel_err_no_overload(e, n);
}

FN(f_not)
{
    if (a[0].kind == CEL_BOOL)
        return cel_bool(!a[0].b);
    return cel_err_no_overload(e, n);
}

/* ---- comparison ---- */

/* Equality charges one unit per 8 elements compared, so comparing large
 * values repeatedly cannot outrun the cost limit. */
static bool charged_equal(ev *e, const cel_value *x, const cel_value *y)
{
    uint64_t work = 0;
    bool eq = cel_equal_work(x, y, &work);
    cel_charge(e, work / 8);
    return eq;
}

FN(f_eq)
{
    return cel_bool(charged_equal(e, &a[0], &a[1]));
}

FN(f_ne)
{
    return cel_bool(!charged_equal(e, &a[0], &a[1]));
}

/* Shared by <, <=, >, >=: WANT lists the accepted outcomes of cel_compare. */
static cel_value compare_op(ev *e, const node *n, cel_value *a, bool lt, bool eq, bool gt)
{
    int c = cel_compare(&a[0], &a[1]);
    if (c == -3)
        return cel_err(e, n, "found no such overload for '%s' applied to '(%s, %s)'", n->name,
                       cel_kind_name(a[0].kind), cel_kind_name(a[1].kind));
    if (c == -2)
        return cel_bool(false);
    return cel_bool((c < 0 && lt) || (c == 0 && eq) || (c > 0 && gt));
}

FN(f_lt)
{
    return compare_op(e, n, a, true, false, false);
}

FN(f_le)
{
    return compare_op(e, n, a, true, true, false);
}

FN(f_gt)
{
    return compare_op(e, n, a, false, false, true);
}

FN(f_ge)
{
    return compare_op(e, n, a, false, true, true);
}

FN(f_in)
{
    cel_value *x = &a[0], *c = &a[1];
    if (c->kind == CEL_LIST) {
        cel_charge(e, c->list->len / 8);
        if (x->kind == CEL_STRING) {
            for (size_t i = 0; i < c->list->len; i++) {
                const cel_value *it = &c->list->items[i];
                if (it->kind == CEL_STRING && it->len == x->len && cel_bytes_eq(it->str, x->str, x->len))
                    return cel_bool(true);
            }
            return cel_bool(false);
        }
        for (size_t i = 0; i < c->list->len; i++)
            if (charged_equal(e, x, &c->list->items[i]))
                return cel_bool(true);
        return cel_bool(false);
    }
    if (c->kind == CEL_MAP) {
        uint64_t work = 0;
        bool found = cel_map_find_work(c->map, x, &work) != NULL;
        cel_charge(e, work / 8);
        return cel_bool(found);
    }
    return cel_err_no_overload(e, n);
}

/* ---- size and strings ---- */

FN(f_size)
{
    switch (a[0].kind) {
    case CEL_STRING:
        cel_charge(e, a[0].len / 64);
        return cel_int((int64_t)cel_utf8_count(a[0].str, a[0].len));
    case CEL_BYTES:
        return cel_int(a[0].len);
    case CEL_LIST:
        return cel_int((int64_t)a[0].list->len);
    case CEL_MAP:
        return cel_int((int64_t)a[0].map->len);
    default:
        return cel_err_no_overload(e, n);
    }
}

static bool two_strings(const cel_value *a)
{
    return a[0].kind == CEL_STRING && a[1].kind == CEL_STRING;
}

FN(f_contains)
{
    if (!two_strings(a))
        return cel_err_no_overload(e, n);
    cel_charge(e, a[0].len / 64);
    if (a[1].len == 0)
        return cel_bool(true);
    return cel_bool(memmem(a[0].str, a[0].len, a[1].str, a[1].len) != NULL);
}

FN(f_starts_with)
{
    if (!two_strings(a))
        return cel_err_no_overload(e, n);
    return cel_bool(a[1].len <= a[0].len && cel_bytes_eq(a[0].str, a[1].str, a[1].len));
}

FN(f_ends_with)
{
    if (!two_strings(a))
        return cel_err_no_overload(e, n);
    return cel_bool(a[1].len <= a[0].len && !memcmp(a[0].str + a[0].len - a[1].len, a[1].str, a[1].len));
}

FN(f_matches)
{
    if (!two_strings(a))
        return cel_err_no_overload(e, n);
    /* DFA matching time grows with subject length times pattern size */
    if (!cel_charge(e, ((uint64_t)a[0].len + 1) * ((uint64_t)a[1].len + 1) / 64))
        return cel_err(e, n, "cost limit exceeded");
    void *re = n->regex;
    char err[256];
    if (!re) {
        /* a pattern computed at run time: compiled into the arena for this call */
        re = cel_regex_compile(a[1].str, a[1].len, e->arena, err, sizeof(err));
        if (!re)
            return cel_arena_exhausted(e->arena) ? cel_err(e, n, "out of memory")
                                                 : cel_err(e, n, "invalid regular expression: %s", err);
    }
    int r = cel_regex_search(re, a[0].str, a[0].len, e->arena);
    if (r < 0)
        return cel_err(e, n, "regular expression match failed: %s", 
                       r == -E2BIG ? "match limit exceeded" : r == -EINVAL ? "invalid UTF-8" : "out of memory");
    return cel_bool(r > 0);
}

/* ---- conversions ---- */

/* Parses a whole decimal integer string (Go strconv.ParseInt / ParseUint). */
static bool parse_int_str(const cel_value *s, bool is_unsigned, int64_t *ri, uint64_t *ru)
{
    char buf[32];
    if (s->len == 0 || s->len >= sizeof(buf))
        return false;
    memcpy(buf, s->str, s->len);
    buf[s->len] = 0;
    const char *p = buf;
    bool neg = false;
    if (*p == '+' || *p == '-') {
        neg = *p == '-';
        p++;
    }
    if (!*p)
        return false;
    uint64_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (is_unsigned) {
        if (neg && v)
            return false;
        *ru = v;
        return true;
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return false;
    *ri = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

FN(f_int)
{
    cel_value *x = &a[0];
    switch (x->kind) {
    case CEL_INT:
        return *x;
    case CEL_UINT:
        if (x->u > (uint64_t)INT64_MAX)
            return cel_err(e, n, "range error converting %llu to int", (unsigned long long)x->u);
        return cel_int((int64_t)x->u);
    case CEL_DOUBLE:
        if (!(x->d > -9223372036854775808.0 && x->d < 9223372036854775808.0))
            return cel_err(e, n, "range error converting %.17g to int", x->d);
        return cel_int((int64_t)x->d);
    case CEL_STRING: {
        int64_t v;
        if (!parse_int_str(x, false, &v, NULL))
            return cel_err(e, n, "cannot convert string '%.*s' to int", (int)MIN(x->len, 64u), x->str);
        return cel_int(v);
    }
    case CEL_TIMESTAMP:
        return cel_int(x->i);
    case CEL_DURATION:
        return cel_int(x->i);
    default:
        return cel_err_no_overload(e, n);
    }
}

FN(f_uint)
{
    cel_value *x = &a[0];
    switch (x->kind) {
    case CEL_UINT:
        return *x;
    case CEL_INT:
        if (x->i < 0)
            return cel_err(e, n, "range error converting %lld to uint", (long long)x->i);
        return cel_uint((uint64_t)x->i);
    case CEL_DOUBLE:
        if (!(x->d > -1.0 && x->d < 18446744073709551616.0))
            return cel_err(e, n, "range error converting %.17g to uint", x->d);
        return cel_uint((uint64_t)x->d);
    case CEL_STRING: {
        uint64_t v;
        if (!parse_int_str(x, true, NULL, &v))
            return cel_err(e, n, "cannot convert string '%.*s' to uint", (int)MIN(x->len, 64u), x->str);
        return cel_uint(v);
    }
    default:
        return cel_err_no_overload(e, n);
    }
}

/* Go's strconv.ParseFloat: decimal or special values, no surrounding space. */
static bool parse_double_str(const cel_value *s, double *ret)
{
    char buf[512];
    if (s->len == 0 || s->len >= sizeof(buf))
        return false;
    memcpy(buf, s->str, s->len);
    buf[s->len] = 0;
    const char *p = buf + (buf[0] == '+' || buf[0] == '-');
    if (!strcasecmp(p, "inf") || !strcasecmp(p, "infinity") || !strcasecmp(p, "nan")) {
        double v = (p[0] == 'n' || p[0] == 'N') ? NAN : INFINITY;
        *ret = buf[0] == '-' ? -v : v;
        return true;
    }
    for (const char *q = p; *q; q++)
        if (!((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-'))
            return false;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (*end || end == buf || isinf(v)) /* overflow is a range error, as in Go */
        return false;
    *ret = v;
    return true;
}

FN(f_double)
{
    cel_value *x = &a[0];
    switch (x->kind) {
    case CEL_DOUBLE:
        return *x;
    case CEL_INT:
        return cel_double((double)x->i);
    case CEL_UINT:
        return cel_double((double)x->u);
    case CEL_STRING: {
        double d;
        if (!parse_double_str(x, &d))
            return cel_err(e, n, "cannot convert string '%.*s' to double", (int)MIN(x->len, 64u), x->str);
        return cel_double(d);
    }
    default:
        return cel_err_no_overload(e, n);
    }
}

FN(f_string)
{
    cel_value *x = &a[0];
    char buf[96];
    switch (x->kind) {
    case CEL_STRING:
        return *x;
    case CEL_BOOL:
        return cel_cstring(x->b ? "true" : "false");
    case CEL_INT:
        snprintf(buf, sizeof(buf), "%lld", (long long)x->i);
        break;
    case CEL_UINT:
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)x->u);
        break;
    case CEL_DOUBLE:
        cel_format_double(x->d, buf, sizeof(buf));
        break;
    case CEL_BYTES:
        if (!cel_utf8_valid(x->str, x->len))
            return cel_err(e, n, "invalid UTF-8 in bytes, cannot convert to string");
        return cel_string(x->str, x->len);
    case CEL_TIMESTAMP:
        cel_format_timestamp(x->i, x->len, buf, sizeof(buf));
        break;
    case CEL_DURATION:
        cel_format_duration(x->i, buf, sizeof(buf));
        break;
    case CEL_IP:
    case CEL_CIDR:
        return cel_net_to_string(e, x);
    default:
        return cel_err_no_overload(e, n);
    }
    return cel_make_string(e, buf, strlen(buf));
}

FN(f_bytes)
{
    if (a[0].kind == CEL_BYTES)
        return a[0];
    if (a[0].kind == CEL_STRING)
        return cel_bytes(a[0].str, a[0].len);
    return cel_err_no_overload(e, n);
}

FN(f_bool)
{
    static const char *const yes[] = {"1", "t", "true", "TRUE", "True"};
    static const char *const no[] = {"0", "f", "false", "FALSE", "False"};
    if (a[0].kind == CEL_BOOL)
        return a[0];
    if (a[0].kind != CEL_STRING)
        return cel_err_no_overload(e, n);
    for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
        if (a[0].len == strlen(yes[i]) && !memcmp(a[0].str, yes[i], a[0].len))
            return cel_bool(true);
        if (a[0].len == strlen(no[i]) && !memcmp(a[0].str, no[i], a[0].len))
            return cel_bool(false);
    }
    return cel_err(e, n, "Type conversion error: cannot convert '%.*s' to bool", (int)MIN(a[0].len, 64u),
                   a[0].str);
}

FN(f_dyn)
{
    return a[0];
}

FN(f_type)
{
    return cel_type_of(&a[0]);
}

FN(f_now)
{
    return cel_timestamp(e->act->now_sec, e->act->now_nsec);
}

/* ---- optionals ---- */

FN(f_opt_of)
{
    return cel_make_optional(e, &a[0]);
}

FN(f_opt_none)
{
    return cel_make_optional(e, NULL);
}

/* True for the zero value of V's type. */
static bool is_zero_value(const cel_value *v)
{
    switch (v->kind) {
    case CEL_NULL: return true;
    case CEL_BOOL: return !v->b;
    case CEL_INT: return v->i == 0;
    case CEL_UINT: return v->u == 0;
    case CEL_DOUBLE: return v->d == 0;
    case CEL_STRING:
    case CEL_BYTES: return v->len == 0;
    case CEL_LIST: return v->list->len == 0;
    case CEL_MAP: return v->map->len == 0;
    case CEL_DURATION: return v->i == 0;
    case CEL_TIMESTAMP: return v->i == 0 && v->len == 0;
    case CEL_OPTIONAL: return !v->opt;
    default: return false;
    }
}

FN(f_opt_of_non_zero)
{
    return cel_make_optional(e, is_zero_value(&a[0]) ? NULL : &a[0]);
}

FN(f_opt_has_value)
{
    if (a[0].kind != CEL_OPTIONAL)
        return cel_err_no_overload(e, n);
    return cel_bool(a[0].opt != NULL);
}

FN(f_opt_value)
{
    if (a[0].kind != CEL_OPTIONAL)
        return cel_err_no_overload(e, n);
    if (!a[0].opt)
        return cel_err(e, n, "optional.none() dereference");
    return *a[0].opt;
}

FN(f_opt_or)
{
    if (a[0].kind != CEL_OPTIONAL || a[1].kind != CEL_OPTIONAL)
        return cel_err_no_overload(e, n);
    return a[0].opt ? a[0] : a[1];
}

FN(f_opt_or_value)
{
    if (a[0].kind != CEL_OPTIONAL)
        return cel_err_no_overload(e, n);
    return a[0].opt ? *a[0].opt : a[1];
}

/* ---- math extension ---- */

static bool is_num(const cel_value *v)
{
    return v->kind == CEL_INT || v->kind == CEL_UINT || v->kind == CEL_DOUBLE;
}

/* math.greatest / math.least over the arguments or a single list argument. */
static cel_value extremum(ev *e, const node *n, cel_value *a, size_t na, int sign)
{
    const cel_value *items = a;
    size_t len = na;
    if (na == 1 && a[0].kind == CEL_LIST) {
        items = a[0].list->items;
        len = a[0].list->len;
        if (len == 0)
            return cel_err(e, n, "%s(list) requires at least one argument", n->name);
    }
    const cel_value *best = NULL;
    for (size_t i = 0; i < len; i++) {
        if (!is_num(&items[i]))
            return cel_err_no_overload(e, n);
        if (!best) {
            best = &items[i];
            continue;
        }
        int c = cel_compare(&items[i], best);
        if (c != -2 && c * sign > 0)
            best = &items[i];
    }
    return *best;
}

FN(f_greatest)
{
    return extremum(e, n, a, na, 1);
}

FN(f_least)
{
    return extremum(e, n, a, na, -1);
}

/* ceil, floor, round, trunc, sqrt on doubles, chosen by name. */
FN(f_math_double)
{
    if (a[0].kind != CEL_DOUBLE) {
        if (!strcmp(n->name, "math.sqrt") && (a[0].kind == CEL_INT || a[0].kind == CEL_UINT))
            return cel_double(sqrt(a[0].kind == CEL_INT ? (double)a[0].i : (double)a[0].u));
        return cel_err_no_overload(e, n);
    }
    const char *f = n->name + 5;
    double d = a[0].d;
    if (!strcmp(f, "ceil"))
        return cel_double(ceil(d));
    if (!strcmp(f, "floor"))
        return cel_double(floor(d));
    if (!strcmp(f, "round"))
        return cel_double(round(d));
    if (!strcmp(f, "trunc"))
        return cel_double(trunc(d));
    return cel_double(sqrt(d));
}

/* isNaN, isInf, isFinite. */
FN(f_math_class)
{
    if (a[0].kind != CEL_DOUBLE)
        return cel_err_no_overload(e, n);
    const char *f = n->name + 5;
    if (!strcmp(f, "isNaN"))
        return cel_bool(isnan(a[0].d));
    if (!strcmp(f, "isInf"))
        return cel_bool(isinf(a[0].d));
    return cel_bool(isfinite(a[0].d));
}

FN(f_abs)
{
    switch (a[0].kind) {
    case CEL_INT:
        if (a[0].i == INT64_MIN)
            return overflow(e, n);
        return cel_int(a[0].i < 0 ? -a[0].i : a[0].i);
    case CEL_UINT:
        return a[0];
    case CEL_DOUBLE:
        return cel_double(fabs(a[0].d));
    default:
        return cel_err_no_overload(e, n);
    }
}

FN(f_sign)
{
    switch (a[0].kind) {
    case CEL_INT:
        return cel_int((a[0].i > 0) - (a[0].i < 0));
    case CEL_UINT:
        return cel_uint(a[0].u > 0);
    case CEL_DOUBLE:
        if (isnan(a[0].d) || a[0].d == 0)
            return a[0];
        return cel_double(a[0].d > 0 ? 1.0 : -1.0);
    default:
        return cel_err_no_overload(e, n);
    }
}

/* bitAnd, bitOr, bitXor on two ints or two uints. */
FN(f_bit_binary)
{
    char op = n->name[8]; /* math.bitAnd / bitOr / bitXor */
    if (a[0].kind != a[1].kind || (a[0].kind != CEL_INT && a[0].kind != CEL_UINT))
        return cel_err_no_overload(e, n);
    uint64_t x = a[0].u, y = a[1].u, r = op == 'A' ? x & y : op == 'O' ? x | y : x ^ y;
    return a[0].kind == CEL_INT ? cel_int((int64_t)r) : cel_uint(r);
}

FN(f_bit_not)
{
    if (a[0].kind == CEL_INT)
        return cel_int(~a[0].i);
    if (a[0].kind == CEL_UINT)
        return cel_uint(~a[0].u);
    return cel_err_no_overload(e, n);
}

/* bitShiftLeft / bitShiftRight: logical shifts; 64 or more bits give 0. */
FN(f_bit_shift)
{
    bool left = n->name[13] == 'L';
    if ((a[0].kind != CEL_INT && a[0].kind != CEL_UINT) || a[1].kind != CEL_INT)
        return cel_err_no_overload(e, n);
    if (a[1].i < 0)
        return cel_err(e, n, "math.%s() negative offset: %lld", n->name + 5, (long long)a[1].i);
    uint64_t x = a[0].u, r = a[1].i >= 64 ? 0 : left ? x << a[1].i : x >> a[1].i;
    return a[0].kind == CEL_INT ? cel_int((int64_t)r) : cel_uint(r);
}

/* ---- encoders extension ---- */

FN(f_base64_encode)
{
    if (a[0].kind != CEL_BYTES)
        return cel_err_no_overload(e, n);
    char *out = cel_ev_alloc(e, base64_encoded_size(a[0].len));
    if (!out)
        return cel_err(e, n, "out of memory");
    size_t len = base64_encode(a[0].bytes, a[0].len, out, false);
    return cel_string(out, len);
}

FN(f_base64_decode)
{
    if (a[0].kind != CEL_STRING)
        return cel_err_no_overload(e, n);
    /* padding is optional */
    size_t len = a[0].len, padded = (len + 3) / 4 * 4;
    char *in = cel_ev_alloc(e, padded + 1);
    uint8_t *out = cel_ev_alloc(e, padded / 4 * 3 + 1);
    if (!in || !out)
        return cel_err(e, n, "out of memory");
    memcpy(in, a[0].str, len);
    memset(in + len, '=', padded - len);
    long r = padded - len < 3 ? base64_decode(in, padded, out, padded / 4 * 3 + 1, false) : -EINVAL;
    if (r < 0)
        return cel_err(e, n, "invalid base64 input");
    return cel_bytes(out, (size_t)r);
}

/* ---- the table ---- */

#define G B_GLOBAL
#define R B_RECEIVER
const builtin cel_builtins[] = {
    {"_+_", G, 2, 2, f_add},
    {"_-_", G, 2, 2, f_sub},
    {"_*_", G, 2, 2, f_mul},
    {"_/_", G, 2, 2, f_div},
    {"_%_", G, 2, 2, f_mod},
    {"-_", G, 1, 1, f_neg},
    {"!_", G, 1, 1, f_not},
    {"_==_", G, 2, 2, f_eq},
    {"_!=_", G, 2, 2, f_ne},
    {"_<_", G, 2, 2, f_lt},
    {"_<=_", G, 2, 2, f_le},
    {"_>_", G, 2, 2, f_gt},
    {"_>=_", G, 2, 2, f_ge},
    {"@in", G, 2, 2, f_in},
    {"size", G | R, 1, 1, f_size},
    {"contains", R, 2, 2, f_contains},
    {"startsWith", R, 2, 2, f_starts_with},
    {"endsWith", R, 2, 2, f_ends_with},
    {"matches", G | R, 2, 2, f_matches},
    {"int", G, 1, 1, f_int},
    {"uint", G, 1, 1, f_uint},
    {"double", G, 1, 1, f_double},
    {"string", G, 1, 1, f_string},
    {"bytes", G, 1, 1, f_bytes},
    {"bool", G, 1, 1, f_bool},
    {"dyn", G, 1, 1, f_dyn},
    {"type", G, 1, 1, f_type},
    {"now", G, 0, 0, f_now},
    {"timestamp", G, 1, 1, cel_fn_timestamp},
    {"duration", G, 1, 1, cel_fn_duration},
    {"getFullYear", R, 1, 2, cel_fn_time_get},
    {"getMonth", R, 1, 2, cel_fn_time_get},
    {"getDate", R, 1, 2, cel_fn_time_get},
    {"getDayOfMonth", R, 1, 2, cel_fn_time_get},
    {"getDayOfWeek", R, 1, 2, cel_fn_time_get},
    {"getDayOfYear", R, 1, 2, cel_fn_time_get},
    {"getHours", R, 1, 2, cel_fn_time_get},
    {"getMinutes", R, 1, 2, cel_fn_time_get},
    {"getSeconds", R, 1, 2, cel_fn_time_get},
    {"getMilliseconds", R, 1, 2, cel_fn_time_get},
    {"optional.of", G, 1, 1, f_opt_of},
    {"optional.none", G, 0, 0, f_opt_none},
    {"optional.ofNonZeroValue", G, 1, 1, f_opt_of_non_zero},
    {"hasValue", R, 1, 1, f_opt_has_value},
    {"value", R, 1, 1, f_opt_value},
    {"or", R, 2, 2, f_opt_or},
    {"orValue", R, 2, 2, f_opt_or_value},
    {"math.greatest", G, 1, CEL_MAX_ARGS, f_greatest},
    {"math.least", G, 1, CEL_MAX_ARGS, f_least},
    {"math.ceil", G, 1, 1, f_math_double},
    {"math.floor", G, 1, 1, f_math_double},
    {"math.round", G, 1, 1, f_math_double},
    {"math.trunc", G, 1, 1, f_math_double},
    {"math.sqrt", G, 1, 1, f_math_double},
    {"math.isNaN", G, 1, 1, f_math_class},
    {"math.isInf", G, 1, 1, f_math_class},
    {"math.isFinite", G, 1, 1, f_math_class},
    {"math.abs", G, 1, 1, f_abs},
    {"math.sign", G, 1, 1, f_sign},
    {"math.bitAnd", G, 2, 2, f_bit_binary},
    {"math.bitOr", G, 2, 2, f_bit_binary},
    {"math.bitXor", G, 2, 2, f_bit_binary},
    {"math.bitNot", G, 1, 1, f_bit_not},
    {"math.bitShiftLeft", G, 2, 2, f_bit_shift},
    {"math.bitShiftRight", G, 2, 2, f_bit_shift},
    {"base64.encode", G, 1, 1, f_base64_encode},
    {"base64.decode", G, 1, 1, f_base64_decode},
    {"charAt", R, 2, 2, cel_fn_char_at},
    {"indexOf", R, 2, 3, cel_fn_index_of},
    {"lastIndexOf", R, 2, 3, cel_fn_last_index_of},
    {"lowerAscii", R, 1, 1, cel_fn_lower_ascii},
    {"upperAscii", R, 1, 1, cel_fn_upper_ascii},
    {"replace", R, 3, 4, cel_fn_replace},
    {"split", R, 2, 3, cel_fn_split},
    {"substring", R, 2, 3, cel_fn_substring},
    {"trim", R, 1, 1, cel_fn_trim},
    {"join", R, 1, 2, cel_fn_join},
    {"strings.quote", G, 1, 1, cel_fn_quote},
    {"format", R, 2, 2, cel_fn_format},
    {"reverse", R, 1, 1, cel_fn_reverse},
    {"ip", G | R, 1, 1, cel_fn_ip},
    {"cidr", G, 1, 1, cel_fn_cidr},
    {"isIP", G, 1, 1, cel_fn_is_ip},
    {"ip.isCanonical", G, 1, 1, cel_fn_ip_is_canonical},
    {"family", R, 1, 1, cel_fn_ip_family},
    {"isUnspecified", R, 1, 1, cel_fn_ip_predicate},
    {"isLoopback", R, 1, 1, cel_fn_ip_predicate},
    {"isGlobalUnicast", R, 1, 1, cel_fn_ip_predicate},
    {"isLinkLocalMulticast", R, 1, 1, cel_fn_ip_predicate},
    {"isLinkLocalUnicast", R, 1, 1, cel_fn_ip_predicate},
    {"containsIP", R, 2, 2, cel_fn_contains_ip},
    {"containsCIDR", R, 2, 2, cel_fn_contains_cidr},
    {"prefixLength", R, 1, 1, cel_fn_cidr_prefix_length},
    {"masked", R, 1, 1, cel_fn_cidr_masked},
};
#undef G
#undef R
const size_t cel_nbuiltins = ELEMENTSOF(cel_builtins);

int cel_builtin_find(const char *name, bool receiver, size_t nargs)
{
    uint8_t style = receiver ? B_RECEIVER : B_GLOBAL;
    for (size_t i = 0; i < cel_nbuiltins; i++) {
        const builtin *b = &cel_builtins[i];
        if ((b->style & style) && nargs >= b->min && nargs <= b->max && !strcmp(b->name, name))
            return (int)i;
    }
    return -1;
}

int cel_builtin_named(const char *name, bool receiver)
{
    uint8_t style = receiver ? B_RECEIVER : B_GLOBAL;
    for (size_t i = 0; i < cel_nbuiltins; i++)
        if ((cel_builtins[i].style & style) && !strcmp(cel_builtins[i].name, name))
            return (int)i;
    return -1;
}
