#include "basic/encoding.h"

#include <errno.h>
#include <string.h>

void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

/* 1 for the bytes a JSON string holds as they are (one lookup a byte: this
 * runs on every field of every access record) */
static const uint8_t json_plain[256] = {
    [0x20 ... 0x21] = 1, /* '"' (0x22) escaped */
    [0x23 ... 0x5b] = 1, /* '\\' (0x5c) escaped */
    [0x5d ... 0x7e] = 1, /* DEL (0x7f) escaped */
    [0x80 ... 0xff] = 1,
};

size_t json_escape_some(const char **s, char *out, size_t size)
{
    static const char hexdig[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)*s;
    size_t n = 0;
    while (*p) {
        /* the bytes that need no escape, copied as one run */
        size_t run = 0;
        while (json_plain[p[run]])
            run++;
        if (run) {
            run = run < size - n ? run : size - n;
            memcpy(out + n, p, run);
            n += run, p += run;
            if (n == size)
                break;
            continue;
        }
        char esc[6] = {'\\', 0};
        size_t len = 2;
        switch (*p) {
        case '"':
        case '\\':
            esc[1] = (char)*p;
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default: /* the other control bytes */
            memcpy(esc + 1, "u00", 3);
            esc[4] = hexdig[*p >> 4];
            esc[5] = hexdig[*p & 15];
            len = 6;
        }
        if (size - n < len)
            break;
        memcpy(out + n, esc, len);
        n += len, p++;
    }
    *s = (const char *)p;
    return n;
}

int hex_digit_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_len)
{
    if (in_len != 2 * out_len)
        return -EINVAL;
    for (size_t i = 0; i < out_len; i++) {
        int hi = hex_digit_value(in[2 * i]), lo = hex_digit_value(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

size_t base64_encoded_size(size_t n)
{
    return (n + 2) / 3 * 4 + 1;
}

size_t base64_encode(const uint8_t *in, size_t n, char *out, bool url)
{
    const char *alphabet = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                               : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = alphabet[(v >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (!url)
            out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

static int b64_value(char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Decodes IN in the alphabet URL selects, with padding when PADDED. */
static long decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, bool url, bool padded)
{
    size_t pad = 0;
    if (padded) {
        if (in_len % 4)
            return -EINVAL;
        while (pad < 2 && in_len > 0 && in[in_len - 1] == '=') {
            in_len--;
            pad++;
        }
    }
    if (in_len % 4 == 1)
        return -EINVAL;
    size_t out_len = in_len / 4 * 3 + (in_len % 4 ? in_len % 4 - 1 : 0);
    if (padded && pad && (in_len + pad) % 4)
        return -EINVAL;
    if (out_len > out_cap)
        return -E2BIG;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < in_len; i++) {
        int v = b64_value(in[i], url);
        if (v < 0)
            return -EINVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* leftover bits must be zero: one encoding per byte string */
    if (bits && (acc & ((1u << bits) - 1)))
        return -EINVAL;
    return (long)o;
}

long base64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, bool url)
{
    return decode(in, in_len, out, out_cap, url, !url);
}

size_t base64_encode_unpadded(const uint8_t *in, size_t n, char *out)
{
    size_t len = base64_encode(in, n, out, false);
    while (len > 0 && out[len - 1] == '=')
        out[--len] = 0;
    return len;
}

long base64_decode_unpadded(const char *in, size_t in_len, uint8_t *out, size_t out_cap)
{
    return decode(in, in_len, out, out_cap, false, false);
}

bool memeq_consttime(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}
