/* Policy semantics: priorities, deny before allow, attachments, default
 * deny, errors deny, the cost limit, validation, and the index checked
 * against the unindexed evaluator on random rule sets. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/timeutil.h"
#include "policy/policy-source.h"
#include "policy/policy.h"

static json_t *parse(const char *text)
{
    if (!text)
        return NULL;
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    cr_assert(j, "bad test JSON: %s: %s", e.text, text);
    return j;
}

/* A set from JSON arrays of documents (NULL: none). */
static policy_set *make_set(const char *policies, const char *users, const char *groups, const char *creds,
                            const char *services)
{
    json_t *p = parse(policies), *u = parse(users), *g = parse(groups), *c = parse(creds), *s = parse(services);
    policy_set *set = NULL;
    cr_assert_eq(policy_set_new(p, u, g, c, s, &set), 0);
    json_decref(p);
    json_decref(u);
    json_decref(g);
    json_decref(c);
    json_decref(s);
    return set;
}

typedef struct test_req {
    policy_request req;
    cel_list groups;
    cel_value group_items[8];
    cel_map headers;
    cel_map_entry header_entries[4];
} test_req;

/* A request by USER in GROUPS (comma-separated, may be "") to SERVICE. */
static void make_req(test_req *t, const char *user, const char *groups, const char *service, const char *method,
                     const char *path)
{
    memset(t, 0, sizeof(*t));
    policy_request_init(&t->req);
    policy_request_set_string(&t->req, POLICY_VAR_USER_NAME, user);
    policy_request_set_string(&t->req, POLICY_VAR_SERVICE_NAME, service);
    policy_request_set_string(&t->req, POLICY_VAR_HTTP_METHOD, method);
    policy_request_set_string(&t->req, POLICY_VAR_HTTP_PATH, path);
    size_t n = 0;
    for (const char *p = groups; *p && n < 8;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        t->group_items[n++] = cel_string(p, len);
        p += len + (comma ? 1 : 0);
    }
    t->groups = (cel_list){n, t->group_items};
    t->req.vars[POLICY_VAR_USER_GROUPS] = cel_list_value(&t->groups);
}

static cel_arena *arena;

static void setup(void)
{
    arena = cel_arena_new(POLICY_ARENA_MAX);
}

static void teardown(void)
{
    cel_arena_free(arena);
}

/* Decides with both evaluators, checks they agree, returns the decision. */
static policy_decision decide(policy_set *s, const test_req *t)
{
    policy_decision a, b;
    cr_assert_eq(policy_decide(s, &t->req, arena, &a), 0);
    cr_assert_eq(policy_decide_unindexed(s, &t->req, arena, &b), 0);
    cr_assert_eq(a.allow, b.allow, "indexed %s vs unindexed %s", a.reason, b.reason);
    cr_assert_str_eq(a.policy, b.policy);
    cr_assert_str_eq(a.rule, b.rule);
    return a;
}

TestSuite(policy, .init = setup, .fini = teardown);

#define SVC(policies) "[{\"metadata\":{\"name\":\"wiki\"},\"spec\":{\"policies\":" policies "}}]"

Test(policy, lower_priority_first)
{
    policy_set *s = make_set(
        "[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
        "{\"name\":\"late-deny\",\"effect\":\"deny\",\"priority\":2,\"condition\":{\"matchAny\":true}},"
        "{\"name\":\"early-allow\",\"effect\":\"allow\",\"priority\":-1,\"condition\":{\"match\":\"ctx.request.http.method == 'GET'\"}}]}}]",
        NULL, NULL, NULL, SVC("[\"p\"]"));
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    policy_decision d = decide(s, &t);
    cr_assert(d.allow);
    cr_assert_str_eq(d.rule, "early-allow");
    make_req(&t, "alice", "", "wiki", "POST", "/");
    d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.rule, "late-deny");
    policy_set_unref(s);
}

Test(policy, deny_before_allow_at_equal_priority)
{
    /* the allow comes first in its policy and in policy name order */
    policy_set *s = make_set(
        "[{\"metadata\":{\"name\":\"a-allow\"},\"spec\":{\"rules\":["
        "{\"name\":\"yes\",\"effect\":\"allow\",\"condition\":{\"matchAny\":true}}]}},"
        "{\"metadata\":{\"name\":\"b-deny\"},\"spec\":{\"rules\":["
        "{\"name\":\"no\",\"effect\":\"deny\",\"condition\":{\"match\":\"ctx.request.http.path.startsWith('/admin')\"}}]}}]",
        NULL, NULL, NULL, SVC("[\"a-allow\", \"b-deny\"]"));
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/admin/x");
    policy_decision d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.policy, "b-deny");
    cr_assert_str_eq(d.rule, "no");
    make_req(&t, "alice", "", "wiki", "GET", "/docs");
    d = decide(s, &t);
    cr_assert(d.allow);
    cr_assert_str_eq(d.policy, "a-allow");
    policy_set_unref(s);
}

Test(policy, attachment_through_groups_users_credentials)
{
    policy_set *s = make_set(
        "[{\"metadata\":{\"name\":\"devs\"},\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":{\"matchAny\":true}}]}},"
        " {\"metadata\":{\"name\":\"bob-only\"},\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":{\"matchAny\":true}}]}},"
        " {\"metadata\":{\"name\":\"ci\"},\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":{\"matchAny\":true}}]}}]",
        "[{\"metadata\":{\"name\":\"bob\"},\"spec\":{\"policies\":[\"bob-only\"]}}]",
        "[{\"metadata\":{\"name\":\"devs\"},\"spec\":{\"policies\":[\"devs\"]}}]",
        "[{\"metadata\":{\"name\":\"ci-token\"},\"spec\":{\"user\":\"robot\",\"policies\":[\"ci\"]}}]",
        SVC("[]"));
    test_req t;
    make_req(&t, "alice", "devs,ops", "wiki", "GET", "/");
    policy_decision d = decide(s, &t);
    cr_assert(d.allow);
    cr_assert_str_eq(d.policy, "devs");
    make_req(&t, "alice", "ops", "wiki", "GET", "/");
    d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.reason, "no rule matched (default deny)");
    make_req(&t, "bob", "", "wiki", "GET", "/");
    cr_assert(decide(s, &t).allow);
    make_req(&t, "robot", "", "wiki", "GET", "/");
    cr_assert(!decide(s, &t).allow);
    t.req.credential = "ci-token";
    d = decide(s, &t);
    cr_assert(d.allow);
    cr_assert_str_eq(d.policy, "ci");
    policy_set_unref(s);
}

Test(policy, default_deny_and_unknown_policies)
{
    policy_set *s = make_set("[]", NULL, NULL, NULL, SVC("[\"does-not-exist\"]"));
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    policy_decision d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.policy, "");
    cr_assert_str_eq(d.reason, "no rule matched (default deny)");
    policy_set_unref(s);
}

Test(policy, errors_deny)
{
    policy_set *s = make_set(
        "[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
        "{\"name\":\"broken\",\"effect\":\"allow\",\"condition\":{\"match\":\"ctx.user.attrs.team == 'x'\"}},"
        "{\"name\":\"not-bool\",\"effect\":\"allow\",\"priority\":1,\"condition\":{\"match\":\"ctx.user.name\"}},"
        "{\"name\":\"fallback\",\"effect\":\"allow\",\"priority\":2,\"condition\":{\"matchAny\":true}}]}}]",
        NULL, NULL, NULL, SVC("[\"p\"]"));
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    policy_decision d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.rule, "broken");
    cr_assert(strstr(d.reason, "could not be evaluated"), "%s", d.reason);
    policy_set_unref(s);

    /* the error is absorbed by a false conjunct, as CEL's && does */
    s = make_set("[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
                 "{\"name\":\"guarded\",\"effect\":\"allow\",\"condition\":{\"all\":["
                 "{\"match\":\"ctx.user.attrs.team == 'x'\"},{\"match\":\"'admins' in ctx.user.groups\"}]}}]}}]",
                 NULL, NULL, NULL, SVC("[\"p\"]"));
    make_req(&t, "alice", "", "wiki", "GET", "/");
    d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.reason, "no rule matched (default deny)");
    make_req(&t, "alice", "admins", "wiki", "GET", "/");
    d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.rule, "guarded");
    cr_assert(strstr(d.reason, "could not be evaluated"));
    policy_set_unref(s);

    /* a condition that is not a bool is an error too */
    s = make_set("[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
                 "{\"name\":\"str\",\"effect\":\"allow\",\"condition\":{\"match\":\"ctx.user.name\"}}]}}]",
                 NULL, NULL, NULL, SVC("[\"p\"]"));
    d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert(strstr(d.reason, "not a bool"), "%s", d.reason);
    policy_set_unref(s);
}

Test(policy, cost_limit_stops_pathological_expressions)
{
    const char *range = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]";
    char expr[1024];
    snprintf(expr, sizeof(expr), "%s.all(a, %s.all(b, %s.all(c, %s.all(d, %s.all(e, a + b + c + d + e >= 0)))))",
             range, range, range, range, range);
    char policies[2048];
    snprintf(policies, sizeof(policies),
             "[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
             "{\"name\":\"slow\",\"effect\":\"allow\",\"condition\":{\"match\":\"%s\"}}]}}]",
             expr);
    policy_set *s = make_set(policies, NULL, NULL, NULL, SVC("[\"p\"]"));
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    uint64_t start = time_mono_ns();
    policy_decision d;
    cr_assert_eq(policy_decide(s, &t.req, arena, &d), 0);
    uint64_t took = time_mono_ns() - start;
    cr_assert(!d.allow);
    cr_assert(strstr(d.reason, "cost limit"), "%s", d.reason);
    cr_assert_lt(took, 100 * 1000 * 1000ull, "took %llu ns", (unsigned long long)took);
    policy_set_unref(s);
}

Test(policy, conditions_not_any_all_and_inline_policies)
{
    policy_set *s = make_set(
        "[]", NULL, NULL, NULL,
        "[{\"metadata\":{\"name\":\"wiki\"},\"spec\":{\"inlinePolicies\":[{\"name\":\"read\",\"rules\":["
        "{\"name\":\"r\",\"effect\":\"allow\",\"condition\":{\"all\":["
        "{\"any\":[{\"match\":\"ctx.request.http.method == 'GET'\"},{\"match\":\"ctx.request.http.method == 'HEAD'\"}]},"
        "{\"not\":{\"match\":\"ctx.request.http.path.startsWith('/private')\"}}]}}]}]}}]");
    test_req t;
    make_req(&t, "alice", "", "wiki", "HEAD", "/docs");
    policy_decision d = decide(s, &t);
    cr_assert(d.allow);
    cr_assert_str_eq(d.policy, "wiki/read");
    make_req(&t, "alice", "", "wiki", "HEAD", "/private/x");
    cr_assert(!decide(s, &t).allow);
    make_req(&t, "alice", "", "wiki", "PUT", "/docs");
    cr_assert(!decide(s, &t).allow);
    make_req(&t, "alice", "", "other", "GET", "/docs");
    cr_assert(!decide(s, &t).allow);
    policy_set_unref(s);
}

Test(policy, ctx_from_documents)
{
    json_t *user = parse("{\"metadata\":{\"name\":\"alice\"},\"spec\":{\"email\":\"a@example.com\",\"type\":\"human\","
                         "\"groups\":[\"devs\"],\"attrs\":{\"level\":3,\"team\":\"blue\"}}}");
    json_t *svc = parse("{\"metadata\":{\"name\":\"wiki\"},\"spec\":{\"policies\":[\"p\"],\"attrs\":{\"tier\":\"gold\"}}}");
    policy_set *s = make_set(
        "[{\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":{\"match\":"
        "\"ctx.user.email.endsWith('@example.com') && ctx.user.attrs.level >= 3 && ctx.service.attrs.tier == 'gold' && "
        "'devs' in ctx.user.groups && cidr('10.0.0.0/8').containsIP(ctx.request.ip) && "
        "ctx.request.http.headers['x-team'] == ctx.user.attrs.team && now() > timestamp('2020-01-01T00:00:00Z')\"}}]}}]",
        NULL, NULL, NULL, "[{\"metadata\":{\"name\":\"wiki\"},\"spec\":{\"policies\":[\"p\"]}}]");
    policy_request r;
    policy_request_init(&r);
    cel_arena *values = cel_arena_new(0);
    cr_assert_eq(policy_request_set_user(&r, user, values), 0);
    cr_assert_eq(policy_request_set_service(&r, svc, values), 0);
    policy_request_set_string(&r, POLICY_VAR_HTTP_METHOD, "GET");
    policy_request_set_string(&r, POLICY_VAR_HTTP_PATH, "/");
    policy_request_set_string(&r, POLICY_VAR_REQUEST_IP, "10.1.2.3");
    json_t *headers = parse("{\"x-team\":\"blue\"}");
    cr_assert_eq(policy_value_from_json(headers, values, &r.vars[POLICY_VAR_HTTP_HEADERS]), 0);
    policy_decision d;
    cr_assert_eq(policy_decide(s, &r, arena, &d), 0);
    cr_assert(d.allow, "%s", d.reason);
    policy_request_set_string(&r, POLICY_VAR_REQUEST_IP, "192.168.1.1");
    cr_assert_eq(policy_decide(s, &r, arena, &d), 0);
    cr_assert(!d.allow);
    /* the Service's name and attrs looked up once by the caller (the proxy) */
    policy_request_set_string(&r, POLICY_VAR_REQUEST_IP, "10.1.2.3");
    r.vars[POLICY_VAR_SERVICE_NAME] = cel_string("", 0);
    r.vars[POLICY_VAR_SERVICE_ATTRS] = (cel_value){0};
    const json_t *attrs = json_object_get(json_object_get(svc, "spec"), "attrs");
    cr_assert_eq(policy_request_set_service_parts(&r, "wiki", 4, attrs, values), 0);
    cr_assert_eq(policy_decide(s, &r, arena, &d), 0);
    cr_expect(d.allow, "%s", d.reason);
    policy_request blank, fresh;
    policy_request_init(&blank);
    policy_request_init(&fresh);
    cr_assert_eq(policy_request_set_service_parts(&fresh, "wiki", 4, NULL, values), 0);
    cr_expect_eq(fresh.vars[POLICY_VAR_SERVICE_NAME].len, 4);
    cr_expect_eq(memcmp(fresh.vars[POLICY_VAR_SERVICE_NAME].str, "wiki", 4), 0);
    const cel_value *attrs_left = &fresh.vars[POLICY_VAR_SERVICE_ATTRS], *empty = &blank.vars[POLICY_VAR_SERVICE_ATTRS];
    cr_expect(attrs_left->kind == empty->kind && attrs_left->u == empty->u, "no attrs: ctx.service.attrs stays {}");
    cel_arena_free(values);
    json_decref(headers);
    json_decref(user);
    json_decref(svc);
    policy_set_unref(s);
}

static int validate(const char *doc, policy_problem *p)
{
    json_t *j = parse(doc);
    int r = policy_validate_document(j, p);
    json_decref(j);
    return r;
}

Test(policy, validation_names_field_and_position)
{
    policy_problem p;
    cr_assert_eq(validate("{\"kind\":\"Policy\",\"spec\":{\"rules\":["
                          "{\"effect\":\"allow\",\"condition\":{\"match\":\"true\"}},"
                          "{\"effect\":\"allow\",\"condition\":{\"all\":[{\"match\":\"ctx.user.name ==\\n  'a' &&\"}]}}]}}",
                          &p),
                 -EINVAL);
    cr_assert_str_eq(p.field, "spec.rules[1].condition.all[0].match");
    cr_assert_eq(p.line, 2);
    cr_assert_gt(p.column, 0);

    cr_assert_eq(validate("{\"kind\":\"Policy\",\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":"
                          "{\"match\":\"ctx.user.nmae == 'a'\"}}]}}",
                          &p),
                 -EINVAL);
    cr_assert_str_eq(p.field, "spec.rules[0].condition.match");
    cr_assert(strstr(p.message, "ctx.user.nmae"), "%s", p.message);
    cr_assert_eq(p.line, 1);
    cr_assert_eq(p.column, 1);

    cr_assert_eq(validate("{\"kind\":\"Policy\",\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":"
                          "{\"not\":{\"match\":\"frobnicate(ctx.user.name)\"}}}]}}",
                          &p),
                 -EINVAL);
    cr_assert_str_eq(p.field, "spec.rules[0].condition.not.match");

    cr_assert_eq(validate("{\"kind\":\"Service\",\"spec\":{\"inlinePolicies\":[{\"rules\":[{\"effect\":\"allow\","
                          "\"condition\":{\"match\":\"ctx.request.http.path.startsWith(\"}}]}]}}",
                          &p),
                 -EINVAL);
    cr_assert_str_eq(p.field, "spec.inlinePolicies[0].rules[0].condition.match");

    cr_assert_eq(validate("{\"kind\":\"Policy\",\"spec\":{\"rules\":[{\"effect\":\"allow\",\"condition\":"
                          "{\"match\":\"has(ctx.user.attrs.team) && ctx.request.api.verb in ['get', 'list']\"}}]}}",
                          &p),
                 0);
    cr_assert_eq(validate("{\"kind\":\"User\",\"spec\":{}}", &p), 0);
}

/* ---- the index against the unindexed evaluator on random rule sets ---- */

static const char *const random_conditions[] = {
    "{\"match\":\"'g%u' in ctx.user.groups\"}",
    "{\"match\":\"ctx.request.http.method == '%s'\"}",
    "{\"match\":\"ctx.request.http.method in ['GET', '%s']\"}",
    "{\"match\":\"ctx.request.http.path.startsWith('/p%u')\"}",
    "{\"match\":\"'g%u' in ctx.user.groups && ctx.request.http.path.startsWith('/p%u')\"}",
    "{\"match\":\"ctx.request.api.kind == 'K%u' || ctx.request.http.method == '%s'\"}",
    "{\"match\":\"ctx.request.api.kind == 'K%u' && ctx.user.attrs.missing == 1\"}",
    "{\"match\":\"ctx.user.attrs.missing == 1 && 'g%u' in ctx.user.groups\"}",
    "{\"not\":{\"match\":\"'g%u' in ctx.user.groups\"}}",
    "{\"all\":[{\"match\":\"'g%u' in ctx.user.groups\"},{\"match\":\"ctx.request.http.method == '%s'\"}]}",
    "{\"all\":[{\"match\":\"ctx.user.attrs.missing\"},{\"match\":\"ctx.request.http.path.startsWith('/p%u')\"}]}",
    "{\"any\":[{\"match\":\"'g%u' in ctx.user.groups\"},{\"match\":\"ctx.request.http.method == '%s'\"}]}",
    "{\"match\":\"cidr('10.%u.0.0/16').containsIP(ctx.request.ip)\"}",
    "{\"match\":\"cidr('10.%u.0.0/16').containsIP(ctx.request.ip) && ctx.request.http.path.startsWith('/p%u')\"}",
    "{\"match\":\"ctx.request.http.headers['x-team'] == 't%u'\"}",
    "{\"match\":\"'x-team' in ctx.request.http.headers && ctx.request.http.headers['x-team'] == 't%u'\"}",
    "{\"match\":\"ctx.request.http.headers.team == 't%u'\"}",
    "{\"all\":[{\"match\":\"ctx.request.http.method == '%s'\"},{\"match\":\"ctx.request.http.headers['x-team'] == 't%u'\"}]}",
    "{\"matchAny\":true}",
};
static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "get", "PURGE"};

/* Formats template T with random small numbers and methods (each %u / %s). */
static void fill_template(char *out, size_t size, const char *t, unsigned *seed)
{
    size_t o = 0;
    for (const char *p = t; *p && o + 16 < size; p++) {
        if (p[0] == '%' && p[1] == 'u') {
            o += (size_t)snprintf(out + o, size - o, "%u", (unsigned)rand_r(seed) % 4);
            p++;
        } else if (p[0] == '%' && p[1] == 's') {
            o += (size_t)snprintf(out + o, size - o, "%s", methods[rand_r(seed) % ELEMENTSOF(methods)]);
            p++;
        } else
            out[o++] = *p;
    }
    out[o] = 0;
}

Test(policy, index_agrees_with_unindexed_on_random_sets)
{
    unsigned seed = 12345;
    for (int round = 0; round < 40; round++) {
        json_t *policies = json_array(), *groups = json_array(), *users = json_array(), *services = json_array();
        unsigned np = 1 + (unsigned)rand_r(&seed) % 12;
        for (unsigned i = 0; i < np; i++) {
            json_t *rules = json_array();
            unsigned nr = 1 + (unsigned)rand_r(&seed) % 6;
            for (unsigned k = 0; k < nr; k++) {
                char cond[512];
                fill_template(cond, sizeof(cond), random_conditions[rand_r(&seed) % ELEMENTSOF(random_conditions)],
                              &seed);
                json_t *c = parse(cond);
                json_array_append_new(rules, json_pack("{s:s, s:i, s:o}", "effect", rand_r(&seed) % 2 ? "allow" : "deny",
                                                       "priority", rand_r(&seed) % 5 - 2, "condition", c));
            }
            char name[16];
            snprintf(name, sizeof(name), "p%u", i);
            json_array_append_new(policies, json_pack("{s:{s:s}, s:{s:o}}", "metadata", "name", name, "spec", "rules", rules));
        }
        for (unsigned g = 0; g < 4; g++) {
            char gname[16], pname[16];
            snprintf(gname, sizeof(gname), "g%u", g);
            snprintf(pname, sizeof(pname), "p%u", (unsigned)rand_r(&seed) % np);
            json_array_append_new(groups, json_pack("{s:{s:s}, s:{s:[s]}}", "metadata", "name", gname, "spec", "policies", pname));
        }
        json_t *svc_pols = json_array();
        for (unsigned i = 0; i < np; i++)
            if (rand_r(&seed) % 2) {
                char pname[16];
                snprintf(pname, sizeof(pname), "p%u", i);
                json_array_append_new(svc_pols, json_string(pname));
            }
        json_array_append_new(services, json_pack("{s:{s:s}, s:{s:o}}", "metadata", "name", "wiki", "spec", "policies", svc_pols));
        json_array_append_new(users, json_pack("{s:{s:s}, s:{s:[s]}}", "metadata", "name", "u0", "spec", "policies", "p0"));
        policy_set *s;
        cr_assert_eq(policy_set_new(policies, users, groups, NULL, services, &s), 0);
        for (int q = 0; q < 60; q++) {
            test_req t;
            char groups_csv[64] = "", path[32], ip[32], user[16], kind[16];
            for (unsigned g = 0; g < 4; g++)
                if (rand_r(&seed) % 2) {
                    size_t l = strlen(groups_csv);
                    snprintf(groups_csv + l, sizeof(groups_csv) - l, "%sg%u", l ? "," : "", g);
                }
            snprintf(path, sizeof(path), "/p%u/x", (unsigned)rand_r(&seed) % 5);
            unsigned ipk = (unsigned)rand_r(&seed) % 7;
            snprintf(ip, sizeof(ip), ipk == 5 ? "" : ipk == 6 ? "::ffff:10.1.1.1" : "10.%u.1.1", ipk);
            snprintf(user, sizeof(user), "u%u", (unsigned)rand_r(&seed) % 2);
            snprintf(kind, sizeof(kind), "K%u", (unsigned)rand_r(&seed) % 5);
            make_req(&t, user, groups_csv, rand_r(&seed) % 4 ? "wiki" : "other",
                     methods[rand_r(&seed) % ELEMENTSOF(methods)], path);
            policy_request_set_string(&t.req, POLICY_VAR_REQUEST_IP, ip);
            policy_request_set_string(&t.req, POLICY_VAR_API_KIND, kind);
            char team[16];
            snprintf(team, sizeof(team), "t%u", (unsigned)rand_r(&seed) % 4);
            unsigned hk = (unsigned)rand_r(&seed) % 3;
            t.header_entries[0] = (cel_map_entry){cel_cstring("x-team"), hk == 2 ? cel_int(7) : cel_cstring(team)};
            t.headers = (cel_map){hk == 0 ? 0 : 1, t.header_entries};
            t.req.vars[POLICY_VAR_HTTP_HEADERS] = cel_map_value(&t.headers);
            decide(s, &t);
            decide(s, &t); /* again, from the cache */
        }
        policy_set_unref(s);
        json_decref(policies);
        json_decref(groups);
        json_decref(users);
        json_decref(services);
    }
}

Test(policy, bad_requests_are_refused)
{
    policy_set *s = make_set("[]", NULL, NULL, NULL, NULL);
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    t.req.vars[POLICY_VAR_HTTP_METHOD] = cel_int(1);
    policy_decision d;
    cr_assert_eq(policy_decide(s, &t.req, arena, &d), -EINVAL);
    policy_set_unref(s);
}

/* ---- the store's current set ---- */

static void store_put(store *st, const char *kind, const char *name, const char *spec_json)
{
    json_t *spec = parse(spec_json);
    json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:o}", "apiVersion", "cloister.dev/v1", "kind", kind, "metadata",
                            "name", name, "spec", spec);
    store_op op = {.type = STORE_APPLY, .kind = kind, .name = name, .doc = doc};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(st, &txn), 0);
    store_txn_clear(&txn);
    json_decref(doc);
}

Test(policy, source_rebuilds_on_relevant_changes_only)
{
    char dir[] = "/tmp/cloister-policy-XXXXXX", path[64], cmd[96];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/store.db", dir);
    store *st;
    cr_assert_eq(store_open(path, &st), 0);
    policy_source *src;
    cr_assert_eq(policy_source_new(st, &src), 0);
    store_put(st, "Policy", "p", "{\"rules\":[{\"effect\":\"allow\",\"condition\":{\"match\":\"ctx.request.http.method == 'GET'\"}}]}");
    store_put(st, "Service", "wiki", "{\"upstream\":{\"url\":\"http://127.0.0.1:9\"},\"policies\":[\"p\"]}");

    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    policy_set *a, *b;
    policy_decision d;
    cr_assert_eq(policy_source_get(src, &a), 0);
    cr_assert_eq(policy_decide(a, &t.req, arena, &d), 0);
    cr_assert(d.allow);

    /* a change to another kind keeps the set */
    store_put(st, "Secret", "s", "{\"data\":{\"k\":\"v\"}}");
    cr_assert_eq(policy_source_get(src, &b), 0);
    cr_assert_eq(a, b);
    policy_set_unref(b);

    /* a policy change gives a new set at once; the old one stays valid for its holders */
    store_put(st, "Policy", "p", "{\"rules\":[{\"effect\":\"deny\",\"condition\":{\"matchAny\":true}}]}");
    cr_assert_eq(policy_source_get(src, &b), 0);
    cr_assert_neq(a, b);
    cr_assert_eq(policy_decide(b, &t.req, arena, &d), 0);
    cr_assert(!d.allow);
    cr_assert_eq(policy_decide(a, &t.req, arena, &d), 0);
    cr_assert(d.allow);
    policy_set_unref(a);
    policy_set_unref(b);

    policy_source_free(src);
    store_free(st);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(policy, conditions_per_decision_are_capped)
{
    json_t *rules = json_array();
    for (int i = 0; i < 70; i++) {
        json_t *all = json_array();
        for (int k = 0; k < 64; k++)
            json_array_append_new(all, json_pack("{s:s}", "match", "true"));
        json_array_append_new(rules, json_pack("{s:s, s:{s:{s:o}}}", "effect", "allow", "condition", "not", "all", all));
    }
    json_t *policies = json_pack("[{s:{s:s}, s:{s:o}}]", "metadata", "name", "many", "spec", "rules", rules);
    json_t *services = parse(SVC("[\"many\"]"));
    policy_set *s;
    cr_assert_eq(policy_set_new(policies, NULL, NULL, NULL, services, &s), 0);
    test_req t;
    make_req(&t, "alice", "", "wiki", "GET", "/");
    policy_decision d = decide(s, &t);
    cr_assert(!d.allow);
    cr_assert_str_eq(d.rule, "#64");
    cr_assert(strstr(d.reason, "conditions were evaluated in one decision"), "%s", d.reason);
    policy_set_unref(s);
    json_decref(policies);
    json_decref(services);
}
