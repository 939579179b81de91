/* The `kms` role's main: its view of the configuration, then its server
 * (src/kms/server.c). */
#include <libgen.h>
#include <stdio.h>
#include <string.h>

#include "daemon/daemon.h"
#include "kms/server.h"

int role_kms_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    /* the run counts live beside the key ring, in the kms role's own files */
    char ring_dir[sizeof(cfg->kms_keyring_file)], runs_dir[sizeof(cfg->kms_keyring_file) + 16];
    snprintf(ring_dir, sizeof(ring_dir), "%s", cfg->kms_keyring_file);
    snprintf(runs_dir, sizeof(runs_dir), "%s/job-runs", dirname(ring_dir));
    const kms_server_config kms = {
        .socket = cfg->kms_socket,
        .mtls = {.listen = cfg->kms_listen, .cert_file = cfg->role_cert, .key_file = cfg->role_key,
                 .ca_file = cfg->ca_cert},
        .unseal_socket = cfg->kms_unseal_socket,
        .audit_socket = cfg->audit_socket,
        .data_dir = cfg->data_dir,
        .keyring_file = cfg->kms_keyring_file,
        .job_runs_dir = runs_dir,
        .platform_ca_cert = cfg->platform_ca_cert,
        .dev = cfg->dev,
        .seal = {.mode = cfg->seal_mode, .root_file = cfg->kms_root_file, .dev_key_file = cfg->kms_dev_key_file,
                 .pkcs11_module = cfg->pkcs11_module, .pkcs11_slot = cfg->pkcs11_slot},
        .secret = cfg->seal_secret,
        .secret_len = cfg->seal_secret_len,
        .health = health,
        .roles = all,
        .n_roles = n_all,
    };
    return kms_serve(&kms);
}
