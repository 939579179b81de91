/* Cookie header handling of the proxy (RFC 6265 section 5.4 syntax: pairs
 * "name=value" separated by ';' and optional spaces). Only the proxy's own
 * cookies matter to it: finding their value, removing them before the
 * request goes upstream, and recognising an upstream's Set-Cookie of one of
 * them (dropped: an upstream must not set a session of its choice in the
 * browser, for itself or a sibling service). Pure functions on bytes: no
 * allocation. */
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

/* Whether the Set-Cookie header value V (LEN bytes) sets a cookie named one
 * of NAMES (a NULL-terminated list), also under the "__Host-" or
 * "__Secure-" prefix; names compared without regard to case (RFC 6265bis
 * matches the prefixes so, and a browser-dependent spelling of our names
 * is no business of an upstream either). */
bool proxy_set_cookie_is_ours(const char *v, size_t len, const char *const *names);
