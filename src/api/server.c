/* The API server: the REST API's handlers on an httpd listener with TLS. */
#include "api/server.h"
#include "httpd/httpd.h"

#define API_MAX_CONNECTIONS 4096 /* lowered below the descriptor limit at start (httpd) */

int api_run(const api_config *cfg)
{
    api_server srv = {.cfg = cfg};
    int e = policy_source_new(cfg->store, &srv.policies);
    if (e < 0)
        return e;
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
        .userdata = &srv,
        .ready_flag = cfg->ready_flag,
    };
    e = httpd_run(&h);
    policy_source_free(srv.policies);
    return e;
}
