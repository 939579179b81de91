/* request-log: a structured request logger (docs/plugins.md). In the log
 * phase it writes one JSON line per request (time, id, method, path, host,
 * status, user, service, decision, source) to the file its config names,
 * opened for appending at init; without a file, to stderr (a sandboxed
 * instance's stderr is the runner's log).
 *
 *   {"file": "/var/log/cloister/requests.jsonl"}
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cloister/plugin.h"

typedef struct logger {
    const cloister_host *host;
    int fd;
    bool own_fd;
} logger;

static void destroy(void *instance)
{
    logger *l = instance;
    if (l && l->own_fd)
        close(l->fd);
    free(l);
}

static int init(const cloister_host *host, cloister_str config, void **ret, char *err, size_t err_size)
{
    json_error_t je;
    json_t *c = json_loadb(config.ptr, config.len, 0, &je);
    if (!json_is_object(c)) {
        json_decref(c);
        snprintf(err, err_size, "config must be an object");
        return -EINVAL;
    }
    logger *l = calloc(1, sizeof(*l));
    if (!l) {
        json_decref(c);
        return -ENOMEM;
    }
    l->host = host;
    l->fd = STDERR_FILENO;
    const json_t *file = json_object_get(c, "file");
    if (file) {
        const char *path = json_string_value(file);
        if (!path || path[0] != '/') {
            snprintf(err, err_size, "config.file must be an absolute path");
            json_decref(c);
            free(l);
            return -EINVAL;
        }
        l->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (l->fd < 0) {
            int e = errno;
            snprintf(err, err_size, "cannot open %s: %s", path, strerror(e));
            json_decref(c);
            free(l);
            return -e;
        }
        l->own_fd = true;
    }
    json_decref(c);
    *ret = l;
    return 0;
}

/* Sets KEY of LINE to the call's property NAME, when it has one. */
static void put_property(const logger *l, cloister_call *call, json_t *line, const char *key, const char *name)
{
    cloister_str v;
    if (l->host->get_property(call, (cloister_str){name, strlen(name)}, &v) == 0)
        json_object_set_new(line, key, json_stringn(v.ptr, v.len));
}

static cloister_action on_log(void *instance, cloister_call *call)
{
    logger *l = instance;
    char now[40];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *line = json_pack("{s:s}", "time", now);
    if (!line)
        return CLOISTER_CONTINUE;
    static const char *const props[][2] = {
        {"id", "request.id"},         {"method", "request.method"}, {"path", "request.path"},
        {"host", "request.host"},     {"status", "response.status"}, {"user", "user.name"},
        {"service", "service.name"}, {"decision", "decision"},       {"source", "source.ip"},
    };
    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++)
        put_property(l, call, line, props[i][0], props[i][1]);
    char *text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (!text)
        return CLOISTER_CONTINUE;
    size_t n = strlen(text);
    text[n] = '\n'; /* one write: lines of concurrent requests do not interleave */
    ssize_t w = write(l->fd, text, n + 1);
    if (w < 0)
        l->host->log(call, 2, (cloister_str){"request-log: cannot write a line", 32});
    free(text);
    return CLOISTER_CONTINUE;
}

static const cloister_plugin plugin = {
    .size = sizeof(cloister_plugin),
    .abi_version = CLOISTER_PLUGIN_ABI_VERSION,
    .name = "request-log",
    .init = init,
    .destroy = destroy,
    .phases = {[CLOISTER_PHASE_LOG] = on_log},
};

const cloister_plugin *cloister_plugin_v1(void)
{
    return &plugin;
}
