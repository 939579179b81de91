/* Allow-only egress of an agent-mode sandbox (see egress.h). */
#include "runner/egress.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "audit/event.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/socket.h"
#include "basic/timeutil.h"
#include "plugin/plugin.h"
#include "runner/egress-check.h"

#define NOBODY 65534     /* the sandbox's root on the host: it must reach the socket */
#define LINE_MAX_ 300    /* "<host> <port>\n" */
#define ADDRS_MAX 8      /* of a resolved name, tried in order */
#define CONNECT_TIMEOUT_S 10
#define RELAY_BUFFER 16384

#define EGRESS_PLUGINS_MAX 16

/* An egress plugin of the Enclave (docs/plugins.md). */
typedef struct egress_plugin {
    char name[64];
    plugin_instance *instance; /* NULL: ERROR says why it cannot run */
    char *error;
    bool fail_open;
} egress_plugin;

typedef struct egress_entry {
    char host[EGRESS_HOST_MAX + 1];
    uint16_t port;
    bool tls;
} egress_entry;

struct runner_egress {
    char path[PATH_MAX + 32];
    char sandbox[64], enclave[64];
    egress_entry entries[RUNNER_EGRESS_ENTRIES_MAX];
    size_t n_entries;
    egress_plugin plugins[EGRESS_PLUGINS_MAX];
    size_t n_plugins;
    int listen_fd;
    pthread_t acceptor;
    bool started;
    atomic_bool stopping;
    atomic_uint refs;    /* the owner's, the acceptor's and one per tunnel */
    atomic_uint tunnels; /* open tunnels */
};

/* One tunnel, owned by its thread. */
typedef struct tunnel {
    runner_egress *eg;
    int fd; /* the agent's connection */
} tunnel;

static void unref(runner_egress *eg)
{
    if (atomic_fetch_sub(&eg->refs, 1) != 1)
        return;
    for (size_t i = 0; i < eg->n_plugins; i++) {
        plugin_instance_unref(eg->plugins[i].instance);
        free(eg->plugins[i].error);
    }
    free(eg);
}

/* Takes the instances of the egress plugins in PLUGINS (the Enclave's
 * spec.plugins, validated at apply); one that cannot run is kept with its
 * error and fails as configured. -1 with ERR (500) when out of memory. */
static int parse_plugins(runner_egress *eg, const json_t *plugins, api_error *err)
{
    size_t i;
    const json_t *j;
    json_array_foreach(plugins, i, j)
    {
        const char *phase = json_string_value(json_object_get(j, "phase"));
        if (!phase || strcmp(phase, "egress") != 0 || eg->n_plugins == EGRESS_PLUGINS_MAX)
            continue;
        egress_plugin *p = &eg->plugins[eg->n_plugins++];
        snprintf(p->name, sizeof(p->name), "%s", json_string_value(json_object_get(j, "name")) ?: "");
        const char *failure = json_string_value(json_object_get(j, "failure"));
        p->fail_open = failure && strcmp(failure, "open") == 0;
        const json_t *timeout = json_object_get(j, "timeoutMs");
        json_int_t ms = json_is_integer(timeout) ? json_integer_value(timeout) : 200;
        if (ms < 1 || ms > PLUGIN_TIMEOUT_MS_MAX)
            ms = ms < 1 ? 1 : PLUGIN_TIMEOUT_MS_MAX;
        _cleanup_free_ char *config = json_dumps(json_object_get(j, "config") ? json_object_get(j, "config")
                                                                              : json_object(),
                                                 JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        char why[PLUGIN_ERROR_MAX] = "";
        if (!config)
            return api_fail(err, 500, "internal", "out of memory");
        if (plugin_instance_get(p->name, config, (uint32_t)ms, &p->instance, why, sizeof(why)) < 0) {
            log_fields(LOG_LEVEL_ERROR, "an Enclave's egress plugin cannot run; it fails as configured", "enclave",
                       eg->enclave, "plugin", p->name, "error", why, NULL);
            if (!(p->error = strdup(why)))
                return api_fail(err, 500, "internal", "out of memory");
        }
    }
    return 0;
}

/* Parses ENTRIES into EG; -1 with ERR (400). */
static int parse_entries(runner_egress *eg, const json_t *entries, api_error *err)
{
    if (!json_is_array(entries) || json_array_size(entries) > RUNNER_EGRESS_ENTRIES_MAX)
        return api_fail(err, 400, "invalid", "egress must be a list of at most %d {host, port, tls}",
                        RUNNER_EGRESS_ENTRIES_MAX);
    size_t i;
    const json_t *v;
    json_array_foreach(entries, i, v)
    {
        const char *host = json_string_value(json_object_get(v, "host"));
        const json_t *port = json_object_get(v, "port"), *tls = json_object_get(v, "tls");
        size_t known = 2 + (tls != NULL);
        if (!json_is_object(v) || json_object_size(v) != known || !host || !egress_host_valid(host) ||
            !json_is_integer(port) || json_integer_value(port) < 1 || json_integer_value(port) > 65535 ||
            (tls && !json_is_boolean(tls)))
            return api_fail(err, 400, "invalid",
                            "egress[%zu] must be {host: a DNS name or IP literal, port: 1-65535, tls?: bool}", i);
        egress_entry *e = &eg->entries[eg->n_entries++];
        snprintf(e->host, sizeof(e->host), "%s", host);
        e->port = (uint16_t)json_integer_value(port);
        e->tls = json_is_true(tls);
    }
    return 0;
}

/* The address of SA as text ("" when it has none). */
static void address_text(const struct sockaddr *sa, char *out, size_t size)
{
    const void *a = sa->sa_family == AF_INET    ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                    : sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                                                : NULL;
    if (!a || !inet_ntop(sa->sa_family, a, out, (socklen_t)size))
        snprintf(out, size, "%s", "");
}

/* Audits a decision on a tunnel to HOST:PORT (NULL host: the line was
 * unreadable): OUTCOME "success", "denied" or "failure". */
static void audit_tagged(const runner_egress *eg, const char *outcome, const char *host, unsigned port,
                         const char *address, const char *reason, json_t *tags)
{
    json_t *details = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "enclave", eg->enclave, "replica", eg->sandbox,
                                "host", host ? host : "", "port", (int)port, "address", address ? address : "",
                                "reason", reason);
    if (details && tags && json_object_size(tags))
        json_object_set(details, "tags", tags);
    audit_event_emit(&(audit_event){.action = "enclave.egress", .user = "system:runner", .kind = "Enclave",
                                    .name = eg->enclave[0] ? eg->enclave : NULL, .outcome = outcome,
                                    .details = details});
    json_decref(details);
}

static void audit(const runner_egress *eg, const char *outcome, const char *host, unsigned port,
                  const char *address, const char *reason)
{
    audit_tagged(eg, outcome, host, port, address, reason, NULL);
}

/* Asks EG's plugins, in order, about a tunnel to HOST:PORT. Returns 0 to
 * let it go (their tags added to TAGS), or -EPERM with WHY and the status
 * to answer in *RET_STATUS: a DENY (its status), a failure closed (503). */
static int ask_plugins(runner_egress *eg, const char *host, unsigned port, json_t *tags, char *why, size_t size,
                       int *ret_status)
{
    if (!eg->n_plugins)
        return 0;
    _cleanup_free_ plugin_call *call = malloc(sizeof(*call));
    if (!call) {
        snprintf(why, size, "out of memory");
        *ret_status = 503;
        return -EPERM;
    }
    char port_text[8], error[PLUGIN_ERROR_MAX];
    snprintf(port_text, sizeof(port_text), "%u", port);
    for (size_t i = 0; i < eg->n_plugins; i++) {
        egress_plugin *p = &eg->plugins[i];
        plugin_call_init(call, CLOISTER_PHASE_EGRESS);
        plugin_call_prop(call, "egress.host", host, strlen(host));
        plugin_call_prop(call, "egress.port", port_text, strlen(port_text));
        plugin_call_prop(call, "enclave.name", eg->enclave, strlen(eg->enclave));
        plugin_call_prop(call, "replica.name", eg->sandbox, strlen(eg->sandbox));
        plugin_outcome o = PLUGIN_OUTCOME_ERROR;
        if (p->instance)
            o = plugin_instance_run(p->instance, call, error, sizeof(error));
        else
            snprintf(error, sizeof(error), "%s", p->error ? p->error : "it cannot run");
        for (size_t t = 0; o == PLUGIN_OUTCOME_OK && t < call->n_tags; t++) {
            char key[PLUGIN_NAME_MAX + 1];
            snprintf(key, sizeof(key), "%.*s", (int)call->tags[t].key.len, call->tags[t].key.ptr);
            json_object_set_new(tags, key, json_stringn(call->tags[t].value.ptr, call->tags[t].value.len));
        }
        if (o == PLUGIN_OUTCOME_OK && call->action == CLOISTER_DENY) {
            snprintf(why, size, "denied by plugin %s: %s", p->name, call->reason[0] ? call->reason : "no reason given");
            *ret_status = call->status ? call->status : 403;
            return -EPERM;
        }
        if (o != PLUGIN_OUTCOME_OK && !p->fail_open) {
            snprintf(why, size, "plugin %s failed (%s: %s) and fails closed", p->name, plugin_outcome_name(o), error);
            *ret_status = 503;
            return -EPERM;
        }
        if (o != PLUGIN_OUTCOME_OK)
            log_fields(LOG_LEVEL_WARN, "an egress plugin failed; the tunnel goes on (failure: open)", "enclave",
                       eg->enclave, "plugin", p->name, "error", error, NULL);
    }
    return 0;
}

/* Writes the LEN bytes at P to FD; 0 or a negative errno. */
static int write_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? negative_errno() : -EIO;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Answers the agent: "<status> <text>\n". */
static void answer(int fd, int status, const char *text)
{
    char line[LINE_MAX_ + 64];
    int n = snprintf(line, sizeof(line), "%d %s\n", status, text);
    write_all(fd, line, (size_t)MIN(n, (int)sizeof(line) - 1));
}

/* Reads the request line "<host> <port>\n" from FD into HOST and *PORT,
 * all of it within RUNNER_EGRESS_HELLO_TIMEOUT_S. */
static int read_request(int fd, char *host, unsigned *port)
{
    char line[LINE_MAX_ + 1];
    size_t len = 0;
    uint64_t deadline = time_mono_ns() + (uint64_t)RUNNER_EGRESS_HELLO_TIMEOUT_S * NSEC_PER_SEC;
    while (len < LINE_MAX_) {
        if (time_mono_ns() > deadline)
            return -ETIMEDOUT;
        ssize_t n = recv(fd, line + len, 1, 0); /* byte by byte: nothing past the line is consumed */
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        if (line[len] == '\n')
            break;
        len++;
    }
    if (len == LINE_MAX_)
        return -EBADMSG;
    line[len] = 0;
    char *space = strchr(line, ' '), *end;
    if (!space || (size_t)(space - line) > EGRESS_HOST_MAX)
        return -EBADMSG;
    *space = 0;
    errno = 0;
    unsigned long p = strtoul(space + 1, &end, 10);
    if (errno || *end || p < 1 || p > 65535 || space[1] < '1' || space[1] > '9')
        return -EBADMSG;
    strcpy(host, line);
    *port = (unsigned)p;
    return egress_host_valid(host) ? 0 : -EBADMSG;
}

/* The addresses of entry E that may be reached, port included: its literal
 * address only, or those of its name that egress_address_refusal() lets
 * through. Returns how many (0: none, with *REFUSED naming why and
 * REFUSED_ADDR the first refused address), or a negative EAI_* error of
 * getaddrinfo as -EHOSTUNREACH. */
static int resolve(const egress_entry *e, struct sockaddr_storage *addrs, socklen_t *lens, const char **refused,
                   char *refused_addr, size_t refused_size)
{
    if (egress_host_literal(e->host, e->port, &addrs[0], &lens[0]))
        return 1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", e->port);
    if (getaddrinfo(e->host, port, &hints, &res) != 0)
        return -EHOSTUNREACH;
    int n = 0;
    for (const struct addrinfo *ai = res; ai && n < ADDRS_MAX; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(addrs[0]))
            continue;
        const char *why = egress_address_refusal(ai->ai_addr);
        if (why) {
            if (!*refused) {
                *refused = why;
                address_text(ai->ai_addr, refused_addr, refused_size);
            }
            continue;
        }
        memset(&addrs[n], 0, sizeof(addrs[n]));
        memcpy(&addrs[n], ai->ai_addr, ai->ai_addrlen);
        lens[n++] = ai->ai_addrlen;
    }
    freeaddrinfo(res);
    return n;
}

/* Connects to the first of the N checked ADDRS that answers; the socket,
 * its address in ADDR, or a negative errno. */
static int connect_checked(const struct sockaddr_storage *addrs, const socklen_t *lens, int n, char *addr,
                           size_t size)
{
    int r = -EHOSTUNREACH;
    for (int i = 0; i < n; i++) {
        address_text((const struct sockaddr *)&addrs[i], addr, size);
        int fd = socket(addrs[i].ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return negative_errno();
        struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_S};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
        if (connect(fd, (const struct sockaddr *)&addrs[i], lens[i]) == 0) {
            struct timeval none = {0};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof(none));
            return fd;
        }
        r = negative_errno();
        close(fd);
    }
    return r;
}

/* Reads the client's first TLS record from FD into BUF (EGRESS_TLS_RECORD_MAX
 * bytes) and its server name into SNI; the bytes read into *LEN. Returns 0,
 * or egress_sni_parse()'s error, -ETIMEDOUT or -EIO. */
static int read_hello(int fd, uint8_t *buf, size_t *len, char *sni)
{
    size_t have = 0, need = 5;
    uint64_t deadline = time_mono_ns() + (uint64_t)RUNNER_EGRESS_HELLO_TIMEOUT_S * NSEC_PER_SEC;
    for (;;) {
        int r = egress_sni_parse(buf, have, sni, &need);
        if (r != -EAGAIN) {
            *len = have;
            return r;
        }
        uint64_t now = time_mono_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)((deadline - now) / NSEC_PER_MSEC) + 1) <= 0)
            continue;
        ssize_t n = recv(fd, buf + have, need - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EIO;
        have += (size_t)n;
    }
}

/* Copies bytes both ways between A and B until both directions ended, an
 * error, RUNNER_EGRESS_IDLE_S without traffic or the sandbox's end. */
static void relay(runner_egress *eg, int a, int b)
{
    uint8_t buf[RELAY_BUFFER];
    bool open_a = true, open_b = true;
    uint64_t last = time_mono_ns();
    while ((open_a || open_b) && !atomic_load(&eg->stopping)) {
        struct pollfd p[2] = {{.fd = open_a ? a : -1, .events = POLLIN}, {.fd = open_b ? b : -1, .events = POLLIN}};
        int n = poll(p, 2, 1000);
        if (n < 0 && errno != EINTR)
            return;
        if (n <= 0) {
            if (time_mono_ns() - last > (uint64_t)RUNNER_EGRESS_IDLE_S * NSEC_PER_SEC)
                return;
            continue;
        }
        last = time_mono_ns();
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents)
                continue;
            int from = i ? b : a, to = i ? a : b;
            ssize_t got = recv(from, buf, sizeof(buf), 0);
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (got <= 0) {
                if (got < 0)
                    return;
                shutdown(to, SHUT_WR);
                *(i ? &open_b : &open_a) = false;
            } else if (write_all(to, buf, (size_t)got) < 0)
                return;
        }
    }
}

/* Serves one tunnel (see egress.h). */
static void serve(runner_egress *eg, int fd)
{
    struct timeval tv = {.tv_sec = RUNNER_EGRESS_HELLO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char host[EGRESS_HOST_MAX + 1], refused_addr[INET6_ADDRSTRLEN] = "", addr[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;
    if (read_request(fd, host, &port) < 0) {
        answer(fd, 400, "expected one line: <host> <port>");
        audit(eg, "denied", NULL, 0, NULL, "malformed tunnel request");
        return;
    }
    const egress_entry *e = NULL;
    for (size_t i = 0; i < eg->n_entries && !e; i++)
        if (eg->entries[i].port == port && strcasecmp(eg->entries[i].host, host) == 0)
            e = &eg->entries[i];
    if (!e) {
        answer(fd, 403, "not in the Enclave's egress list");
        audit(eg, "denied", host, port, NULL, "not in the egress list");
        return;
    }
    json_auto_t *tags = json_object();
    char denied[PLUGIN_REASON_MAX + PLUGIN_ERROR_MAX + 100];
    int status;
    if (!tags || ask_plugins(eg, host, port, tags, denied, sizeof(denied), &status) < 0) {
        answer(fd, tags ? status : 503, tags ? denied : "out of memory");
        audit_tagged(eg, "denied", host, port, NULL, tags ? denied : "out of memory", tags);
        return;
    }
    struct sockaddr_storage addrs[ADDRS_MAX];
    socklen_t lens[ADDRS_MAX];
    const char *refused = NULL;
    int n = resolve(e, addrs, lens, &refused, refused_addr, sizeof(refused_addr));
    if (n <= 0) {
        char why[160];
        if (n < 0)
            snprintf(why, sizeof(why), "%s", "cannot resolve the name");
        else
            snprintf(why, sizeof(why), "resolves only to addresses that may not be reached (%s)",
                     refused ? refused : "none");
        answer(fd, n < 0 ? 502 : 403, why);
        audit(eg, n < 0 ? "failure" : "denied", host, port, refused_addr, why);
        return;
    }
    _cleanup_free_ uint8_t *hello = NULL;
    size_t hello_len = 0;
    if (e->tls) {
        /* the ClientHello comes only once the client has its 200 */
        char sni[EGRESS_HOST_MAX + 1] = "";
        address_text((const struct sockaddr *)&addrs[0], addr, sizeof(addr));
        hello = malloc(EGRESS_TLS_RECORD_MAX);
        if (!hello)
            return;
        answer(fd, 200, addr);
        int r = read_hello(fd, hello, &hello_len, sni);
        /* an address entry: no server name, so none can be fronted at that address */
        bool literal = egress_host_literal(e->host, 0, NULL, NULL);
        if (literal ? r != -ENOENT : r < 0 || strcasecmp(sni, e->host) != 0) {
            char why[EGRESS_HOST_MAX + 80];
            snprintf(why, sizeof(why), "%s%s",
                     r == 0 ? (literal ? "the entry is an address but the ClientHello names a server: "
                                       : "the ClientHello names another server: ")
                     : r == -ENOENT               ? "the ClientHello names no server"
                     : r == -ETIMEDOUT || r == -EIO ? "no ClientHello"
                                                    : "not a TLS ClientHello",
                     r == 0 ? sni : "");
            audit(eg, "denied", host, port, addr, why);
            return;
        }
    }
    _cleanup_close_ int up = connect_checked(addrs, lens, n, addr, sizeof(addr));
    if (up < 0) {
        char why[96];
        snprintf(why, sizeof(why), "cannot connect: %s", strerror(-up));
        if (!e->tls)
            answer(fd, 502, why);
        audit(eg, "failure", host, port, addr, why);
        return;
    }
    if (e->tls ? write_all(up, hello, hello_len) < 0 : (answer(fd, 200, addr), false))
        return;
    const char *why = !e->tls                                      ? "listed"
                      : egress_host_literal(e->host, 0, NULL, NULL) ? "listed; the ClientHello names no server"
                                                                     : "listed; server name checked";
    audit_tagged(eg, "success", host, port, addr, why, tags);
    struct timeval none = {0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    relay(eg, fd, up);
}

static void *tunnel_main(void *arg)
{
    tunnel *t = arg;
    serve(t->eg, t->fd);
    close(t->fd);
    atomic_fetch_sub(&t->eg->tunnels, 1);
    unref(t->eg);
    free(t);
    return NULL;
}

/* Accepts tunnels until the sandbox's end. */
static void *acceptor_main(void *arg)
{
    runner_egress *eg = arg;
    while (!atomic_load(&eg->stopping)) {
        struct pollfd p = {.fd = eg->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        int fd = accept4(eg->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        tunnel *t = NULL;
        if (atomic_load(&eg->tunnels) >= RUNNER_EGRESS_TUNNELS_MAX || !(t = malloc(sizeof(*t)))) {
            answer(fd, 429, "too many tunnels are open");
            audit(eg, "denied", NULL, 0, NULL, "too many tunnels");
            close(fd);
            continue;
        }
        *t = (tunnel){.eg = eg, .fd = fd};
        atomic_fetch_add(&eg->tunnels, 1);
        atomic_fetch_add(&eg->refs, 1);
        pthread_attr_t attr;
        pthread_t tid;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&tid, &attr, tunnel_main, t) != 0) {
            atomic_fetch_sub(&eg->tunnels, 1);
            atomic_fetch_sub(&eg->refs, 1);
            close(fd);
            free(t);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

/* Listens on DIR/egress.sock (through /proc/self/fd: long paths fit),
 * mode 0600, owned by the sandbox's root. The fd or a negative errno. */
static int listen_socket(const char *dir)
{
    _cleanup_close_ int dirfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd < 0)
        return negative_errno();
    return unix_listen_at(dirfd, "egress.sock", NOBODY);
}

runner_egress *runner_egress_new(const char *dir, const char *name, const char *owner, const json_t *entries,
                                 const json_t *plugins, api_error *err)
{
    runner_egress *eg = calloc(1, sizeof(*eg));
    if (!eg) {
        api_fail(err, 500, "internal", "out of memory");
        return NULL;
    }
    eg->listen_fd = -1;
    atomic_init(&eg->refs, 1);
    snprintf(eg->sandbox, sizeof(eg->sandbox), "%s", name);
    /* the controller's owner tag: enclave/<name>/<uid>/<digest> */
    if (owner && strncmp(owner, "enclave/", STRLEN("enclave/")) == 0) {
        const char *n = owner + STRLEN("enclave/");
        snprintf(eg->enclave, sizeof(eg->enclave), "%.*s", (int)strcspn(n, "/"), n);
    }
    if (parse_entries(eg, entries, err) < 0 || parse_plugins(eg, plugins, err) < 0) {
        runner_egress_free(eg);
        return NULL;
    }
    if ((size_t)snprintf(eg->path, sizeof(eg->path), "%s/egress.sock", dir) >= sizeof(eg->path) ||
        (eg->listen_fd = listen_socket(dir)) < 0) {
        api_fail(err, 500, "internal", "cannot listen on the sandbox's egress socket in %s: %s", dir,
                 strerror(eg->listen_fd < 0 ? -eg->listen_fd : ENAMETOOLONG));
        runner_egress_free(eg);
        return NULL;
    }
    atomic_fetch_add(&eg->refs, 1);
    if (pthread_create(&eg->acceptor, NULL, acceptor_main, eg) != 0) {
        atomic_fetch_sub(&eg->refs, 1);
        api_fail(err, 500, "internal", "cannot start the egress thread");
        runner_egress_free(eg);
        return NULL;
    }
    eg->started = true;
    return eg;
}

const char *runner_egress_socket(const runner_egress *eg)
{
    return eg->path;
}

void runner_egress_free(runner_egress *eg)
{
    if (!eg)
        return;
    atomic_store(&eg->stopping, true);
    if (eg->listen_fd >= 0)
        shutdown(eg->listen_fd, SHUT_RDWR); /* wakes the acceptor's poll now: the loop does not wait */
    if (eg->started) {
        pthread_join(eg->acceptor, NULL);
        unref(eg); /* the acceptor's */
    }
    if (eg->listen_fd >= 0) {
        close(eg->listen_fd);
        unlink(eg->path);
    }
    unref(eg); /* tunnels still open end within a second and free it */
}
