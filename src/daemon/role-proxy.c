/* The `proxy` role's main: its view of the configuration, then its server
 * (src/proxy/role.c). Its HTTP/1 connections are served by httpd's own
 * front end (src/httpd/h1front.h); CLOISTER_PROXY_HTTP1=h2o gives them to
 * libh2o's HTTP/1 server instead (the server before it, kept for a
 * comparison or a fallback). */
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "proxy/role.h"

int role_proxy_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    (void)all, (void)n_all;
    char api_url[300], api_role_url[600];
    const char *http1 = getenv("CLOISTER_PROXY_HTTP1");
    daemon_api_url(cfg, api_url, sizeof(api_url));
    daemon_api_role_url(cfg, api_role_url, sizeof(api_role_url));
    const proxy_role_config proxy = {
        .data_dir = cfg->data_dir,
        .domain = cfg->domain,
        .api_url = api_url,
        .api_role_url = api_role_url,
        .token_file = cfg->proxy_token,
        .audit_socket = cfg->audit_socket,
        .ca_cert = cfg->ca_cert,
        .api_ca_cert = cfg->api_trust,
        .host_ca_cert = cfg->proxy_ca_cert,
        .host_ca_key = cfg->proxy_ca_key,
        .platform_ca_cert = cfg->platform_ca_cert,
        .runner_dir = cfg->runner_dir,
        .plugin_dir = cfg->plugin_dir[0] ? cfg->plugin_dir : NULL,
        .plugin_trusted = cfg->plugin_trusted,
        .portal_dir = cfg->portal_dir[0] ? cfg->portal_dir : NULL,
        .listen = cfg->proxy_listen,
        .plain_listen = cfg->proxy_http_listen[0] ? cfg->proxy_http_listen : NULL,
        .cert_file = cfg->proxy_cert,
        .key_file = cfg->proxy_key,
        .threads = cfg->proxy_threads,
        .h1_front = !http1 || strcmp(http1, "h2o") != 0,
        .upstream_idle = cfg->proxy_upstream_idle,
        .upstream_conns = cfg->proxy_upstream_conns,
        .metrics = cfg->proxy_metrics,
        .ready_flag = &health->ready,
    };
    return proxy_serve(&proxy);
}
