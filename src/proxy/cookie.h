/* Cookie header handling of the proxy (RFC 6265 section 5.4 syntax: pairs
 * "name=value" separated by ';' and optional spaces). Only the proxy's own
 * cookie matters to it: finding its value, and removing it before the
 * request goes upstream. Pure functions on bytes: no allocation. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Finds cookie NAME (NAME_LEN bytes) in the Cookie header value V (LEN
 * bytes). Returns true with *RET_VALUE and *RET_LEN pointing into V at the first
 * such cookie's value (possibly empty), false when absent. */
bool proxy_cookie_find(const char *v, size_t len, const char *name, size_t name_len, const char **ret_value,
                       size_t *ret_len);

/* Copies V (LEN bytes) into OUT (at least twice LEN bytes) without any cookie
 * named NAME, the remaining pairs joined by "; ". Returns the length written
 * (0 when nothing is left). */
size_t proxy_cookie_strip(const char *v, size_t len, const char *name, size_t name_len, char *out);
