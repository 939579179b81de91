#include "daemon/config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "kms/seal.h"
#include "plugin/plugin.h"

const char *const daemon_role_names[DAEMON_N_ROLES] = {"api", "kms", "audit", "runner", "proxy"};

#define NODES_MAX 4096 /* nodes visited in one file: aliases cannot make a walk explode */

void config_problems_free(config_problems *p)
{
    for (size_t i = 0; i < p->n && i < CONFIG_PROBLEMS_MAX; i++)
        free(p->items[i]);
    free(p->items);
    *p = (config_problems){0};
}

void config_problem(config_problems *p, const char *fmt, ...)
{
    if (p->n < CONFIG_PROBLEMS_MAX) {
        if (!p->items && !(p->items = calloc(CONFIG_PROBLEMS_MAX, sizeof(char *))))
            return;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&p->items[p->n], fmt, ap) < 0)
            p->items[p->n] = NULL;
        va_end(ap);
        if (!p->items[p->n])
            return;
        /* keys and values come from the file: no terminal control reaches stderr */
        for (char *ch = p->items[p->n]; *ch; ch++)
            if ((unsigned char)*ch < 0x20 || *ch == 0x7f)
                *ch = '?';
    }
    p->n++;
}

bool config_valid_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1])
        return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return !*end && colon[1] != '-' && colon[1] != '+' && port > 0 && port < 65536;
}

void daemon_config_defaults(daemon_config *cfg)
{
    *cfg = (daemon_config){.dev = true, .api_threads = 2, .proxy_threads = 2};
    strcpy(cfg->data_dir, "./cloister-data");
    strcpy(cfg->api_listen, "127.0.0.1:7443");
    strcpy(cfg->proxy_listen, "127.0.0.1:8443");
    strcpy(cfg->domain, "localhost");
    strcpy(cfg->seal_mode, "dev");
    for (size_t i = 0; i < DAEMON_N_ROLES; i++)
        cfg->role_wanted[i] = true;
}

/* ---- the walk over the YAML document ---- */

typedef struct parse_ctx {
    const char *file;
    yaml_document_t *doc;
    daemon_config *cfg;
    config_problems *problems;
    size_t visited;
    size_t key_line; /* the line of the key whose value is walked */
    /* lines of keys the checks after the walk name (0: absent) */
    size_t roles_line, store_line, seal_line, api_role_listen_line, kms_listen_line, audit_listen_line, runner_listen_line, peers_line;
    bool seal_given;
} parse_ctx;

static size_t line_of(const yaml_node_t *n)
{
    return n ? n->start_mark.line + 1 : 1;
}

/* Adds the problem FMT (printf-style) of KEY at NODE's line. */
__attribute__((format(printf, 4, 5))) static void problem_at(parse_ctx *c, const yaml_node_t *node, const char *key,
                                                          const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    config_problem(c->problems, "%s:%zu: %s: %s", c->file, line_of(node), key, msg);
}

static const char *node_kind(const yaml_node_t *n)
{
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a list" : "a scalar";
}

/* The string of scalar node N copied into DST (SIZE bytes); a problem (and
 * -EINVAL) for a non-scalar, an empty or a too long value. */
static int scalar(parse_ctx *c, yaml_node_t *n, const char *key, char *dst, size_t size)
{
    if (n->type != YAML_SCALAR_NODE) {
        problem_at(c, n, key, "takes a string, not %s", node_kind(n));
        return -EINVAL;
    }
    size_t len = n->data.scalar.length;
    if (len == 0 || len >= size || memchr(n->data.scalar.value, 0, len)) {
        problem_at(c, n, key, "%s", len == 0 ? "is empty" : len >= size ? "is too long" : "holds a NUL byte");
        return -EINVAL;
    }
    memcpy(dst, n->data.scalar.value, len);
    dst[len] = 0;
    return 0;
}

static void listen_value(parse_ctx *c, yaml_node_t *n, const char *key, char *dst, size_t size)
{
    char v[256];
    if (scalar(c, n, key, v, sizeof(v)) < 0)
        return;
    if (!config_valid_listen(v))
        problem_at(c, n, key, "'%s' is not HOST:PORT with a port from 1 to 65535 (e.g. 0.0.0.0:7443)", v);
    else
        snprintf(dst, size, "%s", v);
}

/* A file the daemon reads: it must exist and be readable now. */
static void file_value(parse_ctx *c, yaml_node_t *n, const char *key, char *dst, size_t size)
{
    char v[4096];
    if (scalar(c, n, key, v, sizeof(v)) < 0)
        return;
    if (access(v, R_OK) < 0)
        problem_at(c, n, key, "cannot read %s (%s)", v, strerror(errno));
    else
        snprintf(dst, size, "%s", v);
}

static void number_value(parse_ctx *c, yaml_node_t *n, const char *key, unsigned long min, unsigned long max,
                         unsigned long *ret)
{
    char v[32], *end;
    if (scalar(c, n, key, v, sizeof(v)) < 0)
        return;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (errno || *end || v[0] == '-' || v[0] == '+' || x < min || x > max)
        problem_at(c, n, key, "'%s' is not a number from %lu to %lu", v, min, max);
    else
        *ret = x;
}

/* A peer's base URL: https://HOST[:PORT] and nothing after. */
static void url_value(parse_ctx *c, yaml_node_t *n, const char *key, char *dst, size_t size)
{
    char v[512];
    if (scalar(c, n, key, v, sizeof(v)) < 0)
        return;
    const char *host = strncmp(v, "https://", 8) == 0 ? v + 8 : NULL;
    if (!host || !*host || strpbrk(host, "/?#@ "))
        problem_at(c, n, key, "'%s' is not https://HOST[:PORT] (roles talk over TLS only)", v);
    else
        snprintf(dst, size, "%s", v);
}

/* Walks mapping N whose keys must be among KEYS (N_KEYS of them, at most
 * 16): each pair goes to FN with the key's index; unknown and repeated keys
 * are problems naming PATH.key. */
static void mapping(parse_ctx *c, yaml_node_t *n, const char *path, const char *const *keys, size_t n_keys,
                    void (*fn)(parse_ctx *c, size_t key, yaml_node_t *value, const char *full))
{
    if (n->type != YAML_MAPPING_NODE) {
        problem_at(c, n, path[0] ? path : "(top)", "takes a mapping, not %s", node_kind(n));
        return;
    }
    bool seen[16] = {false};
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key), *v = yaml_document_get_node(c->doc, p->value);
        if (!k || !v || ++c->visited > NODES_MAX)
            return;
        char name[64] = "";
        if (k->type == YAML_SCALAR_NODE && k->data.scalar.length < sizeof(name)) {
            memcpy(name, k->data.scalar.value, k->data.scalar.length);
            name[k->data.scalar.length] = 0;
        }
        char full[160];
        snprintf(full, sizeof(full), "%s%s%s", path, path[0] ? "." : "", name[0] ? name : "?");
        size_t i = 0;
        while (i < n_keys && strcmp(keys[i], name) != 0)
            i++;
        if (i == n_keys) {
            char known[300] = "";
            for (size_t j = 0; j < n_keys; j++)
                snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", j ? ", " : "", keys[j]);
            problem_at(c, k, full, "unknown key (known here: %s)", known);
            continue;
        }
        if (seen[i]) {
            problem_at(c, k, full, "given twice");
            continue;
        }
        seen[i] = true;
        c->key_line = line_of(k);
        fn(c, i, v, full);
    }
}

/* Whether mapping N has the key NAME. */
static bool has_key(parse_ctx *c, yaml_node_t *n, const char *name)
{
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && k->data.scalar.length == strlen(name) &&
            memcmp(k->data.scalar.value, name, strlen(name)) == 0)
            return true;
    }
    return false;
}

static void tls_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    /* the listener's pair: api's or proxy's, by the path */
    bool api = strncmp(full, "api.", 4) == 0;
    daemon_config *cfg = c->cfg;
    if (key == 0)
        file_value(c, v, full, api ? cfg->api_tls_cert : cfg->proxy_tls_cert, sizeof(cfg->api_tls_cert));
    else
        file_value(c, v, full, api ? cfg->api_tls_key : cfg->proxy_tls_key, sizeof(cfg->api_tls_key));
}

static void tls(parse_ctx *c, yaml_node_t *v, const char *full)
{
    static const char *const keys[] = {"cert", "key"};
    mapping(c, v, full, keys, ELEMENTSOF(keys), tls_key);
    bool api = strncmp(full, "api.", 4) == 0;
    const char *cert = api ? c->cfg->api_tls_cert : c->cfg->proxy_tls_cert;
    const char *key = api ? c->cfg->api_tls_key : c->cfg->proxy_tls_key;
    if (v->type == YAML_MAPPING_NODE && !(has_key(c, v, "cert") && has_key(c, v, "key")) && (cert[0] || key[0]))
        problem_at(c, v, full,
                   "takes both cert and key (or neither: the cluster CA issues the listener's certificate)");
}

static void api_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    unsigned long n = c->cfg->api_threads;
    switch (key) {
    case 0:
        listen_value(c, v, full, c->cfg->api_listen, sizeof(c->cfg->api_listen));
        break;
    case 1:
        number_value(c, v, full, 1, 64, &n);
        c->cfg->api_threads = (unsigned)n;
        break;
    case 2:
        tls(c, v, full);
        break;
    default: /* roleListen: the mutual-TLS listener for the proxy and the runner */
        c->api_role_listen_line = c->key_line;
        listen_value(c, v, full, c->cfg->api_role_listen, sizeof(c->cfg->api_role_listen));
    }
}

static void proxy_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    unsigned long n = c->cfg->proxy_threads;
    switch (key) {
    case 0:
        listen_value(c, v, full, c->cfg->proxy_listen, sizeof(c->cfg->proxy_listen));
        break;
    case 1:
        listen_value(c, v, full, c->cfg->proxy_http_listen, sizeof(c->cfg->proxy_http_listen));
        break;
    case 2:
        number_value(c, v, full, 1, 64, &n);
        c->cfg->proxy_threads = (unsigned)n;
        break;
    case 3:
    case 4: {
        unsigned *cap = key == 3 ? &c->cfg->proxy_upstream_idle : &c->cfg->proxy_upstream_conns;
        n = *cap;
        number_value(c, v, full, 1, 65536, &n);
        *cap = (unsigned)n;
        break;
    }
    default:
        tls(c, v, full);
    }
}

static void pkcs11_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    daemon_config *cfg = c->cfg;
    if (key == 0)
        file_value(c, v, full, cfg->pkcs11_module, sizeof(cfg->pkcs11_module));
    else if (key == 1)
        number_value(c, v, full, 0, ULONG_MAX, &cfg->pkcs11_slot);
    else
        file_value(c, v, full, cfg->seal_secret_file, sizeof(cfg->seal_secret_file));
}

static void seal_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    daemon_config *cfg = c->cfg;
    char mode[16];
    switch (key) {
    case 0:
        if (scalar(c, v, full, mode, sizeof(mode)) < 0)
            break;
        if (!kms_seal_mode_valid(mode))
            problem_at(c, v, full, "'%s' is not a seal mode (passphrase, pkcs11 or dev)", mode);
        else
            strcpy(cfg->seal_mode, mode);
        break;
    case 1:
        file_value(c, v, full, cfg->seal_secret_file, sizeof(cfg->seal_secret_file));
        if (!cfg->seal_mode[0])
            strcpy(cfg->seal_mode, "passphrase");
        break;
    default: {
        static const char *const keys[] = {"module", "slot", "pinFile"};
        if (!cfg->seal_mode[0])
            strcpy(cfg->seal_mode, "pkcs11");
        mapping(c, v, full, keys, ELEMENTSOF(keys), pkcs11_key);
        if (v->type == YAML_MAPPING_NODE && !cfg->pkcs11_module[0])
            problem_at(c, v, full, "needs module (the token's PKCS#11 library)");
    }
    }
}

static void kms_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    static const char *const keys[] = {"mode", "passphraseFile", "pkcs11"};
    if (key == 0) {
        c->kms_listen_line = c->key_line;
        listen_value(c, v, full, c->cfg->kms_listen, sizeof(c->cfg->kms_listen));
        return;
    }
    c->seal_given = true;
    c->seal_line = c->key_line;
    strcpy(c->cfg->seal_mode, ""); /* set by the seal's keys */
    size_t before = c->problems->n;
    mapping(c, v, full, keys, ELEMENTSOF(keys), seal_key);
    if (v->type != YAML_MAPPING_NODE || c->problems->n > before)
        return;
    /* one seal: a file or a token, and a mode that says the same */
    bool file = has_key(c, v, "passphraseFile"), token = has_key(c, v, "pkcs11");
    const char *implied = token ? "pkcs11" : file ? "passphrase" : NULL;
    if (file && token)
        problem_at(c, v, full, "gives both passphraseFile and pkcs11; a root key is sealed one way");
    else if (implied && strcmp(c->cfg->seal_mode, implied) != 0)
        problem_at(c, v, full, "mode %s contradicts %s", c->cfg->seal_mode, token ? "pkcs11" : "passphraseFile");
    if (c->cfg->seal_mode[0] || c->problems->n > before)
        return;
    problem_at(c, v, full, "says no seal: give passphraseFile, pkcs11 {module, slot, pinFile} or mode: passphrase "
                        "(unsealed by hand with cloisterd unseal)");
}

/* audit.listen, and audit.accessRetentionDays (the proxy's access-log
 * segments the audit role keeps, in days of no writing; absent: for good) */
static void audit_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    if (key == 1) {
        unsigned long n = c->cfg->access_retention_days;
        number_value(c, v, full, 1, 36500, &n);
        c->cfg->access_retention_days = (unsigned)n;
        return;
    }
    c->audit_listen_line = c->key_line;
    listen_value(c, v, full, c->cfg->audit_listen, sizeof(c->cfg->audit_listen));
}

/* runner.listen (the runner's mutual-TLS listener) and runner.cgroup (a
 * delegated cgroup v2 directory for the sandboxes' limits) */
static void runner_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    if (key == 1) {
        scalar(c, v, full, c->cfg->runner_cgroup, sizeof(c->cfg->runner_cgroup));
        return;
    }
    c->runner_listen_line = c->key_line;
    listen_value(c, v, full, c->cfg->runner_listen, sizeof(c->cfg->runner_listen));
}

static void store_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    (void)key;
    c->store_line = c->key_line;
    char url[sizeof(c->cfg->store_url)];
    if (scalar(c, v, full, url, sizeof(url)) < 0)
        return;
    /* sqlite:///abs/path and sqlite:/abs/path are the same file */
    const char *path = strncmp(url, "sqlite://", 9) == 0 ? url + 9 : strncmp(url, "sqlite:", 7) == 0 ? url + 7 : NULL;
    if (path)
        snprintf(c->cfg->store_url, sizeof(c->cfg->store_url), "sqlite:%s", path);
    else if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)
        strcpy(c->cfg->store_url, url);
    else /* not repeated: it may hold a password */
        problem_at(c, v, full, "not a store URL (sqlite:///PATH or postgresql://USER@HOST/DB)");
}

static void pki_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    (void)key;
    scalar(c, v, full, c->cfg->pki_dir, sizeof(c->cfg->pki_dir));
}

static void peers_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    daemon_config *cfg = c->cfg;
    char *const dst[] = {cfg->peer_api, cfg->peer_kms, cfg->peer_audit, cfg->peer_runner, cfg->peer_api_roles};
    url_value(c, v, full, dst[key], sizeof(cfg->peer_api));
}

/* One header of telemetry.otlp.headers, appended to otlp_headers as k=v. */
static void header_pair(parse_ctx *c, yaml_node_t *k, yaml_node_t *v, const char *path)
{
    char name[128], value[1024], full[300];
    int r = scalar(c, k, path, name, sizeof(name));
    snprintf(full, sizeof(full), "%s.%s", path, r == 0 ? name : "?");
    if (r < 0 || scalar(c, v, full, value, sizeof(value)) < 0)
        return;
    if (strpbrk(name, ",=\r\n ") || strpbrk(value, ",\r\n")) {
        problem_at(c, k, full,
                   "a header name cannot hold ',', '=', space or a line break, nor its value ',' or a line break");
        return;
    }
    char *h = c->cfg->otlp_headers;
    size_t used = strlen(h), need = strlen(name) + strlen(value) + 2;
    if (used + need >= sizeof(c->cfg->otlp_headers)) {
        problem_at(c, k, full, "the headers are too long together (at most %zu bytes)",
                   sizeof(c->cfg->otlp_headers) - 1);
        return;
    }
    snprintf(h + used, sizeof(c->cfg->otlp_headers) - used, "%s%s=%s", used ? "," : "", name, value);
}

static void otlp_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    if (key == 0) {
        char url[sizeof(c->cfg->otlp_endpoint)];
        if (scalar(c, v, full, url, sizeof(url)) < 0)
            return;
        if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
            problem_at(c, v, full, "'%s' is not an http:// or https:// URL (OTLP/HTTP)", url);
        else
            strcpy(c->cfg->otlp_endpoint, url);
        return;
    }
    if (v->type != YAML_MAPPING_NODE) {
        problem_at(c, v, full, "takes a mapping of header names to values");
        return;
    }
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *hk = yaml_document_get_node(c->doc, p->key), *hv = yaml_document_get_node(c->doc, p->value);
        if (!hk || !hv || ++c->visited > NODES_MAX)
            return;
        header_pair(c, hk, hv, full);
    }
}

static void telemetry_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    static const char *const keys[] = {"endpoint", "headers"};
    (void)key;
    mapping(c, v, full, keys, ELEMENTSOF(keys), otlp_key);
}

static void roles_value(parse_ctx *c, yaml_node_t *v, const char *full)
{
    c->roles_line = c->key_line;
    if (v->type != YAML_SEQUENCE_NODE) {
        problem_at(c, v, full, "takes a list of roles (api, proxy, kms, audit, runner)");
        return;
    }
    bool wanted[DAEMON_N_ROLES] = {false};
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, *it);
        char name[32];
        if (!item || ++c->visited > NODES_MAX || scalar(c, item, full, name, sizeof(name)) < 0)
            continue;
        size_t i = 0;
        while (i < DAEMON_N_ROLES && strcmp(daemon_role_names[i], name) != 0)
            i++;
        if (i == DAEMON_N_ROLES)
            problem_at(c, item, full, "'%s' is not a role (api, proxy, kms, audit, runner)", name);
        else if (wanted[i])
            problem_at(c, item, full, "'%s' is listed twice", name);
        else
            wanted[i] = true;
    }
    memcpy(c->cfg->role_wanted, wanted, sizeof(wanted));
}

/* plugins: {dir: /absolute/dir, trusted: [name, ...]} (docs/plugins.md) */
static void plugins_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    daemon_config *cfg = c->cfg;
    if (key == 0) {
        char dir[sizeof(cfg->plugin_dir)];
        if (scalar(c, v, full, dir, sizeof(dir)) < 0)
            return;
        if (dir[0] != '/') /* it may be filled later: the roles say when they cannot use it */
            problem_at(c, v, full, "takes an absolute path");
        else
            snprintf(cfg->plugin_dir, sizeof(cfg->plugin_dir), "%s", dir);
        return;
    }
    if (v->type != YAML_SEQUENCE_NODE) {
        problem_at(c, v, full, "takes a list of plugin names");
        return;
    }
    strbuf b;
    strbuf_init_static(&b, cfg->plugin_trusted, sizeof(cfg->plugin_trusted));
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, *it);
        char name[64];
        if (!item || ++c->visited > NODES_MAX || scalar(c, item, full, name, sizeof(name)) < 0)
            continue;
        if (!plugin_name_valid(name))
            problem_at(c, item, full, "'%s' is not a plugin name ([a-z0-9][a-z0-9_-]*, at most 63)", name);
        else
            strbuf_printf(&b, "%s%s", b.len ? "," : "", name);
    }
    if (b.truncated)
        problem_at(c, v, full, "too many names (at most %zu bytes in all)", sizeof(cfg->plugin_trusted) - 1);
}

static void top_key(parse_ctx *c, size_t key, yaml_node_t *v, const char *full)
{
    static const char *const api_keys[] = {"listen", "threads", "tls", "roleListen"};
    static const char *const proxy_keys[] = {"listen", "httpListen", "threads", "upstreamIdle", "upstreamConnections",
                                             "tls"};
    static const char *const kms_keys[] = {"listen", "seal"};
    static const char *const audit_keys[] = {"listen", "accessRetentionDays"};
    static const char *const runner_keys[] = {"listen", "cgroup"};
    static const char *const store_keys[] = {"url"};
    static const char *const pki_keys[] = {"dir"};
    static const char *const peer_keys[] = {"api", "kms", "audit", "runner", "apiRoles"};
    static const char *const telemetry_keys[] = {"otlp"};
    static const char *const plugin_keys[] = {"dir", "trusted"};
    daemon_config *cfg = c->cfg;
    switch (key) {
    case 0:
        scalar(c, v, full, cfg->domain, sizeof(cfg->domain));
        break;
    case 1:
        scalar(c, v, full, cfg->data_dir, sizeof(cfg->data_dir));
        break;
    case 2:
        roles_value(c, v, full);
        break;
    case 3:
        mapping(c, v, full, store_keys, ELEMENTSOF(store_keys), store_key);
        break;
    case 4:
        mapping(c, v, full, pki_keys, ELEMENTSOF(pki_keys), pki_key);
        break;
    case 5:
        mapping(c, v, full, api_keys, ELEMENTSOF(api_keys), api_key);
        break;
    case 6:
        mapping(c, v, full, proxy_keys, ELEMENTSOF(proxy_keys), proxy_key);
        break;
    case 7:
        mapping(c, v, full, kms_keys, ELEMENTSOF(kms_keys), kms_key);
        break;
    case 8:
        mapping(c, v, full, audit_keys, ELEMENTSOF(audit_keys), audit_key);
        break;
    case 9:
        mapping(c, v, full, runner_keys, ELEMENTSOF(runner_keys), runner_key);
        break;
    case 10:
        c->peers_line = c->key_line;
        mapping(c, v, full, peer_keys, ELEMENTSOF(peer_keys), peers_key);
        break;
    case 11:
        mapping(c, v, full, telemetry_keys, ELEMENTSOF(telemetry_keys), telemetry_key);
        break;
    default:
        mapping(c, v, full, plugin_keys, ELEMENTSOF(plugin_keys), plugins_key);
    }
}

/* The roles each role calls (daemon_role_names' order: api, kms, audit,
 * runner, proxy), so a subset names the peers it needs. */
static const bool role_calls[DAEMON_N_ROLES][DAEMON_N_ROLES] = {
    /* api */ {false, true, true, true, false},
    /* kms */ {false, false, true, false, false},
    /* audit */ {false, false, false, false, false},
    /* runner */ {true, false, true, false, false},
    /* proxy */ {true, false, true, false, false},
};

/* Roles apart: each role this machine runs reaches the ones it does not
 * through peers.<role> (mutual TLS); a peer or a listener for a role of the
 * wrong side is a mistake. */
static void check_peers(parse_ctx *c)
{
    daemon_config *cfg = c->cfg;
    const char *const peers[DAEMON_N_ROLES] = {cfg->peer_api, cfg->peer_kms, cfg->peer_audit, cfg->peer_runner, ""};
    bool needs[DAEMON_N_ROLES] = {false};
    char needing[100] = "", missing[200] = "";
    for (size_t k = 0; k < DAEMON_N_ROLES; k++) {
        bool called = false;
        for (size_t i = 0; i < DAEMON_N_ROLES; i++)
            if (cfg->role_wanted[i] && role_calls[i][k] && !cfg->role_wanted[k] && !peers[k][0])
                called = needs[i] = true;
        if (called)
            snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), "%speers.%s",
                     missing[0] ? ", " : "", daemon_role_names[k]);
    }
    for (size_t i = 0; i < DAEMON_N_ROLES; i++)
        if (needs[i])
            snprintf(needing + strlen(needing), sizeof(needing) - strlen(needing), "%s%s", needing[0] ? ", " : "",
                     daemon_role_names[i]);
    if (missing[0])
        config_problem(c->problems,
                       "%s:%zu: roles: roles [%s] need %s: the https://HOST:PORT of each role not run here (or run "
                       "it here: add it to roles)",
                       c->file, c->roles_line ? c->roles_line : 1, needing, missing);
    for (size_t k = 0; k < DAEMON_N_ROLES; k++)
        if (cfg->role_wanted[k] && peers[k][0])
            config_problem(c->problems, "%s:%zu: peers.%s: this machine runs %s itself (roles); leave the peer out",
                           c->file, c->peers_line, daemon_role_names[k], daemon_role_names[k]);
    const struct {
        const char *value, *key;
        size_t role, line;
    } listens[] = {{cfg->api_role_listen, "api.roleListen", 0, c->api_role_listen_line},
                   {cfg->kms_listen, "kms.listen", 1, c->kms_listen_line},
                   {cfg->audit_listen, "audit.listen", 2, c->audit_listen_line},
                   {cfg->runner_listen, "runner.listen", 3, c->runner_listen_line}};
    for (size_t i = 0; i < ELEMENTSOF(listens); i++)
        if (listens[i].value[0] && !cfg->role_wanted[listens[i].role])
            config_problem(c->problems, "%s:%zu: %s: this machine does not run %s (roles); leave it out", c->file,
                           listens[i].line, listens[i].key, daemon_role_names[listens[i].role]);
    if (cfg->peer_api_roles[0] && cfg->role_wanted[0])
        config_problem(c->problems,
                       "%s:%zu: peers.apiRoles: this machine runs api itself (roles); leave the peer out (its "
                       "proxy and runner use api.roleListen)",
                       c->file, c->peers_line);
}

/* What the file says that cannot work together. */
static void check_whole(parse_ctx *c)
{
    daemon_config *cfg = c->cfg;
    check_peers(c);
    if (!c->seal_given && cfg->role_wanted[1])
        config_problem(c->problems,
                       "%s:1: kms.seal: required outside --dev: passphraseFile, pkcs11 {module, slot, pinFile} or "
                       "mode: passphrase (unsealed by hand with cloisterd unseal)",
                       c->file);
    /* an initialised KMS opens only with the mode it was sealed with */
    char root_file[4200], sealed_with[16];
    snprintf(root_file, sizeof(root_file), "%s/kms/root.json", cfg->data_dir);
    if (c->seal_given && kms_root_mode(root_file, sealed_with) == 0 && strcmp(sealed_with, cfg->seal_mode) != 0)
        config_problem(c->problems, "%s:%zu: kms.seal: the root key in %s is sealed with mode %s, not %s", c->file,
                       c->seal_line, root_file, sealed_with, cfg->seal_mode);
    if (strncmp(cfg->store_url, "sqlite:", 7) == 0) {
        /* the api role is confined to its subtree of the data dir */
        char api_dir[4200];
        snprintf(api_dir, sizeof(api_dir), "%s/api/", cfg->data_dir);
        if (strncmp(cfg->store_url + 7, api_dir, strlen(api_dir)) != 0)
            config_problem(c->problems,
                           "%s:%zu: store.url: a SQLite store lies in the api role's part of the data dir, %s "
                           "(leave store out for %sstore.db)",
                           c->file, c->store_line, api_dir, api_dir);
    }
}

int daemon_config_parse(const char *name, const char *text, size_t len, daemon_config *cfg,
                        config_problems *problems)
{
    size_t before = problems->n;
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return -ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        config_problem(problems, "%s:%zu: (syntax): %s %s", name, parser.problem_mark.line + 1,
                       parser.problem ?: "not YAML", parser.context ?: "");
        yaml_parser_delete(&parser);
        return -EINVAL;
    }
    parse_ctx c = {.file = name, .doc = &doc, .cfg = cfg, .problems = problems};
    cfg->dev = false;
    snprintf(cfg->config_file, sizeof(cfg->config_file), "%s", name);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    bool one = root != NULL;
    if (!root)
        config_problem(problems, "%s:1: (top): the file is empty", name);
    else {
        static const char *const keys[] = {"domain", "dataDir", "roles",  "store", "pki",       "api",    "proxy",
                                           "kms",    "audit",   "runner", "peers", "telemetry", "plugins"};
        mapping(&c, root, "", keys, ELEMENTSOF(keys), top_key);
        if (c.visited > NODES_MAX)
            config_problem(problems, "%s:1: (top): more than %d keys and items; not a cloisterd configuration", name,
                           NODES_MAX);
        else
            check_whole(&c);
    }
    yaml_document_delete(&doc);
    /* one document: a second one (after ---) would be ignored silently */
    if (one && yaml_parser_load(&parser, &doc)) {
        if (yaml_document_get_root_node(&doc))
            config_problem(problems, "%s:%zu: (top): a second YAML document; the configuration is one", name,
                           parser.mark.line + 1);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    return problems->n > before ? -EINVAL : 0;
}

int daemon_config_load(const char *path, daemon_config *cfg, config_problems *problems)
{
    _cleanup_free_ char *text = NULL;
    size_t len;
    int r = read_file(path, CONFIG_FILE_MAX, &text, &len);
    if (r < 0) {
        config_problem(problems, "%s:0: (file): cannot read it (%s)", path,
                       r == -EFBIG ? "larger than 256 KiB" : strerror(-r));
        return -EINVAL;
    }
    return daemon_config_parse(path, text, len, cfg, problems);
}

/* The https:// URL of LISTEN (HOST:PORT) as a process of this machine
 * reaches it: a wildcard address becomes loopback. */
static void local_url(const char *listen, char *out, size_t size)
{
    const char *colon = strrchr(listen, ':');
    if (colon && strncmp(listen, "0.0.0.0:", 8) == 0)
        snprintf(out, size, "https://127.0.0.1%s", colon);
    else if (colon && strncmp(listen, "[::]:", 5) == 0)
        snprintf(out, size, "https://[::1]%s", colon);
    else
        snprintf(out, size, "https://%s", listen);
}

void daemon_api_url(const daemon_config *cfg, char *out, size_t size)
{
    if (cfg->peer_api[0]) /* the api runs elsewhere */
        snprintf(out, size, "%s", cfg->peer_api);
    else
        local_url(cfg->api_listen, out, size);
}

void daemon_api_role_url(const daemon_config *cfg, char *out, size_t size)
{
    if (cfg->peer_api_roles[0])
        snprintf(out, size, "%s", cfg->peer_api_roles);
    else if (cfg->role_wanted[0] && cfg->api_role_listen[0])
        local_url(cfg->api_role_listen, out, size);
    else if (size)
        out[0] = 0;
}
