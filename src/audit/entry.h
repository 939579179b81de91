/* Audit log entries and the parameters of proof requests. A client submits
 * an entry as one JSON object:
 *   {"action":..,"actor":{"ip":..,"session":..,"user":..},"details":{..},
 *    "outcome":..,"resource":{"kind":..,"name":..},"time":"RFC 3339"}
 * The audit role stores it stamped: "appender" (the role that appended it,
 * from the socket's peer check, never from the entry), "time" (when the
 * audit role received it) and "client_time" (the submitted "time"). A
 * stored entry is kept in canonical form (keys sorted, no insignificant
 * whitespace); its bytes are what the Merkle leaf hashes, so the stamps are
 * covered by the log's checkpoints. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUDIT_ENTRY_MAX (16 * 1024)   /* bytes of one canonical entry */
#define AUDIT_DETAILS_DEPTH_MAX 6
#define AUDIT_FIELD_MAX 1024          /* bytes of one string field */
#define AUDIT_PAGE_MAX 1000           /* entries per read of the log */
#define AUDIT_PAGE_BYTES (1024 * 1024) /* entry bytes per read (6x that escaped, at worst) */

/* Decodes DATA (LEN bytes of untrusted JSON) as a stored entry, checks every
 * field (types, caps, no duplicate keys, no floating-point numbers, no
 * unknown key) and returns its canonical text in *RET (heap, NUL-terminated,
 * caller frees) and its length. Entries stored before the audit role
 * stamped them (no appender, no client_time) are accepted as they were.
 * -EINVAL when it is not an entry, -E2BIG when too large, -ENOMEM. */
int audit_entry_canonicalize(const char *data, size_t len, char **ret, size_t *ret_len);
/* As above for an entry already parsed (borrowed). */
int audit_entry_canonicalize_json(const json_t *entry, char **ret, size_t *ret_len);

/* Checks ENTRY (borrowed) as a client submits it: exactly the six fields,
 * no stamps. Its canonical text as above; -EINVAL, -E2BIG, -ENOMEM. */
int audit_entry_submission_canonicalize(const json_t *entry, char **ret, size_t *ret_len);

/* The stored form of the submitted ENTRY (borrowed, checked as above):
 * "appender" set to APPENDER, "time" to NOW_NS (realtime ns) and the
 * submitted time kept as "client_time". Canonical text in *RET (heap) and
 * its length; -EINVAL, -E2BIG, -ENOMEM. */
int audit_entry_stamp(const json_t *entry, const char *appender, uint64_t now_ns, char **ret, size_t *ret_len);

/* Whether the role named APPENDER may append an entry with ACTION: the api
 * any but "audit.*" (the audit role's own entries, which it writes itself),
 * the proxy only "proxy.*", the kms role only "kms.*", any other role
 * nothing. */
bool audit_appender_may(const char *appender, const char *action);

/* Parses a strict decimal index: digits only, no sign, no leading zero (but
 * "0"), at most 2^62. Returns 0 or -EINVAL. */
int audit_parse_index(const char *s, size_t len, uint64_t *ret);

/* Parses a query string (what follows '?', not percent-decoded) that must
 * hold exactly the parameters NAMES[0] and NAMES[1], once each, as strict
 * indexes, and nothing else. Returns 0 or -EINVAL; RET written on success. */
int audit_parse_query(const char *query, size_t len, const char *const names[2], uint64_t ret[2]);
