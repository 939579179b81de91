/* libFuzzer target: the trace context the proxy reads from clients, on
 * arbitrary bytes. The first byte picks the header: traceparent (through
 * trace_context_parse(), the one parser) or tracestate (the proxy's filter,
 * trace-state.c). Checks that an accepted traceparent is exactly what
 * formatting its context gives back (so nothing but canonical version-00
 * values is ever taken) with non-zero ids, and that a filtered tracestate
 * fits its cap, is a fixed point of the filter, and holds only members of
 * the input. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/trace-state.h"
#include "telemetry/telemetry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void check_traceparent(const char *s, size_t n)
{
    trace_context c;
    if (trace_context_parse(s, n, &c) < 0)
        return;
    char out[56];
    trace_context_format(&c, out);
    if (n != TRACEPARENT_LEN || memcmp(out, s, n) != 0 || all_zero(c.trace_id, 16) || all_zero(c.span_id, 8))
        abort();
    trace_context again;
    if (trace_context_parse(out, strlen(out), &again) < 0 || memcmp(&again, &c, sizeof(c)) != 0)
        abort();
}

static void check_tracestate(const char *s, size_t n)
{
    char out[PROXY_TRACESTATE_MAX + 1], again[PROXY_TRACESTATE_MAX + 1];
    int w = proxy_tracestate_filter(s, n, out, sizeof(out));
    if (w < 0) {
        if (w != -EINVAL)
            abort();
        return;
    }
    if ((size_t)w > PROXY_TRACESTATE_MAX || strlen(out) != (size_t)w)
        abort();
    if (proxy_tracestate_filter(out, (size_t)w, again, sizeof(again)) != w || memcmp(out, again, (size_t)w) != 0)
        abort();
    /* every member passed is one the client sent */
    for (char *m = out; w > 0 && m;) {
        char *comma = strchr(m, ',');
        size_t len = comma ? (size_t)(comma - m) : strlen(m);
        if (len == 0 || !memmem(s, n, m, len))
            abort();
        m = comma ? comma + 1 : NULL;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    if (data[0] & 1)
        check_tracestate(s, size - 1);
    else
        check_traceparent(s, size - 1);
    return 0;
}
