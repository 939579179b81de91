#include "proxy/role.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "audit/event.h"
#include "auth/keyring.h"
#include "basic/fileio.h"
#include "plugin/plugin.h"
#include "basic/log.h"
#include "httpd/httpd.h"
#include "httpd/offload.h"
#include "pki/pki.h"
#include "proxy/bridge.h"
#include "proxy/certs.h"
#include "proxy/config.h"
#include "proxy/follow.h"
#include "proxy/proxy.h"
#include "proxy/upstream.h"

#define ASSERTION_KEY_ROTATE_S (24 * 3600)
#define MAX_CONNECTIONS 20000 /* at most; httpd lowers it below the descriptor limit */
#define FDS_PER_CONNECTION 2  /* the client's and its upstream's */
#define REQUEST_TIMEOUT_MS 10000 /* HTTP/1: headers and body of a request, and keep-alive idleness */
#define IDLE_TIMEOUT_MS 60000    /* HTTP/2 */
/* /.cloister/attestation: handshakes with replicas at once, and waiting */
#define ATTEST_WORKERS 4
#define ATTEST_JOBS_MAX 256
#define LOGOUT_WORKERS 1    /* sign-outs: one short call to the API each */
#define LOGOUT_JOBS_MAX 64
#define COMMIT_WORKERS 4    /* failClosed requests waiting for their record's commit (audit_event_commit) */
#define COMMIT_JOBS_MAX 1024
/* out-of-process plugin calls of the request phases (each holds a worker
 * for its round trip and its wait for a free sandbox: at most timeoutMs each) */
#define PLUGIN_WORKERS 16
#define PLUGIN_JOBS_MAX 4096

/* The client TLS context for https upstreams: the system's trust store and
 * the cluster CA, certificate and host name verified. */
static SSL_CTX *upstream_tls(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_default_verify_paths(ctx);
    SSL_CTX_load_verify_locations(ctx, ca_file, NULL);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* The upstream connections each of THREADS proxy threads may hold open to
 * all origins together: httpd admits a client connection only with a
 * descriptor to spare for its upstream (FDS_PER_CONNECTION), and those
 * spares are shared by the threads, so that no HTTP/2 client's many
 * streams can take the descriptors the other clients' upstreams need. */
static unsigned upstream_budget(unsigned threads)
{
    unsigned per_thread = httpd_connection_limit(MAX_CONNECTIONS, FDS_PER_CONNECTION) / (threads ? threads : 1);
    return per_thread ? per_thread : 1;
}

int proxy_serve(const proxy_role_config *cfg)
{
    char dir[4200], keys_path[4300], login_url[400], issuer[300];
    snprintf(dir, sizeof(dir), "%s/proxy", cfg->data_dir);
    snprintf(keys_path, sizeof(keys_path), "%s/assertion-keys.json", dir);
    auth_keyring *keys = NULL;
    int r = mkdir_p(dir, 0700);
    if (r == 0)
        r = auth_keyring_open(keys_path, ASSERTION_KEY_ROTATE_S, PROXY_ASSERTION_TTL_S + 2 * JWT_DEFAULT_LEEWAY_S, &keys);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the proxy's assertion signing keys", "path", keys_path, "error",
                   strerror(-r), NULL);
        return 1;
    }
    SSL_CTX *client_tls = upstream_tls(cfg->ca_cert);
    X509 *host_ca = NULL;
    EVP_PKEY *host_ca_key = NULL;
    proxy_certs *certs = NULL;
    offload_pool *attest_pool = NULL, *logout_pool = NULL, *commit_pool = NULL, *plugin_pool = NULL;
    char access_dir[4300];
    snprintf(access_dir, sizeof(access_dir), "%s/access", dir);
    if (!client_tls || pki_load(cfg->host_ca_cert, cfg->host_ca_key, &host_ca, &host_ca_key) < 0 ||
        proxy_certs_new(host_ca, host_ca_key, &certs) < 0 ||
        offload_pool_new("proxy-attest", ATTEST_WORKERS, ATTEST_JOBS_MAX, &attest_pool) < 0 ||
        offload_pool_new("proxy-logout", LOGOUT_WORKERS, LOGOUT_JOBS_MAX, &logout_pool) < 0 ||
        offload_pool_new("proxy-commit", COMMIT_WORKERS, COMMIT_JOBS_MAX, &commit_pool) < 0 ||
        offload_pool_new("proxy-plugins", PLUGIN_WORKERS, PLUGIN_JOBS_MAX, &plugin_pool) < 0 ||
        mkdir_p(access_dir, 0700) < 0) {
        offload_pool_free(attest_pool);
        offload_pool_free(logout_pool);
        offload_pool_free(commit_pool);
        offload_pool_free(plugin_pool);
        proxy_certs_free(certs);
        SSL_CTX_free(client_tls);
        auth_keyring_free(keys);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    proxy_upstream_set_caps(cfg->upstream_idle, cfg->upstream_conns);
    /* enclaves are reached only once their attestation verifies; without
     * the platform CA they are not reached at all */
    proxy_bridges_init(cfg->platform_ca_cert, cfg->runner_dir, cfg->threads);
    char plugin_spawn[4300];
    snprintf(plugin_spawn, sizeof(plugin_spawn), "%s/plugins.sock", cfg->runner_dir ? cfg->runner_dir : "");
    if (plugin_host_configure(cfg->plugin_dir, cfg->plugin_trusted,
                              cfg->plugin_dir && cfg->runner_dir ? plugin_spawn : NULL) < 0) {
        log_fields(LOG_LEVEL_ERROR, "out of memory", NULL);
        return 1;
    }
    snprintf(login_url, sizeof(login_url), "%s/v1/auth/login", cfg->api_url);
    snprintf(issuer, sizeof(issuer), "https://proxy.%s", cfg->domain);
    if (!cfg->portal_dir)
        log_fields(LOG_LEVEL_INFO, "no built portal app (CLOISTER_PORTAL_DIR, or beside cloisterd): portal Services answer 503",
                   NULL);

    r = audit_event_start(cfg->audit_socket);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot start audit event delivery; access decisions go to the log", "error",
                   strerror(-r), NULL);
    proxy_follower *follower = NULL;
    r = proxy_follow_start(&(proxy_follow_config){.api_url = cfg->api_url, .api_role_url = cfg->api_role_url,
                                                  .ca_file = cfg->api_ca_cert,
                                                  .token_file = cfg->token_file, .domain = cfg->domain,
                                                  .metrics = cfg->metrics},
                           &follower);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot start following the API's configuration", "error", strerror(-r), NULL);
        audit_event_stop(2000);
        offload_pool_free(attest_pool);
        offload_pool_free(logout_pool);
        offload_pool_free(commit_pool);
        offload_pool_free(plugin_pool);
        proxy_certs_free(certs);
        SSL_CTX_free(client_tls);
        auth_keyring_free(keys);
        return 1;
    }
    proxy_settings settings = {
        .domain = cfg->domain,
        .login_url = login_url,
        .assertion_issuer = issuer,
        .assertion_keys = keys,
        .upstream_tls = client_tls,
        .upstream_timeout_ms = 30000,
        .websocket_timeout_ms = 300000,
        .metrics = cfg->metrics,
        .certs = certs,
        .attest_pool = attest_pool,
        .portal_dir = cfg->portal_dir,
        .api_url = cfg->api_url,
        .api_ca_file = cfg->ca_cert,
        .logout_pool = logout_pool,
        .access_dir = access_dir,
        .commit_pool = commit_pool,
        .plugin_pool = plugin_pool,
        /* the descriptor beside each client connection httpd admits, shared
         * by the threads: no HTTP/2 client's streams can take more */
        .upstream_budget = upstream_budget(cfg->threads),
    };
    httpd_config hc = {
        .name = "proxy",
        .listen = cfg->listen,
        .cert_file = cfg->cert_file,
        .key_file = cfg->key_file,
        .plain_listen = cfg->plain_listen,
        .threads = cfg->threads,
        .max_request_body = PROXY_DEFAULT_MAX_BODY,
        .max_connections = MAX_CONNECTIONS,
        .fds_per_connection = FDS_PER_CONNECTION,
        .request_timeout_ms = REQUEST_TIMEOUT_MS,
        .idle_timeout_ms = IDLE_TIMEOUT_MS,
        .hooks = {.register_handlers = proxy_register, .thread_init = proxy_thread_init,
                  .thread_busy = proxy_thread_busy, .thread_dispose = proxy_thread_dispose, .configure_tls = proxy_configure_tls},
        .handlers_check_framing = true, /* the normalise stage */
        .h1_front = cfg->h1_front,
        .userdata = &settings,
        .ready_flag = cfg->ready_flag,
    };
    r = httpd_run(&hc);
    proxy_follow_stop(follower);
    proxy_bridges_shutdown();
    audit_event_stop(2000);
    proxy_config_shutdown();
    offload_pool_free(attest_pool); /* every loop is freed: their jobs are done */
    offload_pool_free(logout_pool);
    offload_pool_free(commit_pool);
    offload_pool_free(plugin_pool);
    proxy_certs_free(certs);
    SSL_CTX_free(client_tls);
    auth_keyring_free(keys);
    curl_global_cleanup();
    return r < 0 ? 1 : 0;
}
