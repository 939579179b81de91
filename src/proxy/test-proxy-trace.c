/* Unit tests of the tracestate filter (trace-state.c): the W3C grammar,
 * what is passed upstream, and the caps. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "proxy/trace-state.h"

static char out[PROXY_TRACESTATE_MAX + 1];

static int filter(const char *s)
{
    return proxy_tracestate_filter(s, strlen(s), out, sizeof(out));
}

Test(tracestate, valid_lists_are_passed_without_optional_whitespace)
{
    cr_expect_eq(filter("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"), 39);
    cr_expect_str_eq(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    cr_expect_gt(filter("  rojo=1 ,\t, congo=2  ,"), 0, "empty members and OWS are allowed");
    cr_expect_str_eq(out, "rojo=1,congo=2");
    cr_expect_gt(filter("tenant@vendor=v a l u e"), 0, "a multi-tenant key; spaces inside a value");
    cr_expect_str_eq(out, "tenant@vendor=v a l u e");
    cr_expect_gt(filter("k*_/-9=v"), 0);
    cr_expect_eq(filter(""), 0);
    cr_expect_str_eq(out, "");
    cr_expect_eq(filter(" , "), 0, "nothing but empty members: nothing to pass");
}

Test(tracestate, invalid_lists_pass_nothing)
{
    static const char *const bad[] = {
        "Rojo=1",          /* upper case key */
        "1abc=1",          /* a simple key starts with a letter */
        "rojo",            /* no value */
        "rojo=",           /* an empty value */
        "rojo=a=b",        /* '=' in the value */
        "rojo=1,rojo=2",   /* a key twice */
        "rojo=tail ",      /* (trailing OWS is trimmed: valid) */
        "a@=1",            /* empty system id */
        "@b=1",            /* empty tenant */
        "t@verylongsystemid=1", /* system id over 14 */
        "rojo=\x01",       /* control character */
        "rojo=\xc3\xa9",   /* not ASCII */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (strcmp(bad[i], "rojo=tail ") == 0) {
            cr_expect_gt(filter(bad[i]), 0);
            continue;
        }
        cr_expect_eq(filter(bad[i]), -EINVAL, "%s", bad[i]);
    }
}

Test(tracestate, more_than_32_members_is_invalid)
{
    char list[33 * 8] = "";
    size_t n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%sk%d=v", i ? "," : "", i);
    cr_expect_gt(filter(list), 0);
    snprintf(list + n, sizeof(list) - n, ",k32=v");
    cr_expect_eq(filter(list), -EINVAL);
}

Test(tracestate, long_lists_are_cut_from_the_right_at_512_bytes)
{
    char list[4096];
    size_t n = 0;
    for (int i = 0; i < 10; i++) /* 10 members of 5 + 100 bytes */
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%sk%03d=%0100d", i ? "," : "", i, 0);
    int w = filter(list);
    cr_expect_eq(w, 4 * 105 + 3, "four members fit in 512 bytes, the fifth does not");
    cr_expect_eq(strncmp(out, list, (size_t)w), 0, "the leftmost members are kept");
    char huge[PROXY_TRACESTATE_IN_MAX + 2];
    memset(huge, ' ', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = 0;
    cr_expect_eq(filter(huge), -EINVAL, "more than the input cap is not read");
}
