#include "basic/log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/strbuf.h"
#include "basic/timeutil.h"

static const char *log_role = "cloister";
static log_level log_max_level = LOG_LEVEL_INFO;

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
