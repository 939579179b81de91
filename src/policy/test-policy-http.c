/* Unit tests of the one policy request built from an HTTP request
 * (policy-http.c) and of ctx.session from a Session document, as the proxy
 * and the API both decide on them. */
#include <criterion/criterion.h>
#include <string.h>

#include "policy/policy-http.h"

static h2o_req_t req;
static cel_arena *arena;

static void setup(void)
{
    memset(&req, 0, sizeof(req));
    h2o_mem_init_pool(&req.pool);
    req.method = h2o_iovec_init(H2O_STRLIT("POST"));
    req.authority = h2o_iovec_init(H2O_STRLIT("app.example.com"));
    req.scheme = &H2O_URL_SCHEME_HTTPS;
    arena = cel_arena_new(64 * 1024);
}

static void teardown(void)
{
    cel_arena_free(arena);
    h2o_mem_clear_pool(&req.pool);
}

static void header(const h2o_token_t *token, const char *value)
{
    h2o_add_header(&req.pool, &req.headers, token, NULL, value, strlen(value));
}

static void expect_string(const policy_request *pr, policy_var v, const char *want)
{
    const cel_value *got = &pr->vars[v];
    cr_assert_eq(got->kind, CEL_STRING);
    cr_expect(got->len == strlen(want) && memcmp(got->str, want, got->len) == 0, "slot %d: got '%.*s', want '%s'", v,
              (int)got->len, got->str, want);
}

/* The string value of header NAME in ctx.request.http.headers, or NULL. */
static const char *header_seen(const policy_request *pr, const char *name)
{
    const cel_value *m = &pr->vars[POLICY_VAR_HTTP_HEADERS];
    cr_assert_eq(m->kind, CEL_MAP);
    for (size_t i = 0; i < m->map->len; i++) {
        const cel_map_entry *e = &m->map->entries[i];
        if (e->key.len == strlen(name) && memcmp(e->key.str, name, e->key.len) == 0)
            return h2o_strdup(&req.pool, e->value.str, e->value.len).base;
    }
    return NULL;
}

TestSuite(policy_http, .init = setup, .fini = teardown);

Test(policy_http, the_decided_target_and_the_request_as_sent)
{
    header(H2O_TOKEN_ACCEPT, "text/html");
    header(H2O_TOKEN_AUTHORIZATION, "Bearer secret");
    header(H2O_TOKEN_COOKIE, "cloister_session=secret");
    h2o_add_header_by_str(&req.pool, &req.headers, H2O_STRLIT("x-team"), 0, NULL, H2O_STRLIT("a"));
    h2o_add_header_by_str(&req.pool, &req.headers, H2O_STRLIT("x-team"), 0, NULL, H2O_STRLIT("b"));
    policy_request pr;
    policy_request_init(&pr);
    cr_assert_eq(policy_request_set_http(&pr, &req, h2o_iovec_init(H2O_STRLIT("/admin/x")),
                                   h2o_iovec_init(H2O_STRLIT("a=%2F&b")), arena), 0);
    expect_string(&pr, POLICY_VAR_HTTP_METHOD, "POST");
    expect_string(&pr, POLICY_VAR_HTTP_PATH, "/admin/x");
    expect_string(&pr, POLICY_VAR_HTTP_QUERY, "a=%2F&b");
    expect_string(&pr, POLICY_VAR_HTTP_HOST, "app.example.com");
    expect_string(&pr, POLICY_VAR_HTTP_SCHEME, "https");
    cr_expect_str_eq(header_seen(&pr, "accept"), "text/html");
    cr_expect_str_eq(header_seen(&pr, "x-team"), "a, b", "repeated headers are joined");
    cr_expect_null(header_seen(&pr, "authorization"), "credentials are never seen by policies");
    cr_expect_null(header_seen(&pr, "cookie"));
}

Test(policy_http, no_query_is_the_empty_string_and_text_that_is_not_utf8_is_too)
{
    req.scheme = &H2O_URL_SCHEME_HTTP;
    req.authority = h2o_iovec_init(H2O_STRLIT("bad\xff.example.com"));
    policy_request pr;
    policy_request_init(&pr);
    cr_assert_eq(policy_request_set_http(&pr, &req, h2o_iovec_init(H2O_STRLIT("/")), h2o_iovec_init(NULL, 0), arena), 0);
    expect_string(&pr, POLICY_VAR_HTTP_QUERY, "");
    expect_string(&pr, POLICY_VAR_HTTP_HOST, "");
    expect_string(&pr, POLICY_VAR_HTTP_SCHEME, "http");
}

Test(policy_http, the_session_of_an_access_token)
{
    json_t *session = json_pack("{s:{s:s}, s:{s:s}}", "metadata", "name", "s-1", "spec", "authMethod", "oidc");
    policy_request pr;
    policy_request_init(&pr);
    policy_request_set_session(&pr, session, 100, 200, true);
    expect_string(&pr, POLICY_VAR_SESSION_ID, "s-1");
    expect_string(&pr, POLICY_VAR_SESSION_AUTH_METHOD, "oidc");
    expect_string(&pr, POLICY_VAR_SESSION_TYPE, "browser");
    cr_expect(pr.vars[POLICY_VAR_SESSION_IS_BROWSER].kind == CEL_BOOL && pr.vars[POLICY_VAR_SESSION_IS_BROWSER].b);
    cr_expect_eq(pr.vars[POLICY_VAR_SESSION_CREATED_AT].i, 100);
    cr_expect_eq(pr.vars[POLICY_VAR_SESSION_EXPIRES_AT].i, 200);
    json_object_set_new(json_object_get(session, "spec"), "authMethod", json_string("password"));
    policy_request_set_session(&pr, session, 100, 200, false);
    expect_string(&pr, POLICY_VAR_SESSION_AUTH_METHOD, "");
    expect_string(&pr, POLICY_VAR_SESSION_TYPE, "client");
    json_decref(session);
}
