#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "proxy/path.h"

/* Normalises IN (its strlen) and expects EXPECTED with PATH_LEN bytes of path,
 * and the same output again when normalising EXPECTED. */
static void expect_path(const char *in, const char *expected, size_t path_len)
{
    char out[PROXY_PATH_MAX + 1], again[PROXY_PATH_MAX + 1];
    size_t n = 12345, n2 = 12345;
    cr_assert_eq(proxy_path_normalize(in, strlen(in), out, sizeof(out), &n), 0, "%s", in);
    cr_assert_str_eq(out, expected, "%s", in);
    cr_assert_eq(n, path_len, "%s: path_len %zu", in, n);
    cr_assert_eq(proxy_path_normalize(out, strlen(out), again, sizeof(again), &n2), 0, "%s", out);
    cr_assert_str_eq(again, out);
    cr_assert_eq(n2, n);
}

/* Normalises the LEN bytes of IN and expects ERR, an empty OUT and
 * *ret_path_len untouched. */
static void expect_refused_n(const char *in, size_t len, int err)
{
    char out[PROXY_PATH_MAX + 1];
    size_t n = 12345;
    memset(out, 'x', sizeof(out));
    cr_assert_eq(proxy_path_normalize(in, len, out, sizeof(out), &n), err, "%.*s", (int)len, in);
    cr_assert_eq(out[0], 0, "%.*s", (int)len, in);
    cr_assert_eq(n, 12345);
}

static void expect_refused(const char *in)
{
    expect_refused_n(in, strlen(in), -EINVAL);
}

Test(proxy_path, plain_paths_are_unchanged)
{
    expect_path("/", "/", 1);
    expect_path("/a", "/a", 2);
    expect_path("/a/b/", "/a/b/", 5);
    expect_path("/api/v1/users/42", "/api/v1/users/42", 16);
    expect_path("/a/b...c/...", "/a/b...c/...", 12);
    expect_path("/.well-known/x", "/.well-known/x", 14);
    /* every sub-delim, ':' and '@' are pchars */
    expect_path("/a:b@c!$&'()*+,;=~_-.", "/a:b@c!$&'()*+,;=~_-.", 21);
}

Test(proxy_path, duplicate_slashes_collapse)
{
    expect_path("//admin", "/admin", 6);
    expect_path("///", "/", 1);
    expect_path("/a//b///c", "/a/b/c", 6);
    expect_path("/a//", "/a/", 3);
}

Test(proxy_path, dot_segments_are_resolved)
{
    expect_path("/./admin", "/admin", 6);
    expect_path("/a/../admin", "/admin", 6);
    expect_path("/a/./b/../c", "/a/c", 4);
    expect_path("/..", "/", 1);
    expect_path("/.", "/", 1);
    expect_path("/a/..", "/", 1);
    expect_path("/a/b/..", "/a/", 3);
    expect_path("/a/b/.", "/a/b/", 5);
    expect_path("/../../../etc/passwd", "/etc/passwd", 11);
    expect_path("/a/b/c/../../d/", "/a/d/", 5);
    expect_path("/a/.//../b", "/b", 2);
}

Test(proxy_path, unreserved_characters_are_decoded_once)
{
    expect_path("/%61dmin", "/admin", 6);
    expect_path("/%7Euser", "/~user", 6);
    expect_path("/%7euser", "/~user", 6);
    expect_path("/%41%5a%30%2D%5F", "/AZ0-_", 6);
    /* %25 is not unreserved: kept, and what follows is literal */
    expect_path("/%252e%252e/admin", "/%252e%252e/admin", 17);
    expect_path("/%25", "/%25", 4);
}

Test(proxy_path, encoded_dots_are_dot_segments)
{
    expect_path("/%2e%2e/admin", "/admin", 6);
    expect_path("/%2E./admin", "/admin", 6);
    expect_path("/x/.%2e/admin", "/admin", 6);
    expect_path("/a/%2e/b", "/a/b", 4);
}

Test(proxy_path, other_encodings_are_kept_upper_case)
{
    expect_path("/%e2%82%ac", "/%E2%82%AC", 10);
    expect_path("/a%3fb", "/a%3Fb", 6);
    expect_path("/a%2ab%3c%20", "/a%2Ab%3C%20", 12);
}

Test(proxy_path, case_is_preserved)
{
    expect_path("/ADMIN", "/ADMIN", 6);
    expect_path("/Admin/../aDmin", "/aDmin", 6);
}

Test(proxy_path, query_is_copied_unchanged)
{
    expect_path("/a?", "/a?", 2);
    expect_path("/?x=1", "/?x=1", 1);
    expect_path("/a/../b?x=/../y?z&%2f=%7e", "/b?x=/../y?z&%2f=%7e", 2);
    expect_path("//a?//b", "/a?//b", 2);
    expect_path("/a/?q=%0a%0D", "/a/?q=%0a%0D", 3);
    expect_path("/a?b:c@d!$&'()*+,;=", "/a?b:c@d!$&'()*+,;=", 2);
}

Test(proxy_path, non_origin_forms_are_refused)
{
    expect_refused("http://host/admin");
    expect_refused("https://host/");
    expect_refused("host:443");
    expect_refused("*");
    expect_refused("?a");
    expect_refused("admin");
    expect_refused_n("", 0, -EINVAL);
}

Test(proxy_path, bytes_outside_pchar_are_refused)
{
    expect_refused_n("/a\0b", 4, -EINVAL);
    expect_refused_n("/a?b\0", 5, -EINVAL);
    expect_refused("/a\tb");
    expect_refused("/a\r\nHost: x");
    expect_refused("/a\x7f");
    expect_refused("/a b");
    expect_refused("/a#frag");
    expect_refused("/a?b#frag");
    expect_refused("/a\\..\\admin");
    expect_refused("/\xc3\xa9t\xc3\xa9");
    expect_refused("/a?\xff");
    expect_refused("/a\"b");
    expect_refused("/a<b>");
    expect_refused("/a[b]");
    expect_refused("/a{b}|^`");
    expect_refused("/a?x[]=1");
}

Test(proxy_path, malformed_encodings_are_refused)
{
    expect_refused("/%");
    expect_refused("/a%");
    expect_refused("/a%4");
    expect_refused("/a%zz");
    expect_refused("/a%4g");
    expect_refused("/a%%41");
    expect_refused("/a?b=%");
    expect_refused("/a?b=%g0");
    expect_refused("/a?b=%0");
}

Test(proxy_path, encoded_separators_and_controls_are_refused)
{
    expect_refused("/admin%2f..");
    expect_refused("/admin%2F..");
    expect_refused("/public%2F..%2Fadmin");
    expect_refused("/a%5c..%5Cadmin");
    expect_refused("/a%00");
    expect_refused("/a?b=%00");
    expect_refused("/a%0d%0aX:%20y");
    expect_refused("/a%1F");
    expect_refused("/a%7f");
}

Test(proxy_path, dot_segments_with_params_are_refused)
{
    expect_refused("/public/..;/admin");
    expect_refused("/public/.;x/admin");
    expect_refused("/public/%2e%2e;jsessionid=1/admin");
    expect_refused("/..;");
    /* a segment that only starts with dots is an ordinary one */
    expect_path("/a/..b;c", "/a/..b;c", 8);
    expect_path("/a/;../b", "/a/;../b", 8);
}

Test(proxy_path, length_limits)
{
    static char in[PROXY_PATH_MAX + 2];
    char out[PROXY_PATH_MAX + 1];
    size_t n = 12345;

    in[0] = '/';
    memset(in + 1, 'a', sizeof(in) - 1);
    cr_assert_eq(proxy_path_normalize(in, PROXY_PATH_MAX, out, sizeof(out), &n), 0);
    cr_assert_eq(n, PROXY_PATH_MAX);
    cr_assert_eq(strlen(out), PROXY_PATH_MAX);
    n = 12345;
    cr_assert_eq(proxy_path_normalize(in, PROXY_PATH_MAX + 1, out, sizeof(out), &n), -E2BIG);
    cr_assert_eq(out[0], 0);
    cr_assert_eq(n, 12345);
    /* too long is refused before the content is looked at */
    cr_assert_eq(proxy_path_normalize("*", PROXY_PATH_MAX + 1, out, sizeof(out), &n), -E2BIG);

    /* OUT needs LEN + 1 bytes, whatever the result's length */
    char small[4];
    cr_assert_eq(proxy_path_normalize("/abc", 4, small, sizeof(small), &n), -E2BIG);
    cr_assert_eq(small[0], 0);
    cr_assert_eq(proxy_path_normalize("/a/..", 5, small, sizeof(small), &n), -E2BIG);
    cr_assert_eq(proxy_path_normalize("/abc", 4, small, 0, &n), -E2BIG);
    cr_assert_eq(n, 12345);
    char exact[6];
    cr_assert_eq(proxy_path_normalize("/a/..", 5, exact, sizeof(exact), &n), 0);
    cr_assert_str_eq(exact, "/");
    cr_assert_eq(n, 1);
}

Test(proxy_path, source_need_not_be_terminated)
{
    char out[16];
    size_t n;
    cr_assert_eq(proxy_path_normalize("/a/b/../cXYZ", 9, out, sizeof(out), &n), 0);
    cr_assert_str_eq(out, "/a/c");
    cr_assert_eq(proxy_path_normalize("/a%41", 4, out, sizeof(out), &n), -EINVAL);
}
