/* Internal to the API: the server and per-thread state shared by handlers. */
#pragma once

#include <h2o.h>
#include <openssl/ssl.h>
#include <stdatomic.h>

#include "api/api.h"

typedef struct api_server api_server;

#define AUTH_CACHE_SLOTS 64

/* A verified credential token and what it resolved to, valid while the store
 * has not changed since (any write may revoke or disable). */
typedef struct auth_cache_entry {
    char lookup_key[40];
    char digest[65];
    int64_t revision;
    int64_t expires_at; /* the credential's expiry, seconds; INT64_MAX when none */
    json_t *user, *credential;
} auth_cache_entry;

/* One event loop thread. The h2o context comes first so a handler can get
 * its thread from req->conn->ctx. */
typedef struct api_thread {
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    api_server *server;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t write_done; /* completed store writes arrive here */
    h2o_timeout_t watch_poll;              /* how often watchers look for changes */
    h2o_linklist_t watchers;
    size_t writes_in_flight;
    h2o_linklist_t conns; /* open client connections (tracked_conn), closed at shutdown */
    auth_cache_entry auth_cache[AUTH_CACHE_SLOTS];
    h2o_socket_t *listener;
    pthread_t tid;
} api_thread;

struct api_server {
    const api_config *cfg;
    h2o_globalconf_t globalconf;
    SSL_CTX *ssl_ctx;
    int listen_fd;
    api_thread *threads;
    unsigned n_threads;
    _Atomic bool stopping;
};

/* Registers the API's request handler on PATHCONF. */
void api_handlers_register(api_server *srv, h2o_pathconf_t *pathconf);
/* Per-thread setup and teardown of the handlers' state (receiver, timers). */
void api_handlers_thread_init(api_thread *t);
/* Ends every watch stream of T (at shutdown). */
void api_handlers_thread_drain(api_thread *t);
/* True when T still has requests waiting on the store or open watch streams. */
bool api_handlers_thread_busy(api_thread *t);
void api_handlers_thread_dispose(api_thread *t);
