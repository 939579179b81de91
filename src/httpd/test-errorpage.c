/* The browser pages (errorpage.h): everything echoed is escaped, the CSP
 * allows exactly the page's one style by its hash, links only go where they
 * may, and only an Accept that names text/html first asks for a page. */
#include <criterion/criterion.h>
#include <openssl/sha.h>
#include <string.h>

#include "basic/encoding.h"
#include "httpd/errorpage.h"

/* Renders P; the caller frees the text. */
static char *render(const error_page *p)
{
    strbuf b;
    strbuf_init(&b, ERROR_PAGE_MAX);
    cr_assert_eq(error_page_render(p, &b), 0);
    cr_assert_eq(strbuf_append(&b, "", 1), 0);
    char *text = strdup(b.data);
    strbuf_free(&b);
    return text;
}

Test(errorpage, escapes_everything_echoed)
{
    char *page = render(&(error_page){.status = 403,
                                      .message = "<script>alert(1)</script> & \"quoted\" 'single'",
                                      .explanation = "<img src=x onerror=alert(1)>",
                                      .remediation = "ask\x01 #ops",
                                      .request_id = "\"><script>",
                                      .signout_url = "/.cloister/logout"});
    cr_assert_null(strstr(page, "<script"));
    cr_assert_null(strstr(page, "<img"));
    cr_assert_not_null(strstr(page, "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot; &#39;single&#39;"));
    cr_assert_not_null(strstr(page, "&lt;img src=x onerror=alert(1)&gt;"));
    cr_assert_not_null(strstr(page, "ask? #ops"));
    cr_assert_not_null(strstr(page, "<h1>Access denied</h1>"));
    cr_assert_not_null(strstr(page, "<a href=\"/.cloister/logout\">Sign out</a>"));
    free(page);
}

Test(errorpage, csp_hash_is_the_style)
{
    char *page = render(&(error_page){.status = 502, .message = "down"});
    char *start = strstr(page, "<style>"), *end = strstr(page, "</style>");
    cr_assert(start && end);
    start += strlen("<style>");
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)start, (size_t)(end - start), digest);
    char b64[64], want[100];
    base64_encode(digest, sizeof(digest), b64, false);
    snprintf(want, sizeof(want), "style-src 'sha256-%s';", b64);
    cr_assert_not_null(strstr(error_page_csp(), want), "%s", error_page_csp());
    cr_assert_eq(strncmp(error_page_csp(), "default-src 'none';", 19), 0);
    free(page);
}

Test(errorpage, links_only_to_http)
{
    char *page = render(&(error_page){.status = 200, .message = "m", .link_url = "javascript:alert(1)",
                                      .link_label = "x"});
    cr_assert_null(strstr(page, "javascript:"));
    free(page);
    page = render(&(error_page){.status = 200, .message = "m", .link_url = "https://idp.example/logout?a=1&b=2",
                                .link_label = "idp"});
    cr_assert_not_null(strstr(page, "href=\"https://idp.example/logout?a=1&amp;b=2\""));
    free(page);
}

/* A request whose Accept header is ACCEPT (none when NULL). */
static bool wanted(const char *accept)
{
    h2o_req_t req;
    memset(&req, 0, sizeof(req));
    h2o_mem_init_pool(&req.pool);
    if (accept)
        h2o_add_header(&req.pool, &req.headers, H2O_TOKEN_ACCEPT, NULL, accept, strlen(accept));
    bool w = error_page_wanted(&req);
    h2o_mem_clear_pool(&req.pool);
    return w;
}

Test(errorpage, only_html_first_asks_for_a_page)
{
    cr_assert(wanted("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
    cr_assert(wanted("text/html"));
    cr_assert(wanted("TEXT/HTML; q=1"));
    cr_assert_not(wanted(NULL));
    cr_assert_not(wanted("*/*"));
    cr_assert_not(wanted("application/json"));
    cr_assert_not(wanted("application/json, text/html"));
    cr_assert_not(wanted("text/htmlx"));
}
