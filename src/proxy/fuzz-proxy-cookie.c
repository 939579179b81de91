/* libFuzzer target: the proxy's Cookie header handling on arbitrary bytes.
 * Checks that the stripped header never contains our cookie, never exceeds
 * its documented bound, and that stripping twice changes nothing; and that
 * the Set-Cookie recogniser agrees with itself under a "__Host-" prefix. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/cookie.h"

#define NAME "cloister_session"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v;
    size_t n;
    if (proxy_cookie_find((const char *)data, size, NAME, strlen(NAME), &v, &n) &&
        (v < (const char *)data || v + n > (const char *)data + size))
        abort();
    char *out = malloc(2 * size + 1), *again = malloc(4 * size + 1);
    if (!out || !again)
        abort();
    size_t len = proxy_cookie_strip((const char *)data, size, NAME, strlen(NAME), out);
    if (len > 2 * size)
        abort();
    if (proxy_cookie_find(out, len, NAME, strlen(NAME), &v, &n))
        abort();
    size_t len2 = proxy_cookie_strip(out, len, NAME, strlen(NAME), again);
    if (len2 != len || memcmp(out, again, len) != 0)
        abort();
    free(out);
    free(again);
    /* "__Host-" before a Set-Cookie value of ours keeps it ours (leading
     * blanks aside: the prefix must start the name) */
    static const char *const ours[] = {NAME, "cloister_login", NULL};
    char *prefixed = malloc(size + 8);
    if (!prefixed)
        abort();
    memcpy(prefixed, "__Host-", 7);
    memcpy(prefixed + 7, data, size);
    bool is_ours = proxy_set_cookie_is_ours((const char *)data, size, ours);
    bool starts_plain = size > 0 && data[0] != ' ' && data[0] != '\t' && (size < 2 || memcmp(data, "__", 2) != 0);
    if (is_ours && starts_plain && !proxy_set_cookie_is_ours(prefixed, size + 7, ours))
        abort();
    free(prefixed);
    return 0;
}
