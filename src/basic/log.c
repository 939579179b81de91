#include "basic/log.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/strbuf.h"
#include "basic/timeutil.h"

static const char *log_role = "cloister";
static log_level log_max_level = LOG_LEVEL_INFO;
static log_sink_fn log_sink;
static _Thread_local bool in_sink; /* the sink's own logs do not reach it again */

static const char *const level_names[] = {
    [LOG_LEVEL_DEBUG] = "debug",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_ERROR] = "error",
};

void log_set_role(const char *role)
{
    log_role = role;
}

void log_set_max_level(log_level level)
{
    log_max_level = level;
}

void log_set_sink(log_sink_fn sink)
{
    log_sink = sink;
}

/* Hands the line to the sink, if any (FIELDS as log_emit() got them). */
static void log_to_sink(log_level level, const char *msg, va_list fields)
{
    if (!log_sink || in_sink)
        return;
    const char *pairs[2 * LOG_SINK_FIELDS_MAX + 1];
    size_t n = 0;
    for (;;) {
        const char *k = va_arg(fields, const char *);
        if (!k)
            break;
        const char *v = va_arg(fields, const char *);
        if (n < 2 * LOG_SINK_FIELDS_MAX) {
            pairs[n++] = k;
            pairs[n++] = v ? v : "";
        }
    }
    pairs[n] = NULL;
    in_sink = true;
    log_sink(level, msg, pairs);
    in_sink = false;
}

int log_level_from_string(const char *s, log_level *ret)
{
    for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
        if (strcasecmp(s, level_names[i]) == 0) {
            *ret = (log_level)i;
            return 0;
        }
    return -EINVAL;
}

/* Writes the line in one write(2) so lines from several processes sharing
 * stderr do not interleave. */
static void log_emit(log_level level, const char *msg, va_list fields)
{
    va_list again;
    va_copy(again, fields);
    log_to_sink(level, msg, again);
    va_end(again);
    char stack[4096];
    strbuf b;
    strbuf_init_static(&b, stack, sizeof(stack));

    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    strbuf_puts(&b, "{\"time\":\"");
    strbuf_puts(&b, now);
    strbuf_puts(&b, "\",\"level\":\"");
    strbuf_puts(&b, level_names[level]);
    strbuf_puts(&b, "\",\"role\":");
    strbuf_put_json_string(&b, log_role);
    strbuf_puts(&b, ",\"msg\":");
    strbuf_put_json_string(&b, msg);
    for (;;) {
        const char *k = va_arg(fields, const char *);
        if (!k)
            break;
        const char *v = va_arg(fields, const char *);
        strbuf_putc(&b, ',');
        strbuf_put_json_string(&b, k);
        strbuf_putc(&b, ':');
        strbuf_put_json_string(&b, v ? v : "");
    }
    strbuf_puts(&b, "}\n");
    if (b.truncated) {
        /* keep the line valid JSON even when a field was huge */
        static const char tail[] = "\",\"truncated\":true}\n";
        b.len = MIN(b.len, b.cap - sizeof(tail));
        memcpy(b.data + b.len, tail, sizeof(tail) - 1);
        b.len += sizeof(tail) - 1;
    }
    ssize_t _unused_ n = write(STDERR_FILENO, b.data, b.len);
}

void log_fields(log_level level, const char *msg, ...)
{
    if (level < log_max_level)
        return;
    va_list ap;
    va_start(ap, msg);
    log_emit(level, msg, ap);
    va_end(ap);
}

static void log_emit_nofields(log_level level, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    log_emit(level, msg, ap);
    va_end(ap);
}

void log_msg(log_level level, const char *fmt, ...)
{
    if (level < log_max_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_emit_nofields(level, msg, (const char *)NULL);
}
