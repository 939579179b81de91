/* The portal's static files (see portal.h). */
#include "portal/portal.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"

#define PORTAL_NAME_MAX 64

int portal_dir_locate(char *out, size_t size)
{
    static const char *const tries[] = {"../share/cloister/portal", "../../portal"};
    const char *env = getenv("CLOISTER_PORTAL_DIR");
    char self[PATH_MAX], candidate[PATH_MAX + 64], real[PATH_MAX];
    if (env && *env) {
        if (env[0] != '/' || strlen(env) >= size)
            return -ENOENT;
        snprintf(candidate, sizeof(candidate), "%s/index.html", env);
        if (access(candidate, R_OK) < 0)
            return -ENOENT;
        strcpy(out, env);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return -ENOENT;
    self[n] = 0;
    const char *dir = dirname(self);
    for (size_t i = 0; i < ELEMENTSOF(tries); i++) {
        snprintf(candidate, sizeof(candidate), "%s/%s/index.html", dir, tries[i]);
        if (access(candidate, R_OK) < 0)
            continue;
        snprintf(candidate, sizeof(candidate), "%s/%s", dir, tries[i]);
        if (realpath(candidate, real) && strlen(real) < size) {
            strcpy(out, real);
            return 0;
        }
    }
    return -ENOENT;
}

bool portal_file_name(const char *path, size_t len, char *out, size_t size)
{
    if (len == 1 && path[0] == '/') {
        snprintf(out, size, "index.html");
        return true;
    }
    if (len < 2 || path[0] != '/' || path[1] == '.' || len - 1 >= MIN(size, (size_t)PORTAL_NAME_MAX))
        return false;
    for (size_t i = 1; i < len; i++) {
        char c = path[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return false;
    }
    memcpy(out, path + 1, len - 1);
    out[len - 1] = 0;
    return true;
}

/* The media type of file NAME by its extension. */
static h2o_iovec_t media_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},   {".svg", "image/svg+xml"},
        {".map", "application/json"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < ELEMENTSOF(types); i++)
        if (strcmp(dot, types[i].ext) == 0)
            return h2o_iovec_init(types[i].type, strlen(types[i].type));
    return h2o_iovec_init(H2O_STRLIT("application/octet-stream"));
}

int portal_send_file(h2o_req_t *req, const char *dir, const char *name)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path) || access(path, R_OK) < 0)
        return -ENOENT;
    h2o_headers_t *h = &req->res.headers;
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("content-security-policy"), 0, NULL, H2O_STRLIT(PORTAL_CSP));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("x-content-type-options"), 0, NULL, H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("referrer-policy"), 0, NULL, H2O_STRLIT("no-referrer"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("x-frame-options"), 0, NULL, H2O_STRLIT("DENY"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("cross-origin-opener-policy"), 0, NULL, H2O_STRLIT("same-origin"));
    h2o_add_header(&req->pool, h, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    if (h2o_file_send(req, 200, "OK", path, media_type(name), 0) != 0)
        return -ENOENT;
    return 0;
}
