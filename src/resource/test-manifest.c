#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "basic/strbuf.h"
#include "resource/manifest.h"
#include "resource/resource.h"

static int parse(const char *s, manifest *m, resource_error *err)
{
    return manifest_parse(s, strlen(s), m, err);
}

/* The value of key "v" in the single document "v: TEXT". */
static json_t *scalar(const char *text)
{
    char doc[256];
    snprintf(doc, sizeof(doc), "v: %s\n", text);
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse(doc, &m, &err), 0, "%s: %s: %s", doc, err.path, err.message);
    cr_assert_eq(m.n_docs, 1);
    return json_incref(json_object_get(m.docs[0].value, "v"));
}

static void expect_refused(const char *s, int code, const char *where, const char *message)
{
    _cleanup_(manifest_free) manifest m = {};
    resource_error err = {};
    cr_expect_eq(parse(s, &m, &err), code, "%s\nwas not refused with %d", s, code);
    cr_expect_eq(m.n_docs, 0);
    cr_expect(strstr(err.path, where), "%s\nwhere: %s", s, err.path);
    cr_expect(strstr(err.message, message), "%s\nmessage: %s", s, err.message);
}

Test(yaml, scalars_follow_the_core_schema)
{
    struct {
        const char *text;
        const char *json;
    } cases[] = {
        {"null", "null"},     {"~", "null"},         {"", "null"},          {"Null", "null"},
        {"true", "true"},     {"False", "false"},    {"TRUE", "true"},      {"12", "12"},
        {"-3", "-3"},         {"+4", "4"},           {"012", "12"},         {"0x1F", "31"},
        {"0o17", "15"},       {"1.5", "1.5"},        {".5", "0.5"},         {"1e3", "1000.0"},
        {"-2.", "-2.0"},      {"\"12\"", "\"12\""},  {"'true'", "\"true\""}, {"!!str 12", "\"12\""},
        {"yes", "\"yes\""},   {"on", "\"on\""},      {"1_000", "\"1_000\""}, {"0b101", "\"0b101\""},
        {"0x", "\"0x\""},     {"12:30", "\"12:30\""}, {"1.2.3", "\"1.2.3\""}, {"\"\"", "\"\""},
        {"2026-01-01", "\"2026-01-01\""}, {"|\n  a\n  b", "\"a\\nb\\n\""}, {"! 5", "\"5\""},
        {"9223372036854775807", "9223372036854775807"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        json_auto_t *v = scalar(cases[i].text);
        json_auto_t *want = json_loads(cases[i].json, JSON_DECODE_ANY, NULL);
        char *got = json_dumps(v, JSON_ENCODE_ANY);
        cr_expect(json_equal(v, want), "%s: got %s, want %s", cases[i].text, got, cases[i].json);
        free(got);
    }
}

Test(yaml, unrepresentable_scalars_are_refused)
{
    expect_refused("v: .inf\n", -EINVAL, "line 1 column 4", "infinity and NaN");
    expect_refused("v: .nan\n", -EINVAL, "line 1", "infinity and NaN");
    expect_refused("v: 9223372036854775808\n", -EINVAL, "line 1", "integer out of range");
    expect_refused("v: 0x8000000000000000\n", -EINVAL, "line 1", "integer out of range");
    expect_refused("v: 1e999\n", -EINVAL, "line 1", "number out of range");
    expect_refused("v: \"a\\0b\"\n", -EINVAL, "line 1", "NUL characters");
    expect_refused("v: !!int 12\n", -EINVAL, "line 1", "unsupported tag");
    expect_refused("v: !local x\n", -EINVAL, "line 1", "unsupported tag");
}

Test(yaml, anchors_aliases_keys_and_structure)
{
    expect_refused("a: &x [1]\nb: *x\n", -EINVAL, "document 1 line 1 column 4", "anchors and aliases");
    expect_refused("a: &x 1\n", -EINVAL, "line 1", "anchors and aliases");
    expect_refused("a: 1\nb: *x\n", -EINVAL, "", "");
    expect_refused("a: 1\nb: 2\na: 3\n", -EINVAL, "document 1 line 3 column 1", "duplicate key \"a\"");
    expect_refused("1: x\n", -EINVAL, "line 1", "mapping keys must be strings (quote \"1\"");
    expect_refused("null: x\n", -EINVAL, "line 1", "mapping keys must be strings");
    expect_refused("? [a]\n: x\n", -EINVAL, "line 1", "mapping keys must be strings");
    expect_refused("a: 1\n---\n- x\n", -EINVAL, "document 2 line 3", "a document must be a mapping");
    expect_refused("---\nscalar\n", -EINVAL, "document 1 line 2", "a document must be a mapping");
    expect_refused("a: [1\n", -EINVAL, "document 1 line 2", "flow sequence");
    expect_refused("a: b: c\n", -EINVAL, "document 1 line 1", "mapping values are not allowed");
    /* Quoted keys are strings whatever they look like. */
    _cleanup_(manifest_free) manifest m = {};
    cr_assert_eq(parse("\"1\": x\n'null': y\n", &m, NULL), 0);
    cr_expect_str_eq(json_string_value(json_object_get(m.docs[0].value, "null")), "y");
}

Test(yaml, nesting_is_capped_at_32)
{
    strbuf b;
    strbuf_init(&b, 4096);
    /* the root mapping plus 31 nested flow sequences: 32 levels */
    strbuf_puts(&b, "a: ");
    for (int i = 0; i < 31; i++)
        strbuf_putc(&b, '[');
    for (int i = 0; i < 31; i++)
        strbuf_putc(&b, ']');
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_expect_eq(manifest_parse(b.data, b.len, &m, &err), 0, "%s", err.message);
    strbuf_reset(&b);
    strbuf_puts(&b, "a: ");
    for (int i = 0; i < 32; i++)
        strbuf_putc(&b, '[');
    for (int i = 0; i < 32; i++)
        strbuf_putc(&b, ']');
    expect_refused(b.data, -EINVAL, "line 1 column 35", "nested too deeply (more than 32 levels)");
    strbuf_free(&b);
}

Test(yaml, documents_record_their_lines_and_empty_ones_are_skipped)
{
    const char *s = "# comment\n"
                    "a: 1\n"
                    "---\n"
                    "---\n"
                    "# only a comment\n"
                    "---\n"
                    "b: 2\n"
                    "c: 3\n"
                    "--- {d: 4}\n"
                    "...\n";
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse(s, &m, &err), 0, "%s: %s", err.path, err.message);
    cr_assert_eq(m.n_docs, 3);
    cr_expect(m.yaml);
    cr_expect_eq(m.docs[0].line, 2);
    cr_expect_eq(m.docs[1].line, 7);
    cr_expect_eq(m.docs[2].line, 9);
    cr_expect_eq(m.docs[1].source, 3);
    cr_expect_eq(m.docs[1].item, SIZE_MAX);
    cr_expect_eq(json_integer_value(json_object_get(m.docs[1].value, "c")), 3);

    manifest empty = {};
    cr_expect_eq(parse("", &empty, NULL), 0);
    cr_expect_eq(empty.n_docs, 0);
    cr_expect_eq(parse("# nothing\n", &empty, NULL), 0);
    cr_expect_eq(empty.n_docs, 0);
    manifest_free(&empty);
    manifest_free(NULL);
}

Test(yaml, lists_are_unwrapped)
{
    const char *s = "kind: List\n"
                    "items:\n"
                    "- {kind: Group, n: 1}\n"
                    "- kind: Group\n"
                    "  n: 2\n"
                    "---\n"
                    "kind: Group\n";
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse(s, &m, &err), 0, "%s: %s", err.path, err.message);
    cr_assert_eq(m.n_docs, 3);
    cr_expect_eq(m.docs[0].line, 3);
    cr_expect_eq(m.docs[1].line, 4);
    cr_expect_eq(m.docs[1].item, 1);
    cr_expect_eq(json_integer_value(json_object_get(m.docs[1].value, "n")), 2);
    cr_expect_eq(m.docs[2].line, 7);
    cr_expect_eq(m.docs[2].source, 1);

    expect_refused("kind: List\nitems: [{kind: List, items: []}]\n", -EINVAL, "document 1",
                   "a List cannot contain a List");
    expect_refused("kind: List\nitems: [1]\n", -EINVAL, "document 1", "items[0]: each item must be a mapping");
    expect_refused("kind: List\nitem: []\n", -EINVAL, "document 1", "\"item\": unknown field of a List");
    expect_refused("kind: List\n", -EINVAL, "document 1", "needs an items array");
}

Test(yaml, document_and_size_caps)
{
    strbuf b;
    strbuf_init(&b, 1 << 20);
    for (int i = 0; i < MANIFEST_MAX_DOCUMENTS; i++)
        strbuf_printf(&b, "---\na: %d\n", i);
    _cleanup_(manifest_free) manifest m = {};
    cr_expect_eq(manifest_parse(b.data, b.len, &m, NULL), 0);
    cr_expect_eq(m.n_docs, MANIFEST_MAX_DOCUMENTS);
    strbuf_puts(&b, "---\na: 1\n");
    expect_refused(b.data, -E2BIG, "document 1001", "more than 1000 documents");
    strbuf_free(&b);

    char *big = malloc(MANIFEST_MAX_SIZE + 2);
    memset(big, ' ', MANIFEST_MAX_SIZE + 1);
    big[MANIFEST_MAX_SIZE + 1] = 0;
    expect_refused(big, -E2BIG, "", "at most 8 MiB");
    free(big);
}

Test(json, single_array_and_list_forms)
{
    _cleanup_(manifest_free) manifest m1 = {};
    resource_error err;
    cr_assert_eq(parse("\n {\"kind\": \"Group\", \"x\": 1.0}", &m1, &err), 0, "%s", err.message);
    cr_expect(!m1.yaml);
    cr_assert_eq(m1.n_docs, 1);
    cr_expect_eq(m1.docs[0].line, 2);
    cr_expect(json_is_real(json_object_get(m1.docs[0].value, "x")));

    _cleanup_(manifest_free) manifest m2 = {};
    cr_assert_eq(parse("[\n{\"a\": \"[{\"},\n\n {\"b\": [{}]}\n]", &m2, &err), 0, "%s", err.message);
    cr_assert_eq(m2.n_docs, 2);
    cr_expect_eq(m2.docs[0].line, 2);
    cr_expect_eq(m2.docs[1].line, 4);
    cr_expect_eq(m2.docs[1].source, 1);

    _cleanup_(manifest_free) manifest m3 = {};
    /* neither a nested "items" key nor one inside a string is the List's */
    cr_assert_eq(parse("{\"apiVersion\": \"x\\\"items\\\": [{\", \"kind\": \"List\",\n"
                       " \"metadata\": {\"items\": [{}]}, \"items\": [\n"
                       "  {\"kind\": \"Group\"},\n"
                       "  {\"kind\": \"User\"}]}",
                       &m3, &err),
                 0, "%s", err.message);
    cr_assert_eq(m3.n_docs, 2);
    cr_expect_eq(m3.docs[0].line, 3);
    cr_expect_eq(m3.docs[1].line, 4);
    cr_expect_eq(m3.docs[1].item, 1);
}

Test(json, malformed_and_refused_forms)
{
    expect_refused("{\"a\": 1, \"a\": 2}", -EINVAL, "line 1", "duplicate object key");
    expect_refused("[{\"a\": 1}, 2]", -EINVAL, "document 2", "a document must be an object");
    expect_refused("[{\"kind\": \"List\", \"items\": []}]", -EINVAL, "document 1", "cannot contain a List");
    expect_refused("{\"a\": \"\\u0000\"}", -EINVAL, "line 1", "");
    expect_refused("[1, 2", -EINVAL, "line 1", "");
    strbuf b;
    strbuf_init(&b, 4096);
    strbuf_puts(&b, "{\"a\": ");
    for (int i = 0; i < 32; i++)
        strbuf_putc(&b, '[');
    for (int i = 0; i < 32; i++)
        strbuf_putc(&b, ']');
    strbuf_putc(&b, '}');
    expect_refused(b.data, -EINVAL, "document 1 line 1", "nested too deeply");
    strbuf_free(&b);
}

Test(json, yaml_flow_mappings_are_still_yaml)
{
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse("{kind: Group, metadata: {name: devs}}\n", &m, &err), 0, "%s", err.message);
    cr_expect(m.yaml);
    cr_expect_str_eq(json_string_value(json_object_get(m.docs[0].value, "kind")), "Group");
}

Test(locate, field_lines_point_at_keys_or_the_closest_parent)
{
    const char *s = "apiVersion: cloister.dev/v1\n"  /* 1 */
                    "kind: Group\n"                  /* 2 */
                    "metadata: {name: a}\n"          /* 3 */
                    "---\n"                          /* 4 */
                    "apiVersion: cloister.dev/v1\n"  /* 5 */
                    "kind: Service\n"                /* 6 */
                    "metadata:\n"                    /* 7 */
                    "  name: wiki\n"                 /* 8 */
                    "spec:\n"                        /* 9 */
                    "  policies:\n"                  /* 10 */
                    "  - a\n"                        /* 11 */
                    "  - B\n"                        /* 12 */
                    "  upstrem:\n"                   /* 13 */
                    "    url: x\n"                   /* 14 */
                    "---\n"                          /* 15 */
                    "kind: List\n"                   /* 16 */
                    "items:\n"                       /* 17 */
                    "- kind: Group\n"                /* 18 */
                    "  spec:\n"                      /* 19 */
                    "    \"odd key\": 1\n";          /* 20 */
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse(s, &m, &err), 0, "%s", err.message);
    cr_assert_eq(m.n_docs, 3);
    size_t len = strlen(s);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, "spec.upstrem"), 13);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, "spec.policies[1]"), 12);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, "metadata.name"), 8);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, "spec.upstream"), 9);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, "apiVersion"), 5);
    cr_expect_eq(manifest_field_line(s, len, &m, 1, ""), 5);
    cr_expect_eq(manifest_field_line(s, len, &m, 0, "spec.upstream"), 1);
    cr_expect_eq(manifest_field_line(s, len, &m, 2, "spec[\"odd key\"]"), 20);
    cr_expect_eq(manifest_field_line(s, len, &m, 2, "metadata"), 18);

    /* the validator's paths are the ones located */
    cr_assert_eq(resource_validate(m.docs[1].value, &err), -EINVAL);
    cr_expect_str_eq(err.path, "spec.upstrem");
    cr_expect_eq(manifest_field_line(s, len, &m, 1, err.path), 13);

    _cleanup_(manifest_free) manifest j = {};
    const char *js = "[\n{\"kind\": \"Group\"},\n{\"kind\": \"User\"}]";
    cr_assert_eq(parse(js, &j, NULL), 0);
    cr_expect_eq(manifest_field_line(js, strlen(js), &j, 1, "metadata.name"), 3);
}

/* Parses S, prints every document as YAML, parses that and compares. */
static void expect_round_trip(const char *s)
{
    _cleanup_(manifest_free) manifest m = {};
    resource_error err;
    cr_assert_eq(parse(s, &m, &err), 0, "%s: %s", err.path, err.message);
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, 1 << 20);
    for (size_t i = 0; i < m.n_docs; i++)
        cr_assert_eq(yaml_emit_json(m.docs[i].value, &out), 0);
    _cleanup_(manifest_free) manifest again = {};
    cr_assert_eq(manifest_parse(out.data, out.len, &again, &err), 0, "%s\n%s: %s", out.data, err.path,
                 err.message);
    cr_assert_eq(again.n_docs, m.n_docs, "%s", out.data);
    for (size_t i = 0; i < m.n_docs; i++)
        cr_expect(json_equal(again.docs[i].value, m.docs[i].value), "document %zu:\n%s", i, out.data);
}

Test(emit, round_trips)
{
    expect_round_trip("apiVersion: cloister.dev/v1\nkind: Service\nmetadata: {name: wiki}\n"
                      "spec:\n  upstream: {url: \"http://127.0.0.1:9000\"}\n  policies: [devs-read]\n"
                      "---\n"
                      "apiVersion: cloister.dev/v1\nkind: Policy\nmetadata: {name: devs-read}\n"
                      "spec:\n  rules:\n"
                      "  - {effect: allow, priority: 0, condition: {match: '\"devs\" in ctx.user.groups && "
                      "ctx.request.http.method in [\"GET\",\"HEAD\"]'}}\n");
    expect_round_trip("strings: ['12', 'true', 'null', '~', '', ' lead', 'trail ', 'a: b', '# c', '- d',"
                      " 'yes', 'No', 'ON', '1.5', '.5', '0x1F', '0o7', '2026-01-01', '12:30', '+1',"
                      " '-', '[x]', '{y}', '\"q\"', \"it's\", 'tab\tin', 'é ü 漢字', '@at', '`b', '%p', '!t',"
                      " '&a', '*b', '|c', '>d', '?', '?x', 'multi\n\n  line', \"cr\\rlf\", \"nel\\u0085x\","
                      " \"ls\\u2028x\", \"bom\\ufeffx\", \"bell\\a\"]\n"
                      "numbers: [0, -1, 9223372036854775807, -9223372036854775808, 0.1, -0.0, 1.0, 1e300,"
                      " 2.5e-308, 123456789.125]\n"
                      "keys: {'1': a, 'true': b, '': c, 'a b': d, 'x: y': e, '- z': f}\n"
                      "empty: {m: {}, s: [], n: null}\n"
                      "nested: [[[a]], [{b: [c]}]]\n");
    expect_round_trip("[{\"long\": \"" "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                      " words with spaces \", \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                      "long key\": 1}]");
}

Test(emit, separates_documents_and_quotes_lookalikes)
{
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, 4096);
    json_auto_t *a = json_pack("{s:s,s:s,s:i,s:f}", "name", "wiki", "port", "8080", "num", 8080, "r", 1.0);
    json_auto_t *b = json_pack("{s:[]}", "list");
    cr_assert_eq(yaml_emit_json(a, &out), 0);
    cr_assert_eq(yaml_emit_json(b, &out), 0);
    cr_expect_str_eq(out.data, "name: wiki\nport: \"8080\"\nnum: 8080\nr: 1.0\n---\nlist: []\n");
}

Test(emit, a_full_buffer_is_left_as_it_was)
{
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, 16);
    json_auto_t *small = json_pack("{s:i}", "a", 1);
    json_auto_t *big = json_pack("{s:s}", "key", "a value longer than the buffer");
    cr_assert_eq(yaml_emit_json(small, &out), 0);
    cr_expect_str_eq(out.data, "a: 1\n");
    cr_expect_eq(yaml_emit_json(big, &out), -E2BIG);
    cr_expect_str_eq(out.data, "a: 1\n");
}

/* jansson allocations fail after this many succeed; negative: never. */
static long allocations_left = -1;

static void *failing_malloc(size_t n)
{
    if (allocations_left == 0)
        return NULL;
    if (allocations_left > 0)
        allocations_left--;
    return malloc(n);
}

/* Parses TEXT with the Nth jansson allocation failing, for every N until
 * parsing succeeds: each failure must be -ENOMEM (or, when ALSO_EINVAL,
 * -EINVAL: jansson's lexer reports some failed allocations as syntax
 * errors) and leak nothing. */
static void expect_clean_allocation_failures(const char *text, bool also_einval)
{
    json_set_alloc_funcs(failing_malloc, free);
    for (long n = 0;; n++) {
        allocations_left = n;
        manifest m = {};
        resource_error err;
        int r = manifest_parse(text, strlen(text), &m, &err);
        if (r == 0) {
            for (size_t i = 0; i < m.n_docs; i++) {
                allocations_left = n % 7;
                json_t *view = resource_public_view(m.docs[i].value);
                json_decref(view);
            }
            allocations_left = -1;
            manifest_free(&m);
            break;
        }
        allocations_left = -1;
        cr_assert(r == -ENOMEM || (also_einval && r == -EINVAL), "allocation %ld: %d %s: %s", n, r,
                  err.path, err.message);
        cr_assert_eq(m.n_docs, 0);
    }
    json_set_alloc_funcs(malloc, free);
}

Test(manifest, allocation_failures_are_reported)
{
    expect_clean_allocation_failures("apiVersion: cloister.dev/v1\nkind: Secret\nmetadata: {name: s}\n"
                                     "spec: {data: {b: x, a: y}}\n---\n"
                                     "kind: List\nitems: [{a: [1, 2.5, true, null, {b: c}]}]\n",
                                     false);
    expect_clean_allocation_failures("[{\"kind\": \"Secret\", \"spec\": {\"data\": {\"k\": \"v\"}}},"
                                     " {\"a\": [1, 2.5, true, null]}]",
                                     true);
}
