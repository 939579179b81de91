#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "basic/encoding.h"
#include "telemetry/otlp.h"
#include "telemetry/telemetry.h"

/* ---- traceparent (W3C Trace Context, section 3.2) ---- */

#define GOOD "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

Test(traceparent, parses_the_spec_example_and_formats_it_back)
{
    trace_context c;
    cr_assert_eq(trace_context_parse(GOOD, strlen(GOOD), &c), 0);
    cr_assert_eq(c.trace_id[0], 0x4b);
    cr_assert_eq(c.trace_id[15], 0x36);
    cr_assert_eq(c.span_id[0], 0x00);
    cr_assert_eq(c.span_id[7], 0xb7);
    cr_assert_eq(c.flags, 1);
    char out[56];
    trace_context_format(&c, out);
    cr_assert_str_eq(out, GOOD);
}

Test(traceparent, refuses_what_is_not_exactly_version_00)
{
    static const char *const bad[] = {
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", /* upper-case hex */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067aa0ba902b7-01", /* one upper-case digit */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* all-zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* all-zero span id */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff (invalid) */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* a future version: not taken as is */
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  /* short trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  /* short flags */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", /* extra fields for version 00 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", /* not hex */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* wrong separator */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        trace_context c = {.flags = 0x7e};
        cr_assert_eq(trace_context_parse(bad[i], strlen(bad[i]), &c), -EINVAL, "accepted %s", bad[i]);
        cr_assert_eq(c.flags, 0x7e, "wrote its output for %s", bad[i]);
    }
    cr_assert_eq(trace_context_parse(NULL, 0, &(trace_context){0}), -EINVAL);
    /* the length given is what counts, not a NUL further on */
    cr_assert_eq(trace_context_parse(GOOD "0", strlen(GOOD), &(trace_context){0}), 0);
    cr_assert_eq(trace_context_parse(GOOD, strlen(GOOD) - 1, &(trace_context){0}), -EINVAL);
}

Test(traceparent, new_contexts_are_valid_and_distinct)
{
    trace_context a, b, back;
    trace_context_new(&a);
    trace_context_new(&b);
    cr_assert(memcmp(a.trace_id, b.trace_id, 16) != 0);
    char out[56];
    trace_context_format(&a, out);
    cr_assert_eq(strlen(out), TRACEPARENT_LEN);
    cr_assert_eq(trace_context_parse(out, strlen(out), &back), 0);
    cr_assert(memcmp(&a, &back, sizeof(a)) == 0);
}

/* ---- the configuration from OTEL_* ---- */

typedef struct env {
    const char *const *vars; /* name, value, ..., NULL */
} env;

static const char *get(const char *name, void *userdata)
{
    const env *e = userdata;
    for (size_t i = 0; e->vars[i]; i += 2)
        if (strcmp(e->vars[i], name) == 0)
            return e->vars[i + 1];
    return NULL;
}

static const char *resource_value(const otlp_config *c, const char *key)
{
    size_t i;
    json_t *kv;
    json_array_foreach(c->resource, i, kv)
        if (strcmp(json_string_value(json_object_get(kv, "key")), key) == 0)
            return json_string_value(json_object_get(json_object_get(kv, "value"), "stringValue"));
    return NULL;
}

Test(config, off_without_an_endpoint)
{
    const char *vars[] = {"OTEL_SERVICE_NAME", "x", NULL};
    otlp_config c;
    const char *why = NULL;
    cr_assert_eq(otlp_config_parse(get, &(env){vars}, "cloisterd-api", &c, &why), 0);
    for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++)
        cr_assert_null(c.signal[s].url);
    otlp_config_free(&c);
}

Test(config, generic_endpoint_gets_the_signal_path_and_signal_endpoints_are_taken_as_they_are)
{
    const char *vars[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318",
                          "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9999/custom/path", NULL};
    otlp_config c;
    const char *why = NULL;
    cr_assert_eq(otlp_config_parse(get, &(env){vars}, "cloisterd-api", &c, &why), 0);
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].url, "http://collector:4318/v1/traces");
    cr_assert_str_eq(c.signal[TELEMETRY_METRICS].url, "http://collector:4318/v1/metrics");
    cr_assert_str_eq(c.signal[TELEMETRY_LOGS].url, "http://logs:9999/custom/path");
    cr_assert_str_eq(resource_value(&c, "service.name"), "cloisterd-api");
    otlp_config_free(&c);

    const char *slash[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example/otlp/", "OTEL_METRICS_EXPORTER", "none",
                           NULL};
    cr_assert_eq(otlp_config_parse(get, &(env){slash}, "s", &c, &why), 0);
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].url, "https://c.example/otlp/v1/traces");
    cr_assert_null(c.signal[TELEMETRY_METRICS].url);
    otlp_config_free(&c);

    const char *disabled[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_SDK_DISABLED", "true", NULL};
    cr_assert_eq(otlp_config_parse(get, &(env){disabled}, "s", &c, &why), 0);
    cr_assert_null(c.signal[TELEMETRY_TRACES].url);
    otlp_config_free(&c);
}

Test(config, a_signals_own_variables_win_over_the_generic_ones)
{
    const char *vars[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2",
                          "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "c=3", "OTEL_EXPORTER_OTLP_TIMEOUT", "2000",
                          "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "500", "OTEL_EXPORTER_OTLP_COMPRESSION", "none",
                          "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip", "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
                          "/etc/ssl/certs/ca-certificates.crt", NULL};
    otlp_config c;
    const char *why = NULL;
    cr_assert_eq(otlp_config_parse(get, &(env){vars}, "s", &c, &why), 0);
    cr_assert_eq(c.signal[TELEMETRY_TRACES].n_headers, 2);
    cr_assert_eq(c.signal[TELEMETRY_METRICS].n_headers, 2);
    cr_assert_eq(c.signal[TELEMETRY_LOGS].n_headers, 1);
    cr_assert_str_eq(c.signal[TELEMETRY_LOGS].headers[0].name, "c");
    cr_assert_eq(c.signal[TELEMETRY_TRACES].timeout_ms, 2000);
    cr_assert_eq(c.signal[TELEMETRY_METRICS].timeout_ms, 500);
    cr_assert(c.signal[TELEMETRY_TRACES].gzip);
    cr_assert_not(c.signal[TELEMETRY_METRICS].gzip);
    cr_assert_null(c.signal[TELEMETRY_TRACES].ca_file);
    cr_assert_str_eq(c.signal[TELEMETRY_LOGS].ca_file, "/etc/ssl/certs/ca-certificates.crt");
    otlp_config_free(&c);

    const char *plain[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", NULL};
    cr_assert_eq(otlp_config_parse(get, &(env){plain}, "s", &c, &why), 0);
    cr_assert(c.signal[TELEMETRY_LOGS].gzip); /* gzip unless told otherwise */
    cr_assert_eq(c.signal[TELEMETRY_LOGS].timeout_ms, 10000);
    otlp_config_free(&c);
}

Test(config, headers_are_trimmed_and_percent_decoded)
{
    const char *vars[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS",
                          " api-key = secret%20value ,authorization=Basic%20dTpw%3D%3D,, x-empty=", NULL};
    otlp_config c;
    const char *why = NULL;
    cr_assert_eq(otlp_config_parse(get, &(env){vars}, "s", &c, &why), 0);
    cr_assert_eq(c.signal[TELEMETRY_TRACES].n_headers, 3);
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[0].name, "api-key");
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[0].value, "secret value");
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[1].name, "authorization");
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[1].value, "Basic dTpw==");
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[2].name, "x-empty");
    cr_assert_str_eq(c.signal[TELEMETRY_TRACES].headers[2].value, "");
    otlp_config_free(&c);
}

Test(config, refuses_what_it_cannot_use_naming_the_variable)
{
    static const char *const cases[][4] = {
        {"OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "k=bad%zzescape", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "k=cut%4", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "k=a%0d%0aX-Injected: 1", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "bad name=v", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_HEADERS", "k=%00", "OTEL_EXPORTER_OTLP_HEADERS"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL (only http/json is spoken)"},
        {"OTEL_BSP_MAX_QUEUE_SIZE", "-5", "OTEL_BSP_MAX_QUEUE_SIZE"},
        {"OTEL_RESOURCE_ATTRIBUTES", "=v", "OTEL_RESOURCE_ATTRIBUTES"},
        {"OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "OTEL_EXPORTER_OTLP_COMPRESSION"},
        {"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "soon", "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"},
        {"OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *vars[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", cases[i][0], cases[i][1], NULL};
        otlp_config c;
        const char *why = NULL;
        cr_assert_eq(otlp_config_parse(get, &(env){vars}, "s", &c, &why), -EINVAL, "accepted %s=%s", cases[i][0],
                     cases[i][1]);
        cr_assert_str_eq(why, cases[i][2]);
    }
}

Test(config, resource_attributes_and_service_name_precedence)
{
    const char *vars[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_RESOURCE_ATTRIBUTES",
                          "deployment.environment=prod,service.name=from-attrs,team=a%2Cb", NULL};
    otlp_config c;
    const char *why = NULL;
    cr_assert_eq(otlp_config_parse(get, &(env){vars}, "cloisterd-kms", &c, &why), 0);
    cr_assert_str_eq(resource_value(&c, "deployment.environment"), "prod");
    cr_assert_str_eq(resource_value(&c, "team"), "a,b");
    cr_assert_str_eq(resource_value(&c, "service.name"), "from-attrs");
    otlp_config_free(&c);

    const char *named[] = {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318", "OTEL_RESOURCE_ATTRIBUTES",
                           "service.name=from-attrs", "OTEL_SERVICE_NAME", "from-var", NULL};
    cr_assert_eq(otlp_config_parse(get, &(env){named}, "cloisterd-kms", &c, &why), 0);
    cr_assert_str_eq(resource_value(&c, "service.name"), "from-var");
    cr_assert_eq(json_array_size(c.resource), 1);
    otlp_config_free(&c);
}

Test(config, urls_are_logged_without_their_password)
{
    char out[128];
    cr_assert_str_eq(otlp_loggable_url("https://u:secret@c.example:4318/v1/traces", out, sizeof(out)),
                     "https://***@c.example:4318/v1/traces");
    cr_assert_str_eq(otlp_loggable_url("http://c:4318/v1/logs?a=b@c", out, sizeof(out)), "http://c:4318/v1/logs?a=b@c");
    cr_assert_str_eq(otlp_loggable_url(NULL, out, sizeof(out)), "off");
}

/* ---- the JSON encoding ---- */

Test(encode, attributes_times_and_envelope_follow_the_json_rules)
{
    json_t *i = otlp_attr_int("http.response.status_code", 9007199254740993LL);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(i, "value"), "intValue")), "9007199254740993");
    json_decref(i);
    json_t *t = otlp_time(1700000000123456789ULL);
    cr_assert_str_eq(json_string_value(t), "1700000000123456789");
    json_decref(t);

    json_t *res = json_pack("[o]", otlp_attr_str("service.name", "cloisterd-api"));
    json_t *body = otlp_envelope(TELEMETRY_LOGS, res, json_array());
    json_t *rl = json_array_get(json_object_get(body, "resourceLogs"), 0);
    cr_assert_not_null(rl);
    cr_assert(json_equal(json_object_get(json_object_get(rl, "resource"), "attributes"), res));
    json_t *sl = json_array_get(json_object_get(rl, "scopeLogs"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(sl, "scope"), "name")), "cloister");
    cr_assert(json_is_array(json_object_get(sl, "logRecords")));
    json_decref(body);
    json_decref(res);

}

Test(encode, strings_are_valid_json_whatever_the_bytes)
{
    static const struct {
        const char *in;
        size_t max;
        const char *out;
    } cases[] = {
        {"plain", 100, "\"plain\""},
        {"q\"b\\n\n\x01\x7f", 100, "\"q\\\"b\\\\n\\u000a\\u0001\\u007f\""},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 100, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""},
        {"bad\xff\xc0\xaf", 100, "\"bad\\ufffd\\ufffd\\ufffd\""},         /* invalid, overlong */
        {"\xed\xa0\x80", 100, "\"\\ufffd\\ufffd\\ufffd\""},               /* a surrogate */
        {"abcdef", 3, "\"abc\""},
        {"ab\xc3\xa9", 3, "\"ab\\ufffd\""},                                 /* cut inside a character */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        _cleanup_strbuf_ strbuf b;
        strbuf_init(&b, 1024);
        cr_assert_eq(otlp_put_json_string(&b, cases[i].in, cases[i].max), 0);
        cr_assert_str_eq(b.data, cases[i].out, "case %zu", i);
        json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY, NULL);
        cr_assert(json_is_string(j), "case %zu is not a JSON string: %s", i, b.data);
        json_decref(j);
    }
}

Test(encode, the_text_envelope_is_the_json_one)
{
    const char *records[] = {"{\"a\":1}", "{\"b\":2}"};
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 4096);
    cr_assert_eq(otlp_envelope_text(&b, TELEMETRY_TRACES, "[]", records, 2), 0);
    json_t *got = json_loads(b.data, 0, NULL);
    json_t *res = json_array();
    json_t *want = otlp_envelope(TELEMETRY_TRACES, res, json_pack("[{s:i},{s:i}]", "a", 1, "b", 2));
    cr_assert(json_equal(got, want), "%s", b.data);
    json_decref(got);
    json_decref(want);
    json_decref(res);
}

static const char *attr_value(json_t *attrs, const char *key, const char *type)
{
    size_t i;
    json_t *kv;
    json_array_foreach(attrs, i, kv)
        if (strcmp(json_string_value(json_object_get(kv, "key")), key) == 0)
            return json_string_value(json_object_get(json_object_get(kv, "value"), type));
    return NULL;
}

Test(encode, escaping_never_writes_past_its_bound)
{
    /* the worst cases: every byte escaped as \u00XX, every byte invalid UTF-8 */
    char controls[64], invalid[64];
    memset(controls, 0x01, sizeof(controls));
    memset(invalid, 0xff, sizeof(invalid));
    const char *inputs[] = {controls, invalid};
    for (size_t i = 0; i < 2; i++) {
        size_t bound = OTLP_JSON_BOUND(sizeof(controls));
        char *out = malloc(bound); /* ASan catches one byte more */
        char *end = otlp_json_put(out, inputs[i], sizeof(controls));
        cr_assert_eq((size_t)(end - out), bound, "input %zu wrote %zu of %zu", i, (size_t)(end - out), bound);
        json_t *j = json_loadb(out, bound, JSON_DECODE_ANY, NULL);
        cr_assert(json_is_string(j));
        cr_assert_eq(json_string_length(j), i == 0 ? 64 : 64 * 3); /* U+0001, or U+FFFD in 3 bytes */
        json_decref(j);
        free(out);
    }
}

Test(encode, ids_and_integers)
{
    char out[64];
    const uint8_t id[] = {0x00, 0x0f, 0xa5, 0xff, 0x10};
    *otlp_hex_put(out, id, sizeof(id)) = '\0';
    cr_assert_str_eq(out, "000fa5ff10");
    *otlp_u64_put(out, 0) = '\0';
    cr_assert_str_eq(out, "0");
    *otlp_u64_put(out, UINT64_MAX) = '\0';
    cr_assert_str_eq(out, "18446744073709551615");
    *otlp_i64_put(out, INT64_MIN) = '\0';
    cr_assert_str_eq(out, "-9223372036854775808");
    *otlp_i64_put(out, -42) = '\0';
    cr_assert_str_eq(out, "-42");
}

/* S written into exactly otlp_span_bound(S) bytes (ASan watches the end)
 * and parsed. */
static json_t *span_json(const telemetry_span *s)
{
    size_t bound = otlp_span_bound(s);
    char *out = malloc(bound);
    char *end = otlp_span_write(out, s, s->start_ns + 5);
    cr_assert_leq((size_t)(end - out), bound);
    json_error_t err;
    json_t *j = json_loadb(out, (size_t)(end - out), 0, &err);
    cr_assert_not_null(j, "%s in %.*s", err.text, (int)(end - out), out);
    free(out);
    return j;
}

Test(encode, a_span_is_its_otlp_json_with_replaced_and_capped_attributes)
{
    telemetry_span *s = malloc(sizeof(*s));
    trace_context parent;
    cr_assert_eq(trace_context_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 55, &parent), 0);
    otlp_span_init(s, "GET \"/x\"\n", TELEMETRY_SPAN_CLIENT, &parent);
    char *huge = malloc(3 * OTLP_STRING_MAX);
    memset(huge, 'v', 3 * OTLP_STRING_MAX - 1);
    huge[3 * OTLP_STRING_MAX - 1] = '\0';
    cr_assert_eq(otlp_span_set_int(s, "n", 1), 0);
    cr_assert_eq(otlp_span_set_str(s, "bad", "a\x01\xff" "b"), 0);
    cr_assert_eq(otlp_span_set_str(s, "huge", huge), 0); /* past the inline text: on the heap */
    cr_assert_eq(otlp_span_set_int(s, "n", -7), 0);       /* replaces the first */
    cr_assert_eq(otlp_span_set_str(s, "bad", "ok"), 0);   /* and again, from the middle */
    for (int i = 0; i < OTLP_SPAN_ATTRS_MAX; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(otlp_span_set_int(s, key, i), i < OTLP_SPAN_ATTRS_MAX - 3 ? 0 : -ENOSPC, "attribute %d", i);
    }
    telemetry_span_set_status(s, TELEMETRY_STATUS_ERROR, "no \"answer\"");
    trace_context link = parent;
    link.flags = 0;
    telemetry_span_add_link(s, &link);
    telemetry_span_add_link(s, &link);

    json_t *j = span_json(s);
    cr_assert_str_eq(json_string_value(json_object_get(j, "traceId")), "4bf92f3577b34da6a3ce929d0e0e4736");
    cr_assert_str_eq(json_string_value(json_object_get(j, "parentSpanId")), "00f067aa0ba902b7");
    char span_hex[17];
    hex_encode(s->ctx.span_id, 8, span_hex);
    cr_assert_str_eq(json_string_value(json_object_get(j, "spanId")), span_hex);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "GET \"/x\"\n");
    cr_assert_eq(json_integer_value(json_object_get(j, "kind")), 3);
    cr_assert_eq(json_integer_value(json_object_get(j, "flags")), 0x101);
    cr_assert_eq(strtoull(json_string_value(json_object_get(j, "endTimeUnixNano")), NULL, 10),
                 strtoull(json_string_value(json_object_get(j, "startTimeUnixNano")), NULL, 10) + 5);
    json_t *attrs = json_object_get(j, "attributes");
    cr_assert_eq(json_array_size(attrs), OTLP_SPAN_ATTRS_MAX);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(attrs, 0), "key")), "huge");
    cr_assert_eq(strlen(attr_value(attrs, "huge", "stringValue")), OTLP_STRING_MAX);
    cr_assert_str_eq(attr_value(attrs, "n", "intValue"), "-7");
    cr_assert_str_eq(attr_value(attrs, "bad", "stringValue"), "ok");
    cr_assert_str_eq(attr_value(attrs, "k60", "intValue"), "60");
    json_t *links = json_object_get(j, "links");
    cr_assert_eq(json_array_size(links), 2);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(links, 1), "flags")), 0);
    json_t *status = json_object_get(j, "status");
    cr_assert_eq(json_integer_value(json_object_get(status, "code")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(status, "message")), "no \"answer\"");
    json_decref(j);

    /* a string value with a control character and invalid UTF-8 */
    otlp_span_release(s);
    otlp_span_init(s, "x", TELEMETRY_SPAN_SERVER, NULL);
    cr_assert_eq(otlp_span_set_str(s, "bad\x02", "a\x01\xff" "b"), 0);
    j = span_json(s);
    cr_assert_null(json_object_get(j, "parentSpanId"));
    cr_assert_str_eq(attr_value(json_object_get(j, "attributes"), "bad\x02", "stringValue"), "a\x01\xef\xbf\xbd" "b");
    cr_assert_eq(json_array_size(json_object_get(j, "links")), 0);
    cr_assert_null(json_object_get(json_object_get(j, "status"), "message"));
    json_decref(j);
    otlp_span_release(s);
    free(s);
    free(huge);
}

Test(encode, a_log_record_is_its_otlp_json_with_capped_strings)
{
    char *huge = malloc(2 * OTLP_STRING_MAX);
    memset(huge, 'b', 2 * OTLP_STRING_MAX - 1);
    huge[2 * OTLP_STRING_MAX - 1] = '\0';
    const char *attrs[2 * OTLP_SPAN_ATTRS_MAX + 8];
    char keys[OTLP_SPAN_ATTRS_MAX + 4][16];
    size_t n = 0;
    attrs[n++] = "ctl";
    attrs[n++] = "\x1f\"\\\xc3";
    for (int i = 0; i < OTLP_SPAN_ATTRS_MAX + 2; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        attrs[n++] = keys[i];
        attrs[n++] = huge;
    }
    attrs[n] = NULL;
    trace_context ctx;
    trace_context_new(&ctx);
    const otlp_log l = {.time_ns = 1700000000123456789ULL, .severity = TELEMETRY_SEVERITY_WARN, .body = huge,
                        .ctx = &ctx, .attrs = attrs};
    size_t bound = otlp_log_bound(&l);
    char *out = malloc(bound);
    char *end = otlp_log_write(out, &l);
    cr_assert_leq((size_t)(end - out), bound);
    json_t *j = json_loadb(out, (size_t)(end - out), 0, NULL);
    cr_assert_not_null(j);
    cr_assert_str_eq(json_string_value(json_object_get(j, "timeUnixNano")), "1700000000123456789");
    cr_assert_eq(json_integer_value(json_object_get(j, "severityNumber")), 13);
    cr_assert_str_eq(json_string_value(json_object_get(j, "severityText")), "WARN");
    cr_assert_eq(strlen(json_string_value(json_object_get(json_object_get(j, "body"), "stringValue"))),
                 OTLP_STRING_MAX);
    json_t *a = json_object_get(j, "attributes");
    cr_assert_eq(json_array_size(a), OTLP_SPAN_ATTRS_MAX);
    cr_assert_str_eq(attr_value(a, "ctl", "stringValue"), "\x1f\"\\\xef\xbf\xbd");
    cr_assert_eq(strlen(attr_value(a, "k0", "stringValue")), OTLP_STRING_MAX);
    char hex[33];
    hex_encode(ctx.trace_id, 16, hex);
    cr_assert_str_eq(json_string_value(json_object_get(j, "traceId")), hex);
    hex_encode(ctx.span_id, 8, hex);
    cr_assert_str_eq(json_string_value(json_object_get(j, "spanId")), hex);
    json_decref(j);
    free(out);

    const otlp_log bare = {.severity = TELEMETRY_SEVERITY_DEBUG};
    out = malloc(otlp_log_bound(&bare));
    end = otlp_log_write(out, &bare);
    j = json_loadb(out, (size_t)(end - out), 0, NULL);
    cr_assert_not_null(j);
    cr_assert_null(json_object_get(j, "traceId"));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "body"), "stringValue")), "");
    json_decref(j);
    free(out);
    free(huge);
}

static json_t *metric_named(json_t *metrics, const char *name)
{
    size_t i;
    json_t *m;
    json_array_foreach(metrics, i, m)
        if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0)
            return m;
    return NULL;
}

Test(encode, prometheus_text_becomes_otlp_metrics)
{
    const char *text =
        "# HELP cloister_api_requests_total API requests.\n"
        "# TYPE cloister_api_requests_total counter\n"
        "cloister_api_requests_total{route=\"/v1/{kind}\",method=\"GET\",status=\"200\"} 7\n"
        "cloister_api_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2\n"
        "# HELP cloister_api_request_duration_seconds Latency.\n"
        "# TYPE cloister_api_request_duration_seconds histogram\n"
        "cloister_api_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1\n"
        "cloister_api_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.01\"} 2\n"
        "cloister_api_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 3\n"
        "cloister_api_request_duration_seconds_sum{route=\"/healthz\"} 0.5\n"
        "cloister_api_request_duration_seconds_count{route=\"/healthz\"} 3\n"
        "# TYPE cloister_proxy_connections gauge\n"
        "cloister_proxy_connections 4\n"
        "# TYPE cloister_empty_total counter\n"
        "# TYPE cloister_ratio gauge\n"
        "cloister_ratio{a=\"x\\\"y\"} 0.25\n";
    json_t *metrics = json_array();
    cr_assert_eq(otlp_metrics_from_prometheus(text, 100, 200, metrics), 0);
    cr_assert_eq(json_array_size(metrics), 4, "%s", json_dumps(metrics, 0));
    cr_assert_null(metric_named(metrics, "cloister_empty"));

    json_t *sum = json_object_get(metric_named(metrics, "cloister_api_requests"), "sum");
    cr_assert_not_null(sum);
    cr_assert_eq(json_integer_value(json_object_get(sum, "aggregationTemporality")), 2);
    cr_assert(json_is_true(json_object_get(sum, "isMonotonic")));
    json_t *p0 = json_array_get(json_object_get(sum, "dataPoints"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(p0, "asInt")), "7");
    cr_assert_str_eq(json_string_value(json_object_get(p0, "startTimeUnixNano")), "100");
    cr_assert_str_eq(json_string_value(json_object_get(p0, "timeUnixNano")), "200");
    cr_assert_eq(json_array_size(json_object_get(p0, "attributes")), 3);

    json_t *m = metric_named(metrics, "cloister_api_request_duration_seconds");
    cr_assert_str_eq(json_string_value(json_object_get(m, "unit")), "s");
    json_t *h = json_object_get(m, "histogram");
    cr_assert_eq(json_integer_value(json_object_get(h, "aggregationTemporality")), 2);
    json_t *hp = json_array_get(json_object_get(h, "dataPoints"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(hp, "count")), "3");
    cr_assert(json_real_value(json_object_get(hp, "sum")) == 0.5);
    json_t *counts = json_object_get(hp, "bucketCounts"), *bounds = json_object_get(hp, "explicitBounds");
    cr_assert_eq(json_array_size(counts), 3);
    cr_assert_eq(json_array_size(bounds), 2);
    cr_assert_str_eq(json_string_value(json_array_get(counts, 0)), "1");
    cr_assert_str_eq(json_string_value(json_array_get(counts, 1)), "1");
    cr_assert_str_eq(json_string_value(json_array_get(counts, 2)), "1");
    cr_assert(json_real_value(json_array_get(bounds, 1)) == 0.01);
    /* le is no attribute of the point */
    cr_assert_eq(json_array_size(json_object_get(hp, "attributes")), 1);

    json_t *g = json_object_get(metric_named(metrics, "cloister_proxy_connections"), "gauge");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(g, "dataPoints"), 0), "asInt")),
                     "4");
    json_t *ratio = json_array_get(json_object_get(json_object_get(metric_named(metrics, "cloister_ratio"), "gauge"),
                                                   "dataPoints"), 0);
    cr_assert(json_real_value(json_object_get(ratio, "asDouble")) == 0.25);
    json_t *attr = json_array_get(json_object_get(ratio, "attributes"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(attr, "value"), "stringValue")), "x\"y");
    json_decref(metrics);
}

/* ---- the retry policy ---- */

Test(retry, only_429_502_503_504_and_no_answer_are_retried)
{
    unsigned d;
    static const long retried[] = {0, 429, 502, 503, 504};
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(otlp_retry_delay(retried[i], NULL, 1, 0, &d), 0, "status %ld", retried[i]);
    static const long not_retried[] = {200, 204, 400, 401, 403, 404, 413, 500, 501};
    for (size_t i = 0; i < sizeof(not_retried) / sizeof(not_retried[0]); i++)
        cr_assert_eq(otlp_retry_delay(not_retried[i], "1", 1, 0, &d), -1, "status %ld", not_retried[i]);
}

Test(retry, backoff_doubles_is_capped_and_attempts_run_out)
{
    unsigned d;
    cr_assert_eq(otlp_retry_delay(503, NULL, 1, 0, &d), 0);
    cr_assert_eq(d, OTLP_RETRY_BASE_MS);
    cr_assert_eq(otlp_retry_delay(503, NULL, 2, 0, &d), 0);
    cr_assert_eq(d, 2 * OTLP_RETRY_BASE_MS);
    cr_assert_eq(otlp_retry_delay(0, NULL, 4, 0, &d), 0);
    cr_assert_eq(d, 8 * OTLP_RETRY_BASE_MS);
    cr_assert_eq(otlp_retry_delay(503, NULL, OTLP_RETRY_ATTEMPTS, 0, &d), -1);
}

Test(retry, retry_after_in_seconds_or_as_a_date_is_honoured_and_capped)
{
    unsigned d;
    cr_assert_eq(otlp_retry_delay(429, "3", 1, 0, &d), 0);
    cr_assert_eq(d, 3000);
    cr_assert_eq(otlp_retry_delay(503, " 2 ", 1, 0, &d), 0);
    cr_assert_eq(d, 2000);
    cr_assert_eq(otlp_retry_delay(429, "86400", 1, 0, &d), 0);
    cr_assert_eq(d, OTLP_RETRY_MAX_MS);
    /* Sun, 06 Nov 1994 08:49:37 GMT is 784111777 */
    cr_assert_eq(otlp_retry_delay(429, "Sun, 06 Nov 1994 08:49:37 GMT", 1, 784111770, &d), 0);
    cr_assert_eq(d, 7000);
    cr_assert_eq(otlp_retry_delay(429, "Sun, 06 Nov 1994 08:49:37 GMT", 1, 784111999, &d), 0);
    cr_assert_eq(d, 0);
    /* unparseable: the backoff */
    cr_assert_eq(otlp_retry_delay(429, "soon", 1, 0, &d), 0);
    cr_assert_eq(d, OTLP_RETRY_BASE_MS);
}

/* ---- export off ---- */

Test(api, everything_is_a_no_op_when_export_is_off)
{
    cr_assert_not(telemetry_enabled());
    telemetry_span *s = telemetry_span_start("x", TELEMETRY_SPAN_SERVER, NULL);
    cr_assert_null(s);
    telemetry_span_set_attr_str(s, "a", "b");
    telemetry_span_set_status(s, TELEMETRY_STATUS_ERROR, "m");
    trace_context c = {.flags = 9};
    cr_assert_not(telemetry_span_context(s, &c));
    cr_assert_eq(c.flags, 9);
    telemetry_span_end(s);
    telemetry_log(TELEMETRY_SEVERITY_INFO, "x", NULL, NULL);
    cr_assert_eq(telemetry_dropped(TELEMETRY_LOGS), 0);
    telemetry_shutdown();
}

/* ---- the exporter against a collector on loopback ---- */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

/* A minimal OTLP/HTTP collector: answers 200 to every POST and keeps each
 * request's path and gunzipped body. */
#define COLLECTOR_MAX 256
typedef struct collector {
    int fd;
    pthread_mutex_t lock;
    char paths[COLLECTOR_MAX][32];
    json_t *bodies[COLLECTOR_MAX];
    char encodings[COLLECTOR_MAX][32];
    size_t n;
} collector;

static json_t *gunzip_json(const unsigned char *p, size_t n)
{
    z_stream z = {0};
    if (inflateInit2(&z, 15 + 16) != Z_OK)
        return NULL;
    size_t cap = 1 << 20;
    unsigned char *out = malloc(cap);
    z.next_in = (unsigned char *)p;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int e = inflate(&z, Z_FINISH);
    json_t *j = e == Z_STREAM_END ? json_loadb((char *)out, z.total_out, 0, NULL) : NULL;
    inflateEnd(&z);
    free(out);
    return j;
}

static void serve_connection(collector *c, int fd)
{
    static char buf[1 << 20];
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            ssize_t k = read(fd, buf + have, sizeof(buf) - have);
            if (k <= 0)
                return;
            have += (size_t)k;
        }
        size_t head = (size_t)(end + 4 - buf);
        char path[32] = "", encoding[32] = "";
        sscanf(buf, "POST %31s", path);
        const char *cl = strcasestr(buf, "\r\nContent-Length:"), *ce = strcasestr(buf, "\r\nContent-Encoding:");
        size_t len = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
        if (ce && ce < end)
            sscanf(ce + 19, " %31[^\r]", encoding);
        while (have < head + len) {
            ssize_t k = read(fd, buf + have, sizeof(buf) - have);
            if (k <= 0)
                return;
            have += (size_t)k;
        }
        json_t *body = gunzip_json((unsigned char *)buf + head, len);
        pthread_mutex_lock(&c->lock);
        if (c->n < COLLECTOR_MAX) {
            snprintf(c->paths[c->n], sizeof(c->paths[0]), "%s", path);
            snprintf(c->encodings[c->n], sizeof(c->encodings[0]), "%s", encoding);
            c->bodies[c->n++] = body;
        } else
            json_decref(body);
        pthread_mutex_unlock(&c->lock);
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if (write(fd, ok, sizeof(ok) - 1) < 0)
            return;
        memmove(buf, buf + head + len, have - head - len);
        have -= head + len;
    }
}

static void *collector_main(void *arg)
{
    collector *c = arg;
    for (;;) {
        int fd = accept(c->fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        serve_connection(c, fd);
        close(fd);
    }
}

static json_t *body_of(collector *c, const char *path)
{
    pthread_mutex_lock(&c->lock);
    json_t *found = NULL;
    for (size_t i = 0; i < c->n && !found; i++)
        if (strcmp(c->paths[i], path) == 0) {
            cr_assert_str_eq(c->encodings[i], "gzip");
            found = c->bodies[i];
        }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static int one_counter(strbuf *out, void *userdata)
{
    return strbuf_printf(out, "# TYPE test_things_total counter\ntest_things_total{a=\"b\"} %d\n", *(int *)userdata);
}


/* Starts collector C on a loopback port of its own, on thread *T, and
 * points OTEL_EXPORTER_OTLP_ENDPOINT at it. */
static void collector_start(collector *c, pthread_t *t)
{
    *c = (collector){.lock = PTHREAD_MUTEX_INITIALIZER};
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    cr_assert_eq(bind(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(c->fd, 8), 0);
    getsockname(c->fd, (struct sockaddr *)&a, &alen);
    pthread_create(t, NULL, collector_main, c);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(a.sin_port));
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url, 1);
}

static void collector_stop(collector *c, pthread_t t)
{
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    pthread_join(t, NULL);
    for (size_t i = 0; i < c->n; i++)
        json_decref(c->bodies[i]);
}

Test(exporter, sends_spans_logs_and_metrics_as_otlp_json_and_flushes_at_shutdown)
{
    collector c;
    pthread_t t;
    collector_start(&c, &t);
    setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-test=1", 1);
    setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000", 1); /* only the shutdown's export */

    cr_assert_eq(telemetry_init("cloisterd-test"), 0);
    cr_assert(telemetry_enabled());
    int things = 42;
    cr_assert_eq(telemetry_metrics_register(one_counter, &things), 0);
    trace_context remote;
    trace_context_new(&remote);
    telemetry_span *root = telemetry_span_start("GET /v1/whoami", TELEMETRY_SPAN_SERVER, NULL);
    cr_assert_not_null(root);
    telemetry_span_set_attr_str(root, "http.route", "/v1/whoami");
    telemetry_span_set_attr_int(root, "http.response.status_code", 503);
    telemetry_span_set_attr_int(root, "http.response.status_code", 200); /* replaced, not repeated */
    telemetry_span_add_link(root, &remote);
    trace_context rc;
    cr_assert(telemetry_span_context(root, &rc));
    telemetry_span *child = telemetry_span_start("kms /v1/encrypt", TELEMETRY_SPAN_CLIENT, &rc);
    telemetry_span_set_status(child, TELEMETRY_STATUS_ERROR, "refused");
    trace_context cc;
    cr_assert(telemetry_span_context(child, &cc));
    telemetry_span_end(child);
    telemetry_span_end(root);
    telemetry_log(TELEMETRY_SEVERITY_WARN, "something happened", &cc,
                  (const char *const[]){"request.id", "r1", "user", "alice", NULL});
    telemetry_shutdown(); /* flushes: no waiting for the schedule */
    cr_assert_not(telemetry_enabled());

    char trace_hex[33], root_hex[17], child_hex[17], remote_hex[33];
    hex_encode(rc.trace_id, 16, trace_hex);
    hex_encode(rc.span_id, 8, root_hex);
    hex_encode(cc.span_id, 8, child_hex);
    hex_encode(remote.trace_id, 16, remote_hex);

    json_t *traces = body_of(&c, "/v1/traces");
    cr_assert_not_null(traces, "no /v1/traces request");
    json_t *rs = json_array_get(json_object_get(traces, "resourceSpans"), 0);
    json_t *res = json_object_get(json_object_get(rs, "resource"), "attributes");
    cr_assert_str_eq(attr_value(res, "service.name", "stringValue"), "cloisterd-test");
    cr_assert_str_eq(attr_value(res, "cloister.role", "stringValue"), "test");
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    cr_assert_str_eq(attr_value(res, "process.pid", "intValue"), pid);
    cr_assert_eq(strlen(attr_value(res, "service.instance.id", "stringValue")), 36);
    json_t *spans = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    cr_assert_eq(json_array_size(spans), 2);
    json_t *ch = json_array_get(spans, 0), *rt = json_array_get(spans, 1);
    cr_assert_str_eq(json_string_value(json_object_get(ch, "traceId")), trace_hex);
    cr_assert_str_eq(json_string_value(json_object_get(ch, "spanId")), child_hex);
    cr_assert_str_eq(json_string_value(json_object_get(ch, "parentSpanId")), root_hex);
    cr_assert_eq(json_integer_value(json_object_get(ch, "kind")), 3);
    json_t *st = json_object_get(ch, "status");
    cr_assert_eq(json_integer_value(json_object_get(st, "code")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(st, "message")), "refused");
    cr_assert_null(json_object_get(rt, "parentSpanId"));
    cr_assert_eq(json_integer_value(json_object_get(rt, "kind")), 2);
    cr_assert_eq(json_array_size(json_object_get(rt, "attributes")), 2);
    cr_assert_str_eq(attr_value(json_object_get(rt, "attributes"), "http.response.status_code", "intValue"), "200");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(rt, "links"), 0), "traceId")),
                     remote_hex);
    cr_assert(json_is_string(json_object_get(rt, "startTimeUnixNano")));
    cr_assert(strtoull(json_string_value(json_object_get(rt, "endTimeUnixNano")), NULL, 10) >=
              strtoull(json_string_value(json_object_get(rt, "startTimeUnixNano")), NULL, 10));

    json_t *logs = body_of(&c, "/v1/logs");
    cr_assert_not_null(logs, "no /v1/logs request");
    json_t *rec = json_array_get(
        json_object_get(json_array_get(json_object_get(json_array_get(json_object_get(logs, "resourceLogs"), 0),
                                                       "scopeLogs"), 0), "logRecords"), 0);
    cr_assert_eq(json_integer_value(json_object_get(rec, "severityNumber")), 13);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(rec, "body"), "stringValue")),
                     "something happened");
    cr_assert_str_eq(json_string_value(json_object_get(rec, "traceId")), trace_hex);
    cr_assert_str_eq(json_string_value(json_object_get(rec, "spanId")), child_hex);
    cr_assert_str_eq(attr_value(json_object_get(rec, "attributes"), "user", "stringValue"), "alice");

    json_t *metrics = body_of(&c, "/v1/metrics");
    cr_assert_not_null(metrics, "no /v1/metrics request");
    char *text = json_dumps(metrics, JSON_COMPACT);
    cr_assert(strstr(text, "\"name\":\"test_things\""), "%s", text);
    cr_assert(strstr(text, "\"asInt\":\"42\""), "%s", text);
    cr_assert(strstr(text, "\"name\":\"cloister_telemetry_dropped\""), "%s", text);
    free(text);
    cr_assert_eq(telemetry_dropped(TELEMETRY_TRACES), 0);
    cr_assert_eq(telemetry_dropped(TELEMETRY_LOGS), 0);
    collector_stop(&c, t);
}

#define RECORDING_THREADS 4
#define SPANS_PER_THREAD 300

/* Records SPANS_PER_THREAD spans, named after the thread (ARG), and ends. */
static void *record_spans(void *arg)
{
    for (int i = 0; i < SPANS_PER_THREAD; i++) {
        telemetry_span *s = telemetry_span_start(arg, TELEMETRY_SPAN_INTERNAL, NULL);
        telemetry_span_set_attr_int(s, "i", i);
        telemetry_span_end(s);
    }
    return NULL;
}

Test(exporter, records_of_threads_that_ended_all_arrive_in_batches_of_at_most_the_batch_size)
{
    collector c;
    pthread_t t;
    collector_start(&c, &t);
    setenv("OTEL_METRICS_EXPORTER", "none", 1);
    setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100000", 1);
    setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100", 1);
    cr_assert_eq(telemetry_init("cloisterd-test"), 0);
    pthread_t threads[RECORDING_THREADS];
    char names[RECORDING_THREADS][16];
    for (int i = 0; i < RECORDING_THREADS; i++) {
        snprintf(names[i], sizeof(names[i]), "thread %d", i);
        pthread_create(&threads[i], NULL, record_spans, names[i]);
    }
    for (int i = 0; i < RECORDING_THREADS; i++)
        pthread_join(threads[i], NULL); /* their half-full buffers go to the exporter as they end */
    telemetry_shutdown();
    cr_assert_eq(telemetry_dropped(TELEMETRY_TRACES), 0);

    int seen[RECORDING_THREADS][SPANS_PER_THREAD] = {{0}};
    size_t total = 0;
    for (size_t b = 0; b < c.n; b++) {
        cr_assert_str_eq(c.paths[b], "/v1/traces");
        json_t *spans = json_object_get(
            json_array_get(json_object_get(json_array_get(json_object_get(c.bodies[b], "resourceSpans"), 0),
                                           "scopeSpans"), 0), "spans");
        cr_assert_leq(json_array_size(spans), 100, "a batch of %zu", json_array_size(spans));
        size_t i;
        json_t *span;
        json_array_foreach(spans, i, span) {
            int thread = -1;
            sscanf(json_string_value(json_object_get(span, "name")), "thread %d", &thread);
            cr_assert(thread >= 0 && thread < RECORDING_THREADS);
            int n = atoi(attr_value(json_object_get(span, "attributes"), "i", "intValue"));
            cr_assert(n >= 0 && n < SPANS_PER_THREAD);
            seen[thread][n]++;
            total++;
        }
    }
    cr_assert_eq(total, RECORDING_THREADS * SPANS_PER_THREAD);
    for (int i = 0; i < RECORDING_THREADS; i++)
        for (int n = 0; n < SPANS_PER_THREAD; n++)
            cr_assert_eq(seen[i][n], 1, "span %d of thread %d arrived %d times", n, i, seen[i][n]);
    collector_stop(&c, t);
}
