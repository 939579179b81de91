/* The exporter's parts, separate so that each is tested alone: its
 * configuration (from OTEL_* variables today, a configuration file later:
 * issue 19), the OTLP JSON encoding, and the retry policy. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "basic/strbuf.h"
#include "telemetry/telemetry.h"

#define OTLP_HEADERS_MAX 16

typedef struct otlp_header {
    char *name, *value; /* percent-decoded */
} otlp_header;

/* How one signal is sent: its variables OTEL_EXPORTER_OTLP_<SIGNAL>_* over
 * the generic OTEL_EXPORTER_OTLP_* ones. */
typedef struct otlp_signal_config {
    char *url; /* NULL: the signal is not exported */
    otlp_header headers[OTLP_HEADERS_MAX]; /* _HEADERS */
    size_t n_headers;
    char *ca_file;       /* _CERTIFICATE: roots for an https endpoint; NULL: the system's */
    unsigned timeout_ms; /* _TIMEOUT: one request (10000) */
    bool gzip;           /* _COMPRESSION: gzip (the default here) or none */
} otlp_signal_config;

/* What the exporter needs to know, whatever said it. */
typedef struct otlp_config {
    otlp_signal_config signal[TELEMETRY_SIGNAL_COUNT_];
    json_t *resource;      /* OTLP KeyValue array: service.name and OTEL_RESOURCE_ATTRIBUTES */
    unsigned queue_max;    /* records waiting per signal (OTEL_BSP_MAX_QUEUE_SIZE, 2048) */
    unsigned batch_max;    /* records per request (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512) */
    unsigned delay_ms;     /* longest a record waits for its batch (OTEL_BSP_SCHEDULE_DELAY, 5000) */
    unsigned metric_interval_ms; /* OTEL_METRIC_EXPORT_INTERVAL, 60000 */
} otlp_config;

/* Reads a variable: its value, or NULL when unset. */
typedef const char *(*otlp_getenv)(const char *name, void *userdata);

/* Fills RET from the variables GET reads; SERVICE_NAME is the default
 * service.name. Export is off (every signal's url NULL) when no endpoint is
 * set or OTEL_SDK_DISABLED=true. Returns 0, or -EINVAL with *RET_WHY naming the
 * variable and what is wrong with it (RET then empty). */
int otlp_config_parse(otlp_getenv get, void *userdata, const char *service_name, otlp_config *ret,
                      const char **ret_why);
void otlp_config_free(otlp_config *c);
/* URL as it may be logged: itself, or its copy in OUT with the user
 * information (a password) replaced by ***; "off" for NULL. */
const char *otlp_loggable_url(const char *url, char *out, size_t size);

/* Percent-decodes the N bytes at S into a new string (*RET, the caller
 * frees); -EINVAL for a bad escape or a NUL byte. */
int otlp_percent_decode(const char *s, size_t n, char **ret);
/* Parses "k1=v1,k2=v2" (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES):
 * blanks around each key and value trimmed, values percent-decoded. Calls
 * ADD for each pair (ADD owns the strings it is given); returns 0, -EINVAL
 * for a malformed list, or what ADD returned. */
int otlp_parse_pairs(const char *s, int (*add)(char *key, char *value, void *userdata), void *userdata);

/* ---- encoding (the OTLP JSON rules: hex ids, integer enums, lowerCamelCase,
 * 64-bit integers as strings) ---- */

/* {key, value: {stringValue}} and {key, value: {intValue: "n"}} */
json_t *otlp_attr_str(const char *key, const char *value);
json_t *otlp_attr_int(const char *key, int64_t value);
/* A nanosecond time as the decimal string OTLP wants. */
json_t *otlp_time(uint64_t unix_ns);
/* Wall-clock now in nanoseconds. */
uint64_t otlp_now_ns(void);
/* N random bytes, not all zero (a trace or span id): unique, not secret. */
void otlp_random_id(uint8_t *out, size_t n);

/* Appends S (at most MAX bytes of it) to B as a JSON string: control
 * characters escaped, each byte of invalid UTF-8 (or of a character cut at
 * MAX) replaced by U+FFFD, so that one bad byte never makes a batch that a
 * collector refuses. Returns 0 or strbuf's negative errno. */
int otlp_put_json_string(strbuf *b, const char *s, size_t max);
/* Appends the request body of signal S holding the N records RECORDS
 * (each a record's JSON text) under the resource RESOURCE_JSON (a KeyValue
 * array's JSON) to OUT, as otlp_envelope() would. */
int otlp_envelope_text(strbuf *out, telemetry_signal s, const char *resource_json, const char *const *records,
                       size_t n);
/* The request body of signal S: {resource<Signal>: [{resource: {attributes:
 * RESOURCE}, scope<Signal>: [{scope: {name, version}, <records>: RECORDS}]}]}
 * (RECORDS stolen). */
json_t *otlp_envelope(telemetry_signal s, const json_t *resource, json_t *records);

/* Converts Prometheus text exposition TEXT to OTLP Metric objects appended
 * to METRICS: counters as cumulative monotonic sums named without _total,
 * gauges, histograms (cumulative, bucket counts un-accumulated), with
 * START_NS and NOW_NS as each point's times. Lines it does not understand
 * are skipped. Returns 0 or -ENOMEM. */
int otlp_metrics_from_prometheus(const char *text, uint64_t start_ns, uint64_t now_ns, json_t *metrics);

/* ---- retries ---- */

#define OTLP_RETRY_ATTEMPTS 5        /* tries of one batch, the first included */
#define OTLP_RETRY_BASE_MS 500       /* the first backoff; doubles each time */
#define OTLP_RETRY_MAX_MS 30000      /* cap of a backoff and of Retry-After */

/* After try ATTEMPT (1 for the first) of a batch ended with HTTP STATUS (0:
 * no answer: the collector could not be reached), whether to try again and
 * after how long: 0 with *RET_DELAY_MS when to retry (429, 502, 503, 504 and
 * no answer, until OTLP_RETRY_ATTEMPTS; RETRY_AFTER, the header's value or
 * NULL, in seconds or as an HTTP date relative to NOW_UNIX, is honoured up to
 * OTLP_RETRY_MAX_MS, else exponential backoff from OTLP_RETRY_BASE_MS);
 * -1 when the batch is done with (2xx: sent; 400 and every other status:
 * refused, never retried; attempts used up). */
int otlp_retry_delay(long status, const char *retry_after, unsigned attempt, int64_t now_unix,
                     unsigned *ret_delay_ms);
