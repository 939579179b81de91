#include "proxy/path.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "basic/encoding.h"

/* RFC 3986 unreserved: ALPHA DIGIT - . _ ~ (ASCII only, no locale). */
static bool is_unreserved(unsigned c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

/* An RFC 3986 pchar other than a percent-encoding: unreserved, sub-delims,
 * ':' or '@'. */
static bool is_pchar(unsigned c)
{
    switch (c) {
    case '!': case '$': case '&': case '\'': case '(': case ')':
    case '*': case '+': case ',': case ';': case '=': case ':': case '@':
        return true;
    default:
        return is_unreserved(c);
    }
}

/* The byte encoded by the "%XY" at SRC[POS] (SRC has LEN bytes), or -EINVAL
 * when fewer than two hex digits follow or it encodes NUL. */
static int percent_value(const char *src, size_t len, size_t pos)
{
    if (len - pos < 3)
        return -EINVAL;
    int hi = hex_digit_value(src[pos + 1]), lo = hex_digit_value(src[pos + 2]);
    if (hi < 0 || lo < 0 || (hi | lo) == 0)
        return -EINVAL;
    return hi << 4 | lo;
}

/* Copies the path segment at SRC[*POS] (up to the next '/' or '?' or LEN)
 * to OUT[*OPOS], decoding encoded unreserved characters and upper-casing the
 * hex of the others, and advances both cursors. Writes at most as many bytes
 * as it reads. Returns 0, or -EINVAL for a byte that is not a pchar, a
 * malformed or refused percent-encoding (controls, '/', '\\'). */
static int segment_copy(const char *src, size_t len, size_t *pos, char *out, size_t *opos)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = *pos, o = *opos;
    while (i < len && src[i] != '/' && src[i] != '?') {
        unsigned c = (unsigned char)src[i];
        if (c != '%') {
            if (!is_pchar(c))
                return -EINVAL;
            out[o++] = (char)c;
            i++;
            continue;
        }
        int v = percent_value(src, len, i);
        if (v < 0)
            return v;
        if (v < 0x20 || v == 0x7f || v == '/' || v == '\\')
            return -EINVAL;
        if (is_unreserved((unsigned)v)) {
            out[o++] = (char)v;
        } else {
            out[o++] = '%';
            out[o++] = hex[v >> 4];
            out[o++] = hex[v & 15];
        }
        i += 3;
    }
    *pos = i;
    *opos = o;
    return 0;
}

/* Classifies the decoded segment SEG (N bytes): 1 for ".", 2 for "..", 0 for
 * any other, -EINVAL for "." or ".." followed by ";params", which servlet
 * containers strip before resolving dot-segments. */
static int dot_segment(const char *seg, size_t n)
{
    const char *semi = memchr(seg, ';', n);
    size_t name = semi ? (size_t)(semi - seg) : n;
    bool dots = (name == 1 && seg[0] == '.') || (name == 2 && seg[0] == '.' && seg[1] == '.');
    if (!dots)
        return 0;
    return semi ? -EINVAL : (int)name;
}

/* Checks the query SRC[POS..LEN) (POS is just after the '?'): pchar, '/' or
 * '?' bytes and well-formed percent-encodings other than "%00". */
static int query_check(const char *src, size_t len, size_t pos)
{
    while (pos < len) {
        unsigned c = (unsigned char)src[pos];
        if (c == '%') {
            int v = percent_value(src, len, pos);
            if (v < 0)
                return v;
            pos += 3;
        } else if (is_pchar(c) || c == '/' || c == '?') {
            pos++;
        } else {
            return -EINVAL;
        }
    }
    return 0;
}

/* The output is built in place segment by segment: OUT[0..o) always ends in
 * '/' when a segment starts, so "." drops the segment, ".." also drops the one
 * before it (never the leading '/'), and an empty segment (from "//") adds
 * nothing. */
int proxy_path_normalize(const char *src, size_t len, char *out, size_t out_size, size_t *ret_path_len)
{
    int r;

    if (out_size > 0)
        out[0] = 0;
    if (len > PROXY_PATH_MAX || out_size < len + 1)
        return -E2BIG;
    if (len == 0 || src[0] != '/')
        return -EINVAL;

    size_t i = 1, o = 1;
    out[0] = '/';
    for (;;) {
        size_t seg = o;
        r = segment_copy(src, len, &i, out, &o);
        if (r < 0)
            goto fail;
        r = dot_segment(out + seg, o - seg);
        if (r < 0)
            goto fail;
        if (r == 2 && seg > 1) {
            o = seg - 1;
            while (out[o - 1] != '/')
                o--;
        } else if (r > 0) {
            o = seg;
        } else if (o > seg && i < len && src[i] == '/') {
            out[o++] = '/';
        }
        if (i == len || src[i] == '?')
            break;
        i++;
    }

    size_t path_len = o;
    if (i < len) {
        r = query_check(src, len, i + 1);
        if (r < 0)
            goto fail;
        memcpy(out + o, src + i, len - i);
        o += len - i;
    }
    out[o] = 0;
    *ret_path_len = path_len;
    return 0;

fail:
    out[0] = 0;
    return r;
}
