/* The proxy's Cookie header handling (see cookie.h). */
#include "proxy/cookie.h"

#include <string.h>
#include <strings.h>

/* Walks the pairs of V: returns the start of the next pair at or after P
 * and sets *RET_STOP to its end (the next ';' or the end of V). */
static const char *next_pair(const char *p, const char *end, const char **ret_stop)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == ';'))
        p++;
    const char *semi = memchr(p, ';', (size_t)(end - p));
    *ret_stop = semi ? semi : end;
    return p;
}

/* Whether the pair [P, STOP) is named NAME: "NAME=..." or a bare "NAME". */
static bool pair_named(const char *p, const char *stop, const char *name, size_t name_len)
{
    size_t n = (size_t)(stop - p);
    return n >= name_len && memcmp(p, name, name_len) == 0 && (n == name_len || p[name_len] == '=');
}

bool proxy_cookie_find(const char *v, size_t len, const char *name, size_t name_len, const char **ret_value,
                       size_t *ret_len)
{
    const char *end = v + len, *stop;
    for (const char *p = next_pair(v, end, &stop); p < end; p = next_pair(stop, end, &stop)) {
        if (!pair_named(p, stop, name, name_len))
            continue;
        const char *value = p + name_len + ((size_t)(stop - p) > name_len ? 1 : 0);
        size_t n = (size_t)(stop - value);
        while (n && (value[n - 1] == ' ' || value[n - 1] == '\t'))
            n--;
        *ret_value = value;
        *ret_len = n;
        return true;
    }
    return false;
}

size_t proxy_cookie_strip(const char *v, size_t len, const char *name, size_t name_len, char *out)
{
    const char *end = v + len, *stop;
    size_t o = 0;
    for (const char *p = next_pair(v, end, &stop); p < end; p = next_pair(stop, end, &stop)) {
        if (stop == p || pair_named(p, stop, name, name_len))
            continue;
        if (o) {
            out[o++] = ';';
            out[o++] = ' ';
        }
        memcpy(out + o, p, (size_t)(stop - p));
        o += (size_t)(stop - p);
    }
    return o;
}

/* Whether [P, END) starts with PREFIX, without regard to case. */
static bool starts_with_nocase(const char *p, const char *end, const char *prefix)
{
    size_t n = strlen(prefix);
    return (size_t)(end - p) >= n && strncasecmp(p, prefix, n) == 0;
}

bool proxy_set_cookie_is_ours(const char *v, size_t len, const char *const *names)
{
    const char *p = v, *end = v + len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    /* the name ends at '='; without one (a nameless value to a browser,
     * which it sends back as a bare "cloister_session") the whole pair
     * counts as the name */
    const char *stop = p;
    while (stop < end && *stop != '=' && *stop != ';')
        stop++;
    while (stop > p && (stop[-1] == ' ' || stop[-1] == '\t'))
        stop--;
    if (starts_with_nocase(p, stop, "__Host-"))
        p += strlen("__Host-");
    else if (starts_with_nocase(p, stop, "__Secure-"))
        p += strlen("__Secure-");
    for (const char *const *n = names; *n; n++)
        if ((size_t)(stop - p) == strlen(*n) && strncasecmp(p, *n, strlen(*n)) == 0)
            return true;
    return false;
}
