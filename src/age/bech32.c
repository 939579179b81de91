/* Bech32 (BIP 173): the checksum over the expanded human-readable part and
 * 5-bit groups, and the 8-to-5-bit regrouping with zero padding. */
#include "age/bech32.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

static const char charset[] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/* BIP 173's polymod step over one 5-bit value. */
static uint32_t polymod_step(uint32_t chk, uint8_t v)
{
    static const uint32_t gen[5] = {0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3};
    uint8_t top = chk >> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (int i = 0; i < 5; i++)
        if ((top >> i) & 1)
            chk ^= gen[i];
    return chk;
}

/* The checksum state after the expanded (lower-case) HRP. */
static uint32_t polymod_hrp(const char *hrp, size_t hlen)
{
    uint32_t chk = 1;
    for (size_t i = 0; i < hlen; i++)
        chk = polymod_step(chk, (uint8_t)tolower((unsigned char)hrp[i]) >> 5);
    chk = polymod_step(chk, 0);
    for (size_t i = 0; i < hlen; i++)
        chk = polymod_step(chk, (uint8_t)tolower((unsigned char)hrp[i]) & 31);
    return chk;
}

int bech32_encode(const char *hrp, const uint8_t *data, size_t n, bool upper, char *out, size_t cap)
{
    size_t hlen = strlen(hrp), groups = (n * 8 + 4) / 5;
    if (hlen + 1 + groups + 6 + 1 > cap)
        return -ENOBUFS;
    size_t o = 0;
    for (size_t i = 0; i < hlen; i++)
        out[o++] = (char)(upper ? toupper((unsigned char)hrp[i]) : tolower((unsigned char)hrp[i]));
    out[o++] = '1';
    uint32_t chk = polymod_hrp(hrp, hlen), acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | data[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            uint8_t v = (acc >> bits) & 31;
            chk = polymod_step(chk, v);
            out[o++] = charset[v];
        }
    }
    if (bits > 0) {
        uint8_t v = (acc << (5 - bits)) & 31;
        chk = polymod_step(chk, v);
        out[o++] = charset[v];
    }
    for (int i = 0; i < 6; i++)
        chk = polymod_step(chk, 0);
    chk ^= 1;
    for (int i = 0; i < 6; i++)
        out[o++] = charset[(chk >> (5 * (5 - i))) & 31];
    out[o] = '\0';
    if (upper)
        for (size_t i = hlen; i < o; i++)
            out[i] = (char)toupper((unsigned char)out[i]);
    return (int)o;
}

int bech32_decode(const char *s, const char *hrp, uint8_t *out, size_t out_len)
{
    size_t len = strlen(s), hlen = strlen(hrp);
    bool lower = false, upper = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 33 || c > 126)
            return -EINVAL;
        lower |= islower(c) != 0;
        upper |= isupper(c) != 0;
    }
    if (lower && upper)
        return -EINVAL;
    /* the separator is the last '1'; the HRP is everything before it */
    const char *sep = strrchr(s, '1');
    if (!sep || (size_t)(sep - s) != hlen || strncasecmp(s, hrp, hlen) != 0)
        return -EINVAL;
    const char *d = sep + 1;
    size_t dlen = len - hlen - 1;
    if (dlen < 6 || (dlen - 6) * 5 / 8 != out_len || (dlen - 6) * 5 < out_len * 8)
        return -EINVAL;
    uint32_t chk = polymod_hrp(hrp, hlen), acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < dlen; i++) {
        const char *p = strchr(charset, tolower((unsigned char)d[i]));
        if (!p || !*p)
            return -EINVAL;
        uint8_t v = (uint8_t)(p - charset);
        chk = polymod_step(chk, v);
        if (i >= dlen - 6)
            continue;
        acc = (acc << 5) | v;
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (acc >> bits) & 0xff;
        }
    }
    /* padding: fewer than 5 bits, all zero */
    if (chk != 1 || bits >= 5 || (acc & ((1u << bits) - 1)) != 0 || o != out_len)
        return -EINVAL;
    return 0;
}
