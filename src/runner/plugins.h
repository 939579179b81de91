/* The runner's plugin launcher (docs/plugins.md, "Out of process"): on
 * <runner_dir>/plugins.sock, for the proxy role and the runner's own egress
 * gate only, each connection asks
 * for one sandbox of one untrusted plugin: it writes a 2-byte
 * little-endian length and the plugin's name, and the runner launches
 * cloister-plugin-sandbox in a sandbox (sandbox/launch.h: the plugin
 * directory read-only at /app, loopback only, seccomp, no_new_privs,
 * rlimits) with that very connection as its fd 3: from then on the proxy
 * speaks the plugin protocol (plugin/wire.h) with the sandbox, whose first
 * frame answers READY. When the sandbox cannot be launched the runner
 * answers READY with the reason itself. The runner reaps the sandboxes;
 * one whose proxy hangs up exits. */
#pragma once

#include <stddef.h>

#include "basic/role.h"

#define RUNNER_PLUGIN_SANDBOXES_MAX 256
#define RUNNER_PLUGIN_MEMORY_BYTES (512ull << 20)

typedef struct runner_plugins runner_plugins;

/* Starts serving DIR/plugins.sock for plugins in PLUGIN_DIR on a thread of
 * its own, launching HOST (the sandbox host, cloister-plugin-sandbox; NULL or
 * "": looked up beside cloisterd); ROLES/N_ROLES for the peer check. Returns 0
 * and the launcher, -ENOENT when no plugin directory is configured or the
 * sandbox host cannot be found (nothing started; logged), or a negative errno. */
int runner_plugins_start(const char *dir, const char *plugin_dir, const char *host, const role_health *roles,
                         size_t n_roles, runner_plugins **ret);
/* Stops serving and ends the sandboxes; accepts NULL. */
void runner_plugins_stop(runner_plugins *rp);
