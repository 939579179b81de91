/* Spans and log records written as their OTLP JSON text (the rules of
 * encode.c), straight into the buffer they are sent from: no JSON tree, no
 * allocation per attribute, every string escaped into room sized for its
 * worst case beforehand. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "telemetry/otlp.h"

#define KEY_HEAD "{\"key\":" /* the start of an attribute's text, its key's JSON string after it */
#define KEY_HEAD_LEN (sizeof(KEY_HEAD) - 1)

/* Copies the string literal L at P and advances P past it. */
#define PUT(p, l) (memcpy((p), (l), sizeof(l) - 1), (p) += sizeof(l) - 1)

void otlp_span_init(telemetry_span *s, const char *name, int kind, const trace_context *parent)
{
    s->has_parent = parent != NULL;
    if (parent) {
        memcpy(s->ctx.trace_id, parent->trace_id, 16);
        memcpy(s->parent_span_id, parent->span_id, 8);
        s->ctx.flags = parent->flags;
        otlp_random_id(s->ctx.span_id, 8);
    } else
        trace_context_new(&s->ctx);
    s->kind = kind;
    s->status_code = TELEMETRY_STATUS_UNSET;
    s->status_message[0] = '\0';
    name = name ? name : "";
    size_t n = strnlen(name, sizeof(s->name) - 1);
    memcpy(s->name, name, n);
    s->name[n] = '\0';
    s->n_links = 0;
    s->n_attrs = 0;
    s->text = s->text_inline;
    s->len = 0;
    s->cap = sizeof(s->text_inline);
    s->next_spare = NULL;
    s->start_ns = otlp_now_ns();
}

void otlp_span_release(telemetry_span *s)
{
    if (s->text != s->text_inline)
        free(s->text);
    s->text = s->text_inline;
    s->len = 0;
    s->cap = sizeof(s->text_inline);
}

/* Makes room for N more bytes of attribute text in S. Returns 0 or -ENOMEM
 * (S as it was). */
static int text_reserve(telemetry_span *s, size_t n)
{
    if (s->cap - s->len >= n)
        return 0;
    size_t cap = MAX(s->cap * 2, s->len + n);
    char *t = s->text == s->text_inline ? malloc(cap) : realloc(s->text, cap);
    if (!t)
        return -ENOMEM;
    if (s->text == s->text_inline)
        memcpy(t, s->text_inline, s->len);
    s->text = t;
    s->cap = cap;
    return 0;
}

/* Sets attribute KEY of S to the string STR (when IS_INT is false) or to
 * the integer IV, replacing one of that key. */
static int set_attr(telemetry_span *s, const char *key, const char *str, bool is_int, int64_t iv)
{
    if (!key)
        return -EINVAL;
    size_t kn = strnlen(key, OTLP_STRING_MAX), vn = str ? strnlen(str, OTLP_STRING_MAX) : 0;
    size_t bound = KEY_HEAD_LEN + OTLP_JSON_BOUND(kn) + 64 + (is_int ? 21 : OTLP_JSON_BOUND(vn));
    int r = text_reserve(s, bound);
    if (r < 0)
        return r;
    char *start = s->text + s->len, *p = start;
    PUT(p, KEY_HEAD);
    const char *k = p;
    p = otlp_json_put(p, key, kn);
    size_t key_len = (size_t)(p - k), old = s->n_attrs;
    for (size_t i = 0; i < s->n_attrs && old == s->n_attrs; i++)
        if (s->attrs[i].key_len == key_len && memcmp(s->text + s->attrs[i].off + KEY_HEAD_LEN, k, key_len) == 0)
            old = i;
    if (old == s->n_attrs && s->n_attrs >= OTLP_SPAN_ATTRS_MAX)
        return -ENOSPC;
    PUT(p, ",\"value\":");
    if (is_int) {
        PUT(p, "{\"intValue\":\"");
        p = otlp_i64_put(p, iv);
        PUT(p, "\"}}");
    } else {
        PUT(p, "{\"stringValue\":");
        p = otlp_json_put(p, str ? str : "", vn);
        PUT(p, "}}");
    }
    size_t len = (size_t)(p - start);
    if (old < s->n_attrs) { /* replaced: the old text goes, the new one moves down */
        size_t off = s->attrs[old].off, old_len = s->attrs[old].len;
        memmove(s->text + off, s->text + off + old_len, s->len + len - off - old_len);
        s->len -= old_len;
        memmove(&s->attrs[old], &s->attrs[old + 1], (s->n_attrs - old - 1) * sizeof(s->attrs[0]));
        s->n_attrs--;
        for (size_t i = old; i < s->n_attrs; i++)
            s->attrs[i].off -= (uint32_t)old_len;
    }
    s->attrs[s->n_attrs].off = (uint32_t)s->len;
    s->attrs[s->n_attrs].len = (uint32_t)len;
    s->attrs[s->n_attrs].key_len = (uint32_t)key_len;
    s->n_attrs++;
    s->len += len;
    return 0;
}

int otlp_span_set_str(telemetry_span *s, const char *key, const char *value)
{
    return set_attr(s, key, value, false, 0);
}

int otlp_span_set_int(telemetry_span *s, const char *key, int64_t value)
{
    return set_attr(s, key, NULL, true, value);
}

/* Writes "traceId":"<hex>","spanId":"<hex>" of C at P; returns the end. */
static char *put_ids(char *p, const trace_context *c)
{
    PUT(p, "\"traceId\":\"");
    p = otlp_hex_put(p, c->trace_id, 16);
    PUT(p, "\",\"spanId\":\"");
    p = otlp_hex_put(p, c->span_id, 8);
    *p++ = '"';
    return p;
}

#define SPAN_FIXED_MAX 512 /* a span's text but its name, attributes, links and status message */
#define LINK_MAX 96        /* {"traceId":"<32>","spanId":"<16>","flags":<3>}, */

size_t otlp_span_bound(const telemetry_span *s)
{
    return SPAN_FIXED_MAX + OTLP_JSON_BOUND(strnlen(s->name, sizeof(s->name))) + s->len + s->n_attrs +
           s->n_links * LINK_MAX + OTLP_JSON_BOUND(strnlen(s->status_message, sizeof(s->status_message)));
}

char *otlp_span_write(char *p, const telemetry_span *s, uint64_t end_ns)
{
    *p++ = '{';
    p = put_ids(p, &s->ctx);
    if (s->has_parent) {
        PUT(p, ",\"parentSpanId\":\"");
        p = otlp_hex_put(p, s->parent_span_id, 8);
        *p++ = '"';
    }
    PUT(p, ",\"name\":");
    p = otlp_json_put(p, s->name, strnlen(s->name, sizeof(s->name)));
    PUT(p, ",\"kind\":");
    p = otlp_i64_put(p, s->kind);
    PUT(p, ",\"startTimeUnixNano\":\"");
    p = otlp_u64_put(p, s->start_ns);
    PUT(p, "\",\"endTimeUnixNano\":\"");
    p = otlp_u64_put(p, end_ns);
    /* flags bit 8: whether the parent is remote is known */
    PUT(p, "\",\"flags\":");
    p = otlp_i64_put(p, 0x100 | s->ctx.flags);
    PUT(p, ",\"attributes\":[");
    for (size_t i = 0; i < s->n_attrs; i++) {
        if (i)
            *p++ = ',';
        memcpy(p, s->text + s->attrs[i].off, s->attrs[i].len);
        p += s->attrs[i].len;
    }
    PUT(p, "],\"links\":[");
    for (size_t i = 0; i < s->n_links; i++) {
        *p++ = '{';
        p = put_ids(p, &s->links[i]);
        PUT(p, ",\"flags\":");
        p = otlp_i64_put(p, s->links[i].flags);
        *p++ = '}';
        if (i + 1 < s->n_links)
            *p++ = ',';
    }
    PUT(p, "],\"status\":{\"code\":");
    p = otlp_i64_put(p, s->status_code);
    if (s->status_message[0]) {
        PUT(p, ",\"message\":");
        p = otlp_json_put(p, s->status_message, strnlen(s->status_message, sizeof(s->status_message)));
    }
    PUT(p, "}}");
    return p;
}

#define LOG_FIXED_MAX 512 /* a log record's text but its body and attributes */
#define LOG_ATTR_FIXED 48 /* {"key":,"value":{"stringValue":}}, */

/* Whether attribute pair I (a key's index) of L is there to write. */
static bool log_attr_at(const otlp_log *l, size_t i)
{
    return l->attrs && i < 2 * OTLP_SPAN_ATTRS_MAX && l->attrs[i] && l->attrs[i + 1];
}

size_t otlp_log_bound(const otlp_log *l)
{
    size_t n = LOG_FIXED_MAX + OTLP_JSON_BOUND(l->body ? strnlen(l->body, OTLP_STRING_MAX) : 0);
    for (size_t i = 0; log_attr_at(l, i); i += 2)
        n += LOG_ATTR_FIXED + OTLP_JSON_BOUND(strnlen(l->attrs[i], OTLP_STRING_MAX)) +
             OTLP_JSON_BOUND(strnlen(l->attrs[i + 1], OTLP_STRING_MAX));
    return n;
}

char *otlp_log_write(char *p, const otlp_log *l)
{
    static const char *const texts[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    int sev = l->severity;
    const char *text = sev >= 17 ? texts[3] : sev >= 13 ? texts[2] : sev >= 9 ? texts[1] : texts[0];
    PUT(p, "{\"timeUnixNano\":\"");
    p = otlp_u64_put(p, l->time_ns);
    PUT(p, "\",\"observedTimeUnixNano\":\"");
    p = otlp_u64_put(p, l->time_ns);
    PUT(p, "\",\"severityNumber\":");
    p = otlp_i64_put(p, sev);
    PUT(p, ",\"severityText\":\"");
    memcpy(p, text, strlen(text));
    p += strlen(text);
    PUT(p, "\",\"body\":{\"stringValue\":");
    const char *body = l->body ? l->body : "";
    p = otlp_json_put(p, body, strnlen(body, OTLP_STRING_MAX));
    PUT(p, "},\"attributes\":[");
    for (size_t i = 0; log_attr_at(l, i); i += 2) {
        if (i)
            *p++ = ',';
        PUT(p, KEY_HEAD);
        p = otlp_json_put(p, l->attrs[i], strnlen(l->attrs[i], OTLP_STRING_MAX));
        PUT(p, ",\"value\":{\"stringValue\":");
        p = otlp_json_put(p, l->attrs[i + 1], strnlen(l->attrs[i + 1], OTLP_STRING_MAX));
        PUT(p, "}}");
    }
    *p++ = ']';
    if (l->ctx) {
        *p++ = ',';
        p = put_ids(p, l->ctx);
        PUT(p, ",\"flags\":");
        p = otlp_i64_put(p, l->ctx->flags);
    }
    *p++ = '}';
    return p;
}
