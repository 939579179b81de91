/* portal_file_name(): which request paths name a file of the portal. */
#include <criterion/criterion.h>
#include <string.h>

#include "portal/portal.h"

static bool names(const char *path, char *out, size_t size)
{
    return portal_file_name(path, strlen(path), out, size);
}

Test(portal, root_is_the_index)
{
    char out[64];
    cr_assert(names("/", out, sizeof(out)));
    cr_assert_str_eq(out, "index.html");
}

Test(portal, one_plain_name_is_a_file)
{
    char out[64];
    cr_assert(names("/app.js", out, sizeof(out)));
    cr_assert_str_eq(out, "app.js");
    cr_assert(names("/app-2.css", out, sizeof(out)));
    cr_assert_str_eq(out, "app-2.css");
}

Test(portal, anything_else_is_not)
{
    char out[64];
    static const char *const refused[] = {
        "",           "app.js",     "//app.js",    "/../etc/passwd", "/.hidden", "/..",      "/dir/app.js",
        "/App.js",    "/app.js%00", "/app js",     "/app\\x.js",     "/a?b",     "/index.html/", "/%2e%2e",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        cr_assert(!names(refused[i], out, sizeof(out)), "%s", refused[i]);
}

Test(portal, names_longer_than_the_output_are_refused)
{
    char out[8];
    cr_assert(!names("/abcdefgh.js", out, sizeof(out)));
    cr_assert(names("/abc.js", out, sizeof(out)));
}
