/* libFuzzer target: the tracestate filter (trace-state.c) on arbitrary
 * bytes, as a client's tracestate headers. Checks that what it passes fits
 * its cap, is a fixed point of the filter, and holds only members of the
 * input. (traceparent is parsed by trace_context_parse(), which
 * fuzz-telemetry-parse covers.) */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/trace-state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char out[PROXY_TRACESTATE_MAX + 1], again[PROXY_TRACESTATE_MAX + 1];
    int w = proxy_tracestate_filter(s, size, out, sizeof(out));
    if (w < 0) {
        if (w != -EINVAL)
            abort();
        return 0;
    }
    if ((size_t)w > PROXY_TRACESTATE_MAX || strlen(out) != (size_t)w)
        abort();
    if (proxy_tracestate_filter(out, (size_t)w, again, sizeof(again)) != w || memcmp(out, again, (size_t)w) != 0)
        abort();
    /* every member passed is one the client sent */
    for (char *m = out; w > 0 && m;) {
        char *comma = strchr(m, ',');
        size_t len = comma ? (size_t)(comma - m) : strlen(m);
        if (len == 0 || !memmem(s, size, m, len))
            abort();
        m = comma ? comma + 1 : NULL;
    }
    return 0;
}
