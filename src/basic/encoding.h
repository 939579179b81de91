/* Hex and base64 (standard and URL-safe) encoders and strict decoders, and a
 * constant-time comparison for secrets. Decoders reject any character outside
 * the alphabet, bad padding and trailing garbage. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The value of hex digit C (either case), or -1. */
int hex_digit_value(char c);
/* Lower-case hex of N bytes into OUT (2*N+1 bytes). */
void hex_encode(const uint8_t *in, size_t n, char *out);
/* Decodes exactly 2*OUT_LEN hex digits; -EINVAL otherwise. */
int hex_decode(const char *in, size_t in_len, uint8_t *out, size_t out_len);

/* Size of the encoding of N bytes, terminator included. */
size_t base64_encoded_size(size_t n);
/* Encodes into OUT (base64_encoded_size(n) bytes); URL selects the URL-safe
 * alphabet without padding. Returns the string length. */
size_t base64_encode(const uint8_t *in, size_t n, char *out, bool url);
/* Decodes IN (standard alphabet with padding, or URL-safe without when URL)
 * into OUT of capacity OUT_CAP; returns the decoded length or -EINVAL / -E2BIG. */
long base64_decode(const char *in, size_t in_len, uint8_t *out, size_t out_cap, bool url);

/* The standard alphabet without padding (age's header encoding): encodes
 * into OUT (base64_encoded_size(n) bytes), returning the length; decodes as
 * strictly as base64_decode() (no '=', zero leftover bits). */
size_t base64_encode_unpadded(const uint8_t *in, size_t n, char *out);
long base64_decode_unpadded(const char *in, size_t in_len, uint8_t *out, size_t out_cap);

/* The JSON string escapes, in one place: the bytes of NUL-terminated *S
 * escaped for the inside of a JSON string literal ('"', '\\' and control
 * bytes as \n, \r, \t or \u00XX; other bytes as they are) into OUT, as
 * many whole escapes as fit its SIZE bytes. Returns the bytes written and
 * moves *S past what they encode (to its NUL when all of it fit). */
size_t json_escape_some(const char **s, char *out, size_t size);

/* True when the N bytes are equal; time depends only on N. */
bool memeq_consttime(const void *a, const void *b, size_t n);
