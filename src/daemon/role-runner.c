/* The `runner` role's main: its view of the configuration, then its server
 * (src/runner/server.c). */
#include <stdio.h>

#include "daemon/daemon.h"
#include "runner/server.h"

int role_runner_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    char api_url[300], api_role_url[600];
    daemon_api_url(cfg, api_url, sizeof(api_url));
    daemon_api_role_url(cfg, api_role_url, sizeof(api_role_url));
    const runner_server_config runner = {
        .socket = cfg->runner_socket,
        .mtls = {.listen = cfg->runner_listen, .cert_file = cfg->role_cert, .key_file = cfg->role_key,
                 .ca_file = cfg->ca_cert},
        .dir = cfg->runner_dir,
        .agent = cfg->agent_path,
        .plugin_sandbox = cfg->plugin_sandbox_path,
        .key = cfg->runner_key,
        .cert = cfg->runner_cert,
        .platform_ca_cert = cfg->platform_ca_cert,
        .ca_cert = cfg->api_trust,
        .token = cfg->runner_token,
        .api_url = api_url,
        .api_role_url = api_role_url,
        .audit_socket = cfg->audit_socket,
        .plugin_dir = cfg->plugin_dir,
        .plugin_trusted = cfg->plugin_trusted,
        .cgroup = cfg->runner_cgroup,
        .health = health,
        .roles = all,
        .n_roles = n_all,
    };
    return runner_serve(&runner);
}
