/* cel-conformance [--min-pass-percent P] [-v] DIR
 *
 * Runs every *.json file of CEL conformance cases in DIR (format: the
 * vectors README; values in the proto3 JSON form of cel.expr.Value), prints
 * each failing case and ends with "N passed, M failed, K skipped". Exits 1
 * when fewer than P percent of all cases passed (default 100).
 *
 * A case is compiled strictly (variables declared from type_env and bindings)
 * unless it sets disable_check, which selects lenient compilation like an
 * unchecked cel-go program. A case expecting an evaluation error passes when
 * compilation or evaluation fails. Cases whose values need protobuf messages
 * (object_value, enum_value) are skipped. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "cel/cel.h"

#define COST_LIMIT 10000000u

static const cel_error unbound_error = {.message = "unbound variable"};

DEFINE_TRIVIAL_CLEANUP_FUNC(cel_env *, cel_env_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(cel_program *, cel_program_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(cel_arena *, cel_arena_free);

typedef struct stats {
    unsigned passed, failed, skipped;
} stats;

/* Converts a proto3-JSON cel.expr.Value into *RET, allocating from A.
 * Returns 0, -EOPNOTSUPP for message values, -EINVAL when malformed. */
static int value_from_json(json_t *j, cel_arena *a, cel_value *ret)
{
    if (!json_is_object(j))
        return -EINVAL;
    json_t *v;
    if ((v = json_object_get(j, "null_value"))) {
        *ret = cel_null();
    } else if ((v = json_object_get(j, "bool_value"))) {
        *ret = cel_bool(json_is_true(v));
    } else if ((v = json_object_get(j, "int64_value"))) {
        if (json_is_integer(v)) {
            *ret = cel_int(json_integer_value(v));
        } else {
            const char *s = json_string_value(v);
            char *end;
            errno = 0;
            long long x = s ? strtoll(s, &end, 10) : 0;
            if (!s || *end || errno)
                return -EINVAL;
            *ret = cel_int(x);
        }
    } else if ((v = json_object_get(j, "uint64_value"))) {
        if (json_is_integer(v)) {
            *ret = cel_uint((uint64_t)json_integer_value(v));
        } else {
            const char *s = json_string_value(v);
            char *end;
            errno = 0;
            unsigned long long x = s ? strtoull(s, &end, 10) : 0;
            if (!s || *end || errno)
                return -EINVAL;
            *ret = cel_uint(x);
        }
    } else if ((v = json_object_get(j, "double_value"))) {
        if (json_is_number(v))
            *ret = cel_double(json_number_value(v));
        else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            if (!strcmp(s, "NaN"))
                *ret = cel_double(NAN);
            else if (!strcmp(s, "Infinity"))
                *ret = cel_double(INFINITY);
            else if (!strcmp(s, "-Infinity"))
                *ret = cel_double(-INFINITY);
            else
                *ret = cel_double(strtod(s, NULL));
        } else
            return -EINVAL;
    } else if ((v = json_object_get(j, "string_value"))) {
        if (!json_is_string(v))
            return -EINVAL;
        size_t n = json_string_length(v);
        char *s = cel_arena_alloc(a, n + 1);
        if (!s)
            return -ENOMEM;
        memcpy(s, json_string_value(v), n + 1);
        *ret = cel_string(s, n);
    } else if ((v = json_object_get(j, "bytes_value"))) {
        const char *s = json_string_value(v);
        if (!s)
            return -EINVAL;
        size_t n = strlen(s);
        uint8_t *out = cel_arena_alloc(a, n + 1);
        if (!out)
            return -ENOMEM;
        long len = base64_decode(s, n, out, n + 1, false);
        if (len < 0)
            return -EINVAL;
        *ret = cel_bytes(out, (size_t)len);
    } else if ((v = json_object_get(j, "list_value"))) {
        json_t *vals = json_object_get(v, "values");
        size_t n = json_is_array(vals) ? json_array_size(vals) : 0;
        cel_value *items;
        cel_list *l = cel_list_new(a, n, &items);
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
            int r = value_from_json(json_array_get(vals, i), a, &items[i]);
            if (r < 0)
                return r;
        }
        *ret = cel_list_value(l);
    } else if ((v = json_object_get(j, "map_value"))) {
        json_t *ents = json_object_get(v, "entries");
        size_t n = json_is_array(ents) ? json_array_size(ents) : 0;
        cel_map_entry *entries;
        cel_map *m = cel_map_new(a, n, &entries);
        if (!m)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
            json_t *ent = json_array_get(ents, i);
            int r = value_from_json(json_object_get(ent, "key"), a, &entries[i].key);
            if (r >= 0)
                r = value_from_json(json_object_get(ent, "value"), a, &entries[i].value);
            if (r < 0)
                return r;
        }
        *ret = cel_map_value(m);
    } else if ((v = json_object_get(j, "type_value"))) {
        const char *s = json_string_value(v);
        if (!s)
            return -EINVAL;
        size_t n = strlen(s);
        char *copy = cel_arena_alloc(a, n + 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, s, n + 1);
        *ret = (cel_value){.kind = CEL_TYPE, .len = (uint32_t)n, .str = copy};
    } else if (json_object_get(j, "object_value") || json_object_get(j, "enum_value")) {
        return -EOPNOTSUPP;
    } else {
        return -EINVAL;
    }
    return 0;
}

/* Strict structural equality for checking results: kinds must match (1 is not
 * 1u), doubles compare bitwise up to NaN, maps as sets of entries. */
static bool same_value(const cel_value *x, const cel_value *y)
{
    if (x->kind != y->kind)
        return false;
    switch (x->kind) {
    case CEL_DOUBLE:
        if (isnan(x->d) || isnan(y->d))
            return isnan(x->d) && isnan(y->d);
        return x->d == y->d && signbit(x->d) == signbit(y->d);
    case CEL_LIST:
        if (x->list->len != y->list->len)
            return false;
        for (size_t i = 0; i < x->list->len; i++)
            if (!same_value(&x->list->items[i], &y->list->items[i]))
                return false;
        return true;
    case CEL_MAP:
        if (x->map->len != y->map->len)
            return false;
        for (size_t i = 0; i < x->map->len; i++) {
            bool found = false;
            for (size_t k = 0; k < y->map->len && !found; k++)
                found = same_value(&x->map->entries[i].key, &y->map->entries[k].key) &&
                        same_value(&x->map->entries[i].value, &y->map->entries[k].value);
            if (!found)
                return false;
        }
        return true;
    default:
        return cel_value_equal(x, y);
    }
}

static void print_value(const char *label, const cel_value *v, strbuf *out)
{
    strbuf_puts(out, label);
    cel_value_format(v, out);
}

/* Runs one case; updates ST and prints a line for a failure. */
static void run_case(json_t *c, const char *fname, stats *st, bool verbose)
{
    const char *file = json_string_value(json_object_get(c, "file"));
    const char *section = json_string_value(json_object_get(c, "section"));
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *expr = json_string_value(json_object_get(c, "expr"));
    const char *container = json_string_value(json_object_get(c, "container"));
    json_t *bindings = json_object_get(c, "bindings");
    json_t *type_env = json_object_get(c, "type_env");
    json_t *expected = json_object_get(c, "value");
    bool want_error = json_object_get(c, "eval_error") || json_object_get(c, "any_eval_errors");
    bool lenient = json_is_true(json_object_get(c, "disable_check"));
    char id[512];
    snprintf(id, sizeof(id), "%s/%s/%s", file ? file : fname, section ? section : "?", name ? name : "?");

    _cleanup_strbuf_ strbuf msg;
    strbuf_init(&msg, 64 * 1024);
    _cleanup_(cel_env_freep) cel_env *env = cel_env_new();
    _cleanup_(cel_arena_freep) cel_arena *arena = cel_arena_new(64u * 1024u * 1024u);
    if (!env || !arena || !expr) {
        printf("FAIL %s: cannot set up the case\n", id);
        st->failed++;
        return;
    }
    cel_env_set_lenient(env, lenient);
    if (container)
        cel_env_set_container(env, container);
    size_t i;
    json_t *te;
    json_array_foreach(type_env, i, te) {
        const char *n = json_string_value(json_object_get(te, "name"));
        if (n && json_object_get(te, "ident"))
            cel_env_declare(env, n);
    }
    const char *key;
    json_t *b;
    json_object_foreach(bindings, key, b) cel_env_declare(env, key);

    /* the expected result */
    cel_value want = cel_bool(true);
    if (expected && !json_is_null(expected)) {
        int r = value_from_json(expected, arena, &want);
        if (r == -EOPNOTSUPP) {
            st->skipped++;
            if (verbose)
                printf("SKIP %s: expected value needs protobuf messages\n", id);
            return;
        }
        if (r < 0) {
            printf("FAIL %s: malformed expected value\n", id);
            st->failed++;
            return;
        }
    }
    /* the activation */
    size_t nvars = 0;
    json_object_foreach(bindings, key, b) nvars++;
    nvars += type_env ? json_array_size(type_env) : 0;
    cel_value *vars = cel_arena_alloc(arena, (nvars ? nvars : 1) * sizeof(cel_value));
    bool *bound = cel_arena_alloc(arena, nvars ? nvars : 1);
    if (!vars || !bound) {
        printf("FAIL %s: out of memory\n", id);
        st->failed++;
        return;
    }
    memset(bound, 0, nvars ? nvars : 1);
    json_object_foreach(bindings, key, b) {
        int slot = cel_env_lookup(env, key);
        int r = slot < 0 ? -EINVAL : value_from_json(json_object_get(b, "value"), arena, &vars[slot]);
        if (r == -EOPNOTSUPP) {
            st->skipped++;
            if (verbose)
                printf("SKIP %s: binding '%s' needs protobuf messages\n", id, key);
            return;
        }
        if (r < 0) {
            printf("FAIL %s: malformed binding '%s'\n", id, key);
            st->failed++;
            return;
        }
        bound[slot] = true;
    }
    for (size_t k = 0; k < nvars; k++)
        if (!bound[k])
            vars[k] = (cel_value){.kind = CEL_ERROR, .err = &unbound_error};

    _cleanup_(cel_program_freep) cel_program *prog = NULL;
    cel_error cerr;
    int r = cel_compile(env, expr, json_string_length(json_object_get(c, "expr")), &prog, &cerr);
    if (r < 0) {
        if (want_error) {
            st->passed++;
            if (verbose)
                printf("PASS %s (compile error: %s)\n", id, cerr.message);
            return;
        }
        print_value("expected ", &want, &msg);
        printf("FAIL %s: %s, got compile error at %u:%u: %s\n", id, msg.data, cerr.line, cerr.column,
               cerr.message);
        st->failed++;
        return;
    }
    cel_activation act = {.vars = vars, .nvars = nvars};
    cel_value got;
    r = cel_eval(prog, &act, arena, COST_LIMIT, &got);
    if (r < 0) {
        if (want_error) {
            st->passed++;
            return;
        }
        printf("FAIL %s: evaluation aborted: %s\n", id, strerror(-r));
        st->failed++;
        return;
    }
    bool ok = want_error ? got.kind == CEL_ERROR : same_value(&want, &got);
    if (ok) {
        st->passed++;
        if (verbose && want_error) {
            json_t *errs = json_object_get(json_object_get(c, "eval_error"), "errors");
            const char *wmsg = json_string_value(json_object_get(json_array_get(errs, 0), "message"));
            printf("PASS %s: error \"%s\" (the vector says \"%s\")\n", id, got.err->message, wmsg ? wmsg : "");
        } else if (verbose) {
            printf("PASS %s\n", id);
        }
        return;
    }
    if (want_error)
        strbuf_puts(&msg, "expected an error");
    else
        print_value("expected ", &want, &msg);
    print_value(", got ", &got, &msg);
    printf("FAIL %s: %s\n", id, msg.data ? msg.data : "");
    st->failed++;
}

static int json_filter(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return n > 5 && !strcmp(d->d_name + n - 5, ".json");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"min-pass-percent", required_argument, NULL, 'p'},
        {"verbose", no_argument, NULL, 'v'},
        {},
    };
    double min_pct = 100;
    bool verbose = false;
    int c;
    while ((c = getopt_long(argc, argv, "p:v", opts, NULL)) >= 0) {
        switch (c) {
        case 'p':
            min_pct = strtod(optarg, NULL);
            break;
        case 'v':
            verbose = true;
            break;
        default:
            fprintf(stderr, "usage: cel-conformance [--min-pass-percent P] [-v] DIR\n");
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: cel-conformance [--min-pass-percent P] [-v] DIR\n");
        return 2;
    }
    const char *dir = argv[optind];
    struct dirent **files;
    int nfiles = scandir(dir, &files, json_filter, alphasort);
    if (nfiles < 0) {
        fprintf(stderr, "cel-conformance: %s: %s\n", dir, strerror(errno));
        return 2;
    }
    stats total = {0};
    for (int f = 0; f < nfiles; f++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, files[f]->d_name);
        json_error_t jerr;
        _cleanup_(json_decrefp) json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &jerr);
        if (!json_is_array(cases)) {
            printf("FAIL %s: cannot parse: %s\n", files[f]->d_name, jerr.text);
            total.failed++;
            free(files[f]);
            continue;
        }
        stats st = {0};
        size_t i;
        json_t *cs;
        json_array_foreach(cases, i, cs) run_case(cs, files[f]->d_name, &st, verbose);
        if (verbose)
            printf("# %s: %u passed, %u failed, %u skipped\n", files[f]->d_name, st.passed, st.failed, st.skipped);
        total.passed += st.passed;
        total.failed += st.failed;
        total.skipped += st.skipped;
        free(files[f]);
    }
    free(files);
    printf("%u passed, %u failed, %u skipped\n", total.passed, total.failed, total.skipped);
    unsigned all = total.passed + total.failed + total.skipped;
    if (all == 0 || 100.0 * total.passed / all < min_pct)
        return 1;
    return 0;
}
