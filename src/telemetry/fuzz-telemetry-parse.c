/* libFuzzer target: what the telemetry module parses. A traceparent a
 * client sends (the proxy and the API read it): anything accepted formats
 * back to exactly the bytes given. OTEL_* key=value lists: no crash, every
 * pair handed over is NUL-free and freed. Prometheus text (our own
 * /metrics, converted for OTLP): no crash, and every metric it makes has
 * data points. Any bytes as an attribute value (a path, a User-Agent):
 * always a JSON string a collector parses. The first byte picks the parser. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "telemetry/otlp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int take_pair(char *key, char *value, void *userdata)
{
    size_t *n = userdata;
    if (!*key)
        abort(); /* an empty key is refused, never handed over */
    (*n)++;
    free(key);
    free(value);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0] % 4;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    if (which == 0) {
        trace_context c;
        if (trace_context_parse(in, n, &c) == 0) {
            char out[56];
            trace_context_format(&c, out);
            if (n != TRACEPARENT_LEN || memcmp(out, in, n) != 0)
                abort();
        }
        return 0;
    }
    char *text = malloc(n + 1);
    if (!text)
        return 0;
    memcpy(text, in, n);
    text[n] = '\0';
    if (which == 1) {
        size_t pairs = 0;
        (void)otlp_parse_pairs(text, take_pair, &pairs);
    } else if (which == 3) {
        strbuf b;
        strbuf_init(&b, 8 * n + 16);
        if (otlp_put_json_string(&b, text, n) < 0)
            abort();
        json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY, NULL);
        if (!json_is_string(j))
            abort();
        json_decref(j);
        strbuf_free(&b);
    } else {
        json_t *metrics = json_array();
        if (metrics && otlp_metrics_from_prometheus(text, 1, 2, metrics) == 0) {
            size_t i;
            json_t *m;
            json_array_foreach(metrics, i, m) {
                json_t *d = json_object_get(m, "sum") ?: json_object_get(m, "gauge") ?: json_object_get(m, "histogram");
                if (json_array_size(json_object_get(d, "dataPoints")) == 0)
                    abort();
            }
        }
        json_decref(metrics);
    }
    free(text);
    return 0;
}
