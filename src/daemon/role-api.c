/* The `api` role's main: its view of the configuration, then its server
 * (src/api/role.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "daemon/daemon.h"

int role_api_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    char auth_dir[4200];
    snprintf(auth_dir, sizeof(auth_dir), "%s/auth", cfg->data_dir);
    char blob_dir[4200];
    snprintf(blob_dir, sizeof(blob_dir), "%s/api/blobs", cfg->data_dir);
    const char *proxy_colon = strrchr(cfg->proxy_listen, ':');
    unsigned long proxy_port = proxy_colon ? strtoul(proxy_colon + 1, NULL, 10) : 0;
    const api_role_config api = {
        .api = {.listen = cfg->api_listen,
                .role_listen = cfg->api_role_listen, .role_cert = cfg->role_cert, .role_key = cfg->role_key,
                .role_ca = cfg->ca_cert,
                .cert_file = cfg->api_cert, .key_file = cfg->api_key,
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
