/* Unit tests of the corridor's stages that need no socket: the headers an
 * upstream gets (rewrite.c), the access record's encoding (access-log.c)
 * and the SNI/Host misdirection decision (tls.c). */
#include <criterion/criterion.h>
#include <string.h>

#include "proxy/corridor.h"

/* ---- rewrite ---- */

static h2o_mem_pool_t pool;

static void pool_setup(void)
{
    h2o_mem_init_pool(&pool);
}

static void pool_teardown(void)
{
    h2o_mem_clear_pool(&pool);
}

static void add(h2o_headers_t *h, const char *name, const char *value)
{
    h2o_add_header_by_str(&pool, h, name, strlen(name), 1, NULL, value, strlen(value));
}

/* The value of the only header NAME in H, or NULL; fails the test when NAME
 * is there more than once. */
static const char *only(const h2o_headers_t *h, const char *name)
{
    const char *found = NULL;
    for (size_t i = 0; i < h->size; i++) {
        const h2o_iovec_t *n = h->entries[i].name;
        if (n->len != strlen(name) || strncasecmp(n->base, name, n->len) != 0)
            continue;
        cr_assert_null(found, "%s appears more than once", name);
        found = h2o_strdup(&pool, h->entries[i].value.base, h->entries[i].value.len).base;
    }
    return found;
}

static json_t *ana(void)
{
    return json_pack("{s:{s:s}, s:{s:s, s:[s, s]}}", "metadata", "name", "ana", "spec", "email", "ana@example.com",
                     "groups", "dev", "ops");
}

static const char request_id[] = "0123456789abcdef0123456789abcdef";

TestSuite(rewrite, .init = pool_setup, .fini = pool_teardown);

Test(rewrite, drops_what_the_client_must_not_set_and_adds_the_identity)
{
    h2o_headers_t in = {NULL}, out;
    add(&in, "accept", "text/plain");
    add(&in, "authorization", "Bearer the-access-token");
    add(&in, "cookie", "theme=dark; cloister_session=stolen; lang=en");
    add(&in, "X-Cloister-User", "root");
    add(&in, "x-cloister-assertion", "forged");
    add(&in, "x-forwarded-for", "10.0.0.1");
    add(&in, "forwarded", "for=10.0.0.1");
    add(&in, "x-real-ip", "10.0.0.1");
    add(&in, "proxy-authorization", "Basic eDp5");
    add(&in, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    add(&in, "TraceState", "vendor=x");
    proxy_service svc = {.name = "app"};
    json_t *user = ana();
    proxy_identity who;
    cr_assert_eq(proxy_identity_init(&who, user, NULL, NULL), 0);
    proxy_upstream_headers(&pool, &in, &svc, &who, request_id, "the.assertion.jwt", &out);
    proxy_identity_done(&who);
    json_decref(user);

    cr_expect_str_eq(only(&out, "accept"), "text/plain");
    cr_expect_null(only(&out, "authorization"), "the access token is not the upstream's");
    cr_expect_str_eq(only(&out, "cookie"), "theme=dark; lang=en");
    cr_expect_null(only(&out, "x-forwarded-for"));
    cr_expect_null(only(&out, "forwarded"));
    cr_expect_null(only(&out, "x-real-ip"));
    cr_expect_null(only(&out, "proxy-authorization"));
    cr_expect_null(only(&out, "traceparent"), "the trace stages write their own (trace.c)");
    cr_expect_null(only(&out, "tracestate"));
    cr_expect_str_eq(only(&out, "x-cloister-user"), "ana");
    cr_expect_str_eq(only(&out, "x-cloister-email"), "ana@example.com");
    cr_expect_str_eq(only(&out, "x-cloister-groups"), "dev,ops");
    cr_expect_str_eq(only(&out, "x-cloister-request-id"), request_id);
    cr_expect_str_eq(only(&out, "x-cloister-assertion"), "the.assertion.jwt");
    cr_expect_eq(in.size, 11, "the client's headers are left as they were");
}

Test(rewrite, a_cookie_header_of_ours_alone_is_dropped_and_authorization_passes_when_asked)
{
    h2o_headers_t in = {NULL}, out;
    add(&in, "cookie", "cloister_session=stolen");
    add(&in, "authorization", "Bearer for-the-upstream");
    proxy_service svc = {.name = "app", .pass_authorization = true};
    json_t *user = json_pack("{s:{s:s}}", "metadata", "name", "bot");
    proxy_identity who;
    cr_assert_eq(proxy_identity_init(&who, user, NULL, NULL), 0);
    proxy_upstream_headers(&pool, &in, &svc, &who, request_id, "a", &out);
    proxy_identity_done(&who);
    json_decref(user);
    cr_expect_null(only(&out, "cookie"));
    cr_expect_str_eq(only(&out, "authorization"), "Bearer for-the-upstream");
    cr_expect_null(only(&out, "x-cloister-email"), "no email, no header");
    cr_expect_str_eq(only(&out, "x-cloister-groups"), "");
}

Test(rewrite, an_injected_header_replaces_the_clients)
{
    h2o_headers_t in = {NULL}, out;
    add(&in, "authorization", "Bearer the-access-token");
    add(&in, "x-api-key", "client-chosen");
    proxy_service svc = {.name = "app",
                         .pass_authorization = true,
                         .inject = PROXY_INJECT_HEADER,
                         .inject_name = h2o_iovec_init(H2O_STRLIT("x-api-key")),
                         .inject_value = h2o_iovec_init(H2O_STRLIT("the-secret"))};
    json_t *user = ana();
    proxy_identity who;
    cr_assert_eq(proxy_identity_init(&who, user, NULL, NULL), 0);
    proxy_upstream_headers(&pool, &in, &svc, &who, request_id, "a", &out);
    proxy_identity_done(&who);
    json_decref(user);
    cr_expect_str_eq(only(&out, "x-api-key"), "the-secret");
    cr_expect_null(only(&out, "authorization"), "a Service that injects never passes the caller's Authorization");
}

/* ---- the access record ---- */

/* A cached assertion is signed again once half its life is gone, except in
 * its token's last minute: one signed then would expire with the token too,
 * and every request would pay an ES256 signature (a 5x slowdown measured). */
Test(rewrite, an_assertion_is_reused_until_half_its_life_or_to_its_tokens_end)
{
    const int64_t ttl = PROXY_ASSERTION_TTL_S, now = 1000000, token_exp = now + 3600;
    cr_expect(proxy_assertion_reusable(now, now + ttl, token_exp));
    cr_expect(proxy_assertion_reusable(now, now + ttl / 2 + 1, token_exp));
    cr_expect(!proxy_assertion_reusable(now, now + ttl / 2, token_exp), "half its life gone: signed again");
    /* the token's last minute: the cached one expires with the token */
    cr_expect(proxy_assertion_reusable(now, now + 30, now + 30));
    cr_expect(proxy_assertion_reusable(now, now + 1, now + 1));
    /* a token renewed in the same session: the old token's end no longer caps it */
    cr_expect(!proxy_assertion_reusable(now, now + 30, now + 900));
    /* expired */
    cr_expect(!proxy_assertion_reusable(now, now, now));
    cr_expect(!proxy_assertion_reusable(now, now - 1, now + 900));
}

Test(access, records_encode_as_arrays_of_the_named_fields)
{
    strbuf b;
    strbuf_init(&b, 16 * 1024);
    access_record rec = {.service = "app", .user = "ana", .session = "s-1", .decision = PROXY_DECISION_ALLOW};
    snprintf(rec.id, sizeof(rec.id), "%s", request_id);
    snprintf(rec.ip, sizeof(rec.ip), "127.0.0.1");
    snprintf(rec.method, sizeof(rec.method), "GET");
    rec.path = "/a\"b\\c";
    snprintf(rec.policy, sizeof(rec.policy), "p");
    snprintf(rec.rule, sizeof(rec.rule), "r");
    char out[1024];
    size_t n = proxy_access_encode(out, sizeof(out), "2026-01-02T03:04:05.678Z", &rec, 200, 612, 42);
    cr_assert_gt(n, 0);
    strbuf_putc(&b, '[');
    strbuf_append(&b, out, n);
    access_record anonymous = {.decision = PROXY_DECISION_UNAUTHENTICATED};
    snprintf(anonymous.id, sizeof(anonymous.id), "%s", request_id);
    snprintf(anonymous.method, sizeof(anonymous.method), "POST");
    strbuf_putc(&b, ',');
    cr_assert_gt(n = proxy_access_encode(out, sizeof(out), "2026-01-02T03:04:05.679Z", &anonymous, 401, 0, 7), 0);
    strbuf_append(&b, out, n);
    cr_assert_eq(strbuf_putc(&b, ']'), 0);

    json_error_t err;
    json_t *all = json_loadb(b.data, b.len, 0, &err);
    cr_assert_not_null(all, "%s: %s", err.text, b.data);
    cr_assert_eq(json_array_size(all), 2);
    json_t *first = json_array_get(all, 0), *second = json_array_get(all, 1);
    cr_expect_eq(json_array_size(first), PROXY_ACCESS_FIELDS_N);
    cr_expect_eq(json_array_size(second), PROXY_ACCESS_FIELDS_N);
    json_t *want = json_pack("[s, s, s, s, s, s, s, s, s, s, s, i, i, i]", "2026-01-02T03:04:05.678Z", request_id,
                             "ana", "s-1", "127.0.0.1", "app", "GET", "/a\"b\\c", "allow", "p", "r", 200, 612, 42);
    cr_expect(json_equal(first, want), "got %s", json_dumps(first, 0));
    json_decref(want);
    want = json_pack("[s, s, n, n, n, n, s, s, s, n, n, i, i, i]", "2026-01-02T03:04:05.679Z", request_id, "POST", "",
                     "unauthenticated", 401, 0, 7);
    cr_expect(json_equal(second, want), "unknowns are null: got %s", json_dumps(second, 0));
    json_decref(want);
    cr_expect_str_eq(proxy_access_fields[7], "path");
    cr_expect_str_eq(proxy_access_fields[PROXY_ACCESS_FIELDS_N - 1], "latencyUs");
    json_decref(all);
    strbuf_free(&b);
}

Test(access, record_strings_are_escaped_as_json_and_a_record_that_does_not_fit_is_refused)
{
    access_record rec = {.service = "a\"p\\p", .user = "tab\there", .session = "nl\nx\x01\x7f",
                         .decision = PROXY_DECISION_DENY};
    snprintf(rec.id, sizeof(rec.id), "%s", request_id);
    snprintf(rec.method, sizeof(rec.method), "GET");
    rec.path = "/caf\xc3\xa9";
    char out[1024];
    size_t n = proxy_access_encode(out, sizeof(out), "2026-01-02T03:04:05.678Z", &rec, -1, 0, 0);
    cr_assert_gt(n, 0);
    json_error_t err;
    json_t *got = json_loadb(out, n, 0, &err);
    cr_assert_not_null(got, "%s: %.*s", err.text, (int)n, out);
    cr_expect_str_eq(json_string_value(json_array_get(got, 2)), "tab\there");
    cr_expect_str_eq(json_string_value(json_array_get(got, 3)), "nl\nx\x01\x7f");
    cr_expect_str_eq(json_string_value(json_array_get(got, 5)), "a\"p\\p");
    cr_expect_str_eq(json_string_value(json_array_get(got, 7)), "/caf\xc3\xa9", "UTF-8 as it is");
    cr_expect_eq(json_integer_value(json_array_get(got, 11)), -1);
    cr_expect(memmem(out, n, "\\u0001\\u007f", 12) != NULL, "%.*s", (int)n, out);
    json_decref(got);
    for (size_t size = 0; size < n; size++)
        cr_expect_eq(proxy_access_encode(out, size, "2026-01-02T03:04:05.678Z", &rec, -1, 0, 0), 0,
                     "a buffer of %zu bytes is too small for %zu", size, n);
}

Test(access, log_copies_keep_printable_ascii_only)
{
    char out[8];
    proxy_copy_printable(out, sizeof(out), "/a\n\x80z", 5);
    cr_expect_str_eq(out, "/a??z");
    proxy_copy_printable(out, sizeof(out), "/0123456789", 11);
    cr_expect_str_eq(out, "/012345", "cut at the size");
}

/* ---- SNI against Host ---- */

Test(misdirected, a_connection_opened_for_another_service_is_refused)
{
    proxy_service services[2] = {{.name = "a"}, {.name = "b"}};
    proxy_config c = {.services = services, .n_services = 2,
                      .hosts = json_pack("{s:i, s:i}", "a.example.com", 0, "b.example.com", 1)};
    cr_expect_null(proxy_sni_misdirected(&c, &services[0], NULL), "no SNI names no service");
    cr_expect_null(proxy_sni_misdirected(&c, &services[0], "127.0.0.1"), "nor does an address sent as SNI");
    cr_expect_null(proxy_sni_misdirected(&c, &services[0], "::1"));
    cr_expect_null(proxy_sni_misdirected(&c, &services[0], "a.example.com"));
    cr_expect_null(proxy_sni_misdirected(&c, &services[0], "A.Example.COM."), "any case, a trailing dot");
    cr_expect_not_null(proxy_sni_misdirected(&c, &services[0], "b.example.com"));
    cr_expect_not_null(proxy_sni_misdirected(&c, &services[1], "a.example.com"));
    cr_expect_not_null(proxy_sni_misdirected(&c, &services[0], "elsewhere.example.com"),
                       "a name that routes nowhere is not the Host's service either");
    json_decref(c.hosts);
}
