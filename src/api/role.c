/* The `api` role's server: the control plane's REST API on the resource
 * store, with what it runs beside it (token keys, the login handoff key,
 * audit delivery, the KMS and attestation clients, the Enclave controller). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/handlers-attest.h"
#include "api/handlers-datasets.h"
#include "api/handlers-job-runs.h"
#include "api/handlers-kms.h"
#include "api/signing-keys.h"
#include "audit/event.h"
#include "auth/handoff.h"
#include "auth/keyring.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "controller/controller.h"
#include "store/store.h"
#include "telemetry/telemetry.h"

/* Loads the browser login handoff key from PATH (32 raw bytes) into KEY, or
 * creates it (mode 0600) on first start. A file that is not a regular file
 * of ours, that others may read, or that is not exactly 32 bytes is
 * refused (-EPERM, -EBADMSG) and the reason logged. Returns 0 or a
 * negative errno. */
static int handoff_key_load(const char *path, uint8_t key[HANDOFF_KEY_LEN])
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT) {
        uint8_t fresh[HANDOFF_KEY_LEN];
        int r = random_bytes(fresh, sizeof(fresh));
        if (r == 0)
            r = write_file_atomic(path, fresh, sizeof(fresh), 0600);
        if (r == 0) {
            memcpy(key, fresh, sizeof(fresh));
            log_fields(LOG_LEVEL_INFO, "created the browser login handoff key", "path", path, NULL);
        }
        OPENSSL_cleanse(fresh, sizeof(fresh));
        return r;
    }
    if (fd < 0)
        return negative_errno();
    struct stat st;
    if (fstat(fd, &st) < 0)
        return negative_errno();
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
        log_fields(LOG_LEVEL_ERROR,
                   "refusing the browser login handoff key: it must be a file of ours that only we can read "
                   "(chmod 600)",
                   "path", path, NULL);
        return -EPERM;
    }
    char *data = NULL;
    size_t len = 0;
    int r = read_fd(fd, 2 * HANDOFF_KEY_LEN, &data, &len);
    if (r < 0)
        return r;
    if (len == HANDOFF_KEY_LEN)
        memcpy(key, data, HANDOFF_KEY_LEN);
    else
        log_fields(LOG_LEVEL_ERROR, "refusing the browser login handoff key: it is not 32 bytes", "path", path, NULL);
    OPENSSL_cleanse(data, len);
    free(data);
    return len == HANDOFF_KEY_LEN ? 0 : -EBADMSG;
}

static int metrics_source(strbuf *out, void *userdata)
{
    return api_metrics_text(userdata, out);
}

int api_role_serve(const api_role_config *cfg)
{
    store *s;
    int r = store_open(cfg->store_url, &s);
    if (r < 0) {
        char shown[4200];
        store_url_redact(cfg->store_url, shown, sizeof(shown));
        log_fields(LOG_LEVEL_ERROR, "cannot open the store", "store", shown, "error", strerror(-r), NULL);
        return 1;
    }
    /* browser login handoffs: a key of this role, pushed to the proxy only;
     * every api replica has the same (docs/deployment.md, "Several replicas") */
    char handoff_path[4300];
    uint8_t handoff_key[HANDOFF_KEY_LEN];
    snprintf(handoff_path, sizeof(handoff_path), "%s/handoff.key", cfg->auth_dir);
    r = mkdir_p(cfg->auth_dir, 0700);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot create the auth directory", "path", cfg->auth_dir, "error", strerror(-r),
                   NULL);
    else {
        r = handoff_key_load(handoff_path, handoff_key);
        if (r < 0 && r != -EPERM && r != -EBADMSG)
            log_fields(LOG_LEVEL_ERROR, "cannot open the browser login handoff key", "path", handoff_path, "error",
                       strerror(-r), NULL);
    }
    if (r < 0) {
        store_free(s);
        return 1;
    }
    /* token signing keys: in the store, sealed under a key derived from the
     * handoff key, shared by the replicas (api/signing-keys.h); an earlier
     * release's auth/signing-keys.json is taken over once */
    char legacy_keys_path[4300];
    snprintf(legacy_keys_path, sizeof(legacy_keys_path), "%s/signing-keys.json", cfg->auth_dir);
    api_signing_keys signing_keys;
    auth_keyring *keyring = NULL;
    r = api_signing_keys_init(&signing_keys, s, handoff_key, legacy_keys_path);
    if (r == 0) {
        auth_keyring_backing backing = api_signing_keys_backing(&signing_keys);
        r = auth_keyring_open_backed(&backing, AUTH_KEY_ROTATE_S, AUTH_ACCESS_TTL_S + 2 * JWT_DEFAULT_LEEWAY_S,
                                     &keyring);
    }
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the token signing keys in the store", "error", strerror(-r), NULL);
        api_signing_keys_done(&signing_keys);
        OPENSSL_cleanse(handoff_key, sizeof(handoff_key));
        store_free(s);
        return 1;
    }
    /* key release: the platform CA verifies sandbox evidence */
    r = api_attest_init(cfg->platform_ca_cert, s);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot load the platform CA", "path", cfg->platform_ca_cert, "error",
                   strerror(-r), NULL);
        OPENSSL_cleanse(handoff_key, sizeof(handoff_key));
        auth_keyring_free(keyring);
        api_signing_keys_done(&signing_keys);
        store_free(s);
        return 1;
    }
    r = api_datasets_init(cfg->blob_dir);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the blob store", "path", cfg->blob_dir, "error", strerror(-r), NULL);
        api_attest_done();
        OPENSSL_cleanse(handoff_key, sizeof(handoff_key));
        auth_keyring_free(keyring);
        api_signing_keys_done(&signing_keys);
        store_free(s);
        return 1;
    }
    api_config api = cfg->api;
    api.store = s;
    api.keyring = keyring;
    api.handoff_key = handoff_key;
    api.runner_socket = cfg->runner_socket;
    r = audit_event_start(cfg->api.audit_socket);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot start audit event delivery; events go to the log", "error", strerror(-r),
                   NULL);
    api_kms_init(cfg->kms_socket, s);
    if (api_job_runs_init(cfg->runner_socket, cfg->engine_bundle) < 0)
        log_fields(LOG_LEVEL_ERROR, "out of memory: jobs cannot run", NULL);
    /* the Enclave controller: a thread of its own, never on the API's loops */
    controller *ctl = NULL;
    const _Atomic bool *runner_ready = NULL;
    for (size_t i = 0; i < cfg->api.n_roles; i++)
        if (strcmp(cfg->api.roles[i].name, "runner") == 0 && atomic_load(&cfg->api.roles[i].wanted))
            runner_ready = &cfg->api.roles[i].ready; /* not when the runner runs on another machine */
    r = controller_start(
        &(controller_config){.store = s, .runner_socket = cfg->runner_socket, .runner_ready = runner_ready,
                             .load = cfg->api.proxy_metrics, .instance = cfg->api.listen}, &ctl);
    api.controller = ctl; /* before the metrics source is registered: its text shows the controller's */
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot start the Enclave controller", "error", strerror(-r), NULL);
    else {
        /* /metrics' text, exported over OTLP too (off unless configured) */
        int e = telemetry_metrics_register(metrics_source, &api);
        if (e < 0)
            log_fields(LOG_LEVEL_WARN, "cannot export the API's metrics over OTLP", "error", strerror(-e), NULL);
        r = api_run(&api);
        telemetry_metrics_unregister(metrics_source, &api); /* before the controller it renders is stopped */
    }
    controller_stop(ctl);
    api_kms_done();
    api_attest_done();
    api_datasets_done();
    api_job_runs_done();
    audit_event_stop(2000);
    OPENSSL_cleanse(handoff_key, sizeof(handoff_key));
    auth_keyring_free(keyring);
    api_signing_keys_done(&signing_keys);
    store_free(s);
    return r < 0 ? 1 : 0;
}
