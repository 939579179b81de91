/* Plugin instances: in process, or a sandbox the runner starts (see
 * plugin.h). */
#include "plugin/plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "plugin/wire.h"

const char *plugin_outcome_name(plugin_outcome o)
{
    static const char *const names[PLUGIN_OUTCOME_COUNT_] = {"ok", "error", "crash", "timeout", "garbage"};
    return (unsigned)o < PLUGIN_OUTCOME_COUNT_ ? names[o] : "unknown";
}

/* ---- the process's settings ---- */

static char *host_dir, *host_trusted, *host_spawn;

int plugin_host_configure(const char *dir, const char *trusted, const char *spawn_socket)
{
    if ((dir && !(host_dir = strdup(dir))) || (trusted && !(host_trusted = strdup(trusted))) ||
        (spawn_socket && !(host_spawn = strdup(spawn_socket))))
        return -ENOMEM;
    return 0;
}

/* Whether the operator listed NAME as trusted (in process). */
static bool trusted(const char *name)
{
    size_t n = strlen(name);
    for (const char *p = host_trusted; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0)
            return true;
        p = end ? end + 1 : NULL;
    }
    return false;
}

/* ---- instances ---- */

/* One connection to an out-of-process instance's sandbox. */
typedef struct lane {
    pthread_mutex_t lock;
    int fd; /* -1: none (started on the next call) */
    uint8_t *buf;
    size_t cap;
} lane;

struct plugin_instance {
    unsigned refs; /* under registry_lock */
    char *name, *config;
    uint32_t timeout_ms;
    plugin_instance *next;
    /* in process */
    void *handle;
    const cloister_plugin *plugin;
    void *instance;
    /* out of process */
    lane lanes[PLUGIN_LANES];
    _Atomic unsigned next_lane;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static plugin_instance *registry;

/* A plugin's log line, in process: into the host's log. */
static void host_log(cloister_call *call, int level, cloister_str message)
{
    (void)call;
    char text[1024];
    snprintf(text, sizeof(text), "%.*s", (int)MIN(message.len, sizeof(text) - 1), message.ptr);
    log_fields(level >= 3 ? LOG_LEVEL_ERROR : level == 2 ? LOG_LEVEL_WARN : LOG_LEVEL_INFO, "plugin", "message", text,
               NULL);
}

static cloister_host the_host;
static pthread_once_t host_once = PTHREAD_ONCE_INIT;

static void host_init(void)
{
    plugin_host_table(&the_host, host_log);
}

static void instance_free(plugin_instance *p)
{
    if (!p)
        return;
    if (p->instance && p->plugin->destroy)
        p->plugin->destroy(p->instance);
    if (p->handle)
        dlclose(p->handle);
    for (size_t i = 0; i < PLUGIN_LANES; i++) {
        if (p->lanes[i].fd >= 0)
            close(p->lanes[i].fd);
        free(p->lanes[i].buf);
        pthread_mutex_destroy(&p->lanes[i].lock);
    }
    free(p->name);
    free(p->config);
    free(p);
}

/* Loads and initialises trusted plugin P in process. */
static int load_in_process(plugin_instance *p, char *err, size_t err_size)
{
    int r = plugin_library_open(host_dir, p->name, &p->handle, &p->plugin, err, err_size);
    if (r < 0)
        return r;
    pthread_once(&host_once, host_init);
    char why[256] = "";
    r = p->plugin->init(&the_host, (cloister_str){p->config, strlen(p->config)}, &p->instance, why, sizeof(why));
    if (r < 0 || !p->instance) {
        why[sizeof(why) - 1] = 0;
        snprintf(err, err_size, "plugin %s: its init refused the configuration: %.180s", p->name,
                 why[0] ? why : "no reason given");
        p->instance = NULL;
        return r < 0 ? r : -EINVAL;
    }
    return 0;
}

static int sandbox_start(plugin_instance *p, lane *l, char *err, size_t err_size);

/* Starts the first sandbox of out-of-process instance P now (its maker's
 * thread: the configuration's, not a request's), so that the first call
 * does not wait for it; a failure is left for the calls to meet again. */
static void prestart(plugin_instance *p)
{
    lane *l = &p->lanes[0];
    char err[PLUGIN_ERROR_MAX];
    pthread_mutex_lock(&l->lock);
    if (l->fd < 0) {
        int fd = sandbox_start(p, l, err, sizeof(err));
        if (fd >= 0)
            l->fd = fd;
    }
    pthread_mutex_unlock(&l->lock);
}

int plugin_instance_get(const char *name, const char *config, uint32_t timeout_ms, plugin_instance **ret, char *err,
                        size_t err_size)
{
    if (!plugin_name_valid(name)) {
        snprintf(err, err_size, "plugin name %.64s is not valid", name);
        return -EINVAL;
    }
    pthread_mutex_lock(&registry_lock);
    for (plugin_instance *p = registry; p; p = p->next)
        if (strcmp(p->name, name) == 0 && strcmp(p->config, config) == 0 && p->timeout_ms == timeout_ms) {
            p->refs++;
            pthread_mutex_unlock(&registry_lock);
            *ret = p;
            return 0;
        }
    int r = 0;
    plugin_instance *p = calloc(1, sizeof(*p));
    if (!p || !(p->name = strdup(name)) || !(p->config = strdup(config))) {
        snprintf(err, err_size, "out of memory");
        r = -ENOMEM;
        goto out;
    }
    p->timeout_ms = timeout_ms;
    for (size_t i = 0; i < PLUGIN_LANES; i++) {
        pthread_mutex_init(&p->lanes[i].lock, NULL);
        p->lanes[i].fd = -1;
    }
    if (trusted(name))
        r = load_in_process(p, err, err_size);
    else if (!host_spawn) {
        snprintf(err, err_size, "plugin %s is not trusted and no runner here can start its sandbox", name);
        r = -ENOENT;
    }
out:
    if (r < 0) {
        instance_free(p);
        pthread_mutex_unlock(&registry_lock);
        return r;
    }
    p->refs = 1;
    p->next = registry;
    registry = p;
    pthread_mutex_unlock(&registry_lock);
    if (!p->plugin)
        prestart(p);
    *ret = p;
    return 0;
}

plugin_instance *plugin_instance_ref(plugin_instance *p)
{
    pthread_mutex_lock(&registry_lock);
    p->refs++;
    pthread_mutex_unlock(&registry_lock);
    return p;
}

void plugin_instance_unref(plugin_instance *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&registry_lock);
    bool last = --p->refs == 0;
    if (last)
        for (plugin_instance **at = &registry; *at; at = &(*at)->next)
            if (*at == p) {
                *at = p->next;
                break;
            }
    pthread_mutex_unlock(&registry_lock);
    if (last)
        instance_free(p);
}

bool plugin_instance_in_process(const plugin_instance *p)
{
    return p->plugin != NULL;
}

bool plugin_instance_handles(const plugin_instance *p, cloister_phase phase)
{
    return !p->plugin || p->plugin->phases[phase] != NULL;
}

/* ---- I/O with deadlines ---- */

/* Waits for EVENTS on FD until DEADLINE_NS (0: forever). */
static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
    for (;;) {
        int ms = -1;
        if (deadline_ns) {
            uint64_t now = time_mono_ns();
            if (now >= deadline_ns)
                return -ETIMEDOUT;
            ms = (int)((deadline_ns - now + 999999) / 1000000);
        }
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return negative_errno();
        if (n > 0)
            return 0;
    }
}

int plugin_write_all(int fd, const void *p, size_t len, uint64_t deadline_ns)
{
    const uint8_t *at = p;
    while (len > 0) {
        int r = wait_fd(fd, POLLOUT, deadline_ns);
        if (r < 0)
            return r;
        ssize_t n = send(fd, at, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return errno == ECONNRESET ? -EPIPE : negative_errno();
        at += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly LEN bytes. */
static int read_exact(int fd, uint8_t *p, size_t len, uint64_t deadline_ns)
{
    while (len > 0) {
        int r = wait_fd(fd, POLLIN, deadline_ns);
        if (r < 0)
            return r;
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return errno == ECONNRESET ? -EPIPE : negative_errno();
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t plugin_read_frame(int fd, uint8_t **buf, size_t *cap, uint64_t deadline_ns)
{
    uint8_t hdr[4];
    int r = read_exact(fd, hdr, 4, deadline_ns);
    if (r < 0)
        return r;
    size_t n = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 | (size_t)hdr[3] << 24;
    if (n == 0 || n > PLUGIN_FRAME_MAX)
        return -EBADMSG;
    if (n > *cap) {
        uint8_t *grown = realloc(*buf, n);
        if (!grown)
            return -ENOMEM;
        *buf = grown;
        *cap = n;
    }
    r = read_exact(fd, *buf, n, deadline_ns);
    return r < 0 ? r : (ssize_t)n;
}

/* ---- out of process ---- */

/* Asks the runner for a sandbox of P and initialises it: the connection
 * becomes the sandbox's socket. Returns the connected fd or a negative
 * errno with ERR filled. */
static int sandbox_start(plugin_instance *p, lane *l, char *err, size_t err_size)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, err_size, "socket: %s", strerror(errno));
        return negative_errno();
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", host_spawn);
    uint64_t deadline = time_mono_ns() + (uint64_t)PLUGIN_SPAWN_TIMEOUT_MS * 1000000;
    strbuf b;
    strbuf_init(&b, PLUGIN_CONFIG_MAX + 512);
    size_t name_len = strlen(p->name);
    uint8_t hdr[2] = {(uint8_t)name_len, (uint8_t)(name_len >> 8)};
    int r = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = negative_errno();
        snprintf(err, err_size, "cannot reach the runner's plugin launcher %s: %s", host_spawn, strerror(-r));
        goto fail;
    }
    if (strbuf_append(&b, hdr, 2) < 0 || strbuf_append(&b, p->name, name_len) < 0 ||
        plugin_wire_init(&b, p->timeout_ms, p->config, strlen(p->config)) < 0) {
        r = -E2BIG;
        snprintf(err, err_size, "the configuration is too large");
        goto fail;
    }
    if ((r = plugin_write_all(fd, b.data, b.len, deadline)) < 0) {
        snprintf(err, err_size, "cannot send to the launcher: %s", strerror(-r));
        goto fail;
    }
    ssize_t n = plugin_read_frame(fd, &l->buf, &l->cap, deadline);
    bool ok;
    cloister_str why;
    if (n < 0 || plugin_wire_decode_ready(l->buf, (size_t)n, &ok, &why) < 0) {
        r = n < 0 ? (int)n : -EBADMSG;
        snprintf(err, err_size, "its sandbox did not start: %s",
                 r == -EPIPE ? "it went away" : r == -ETIMEDOUT ? "no answer in time" : "garbage answer");
        goto fail;
    }
    if (!ok) {
        r = -EINVAL;
        snprintf(err, err_size, "%.*s", (int)why.len, why.ptr);
        goto fail;
    }
    strbuf_free(&b);
    return fd;
fail:
    strbuf_free(&b);
    close(fd);
    return r;
}

/* Sends FRAME (a CALL frame, length prefix included) to the sandbox of
 * lane L (started if needed) and decodes its answer into CALL. */
static plugin_outcome run_remote(plugin_instance *p, lane *l, const void *frame, size_t len, plugin_call *call,
                                 char *err, size_t err_size)
{
    if (l->fd < 0) {
        int fd = sandbox_start(p, l, err, err_size);
        if (fd < 0)
            return fd == -EPIPE ? PLUGIN_OUTCOME_CRASH : PLUGIN_OUTCOME_ERROR;
        l->fd = fd;
    }
    uint64_t deadline = time_mono_ns() + (uint64_t)p->timeout_ms * 1000000;
    plugin_outcome o = PLUGIN_OUTCOME_OK;
    int r = plugin_write_all(l->fd, frame, len, deadline);
    ssize_t n = r < 0 ? r : plugin_read_frame(l->fd, &l->buf, &l->cap, deadline);
    if (n >= 0 && plugin_wire_decode_answer(l->buf, (size_t)n, call) == 0)
        return PLUGIN_OUTCOME_OK;
    if (n == -ETIMEDOUT) {
        o = PLUGIN_OUTCOME_TIMEOUT;
        snprintf(err, err_size, "no answer within %u ms", p->timeout_ms);
    } else if (n == -EPIPE) {
        o = PLUGIN_OUTCOME_CRASH;
        snprintf(err, err_size, "its sandbox went away (crashed or was killed)");
    } else if (n >= 0 || n == -EBADMSG) {
        o = PLUGIN_OUTCOME_GARBAGE;
        snprintf(err, err_size, "it answered something the protocol refuses");
    } else {
        o = PLUGIN_OUTCOME_ERROR;
        snprintf(err, err_size, "%s", strerror((int)-n));
    }
    /* the sandbox is not to be trusted after this: a new one next time */
    close(l->fd);
    l->fd = -1;
    plugin_call_clear_answer(call);
    return o;
}

plugin_outcome plugin_instance_run_frame(plugin_instance *p, const void *frame, size_t len, plugin_call *call,
                                         char *err, size_t err_size)
{
    plugin_call_clear_answer(call);
    if (p->plugin) {
        snprintf(err, err_size, "plugin %s runs in process: it takes no frame", p->name);
        return PLUGIN_OUTCOME_ERROR;
    }
    /* a free lane, else wait on one in turn, at most timeoutMs: a hanging
     * sandbox holds its lane's waiters no longer than its own calls */
    lane *l = NULL;
    for (size_t i = 0; i < PLUGIN_LANES && !l; i++)
        if (pthread_mutex_trylock(&p->lanes[i].lock) == 0)
            l = &p->lanes[i];
    if (!l) {
        l = &p->lanes[atomic_fetch_add(&p->next_lane, 1) % PLUGIN_LANES];
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)p->timeout_ms * 1000000;
        until.tv_sec += (time_t)(ns / 1000000000);
        until.tv_nsec = (long)(ns % 1000000000);
        if (pthread_mutex_timedlock(&l->lock, &until) != 0) {
            snprintf(err, err_size, "its %d sandboxes stayed busy for %u ms", PLUGIN_LANES, p->timeout_ms);
            return PLUGIN_OUTCOME_TIMEOUT;
        }
    }
    plugin_outcome o = run_remote(p, l, frame, len, call, err, err_size);
    pthread_mutex_unlock(&l->lock);
    return o;
}

plugin_outcome plugin_instance_run(plugin_instance *p, plugin_call *call, char *err, size_t err_size)
{
    plugin_call_clear_answer(call);
    if (p->plugin) {
        cloister_phase_fn fn = p->plugin->phases[call->phase];
        if (fn)
            call->action = fn(p->instance, call) == CLOISTER_DENY ? CLOISTER_DENY : CLOISTER_CONTINUE;
        return PLUGIN_OUTCOME_OK;
    }
    strbuf b;
    strbuf_init(&b, PLUGIN_FRAME_MAX + 4);
    int r = plugin_wire_call(&b, call);
    if (r < 0) {
        strbuf_free(&b);
        snprintf(err, err_size, "the call does not fit the protocol: %s", strerror(-r));
        return PLUGIN_OUTCOME_ERROR;
    }
    plugin_outcome o = plugin_instance_run_frame(p, b.data, b.len, call, err, err_size);
    strbuf_free(&b);
    return o;
}
