/* The agent's egress proxy (docs/enclaves.md "Egress"): when the runner
 * bound an egress socket into the sandbox (SANDBOX_EGRESS_PATH, present
 * only for an Enclave with spec.egress), an HTTP CONNECT proxy on
 * 127.0.0.1 for the workload. Each CONNECT host:port becomes one connection
 * to the runner's egress socket (runner/egress.h), which decides; its
 * answer becomes the proxy's (200, 403, 502...), then bytes are copied both
 * ways. At most AGENT_EGRESS_TUNNELS_MAX tunnels at once. */
#pragma once

#define AGENT_EGRESS_TUNNELS_MAX 16
#define AGENT_EGRESS_HEAD_MAX 8192
#define AGENT_EGRESS_HEAD_TIMEOUT_S 10

/* Without SOCKET (the egress socket's path) there is no egress: returns 0
 * and does nothing. Otherwise listens on 127.0.0.1 (a port of the
 * kernel's choice), sets HTTPS_PROXY, HTTP_PROXY, https_proxy, http_proxy
 * to it and NO_PROXY/no_proxy to localhost in this process's environment
 * (the workload inherits it) and serves the proxy on a thread of its own.
 * Returns 0, or a negative errno (the reason logged). */
int agent_egress_start(const char *socket);
