/* Value semantics shared by the evaluator and the host: type names,
 * heterogeneous equality and ordering, map lookup, UTF-8, and printing. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cel/cel-internal.h"

const char *cel_kind_name(cel_kind k)
{
    switch (k) {
    case CEL_NULL: return "null_type";
    case CEL_BOOL: return "bool";
    case CEL_INT: return "int";
    case CEL_UINT: return "uint";
    case CEL_DOUBLE: return "double";
    case CEL_STRING: return "string";
    case CEL_BYTES: return "bytes";
    case CEL_LIST: return "list";
    case CEL_MAP: return "map";
    case CEL_TIMESTAMP: return "google.protobuf.Timestamp";
    case CEL_DURATION: return "google.protobuf.Duration";
    case CEL_TYPE: return "type";
    case CEL_OPTIONAL: return "optional_type";
    case CEL_IP: return "net.IP";
    case CEL_CIDR: return "net.CIDR";
    case CEL_ERROR: return "error";
    case CEL_UNKNOWN: return "unknown";
    }
    return "unknown";
}

cel_value cel_type_value(const char *name)
{
    return (cel_value){.kind = CEL_TYPE, .len = (uint32_t)strlen(name), .str = name};
}

cel_value cel_type_of(const cel_value *v)
{
    return cel_type_value(cel_kind_name(v->kind));
}

/* ---- UTF-8 ---- */

size_t cel_utf8_decode(const char *str, size_t n, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    if (n == 0) {
        *cp = 0;
        return 0;
    }
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    if (len > n) {
        *cp = 0xFFFD;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = v;
    return len;
}

bool cel_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t l = cel_utf8_decode(s + i, n - i, &cp);
        if (cp == 0xFFFD && l == 1)
            return false;
        i += l;
    }
    return true;
}

size_t cel_utf8_count(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            count++;
    return count;
}

size_t cel_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- numbers ---- */

static bool is_number(const cel_value *v)
{
    return v->kind == CEL_INT || v->kind == CEL_UINT || v->kind == CEL_DOUBLE;
}

static int cmp3(double a, double b)
{
    return a < b ? -1 : a > b ? 1 : 0;
}

/* Orders two numbers of any kinds as cel-go does; -2 when a NaN is involved. */
static int compare_numbers(const cel_value *a, const cel_value *b)
{
    if (a->kind == CEL_DOUBLE && b->kind == CEL_DOUBLE) {
        if (isnan(a->d) || isnan(b->d))
            return -2;
        return cmp3(a->d, b->d);
    }
    if (a->kind == CEL_INT && b->kind == CEL_INT)
        return a->i < b->i ? -1 : a->i > b->i;
    if (a->kind == CEL_UINT && b->kind == CEL_UINT)
        return a->u < b->u ? -1 : a->u > b->u;
    if (a->kind == CEL_INT && b->kind == CEL_UINT) {
        if (a->i < 0)
            return -1;
        uint64_t x = (uint64_t)a->i;
        return x < b->u ? -1 : x > b->u;
    }
    if (a->kind == CEL_UINT && b->kind == CEL_INT) {
        int r = compare_numbers(b, a);
        return -r;
    }
    if (a->kind == CEL_DOUBLE) {
        int r = compare_numbers(b, a);
        return r == -2 ? -2 : -r;
    }
    /* a is an integer, b a double */
    double d = b->d;
    if (isnan(d))
        return -2;
    if (a->kind == CEL_INT) {
        if (d < -9223372036854775808.0)
            return 1;
        if (d > 9223372036854775807.0)
            return -1;
        return cmp3((double)a->i, d);
    }
    if (d < 0)
        return 1;
    if (d > 18446744073709551615.0)
        return -1;
    return cmp3((double)a->u, d);
}

int cel_compare(const cel_value *a, const cel_value *b)
{
    if (is_number(a) && is_number(b))
        return compare_numbers(a, b);
    if (a->kind != b->kind)
        return -3;
    switch (a->kind) {
    case CEL_BOOL:
        return (int)a->b - (int)b->b;
    case CEL_STRING:
    case CEL_BYTES: {
        size_t n = MIN(a->len, b->len);
        int r = n ? memcmp(a->str, b->str, n) : 0;
        if (r)
            return r < 0 ? -1 : 1;
        return a->len < b->len ? -1 : a->len > b->len;
    }
    case CEL_TIMESTAMP:
        if (a->i != b->i)
            return a->i < b->i ? -1 : 1;
        return a->len < b->len ? -1 : a->len > b->len;
    case CEL_DURATION:
        return a->i < b->i ? -1 : a->i > b->i;
    default:
        return -3;
    }
}

bool cel_equal_work(const cel_value *a, const cel_value *b, uint64_t *work)
{
    ++*work;
    if (is_number(a) && is_number(b))
        return compare_numbers(a, b) == 0;
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case CEL_NULL:
        return true;
    case CEL_BOOL:
        return a->b == b->b;
    case CEL_STRING:
    case CEL_BYTES:
        return a->len == b->len && cel_bytes_eq(a->str, b->str, a->len);
    case CEL_TYPE:
        return a->len == b->len && !memcmp(a->str, b->str, a->len);
    case CEL_TIMESTAMP:
        return a->i == b->i && a->len == b->len;
    case CEL_DURATION:
        return a->i == b->i;
    case CEL_LIST:
        if (a->list->len != b->list->len)
            return false;
        for (size_t i = 0; i < a->list->len; i++)
            if (!cel_equal_work(&a->list->items[i], &b->list->items[i], work))
                return false;
        return true;
    case CEL_MAP:
        if (a->map->len != b->map->len)
            return false;
        for (size_t i = 0; i < a->map->len; i++) {
            const cel_value *v = cel_map_find_work(b->map, &a->map->entries[i].key, work);
            if (!v || !cel_equal_work(&a->map->entries[i].value, v, work))
                return false;
        }
        return true;
    case CEL_OPTIONAL:
        if (!a->opt || !b->opt)
            return !a->opt && !b->opt;
        return cel_equal_work(a->opt, b->opt, work);
    case CEL_IP:
        return !memcmp(a->ip->addr, b->ip->addr, 16);
    case CEL_CIDR:
        return !memcmp(a->ip->addr, b->ip->addr, 16) && a->ip->prefix == b->ip->prefix &&
               a->ip->family == b->ip->family;
    default:
        return false;
    }
}

bool cel_equal(const cel_value *a, const cel_value *b)
{
    uint64_t work = 0;
    return cel_equal_work(a, b, &work);
}

bool cel_value_equal(const cel_value *a, const cel_value *b)
{
    return cel_equal(a, b);
}

bool cel_valid_key_kind(const cel_value *k)
{
    return k->kind == CEL_BOOL || k->kind == CEL_INT || k->kind == CEL_UINT || k->kind == CEL_STRING;
}

const cel_value *cel_map_find_work(const cel_map *m, const cel_value *key, uint64_t *work)
{
    cel_value k = *key;
    if (k.kind == CEL_DOUBLE) {
        /* a double finds an integer key of the same value */
        double d = k.d;
        if (d != trunc(d))
            return NULL;
        if (d >= -9223372036854775808.0 && d < 9223372036854775808.0)
            k = cel_int((int64_t)d);
        else if (d >= 0 && d < 18446744073709551616.0)
            k = cel_uint((uint64_t)d);
        else
            return NULL;
    }
    switch (k.kind) {
    case CEL_STRING:
        *work += m->len;
        for (size_t i = 0; i < m->len; i++) {
            const cel_value *e = &m->entries[i].key;
            if (e->kind == CEL_STRING && e->len == k.len && cel_bytes_eq(e->str, k.str, k.len))
                return &m->entries[i].value;
        }
        return NULL;
    case CEL_BOOL:
    case CEL_INT:
    case CEL_UINT:
        *work += m->len;
        for (size_t i = 0; i < m->len; i++)
            if (cel_equal(&m->entries[i].key, &k))
                return &m->entries[i].value;
        return NULL;
    default:
        return NULL;
    }
}

const cel_value *cel_map_find(const cel_map *m, const cel_value *key)
{
    uint64_t work = 0;
    return cel_map_find_work(m, key, &work);
}

const cel_value *cel_map_get(const cel_map *m, const cel_value *key)
{
    return cel_map_find(m, key);
}

const cel_value *cel_map_get_str(const cel_map *m, const char *key, size_t len)
{
    cel_value k = cel_string(key, len);
    return cel_map_find(m, &k);
}

/* ---- printing ---- */

void cel_format_double(double d, char *buf, size_t size)
{
    if (isnan(d)) {
        snprintf(buf, size, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, size, d > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (d == 0) {
        snprintf(buf, size, signbit(d) ? "-0" : "0");
        return;
    }
    /* the shortest decimal that reads back as D */
    char e[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec - 1, d);
        if (strtod(e, NULL) == d)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *s = e;
    bool neg = *s == '-';
    if (neg)
        s++;
    for (; *s && *s != 'e'; s++)
        if (*s != '.')
            digits[nd++] = *s;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp = atoi(s + 1);
    char *o = buf;
    char *end = buf + size - 1;
#define PUT(c) do { if (o < end) *o++ = (c); } while (0)
    if (neg)
        PUT('-');
    if (exp < -4 || exp >= 6) {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        PUT('e');
        PUT(exp < 0 ? '-' : '+');
        char ex[16];
        snprintf(ex, sizeof(ex), "%02d", exp < 0 ? -exp : exp);
        for (char *x = ex; *x; x++)
            PUT(*x);
    } else if (exp >= 0) {
        for (int i = 0; i <= exp; i++)
            PUT((size_t)i < nd ? digits[i] : '0');
        if (nd > (size_t)exp + 1) {
            PUT('.');
            for (size_t i = (size_t)exp + 1; i < nd; i++)
                PUT(digits[i]);
        }
    } else {
        PUT('0');
        PUT('.');
        for (int i = 0; i < -exp - 1; i++)
            PUT('0');
        for (size_t i = 0; i < nd; i++)
            PUT(digits[i]);
    }
#undef PUT
    *o = 0;
}

/* Appends N bytes of S as a quoted literal (bytes escape non-ASCII as \\xNN). */
static int put_quoted(cel_out *out, const char *s, size_t n, bool bytes)
{
    int r = cel_out_putc(out, '"');
    for (size_t i = 0; i < n && r >= 0; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            r = cel_out_printf(out, "\\%c", c);
        else if (c == '\n')
            r = cel_out_puts(out, "\\n");
        else if (c == '\t')
            r = cel_out_puts(out, "\\t");
        else if (c == '\r')
            r = cel_out_puts(out, "\\r");
        else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80))
            r = cel_out_printf(out, bytes ? "\\x%02x" : "\\u%04x", c);
        else
            r = cel_out_putc(out, (char)c);
    }
    return r < 0 ? r : cel_out_putc(out, '"');
}

static void format_ip(const cel_ipnet *ip, char *buf, size_t size)
{
    if (ip->family == 4)
        inet_ntop(AF_INET, ip->addr + 12, buf, (socklen_t)size);
    else
        inet_ntop(AF_INET6, ip->addr, buf, (socklen_t)size);
}

static int format_value(cel_out *out, const cel_value *v)
{
    char buf[96];
    int r = 0;
    switch ((cel_kind)v->kind) {
    case CEL_NULL:
        return cel_out_puts(out, "null");
    case CEL_BOOL:
        return cel_out_puts(out, v->b ? "true" : "false");
    case CEL_INT:
        return cel_out_printf(out, "%lld", (long long)v->i);
    case CEL_UINT:
        return cel_out_printf(out, "%lluu", (unsigned long long)v->u);
    case CEL_DOUBLE:
        cel_format_double(v->d, buf, sizeof(buf));
        /* keep doubles recognisable: 1 -> 1.0 */
        if (!strpbrk(buf, ".eIN"))
            return cel_out_printf(out, "%s.0", buf);
        return cel_out_puts(out, buf);
    case CEL_STRING:
        return put_quoted(out, v->str, v->len, false);
    case CEL_BYTES:
        r = cel_out_putc(out, 'b');
        return r < 0 ? r : put_quoted(out, (const char *)v->bytes, v->len, true);
    case CEL_LIST:
        r = cel_out_putc(out, '[');
        for (size_t i = 0; i < v->list->len && r >= 0; i++) {
            if (i)
                r = cel_out_puts(out, ", ");
            if (r >= 0)
                r = format_value(out, &v->list->items[i]);
        }
        return r < 0 ? r : cel_out_putc(out, ']');
    case CEL_MAP:
        r = cel_out_putc(out, '{');
        for (size_t i = 0; i < v->map->len && r >= 0; i++) {
            if (i)
                r = cel_out_puts(out, ", ");
            if (r >= 0)
                r = format_value(out, &v->map->entries[i].key);
            if (r >= 0)
                r = cel_out_puts(out, ": ");
            if (r >= 0)
                r = format_value(out, &v->map->entries[i].value);
        }
        return r < 0 ? r : cel_out_putc(out, '}');
    case CEL_TIMESTAMP:
        cel_format_timestamp(v->i, v->len, buf, sizeof(buf));
        return cel_out_printf(out, "timestamp(\"%s\")", buf);
    case CEL_DURATION:
        cel_format_duration(v->i, buf, sizeof(buf));
        return cel_out_printf(out, "duration(\"%s\")", buf);
    case CEL_TYPE:
        return cel_out_printf(out, "%.*s", (int)v->len, v->str);
    case CEL_OPTIONAL:
        if (!v->opt)
            return cel_out_puts(out, "optional.none()");
        r = cel_out_puts(out, "optional.of(");
        if (r >= 0)
            r = format_value(out, v->opt);
        return r < 0 ? r : cel_out_putc(out, ')');
    case CEL_IP:
        format_ip(v->ip, buf, sizeof(buf));
        return cel_out_printf(out, "ip(\"%s\")", buf);
    case CEL_CIDR:
        format_ip(v->ip, buf, sizeof(buf));
        return cel_out_printf(out, "cidr(\"%s/%u\")", buf, v->ip->prefix);
    case CEL_ERROR:
        r = cel_out_puts(out, "error(");
        if (r >= 0)
            r = put_quoted(out, v->err->message, strlen(v->err->message), false);
        if (r >= 0 && v->err->line)
            r = cel_out_printf(out, " at %u:%u", v->err->line, v->err->column);
        return r < 0 ? r : cel_out_putc(out, ')');
    case CEL_UNKNOWN:
        r = cel_out_puts(out, "unknown(");
        for (size_t i = 0; v->unk && i < v->unk->len && r >= 0; i++)
            r = cel_out_printf(out, i ? ", %llu" : "%llu", (unsigned long long)v->unk->ids[i]);
        return r < 0 ? r : cel_out_putc(out, ')');
    }
    return -EINVAL;
}

int cel_value_format(const cel_value *v, strbuf *out)
{
    cel_out o = {.sb = out};
    return format_value(&o, v);
}

/* Orders map entries by the display form of their keys (for %s). */
typedef struct keyed {
    char *key;
    const cel_map_entry *entry;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    return strcmp(((const keyed *)a)->key, ((const keyed *)b)->key);
}

int cel_value_to_display(ev *e, const cel_value *v, cel_out *out)
{
    char buf[96];
    int r = 0;
    switch ((cel_kind)v->kind) {
    case CEL_STRING:
    case CEL_BYTES:
        return cel_out_append(out, v->str, v->len);
    case CEL_UINT:
        return cel_out_printf(out, "%llu", (unsigned long long)v->u);
    case CEL_DOUBLE:
        cel_format_double(v->d, buf, sizeof(buf));
        return cel_out_puts(out, buf);
    case CEL_TIMESTAMP:
        cel_format_timestamp(v->i, v->len, buf, sizeof(buf));
        return cel_out_puts(out, buf);
    case CEL_DURATION:
        cel_format_duration(v->i, buf, sizeof(buf));
        return cel_out_puts(out, buf);
    case CEL_IP:
        format_ip(v->ip, buf, sizeof(buf));
        return cel_out_puts(out, buf);
    case CEL_CIDR:
        format_ip(v->ip, buf, sizeof(buf));
        return cel_out_printf(out, "%s/%u", buf, v->ip->prefix);
    case CEL_LIST:
        r = cel_out_putc(out, '[');
        for (size_t i = 0; i < v->list->len && r >= 0; i++) {
            if (i)
                r = cel_out_puts(out, ", ");
            if (r >= 0)
                r = cel_value_to_display(e, &v->list->items[i], out);
        }
        return r < 0 ? r : cel_out_putc(out, ']');
    case CEL_MAP: {
        size_t n = v->map->len;
        keyed *ks = cel_ev_alloc(e, (n ? n : 1) * sizeof(keyed));
        if (!ks)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
            cel_buf kb;
            cel_buf_init(&kb, e->arena, 1u << 20);
            cel_out ko = {.ab = &kb};
            r = cel_value_to_display(e, &v->map->entries[i].key, &ko);
            if (r < 0)
                return r;
            ks[i].key = kb.data;
            ks[i].entry = &v->map->entries[i];
        }
        qsort(ks, n, sizeof(keyed), cmp_keyed);
        r = cel_out_putc(out, '{');
        for (size_t i = 0; i < n && r >= 0; i++) {
            r = cel_out_printf(out, "%s%s: ", i ? ", " : "", ks[i].key);
            if (r >= 0)
                r = cel_value_to_display(e, &ks[i].entry->value, out);
        }
        return r < 0 ? r : cel_out_putc(out, '}');
    }
    default:
        return format_value(out, v);
    }
}
