/* The `api` role: the control plane's REST API on the resource store. */
#include <string.h>

#include "api/auth.h"
#include "api/handlers-attest.h"
#include "api/handlers-kms.h"
#include "audit/event.h"
#include "auth/keyring.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "daemon/daemon.h"
#include "store/store.h"

int role_api_main(const daemon_config *cfg, role_health *health, role_health *all, size_t n_all)
{
    store *s;
    int r = store_open(cfg->store_url, &s);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the store", "store", cfg->store_url, "error", strerror(-r), NULL);
        return 1;
    }
    /* token signing keys: mode 0600 in <data-dir>/auth (KMS envelopes later) */
    char auth_dir[4200], keys_path[4300];
    auth_keyring *keyring = NULL;
    snprintf(auth_dir, sizeof(auth_dir), "%s/auth", cfg->data_dir);
    snprintf(keys_path, sizeof(keys_path), "%s/signing-keys.json", auth_dir);
    r = mkdir_p(auth_dir, 0700);
    if (r == 0)
        r = auth_keyring_open(keys_path, AUTH_KEY_ROTATE_S, AUTH_ACCESS_TTL_S + 2 * JWT_DEFAULT_LEEWAY_S, &keyring);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the token signing keys", "path", keys_path, "error", strerror(-r),
                   NULL);
        store_free(s);
        return 1;
    }
    /* key release: the platform CA verifies sandbox evidence */
    r = api_attest_init(cfg->platform_ca_cert, s);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot load the platform CA", "path", cfg->platform_ca_cert, "error",
                   strerror(-r), NULL);
        auth_keyring_free(keyring);
        store_free(s);
        return 1;
    }
    api_config api = {
        .listen = cfg->api_listen,
        .cert_file = cfg->api_cert,
        .key_file = cfg->api_key,
        .domain = cfg->domain,
        .store = s,
        .threads = cfg->api_threads,
        .roles = all,
        .n_roles = n_all,
        .ready_flag = &health->ready,
        .audit_socket = cfg->audit_socket,
        .keyring = keyring,
        .proxy_metrics = cfg->proxy_metrics,
    };
    r = audit_event_start(cfg->audit_socket);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot start audit event delivery; events go to the log", "error", strerror(-r),
                   NULL);
    api_kms_init(cfg->kms_socket, s);
    r = api_run(&api);
    api_kms_done();
    api_attest_done();
    audit_event_stop(2000);
    auth_keyring_free(keyring);
    store_free(s);
    return r < 0 ? 1 : 0;
}
