/* Structured logging: one JSON object per line on stderr with time, level,
 * role, msg and optional fields. Libraries log only at debug level; daemons
 * log once where they decide, with the reason. Never pass a secret here. */
#pragma once

#include <stdarg.h>

#include "basic/macro.h"

typedef enum log_level {
    LOG_LEVEL_DEBUG,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
} log_level;

/* The role name stamped on every line ("cloisterd", "api", "cli", ...). */
void log_set_role(const char *role);
void log_set_max_level(log_level level);
/* Parses "debug", "info", "warn", "error"; returns -EINVAL otherwise. */
int log_level_from_string(const char *s, log_level *ret);

/* Another destination of every line logged (besides stderr): the
 * daemons hand their logs to the OpenTelemetry exporter through it. SINK
 * gets the line's LEVEL, MSG and FIELDS (key, value pairs, NULL-terminated,
 * at most LOG_SINK_FIELDS_MAX pairs; values never NULL), on the logging
 * thread; whatever it logs itself goes to stderr only (never back into it).
 * NULL: none. Set it before threads start. */
#define LOG_SINK_FIELDS_MAX 32
typedef void (*log_sink_fn)(log_level level, const char *msg, const char *const *fields);
void log_set_sink(log_sink_fn sink);

/* Logs MSG with optional fields given as alternating key/value C strings,
 * terminated by NULL: log_fields(LOG_LEVEL_INFO, "listening", "addr", a, NULL). */
void log_fields(log_level level, const char *msg, ...) __attribute__((sentinel));

/* printf-style message with no extra fields. */
void log_msg(log_level level, const char *fmt, ...) _printf_(2, 3);

#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
