/* The `api` role's main: its view of the configuration, then its server
 * (src/api/role.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "daemon/daemon.h"

void daemon_api_url(const daemon_config *cfg, char *out, size_t size)
{
    const char *listen = cfg->api_listen, *colon = strrchr(listen, ':');
    if (cfg->peer_api[0]) /* the api runs elsewhere */
        snprintf(out, size, "%s", cfg->peer_api);
    else if (colon && strncmp(listen, "0.0.0.0:", 8) == 0)
        snprintf(out, size, "https://127.0.0.1%s", colon);
    else if (colon && strncmp(listen, "[::]:", 5) == 0)
        snprintf(out, size, "https://[::1]%s", colon);
    else
        snprintf(out, size, "https://%s", listen);
}

int role_api_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    char auth_dir[4200];
    snprintf(auth_dir, sizeof(auth_dir), "%s/auth", cfg->data_dir);
    char blob_dir[4200];
    snprintf(blob_dir, sizeof(blob_dir), "%s/api/blobs", cfg->data_dir);
    const char *proxy_colon = strrchr(cfg->proxy_listen, ':');
    unsigned long proxy_port = proxy_colon ? strtoul(proxy_colon + 1, NULL, 10) : 0;
    const api_role_config api = {
        .api = {.listen = cfg->api_listen, .cert_file = cfg->api_cert, .key_file = cfg->api_key,
                .domain = cfg->domain, .proxy_port = proxy_port <= 65535 ? (unsigned)proxy_port : 0,
                .threads = cfg->api_threads, .roles = all, .n_roles = n_all,
                .ready_flag = &health->ready, .audit_socket = cfg->audit_socket,
                .proxy_metrics = cfg->proxy_metrics, .seal_mode = cfg->seal_mode,
                .store_driver = strncmp(cfg->store_url, "postgres", 8) == 0 ? "postgres" : "sqlite",
                .job_engine_pcr0 = cfg->job_engine_pcr0[0] ? cfg->job_engine_pcr0 : NULL},
        .store_url = cfg->store_url,
        .auth_dir = auth_dir,
        .blob_dir = blob_dir,
        .platform_ca_cert = cfg->platform_ca_cert,
        .kms_socket = cfg->kms_socket,
        .runner_socket = cfg->runner_socket,
        .engine_bundle = cfg->engine_bundle[0] ? cfg->engine_bundle : NULL,
    };
    return api_role_serve(&api);
}
