/* Bech32 (BIP 173) with the checksum constant 1, as age encodes its keys.
 * Unlike BIP 173, no 90-character limit (age lifts it); mixed case refused. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Encodes DATA (N bytes) under HRP into OUT (capacity CAP) in lower case, or
 * in upper case when UPPER. Returns the string length, or -ENOBUFS. */
int bech32_encode(const char *hrp, const uint8_t *data, size_t n, bool upper, char *out, size_t cap);

/* Decodes S (either case, not mixed) whose human-readable part must equal
 * HRP (compared case-insensitively) into OUT, which must receive exactly
 * OUT_LEN bytes. Returns 0, or -EINVAL for any other string (bad checksum,
 * characters, padding, length or part). */
int bech32_decode(const char *s, const char *hrp, uint8_t *out, size_t out_len);
