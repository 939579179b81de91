/* OpenTelemetry export over OTLP/HTTP with the JSON encoding (docs/telemetry.md).
 *
 * One exporter per process: telemetry_init() reads the standard OTEL_*
 * variables and, when an endpoint is set, starts one thread that batches
 * spans, log records and metrics and POSTs them (gzip) to the collector.
 * Callers never wait for the network: records go to a bounded queue per
 * signal, and a record that finds its queue full is dropped and counted.
 * Every function is thread-safe, and a no-op (NULL span) when export is
 * off. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/strbuf.h"

/* Starts export for this process, named SERVICE_NAME (e.g.
 * "cloisterd-proxy") unless OTEL_SERVICE_NAME says otherwise. Returns 0
 * (export on, or off because no endpoint is configured), or a negative errno
 * for a configuration that cannot be used (logged: what is wrong). Call once,
 * after fork. */
int telemetry_init(const char *service_name);
/* Exports what is queued (waiting at most a few seconds for the collector),
 * stops the thread and frees everything; export is off afterwards. */
void telemetry_shutdown(void);
bool telemetry_enabled(void);

/* Records that found their queue full (or a collector that refused them
 * with a status that is not retried), per signal since telemetry_init(). */
typedef enum telemetry_signal {
    TELEMETRY_TRACES,
    TELEMETRY_METRICS,
    TELEMETRY_LOGS,
    TELEMETRY_SIGNAL_COUNT_,
} telemetry_signal;
uint64_t telemetry_dropped(telemetry_signal s);
/* Records of signal S waiting to be exported: queued, not yet taken into a
 * request (at most OTEL_BSP_MAX_QUEUE_SIZE). */
uint64_t telemetry_queued(telemetry_signal s);
/* Appends cloister_telemetry_dropped_total{signal=...} and
 * cloister_telemetry_queued_records{signal=...} (Prometheus text) to OUT. */
int telemetry_metrics_render(strbuf *out);

/* ---- W3C trace context (https://www.w3.org/TR/trace-context/) ---- */

typedef struct trace_context {
    uint8_t trace_id[16], span_id[8];
    uint8_t flags; /* bit 0: sampled */
} trace_context;

#define TRACEPARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */

/* Parses a traceparent header value of LEN bytes. Only version 00 in its
 * exact form is accepted: lower-case hex, non-zero trace and span ids, 55
 * bytes. Returns 0, or -EINVAL (RET untouched). */
int trace_context_parse(const char *traceparent, size_t len, trace_context *ret);
/* Writes C as a NUL-terminated version-00 traceparent into OUT. */
void trace_context_format(const trace_context *c, char out[56]);
/* A context with random non-zero ids (sampled), for a new trace. */
void trace_context_new(trace_context *ret);

/* ---- spans ---- */

/* OTLP SpanKind and Status.code. */
enum {
    TELEMETRY_SPAN_INTERNAL = 1,
    TELEMETRY_SPAN_SERVER = 2,
    TELEMETRY_SPAN_CLIENT = 3,
    TELEMETRY_SPAN_PRODUCER = 4,
    TELEMETRY_SPAN_CONSUMER = 5,
};
enum {
    TELEMETRY_STATUS_UNSET = 0,
    TELEMETRY_STATUS_OK = 1,
    TELEMETRY_STATUS_ERROR = 2,
};

typedef struct telemetry_span telemetry_span;

/* Starts span NAME of KIND, a child of PARENT (NULL: the root of a new
 * trace). Returns NULL when export is off (every span function accepts
 * NULL) or memory ran out. The span belongs to the caller until
 * telemetry_span_end(). */
telemetry_span *telemetry_span_start(const char *name, int kind, const trace_context *parent);
void telemetry_span_set_attr_str(telemetry_span *s, const char *key, const char *value);
void telemetry_span_set_attr_int(telemetry_span *s, const char *key, int64_t value);
/* Links the span to another trace's context (an untrusted caller's). */
void telemetry_span_add_link(telemetry_span *s, const trace_context *link);
void telemetry_span_set_status(telemetry_span *s, int code, const char *message);
/* The span's own context, to pass on (traceparent) or parent children with;
 * false (RET untouched) for a NULL span. */
bool telemetry_span_context(const telemetry_span *s, trace_context *ret);
/* Renames the span (once its route is known). */
void telemetry_span_set_name(telemetry_span *s, const char *name);
/* Ends the span now, queues it for export and frees it. */
void telemetry_span_end(telemetry_span *s);

/* The work the calling thread does now, so that what it calls (the KMS, the
 * runner, the API) becomes part of the trace: the span of the request being
 * handled on an event loop (the caller keeps it alive while it is current),
 * or just a context on a worker (src/httpd/offload.c carries it there).
 * Setting a span sets its context too; NULL clears both. */
void telemetry_set_current(telemetry_span *s);
void telemetry_set_current_context(const trace_context *c);
telemetry_span *telemetry_current(void);
/* The current context (of the current span, or set alone); false when none. */
bool telemetry_current_context(trace_context *ret);
/* "traceparent: 00-...": the header that passes the current context to
 * another role over HTTP; false (OUT untouched) when there is none. */
bool telemetry_traceparent_header(char out[70]);

/* ---- logs ---- */

/* OTLP SeverityNumber. */
enum {
    TELEMETRY_SEVERITY_DEBUG = 5,
    TELEMETRY_SEVERITY_INFO = 9,
    TELEMETRY_SEVERITY_WARN = 13,
    TELEMETRY_SEVERITY_ERROR = 17,
};

/* Queues a log record with body BODY at SEVERITY, in the trace of CTX (may
 * be NULL), with ATTRS: key, value pairs of strings, NULL-terminated (may be
 * NULL). */
void telemetry_log(int severity, const char *body, const trace_context *ctx, const char *const *attrs);

/* ---- metrics ---- */

/* A source of metrics: fills OUT with Prometheus text exposition (the
 * same text /metrics serves: one source of truth). The exporter converts it
 * every OTEL_METRIC_EXPORT_INTERVAL: counters to cumulative monotonic sums
 * (the _total suffix dropped), gauges to gauges, histograms to cumulative
 * explicit-bucket histograms. Called on the exporter's thread. */
typedef int (*telemetry_metrics_source)(strbuf *out, void *userdata);
/* Registers SOURCE (at most 8 per process); returns 0, -ENOSPC, or 0 doing
 * nothing when export is off. */
int telemetry_metrics_register(telemetry_metrics_source source, void *userdata);
/* Removes what telemetry_metrics_register() added, once its data goes away,
 * after one last export of it (a collection in progress is waited for). */
void telemetry_metrics_unregister(telemetry_metrics_source source, void *userdata);
