/* Bridges from the proxy to enclave replicas over attested TLS.
 *
 * A replica's agent serves aTLS on a Unix socket the runner made for it
 * (docs/enclaves.md). For each replica a Service routes to, the proxy runs a
 * bridge: a loopback TCP listener the proxy's threads connect to as to any
 * plain upstream (upstream.h), and a thread that carries each accepted connection to
 * the replica over a TLS connection of its own. Before the first byte of a
 * request goes through, the bridge sends a fresh nonce as the TLS server
 * name and verifies the replica's certificate with atls_verify() against
 * the Enclave's AttestationPolicy: evidence, key binding, nonce, policy. A
 * replica that fails is cut off (the request answers 502) and the refusal
 * is an audit entry (`proxy.enclave.refused`).
 *
 * Bridges are kept for the life of the process, one per (socket, policy),
 * so keep-alive connections survive configuration changes. */
#pragma once

#include <h2o.h>
#include <jansson.h>

#define PROXY_BRIDGES_MAX 1024         /* (replica, policy) pairs at once */
#define PROXY_BRIDGE_CONNS_MAX 64      /* connections carried by one bridge at once */

/* Loads the trust anchors of sandbox evidence (the platform CA, PEM at
 * ROOTS_PATH) and notes RUNNER_DIR, where the runner keeps each replica's
 * <name>/atls.sock; the proxy's THREADS share each bridge's connections. Returns 0 or a negative errno (logged). */
int proxy_bridges_init(const char *roots_path, const char *runner_dir, unsigned threads);
/* The origin of the bridge for replica REPLICA (its agent's
 * socket under the runner's directory), verified against POLICY (an
 * AttestationPolicy document, borrowed: copied when the bridge is made)
 * for ENCLAVE (named in logs and audit entries). Made and started on first
 * use. NULL before proxy_bridges_init(), when too many bridges exist or one
 * cannot be started (logged). */
struct proxy_origin *proxy_bridge_origin(const char *replica, const json_t *policy, const char *enclave);
/* Blocking: connects to replica REPLICA's agent asking for evidence with
 * NONCE (32 bytes) and returns its certificate as PEM in *RET_PEM (heap;
 * not verified here: for a client that verifies it itself). Returns 0,
 * -EIO when the replica cannot be reached, -EINVAL or -ENOMEM. */
int proxy_bridge_certificate(const char *replica, const uint8_t nonce[32], char **ret_pem);
/* Stops every bridge and the connections they carry, and frees them. */
void proxy_bridges_shutdown(void);
