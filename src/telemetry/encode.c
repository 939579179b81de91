/* The OTLP JSON encoding (opentelemetry-proto, docs/specification.md "JSON
 * Protobuf Encoding"): trace and span ids as lower-case hex, enums as
 * integers, lowerCamelCase field names, 64-bit integers as decimal strings;
 * W3C traceparent; the retry policy of OTLP/HTTP. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "telemetry/otlp.h"

json_t *otlp_attr_str(const char *key, const char *value)
{
    return json_pack("{s:s, s:{s:s}}", "key", key, "value", "stringValue", value ? value : "");
}

json_t *otlp_attr_int(const char *key, int64_t value)
{
    char n[24];
    snprintf(n, sizeof(n), "%" PRId64, value);
    return json_pack("{s:s, s:{s:s}}", "key", key, "value", "intValue", n);
}

json_t *otlp_time(uint64_t unix_ns)
{
    char n[24];
    snprintf(n, sizeof(n), "%" PRIu64, unix_ns);
    return json_string(n);
}

uint64_t otlp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const char *const outer[] = {"resourceSpans", "resourceMetrics", "resourceLogs"};
static const char *const scope[] = {"scopeSpans", "scopeMetrics", "scopeLogs"};
static const char *const inner[] = {"spans", "metrics", "logRecords"};

/* The length of the valid UTF-8 sequence at P (N bytes left), 0 when there
 * is none (RFC 3629: no overlong forms, surrogates or code points past
 * U+10FFFF). */
static size_t utf8_sequence(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!len || len > n)
        return 0;
    unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
    unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

/* Whether byte C goes out as it is inside a JSON string: printable ASCII
 * but the quote and the backslash. */
static inline bool plain_byte(unsigned char c)
{
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

char *otlp_json_put(char *out, const char *s, size_t n)
{
    static const char hexdig[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    *out++ = '"';
    for (size_t i = 0; i < n;) {
        /* a run that goes out as it is, in one copy */
        size_t run = i;
        for (;;) {
            if (run < n && plain_byte(p[run])) {
                run++;
                continue;
            }
            size_t len = run < n && p[run] >= 0x80 ? utf8_sequence(p + run, n - run) : 0;
            if (!len)
                break;
            run += len;
        }
        if (run > i) {
            memcpy(out, p + i, run - i);
            out += run - i;
            i = run;
            continue;
        }
        unsigned char c = p[i++];
        if (c >= 0x80) { /* not the start of a valid sequence */
            memcpy(out, "\\ufffd", 6);
            out += 6;
        } else if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else {
            memcpy(out, "\\u00", 4);
            out[4] = hexdig[c >> 4];
            out[5] = hexdig[c & 15];
            out += 6;
        }
    }
    *out++ = '"';
    return out;
}

char *otlp_hex_put(char *out, const uint8_t *p, size_t n)
{
    static const char hexdig[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        *out++ = hexdig[p[i] >> 4];
        *out++ = hexdig[p[i] & 15];
    }
    return out;
}

char *otlp_u64_put(char *out, uint64_t v)
{
    char digits[20];
    size_t n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10));
    while (n)
        *out++ = digits[--n];
    return out;
}

char *otlp_i64_put(char *out, int64_t v)
{
    if (v < 0) {
        *out++ = '-';
        return otlp_u64_put(out, (uint64_t)0 - (uint64_t)v);
    }
    return otlp_u64_put(out, (uint64_t)v);
}

int otlp_put_json_string(strbuf *b, const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    char stack[4096];
    _cleanup_free_ char *heap = NULL;
    char *out = stack;
    if (OTLP_JSON_BOUND(n) > sizeof(stack) && !(out = heap = malloc(OTLP_JSON_BOUND(n))))
        return -ENOMEM;
    return strbuf_append(b, out, (size_t)(otlp_json_put(out, s, n) - out));
}

int otlp_envelope_text(strbuf *out, telemetry_signal s, const char *resource_json, const char *const *records,
                       size_t n)
{
    int r = strbuf_printf(out, "{\"%s\":[{\"resource\":{\"attributes\":%s},\"%s\":[{\"scope\":{\"name\":\"cloister\","
                               "\"version\":\"%s\"},\"%s\":[",
                          outer[s], resource_json, scope[s], CLOISTER_VERSION, inner[s]);
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (i)
            r = strbuf_putc(out, ',');
        if (r == 0)
            r = strbuf_puts(out, records[i]);
    }
    return r == 0 ? strbuf_puts(out, "]}]}]}") : r;
}

json_t *otlp_envelope(telemetry_signal s, const json_t *resource, json_t *records)
{
    return json_pack("{s:[{s:{s:O}, s:[{s:{s:s, s:s}, s:o}]}]}", outer[s], "resource", "attributes", resource,
                     scope[s], "scope", "name", "cloister", "version", CLOISTER_VERSION, inner[s], records);
}

/* ---- W3C trace context ---- */

static int unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < 2 * n; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0) /* upper-case hex is refused too */
            return -EINVAL;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

int trace_context_parse(const char *tp, size_t len, trace_context *ret)
{
    trace_context c;
    uint8_t version, flags;
    if (!tp || len != TRACEPARENT_LEN || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
        return -EINVAL;
    if (unhex(tp, &version, 1) < 0 || version != 0 || unhex(tp + 3, c.trace_id, 16) < 0 ||
        unhex(tp + 36, c.span_id, 8) < 0 || unhex(tp + 53, &flags, 1) < 0)
        return -EINVAL;
    if (all_zero(c.trace_id, 16) || all_zero(c.span_id, 8))
        return -EINVAL;
    c.flags = flags;
    *ret = c;
    return 0;
}

/* "00-<trace id>-<span id>-<flags>" written in place: the proxy sends a
 * traceparent upstream on every request. */
void trace_context_format(const trace_context *c, char out[56])
{
    memcpy(out, "00-", 3);
    hex_encode(c->trace_id, 16, out + 3);
    out[35] = '-';
    hex_encode(c->span_id, 8, out + 36);
    out[52] = '-';
    hex_encode(&c->flags, 1, out + 53);
}

/* Random bytes for ids from a per-thread pool refilled by getrandom():
 * ids need to be unique, not secret, and a span should not cost a syscall. */
static void random_bytes(uint8_t *out, size_t n)
{
    static _Thread_local uint8_t pool[256];
    static _Thread_local size_t left;
    while (n) {
        if (!left) {
            size_t got = 0;
            while (got < sizeof(pool)) {
                ssize_t k = getrandom(pool + got, sizeof(pool) - got, 0);
                if (k > 0)
                    got += (size_t)k;
            }
            left = sizeof(pool);
        }
        size_t take = MIN(n, left);
        memcpy(out, pool + sizeof(pool) - left, take);
        left -= take;
        out += take;
        n -= take;
    }
}

void otlp_random_id(uint8_t *out, size_t n)
{
    do
        random_bytes(out, n);
    while (all_zero(out, n));
}

void trace_context_new(trace_context *ret)
{
    otlp_random_id(ret->trace_id, 16);
    otlp_random_id(ret->span_id, 8);
    ret->flags = 1;
}

/* ---- retries ---- */

/* Seconds Retry-After asks for (delta-seconds or an HTTP date) at NOW_UNIX;
 * -1 when unparseable. */
static int64_t retry_after_seconds(const char *v, int64_t now_unix)
{
    while (*v == ' ')
        v++;
    if (isdigit((unsigned char)*v)) {
        char *end;
        long long n = strtoll(v, &end, 10);
        while (*end == ' ')
            end++;
        return *end ? -1 : n;
    }
    struct tm tm = {0};
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end)
        return -1;
    int64_t at = (int64_t)timegm(&tm);
    return at > now_unix ? at - now_unix : 0;
}

int otlp_retry_delay(long status, const char *retry_after, unsigned attempt, int64_t now_unix,
                     unsigned *ret_delay_ms)
{
    bool retryable = status == 0 || status == 429 || status == 502 || status == 503 || status == 504;
    if (!retryable || attempt >= OTLP_RETRY_ATTEMPTS)
        return -1;
    if (retry_after && (status == 429 || status == 503)) {
        int64_t s = retry_after_seconds(retry_after, now_unix);
        if (s >= 0) {
            *ret_delay_ms = (unsigned)MIN(s * 1000, (int64_t)OTLP_RETRY_MAX_MS);
            return 0;
        }
    }
    uint64_t d = (uint64_t)OTLP_RETRY_BASE_MS << MIN(attempt - 1, 16u);
    *ret_delay_ms = (unsigned)MIN(d, (uint64_t)OTLP_RETRY_MAX_MS);
    return 0;
}

/* ---- metrics from Prometheus text ---- */

typedef enum prom_type { PROM_UNTYPED, PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM } prom_type;

typedef struct family {
    char name[256];
    prom_type type;
    char help[512];
    json_t *metric; /* the OTLP Metric being filled, owned by the array */
} family;

/* Parses `{a="x",b="y"}` at *P into an OTLP attribute array (le removed and
 * returned in LE when present); advances *P past it. */
static json_t *parse_labels(const char **p, char *le, size_t le_size)
{
    json_t *attrs = json_array();
    const char *s = *p;
    if (*s != '{') {
        *p = s;
        return attrs;
    }
    s++;
    while (attrs && *s && *s != '}') {
        const char *k = s;
        while (*s && *s != '=')
            s++;
        if (*s != '=' || s[1] != '"')
            goto bad;
        char key[128];
        size_t kn = (size_t)(s - k);
        if (kn >= sizeof(key))
            goto bad;
        memcpy(key, k, kn);
        key[kn] = '\0';
        s += 2;
        char value[1024];
        size_t vn = 0;
        while (*s && *s != '"') {
            char c = *s++;
            if (c == '\\' && *s) {
                c = *s++;
                if (c == 'n')
                    c = '\n';
            }
            if (vn + 1 < sizeof(value))
                value[vn++] = c;
        }
        if (*s != '"')
            goto bad;
        value[vn] = '\0';
        s++;
        if (*s == ',')
            s++;
        if (strcmp(key, "le") == 0) {
            if (snprintf(le, le_size, "%s", value) >= (int)le_size)
                goto bad; /* no bucket bound is that long */
        }
        else if (json_array_append_new(attrs, otlp_attr_str(key, value)) < 0)
            goto bad;
    }
    if (*s != '}')
        goto bad;
    *p = s + 1;
    return attrs;
bad:
    json_decref(attrs);
    return NULL;
}

static json_t *point_for(json_t *points, const json_t *attrs)
{
    size_t i;
    json_t *pt;
    json_array_foreach(points, i, pt)
        if (json_equal(json_object_get(pt, "attributes"), attrs))
            return pt;
    return NULL;
}

static json_t *u64_string(uint64_t v)
{
    char n[24];
    snprintf(n, sizeof(n), "%" PRIu64, v);
    return json_string(n);
}

/* Adds sample SUFFIX (of a histogram: _bucket, _sum, _count; else "")
 * with ATTRS (stolen) and VALUE to F's metric. */
static int add_sample(family *f, const char *suffix, json_t *attrs, const char *le, double value, uint64_t start_ns,
                      uint64_t now_ns)
{
    const char *data = f->type == PROM_COUNTER ? "sum" : f->type == PROM_HISTOGRAM ? "histogram" : "gauge";
    json_t *points = json_object_get(json_object_get(f->metric, data), "dataPoints");
    json_t *pt = point_for(points, attrs);
    if (!pt) {
        pt = json_pack("{s:o, s:o, s:o}", "attributes", attrs, "startTimeUnixNano", otlp_time(start_ns),
                       "timeUnixNano", otlp_time(now_ns));
        if (!pt || json_array_append_new(points, pt) < 0)
            return -ENOMEM;
        if (f->type == PROM_HISTOGRAM)
            json_object_set_new(pt, "bucketCounts", json_array()), json_object_set_new(pt, "explicitBounds", json_array());
    } else
        json_decref(attrs);
    if (f->type == PROM_COUNTER) {
        if (value == floor(value) && value >= 0 && value < 1.8e19)
            return json_object_set_new(pt, "asInt", u64_string((uint64_t)value));
        return json_object_set_new(pt, "asDouble", json_real(value));
    }
    if (f->type != PROM_HISTOGRAM) {
        if (f->type == PROM_GAUGE && value == floor(value) && fabs(value) < 9e18) {
            char n[24];
            snprintf(n, sizeof(n), "%" PRId64, (int64_t)value);
            return json_object_set_new(pt, "asInt", json_string(n));
        }
        return json_object_set_new(pt, "asDouble", json_real(isfinite(value) ? value : 0));
    }
    if (strcmp(suffix, "_sum") == 0)
        return json_object_set_new(pt, "sum", json_real(value));
    if (strcmp(suffix, "_count") == 0)
        return json_object_set_new(pt, "count", u64_string((uint64_t)value));
    /* a bucket: Prometheus counts are cumulative, OTLP's per bucket; +Inf is
     * the last bucket and no bound */
    json_t *counts = json_object_get(pt, "bucketCounts"), *bounds = json_object_get(pt, "explicitBounds");
    uint64_t below = 0;
    size_t i;
    json_t *c;
    json_array_foreach(counts, i, c)
        below += strtoull(json_string_value(c), NULL, 10);
    uint64_t cum = (uint64_t)value;
    if (json_array_append_new(counts, u64_string(cum >= below ? cum - below : 0)) < 0)
        return -ENOMEM;
    if (strcmp(le, "+Inf") != 0 && json_array_append_new(bounds, json_real(strtod(le, NULL))) < 0)
        return -ENOMEM;
    return 0;
}

static int start_family(family *f, json_t *metrics)
{
    char name[256];
    snprintf(name, sizeof(name), "%s", f->name);
    size_t n = strlen(name);
    if (f->type == PROM_COUNTER && n > 6 && strcmp(name + n - 6, "_total") == 0)
        name[n - 6] = '\0';
    const char *unit = n > 8 && strstr(name, "_seconds") ? "s" : "1";
    if (f->type == PROM_COUNTER)
        f->metric = json_pack("{s:s, s:s, s:s, s:{s:[], s:i, s:b}}", "name", name, "description", f->help, "unit",
                              unit, "sum", "dataPoints", "aggregationTemporality", 2, "isMonotonic", 1);
    else if (f->type == PROM_HISTOGRAM)
        f->metric = json_pack("{s:s, s:s, s:s, s:{s:[], s:i}}", "name", name, "description", f->help, "unit", unit,
                              "histogram", "dataPoints", "aggregationTemporality", 2);
    else
        f->metric = json_pack("{s:s, s:s, s:s, s:{s:[]}}", "name", name, "description", f->help, "unit", unit,
                              "gauge", "dataPoints");
    return f->metric && json_array_append_new(metrics, f->metric) == 0 ? 0 : -ENOMEM;
}

int otlp_metrics_from_prometheus(const char *text, uint64_t start_ns, uint64_t now_ns, json_t *metrics)
{
    family f = {0};
    char help_name[256] = "", help[512] = "";
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[2048];
        if (len >= sizeof(buf))
            goto next;
        memcpy(buf, line, len);
        buf[len] = '\0';
        if (strncmp(buf, "# HELP ", 7) == 0) {
            char *sp = strchr(buf + 7, ' ');
            if (sp) {
                *sp = '\0';
                /* a name too long for a family has no help; a help text too long ends in "..." */
                if (snprintf(help_name, sizeof(help_name), "%s", buf + 7) >= (int)sizeof(help_name))
                    help_name[0] = '\0';
                if (snprintf(help, sizeof(help), "%s", sp + 1) >= (int)sizeof(help))
                    memcpy(help + sizeof(help) - 4, "...", 4);
            }
        } else if (strncmp(buf, "# TYPE ", 7) == 0) {
            char *sp = strchr(buf + 7, ' ');
            if (!sp)
                goto next;
            *sp = '\0';
            f = (family){0};
            if (snprintf(f.name, sizeof(f.name), "%s", buf + 7) >= (int)sizeof(f.name))
                goto next; /* a family whose name does not fit is not exported */
            f.type = strcmp(sp + 1, "counter") == 0     ? PROM_COUNTER
                     : strcmp(sp + 1, "histogram") == 0 ? PROM_HISTOGRAM
                     : strcmp(sp + 1, "gauge") == 0     ? PROM_GAUGE
                                                        : PROM_UNTYPED;
            snprintf(f.help, sizeof(f.help), "%s", strcmp(help_name, f.name) == 0 ? help : "");
            if (f.type == PROM_UNTYPED)
                f.name[0] = '\0';
            else if (start_family(&f, metrics) < 0)
                return -ENOMEM;
        } else if (buf[0] != '#' && f.name[0]) {
            size_t fn = strlen(f.name);
            if (strncmp(buf, f.name, fn) != 0)
                goto next;
            const char *p = buf + fn;
            const char *suffix = "";
            if (f.type == PROM_HISTOGRAM) {
                static const char *const sfx[] = {"_bucket", "_sum", "_count"};
                for (size_t i = 0; i < ELEMENTSOF(sfx) && !*suffix; i++)
                    if (strncmp(p, sfx[i], strlen(sfx[i])) == 0)
                        suffix = sfx[i];
                if (!*suffix)
                    goto next;
                p += strlen(suffix);
            }
            if (*p != '{' && *p != ' ')
                goto next;
            char le[32] = "";
            json_t *attrs = parse_labels(&p, le, sizeof(le));
            if (!attrs)
                goto next;
            char *end;
            double v = strtod(p, &end);
            if (end == p || (strcmp(suffix, "_bucket") == 0 && !le[0])) {
                json_decref(attrs);
                goto next;
            }
            if (add_sample(&f, suffix, attrs, le, v, start_ns, now_ns) < 0)
                return -ENOMEM;
        }
    next:
        line = nl ? nl + 1 : NULL;
    }
    /* a family with no sample (a table nothing has counted in yet) is no metric */
    for (size_t i = json_array_size(metrics); i-- > 0;) {
        json_t *m = json_array_get(metrics, i);
        json_t *data = json_object_get(m, "sum") ?: json_object_get(m, "gauge") ?: json_object_get(m, "histogram");
        if (json_array_size(json_object_get(data, "dataPoints")) == 0)
            json_array_remove(metrics, i);
    }
    return 0;
}
