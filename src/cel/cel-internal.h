/* Internals shared by the CEL compiler, evaluator and function library. */
#pragma once

#include <stdarg.h>
#include <string.h>

#include "basic/macro.h"
#include "cel/cel.h"

/* ---- arena ---- */
char *cel_arena_strndup(cel_arena *a, const char *s, size_t n);
char *cel_arena_vprintf(cel_arena *a, const char *fmt, va_list ap) _printf_(2, 0);
/* True once an allocation failed because the cap was reached. */
bool cel_arena_exhausted(const cel_arena *a);
/* The PCRE2 general context that allocates from A (created on first use). */
void *cel_arena_regex_context(cel_arena *a);

/* A growable string in an arena, capped at MAX bytes; growth copies into a
 * new arena block (the old one is reclaimed at reset). data is NUL-terminated. */
typedef struct cel_buf {
    cel_arena *arena;
    char *data;
    size_t len, cap, max;
} cel_buf;
void cel_buf_init(cel_buf *b, cel_arena *a, size_t max);
/* Each returns 0, -E2BIG past the maximum, or -ENOMEM when the arena is full. */
int cel_buf_append(cel_buf *b, const void *p, size_t n);

/* Where the printers write: a host strbuf (sb) or an arena buffer (ab). */
typedef struct cel_out {
    strbuf *sb;
    cel_buf *ab;
} cel_out;
int cel_out_append(cel_out *o, const void *p, size_t n);
int cel_out_puts(cel_out *o, const char *s);
int cel_out_putc(cel_out *o, char c);
/* Formats at most 511 bytes (-E2BIG beyond): numbers and names. */
int cel_out_printf(cel_out *o, const char *fmt, ...) _printf_(2, 3);

/* ---- syntax tree ---- */
typedef enum node_kind {
    /* produced by the parser */
    N_LITERAL,   /* val */
    N_IDENT,     /* name */
    N_SELECT,    /* args[0].name; F_OPTIONAL for .? */
    N_INDEX,     /* args[0][args[1]]; F_OPTIONAL for [?] */
    N_CALL,      /* name(args) or args[0].name(args[1..]) with F_RECEIVER */
    N_LIST,      /* args; optmask marks ?elements */
    N_MAP,       /* args = k0, v0, k1, v1, ...; optmask marks ?keys */
    N_COND,      /* args[0] ? args[1] : args[2] */
    N_AND,       /* args[0] && args[1] */
    N_OR,        /* args[0] || args[1] */
    /* produced by the resolver */
    N_VAR,       /* activation slot */
    N_LOCAL,     /* comprehension or bind variable slot */
    N_UNDECLARED, /* unresolved identifier (lenient mode): an error when evaluated */
    N_HAS,       /* has(args[0].name) */
    N_FUNC,      /* builtin op applied to args */
    N_UNBOUND,   /* unknown function (lenient mode): an error when evaluated */
    N_LOOP,      /* comprehension: op = loop kind, args = range, step[, filter] */
    N_BIND,      /* cel.bind: slot = args[0] evaluated, then args[1] */
    N_OPTMAP,    /* args[0].optMap(slot, args[1]); F_FLAT for optFlatMap */
} node_kind;

enum {
    F_OPTIONAL = 1 << 0,
    F_RECEIVER = 1 << 1,
    F_FLAT = 1 << 2,
    F_QUOTED = 1 << 3, /* backtick-quoted field name */
};

typedef enum loop_kind {
    LOOP_ALL,
    LOOP_EXISTS,
    LOOP_EXISTS_ONE,
    LOOP_MAP,        /* list of step results; with a filter when nargs == 3 */
    LOOP_FILTER,
    LOOP_TRANSFORM_LIST,
    LOOP_TRANSFORM_MAP,
} loop_kind;

typedef struct node node;
struct node {
    uint8_t kind;
    uint8_t flags;
    uint16_t op;   /* N_FUNC: builtin index; N_LOOP: loop_kind */
    uint32_t line, col;
    uint32_t nargs;
    node **args;
    const char *name;  /* ident, field or function name (NUL-terminated) */
    uint32_t name_len;
    int32_t slot;      /* N_VAR, N_LOCAL, N_BIND, N_OPTMAP, N_LOOP (first variable) */
    int32_t slot2;     /* N_LOOP: second variable or -1 */
    uint8_t *optmask;  /* N_LIST / N_MAP: per entry, 1 when optional */
    void *regex;       /* N_FUNC matches() with a constant pattern */
    uint32_t hint;     /* N_SELECT, N_HAS: map entry index where the field was last found
                        * (a benign racy cache, read and written with relaxed atomics) */
    cel_value val;     /* N_LITERAL */
};

struct cel_program {
    cel_arena *mem;   /* nodes, literals, names */
    node *root;
    size_t nvars;
    size_t nlocals;
    void **regexes;   /* compiled patterns to free */
    size_t nregexes;
    uint64_t fold_budget; /* cost left for compile-time evaluation */
};

/* ---- evaluation context ---- */
typedef struct ev {
    const cel_program *prog;
    const cel_activation *act;
    cel_arena *arena;
    uint64_t cost;
    uint64_t limit;
    int abort;          /* 0, -ECANCELED or -ENOMEM: stops everything */
    cel_value *locals;
} ev;

/* Evaluates N (whose leaves are literals) at compile time into the program's
 * memory; 0 and the value, or -EINVAL when it fails or is too costly (each
 * program may spend CEL_FOLD_BUDGET units of cost on folding in all). */
#define CEL_FOLD_BUDGET 100000u
int cel_fold(cel_program *p, const node *n, cel_value *ret_value);

/* A builtin: ARGS are evaluated and free of errors and unknowns. */
typedef cel_value (*cel_fn)(ev *e, const node *n, cel_value *args, size_t nargs);

typedef struct builtin {
    const char *name;
    uint8_t style;  /* B_GLOBAL and/or B_RECEIVER */
    uint16_t min, max; /* argument counts, receiver included */
    cel_fn fn;
} builtin;

enum { B_GLOBAL = 1, B_RECEIVER = 2 };

extern const builtin cel_builtins[];
extern const size_t cel_nbuiltins;
/* Index of the builtin NAME callable with NARGS arguments in the given style, or -1. */
int cel_builtin_find(const char *name, bool receiver, size_t nargs);
/* Index of a builtin by name alone (any arity), or -1. */
int cel_builtin_named(const char *name, bool receiver);

/* ---- evaluator services for the function library ---- */
/* An error value at N's position; the message is formatted into the arena. */
cel_value cel_err(ev *e, const node *n, const char *fmt, ...) _printf_(3, 4);
cel_value cel_err_no_overload(ev *e, const node *n);
/* Charges COST units; false (and e->abort set) once the limit is passed. */
bool cel_charge(ev *e, uint64_t cost);
/* Arena allocation that aborts the evaluation when the arena is full. */
void *cel_ev_alloc(ev *e, size_t n);
cel_value cel_make_string(ev *e, const char *s, size_t n);
cel_value cel_make_optional(ev *e, const cel_value *v);
cel_value cel_make_list(ev *e, size_t n, cel_value **ret_items);
cel_value cel_type_value(const char *name);
/* The type of V as a type value. */
cel_value cel_type_of(const cel_value *v);

/* ---- value helpers (cel-value.c) ---- */
/* Equality of N bytes; short keys (the common case of field names and
 * methods) are compared inline rather than through a libc call. */
static inline bool cel_bytes_eq(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    if (n > 16)
        return !memcmp(x, y, n);
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return false;
    return true;
}

/* CEL equality: numbers compare across int, uint and double; values of
 * different kinds are unequal; errors and unknowns are never equal. */
bool cel_equal(const cel_value *a, const cel_value *b);
/* Ordering of comparable values: -1, 0, 1; -2 when unordered (NaN); -3 when
 * the kinds cannot be compared (no such overload). */
int cel_compare(const cel_value *a, const cel_value *b);
/* The same, adding the number of elements and entries visited to *WORK so
 * that the evaluator can charge for it. */
bool cel_equal_work(const cel_value *a, const cel_value *b, uint64_t *work);
const cel_value *cel_map_find_work(const cel_map *m, const cel_value *key, uint64_t *work);
/* Looks up KEY in M (an integral double finds the equal int or uint key):
 * the value, or NULL when absent or KEY is not a valid key kind. */
const cel_value *cel_map_find(const cel_map *m, const cel_value *key);
bool cel_valid_key_kind(const cel_value *k);
bool cel_utf8_valid(const char *s, size_t n);
size_t cel_utf8_count(const char *s, size_t n);
/* Decodes the code point at S (N bytes left) into *CP; returns its length. */
size_t cel_utf8_decode(const char *s, size_t n, uint32_t *cp);
size_t cel_utf8_encode(uint32_t cp, char *out);
/* Go's strconv.FormatFloat(d, 'g', -1, 64) into BUF (at least 32 bytes). */
void cel_format_double(double d, char *buf, size_t size);
/* Appends the rendering used by the strings extension's %s (strings bare,
 * map keys sorted); scratch memory from the evaluation arena. */
int cel_value_to_display(ev *e, const cel_value *v, cel_out *out);

/* ---- time (cel-time.c) ---- */
#define CEL_TS_MIN INT64_C(-62135596800) /* 0001-01-01T00:00:00Z */
#define CEL_TS_MAX INT64_C(253402300799) /* 9999-12-31T23:59:59Z */
int cel_parse_timestamp(const char *s, size_t n, int64_t *ret_sec, uint32_t *ret_nsec);
int cel_parse_duration(const char *s, size_t n, int64_t *ret_ns);
/* RFC 3339 with trailing-zero-trimmed fraction into BUF (>= 40 bytes). */
void cel_format_timestamp(int64_t sec, uint32_t nsec, char *buf, size_t size);
void cel_format_duration(int64_t ns, char *buf, size_t size);
/* UTC offset in seconds of time zone TZ (IANA name or [+-]hh:mm) at instant SEC. */
int cel_tz_offset(const char *tz, size_t n, int64_t sec, int32_t *ret_offset);

/* ---- regular expressions (cel-regex.c) ---- */
/* Compiles PATTERN (RE2 syntax; PCRE-only constructs such as backreferences
 * and lookaround are refused) from ARENA, or with malloc when ARENA is NULL
 * (then release it with cel_regex_free). NULL and a message in ERRBUF on failure. */
void *cel_regex_compile(const char *pattern, size_t n, cel_arena *arena, char *errbuf, size_t errsize);
void cel_regex_free(void *re);
/* Searches S for RE: 1 on a match, 0 on none, negative errno when the match
 * limits are hit (-E2BIG), -EINVAL when S is not UTF-8, -ENOMEM. Scratch
 * memory comes from ARENA. */
int cel_regex_search(void *re, const char *s, size_t n, cel_arena *arena);
