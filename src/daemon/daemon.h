/* cloisterd: the configuration every role sees, and the role table. */
#pragma once

#include <stdbool.h>

#include "basic/role.h"

typedef struct daemon_config {
    bool dev;
    char config_file[4096]; /* --config FILE; "" with --dev */
    bool role_wanted[5];    /* the roles to run, in config.h's daemon_role_names order */
    char data_dir[4096];
    char api_listen[256];
    char proxy_listen[256];
    char proxy_http_listen[256];
    char domain[256];
    unsigned api_threads;
    unsigned proxy_threads;
    unsigned proxy_upstream_idle, proxy_upstream_conns; /* per upstream and proxy thread; 0: the defaults */
    unsigned access_retention_days; /* the audit role's access-log segments not written for this long go; 0: kept */
    /* paths inside data_dir */
    char ca_cert[4200], ca_key[4200];
    char api_cert[4200], api_key[4200];
    char proxy_cert[4200], proxy_key[4200]; /* the proxy's default certificate */
    char proxy_ca_cert[4200], proxy_ca_key[4200]; /* the proxy's intermediate CA, constrained to the domain */
    char store_url[4200];
    char admin_token[4200];
    char proxy_token[4200];              /* the proxy role's credential token (0600) */
    char runner_token[4200];             /* the runner role's credential token (0600), for key release */
    char run_dir[4200];                  /* role sockets (0700) */
    char audit_socket[4200];             /* the audit role's local API */
    char audit_db[4200], audit_key[4200], audit_pub[4200];
    /* the kms role: its socket, sealed root key, auto-unseal file (--seal dev), key ring */
    /* kms_socket, audit_socket and runner_socket are a role's address: its Unix socket here, or the peer's
     * https:// URL when this machine does not run it */
    char kms_socket[4200];
    char kms_unseal_socket[4200]; /* `cloisterd unseal`'s: status and unseal only, any process of the daemon's uid */
    char runner_socket[4200];                   /* the runner's sandbox-evidence signing service */
    char platform_ca_cert[4200], platform_ca_key[4200]; /* roots of sandbox evidence (P-384) */
    char runner_cert[4200], runner_key[4200];   /* the runner's platform key (P-384) */
    char runner_dir[4200];                      /* the runner's files: platform key, sandbox logs */
    char agent_path[4200];                      /* the runner's copy of cloister-agent ("" when none was found) */
    char plugin_sandbox_path[4200];             /* the runner's copy of cloister-plugin-sandbox ("" when none) */
    char engine_bundle[4200];                   /* the runner's copy of the job engine's bundle ("" when none) */
    char portal_dir[4200];                      /* the proxy's copy of the built portal app ("" when none) */
    char job_engine_pcr0[97];                   /* its measurement (hex; "" when none), the engine.pcr0 of every digest */
    char kms_root_file[4200], kms_dev_key_file[4200], kms_keyring_file[4200];
    char seal_mode[16];         /* dev, passphrase or pkcs11 */
    char pkcs11_module[4096];   /* --seal pkcs11: the token's module, slot */
    unsigned long pkcs11_slot;
    char seal_secret_file[4096]; /* kms.seal passphraseFile or pkcs11.pinFile: the kms role unseals from it at start */
    /* the kms role's view only: the secret read from seal_secret_file before it dropped privileges, wiped by it */
    char *seal_secret;
    size_t seal_secret_len;
    char runner_cgroup[4096]; /* runner.cgroup: a delegated cgroup v2 directory for sandboxes; "": found */
    char pki_dir[4096]; /* the cluster CA and each role's certificate (roles/<role>.pem); default: the data dir */
    /* own certificate and key of a listener; "" : issued by the cluster CA */
    char api_tls_cert[4096], api_tls_key[4096];
    char api_trust[4200]; /* what the proxy and the runner verify the API with: ca_cert, or it and the own chain */
    char proxy_tls_cert[4096], proxy_tls_key[4096];
    /* roles on other machines (mutual TLS, daemon/peer-tls.h): the listeners this machine's kms, audit and
     * runner open for them ("" : none), and the https://HOST:PORT of the roles this machine does not run */
    char kms_listen[256], audit_listen[256], runner_listen[256];
    char peer_api[512], peer_kms[512], peer_audit[512], peer_runner[512];
    /* api.roleListen: the api's mutual-TLS listener for the proxy and the runner ("" : none), and
     * peers.apiRoles: its https://HOST:PORT when the api runs elsewhere */
    char api_role_listen[256], peer_api_roles[512];
    /* a role's own certificate and key (from pki.dir/roles/, copied into its room at each start; "" : none) */
    char role_cert[4200], role_key[4200];
    /* telemetry.otlp: handed to the roles as OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS ("k=v,k=v") */
    char otlp_endpoint[1024], otlp_headers[2048];
    /* plugins (docs/plugins.md): the one directory they load from ("" none) and those that load in the
     * proxy's process (comma-separated); the others run in sandboxes the runner launches */
    char plugin_dir[4096], plugin_trusted[1024];
    struct proxy_metrics *proxy_metrics; /* shared memory the supervisor maps before forking: proxy writes, api renders */
} daemon_config;

/* A role: a process the supervisor forks and restarts. MAIN runs in the
 * child with SIGTERM and SIGINT blocked, sets HEALTH->ready once serving,
 * and returns the exit status after a SIGTERM. */
typedef struct role_def {
    const char *name;
    int (*main)(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
} role_def;

int role_api_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
int role_kms_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
int role_audit_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
int role_proxy_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);
int role_runner_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all);

/* The API's https URL as the other roles reach it: peers.api when the api
 * runs elsewhere, else CFG's api_listen with a wildcard address replaced by
 * loopback. */
void daemon_api_url(const daemon_config *cfg, char *out, size_t size);

/* The https://HOST:PORT of the api's listener for roles (mutual TLS, the
 * role certificate instead of the role token) as the proxy and the runner
 * reach it: peers.apiRoles when the api runs elsewhere, else api.roleListen
 * (a wildcard address replaced by loopback) when the api runs here; "" when
 * there is none (they call the public API with their role token). */
void daemon_api_role_url(const daemon_config *cfg, char *out, size_t size);

/* Reads the KMS passphrase or PIN, one line, from FD, or without echo from
 * the terminal when FD is -1, into a new buffer (the caller wipes and frees
 * it). Returns 0, -ENOTTY (no terminal), -EINVAL (over KMS_SECRET_MAX, a
 * NUL) or another negative errno. */
int unseal_read_secret(int fd, char **ret, size_t *ret_len);

/* `cloisterd unseal [--data-dir DIR] [--passphrase-fd N]`: hands the
 * passphrase or PIN to the running kms role; returns the exit status. */
int cloisterd_unseal(int argc, char **argv);
