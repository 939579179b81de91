/* The runner role's server: the launcher of measured sandboxes and the only
 * holder of the sandbox platform key, on runner.sock (see server.c). */
#pragma once

#include <stddef.h>

#include "basic/role.h"
#include "httpd/httpd.h"

/* What the runner role sees of the configuration; strings borrowed. */
typedef struct runner_server_config {
    const char *socket;           /* runner.sock: the api role only */
    httpd_mtls mtls;              /* runner.listen: the same to an api role on other machines (mutual TLS) */
    const char *dir;              /* its files: sandbox logs, agent channels */
    const char *agent;            /* cloister-agent to launch; NULL or "": looked up beside cloisterd */
    const char *key, *cert;       /* the platform key (P-384) and its certificate */
    const char *platform_ca_cert; /* the root of sandbox evidence */
    const char *ca_cert;          /* the cluster CA (and an own API certificate's chain), to reach the API for agents */
    const char *token;            /* its credential token file, for key release */
    const char *api_url;          /* the API's https URL, which agents' calls are forwarded to */
    const char *api_role_url;     /* the api's listener for roles: forwarded there over mutual TLS; "": none */
    const char *audit_socket;     /* the audit role's, for egress decisions; NULL: logged only */
    const char *plugin_dir;       /* plugins' directory (runner/plugins.h); NULL or "": none */
    const char *plugin_sandbox;   /* cloister-plugin-sandbox to launch; NULL or "": looked up beside cloisterd */
    const char *plugin_trusted;   /* the plugins egress loads in the runner's process (comma-separated) */
    const char *cgroup;           /* a delegated cgroup v2 directory for sandboxes' limits; NULL or "": found
                                   * beside its own cgroup (runner/sandbox-limits.h) */
    role_health *health;          /* the role's entry: ready */
    const role_health *roles;     /* the supervisor's table, for the peer check */
    size_t n_roles;
} runner_server_config;

/* Loads the platform key, serves until SIGTERM, then stops every sandbox.
 * Returns the role's exit status. SIGTERM and SIGINT must be blocked. */
int runner_serve(const runner_server_config *cfg);
