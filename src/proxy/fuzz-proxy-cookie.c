/* libFuzzer target: the proxy's Cookie header handling on arbitrary bytes.
 * Checks that the stripped header never contains our cookie, never exceeds
 * its documented bound, and that stripping twice changes nothing. */
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
    return 0;
}
