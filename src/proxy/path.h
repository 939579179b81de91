/* The request-target normaliser of the proxy. The proxy normalises the target
 * once, decides the policy on the result and forwards exactly the result
 * upstream, so a path the policy saw and a path the upstream sees cannot
 * differ. Strict by design: anything ambiguous is refused (-EINVAL, a 400),
 * never guessed at.
 *
 * Decisions:
 * - Only origin-form ("/path?query") is accepted; absolute-form
 *   ("http://host/x"), authority-form ("host:443"), asterisk-form ("*") and an
 *   empty target are refused.
 * - Every raw byte must be an RFC 3986 pchar or '/' in the path, and a pchar,
 *   '/' or '?' in the query. Controls, NUL, space, non-ASCII bytes, '#', '\\',
 *   '"', '<', '>', '[', ']', '^', '`', '{', '|', '}' are refused anywhere.
 * - Percent-encodings are decoded once, in the path only: an encoded unreserved
 *   character (ALPHA DIGIT - . _ ~) becomes that character, any other stays
 *   encoded with upper-case hex. "%252e" therefore becomes "%252e" and is
 *   never decoded again. A '%' not followed by two hex digits is refused.
 * - Refused in the path: "%2F" and "%5C" (an encoded '/' or '\\' is a
 *   separator to some upstreams and not to others, so neither meaning is
 *   safe), encoded control bytes ("%00".."%1F", "%7F"), and a segment whose
 *   part before its first ';' is "." or ".." once decoded ("..;", ".;x"),
 *   which servlet containers resolve as a dot-segment.
 * - Decoding happens before dot-segment removal, so "%2e%2e" is "..". Then
 *   "." and ".." segments are resolved as in RFC 3986 5.2.4 (".." above the
 *   root stays at the root) and runs of '/' collapse to one; a path ending in
 *   '/', "." or ".." keeps (gains) its trailing '/'.
 * - Case is preserved: the policy compares paths case-sensitively.
 * - The query is copied unchanged (not decoded, hex case kept) once checked:
 *   well-formed percent-encodings, no "%00". "%2F" is fine in the query.
 *
 * The output is a valid origin-form target, never longer than the input, and
 * normalising it again gives it back unchanged. */
#pragma once

#include <stddef.h>

#define PROXY_PATH_MAX 8192 /* longest request target accepted (path + query) */

/* Normalises the origin-form request target SRC (LEN bytes, "/path?query" as
 * h2o gives req->path; need not be NUL-terminated) into OUT (OUT_SIZE bytes,
 * NUL-terminated) following the rules above. On success sets *RET_PATH_LEN to
 * the length of the path part (OUT[0..path_len) is the path, OUT[path_len] is
 * '?' or NUL) and returns 0. Returns -EINVAL for a refused target, -E2BIG when
 * LEN exceeds PROXY_PATH_MAX or OUT_SIZE is below LEN + 1 (decided before the
 * content is read: LEN + 1 bytes always suffice). On failure OUT holds the
 * empty string (when OUT_SIZE > 0), so a half-normalised path is never seen. */
int proxy_path_normalize(const char *src, size_t len, char *out, size_t out_size, size_t *ret_path_len);
