/* noop: continues in every phase (tests and bench/plugins). */
#include <stdlib.h>

#include "cloister/plugin.h"

static int init(const cloister_host *host, cloister_str config, void **ret, char *err, size_t err_size)
{
    (void)host, (void)config, (void)err, (void)err_size;
    static int instance;
    *ret = &instance;
    return 0;
}

static cloister_action pass(void *instance, cloister_call *call)
{
    (void)instance, (void)call;
    return CLOISTER_CONTINUE;
}

static const cloister_plugin plugin = {
    .size = sizeof(cloister_plugin),
    .abi_version = CLOISTER_PLUGIN_ABI_VERSION,
    .name = "noop",
    .init = init,
    .phases = {pass, pass, pass, pass, pass, pass},
};

const cloister_plugin *cloister_plugin_v1(void)
{
    return &plugin;
}
