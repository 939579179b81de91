/* Unit tests of the proxy's Cookie and Set-Cookie header handling. */
#include <criterion/criterion.h>
#include <string.h>

#include "proxy/cookie.h"

#define NAME "cloister_session"

static void expect_find(const char *header, const char *want)
{
    const char *v = NULL;
    size_t n = 0;
    bool found = proxy_cookie_find(header, strlen(header), NAME, strlen(NAME), &v, &n);
    if (!want) {
        cr_expect(!found, "%s: found", header);
        return;
    }
    cr_expect(found, "%s: not found", header);
    cr_expect(n == strlen(want) && memcmp(v, want, n) == 0, "%s: got %.*s", header, (int)n, v);
}

static void expect_strip(const char *header, const char *want)
{
    char out[512];
    size_t n = proxy_cookie_strip(header, strlen(header), NAME, strlen(NAME), out);
    cr_expect(n == strlen(want) && memcmp(out, want, n) == 0, "%s: got '%.*s'", header, (int)n, out);
}

Test(cookie, finds_our_cookie_among_others)
{
    expect_find("cloister_session=abc", "abc");
    expect_find("a=1; cloister_session=abc; b=2", "abc");
    expect_find("a=1;cloister_session=abc;b=2", "abc");
    expect_find("cloister_session=", "");
    expect_find("cloister_session=first; cloister_session=second", "first");
    expect_find("x_cloister_session=abc", NULL);
    expect_find("cloister_sessionx=abc", NULL);
    expect_find("a=cloister_session=abc", NULL);
    expect_find("", NULL);
    expect_find(";;;", NULL);
}

Test(cookie, strips_every_copy_of_our_cookie_only)
{
    expect_strip("theme=dark; cloister_session=stolen; lang=en", "theme=dark; lang=en");
    expect_strip("cloister_session=a; cloister_session=b", "");
    expect_strip("cloister_session", "");
    expect_strip("a=1;b=2", "a=1; b=2");
    expect_strip("x_cloister_session=1; cloister_sessionx=2", "x_cloister_session=1; cloister_sessionx=2");
    expect_strip(";; a=1 ;", "a=1 ");
    expect_strip("", "");
}

Test(cookie, output_never_exceeds_twice_the_input)
{
    const char *h = "a;b;c;d;e;f;g";
    char out[64];
    memset(out, 0x7f, sizeof(out));
    size_t n = proxy_cookie_strip(h, strlen(h), NAME, strlen(NAME), out);
    cr_expect(n <= 2 * strlen(h));
    cr_expect_str_eq((out[n] = 0, out), "a; b; c; d; e; f; g");
}

static const char *const OURS[] = {"cloister_session", "cloister_login", NULL};

static void expect_ours(const char *set_cookie, bool want)
{
    cr_expect(proxy_set_cookie_is_ours(set_cookie, strlen(set_cookie), OURS) == want, "%s: %s", set_cookie,
              want ? "passed" : "dropped");
}

Test(set_cookie, recognises_ours_under_any_prefix_and_case)
{
    expect_ours("cloister_session=attacker; Path=/", true);
    expect_ours("cloister_login=x; Path=/.cloister/; Domain=localhost", true);
    expect_ours("  cloister_session = x", true);
    expect_ours("cloister_session=", true);
    expect_ours("__Host-cloister_session=x; Secure; Path=/", true);
    expect_ours("__Secure-cloister_login=x; Secure", true);
    expect_ours("__host-CLOISTER_SESSION=x", true);
    expect_ours("Cloister_Session=x", true);
    expect_ours("cloister_session", true); /* no '=': a nameless value, sent back as a bare name */
    expect_ours("cloister_login; Path=/", true);
}

Test(set_cookie, passes_every_other_cookie)
{
    expect_ours("theme=dark; Path=/", false);
    expect_ours("cloister_sessionx=1", false);
    expect_ours("x_cloister_session=1", false);
    expect_ours("__Host-theme=1; Secure; Path=/", false);
    expect_ours("__Host-__Secure-cloister_session=1", false);
    expect_ours("x; cloister_session=1", false);     /* the attributes are not the name */
    expect_ours("", false);
}
