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

/* The most bytes otlp_json_put() writes for N bytes of input. */
#define OTLP_JSON_BOUND(n) (6 * (size_t)(n) + 2)
/* Writes the N bytes at S as a JSON string, quotes included, at OUT (room
 * for OTLP_JSON_BOUND(N) bytes): control characters escaped, each byte of
 * invalid UTF-8 (or of a character cut at N) replaced by U+FFFD. Returns the
 * end of what it wrote. */
char *otlp_json_put(char *out, const char *s, size_t n);
/* N bytes at P as 2N lower-case hex digits at OUT; returns the end. */
char *otlp_hex_put(char *out, const uint8_t *p, size_t n);
/* V in decimal at OUT (at most 20 bytes; 21 with a sign); returns the end. */
char *otlp_u64_put(char *out, uint64_t v);
char *otlp_i64_put(char *out, int64_t v);

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

/* ---- spans and log records, written as OTLP JSON text ---- */

#define OTLP_STRING_MAX 4096   /* an attribute's key or value, a log body: cut beyond */
#define OTLP_SPAN_ATTRS_MAX 64 /* attributes of a span or log record; more are ignored */
#define OTLP_SPAN_LINKS_MAX 8
#define OTLP_SPAN_TEXT_INLINE 2048 /* attribute text a span holds without allocating */

/* A span being recorded. Its attributes are kept as the JSON text they will
 * be sent as, {"key":..,"value":{..}} one after the other, so that ending it
 * copies them. */
struct telemetry_span {
    trace_context ctx;
    uint8_t parent_span_id[8];
    bool has_parent;
    int kind;
    int status_code;
    uint64_t start_ns;
    char name[256];
    char status_message[512];
    trace_context links[OTLP_SPAN_LINKS_MAX];
    size_t n_links;
    struct {
        uint32_t off, len; /* of the attribute's text */
        uint32_t key_len;  /* of its key's JSON string, at off + 7 */
    } attrs[OTLP_SPAN_ATTRS_MAX];
    size_t n_attrs;
    char *text; /* text_inline, or the heap once it outgrew it */
    size_t len, cap;
    telemetry_span *next_spare; /* on its thread's list of spans to reuse */
    char text_inline[OTLP_SPAN_TEXT_INLINE];
};

/* Makes S (its memory the caller's) a new span NAME of KIND, a child of
 * PARENT (NULL: a new trace), started now. */
void otlp_span_init(telemetry_span *s, const char *name, int kind, const trace_context *parent);
/* Frees what S allocated itself (not S). */
void otlp_span_release(telemetry_span *s);
/* Sets attribute KEY of S (replacing one of that key) to a string, cut at
 * OTLP_STRING_MAX bytes, or an integer. Returns 0, -ENOSPC past
 * OTLP_SPAN_ATTRS_MAX attributes, or -ENOMEM (S is then as it was). */
int otlp_span_set_str(telemetry_span *s, const char *key, const char *value);
int otlp_span_set_int(telemetry_span *s, const char *key, int64_t value);
/* The most bytes otlp_span_write() writes for S. */
size_t otlp_span_bound(const telemetry_span *s);
/* Writes S, ending at END_NS, as an OTLP Span's JSON at OUT (room for
 * otlp_span_bound(S)); returns the end. */
char *otlp_span_write(char *out, const telemetry_span *s, uint64_t end_ns);

/* A log record: body, attributes (key, value pairs of strings,
 * NULL-terminated; may be NULL), the trace it belongs to (may be NULL). */
typedef struct otlp_log {
    uint64_t time_ns;
    int severity;
    const char *body;
    const trace_context *ctx;
    const char *const *attrs;
} otlp_log;
size_t otlp_log_bound(const otlp_log *l);
/* Writes L as an OTLP LogRecord's JSON at OUT (room for otlp_log_bound(L));
 * returns the end. */
char *otlp_log_write(char *out, const otlp_log *l);

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
