/* W3C Trace Context `tracestate` (https://www.w3.org/TR/trace-context/
 * section 3.3), as the proxy passes it upstream: checked member by member,
 * rebuilt without optional whitespace and empty members, capped. Pure: no
 * allocation, no h2o (the fuzzer links it alone). `traceparent` is parsed by
 * trace_context_parse() (telemetry/telemetry.h), the one parser of it. */
#pragma once

#include <stddef.h>

#define PROXY_TRACESTATE_MAX 512     /* bytes passed upstream (the spec's "at least 512") */
#define PROXY_TRACESTATE_MEMBERS 32  /* list-members in a valid tracestate */
#define PROXY_TRACESTATE_IN_MAX (32 * 514) /* bytes of the client's tracestate headers read at all: 32 members at their caps */

/* Checks the tracestate V (LEN bytes: one header value, or several joined
 * by ',') against the W3C grammar: at most 32 list-members `key=value`
 * (simple or multi-tenant keys, each key once), empty members and optional
 * whitespace around commas allowed. Writes the members to pass upstream to
 * OUT (SIZE bytes, at least PROXY_TRACESTATE_MAX + 1) as "k=v,k=v" with a
 * NUL; members that would pass PROXY_TRACESTATE_MAX bytes are left out from
 * the right (the spec's truncation). Returns the length written (0 when
 * nothing is left to pass), or -EINVAL when V is not a valid tracestate
 * (nothing of it may be passed). */
int proxy_tracestate_filter(const char *v, size_t len, char *out, size_t size);
