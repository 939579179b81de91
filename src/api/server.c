/* The API server: the REST API's handlers on an httpd listener with TLS. */
#include <unistd.h>

#include "api/server.h"
#include "api/handlers-job-runs.h"
#include "api/notify.h"
#include "basic/log.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "httpd/httpd.h"

#define API_MAX_CONNECTIONS 4096 /* lowered below the descriptor limit at start (httpd) */
/* workers for calls to the local roles: enough to keep the kms role busy
 * while the loops parse the next requests; more jobs than this wait, past
 * the cap they are refused (503) */
#define API_LOCAL_WORKERS 4
#define API_LOCAL_JOBS_MAX 1024
#define API_REMOTE_WORKERS 4 /* identity providers: each call capped at 15 s */
#define API_REMOTE_JOBS_MAX 64

int api_run(const api_config *cfg)
{
    api_server srv = {.cfg = cfg};
    int e = policy_source_new(cfg->store, &srv.policies);
    if (e == 0)
        e = offload_pool_new("api-local", API_LOCAL_WORKERS, API_LOCAL_JOBS_MAX, &srv.local);
    if (e == 0)
        e = offload_pool_new("api-remote", API_REMOTE_WORKERS, API_REMOTE_JOBS_MAX, &srv.remote);
    if (e == 0)
        e = notify_start(&srv);
    if (e < 0) {
        offload_pool_free(srv.remote);
        offload_pool_free(srv.local);
        policy_source_free(srv.policies);
        return e;
    }
    /* api.roleListen: the roles that call the api, known by their certificate */
    const peer_policy role_peers = {.socket = "api.roleListen", .roles = cfg->roles, .n_roles = cfg->n_roles,
                                    .uid = geteuid(), .allowed = {"proxy", "runner"}};
    httpd_config h = {
        .name = "API",
        .listen = cfg->listen,
        .cert_file = cfg->cert_file,
        .key_file = cfg->key_file,
        .threads = cfg->threads ? cfg->threads : 2,
        /* JSON bodies are capped at API_BODY_MAX with a JSON error; h2o cuts
         * off anything far larger before buffering it */
        .max_request_body = 4 * 1024 * 1024,
        .max_connections = API_MAX_CONNECTIONS,
        .hooks = {api_handlers_register, api_handlers_thread_init, api_handlers_thread_drain,
                  api_handlers_thread_busy, api_handlers_thread_dispose},
        .handlers_check_framing = true, /* on_req: httpd_framing_check() first */
        .userdata = &srv,
        .ready_flag = cfg->ready_flag,
        .mtls = {.listen = cfg->role_listen, .cert_file = cfg->role_cert, .key_file = cfg->role_key,
                 .ca_file = cfg->role_ca},
        .check_cert = peer_tls_check_hook,
        .peer_data = &role_peers,
    };
    if (api_job_runs_sweeper_start(&srv) < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot start the job run sweeper: runs whose sandbox died stay running "
                   "until their next run", NULL);
    e = httpd_run(&h);
    api_job_runs_sweeper_stop();
    notify_stop(&srv); /* what the last requests queued is stored first */
    offload_pool_free(srv.remote); /* every loop is freed: their jobs are done */
    offload_pool_free(srv.local);
    policy_source_free(srv.policies);
    return e;
}
