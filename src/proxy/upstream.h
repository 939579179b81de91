/* The proxy's HTTP/1.1 client to its upstreams (upstream.c).
 *
 * An origin (scheme://host:port of a Service's upstream URL, or the loopback
 * listener of an enclave replica's bridge) is made once for the process.
 * Each proxy thread keeps its own keep-alive connections to it, which stay
 * registered in the thread's event loop with their reads armed: a reused
 * connection costs no epoll_ctl, fcntl or probe. No liveness probe either:
 * an idle connection that gets any event (bytes, or the upstream closing
 * it) is closed and dropped. A request that finds its reused connection
 * closed before any byte of the answer is retried once on a fresh
 * connection when it is idempotent (GET, HEAD, OPTIONS, PUT, DELETE: the
 * body is whole in memory); any other answers 502.
 *
 * Caps, per origin and per proxy thread: idle connections kept
 * (PROXY_UPSTREAM_IDLE_MAX by default) and connections open at once
 * (PROXY_UPSTREAM_CONNS_MAX); a request over the second waits for a
 * connection to come free (504 after the upstream timeout). And per thread,
 * over all origins: the connections its descriptors allow (the thread's
 * budget), so that the streams of a few HTTP/2 clients cannot take every
 * descriptor; a request over it closes the thread's least recently used
 * idle connection (to another origin) at once, or else waits for a
 * connection to close anywhere in the thread. WebSocket tunnels leave the
 * pool and do not count. */
#pragma once

#include <h2o.h>
#include <stdbool.h>
#include <sys/socket.h>

#define PROXY_UPSTREAM_IDLE_MAX 64   /* idle connections kept per origin and thread (default) */
#define PROXY_UPSTREAM_CONNS_MAX 256 /* connections open per origin and thread (default) */
#define PROXY_UPSTREAM_IDLE_MS 2000  /* an idle connection is closed after */
#define PROXY_ORIGINS_MAX 8192       /* origins of the process: URLs and enclave bridges */

typedef struct proxy_origin proxy_origin;
typedef struct proxy_upstreams proxy_upstreams;
struct proxy_request;

/* Sets the caps of the origins made from now on (0: keep the default):
 * idle connections kept and connections open, per origin and thread. Call
 * before the proxy's threads start. */
void proxy_upstream_set_caps(unsigned idle_max, unsigned conns_max);

/* The origin of URL (http or https), made on first use; process lifetime.
 * A literal address is connected to as is, a host name resolved per new
 * connection. NULL when PROXY_ORIGINS_MAX are in use or memory ran out. */
proxy_origin *proxy_origin_for_url(const h2o_url_t *url);
/* A plain origin at address SA (an enclave bridge's listener) with at most
 * CONNS_MAX connections per thread (0: the default). NULL as above. */
proxy_origin *proxy_origin_for_address(const struct sockaddr *sa, socklen_t len, unsigned conns_max);
/* Frees every origin (at exit, after the threads stopped). */
void proxy_origins_free(void);

/* A thread's connections on LOOP, made with it, at most CONNS_MAX open to
 * all origins together (0: no cap; see above for a request over it);
 * NULL: out of memory. */
proxy_upstreams *proxy_upstreams_new(h2o_loop_t *loop, unsigned conns_max);
/* Closes the thread's idle connections and frees U (exchanges are over). */
void proxy_upstreams_free(proxy_upstreams *u);

/* Sends PR's request (its method, headers as rewritten, body) to ORIGIN as
 * PATH (from the request's pool) with Host: HOST, and streams the answer
 * back: the upstream's status, headers (hop-by-hop ones and its Set-Cookie
 * of the proxy's own cookies dropped, a Location at the upstream rewritten
 * to the client's address) and body; a WebSocket upgrade becomes a tunnel.
 * A failed exchange answers 502, a timed out one 504 (proxy_fail). */
void proxy_upstream_forward(struct proxy_request *pr, proxy_origin *origin, h2o_iovec_t host, h2o_iovec_t path);
