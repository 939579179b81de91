/* Loading a plugin's shared object from the configured directory. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/plugin.h"

bool plugin_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 63 || !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

int plugin_library_open(const char *dir, const char *name, void **ret_handle, const cloister_plugin **ret_plugin,
                        char *err, size_t err_size)
{
    if (!plugin_name_valid(name)) {
        snprintf(err, err_size, "plugin name %.64s is not [a-z0-9][a-z0-9_-]* (at most 63)", name ? name : "");
        return -EINVAL;
    }
    char real_dir[PATH_MAX], path[PATH_MAX + 80], real[PATH_MAX];
    if (!dir || !realpath(dir, real_dir)) {
        snprintf(err, err_size, "plugin %s: the plugin directory %s cannot be used: %s", name, dir ? dir : "(none)",
                 dir ? strerror(errno) : "none is configured (cloisterd --plugin-dir)");
        return -ENOENT;
    }
    snprintf(path, sizeof(path), "%s/%s.so", real_dir, name);
    if (!realpath(path, real)) {
        int e = errno;
        snprintf(err, err_size, "plugin %s: %s: %s", name, path, strerror(e));
        return -e;
    }
    size_t dl = strlen(real_dir);
    if (strncmp(real, real_dir, dl) != 0 || real[dl] != '/') {
        snprintf(err, err_size, "plugin %s: %s resolves to %s, outside the plugin directory %s; refused", name, path,
                 real, real_dir);
        return -EPERM;
    }
    void *h = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, err_size, "plugin %s: cannot load %s: %s", name, real, why ? why : "dlopen failed");
        return -ENOEXEC;
    }
    cloister_plugin_entry entry;
    *(void **)&entry = dlsym(h, CLOISTER_PLUGIN_SYMBOL);
    const cloister_plugin *p = entry ? entry() : NULL;
    int r = 0;
    if (!entry)
        snprintf(err, err_size, "plugin %s: %s exports no %s(); it is not a Cloister plugin", name, real,
                 CLOISTER_PLUGIN_SYMBOL), r = -ENOEXEC;
    else if (!p)
        snprintf(err, err_size, "plugin %s: %s() returned nothing", name, CLOISTER_PLUGIN_SYMBOL), r = -ENOEXEC;
    else if (p->abi_version != CLOISTER_PLUGIN_ABI_VERSION)
        snprintf(err, err_size,
                 "plugin %s: ABI version mismatch: this host expects version %u, the plugin has version %u; "
                 "rebuild it against include/cloister/plugin.h",
                 name, CLOISTER_PLUGIN_ABI_VERSION, p->abi_version), r = -EPROTO;
    else if (p->size < sizeof(cloister_plugin))
        snprintf(err, err_size,
                 "plugin %s: ABI struct size mismatch: this host expects %zu bytes for version %u, the plugin "
                 "declares %u; rebuild it against include/cloister/plugin.h",
                 name, sizeof(cloister_plugin), CLOISTER_PLUGIN_ABI_VERSION, p->size), r = -EPROTO;
    else if (!p->init)
        snprintf(err, err_size, "plugin %s: it has no init callback", name), r = -ENOEXEC;
    if (r < 0) {
        dlclose(h);
        return r;
    }
    *ret_handle = h;
    *ret_plugin = p;
    return 0;
}
