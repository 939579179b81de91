/* Unit tests of the CEL library: lexer and parser edge cases, error
 * positions, caps, cost limits, arena reuse, unknowns, time zones, regular
 * expressions and a policy-like expression over ctx. The conformance cases
 * run separately (cel-conformance). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/timeutil.h"
#include "cel/cel.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(cel_env *, cel_env_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(cel_program *, cel_program_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(cel_arena *, cel_arena_free);

static cel_env *env;
static cel_arena *arena;
/* results may point into their program (constants): keep programs to the end */
static cel_program *programs[64];
static size_t nprograms;

static void setup(void)
{
    env = cel_env_new();
    arena = cel_arena_new(0);
    cr_assert(env && arena);
}

static void teardown(void)
{
    for (size_t i = 0; i < nprograms; i++)
        cel_program_free(programs[i]);
    nprograms = 0;
    cel_env_free(env);
    cel_arena_free(arena);
}

TestSuite(cel, .init = setup, .fini = teardown);

/* Compiles SRC in the suite's environment; returns the cel_compile() result. */
static int compile(const char *src, cel_program **p, cel_error *err)
{
    return cel_compile(env, src, strlen(src), p, err);
}

/* Compiles and evaluates SRC with no variables; fails the test on a compile error. */
static cel_value eval_act(const char *src, const cel_activation *act)
{
    cel_program *p = NULL;
    cel_error err;
    int r = compile(src, &p, &err);
    cr_assert_eq(r, 0, "compile %s: %s at %u:%u", src, r < 0 ? err.message : "", err.line, err.column);
    cr_assert_lt(nprograms, ELEMENTSOF(programs));
    programs[nprograms++] = p;
    cel_value v;
    cr_assert_eq(cel_eval(p, act, arena, 1000000, &v), 0, "eval %s", src);
    return v;
}

static cel_value eval(const char *src)
{
    return eval_act(src, NULL);
}

static void expect_true(const char *src)
{
    cel_value v = eval(src);
    strbuf b;
    strbuf_init(&b, 4096);
    cel_value_format(&v, &b);
    cr_expect(v.kind == CEL_BOOL && v.b, "%s gave %s", src, b.data);
    strbuf_free(&b);
}

static void expect_error(const char *src, const char *fragment)
{
    cel_value v = eval(src);
    cr_assert_eq(v.kind, CEL_ERROR, "%s should fail", src);
    cr_expect(strstr(v.err->message, fragment), "%s: message '%s' lacks '%s'", src, v.err->message, fragment);
}

static void expect_compile_error(const char *src, int code, unsigned line, unsigned col, const char *fragment)
{
    cel_program *p = NULL;
    cel_error err;
    int r = compile(src, &p, &err);
    cr_assert_eq(r, code, "%s: got %d", src, r);
    cr_expect_eq(err.line, line, "%s: line %u", src, err.line);
    cr_expect_eq(err.column, col, "%s: column %u", src, err.column);
    cr_expect(strstr(err.message, fragment), "%s: '%s' lacks '%s'", src, err.message, fragment);
    cr_assert_null(p);
}

Test(cel, literals)
{
    expect_true("0x7fffffffffffffff == 9223372036854775807");
    expect_true("-9223372036854775808 < 0");
    expect_true("0xFFFFFFFFFFFFFFFFu == 18446744073709551615u");
    expect_true(".5 == 0.5 && 1e3 == 1000.0 && 2.5E-1 == 0.25");
    expect_true("r'\\n' == '\\\\n' && R\"a\\tb\" == 'a\\\\tb'");
    expect_true("b'\\xff\\377' == b\"\\377\\xFF\" && size(b'\\xc3\\xbf') == 2 && bytes('\\xff') == b'\\xc3\\xbf'");
    expect_true("'''a\nb''' == \"a\\nb\" && \"\"\"x\"y\"\"\" == 'x\"y'");
    expect_true("'\\u00e9\\U0001F600' == 'é😀' && '\\a\\b\\f\\v\\?\\`' == '\\x07\\x08\\x0c\\x0b?`'");
    expect_true("[1, 2, 3,] == [1, 2, 3] && {'a': 1,} == {'a': 1}");
    expect_true("1 + // a comment\n 2 == 3");
    expect_true("{'if': 1}.if == 1 && has({'while': 1}.while)");
    expect_true("{'a-b': 1}.`a-b` == 1 && has({'x.y': 2}.`x.y`)");
    expect_true("{'a': 1}.?a == optional.of(1) && [1][?3] == optional.none() && {?'k': optional.none()} == {}");
    expect_true("[?optional.of(1), ?optional.none(), 2] == [1, 2]");
    expect_true("(true ? (false ? 1 : 2) : 3) == 2 && (false ? 1 : true ? 2 : 3) == 2");
    expect_true("(1 < 2) == true && !!true && --1 == 1 && 1 + 2 * 3 - 4 / 2 % 3 == 5");
    expect_true("-9223372036854775808 == -(9223372036854775807) - 1 && 3 - -2 == 5");
}

Test(cel, syntax_errors_have_positions)
{
    expect_compile_error("1 +\n   )", -EINVAL, 2, 4, "unexpected ')'");
    expect_compile_error("'abc", -EINVAL, 1, 1, "unterminated string");
    expect_compile_error("  'a\nb'", -EINVAL, 1, 3, "newline in string");
    expect_compile_error("x + 18446744073709551616", -EINVAL, 1, 5, "out of range");
    expect_compile_error("9223372036854775808", -EINVAL, 1, 1, "out of range");
    expect_compile_error("'\\q'", -EINVAL, 1, 1, "invalid escape");
    expect_compile_error("b'\\u00ff'", -EINVAL, 1, 1, "unicode escape in bytes");
    expect_compile_error("'\\uD800'", -EINVAL, 1, 1, "invalid code point");
    expect_compile_error("if", -EINVAL, 1, 1, "reserved identifier");
    expect_compile_error("a.b(", -EINVAL, 1, 5, "unexpected end of input");
    expect_compile_error("1 ? 2", -EINVAL, 1, 6, "expected ':'");
    expect_compile_error("a ? b ? c : d : e", -EINVAL, 1, 7, "expected ':'");
    expect_compile_error("[1, 2", -EINVAL, 1, 6, "expected ']'");
    expect_compile_error("1 # 2", -EINVAL, 1, 3, "unexpected character '#'");
    expect_compile_error("'é' +\n  é", -EINVAL, 2, 3, "unexpected character 'é'");
    expect_compile_error("\xff", -EINVAL, 1, 1, "not valid UTF-8");
}

Test(cel, resolution_errors)
{
    expect_compile_error("1 + nope", -EINVAL, 1, 5, "undeclared reference to 'nope'");
    expect_compile_error("a.b.c", -EINVAL, 1, 1, "undeclared reference to 'a.b.c'");
    expect_compile_error("nofunc(1)", -EINVAL, 1, 1, "undeclared reference to function 'nofunc'");
    expect_compile_error("size(1, 2)", -EINVAL, 1, 1, "no matching overload for 'size'");
    expect_compile_error("[1].all(1, true)", -EINVAL, 1, 9, "simple name");
    expect_compile_error("has(a)", -EINVAL, 1, 1, "has() macro");
    expect_compile_error("'a'.matches('(a)\\\\1')", -EINVAL, 1, 13, "backreferences");
    expect_compile_error("'a'.matches('(?=a)')", -EINVAL, 1, 13, "lookaround");
    expect_compile_error("'a'.matches('(')", -EINVAL, 1, 13, "invalid regular expression");

    /* lenient mode turns them into evaluation errors */
    cel_env_set_lenient(env, true);
    expect_error("nope", "undeclared reference to 'nope'");
    expect_error("nofunc(1)", "unbound function 'nofunc'");
    expect_true("nope || true");
}

Test(cel, caps)
{
    size_t n = CEL_MAX_SOURCE_LEN + 1;
    char *big = malloc(n + 1);
    cr_assert(big);
    memset(big, ' ', n);
    big[0] = '1';
    big[n] = 0;
    cel_program *p = NULL;
    cel_error err;
    cr_expect_eq(cel_compile(env, big, n, &p, &err), -E2BIG);

    /* deep parentheses, long operator chains and long select chains */
    size_t depth = CEL_MAX_NESTING + 10;
    char *s = big;
    for (size_t i = 0; i < depth; i++)
        *s++ = '(';
    *s++ = '1';
    for (size_t i = 0; i < depth; i++)
        *s++ = ')';
    *s = 0;
    cr_expect_eq(compile(big, &p, &err), -E2BIG);
    s = big;
    *s++ = '1';
    for (size_t i = 0; i < 5000; i++)
        s += sprintf(s, " + 1");
    cr_expect_eq(compile(big, &p, &err), -E2BIG);
    cr_assert_geq(cel_env_declare(env, "x"), 0);
    s = big;
    *s++ = 'x';
    for (size_t i = 0; i < 5000; i++)
        s += sprintf(s, ".a");
    cr_expect_eq(compile(big, &p, &err), -E2BIG);
    s = big;
    for (size_t i = 0; i < 300; i++)
        *s++ = '-';
    strcpy(s, "1");
    cr_expect_eq(compile(big, &p, &err), -E2BIG);
    free(big);
    cr_assert_null(p);
}

Test(cel, arithmetic_and_errors)
{
    expect_true("7 / 2 == 3 && -7 % 3 == -1 && 7u / 2u == 3u && 2.0 * 3.0 == 6.0");
    expect_error("9223372036854775807 + 1", "overflow");
    expect_error("1 / 0", "divide by zero");
    expect_error("1u - 2u", "overflow");
    expect_error("1 + 1u", "no matching overload");
    expect_true("1 == 1u && 1 == 1.0 && 1u < 2.5 && -1 < 0u");
    expect_true("1/0 == 1 || true");
    expect_true("!(false && 1/0 == 1)");
    expect_error("true && 1/0 == 1", "divide by zero");
    expect_error("{'a': 1}.b", "no such key: 'b'");
    expect_error("[1][5]", "index out of range");

    /* evaluation errors carry the position of the failing operation */
    cel_value v = eval("1 +\n  (2 / 0)");
    cr_assert_eq(v.kind, CEL_ERROR);
    cr_expect_eq(v.err->line, 2);
    cr_expect_eq(v.err->column, 6);
}

Test(cel, macros_and_extensions)
{
    expect_true("[1, 2, 3].map(x, x * 2) == [2, 4, 6]");
    expect_true("[1, 2, 3].map(x, x > 1, x * 2) == [4, 6]");
    expect_true("[1, 2, 3].filter(x, x % 2 == 1) == [1, 3]");
    expect_true("{'a': 1, 'b': 2}.all(k, v, v > 0) && [1, 2].exists_one(x, x == 2)");
    expect_true("cel.bind(x, 'ab', x + x) == 'abab'");
    expect_true("optional.of(1).optMap(x, x + 1).value() == 2 && {'a': 1}.?b.orValue(5) == 5");
    expect_true("'Hello'.lowerAscii() == 'hello' && 'a,b'.split(',') == ['a', 'b']");
    expect_true("'%s-%d'.format(['x', 3]) == 'x-3'");
    expect_true("math.greatest(1, 2.5, 2u) == 2.5 && math.bitShiftLeft(1, 3) == 8");
    expect_true("base64.encode(b'hi') == 'aGk=' && base64.decode('aGk') == b'hi'");
    expect_true("cidr('10.0.0.0/8').containsIP(ip('10.1.2.3')) && !cidr('10.0.0.0/8').containsIP('11.0.0.1')");
    expect_true("cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8') && ip('::1').isLoopback()");
    expect_true("type(1) == int && type(optional.none()) == optional_type && type(ip('1.2.3.4')) == net.IP");
    expect_error("{'a': 1, 'a': 2}", "repeated key");
    expect_error("{[1]: 2}", "unsupported map key type");
}

Test(cel, regex)
{
    expect_true("'hello'.matches('^h.*o$') && matches('abc', 'b') && !'abc'.matches('^b')");
    expect_true("'ñ'.matches('^.$') && 'Aa'.matches('(?i)^aa$')");
    /* a pattern known only at run time is compiled into the arena */
    cr_assert_eq(cel_env_declare(env, "pat"), 0);
    cel_value vars[1] = {cel_cstring("^ab")};
    cel_activation act = {.vars = vars, .nvars = 1};
    cel_value r = eval_act("'abc'.matches(pat) && !'xabc'.matches(pat)", &act);
    cr_expect(r.kind == CEL_BOOL && r.b);
    vars[0] = cel_cstring("(");
    r = eval_act("'abc'.matches(pat)", &act);
    cr_assert_eq(r.kind, CEL_ERROR);
    cr_expect(strstr(r.err->message, "invalid regular expression"));
    /* catastrophic backtracking patterns stay fast: DFA matching */
    char src[256];
    snprintf(src, sizeof(src), "'%s'.matches('^(a+)+$')", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab");
    cel_value v = eval(src);
    cr_expect(v.kind == CEL_BOOL && !v.b);
}

Test(cel, timestamps_and_zones)
{
    expect_true("timestamp('2009-02-13T23:31:30Z') + duration('1h30m') == timestamp('2009-02-14T01:01:30Z')");
    expect_true("string(timestamp('2009-02-13T23:31:30.5+01:00')) == '2009-02-13T22:31:30.5Z'");
    expect_true("duration('1.5s') == duration('1500ms') && string(duration('-90s')) == '-90s'");
    expect_true("timestamp('2024-07-01T12:00:00Z').getHours('Europe/Paris') == 14");
    expect_true("timestamp('2024-01-01T12:00:00Z').getHours('Europe/Paris') == 13");
    /* past the last transition of the file: the POSIX rule applies */
    expect_true("timestamp('2090-07-01T12:00:00Z').getHours('America/New_York') == 8");
    expect_true("timestamp('2090-01-01T12:00:00Z').getHours('America/New_York') == 7");
    expect_true("timestamp('2090-01-01T00:00:00Z').getHours('Australia/Sydney') == 11");
    expect_true("timestamp('2024-01-01T00:00:00Z').getMinutes('+05:45') == 45");
    expect_error("timestamp('2024-01-01T00:00:00Z').getHours('No/Such_Zone')", "unknown time zone");
    expect_error("timestamp('2024-01-01T00:00:00Z').getHours('../../etc/passwd')", "unknown time zone");
    expect_error("timestamp('2024-02-30T00:00:00Z')", "invalid timestamp");

    cel_activation act = {.now_sec = 1700000000, .now_nsec = 5};
    cel_value v = eval_act("now()", &act);
    cr_assert_eq(v.kind, CEL_TIMESTAMP);
    cr_expect_eq(v.i, 1700000000);
    cr_expect_eq(v.len, 5u);
}

/* ctx = {user: {name, groups}, request: {http: {method, path, headers}}} built
 * by the host from static data. */
static const cel_value groups_items[] = {
    {.kind = CEL_STRING, .len = 5, .str = "staff"},
    {.kind = CEL_STRING, .len = 4, .str = "devs"},
};
static const cel_list groups = {2, groups_items};
static const cel_map_entry user_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "name"}, {.kind = CEL_STRING, .len = 5, .str = "alice"}},
    {{.kind = CEL_STRING, .len = 6, .str = "groups"}, {.kind = CEL_LIST, .list = &groups}},
};
static const cel_map user = {2, user_entries};
static const cel_map_entry header_entries[] = {
    {{.kind = CEL_STRING, .len = 10, .str = "user-agent"}, {.kind = CEL_STRING, .len = 4, .str = "curl"}},
};
static const cel_map headers = {1, header_entries};
static cel_map_entry http_entries[] = {
    {{.kind = CEL_STRING, .len = 6, .str = "method"}, {.kind = CEL_STRING, .len = 3, .str = "GET"}},
    {{.kind = CEL_STRING, .len = 4, .str = "path"}, {.kind = CEL_STRING, .len = 11, .str = "/admin/keys"}},
    {{.kind = CEL_STRING, .len = 7, .str = "headers"}, {.kind = CEL_MAP, .map = &headers}},
};
static const cel_map http = {3, http_entries};
static const cel_map_entry request_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "http"}, {.kind = CEL_MAP, .map = &http}},
    {{.kind = CEL_STRING, .len = 2, .str = "ip"}, {.kind = CEL_STRING, .len = 8, .str = "10.1.2.3"}},
};
static const cel_map request = {2, request_entries};
static const cel_map_entry ctx_entries[] = {
    {{.kind = CEL_STRING, .len = 4, .str = "user"}, {.kind = CEL_MAP, .map = &user}},
    {{.kind = CEL_STRING, .len = 7, .str = "request"}, {.kind = CEL_MAP, .map = &request}},
};
static const cel_map ctx = {2, ctx_entries};

Test(cel, policy_expressions)
{
    int slot = cel_env_declare(env, "ctx");
    cr_assert_eq(slot, 0);
    cel_value vars[1] = {cel_map_value(&ctx)};
    cel_activation act = {.vars = vars, .nvars = 1};

    static const struct {
        const char *expr;
        bool want;
    } cases[] = {
        {"\"devs\" in ctx.user.groups && ctx.request.http.method in [\"GET\",\"HEAD\"]", true},
        {"ctx.request.http.path.startsWith(\"/admin\")", true},
        {"ctx.request.http.headers['user-agent'] == 'curl'", true},
        {"cidr('10.0.0.0/8').containsIP(ctx.request.ip)", true},
        {"'admins' in ctx.user.groups || ctx.user.name == 'bob'", false},
        {"has(ctx.user.email)", false},
        {"ctx.user.groups.exists(g, g.startsWith('st'))", true},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        cel_value v = eval_act(cases[i].expr, &act);
        cr_expect(v.kind == CEL_BOOL && v.b == cases[i].want, "%s", cases[i].expr);
    }
    /* a missing attribute is an error value the policy engine treats as deny */
    cel_value v = eval_act("ctx.user.email == 'a@b'", &act);
    cr_expect_eq(v.kind, CEL_ERROR);
    /* an unbound variable slot */
    cel_activation none = {0};
    v = eval_act("ctx.user.name == 'alice'", &none);
    cr_expect_eq(v.kind, CEL_ERROR);
}

Test(cel, qualified_names_and_container)
{
    cr_assert_eq(cel_env_declare(env, "a.b.c"), 0);
    cr_assert_eq(cel_env_declare(env, "com.example.x"), 1);
    cr_assert_eq(cel_env_set_container(env, "com.example"), 0);
    cel_value vars[2] = {cel_cstring("abc"), cel_int(7)};
    cel_activation act = {.vars = vars, .nvars = 2};
    cel_value v = eval_act("a.b.c + string(x)", &act);
    cr_assert_eq(v.kind, CEL_STRING);
    cr_expect(v.len == 4 && !memcmp(v.str, "abc7", 4));
    cr_expect_eq(cel_env_declare(env, "a.b.c"), -EEXIST);
    cr_expect_eq(cel_env_declare(env, "a..b"), -EINVAL);
}

Test(cel, cost_limit_stops_pathological_expressions)
{
    _cleanup_(cel_program_freep) cel_program *p = NULL;
    cel_error err;
    const char *src = "[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, "
                      "[1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, "
                      "[1,2,3,4,5,6,7,8,9,10].all(e, [1,2,3,4,5,6,7,8,9,10].all(f, a + b + c + d + e + f > 0))))))";
    cr_assert_eq(compile(src, &p, &err), 0);
    cel_value v = cel_null();
    uint64_t t0 = time_mono_ns();
    cr_expect_eq(cel_eval(p, NULL, arena, 100000, &v), -ECANCELED);
    cr_expect_lt(time_mono_ns() - t0, 500 * NSEC_PER_MSEC);
    cr_expect_eq(v.kind, CEL_NULL, "the result is untouched");
    /* the error cannot be absorbed by a logical operator */
    cel_program_free(p);
    p = NULL;
    char buf[1024];
    snprintf(buf, sizeof(buf), "(%s) || true", src);
    cr_assert_eq(compile(buf, &p, &err), 0);
    cel_arena_reset(arena);
    cr_expect_eq(cel_eval(p, NULL, arena, 100000, &v), -ECANCELED);

    /* doubling a string runs into the cost or arena limit, never hangs */
    cel_program_free(p);
    p = NULL;
    cr_assert_eq(compile("[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30]"
                         ".map(i, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'.replace('x', 'xxxxxxxx'))"
                         ".map(s, s.replace('x', 'xxxxxxxxxx'))",
                         &p, &err),
                 0);
    _cleanup_(cel_arena_freep) cel_arena *small = cel_arena_new(64 * 1024);
    int r = cel_eval(p, NULL, small, 1000000, &v);
    cr_expect(r == -ENOMEM || r == -ECANCELED, "got %d", r);
}

Test(cel, arena_reuse)
{
    cr_assert_eq(cel_env_declare(env, "ctx"), 0);
    _cleanup_(cel_program_freep) cel_program *p = NULL;
    cel_error err;
    cr_assert_eq(compile("ctx.user.groups.map(g, g + '!').exists(g, g == 'devs!') && "
                         "'%s'.format([ctx.user.name]) == 'alice'",
                         &p, &err),
                 0);
    cel_value vars[1] = {cel_map_value(&ctx)};
    cel_activation act = {.vars = vars, .nvars = 1};
    /* 8 KiB is enough for one evaluation, so any leak across resets would fail */
    _cleanup_(cel_arena_freep) cel_arena *small = cel_arena_new(8 * 1024);
    for (int i = 0; i < 100000; i++) {
        cel_value v;
        cr_assert_eq(cel_eval(p, &act, small, 10000, &v), 0, "iteration %d", i);
        cr_assert(v.kind == CEL_BOOL && v.b);
        cel_arena_reset(small);
    }
}

Test(cel, unknowns)
{
    cr_assert_eq(cel_env_declare(env, "x"), 0);
    static const uint64_t ids[] = {42};
    static const cel_unknown unk = {1, ids};
    cel_value vars[1] = {cel_unknown_value(&unk)};
    cel_activation act = {.vars = vars, .nvars = 1};
    cel_value v = eval_act("x && false", &act);
    cr_expect(v.kind == CEL_BOOL && !v.b);
    v = eval_act("x || false", &act);
    cr_assert_eq(v.kind, CEL_UNKNOWN);
    cr_expect_eq(v.unk->ids[0], 42u);
    v = eval_act("x + 1 == 2 || 1/0 == 1", &act);
    cr_expect_eq(v.kind, CEL_UNKNOWN, "unknowns win over errors");
}

Test(cel, format_values)
{
    cel_value v = eval("[1, 2u, 2.5, 'a\"', b'\\x00', null, {'k': true}, duration('2s'), optional.none()]");
    strbuf b;
    strbuf_init(&b, 4096);
    cr_assert_eq(cel_value_format(&v, &b), 0);
    cr_expect_str_eq(b.data,
                     "[1, 2u, 2.5, \"a\\\"\", b\"\\x00\", null, {\"k\": true}, duration(\"2s\"), optional.none()]");
    strbuf_free(&b);
}
