/* Audit log entries and the parameters of proof requests. An entry is one
 * JSON object in canonical form (keys sorted, no insignificant whitespace):
 *   {"action":..,"actor":{"ip":..,"session":..,"user":..},"details":{..},
 *    "outcome":..,"resource":{"kind":..,"name":..},"time":"RFC 3339"}
 * Its bytes are what the Merkle leaf hashes. */
#pragma once

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define AUDIT_ENTRY_MAX (16 * 1024)   /* bytes of one canonical entry */
#define AUDIT_DETAILS_DEPTH_MAX 6
#define AUDIT_FIELD_MAX 1024          /* bytes of one string field */
#define AUDIT_PAGE_MAX 1000           /* entries per read of the log */
#define AUDIT_PAGE_BYTES (1024 * 1024) /* entry bytes per read (6x that escaped, at worst) */

/* Decodes DATA (LEN bytes of untrusted JSON) as an entry, checks every field
 * (types, caps, no duplicate keys, no floating-point numbers) and returns its
 * canonical text in *RET (heap, NUL-terminated, caller frees) and its length.
 * -EINVAL when it is not an entry, -E2BIG when too large, -ENOMEM. */
int audit_entry_canonicalize(const char *data, size_t len, char **ret, size_t *ret_len);
/* As above for an entry already parsed (borrowed). */
int audit_entry_canonicalize_json(const json_t *entry, char **ret, size_t *ret_len);

/* Parses a strict decimal index: digits only, no sign, no leading zero (but
 * "0"), at most 2^62. Returns 0 or -EINVAL. */
int audit_parse_index(const char *s, size_t len, uint64_t *ret);

/* Parses a query string (what follows '?', not percent-decoded) that must
 * hold exactly the parameters NAMES[0] and NAMES[1], once each, as strict
 * indexes, and nothing else. Returns 0 or -EINVAL; RET written on success. */
int audit_parse_query(const char *query, size_t len, const char *const names[2], uint64_t ret[2]);
