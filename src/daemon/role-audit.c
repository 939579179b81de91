/* The `audit` role's main: its view of the configuration, then its server
 * (src/audit/server.c). */
#include "audit/server.h"
#include "basic/background.h"
#include "daemon/daemon.h"

int role_audit_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    /* the log's bookkeeping runs behind the request paths on a busy machine;
     * every thread the role starts inherits this */
    thread_set_background();
    const audit_server_config audit = {
        .socket = cfg->audit_socket,
        .mtls = {.listen = cfg->audit_listen, .cert_file = cfg->role_cert, .key_file = cfg->role_key,
                 .ca_file = cfg->ca_cert},
        .db = cfg->audit_db,
        .key = cfg->audit_key,
        .pub = cfg->audit_pub,
        .domain = cfg->domain,
        .health = health,
        .roles = all,
        .n_roles = n_all,
        .access_retention_days = cfg->access_retention_days,
    };
    return audit_serve(&audit);
}
