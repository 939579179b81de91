/* Time helpers: nanosecond clocks and RFC 3339 formatting/parsing (UTC). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define NSEC_PER_SEC UINT64_C(1000000000)
#define NSEC_PER_MSEC UINT64_C(1000000)
#define NSEC_PER_USEC UINT64_C(1000)

/* Wall clock, nanoseconds since the Unix epoch. */
uint64_t time_now_ns(void);
/* Monotonic clock in nanoseconds, for intervals. */
uint64_t time_mono_ns(void);

/* "2026-11-21T10:00:00.123Z" into BUF (at least 32 bytes); returns BUF. */
char *time_format_rfc3339_ms(uint64_t ns, char *buf, size_t size);
/* "2026-11-21T10:00:00Z" (whole seconds) into BUF; returns BUF. */
char *time_format_rfc3339(int64_t secs, char *buf, size_t size);
/* Parses an RFC 3339 timestamp with optional fraction and a Z or ±hh:mm
 * offset into seconds since the epoch (fraction dropped). -EINVAL if malformed. */
int time_parse_rfc3339(const char *s, int64_t *ret_secs);
