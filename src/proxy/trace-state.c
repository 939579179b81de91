/* The tracestate filter (see trace-state.h). */
#include "proxy/trace-state.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

static bool is_lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A character of a key after its first. */
static bool is_key_char(char c)
{
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

static bool rest_is_key_chars(const char *s, size_t len)
{
    for (size_t i = 1; i < len; i++)
        if (!is_key_char(s[i]))
            return false;
    return true;
}

/* Whether K (LEN bytes) is a simple key (lcalpha, then up to 255 key
 * characters) or a multi-tenant one (tenant-id "@" system-id). */
static bool key_valid(const char *k, size_t len)
{
    const char *at = memchr(k, '@', len);
    if (!at)
        return len >= 1 && len <= 256 && is_lcalpha(k[0]) && rest_is_key_chars(k, len);
    size_t tenant = (size_t)(at - k), system = len - tenant - 1;
    return tenant >= 1 && tenant <= 241 && (is_lcalpha(k[0]) || is_digit(k[0])) && rest_is_key_chars(k, tenant) &&
           system >= 1 && system <= 14 && is_lcalpha(at[1]) && rest_is_key_chars(at + 1, system);
}

/* Whether V (LEN bytes) is a value: 1-256 printable ASCII characters other
 * than ',' and '=', not ending with a space. */
static bool value_valid(const char *v, size_t len)
{
    if (len < 1 || len > 256 || v[len - 1] == ' ')
        return false;
    for (size_t i = 0; i < len; i++)
        if (v[i] < 0x20 || v[i] > 0x7e || v[i] == ',' || v[i] == '=')
            return false;
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

int proxy_tracestate_filter(const char *v, size_t len, char *out, size_t size)
{
    struct {
        const char *at;
        size_t len, key_len;
    } members[PROXY_TRACESTATE_MEMBERS];
    size_t n = 0;
    if (len > PROXY_TRACESTATE_IN_MAX || size < PROXY_TRACESTATE_MAX + 1)
        return -EINVAL;
    out[0] = 0;
    if (len == 0)
        return 0;
    for (size_t start = 0; start <= len;) {
        const char *comma = memchr(v + start, ',', len - start);
        size_t end = comma ? (size_t)(comma - v) : len;
        size_t a = start, b = end;
        while (a < b && is_ows(v[a]))
            a++;
        while (b > a && is_ows(v[b - 1]))
            b--;
        if (a < b) { /* empty and whitespace-only members are allowed, and dropped */
            const char *eq = memchr(v + a, '=', b - a);
            if (!eq || n == PROXY_TRACESTATE_MEMBERS)
                return -EINVAL;
            size_t key_len = (size_t)(eq - (v + a));
            if (!key_valid(v + a, key_len) || !value_valid(eq + 1, b - a - key_len - 1))
                return -EINVAL;
            for (size_t i = 0; i < n; i++)
                if (members[i].key_len == key_len && memcmp(members[i].at, v + a, key_len) == 0)
                    return -EINVAL; /* a key appears once */
            members[n].at = v + a;
            members[n].len = b - a;
            members[n].key_len = key_len;
            n++;
        }
        start = end + 1;
    }
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t need = members[i].len + (w ? 1 : 0);
        if (w + need > PROXY_TRACESTATE_MAX)
            break; /* the right-most members are left out */
        if (w)
            out[w++] = ',';
        memcpy(out + w, members[i].at, members[i].len);
        w += members[i].len;
    }
    out[w] = 0;
    return (int)w;
}
