/* cloisterd: the supervising parent. Prepares the data dir (cluster CA,
 * server certificates, bootstrap identity), then forks one process per role
 * from the role table, restarts a role that dies with exponential backoff, and
 * on SIGTERM stops every role and exits 0. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/proctitle.h"
#include "basic/timeutil.h"
#include "daemon/bootstrap.h"
#include "daemon/daemon.h"
#include "daemon/log-export.h"
#include "daemon/peer.h"
#include "daemon/privsep.h"
#include "daemon/role-table.h"
#include "pki/pki.h"
#include "kms/seal.h"
#include "runner/agent.h"
#include "sandbox/measure.h"
#include "basic/encoding.h"
#include "proxy/metrics.h"
#include "store/store.h"
#include "telemetry/telemetry.h"

/* Adding a role: one entry here and its main function. */
static const role_def roles[] = {
    {"api", role_api_main},
    {"kms", role_kms_main},
    {"audit", role_audit_main},
    {"runner", role_runner_main},
    {"proxy", role_proxy_main},
};
#define N_ROLES ELEMENTSOF(roles)

#define BACKOFF_MIN_NS (250 * NSEC_PER_MSEC)
#define BACKOFF_MAX_NS (30 * NSEC_PER_SEC)
#define STABLE_RUN_NS (60 * NSEC_PER_SEC)
#define STOP_TIMEOUT_NS (15 * NSEC_PER_SEC)

/* Started as root: each role's system user (privsep_prepare), else unused. */
static privsep_ids role_ids[N_ROLES];
static bool as_root;

typedef struct role_proc {
    pid_t pid;
    uint64_t started_at;
    uint64_t restart_at; /* 0: not scheduled */
    uint64_t backoff;
} role_proc;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cloisterd --dev [--data-dir DIR] [--api-listen HOST:PORT] [--proxy-listen HOST:PORT]\n"
            "                 [--proxy-http-listen HOST:PORT] [--domain DOMAIN] [--api-threads N]\n"
            "                 [--proxy-threads N] [--store URL]\n"
            "                 [--log-level debug|info|warn|error]\n"
            "\n"
            "  --dev                 run every role on this machine with an embedded store\n"
            "  --data-dir DIR        state, keys and certificates (default ./cloister-data)\n"
            "  --api-listen A        the REST API, HTTPS (default 127.0.0.1:7443)\n"
            "  --proxy-listen A      the identity-aware proxy, HTTPS (default 127.0.0.1:8443)\n"
            "  --proxy-http-listen A an additional plain-HTTP proxy listener (off by default)\n"
            "  --proxy-threads N     the proxy's worker threads, one event loop each (default 2)\n"
            "  --domain D            services are reached at <service>.D (default localhost)\n"
            "  --store URL           the resource store: sqlite:PATH (default DIR/api/store.db) or\n"
            "                        postgresql://USER@HOST/DB (several api replicas share it)\n"
            "  --seal MODE           how the KMS root key is sealed: dev (auto-unseal file, the default),\n"
            "                        passphrase or pkcs11; unseal with `cloisterd unseal --data-dir DIR`\n"
            "  --pkcs11-module PATH  --seal pkcs11: the token's PKCS#11 module\n"
            "  --pkcs11-slot N       --seal pkcs11: the token's slot id\n");
}

static bool valid_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1])
        return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return !*end && port > 0 && port < 65536;
}

static int copy_arg(char *dst, size_t size, const char *flag, const char *value)
{
    if (strlen(value) >= size) {
        fprintf(stderr, "cloisterd: %s is too long\n", flag);
        return -1;
    }
    strcpy(dst, value);
    return 0;
}

/* Parses the command line into CFG; returns 0, or the exit status to use. */
static int parse_args(int argc, char **argv, daemon_config *cfg)
{
    enum { OPT_DATA_DIR = 256, OPT_API, OPT_PROXY, OPT_PROXY_HTTP, OPT_DOMAIN, OPT_THREADS, OPT_PROXY_THREADS, OPT_LOG,
           OPT_SEAL, OPT_P11_MODULE, OPT_P11_SLOT, OPT_STORE };
    static const struct option opts[] = {
        {"dev", no_argument, NULL, 'd'},
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"api-listen", required_argument, NULL, OPT_API},
        {"proxy-listen", required_argument, NULL, OPT_PROXY},
        {"proxy-http-listen", required_argument, NULL, OPT_PROXY_HTTP},
        {"domain", required_argument, NULL, OPT_DOMAIN},
        {"api-threads", required_argument, NULL, OPT_THREADS},
        {"proxy-threads", required_argument, NULL, OPT_PROXY_THREADS},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"seal", required_argument, NULL, OPT_SEAL},
        {"pkcs11-module", required_argument, NULL, OPT_P11_MODULE},
        {"pkcs11-slot", required_argument, NULL, OPT_P11_SLOT},
        {"store", required_argument, NULL, OPT_STORE},
        {"help", no_argument, NULL, 'h'},
        {},
    };
    *cfg = (daemon_config){.api_threads = 2, .proxy_threads = 2};
    strcpy(cfg->data_dir, "./cloister-data");
    strcpy(cfg->api_listen, "127.0.0.1:7443");
    strcpy(cfg->proxy_listen, "127.0.0.1:8443");
    strcpy(cfg->domain, "localhost");
    strcpy(cfg->seal_mode, "dev");
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            cfg->dev = true;
            break;
        case OPT_DATA_DIR:
            if (copy_arg(cfg->data_dir, sizeof(cfg->data_dir), "--data-dir", optarg) < 0)
                return 2;
            break;
        case OPT_API:
        case OPT_PROXY:
        case OPT_PROXY_HTTP: {
            const char *flag = c == OPT_API ? "--api-listen" : c == OPT_PROXY ? "--proxy-listen" : "--proxy-http-listen";
            char *dst = c == OPT_API ? cfg->api_listen : c == OPT_PROXY ? cfg->proxy_listen : cfg->proxy_http_listen;
            if (!valid_listen(optarg)) {
                fprintf(stderr, "cloisterd: %s '%s' is not HOST:PORT (e.g. 127.0.0.1:7443)\n", flag, optarg);
                return 2;
            }
            if (copy_arg(dst, 256, flag, optarg) < 0)
                return 2;
            break;
        }
        case OPT_DOMAIN:
            if (copy_arg(cfg->domain, sizeof(cfg->domain), "--domain", optarg) < 0)
                return 2;
            break;
        case OPT_THREADS:
        case OPT_PROXY_THREADS: {
            char *end;
            long n = strtol(optarg, &end, 10);
            const char *flag = c == OPT_THREADS ? "--api-threads" : "--proxy-threads";
            if (*end || n < 1 || n > 64) {
                fprintf(stderr, "cloisterd: %s takes a number from 1 to 64\n", flag);
                return 2;
            }
            *(c == OPT_THREADS ? &cfg->api_threads : &cfg->proxy_threads) = (unsigned)n;
            break;
        }
        case OPT_LOG: {
            log_level level;
            if (log_level_from_string(optarg, &level) < 0) {
                fprintf(stderr, "cloisterd: --log-level takes debug, info, warn or error\n");
                return 2;
            }
            log_set_max_level(level);
            break;
        }
        case OPT_SEAL:
            if (!kms_seal_mode_valid(optarg)) {
                fprintf(stderr, "cloisterd: --seal takes dev, passphrase or pkcs11\n");
                return 2;
            }
            strcpy(cfg->seal_mode, optarg);
            break;
        case OPT_P11_MODULE:
            if (copy_arg(cfg->pkcs11_module, sizeof(cfg->pkcs11_module), "--pkcs11-module", optarg) < 0)
                return 2;
            break;
        case OPT_P11_SLOT: {
            char *end;
            errno = 0;
            unsigned long slot = strtoul(optarg, &end, 0);
            if (errno || *end || !*optarg || optarg[0] == '-') {
                fprintf(stderr, "cloisterd: --pkcs11-slot takes a slot id (a number)\n");
                return 2;
            }
            cfg->pkcs11_slot = slot;
            break;
        }
        case OPT_STORE:
            if (copy_arg(cfg->store_url, sizeof(cfg->store_url), "--store", optarg) < 0)
                return 2;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cloisterd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (strcmp(cfg->seal_mode, "pkcs11") == 0 && !cfg->pkcs11_module[0]) {
        fprintf(stderr, "cloisterd: --seal pkcs11 needs --pkcs11-module PATH (and --pkcs11-slot N)\n");
        return 2;
    }
    if (!cfg->dev) {
        fprintf(stderr, "cloisterd: this release runs only as a single-machine deployment; start it with --dev\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

/* Moves OLD (a name in the data dir DIR) to NEW when OLD exists and NEW
 * does not: a data dir of an earlier version, whose files lay at its top,
 * gets each role's files in the role's subtree. */
static int migrate(const char *dir, const char *old, const char *new)
{
    char from[4400], to[4400];
    snprintf(from, sizeof(from), "%s/%s", dir, old);
    snprintf(to, sizeof(to), "%s/%s", dir, new);
    struct stat st;
    if (lstat(from, &st) < 0 || lstat(to, &st) == 0)
        return 0;
    if (rename(from, to) < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot move a file into its role's subtree", "from", from, "to", to, "error",
                   strerror(errno), NULL);
        return -errno;
    }
    log_fields(LOG_LEVEL_INFO, "moved a file into its role's subtree", "from", from, "to", to, NULL);
    return 0;
}

/* Makes LINK (in the data dir) a symbolic link to TARGET, relative to it,
 * replacing whatever was there: names tests, the CLI and operators know
 * (run/kms.sock, audit.pub) kept beside the role's own. */
static int link_to(const char *link, const char *target)
{
    char have[4400];
    ssize_t n = readlink(link, have, sizeof(have) - 1);
    if (n >= 0 && (size_t)n == strlen(target) && memcmp(have, target, (size_t)n) == 0)
        return 0;
    if (unlink(link) < 0 && errno != ENOENT)
        return -errno;
    return symlink(target, link) < 0 ? -errno : 0;
}

/* Creates the data dir (0700) with a subtree per role, moves an earlier
 * version's files into them, and fills in every path. Layout: the top holds
 * what only the supervisor and the operator read (ca.key, platform-ca.key,
 * admin.token) and what all read (ca.pem, platform-ca.pem, the certificates in tls/);
 * api/ and auth/ are the api's, proxy/ the proxy's, kms/, audit/, runner/
 * theirs; run/<role>/ holds a role's sockets, with run/<name>.sock links. */
static int prepare_data_dir(daemon_config *cfg)
{
    int r = mkdir_p(cfg->data_dir, 0700);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot create the data dir", "path", cfg->data_dir, "error", strerror(-r), NULL);
        return r;
    }
    char real[PATH_MAX];
    if (!realpath(cfg->data_dir, real) || strlen(real) >= sizeof(cfg->data_dir))
        return -ENAMETOOLONG;
    strcpy(cfg->data_dir, real);
    static const char *const dirs[] = {"tls", "api", "auth", "proxy", "kms", "audit", "runner", "run",
                                       "run/api", "run/proxy", "run/kms", "run/audit", "run/runner"};
    char path[4400];
    for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, dirs[i]);
        if ((r = mkdir_p(path, 0700)) < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot create a directory of the data dir", "path", path, "error",
                       strerror(-r), NULL);
            return r;
        }
    }
    static const char *const moves[][2] = {
        {"store.db", "api/store.db"},         {"store.db-wal", "api/store.db-wal"},
        {"store.db-shm", "api/store.db-shm"}, {"tls/api.key", "api/api.key"},
        {"tls/proxy.key", "proxy/proxy.key"}, {"tls/proxy-ca.key", "proxy/proxy-ca.key"},
        {"proxy.token", "proxy/proxy.token"}, {"runner.token", "runner/runner.token"},
        {"audit.db", "audit/audit.db"},       {"audit.db-wal", "audit/audit.db-wal"},
        {"audit.db-shm", "audit/audit.db-shm"}, {"audit.key", "audit/audit.key"},
        {"audit.pub", "audit/audit.pub"},
    };
    for (size_t i = 0; i < ELEMENTSOF(moves); i++) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, moves[i][0]);
        if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
            continue; /* audit.pub: already the link */
        if ((r = migrate(cfg->data_dir, moves[i][0], moves[i][1])) < 0)
            return r;
    }
    const char *d = cfg->data_dir;
#define SET(field, fmt) ((size_t)snprintf(cfg->field, sizeof(cfg->field), fmt, d) >= sizeof(cfg->field))
    if (SET(ca_cert, "%s/ca.pem") || SET(ca_key, "%s/ca.key") || SET(api_cert, "%s/tls/api.pem") ||
        SET(api_key, "%s/api/api.key") || SET(proxy_cert, "%s/tls/proxy.pem") || SET(proxy_key, "%s/proxy/proxy.key") ||
        SET(proxy_ca_cert, "%s/tls/proxy-ca.pem") || SET(proxy_ca_key, "%s/proxy/proxy-ca.key") ||
        SET(admin_token, "%s/admin.token") || SET(proxy_token, "%s/proxy/proxy.token") ||
        SET(runner_token, "%s/runner/runner.token") ||
        (!cfg->store_url[0] && SET(store_url, "sqlite:%s/api/store.db")) ||
        SET(run_dir, "%s/run") || SET(audit_socket, "%s/run/audit/audit.sock") ||
        SET(audit_db, "%s/audit/audit.db") || SET(audit_key, "%s/audit/audit.key") ||
        SET(audit_pub, "%s/audit/audit.pub") || SET(runner_socket, "%s/run/runner/runner.sock") ||
        SET(platform_ca_cert, "%s/platform-ca.pem") || SET(platform_ca_key, "%s/platform-ca.key") ||
        SET(runner_dir, "%s/runner") || SET(runner_cert, "%s/runner/platform.pem") ||
        SET(runner_key, "%s/runner/platform.key") || SET(kms_socket, "%s/run/kms/kms.sock") ||
        SET(kms_unseal_socket, "%s/run/kms/kms-unseal.sock") || SET(kms_root_file, "%s/kms/root.json") ||
        SET(kms_dev_key_file, "%s/kms/dev-unseal.key") || SET(kms_keyring_file, "%s/kms/keyring.json"))
        return -ENAMETOOLONG;
#undef SET
    if (chmod(cfg->run_dir, 0700) < 0)
        return -errno;
    static const char *const links[][2] = {
        {"run/kms.sock", "kms/kms.sock"},       {"run/kms-unseal.sock", "kms/kms-unseal.sock"},
        {"run/audit.sock", "audit/audit.sock"}, {"run/runner.sock", "runner/runner.sock"},
        {"audit.pub", "audit/audit.pub"},
    };
    for (size_t i = 0; i < ELEMENTSOF(links); i++) {
        snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, links[i][0]);
        if ((r = link_to(path, links[i][1])) < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot link a well-known name to its role's file", "path", path, "error",
                       strerror(-r), NULL);
            return r;
        }
    }
    return 0;
}

/* The certificate names of the API listener: localhost, loopback, and the host it listens on. */
static int ensure_api_cert(const daemon_config *cfg)
{
    char host[256];
    const char *colon = strrchr(cfg->api_listen, ':');
    size_t n = (size_t)(colon - cfg->api_listen);
    memcpy(host, cfg->api_listen, n);
    host[n] = 0;
    char *h = host;
    if (h[0] == '[') {
        h++;
        h[strlen(h) - 1] = 0;
    }
    char api_name[300];
    snprintf(api_name, sizeof(api_name), "api.%s", cfg->domain);
    const char *names[6] = {"localhost", "127.0.0.1", "::1", api_name};
    size_t n_names = 4;
    if (strcmp(h, "localhost") && strcmp(h, "127.0.0.1") && strcmp(h, "::1") && strcmp(h, "0.0.0.0") && strcmp(h, "::"))
        names[n_names++] = h;
    return pki_ensure_server_cert(cfg->ca_cert, cfg->ca_key, names, n_names, cfg->api_cert, cfg->api_key);
}

/* The proxy's default certificate: the cluster domain, its subdomains when
 * the domain has a dot (a wildcard under a single label is refused by TLS
 * clients), and loopback. Services may get their own (chosen by SNI). */
static int ensure_proxy_cert(const daemon_config *cfg)
{
    char wildcard[300];
    snprintf(wildcard, sizeof(wildcard), "*.%s", cfg->domain);
    const char *names[5] = {cfg->domain, "localhost", "127.0.0.1", "::1"};
    size_t n = strcmp(cfg->domain, "localhost") == 0 ? 1 : 0;
    const char **first = names + n;
    size_t n_names = 4 - n;
    if (strchr(cfg->domain, '.'))
        first[n_names++] = wildcard;
    int r = pki_ensure_server_cert(cfg->ca_cert, cfg->ca_key, first, n_names, cfg->proxy_cert, cfg->proxy_key);
    if (r < 0)
        return r;
    /* the CA the proxy issues its services' certificates with: only names
     * under the domain, never the API's */
    char constraints[700];
    snprintf(constraints, sizeof(constraints), "critical,permitted;DNS:.%s,excluded;DNS:api.%s", cfg->domain,
             cfg->domain);
    return pki_ensure_intermediate(cfg->ca_cert, cfg->ca_key, "Cloister Proxy CA", constraints, cfg->proxy_ca_cert,
                                   cfg->proxy_ca_key);
}

static int first_start(daemon_config *cfg)
{
    int r = prepare_data_dir(cfg);
    if (r < 0)
        return r;
    r = pki_ensure_ca(cfg->ca_cert, cfg->ca_key, "Cloister Cluster CA", "P-256");
    if (r == 0)
        r = ensure_api_cert(cfg);
    if (r == 0)
        r = ensure_proxy_cert(cfg);
    if (r == 0)
        r = pki_ensure_ca(cfg->platform_ca_cert, cfg->platform_ca_key, "Cloister Platform CA", "P-384");
    if (r == 0)
        r = pki_ensure_signing_cert(cfg->platform_ca_cert, cfg->platform_ca_key, "cloister runner",
                                    cfg->runner_cert, cfg->runner_key);
    if (r < 0)
        return r;
    store *s;
    r = store_open(cfg->store_url, &s);
    if (r < 0) {
        char shown[sizeof(cfg->store_url)];
        store_url_redact(cfg->store_url, shown, sizeof(shown));
        log_fields(LOG_LEVEL_ERROR, "cannot open the store", "store", shown, "error", strerror(-r), NULL);
        return r;
    }
    r = bootstrap_admin(s, cfg->admin_token);
    if (r == 0)
        r = bootstrap_proxy(s, cfg->proxy_token);
    if (r == 0)
        r = bootstrap_runner(s, cfg->runner_token);
    store_free(s);
    return r;
}

/* Forks role I. The child publishes its pid, narrows its view of CFG to
 * the paths it uses, drops its privileges (privsep_enter) and runs the
 * role; it never returns. Returns the child's pid, or -1. */
static pid_t spawn_role(const daemon_config *cfg, size_t i, role_table *table)
{
    role_health *health = table->entries;
    pid_t pid = fork();
    if (pid > 0)
        atomic_store(&health[i].pid, pid);
    if (pid != 0)
        return pid;
    /* child: published before the role can connect anywhere, so a peer check
     * never sees it unknown; die with the supervisor; signals stay blocked
     * for the role's sigwait */
    atomic_store(&health[i].pid, getpid());
    if (role_table_enter(table, i) < 0)
        _exit(1);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    prctl(PR_SET_NAME, roles[i].name); /* /proc/PID/comm: the short name */
    proctitle_set("cloisterd: %s", roles[i].name); /* ps: "cloisterd: kms", as relayd's and sshd's */
    log_set_role(roles[i].name);
    log_export_install(); /* the role's logs go to the exporter too once it runs */
    daemon_config *view = malloc(sizeof(*view));
    if (!view)
        _exit(1);
    *view = *cfg;
    privsep_role_view(roles[i].name, view);
    if (as_root) {
        uid_t uids[N_ROLES];
        for (size_t k = 0; k < N_ROLES; k++)
            uids[k] = role_ids[k].uid;
        if (peer_set_role_uids(uids, N_ROLES) < 0)
            _exit(1);
    }
    if (privsep_enter(roles[i].name, as_root ? &role_ids[i] : NULL, view, cfg) < 0)
        _exit(1);
    /* OpenTelemetry export (docs/telemetry.md), from the roles that may
     * reach the network: the kms and audit roles open no IP socket
     * (docs/security.md); their operations are spans of the roles that call
     * them */
    char service[64];
    snprintf(service, sizeof(service), "cloisterd-%s", roles[i].name);
    if (privsep_may_connect_ip(roles[i].name) && telemetry_init(service) < 0)
        _exit(1);
    int status = roles[i].main(view, &health[i], health, N_ROLES);
    telemetry_shutdown();
    _exit(status);
}

static void print_banner(const daemon_config *cfg)
{
    /* the token itself only goes to a terminal, never into a captured log */
    char *token = NULL;
    size_t len = 0;
    bool have = isatty(STDOUT_FILENO) && read_file(cfg->admin_token, 4096, &token, &len) == 0;
    printf("Cloister is ready (development mode).\n"
           "  API:          https://%s  (CA: %s)\n"
           "  admin token:  %s\n"
           "  log in:       cloister --server https://%s --ca %s login --token \"$(cat %s)\"\n",
           cfg->api_listen, cfg->ca_cert, have ? token : cfg->admin_token,
           cfg->api_listen, cfg->ca_cert, cfg->admin_token);
    fflush(stdout);
    if (token) {
        explicit_bzero(token, len);
        free(token);
    }
}

/* Raises the soft limit on open descriptors to the hard one, as the roles
 * inherit it: they wait with epoll and poll, never select(), and the API's
 * and the proxy's connection caps are fitted under the limit (httpd), so a
 * soft limit left at a login default (1024) would cap the proxy at a few
 * hundred connections. The hard limit is the operator's (LimitNOFILE=,
 * ulimit -Hn). */
static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    char from[24], to[24];
    snprintf(from, sizeof(from), "%llu", (unsigned long long)was);
    snprintf(to, sizeof(to), "%llu", (unsigned long long)rl.rlim_max);
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        log_fields(LOG_LEVEL_WARN, "cannot raise the open file limit to its hard limit; connection caps stay low",
                   "nofile", from, "hard", to, "error", strerror(errno), NULL);
    else
        log_fields(LOG_LEVEL_INFO, "raised the open file limit to its hard limit", "from", from, "to", to, NULL);
}

/* Runs the roles until SIGTERM/SIGINT; returns the exit status. */
static int supervise(const daemon_config *cfg, role_table *table)
{
    role_health *health = table->entries;
    role_proc procs[N_ROLES] = {0};
    for (size_t i = 0; i < N_ROLES; i++) {
        procs[i].backoff = BACKOFF_MIN_NS;
        procs[i].started_at = time_mono_ns();
        procs[i].pid = spawn_role(cfg, i, table);
        if (procs[i].pid < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot fork a role", "role", roles[i].name, "error", strerror(errno), NULL);
            return 1;
        }
        log_fields(LOG_LEVEL_INFO, "role started", "role", roles[i].name, NULL);
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    bool stopping = false, announced = false;
    uint64_t stop_deadline = 0;
    for (;;) {
        if (!announced) {
            bool all = true;
            for (size_t i = 0; i < N_ROLES; i++)
                all = all && atomic_load(&health[i].ready);
            if (all) {
                print_banner(cfg);
                log_info("every role is ready");
                announced = true;
            }
        }
        struct timespec ts = {.tv_nsec = 100 * 1000 * 1000};
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        uint64_t now = time_mono_ns();
        if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
            log_fields(LOG_LEVEL_INFO, "stopping every role", "signal", strsignal(sig), NULL);
            stopping = true;
            stop_deadline = now + STOP_TIMEOUT_NS;
            for (size_t i = 0; i < N_ROLES; i++)
                if (procs[i].pid > 0)
                    kill(procs[i].pid, SIGTERM);
        }
        /* reap whatever exited */
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (size_t i = 0; i < N_ROLES; i++) {
                if (procs[i].pid != pid)
                    continue;
                procs[i].pid = 0;
                atomic_store(&health[i].pid, 0);
                atomic_store(&health[i].ready, false);
                char how[64];
                if (WIFEXITED(status))
                    snprintf(how, sizeof(how), "exit status %d", WEXITSTATUS(status));
                else
                    snprintf(how, sizeof(how), "killed by %s", strsignal(WTERMSIG(status)));
                if (stopping) {
                    log_fields(LOG_LEVEL_INFO, "role stopped", "role", roles[i].name, "how", how, NULL);
                    break;
                }
                if (now - procs[i].started_at > STABLE_RUN_NS)
                    procs[i].backoff = BACKOFF_MIN_NS;
                char delay[32];
                snprintf(delay, sizeof(delay), "%.2fs", (double)procs[i].backoff / 1e9);
                log_fields(LOG_LEVEL_WARN, "role died; restarting", "role", roles[i].name, "how", how, "after",
                           delay, NULL);
                procs[i].restart_at = now + procs[i].backoff;
                procs[i].backoff = MIN(procs[i].backoff * 2, BACKOFF_MAX_NS);
            }
        }
        if (stopping) {
            bool any = false;
            for (size_t i = 0; i < N_ROLES; i++)
                any = any || procs[i].pid > 0;
            if (!any)
                return 0;
            if (now > stop_deadline) {
                for (size_t i = 0; i < N_ROLES; i++)
                    if (procs[i].pid > 0) {
                        log_fields(LOG_LEVEL_WARN, "role did not stop in time; killing it", "role", roles[i].name, NULL);
                        kill(procs[i].pid, SIGKILL);
                    }
                stop_deadline = now + STOP_TIMEOUT_NS;
            }
            continue;
        }
        for (size_t i = 0; i < N_ROLES; i++) {
            if (procs[i].pid != 0 || !procs[i].restart_at || now < procs[i].restart_at)
                continue;
            procs[i].restart_at = 0;
            procs[i].started_at = now;
            procs[i].pid = spawn_role(cfg, i, table);
            if (procs[i].pid < 0) {
                procs[i].pid = 0;
                procs[i].restart_at = now + procs[i].backoff;
            } else {
                atomic_fetch_add(&health[i].restarts, 1);
                log_fields(LOG_LEVEL_INFO, "role restarted", "role", roles[i].name, NULL);
            }
        }
    }
}

#define AGENT_FILE_MAX (512u * 1024 * 1024)

/* Copies the cloister-agent executable found beside cloisterd (or named by
 * $CLOISTER_AGENT) into the runner's own part of the data dir and records
 * the copy in CFG->agent_path: started as root, the runner runs as a user of
 * its own that may not be able to enter the folder cloisterd was installed or
 * built in (a checkout under /root). The copy is the same bytes, so the
 * agent's measurement (PCR3) is unchanged. Without an agent nothing is
 * copied (the runner says agent-mode sandboxes cannot be launched). Returns
 * 0 or a negative errno (logged). */
static int install_agent(daemon_config *cfg)
{
    char found[PATH_MAX];
    if (runner_agent_locate(found, sizeof(found)) < 0)
        return 0;
    char path[sizeof(cfg->agent_path)];
    if ((size_t)snprintf(path, sizeof(path), "%s/cloister-agent", cfg->runner_dir) >= sizeof(path))
        return -ENAMETOOLONG;
    _cleanup_free_ char *data = NULL, *old = NULL;
    size_t len, old_len;
    int r = strcmp(found, path) == 0 ? 0 : read_file(found, AGENT_FILE_MAX, &data, &len);
    if (r == 0 && data &&
        !(read_file(path, AGENT_FILE_MAX, &old, &old_len) == 0 && old_len == len && memcmp(old, data, len) == 0))
        r = write_file_atomic(path, data, len, 0755);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot install cloister-agent for the runner", "from", found, "to", path,
                   "error", strerror(-r), NULL);
        return r;
    }
    strcpy(cfg->agent_path, path);
    return 0;
}

/* Copies the job engine's bundle (a directory of regular files: enclave.yaml
 * and the cloister-job executable) into the runner's part of the data dir,
 * as install_agent() does for the agent, and measures the copy: its PCR0 is
 * the engine.pcr0 of every job digest (the api role reports it), and the
 * runner launches that copy. Without a bundle jobs cannot run (logged).
 * Returns 0 or a negative errno (logged). */
static int install_engine(daemon_config *cfg)
{
    char found[PATH_MAX];
    if (runner_engine_locate(found, sizeof(found)) < 0) {
        log_fields(LOG_LEVEL_WARN, "no job engine bundle (cloister-job-bundle next to cloisterd, or "
                   "$CLOISTER_JOB_BUNDLE): jobs cannot run", NULL);
        return 0;
    }
    char dir[sizeof(cfg->engine_bundle)];
    if ((size_t)snprintf(dir, sizeof(dir), "%s/job-engine", cfg->runner_dir) >= sizeof(dir))
        return -ENAMETOOLONG;
    int r = strcmp(found, dir) == 0 ? 0 : mkdir_p(dir, 0755);
    if (r == 0 && strcmp(found, dir) != 0 && chmod(dir, 0755) < 0) /* past the umask: the sandbox's root enters it */
        r = negative_errno();
    DIR *d = r == 0 && strcmp(found, dir) != 0 ? opendir(found) : NULL;
    if (r == 0 && strcmp(found, dir) != 0 && !d)
        r = negative_errno();
    for (struct dirent *e; d && r == 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char from[PATH_MAX + 300], to[sizeof(dir) + 300];
        struct stat st;
        snprintf(from, sizeof(from), "%s/%s", found, e->d_name);
        snprintf(to, sizeof(to), "%s/%s", dir, e->d_name);
        _cleanup_free_ char *data = NULL;
        size_t len;
        if (lstat(from, &st) < 0)
            r = negative_errno();
        else if (!S_ISREG(st.st_mode))
            r = -EINVAL; /* a bundle is flat: what would not be measured the same is refused */
        else if ((r = read_file(from, AGENT_FILE_MAX, &data, &len)) == 0)
            r = write_file_atomic(to, data, len, st.st_mode & 0755);
    }
    if (d)
        closedir(d);
    uint8_t pcr0[48];
    measure_error merr = {{0}};
    if (r == 0 && bundle_measure(dir, pcr0, &merr) < 0)
        r = -EINVAL;
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot install the job engine's bundle for the runner", "from", found, "to", dir,
                   "error", merr.text[0] ? merr.text : strerror(-r), NULL);
        return r;
    }
    strcpy(cfg->engine_bundle, dir);
    hex_encode(pcr0, sizeof(pcr0), cfg->job_engine_pcr0);
    log_fields(LOG_LEVEL_INFO, "job engine installed and measured", "bundle", dir, "pcr0", cfg->job_engine_pcr0, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    proctitle_init(argc, argv); /* the roles' titles; before getopt permutes argv */
    log_set_role("cloisterd");
    if (argc > 1 && strcmp(argv[1], "unseal") == 0)
        return cloisterd_unseal(argc - 1, argv + 1);
    daemon_config cfg;
    int r = parse_args(argc, argv, &cfg);
    if (r != 0)
        return r < 0 ? 0 : r;

    /* roles inherit these blocked and wait for them synchronously */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(0077);

    if (first_start(&cfg) < 0 || install_agent(&cfg) < 0 || install_engine(&cfg) < 0)
        return 1;
    as_root = geteuid() == 0;
    if (as_root) {
        const char *names[N_ROLES];
        for (size_t i = 0; i < N_ROLES; i++)
            names[i] = roles[i].name;
        if (privsep_prepare(&cfg, names, N_ROLES, role_ids) < 0)
            return 1;
    }
    raise_nofile_limit();

    role_table table;
    r = role_table_new(N_ROLES, &table);
    cfg.proxy_metrics = mmap(NULL, sizeof(proxy_metrics), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r < 0 || cfg.proxy_metrics == MAP_FAILED) {
        log_fields(LOG_LEVEL_ERROR, "cannot map the role table", "error", strerror(r < 0 ? -r : errno), NULL);
        return 1;
    }
    role_health *health = table.entries;
    for (size_t i = 0; i < N_ROLES; i++) {
        health[i].name = roles[i].name;
        atomic_store(&health[i].wanted, true);
        atomic_store(&health[i].ready, false);
        atomic_store(&health[i].pid, 0);
    }
    r = supervise(&cfg, &table);
    role_table_free(&table);
    log_fields(LOG_LEVEL_INFO, "stopped", NULL);
    return r;
}
