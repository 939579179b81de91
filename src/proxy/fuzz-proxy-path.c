/* libFuzzer target: the request-target normaliser. The output buffer is
 * exactly LEN + 1 bytes on the heap so ASan sees any overrun. Every accepted
 * target must give a path that starts with '/', has no "//", "/./", "/../",
 * does not end in "/." or "/..", has only pchar bytes and upper-case
 * percent-encodings of reserved characters (none of '/', '\\' or a control),
 * keeps the query byte for byte, and normalises to itself. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/path.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless PATH (N bytes) has the shape of a normalised path. */
static void check_path(const char *path, size_t n)
{
    if (n == 0 || path[0] != '/')
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\')
            abort();
        if (c == '%') {
            if (n - i < 3)
                abort();
            const char *hex = "0123456789ABCDEF";
            const char *hi = memchr(hex, path[i + 1], 16), *lo = memchr(hex, path[i + 2], 16);
            if (!hi || !lo)
                abort();
            unsigned v = (unsigned)((hi - hex) << 4 | (lo - hex));
            if (v < 0x20 || v == 0x7f || v == '/' || v == '\\' || (v >= 'A' && v <= 'Z') ||
                (v >= 'a' && v <= 'z') || (v >= '0' && v <= '9') || v == '-' || v == '.' || v == '_' || v == '~')
                abort();
        }
        if (c == '/' && i + 1 < n && path[i + 1] == '/')
            abort();
    }
    /* dot-segments, with or without ";params" */
    for (size_t i = 0; i < n; i++) {
        if (path[i] != '/')
            continue;
        size_t d = 0;
        while (i + 1 + d < n && path[i + 1 + d] == '.')
            d++;
        size_t end = i + 1 + d;
        if ((d == 1 || d == 2) && (end == n || path[end] == '/' || path[end] == ';'))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    char *out = malloc(size + 1);
    if (!out)
        return 0;
    size_t path_len = SIZE_MAX;
    int r = proxy_path_normalize(src, size, out, size + 1, &path_len);
    if (r < 0) {
        if ((r != -EINVAL && r != -E2BIG) || path_len != SIZE_MAX || out[0] != 0)
            abort();
        if (r == -E2BIG && size <= PROXY_PATH_MAX)
            abort();
        free(out);
        return 0;
    }
    if (r != 0 || size > PROXY_PATH_MAX)
        abort();
    size_t out_len = strlen(out);
    if (path_len > out_len || (out[path_len] != '?' && out[path_len] != 0))
        abort();
    check_path(out, path_len);
    /* the query (from the first '?') is copied unchanged */
    const char *q = memchr(src, '?', size);
    size_t q_len = q ? size - (size_t)(q - src) : 0;
    if (out_len - path_len != q_len || memcmp(out + path_len, q ? q : "", q_len) != 0)
        abort();

    /* idempotence; a buffer of exactly the output's size + 1 is enough */
    char *again = malloc(out_len + 1);
    if (!again)
        abort();
    size_t again_len = SIZE_MAX;
    if (proxy_path_normalize(out, out_len, again, out_len + 1, &again_len) != 0 || again_len != path_len ||
        strcmp(again, out) != 0)
        abort();
    free(again);
    free(out);
    return 0;
}
