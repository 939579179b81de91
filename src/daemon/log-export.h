/* The daemons' JSON logs as OTLP log records too (docs/telemetry.md,
 * "Logs"): every line a role logs, while export is on, with its severity
 * mapped (debug 5, info 9, warn 13, error 17), its message as the body and
 * its fields as attributes. The exporter's own complaints are not exported
 * (telemetry_log() drops what its thread logs), and what is logged while a
 * record is handed over goes to stderr only (log.c), so nothing loops. */
#pragma once

/* Makes the exporter a sink of log.c for this process. */
void log_export_install(void);
