/* Daemon logs to the OpenTelemetry exporter (see log-export.h). */
#include "daemon/log-export.h"

#include "basic/log.h"
#include "telemetry/telemetry.h"

/* log.c's sink: the line as an OTLP log record, when export is on. */
static void export_line(log_level level, const char *msg, const char *const *fields)
{
    static const int severity[] = {
        [LOG_LEVEL_DEBUG] = TELEMETRY_SEVERITY_DEBUG,
        [LOG_LEVEL_INFO] = TELEMETRY_SEVERITY_INFO,
        [LOG_LEVEL_WARN] = TELEMETRY_SEVERITY_WARN,
        [LOG_LEVEL_ERROR] = TELEMETRY_SEVERITY_ERROR,
    };
    if (telemetry_enabled())
        telemetry_log(severity[level], msg, NULL, fields);
}

void log_export_install(void)
{
    log_set_sink(export_line);
}
