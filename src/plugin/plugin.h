/* The plugin host (docs/plugins.md): plugins named by a manifest, loaded
 * from the one directory the operator configured. A trusted plugin (listed
 * by the operator) loads in this process with dlopen; any other runs out of
 * process, in a sandbox the runner starts (runner/plugins.h), spoken to
 * over a Unix socket (wire.h). A call returns how it went; what to do when
 * it failed (open or closed) is the caller's, as are the metrics.
 *
 * Instances are shared: one per (plugin, config, timeout) in the process,
 * reference counted, so a new configuration snapshot reuses the running
 * ones. An instance is safe to call from several threads at once. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "plugin/call.h"

#define PLUGIN_TIMEOUT_MS_MAX 10000
#define PLUGIN_SPAWN_TIMEOUT_MS 5000 /* a sandbox's start, its plugin's init included */
#define PLUGIN_LANES 4               /* concurrent calls of one out-of-process instance */
#define PLUGIN_ERROR_MAX 512

typedef enum plugin_outcome {
    PLUGIN_OUTCOME_OK,      /* the plugin answered: see call->action */
    PLUGIN_OUTCOME_ERROR,   /* it could not be loaded, started or reached */
    PLUGIN_OUTCOME_CRASH,   /* its sandbox went away during the call */
    PLUGIN_OUTCOME_TIMEOUT, /* no answer within its timeout */
    PLUGIN_OUTCOME_GARBAGE, /* an answer the protocol refuses */
    PLUGIN_OUTCOME_COUNT_,
} plugin_outcome;

/* "ok", "error", "crash", "timeout", "garbage" (metric labels). */
const char *plugin_outcome_name(plugin_outcome o);

/* Where plugins come from, for this process: DIR (absolute; NULL: no
 * plugins), the names in TRUSTED (comma-separated; may be NULL) load in
 * process, the others are started by the runner listening on SPAWN_SOCKET
 * (NULL: untrusted plugins cannot run). Strings are copied. Returns 0 or
 * -ENOMEM. Call once, before any instance. */
int plugin_host_configure(const char *dir, const char *trusted, const char *spawn_socket);

/* Opens plugin NAME from DIR in this process: DIR/NAME.so, which must
 * resolve inside DIR, exporting CLOISTER_PLUGIN_SYMBOL of the ABI version
 * this host speaks. Returns 0 with the dlopen handle and the plugin, or a
 * negative errno with a reason naming the plugin in ERR. */
int plugin_library_open(const char *dir, const char *name, void **ret_handle, const cloister_plugin **ret_plugin,
                        char *err, size_t err_size);
/* Whether NAME may name a plugin file: [a-z0-9][a-z0-9_-]*, at most 63. */
bool plugin_name_valid(const char *name);

typedef struct plugin_instance plugin_instance;

/* The instance of plugin NAME with CONFIG (JSON text) and TIMEOUT_MS,
 * made on first use (a trusted plugin is loaded and initialised now; an
 * untrusted one's first sandbox is started now, and again by a call when
 * it failed). Returns 0 and a reference, or a
 * negative errno with the reason in ERR (a trusted plugin that cannot load
 * or initialise, an untrusted one when no runner can start it). */
int plugin_instance_get(const char *name, const char *config, uint32_t timeout_ms, plugin_instance **ret, char *err,
                        size_t err_size);
/* Another reference to P (a call in flight keeps its instance). Returns P. */
plugin_instance *plugin_instance_ref(plugin_instance *p);
void plugin_instance_unref(plugin_instance *p);
bool plugin_instance_in_process(const plugin_instance *p);
/* Whether the instance handles PHASE (an out-of-process one: always). */
bool plugin_instance_handles(const plugin_instance *p, cloister_phase phase);

/* Runs CALL (its phase and inputs set) on P; on PLUGIN_OUTCOME_OK the
 * answer is in CALL, otherwise ERR says what failed. */
plugin_outcome plugin_instance_run(plugin_instance *p, plugin_call *call, char *err, size_t err_size);
/* Runs out-of-process instance P on FRAME, a CALL frame (wire.h) the
 * caller encoded from CALL, so that CALL's borrowed inputs are not read
 * here (a worker thread may run this while the request they point into
 * goes away); the answer is decoded and re-checked into CALL. Blocks for at
 * most timeoutMs waiting for a free lane (then PLUGIN_OUTCOME_TIMEOUT), a
 * sandbox's start when its lane has none, and timeoutMs for the call.
 * FRAME is the caller's. */
plugin_outcome plugin_instance_run_frame(plugin_instance *p, const void *frame, size_t len, plugin_call *call,
                                         char *err, size_t err_size);

/* Reads one frame from FD into *BUF (grown, at most PLUGIN_FRAME_MAX),
 * waiting until DEADLINE_NS (monotonic; 0: no deadline). Returns the
 * payload's length, -ETIMEDOUT, -EPIPE at end of stream, -EBADMSG for a
 * length past the cap, or another negative errno. */
ssize_t plugin_read_frame(int fd, uint8_t **buf, size_t *cap, uint64_t deadline_ns);
/* Writes LEN bytes to FD, waiting until DEADLINE_NS (0: no deadline).
 * Returns 0, -ETIMEDOUT, -EPIPE or another negative errno. */
int plugin_write_all(int fd, const void *p, size_t len, uint64_t deadline_ns);
