/* The `api` role: the control plane's REST API on the resource store. */
#include <string.h>

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
    };
    r = api_run(&api);
    store_free(s);
    return r < 0 ? 1 : 0;
}
