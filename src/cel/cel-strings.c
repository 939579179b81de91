/* The strings extension (cel-go ext/strings.go): indices count code points. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cel/cel-lib.h"

#define STRING_MAX (1u << 24) /* largest string the extension builds */

/* Byte offset of code point CP in S (N bytes); N when CP is the length; -1 past it. */
static long cp_offset(const char *s, size_t n, int64_t cp)
{
    if (cp < 0)
        return -1;
    size_t i = 0;
    for (int64_t k = 0; k < cp; k++) {
        if (i >= n)
            return -1;
        uint32_t c;
        i += cel_utf8_decode(s + i, n - i, &c);
    }
    return (long)i;
}

static bool is_str(const cel_value *v)
{
    return v->kind == CEL_STRING;
}

static bool is_int(const cel_value *v)
{
    return v->kind == CEL_INT;
}

CEL_FN(cel_fn_char_at)
{
    if (!is_str(&a[0]) || !is_int(&a[1]))
        return cel_err_no_overload(e, n);
    cel_charge(e, a[0].len / 64);
    long off = cp_offset(a[0].str, a[0].len, a[1].i);
    if (off < 0)
        return cel_err(e, n, "index out of range: %lld", (long long)a[1].i);
    uint32_t c;
    size_t l = (size_t)off < a[0].len ? cel_utf8_decode(a[0].str + off, a[0].len - (size_t)off, &c) : 0;
    return cel_string(a[0].str + off, l);
}

CEL_FN(cel_fn_index_of)
{
    if (!is_str(&a[0]) || !is_str(&a[1]) || (na == 3 && !is_int(&a[2])))
        return cel_err_no_overload(e, n);
    int64_t start = na == 3 ? a[2].i : 0;
    long off = cp_offset(a[0].str, a[0].len, start);
    if (off < 0)
        return cel_err(e, n, "index out of range: %lld", (long long)start);
    cel_charge(e, a[0].len / 64);
    if (a[1].len == 0)
        return cel_int(start);
    const char *hit = memmem(a[0].str + off, a[0].len - (size_t)off, a[1].str, a[1].len);
    if (!hit)
        return cel_int(-1);
    return cel_int((int64_t)cel_utf8_count(a[0].str, (size_t)(hit - a[0].str)));
}

CEL_FN(cel_fn_last_index_of)
{
    if (!is_str(&a[0]) || !is_str(&a[1]) || (na == 3 && !is_int(&a[2])))
        return cel_err_no_overload(e, n);
    cel_charge(e, a[0].len / 32);
    int64_t total = (int64_t)cel_utf8_count(a[0].str, a[0].len);
    int64_t end = na == 3 ? a[2].i : total;
    if (end < 0 || end > total)
        return cel_err(e, n, "index out of range: %lld", (long long)end);
    if (a[1].len == 0)
        return cel_int(end);
    cel_charge(e, a[0].len / 64);
    /* the last match starting at or before code point END; the scan compares
     * up to len(pattern) bytes at each position, and is charged for that */
    long limit = cp_offset(a[0].str, a[0].len, end);
    if (!cel_charge(e, (uint64_t)(limit + 1) * a[1].len / 64))
        return cel_err(e, n, "cost limit exceeded");
    for (long i = MIN(limit, (long)a[0].len - (long)a[1].len); i >= 0; i--)
        if (!memcmp(a[0].str + i, a[1].str, a[1].len) && ((unsigned char)a[0].str[i] & 0xC0) != 0x80)
            return cel_int((int64_t)cel_utf8_count(a[0].str, (size_t)i));
    return cel_int(-1);
}

/* lowerAscii / upperAscii: a copy with ASCII letters case-mapped. */
static cel_value map_ascii(ev *e, const node *n, cel_value *a, bool upper)
{
    if (!is_str(&a[0]))
        return cel_err_no_overload(e, n);
    cel_value r = cel_make_string(e, a[0].str, a[0].len);
    if (r.kind != CEL_STRING)
        return r;
    char *p = (char *)r.str;
    for (size_t i = 0; i < r.len; i++) {
        if (upper && p[i] >= 'a' && p[i] <= 'z')
            p[i] = (char)(p[i] - 32);
        else if (!upper && p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] + 32);
    }
    return r;
}

CEL_FN(cel_fn_lower_ascii)
{
    return map_ascii(e, n, a, false);
}

CEL_FN(cel_fn_upper_ascii)
{
    return map_ascii(e, n, a, true);
}

/* The string built in B (already in the arena), or the error R. */
static cel_value take_buf(ev *e, const node *n, cel_buf *b, int r)
{
    if (r == -E2BIG)
        return cel_err(e, n, "result longer than %u bytes", STRING_MAX);
    if (r < 0 && !e->abort)
        e->abort = -ENOMEM;
    if (r < 0 || !cel_charge(e, b->len / 64))
        return cel_err(e, n, "out of memory");
    return cel_string(b->data, b->len);
}

CEL_FN(cel_fn_replace)
{
    if (!is_str(&a[0]) || !is_str(&a[1]) || !is_str(&a[2]) || (na == 4 && !is_int(&a[3])))
        return cel_err_no_overload(e, n);
    int64_t limit = na == 4 ? a[3].i : -1;
    const char *s = a[0].str;
    size_t len = a[0].len, i = 0;
    cel_buf b;
    cel_buf_init(&b, e->arena, STRING_MAX);
    cel_out o = {.ab = &b};
    int r = 0;
    cel_charge(e, len / 64);
    for (int64_t done = 0; r >= 0 && i <= len && (limit < 0 || done < limit); done++) {
        const char *hit;
        if (a[1].len == 0) {
            /* an empty pattern matches before every code point and at the end */
            r = cel_out_append(&o, a[2].str, a[2].len);
            if (i == len) {
                i = len + 1;
                break;
            }
            uint32_t c;
            size_t l = cel_utf8_decode(s + i, len - i, &c);
            if (r >= 0)
                r = cel_out_append(&o, s + i, l);
            i += l;
            continue;
        }
        hit = memmem(s + i, len - i, a[1].str, a[1].len);
        if (!hit)
            break;
        r = cel_out_append(&o, s + i, (size_t)(hit - (s + i)));
        if (r >= 0)
            r = cel_out_append(&o, a[2].str, a[2].len);
        i = (size_t)(hit - s) + a[1].len;
    }
    if (r >= 0 && i < len)
        r = cel_out_append(&o, s + i, len - i);
    return take_buf(e, n, &b, r);
}

CEL_FN(cel_fn_split)
{
    if (!is_str(&a[0]) || !is_str(&a[1]) || (na == 3 && !is_int(&a[2])))
        return cel_err_no_overload(e, n);
    int64_t limit = na == 3 ? a[2].i : -1;
    const char *s = a[0].str;
    size_t len = a[0].len;
    if (limit == 0) {
        cel_value *items;
        return cel_make_list(e, 0, &items);
    }
    /* at most one part per byte, plus one */
    size_t cap = len + 1;
    if (limit > 0 && (uint64_t)limit < cap)
        cap = (size_t)limit;
    cel_value *items;
    cel_value list = cel_make_list(e, cap, &items);
    if (list.kind != CEL_LIST)
        return list;
    size_t k = 0, i = 0;
    if (a[1].len == 0) {
        while (i < len && k < cap) {
            uint32_t c;
            size_t l = k + 1 == cap ? len - i : cel_utf8_decode(s + i, len - i, &c);
            items[k++] = cel_string(s + i, l);
            i += l;
        }
    } else {
        while (k + 1 < cap) {
            const char *hit = memmem(s + i, len - i, a[1].str, a[1].len);
            if (!hit)
                break;
            items[k++] = cel_string(s + i, (size_t)(hit - (s + i)));
            i = (size_t)(hit - s) + a[1].len;
        }
        items[k++] = cel_string(s + i, len - i);
    }
    ((cel_list *)list.list)->len = k;
    return list;
}

CEL_FN(cel_fn_substring)
{
    if (!is_str(&a[0]) || !is_int(&a[1]) || (na == 3 && !is_int(&a[2])))
        return cel_err_no_overload(e, n);
    cel_charge(e, a[0].len / 32);
    int64_t total = (int64_t)cel_utf8_count(a[0].str, a[0].len);
    int64_t start = a[1].i, end = na == 3 ? a[2].i : total;
    if (start < 0 || start > total)
        return cel_err(e, n, "index out of range: %lld", (long long)start);
    if (end < 0 || end > total)
        return cel_err(e, n, "index out of range: %lld", (long long)end);
    if (start > end)
        return cel_err(e, n, "invalid substring range. start: %lld, end: %lld", (long long)start, (long long)end);
    long from = cp_offset(a[0].str, a[0].len, start), to = cp_offset(a[0].str, a[0].len, end);
    return cel_string(a[0].str + from, (size_t)(to - from));
}

/* Unicode White_Space, as Go's unicode.IsSpace. */
static bool is_space(uint32_t c)
{
    switch (c) {
    case '\t': case '\n': case '\v': case '\f': case '\r': case ' ': case 0x85: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

CEL_FN(cel_fn_trim)
{
    if (!is_str(&a[0]))
        return cel_err_no_overload(e, n);
    cel_charge(e, a[0].len / 64);
    const char *s = a[0].str;
    size_t i = 0, j = a[0].len;
    while (i < j) {
        uint32_t c;
        size_t l = cel_utf8_decode(s + i, j - i, &c);
        if (!is_space(c))
            break;
        i += l;
    }
    while (j > i) {
        size_t k = j - 1;
        while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        uint32_t c;
        cel_utf8_decode(s + k, j - k, &c);
        if (!is_space(c))
            break;
        j = k;
    }
    return cel_string(s + i, j - i);
}

CEL_FN(cel_fn_join)
{
    if (a[0].kind != CEL_LIST || (na == 2 && !is_str(&a[1])))
        return cel_err_no_overload(e, n);
    cel_buf b;
    cel_buf_init(&b, e->arena, STRING_MAX);
    cel_out o = {.ab = &b};
    int r = 0;
    for (size_t i = 0; i < a[0].list->len && r >= 0; i++) {
        const cel_value *it = &a[0].list->items[i];
        if (!is_str(it))
            return cel_err(e, n, "join: list element of type '%s' is not a string", cel_kind_name(it->kind));
        if (i && na == 2)
            r = cel_out_append(&o, a[1].str, a[1].len);
        if (r >= 0)
            r = cel_out_append(&o, it->str, it->len);
    }
    return take_buf(e, n, &b, r);
}

CEL_FN(cel_fn_quote)
{
    if (!is_str(&a[0]))
        return cel_err_no_overload(e, n);
    cel_buf b;
    cel_buf_init(&b, e->arena, STRING_MAX);
    cel_out o = {.ab = &b};
    int r = cel_out_putc(&o, '"');
    const char *s = a[0].str;
    for (size_t i = 0; i < a[0].len && r >= 0;) {
        uint32_t c;
        size_t l = cel_utf8_decode(s + i, a[0].len - i, &c);
        const char *esc = NULL;
        switch (c) {
        case '\a': esc = "\\a"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\v': esc = "\\v"; break;
        case '\\': esc = "\\\\"; break;
        case '"': esc = "\\\""; break;
        }
        if (esc)
            r = cel_out_puts(&o, esc);
        else if (c < 0x20 || c == 0x7f)
            r = cel_out_printf(&o, "\\x%02x", c);
        else
            r = cel_out_append(&o, s + i, l);
        i += l;
    }
    if (r >= 0)
        r = cel_out_putc(&o, '"');
    return take_buf(e, n, &b, r);
}

CEL_FN(cel_fn_reverse)
{
    if (!is_str(&a[0]))
        return cel_err_no_overload(e, n);
    char *out = cel_ev_alloc(e, a[0].len + 1);
    if (!out)
        return cel_err(e, n, "out of memory");
    size_t len = a[0].len, i = 0;
    while (i < len) {
        uint32_t c;
        size_t l = cel_utf8_decode(a[0].str + i, len - i, &c);
        memcpy(out + len - i - l, a[0].str + i, l);
        i += l;
    }
    out[len] = 0;
    return cel_string(out, len);
}

/* ---- format ---- */

static const char *type_name_of(const cel_value *v)
{
    return cel_kind_name(v->kind);
}

/* Appends "NaN", "Infinity" or "-Infinity" for a non-finite D; false otherwise. */
static bool put_special(cel_out *b, double d, int *r)
{
    if (isnan(d))
        *r = cel_out_puts(b, "NaN");
    else if (isinf(d))
        *r = cel_out_puts(b, d > 0 ? "Infinity" : "-Infinity");
    else
        return false;
    return true;
}

/* Appends V in base 2, with a minus sign when NEG. */
static int put_binary(cel_out *b, uint64_t v, bool neg)
{
    char buf[72];
    size_t k = sizeof(buf);
    buf[--k] = 0;
    do {
        buf[--k] = (char)('0' + (v & 1));
        v >>= 1;
    } while (v);
    if (neg)
        buf[--k] = '-';
    return cel_out_puts(b, buf + k);
}

/* Formats one clause VERB (with PREC, -1 for none) of V into B; returns an
 * error value or a null value on success. */
static cel_value format_clause(ev *e, const node *n, cel_out *b, char verb, int prec, const cel_value *v)
{
    int r = 0;
    switch (verb) {
    case 's':
        r = cel_value_to_display(e, v, b);
        break;
    case 'd':
        if (v->kind == CEL_INT)
            r = cel_out_printf(b, "%lld", (long long)v->i);
        else if (v->kind == CEL_UINT)
            r = cel_out_printf(b, "%llu", (unsigned long long)v->u);
        else if (!(v->kind == CEL_DOUBLE && put_special(b, v->d, &r)))
            return cel_err(e, n, "error during formatting: decimal clause can only be used on integers, was given %s",
                           type_name_of(v));
        break;
    case 'f':
    case 'e': {
        double d;
        if (v->kind == CEL_DOUBLE)
            d = v->d;
        else if (v->kind == CEL_INT)
            d = (double)v->i;
        else if (v->kind == CEL_UINT)
            d = (double)v->u;
        else
            return cel_err(e, n, "error during formatting: %s clause can only be used on doubles, was given %s",
                           verb == 'f' ? "fixed-point" : "scientific", type_name_of(v));
        if (!put_special(b, d, &r))
            r = cel_out_printf(b, verb == 'f' ? "%.*f" : "%.*e", prec < 0 ? 6 : prec, d);
        break;
    }
    case 'b':
        if (v->kind == CEL_INT)
            r = put_binary(b, v->i < 0 ? 0 - (uint64_t)v->i : (uint64_t)v->i, v->i < 0);
        else if (v->kind == CEL_UINT)
            r = put_binary(b, v->u, false);
        else if (v->kind == CEL_BOOL)
            r = cel_out_putc(b, v->b ? '1' : '0');
        else
            return cel_err(e, n, "error during formatting: only integers and bools can be formatted as binary, was given %s",
                           type_name_of(v));
        break;
    case 'o':
        if (v->kind == CEL_INT)
            r = cel_out_printf(b, "%s%llo", v->i < 0 ? "-" : "",
                              (unsigned long long)(v->i < 0 ? 0 - (uint64_t)v->i : (uint64_t)v->i));
        else if (v->kind == CEL_UINT)
            r = cel_out_printf(b, "%llo", (unsigned long long)v->u);
        else
            return cel_err(e, n, "error during formatting: octal clause can only be used on integers, was given %s",
                           type_name_of(v));
        break;
    case 'x':
    case 'X': {
        bool up = verb == 'X';
        if (v->kind == CEL_INT)
            r = cel_out_printf(b, up ? "%s%llX" : "%s%llx", v->i < 0 ? "-" : "",
                              (unsigned long long)(v->i < 0 ? 0 - (uint64_t)v->i : (uint64_t)v->i));
        else if (v->kind == CEL_UINT)
            r = cel_out_printf(b, up ? "%llX" : "%llx", (unsigned long long)v->u);
        else if (v->kind == CEL_STRING || v->kind == CEL_BYTES)
            for (size_t i = 0; i < v->len && r >= 0; i++)
                r = cel_out_printf(b, up ? "%02X" : "%02x", v->bytes[i]);
        else
            return cel_err(e, n,
                           "error during formatting: only integers, byte buffers, and strings can be formatted as hex, was given %s",
                           type_name_of(v));
        break;
    }
    default:
        return cel_err(e, n, "could not parse formatting clause: unrecognized formatting clause \"%c\"", verb);
    }
    if (r == -E2BIG)
        return cel_err(e, n, "result longer than %u bytes", STRING_MAX);
    if (r < 0)
        return cel_err(e, n, "out of memory");
    return cel_null();
}

CEL_FN(cel_fn_format)
{
    if (!is_str(&a[0]) || a[1].kind != CEL_LIST)
        return cel_err_no_overload(e, n);
    const char *s = a[0].str;
    size_t len = a[0].len, argi = 0;
    const cel_list *args = a[1].list;
    cel_buf b;
    cel_buf_init(&b, e->arena, STRING_MAX);
    cel_out o = {.ab = &b};
    int r = 0;
    for (size_t i = 0; i < len && r >= 0; i++) {
        if (s[i] != '%') {
            r = cel_out_putc(&o, s[i]);
            continue;
        }
        if (++i >= len)
            return cel_err(e, n, "could not parse formatting clause: unterminated clause");
        if (s[i] == '%') {
            r = cel_out_putc(&o, '%');
            continue;
        }
        int prec = -1;
        if (s[i] == '.') {
            prec = 0;
            for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++)
                if (prec < 1000)
                    prec = prec * 10 + (s[i] - '0');
            if (i >= len)
                return cel_err(e, n, "could not parse formatting clause: unterminated clause");
        }
        if (argi >= args->len)
            return cel_err(e, n, "index %zu out of range", argi);
        cel_value c = format_clause(e, n, &o, s[i], prec, &args->items[argi++]);
        if (c.kind == CEL_ERROR)
            return c;
    }
    return take_buf(e, n, &b, r);
}
