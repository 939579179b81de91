/* Cloister's CEL (Common Expression Language) implementation.
 *
 * An expression is compiled once against an environment (declared variable
 * names, an optional container) into an immutable program that any number of
 * threads may evaluate concurrently. Each evaluation takes an activation (the
 * values of the declared variables), an arena from which every allocation of
 * that evaluation is made, and a cost limit that bounds the work it may do.
 *
 * Ownership:
 *  - cel_env, cel_program and cel_arena are heap objects owned by the caller
 *    and released with their *_free() function (which accept NULL). A program
 *    does not reference its environment after cel_compile() returns.
 *  - Values are small structs passed by value. Strings, bytes, lists and maps
 *    they point to are borrowed: values built by the host must stay alive and
 *    unchanged for the duration of an evaluation; values produced by an
 *    evaluation live in its arena (or in the program, for constants) and are
 *    valid until the arena is reset or freed.
 *  - Strings are UTF-8 and are not NUL-terminated (use len).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "basic/strbuf.h"

/* Caps applied by the compiler. */
#define CEL_MAX_SOURCE_LEN (100u * 1024u) /* bytes of expression text */
#define CEL_MAX_NESTING 128u              /* depth of the syntax tree and of parentheses */
#define CEL_MAX_ARGS 1024u                /* call arguments, list/map literal entries */

typedef enum cel_kind {
    CEL_NULL = 0,
    CEL_BOOL,
    CEL_INT,
    CEL_UINT,
    CEL_DOUBLE,
    CEL_STRING,
    CEL_BYTES,
    CEL_LIST,
    CEL_MAP,
    CEL_TIMESTAMP,
    CEL_DURATION,
    CEL_TYPE,
    CEL_OPTIONAL,
    CEL_IP,
    CEL_CIDR,
    CEL_ERROR,
    CEL_UNKNOWN,
} cel_kind;

typedef struct cel_list cel_list;
typedef struct cel_map cel_map;
typedef struct cel_error cel_error;
typedef struct cel_unknown cel_unknown;
typedef struct cel_ipnet cel_ipnet;
typedef struct cel_value cel_value;

/* A CEL value. `len` is the byte length of a string or bytes value, the
 * nanoseconds (0..999999999) of a timestamp, and the length of a type name. */
struct cel_value {
    uint32_t kind; /* cel_kind */
    uint32_t len;
    union {
        bool b;
        int64_t i;   /* int; timestamp: seconds since the Unix epoch; duration: nanoseconds */
        uint64_t u;
        double d;
        const char *str;        /* string; type: its name ("int", "net.IP", ...) */
        const uint8_t *bytes;
        const cel_list *list;
        const cel_map *map;
        const cel_value *opt;   /* optional: NULL when empty */
        const cel_ipnet *ip;    /* ip and cidr */
        const cel_error *err;
        const cel_unknown *unk;
    };
};

struct cel_list {
    size_t len;
    const cel_value *items;
};

typedef struct cel_map_entry {
    cel_value key; /* bool, int, uint or string */
    cel_value value;
} cel_map_entry;

/* Keys are unique (1 and 1u count as the same key); lookups scan the entries,
 * so hosts should keep maps small or nest them (ctx.request.http...). */
struct cel_map {
    size_t len;
    const cel_map_entry *entries;
};

/* An evaluation or compilation error: a message and the 1-based line and
 * column of the expression that raised it. */
struct cel_error {
    const char *message; /* NUL-terminated */
    uint32_t line;
    uint32_t column;
};

/* The ids of the expressions whose values were unknown (see cel_unknown_value). */
struct cel_unknown {
    size_t len;
    const uint64_t *ids;
};

/* An IP address (prefix 128 or 32 for a plain address) or a CIDR network.
 * IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). */
struct cel_ipnet {
    uint8_t addr[16];
    uint8_t family; /* 4 or 6 */
    uint8_t prefix; /* prefix length in the address family's bits */
};

/* ---- value constructors (no allocation; pointers are borrowed) ---- */
static inline cel_value cel_null(void) { return (cel_value){.kind = CEL_NULL}; }
static inline cel_value cel_bool(bool b) { return (cel_value){.kind = CEL_BOOL, .b = b}; }
static inline cel_value cel_int(int64_t i) { return (cel_value){.kind = CEL_INT, .i = i}; }
static inline cel_value cel_uint(uint64_t u) { return (cel_value){.kind = CEL_UINT, .u = u}; }
static inline cel_value cel_double(double d) { return (cel_value){.kind = CEL_DOUBLE, .d = d}; }
/* S must be valid UTF-8 of LEN bytes (LEN < 4 GiB). */
static inline cel_value cel_string(const char *s, size_t len)
{
    return (cel_value){.kind = CEL_STRING, .len = (uint32_t)len, .str = s};
}
static inline cel_value cel_bytes(const void *p, size_t len)
{
    return (cel_value){.kind = CEL_BYTES, .len = (uint32_t)len, .bytes = p};
}
static inline cel_value cel_list_value(const cel_list *l) { return (cel_value){.kind = CEL_LIST, .list = l}; }
static inline cel_value cel_map_value(const cel_map *m) { return (cel_value){.kind = CEL_MAP, .map = m}; }
/* NSEC in 0..999999999; the range is years 0001..9999 (not checked here). */
static inline cel_value cel_timestamp(int64_t sec, uint32_t nsec)
{
    return (cel_value){.kind = CEL_TIMESTAMP, .len = nsec, .i = sec};
}
static inline cel_value cel_duration(int64_t nsec) { return (cel_value){.kind = CEL_DURATION, .i = nsec}; }
/* An unknown value (partial evaluation): U lists the host's attribute ids. */
static inline cel_value cel_unknown_value(const cel_unknown *u) { return (cel_value){.kind = CEL_UNKNOWN, .unk = u}; }
/* A string value from a NUL-terminated string. */
static inline cel_value cel_cstring(const char *s) { return cel_string(s, strlen(s)); }

/* True only for the bool true: what a policy condition needs to allow. */
static inline bool cel_value_is_true(const cel_value *v) { return v->kind == CEL_BOOL && v->b; }

/* ---- arena ---- */
typedef struct cel_arena cel_arena;

/* A new arena that may hold at most MAX_BYTES (0: 16 MiB) of allocations.
 * Returns NULL when out of memory. */
cel_arena *cel_arena_new(size_t max_bytes);
/* Releases everything allocated since the last reset; keeps one block for reuse. */
void cel_arena_reset(cel_arena *a);
void cel_arena_free(cel_arena *a);
/* Allocates N bytes aligned for any value; NULL when the cap is reached. */
void *cel_arena_alloc(cel_arena *a, size_t n);

/* Arena-backed builders for the host. Each returns NULL when the arena is full;
 * the caller fills the N items (or entries) before evaluating. */
cel_list *cel_list_new(cel_arena *a, size_t n, cel_value **ret_items);
cel_map *cel_map_new(cel_arena *a, size_t n, cel_map_entry **ret_entries);

/* ---- environment and compilation ---- */
typedef struct cel_env cel_env;
typedef struct cel_program cel_program;

/* A new environment with no variables; NULL when out of memory. */
cel_env *cel_env_new(void);
void cel_env_free(cel_env *env);
/* Declares variable NAME (may be qualified, "a.b.c"); returns its slot in the
 * activation (0, 1, ...), -EEXIST, -EINVAL for a bad name or -ENOMEM. */
int cel_env_declare(cel_env *env, const char *name);
/* Slot of a declared variable, or -ENOENT. */
int cel_env_lookup(const cel_env *env, const char *name);
/* Names are resolved relative to CONTAINER ("com.example") as in protobuf. */
int cel_env_set_container(cel_env *env, const char *container);
/* When lenient, undeclared identifiers and unknown functions compile and
 * evaluate to errors (like cel-go without the type checker); by default they
 * are compile errors. */
void cel_env_set_lenient(cel_env *env, bool lenient);

/* Compiles SRC (LEN bytes of UTF-8) in ENV (NULL: no variables, strict).
 * Returns 0 and a program in *ret_program (the caller frees it), or a negative
 * errno: -EINVAL (syntax, unknown name), -E2BIG (a cap exceeded) or -ENOMEM,
 * described in *err when ERR is not NULL: its message points into a
 * thread-local buffer valid until the next cel_compile() on that thread. */
int cel_compile(const cel_env *env, const char *src, size_t len, cel_program **ret_program, cel_error *err);
void cel_program_free(cel_program *p);
/* The number of activation slots the program was compiled with. */
size_t cel_program_nvars(const cel_program *p);

/* ---- evaluation ---- */
typedef struct cel_activation {
    const cel_value *vars; /* indexed by the slots cel_env_declare() returned */
    size_t nvars;          /* slots past nvars are unbound (an error if read) */
    int64_t now_sec;       /* the value of now(), UTC */
    uint32_t now_nsec;
} cel_activation;

/* Evaluates P. Returns 0 and the result in *ret_value, which may be an error
 * value (division by zero, no such key, ...) or an unknown value: CEL errors are
 * values. Returns -ECANCELED when COST_LIMIT (steps plus comprehension
 * iterations plus bytes produced / 64) is exceeded, -ENOMEM when the arena is
 * full; then *ret_value is untouched. Allocates only from ARENA (time zone
 * data is loaded once per process and cached); reset the arena before the next
 * evaluation, which invalidates the values of this one. */
int cel_eval(const cel_program *p, const cel_activation *act, cel_arena *arena, uint64_t cost_limit,
             cel_value *ret_value);

/* ---- inspection ---- */
/* "int", "list", "google.protobuf.Timestamp", ... for any value. */
const char *cel_kind_name(cel_kind k);
/* Appends a JSON-like rendering of V (strings quoted, bytes as b"...",
 * errors as error("...")) to OUT; returns 0 or the strbuf error. */
int cel_value_format(const cel_value *v, strbuf *out);
/* Heterogeneous CEL equality (1 == 1u == 1.0); false for errors. */
bool cel_value_equal(const cel_value *a, const cel_value *b);
/* Map lookup with CEL key semantics; NULL when absent. */
const cel_value *cel_map_get(const cel_map *m, const cel_value *key);
/* Lookup of a string key; NULL when absent. */
const cel_value *cel_map_get_str(const cel_map *m, const char *key, size_t len);
