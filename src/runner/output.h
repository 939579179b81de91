/* Workloads' stdout and stderr in the runner (docs/enclaves.md, "Logs").
 *
 * A sandbox has no network: its output leaves it through two pipes the
 * runner hands it as stdout and stderr (in agent mode the agent's own
 * output and the workload's, which inherits them). The runner reads them on
 * its loop and, for each line, appends it to <runner_dir>/<name>.log (as
 * before), keeps it in the replica's ring of recent lines, and exports it
 * as an OTLP log record (telemetry_log) attributed to the enclave and the
 * replica. The api role reads the rings through GET /v1/logs (server.c).
 *
 * Lines are numbered by one counter of the runner (so a reader follows every
 * replica with one cursor), cut at RUNNER_LOG_LINE_MAX bytes, made valid
 * UTF-8 (other bytes become U+FFFD) without control characters but tab.
 * A ring keeps the last RUNNER_LOG_LINES_MAX lines and at most
 * RUNNER_LOG_BYTES_MAX bytes of them; it belongs to the sandbox's name and
 * outlives the workload (a crash loop's last words stay readable) until the
 * sandbox is deleted, or its slot is needed for another name. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define RUNNER_LOG_LINES_MAX 1000        /* lines a replica's ring keeps */
#define RUNNER_LOG_BYTES_MAX (256 * 1024) /* bytes of text a replica's ring keeps */
#define RUNNER_LOG_LINE_MAX 4096         /* longer lines are cut in pieces */
#define RUNNER_LOG_PAGE_MAX 1000         /* lines in one answer of GET /v1/logs */
#define RUNNER_LOG_RINGS_MAX 128         /* sandbox names whose lines are kept */

typedef struct runner_output runner_output;

/* The runner's rings, and the loop their pipes are read on. Returns 0 with
 * *RET, or -ENOMEM. */
int runner_output_new(h2o_loop_t *loop, const char *dir, runner_output **ret);
/* Closes every pipe and frees every ring; accepts NULL. */
void runner_output_free(runner_output *o);

/* Before launching sandbox NAME, tagged OWNER ("" when none; an Enclave
 * replica's "enclave/<enclave>/…" names its enclave): makes its two pipes
 * (the write ends into *RET_STDOUT_FD and *RET_STDERR_FD, for the launch)
 * and its ring (kept from an earlier sandbox of that name, or new).
 * Returns 0 or a negative errno. */
int runner_output_open(runner_output *o, const char *name, const char *owner, int *ret_stdout_fd,
                       int *ret_stderr_fd);
/* After the launch (or its failure): closes the runner's copies of the
 * write ends and starts reading (LAUNCHED) or forgets the pipes. */
void runner_output_started(runner_output *o, const char *name, bool launched);
/* Sandbox NAME was deleted: its ring is dropped (what is still in its
 * pipes is read first to the log file and the exporter, not kept). */
void runner_output_forget(runner_output *o, const char *name);

/* The lines of ENCLAVE's replicas (those tagged with it; only REPLICA when
 * not NULL) numbered above AFTER, oldest first, at most LIMIT (capped at
 * RUNNER_LOG_PAGE_MAX); with TAIL, the last LIMIT of them instead. Returns
 * {"boot": hex id of this runner run, "next": the cursor to ask after,
 * "lines": [{"seq", "time", "replica", "stream", "text"}]}, or NULL when
 * out of memory. */
json_t *runner_output_read(const runner_output *o, const char *enclave, const char *replica, uint64_t after,
                           size_t limit, bool tail);
