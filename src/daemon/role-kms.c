/* The `kms` role's main: its view of the configuration, then its server
 * (src/kms/server.c). */
#include "daemon/daemon.h"
#include "kms/server.h"

int role_kms_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    const kms_server_config kms = {
        .socket = cfg->kms_socket,
        .unseal_socket = cfg->kms_unseal_socket,
        .audit_socket = cfg->audit_socket,
        .data_dir = cfg->data_dir,
        .keyring_file = cfg->kms_keyring_file,
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
