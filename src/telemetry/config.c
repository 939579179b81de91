/* The exporter's configuration from the OTEL_* variables
 * (https://opentelemetry.io/docs/specs/otel/protocol/exporter/ and
 * .../configuration/sdk-environment-variables/). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "telemetry/otlp.h"

#define URL_MAX 2048
#define RESOURCE_ATTRS_MAX 64

int otlp_percent_decode(const char *s, size_t n, char **ret)
{
    char *out = malloc(n + 1);
    if (!out)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3) { /* fewer than two characters follow */
                free(out);
                return -EINVAL;
            }
            int h = hex_digit_value(s[i + 1]), l = hex_digit_value(s[i + 2]);
            if (h < 0 || l < 0) {
                free(out);
                return -EINVAL;
            }
            c = (char)(h << 4 | l);
            i += 2;
        }
        if (c == '\0') {
            free(out);
            return -EINVAL;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    *ret = out;
    return 0;
}

/* S[0..N) without blanks at either end: *RET_START, *RET_N. */
static void trim(const char *s, size_t n, const char **ret_start, size_t *ret_n)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    *ret_start = s;
    *ret_n = n;
}

int otlp_parse_pairs(const char *s, int (*add)(char *key, char *value, void *userdata), void *userdata)
{
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *item;
        size_t n;
        trim(p, len, &item, &n);
        if (n) { /* an empty item ("a=b,,c=d", a trailing comma) is skipped */
            const char *eq = memchr(item, '=', n);
            if (!eq)
                return -EINVAL;
            const char *k, *v;
            size_t kn, vn;
            trim(item, (size_t)(eq - item), &k, &kn);
            trim(eq + 1, n - (size_t)(eq + 1 - item), &v, &vn);
            if (!kn)
                return -EINVAL;
            char *key = NULL, *value = NULL;
            int r = otlp_percent_decode(k, kn, &key);
            if (r == 0)
                r = otlp_percent_decode(v, vn, &value);
            if (r < 0) {
                free(key);
                return r;
            }
            if ((r = add(key, value, userdata)) < 0)
                return r;
        }
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static int add_header(char *key, char *value, void *userdata)
{
    otlp_signal_config *c = userdata;
    /* a header name is a token: no separators, no control characters (curl
     * would otherwise send what the variable smuggles in) */
    bool ok = c->n_headers < OTLP_HEADERS_MAX;
    for (const char *p = key; ok && *p; p++)
        ok = *p > 0x20 && *p < 0x7f && !strchr("()<>@,;:\\\"/[]?={}", *p);
    for (const char *p = value; ok && *p; p++)
        ok = (unsigned char)*p >= 0x20 && *p != 0x7f;
    if (!ok) {
        free(key);
        free(value);
        return -EINVAL;
    }
    c->headers[c->n_headers++] = (otlp_header){key, value};
    return 0;
}

typedef struct resource_build {
    json_t *attrs;
    bool has_service_name;
} resource_build;

static int add_resource(char *key, char *value, void *userdata)
{
    resource_build *b = userdata;
    int r = 0;
    if (json_array_size(b->attrs) >= RESOURCE_ATTRS_MAX)
        r = -EINVAL;
    else if (json_array_append_new(b->attrs, otlp_attr_str(key, value)) < 0)
        r = -ENOMEM;
    if (r == 0 && strcmp(key, "service.name") == 0)
        b->has_service_name = true;
    free(key);
    free(value);
    return r;
}

/* The value of variable NAME parsed as a positive integer up to MAX into
 * *RET; unset leaves *RET alone. */
static int parse_uint(otlp_getenv get, void *ud, const char *name, unsigned max, unsigned *ret)
{
    const char *v = get(name, ud);
    if (!v || !*v)
        return 0;
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || *end || n == 0 || n > max || v[0] == '-')
        return -EINVAL;
    *ret = (unsigned)n;
    return 0;
}

static bool http_url(const char *u)
{
    return strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

/* The url of one signal: its own variable as it is, else the generic
 * endpoint with v1/<signal> appended. */
static int signal_url(otlp_getenv get, void *ud, const char *own_var, const char *exporter_var, const char *path,
                      char **ret, const char **why)
{
    const char *exporter = get(exporter_var, ud);
    if (exporter && strcmp(exporter, "none") == 0)
        return 0;
    if (exporter && *exporter && strcmp(exporter, "otlp") != 0) {
        *why = exporter_var;
        return -EINVAL;
    }
    const char *own = get(own_var, ud), *base = get("OTEL_EXPORTER_OTLP_ENDPOINT", ud);
    char *url = NULL;
    if (own && *own) {
        if (!http_url(own) || strlen(own) > URL_MAX) {
            *why = own_var;
            return -EINVAL;
        }
        url = strdup(own);
    } else if (base && *base) {
        if (!http_url(base) || strlen(base) > URL_MAX) {
            *why = "OTEL_EXPORTER_OTLP_ENDPOINT";
            return -EINVAL;
        }
        size_t n = strlen(base);
        if (asprintf(&url, "%s%s%s", base, base[n - 1] == '/' ? "" : "/", path) < 0)
            url = NULL;
    } else
        return 0;
    if (!url)
        return -ENOMEM;
    *ret = url;
    return 0;
}

/* The value of signal variable SIGNAL_VAR, else of GENERIC_VAR; *RET_VAR
 * names the one read. NULL when neither is set (or both are empty). */
static const char *signal_or_generic(otlp_getenv get, void *ud, const char *signal_var, const char *generic_var,
                                     const char **ret_var)
{
    const char *v = get(signal_var, ud);
    *ret_var = signal_var;
    if (v && *v)
        return v;
    *ret_var = generic_var;
    v = get(generic_var, ud);
    return v && *v ? v : NULL;
}

/* Fills signal S's headers, certificate, timeout and compression. Returns 0
 * or a negative errno with *WHY the variable. */
static int parse_signal(otlp_getenv get, void *ud, int s, otlp_signal_config *c, const char **why)
{
    static const char *const headers_var[] = {"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                                              "OTEL_EXPORTER_OTLP_LOGS_HEADERS"};
    static const char *const ca_var[] = {"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                                         "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                                         "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE"};
    static const char *const timeout_var[] = {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                                              "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"};
    static const char *const compression_var[] = {"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                                                  "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
                                                  "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION"};
    const char *var;
    const char *headers = signal_or_generic(get, ud, headers_var[s], "OTEL_EXPORTER_OTLP_HEADERS", &var);
    int r = headers ? otlp_parse_pairs(headers, add_header, c) : 0;
    const char *ca = r == 0 ? signal_or_generic(get, ud, ca_var[s], "OTEL_EXPORTER_OTLP_CERTIFICATE", &var) : NULL;
    if (ca && !(c->ca_file = strdup(ca)))
        return -ENOMEM;
    const char *timeout = r == 0 ? signal_or_generic(get, ud, timeout_var[s], "OTEL_EXPORTER_OTLP_TIMEOUT", &var) : NULL;
    c->timeout_ms = 10000;
    if (timeout)
        r = parse_uint(get, ud, var, 600000, &c->timeout_ms);
    const char *gzip = r == 0 ? signal_or_generic(get, ud, compression_var[s], "OTEL_EXPORTER_OTLP_COMPRESSION", &var)
                              : NULL;
    c->gzip = !gzip || strcmp(gzip, "gzip") == 0;
    if (gzip && !c->gzip && strcmp(gzip, "none") != 0)
        r = -EINVAL;
    if (r < 0)
        *why = var;
    return r;
}

int otlp_config_parse(otlp_getenv get, void *ud, const char *service_name, otlp_config *ret, const char **ret_why)
{
    otlp_config c = {.queue_max = 2048, .batch_max = 512, .delay_ms = 5000, .metric_interval_ms = 60000};
    const char *why = NULL;
    const char *disabled = get("OTEL_SDK_DISABLED", ud);
    int r = 0;
    if (disabled && strcasecmp(disabled, "true") == 0) {
        *ret = c;
        return 0;
    }
    static const char *const own[] = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                                      "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"};
    static const char *const exporter[] = {"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"};
    static const char *const path[] = {"v1/traces", "v1/metrics", "v1/logs"};
    for (int s = 0; r == 0 && s < TELEMETRY_SIGNAL_COUNT_; s++) {
        r = signal_url(get, ud, own[s], exporter[s], path[s], &c.signal[s].url, &why);
        if (r == 0)
            r = parse_signal(get, ud, s, &c.signal[s], &why);
    }
    const char *protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL", ud);
    if (r == 0 && protocol && *protocol && strcmp(protocol, "http/json") != 0) {
        why = "OTEL_EXPORTER_OTLP_PROTOCOL (only http/json is spoken)";
        r = -EINVAL;
    }
    if (r == 0 && ((r = parse_uint(get, ud, "OTEL_BSP_MAX_QUEUE_SIZE", 1u << 20, &c.queue_max)) < 0))
        why = "OTEL_BSP_MAX_QUEUE_SIZE";
    if (r == 0 && ((r = parse_uint(get, ud, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1u << 16, &c.batch_max)) < 0))
        why = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
    if (r == 0 && ((r = parse_uint(get, ud, "OTEL_BSP_SCHEDULE_DELAY", 3600000, &c.delay_ms)) < 0))
        why = "OTEL_BSP_SCHEDULE_DELAY";
    if (r == 0 && ((r = parse_uint(get, ud, "OTEL_METRIC_EXPORT_INTERVAL", 86400000, &c.metric_interval_ms)) < 0))
        why = "OTEL_METRIC_EXPORT_INTERVAL";
    if (r == 0 && c.batch_max > c.queue_max)
        c.batch_max = c.queue_max;

    /* the resource: OTEL_RESOURCE_ATTRIBUTES, then service.name
     * (OTEL_SERVICE_NAME over the attributes' over ours) */
    resource_build b = {.attrs = json_array()};
    if (!b.attrs && r == 0)
        r = -ENOMEM;
    const char *attrs = get("OTEL_RESOURCE_ATTRIBUTES", ud);
    if (r == 0 && attrs && (r = otlp_parse_pairs(attrs, add_resource, &b)) < 0)
        why = "OTEL_RESOURCE_ATTRIBUTES";
    const char *service = get("OTEL_SERVICE_NAME", ud);
    if (r == 0 && service && *service) {
        size_t i;
        json_t *kv;
        json_array_foreach(b.attrs, i, kv)
            if (strcmp(json_string_value(json_object_get(kv, "key")), "service.name") == 0) {
                json_array_remove(b.attrs, i);
                break;
            }
        b.has_service_name = false;
    }
    if (r == 0 && !b.has_service_name &&
        json_array_append_new(b.attrs, otlp_attr_str("service.name", service && *service ? service : service_name)) < 0)
        r = -ENOMEM;
    c.resource = b.attrs;
    if (r < 0) {
        otlp_config_free(&c);
        *ret_why = why ? why : "out of memory";
        return r;
    }
    *ret = c;
    return 0;
}

void otlp_config_free(otlp_config *c)
{
    for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++) {
        otlp_signal_config *sc = &c->signal[s];
        free(sc->url);
        for (size_t i = 0; i < sc->n_headers; i++) {
            free(sc->headers[i].name);
            free(sc->headers[i].value);
        }
        free(sc->ca_file);
    }
    json_decref(c->resource);
    *c = (otlp_config){0};
}

const char *otlp_loggable_url(const char *url, char *out, size_t size)
{
    if (!url)
        return "off";
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    const char *at = strchr(host, '@'), *slash = strchr(host, '/');
    if (!at || (slash && slash < at))
        return url;
    snprintf(out, size, "%.*s***%s", (int)(host - url), url, at);
    return out;
}
