/* Internal to the API: the server and per-thread state shared by handlers. */
#pragma once

#include <h2o.h>
#include <stdatomic.h>

#include "api/api.h"
#include "httpd/offload.h"
#include "policy/policy-source.h"

typedef struct api_server api_server;

#define AUTH_CACHE_SLOTS 64

/* A verified credential token and what it resolved to, valid while the store
 * has not changed since (any write may revoke or disable). */
typedef struct auth_cache_entry {
    char lookup_key[40];
    char digest[65];
    int64_t revision;
    json_t *user, *credential; /* the user NULL when it does not exist */
} auth_cache_entry;

/* The API's state on one event loop thread (httpd's per-thread state). */
typedef struct api_thread {
    h2o_context_t *ctx;
    api_server *server;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t write_done; /* completed store writes arrive here */
    h2o_timeout_t watch_poll;              /* how often watchers look for changes */
    h2o_linklist_t watchers;
    h2o_timeout_t news_tick;     /* how often the store's revision is looked at (sse.h) */
    h2o_timeout_entry_t news;    /* on news_tick while a stream is open */
    size_t writes_in_flight;
    offload_loop *offload; /* blocking calls (KMS, identity providers) come back here */
    auth_cache_entry auth_cache[AUTH_CACHE_SLOTS];
} api_thread;

struct api_server {
    const api_config *cfg;
    policy_source *policies; /* the store's current policy set, for authorization */
    /* blocking calls off the event loops: to local roles (kms, audit), and
     * to identity providers, which may be slow and so have their own */
    offload_pool *local, *remote;
    struct notifier *notify; /* notifications and webhooks (notify.h) */
};

/* httpd hooks (see httpd.h): the API's request handler on PATHCONF (USERDATA
 * is the api_server), and its per-thread state: created, drained of watch
 * streams, busy while store writes are pending, and released. */
void api_handlers_register(h2o_pathconf_t *pathconf, void *userdata);
void *api_handlers_thread_init(h2o_context_t *ctx, void *userdata);
void api_handlers_thread_drain(void *state);
bool api_handlers_thread_busy(void *state);
void api_handlers_thread_dispose(void *state);
