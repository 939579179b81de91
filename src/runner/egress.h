/* Allow-only egress of an agent-mode sandbox (docs/enclaves.md "Egress").
 * The runner listens on <runner_dir>/<sandbox>/egress.sock, bound inside the
 * sandbox at SANDBOX_EGRESS_PATH, where the agent's CONNECT proxy opens one
 * connection per tunnel and writes one line
 *
 *     <host> <port>\n
 *
 * The runner answers one line, "200 <address>\n" (then both sides copy
 * bytes) or "<status> <reason>\n" and closes: 403 when the destination is
 * not in the Enclave's egress list or resolves only to addresses that may
 * not be reached (egress-check.h; an entry naming an IP literal reaches that
 * address only), 502 when it cannot be resolved or connected. It resolves
 * names itself and connects to the very address it checked. For an entry
 * with tls: true it answers 200 before connecting, reads the client's first
 * TLS record and connects only when the ClientHello's server name equals
 * the host (case-insensitive), or for an entry naming an IP address only
 * when it names no server (nothing can be fronted at that address);
 * otherwise it closes the tunnel. Every
 * decision is an audit event enclave.egress. Caps: RUNNER_EGRESS_TUNNELS_MAX
 * tunnels per sandbox, RUNNER_EGRESS_IDLE_S without traffic ends a tunnel. */
#pragma once

#include <jansson.h>

#include "httpd/json.h"

#define RUNNER_EGRESS_ENTRIES_MAX 32
#define RUNNER_EGRESS_TUNNELS_MAX 16
#define RUNNER_EGRESS_IDLE_S 120
#define RUNNER_EGRESS_HELLO_TIMEOUT_S 10

typedef struct runner_egress runner_egress;

/* Parses ENTRIES (the launch request's "egress": [{host, port, tls?}]) and
 * PLUGINS (its "plugins": the Enclave's egress plugins, or NULL: each
 * tunnel the list allows is then asked of them in order; a DENY refuses
 * it (403), a failure refuses it or lets it go as the plugin's `failure`
 * says, and their tags go in the audit entry) of
 * sandbox NAME whose owner tag is OWNER ("" when none; "enclave/<name>/…"
 * names the Enclave in audit events), listens on DIR/egress.sock (DIR
 * exists: the agent's directory) reachable by the sandbox's root, and
 * starts serving it on a thread of its own. Returns the state, or NULL with
 * ERR (400 for a bad entry, 500 otherwise). */
runner_egress *runner_egress_new(const char *dir, const char *name, const char *owner, const json_t *entries,
                                 const json_t *plugins, api_error *err);

/* The host path of the socket, for sandbox_spec.egress. */
const char *runner_egress_socket(const runner_egress *eg);

/* Stops accepting, ends the tunnels (each within a second), removes the
 * socket and frees EG once the last tunnel is gone; accepts NULL. */
void runner_egress_free(runner_egress *eg);

static inline void runner_egress_freep(runner_egress **p)
{
    runner_egress_free(*p);
}
