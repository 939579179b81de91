/* cloisterd: the supervising parent. Prepares the data dir (cluster CA,
 * server certificates, bootstrap identity), then forks one process per role
 * from the role table, restarts a role that dies with exponential backoff, and
 * on SIGTERM stops every role and exits 0: the audit role last, once the
 * others have delivered their final events to it. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
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

#include "auth/handoff.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/proctitle.h"
#include "basic/timeutil.h"
#include "daemon/bootstrap.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log-export.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "daemon/privsep.h"
#include "daemon/role-table.h"
#include "pki/pki.h"
#include "portal/portal.h"
#include "kms/crypto.h"
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

/* Whether role I is stopped only after every other role has exited: the
 * audit role, which takes the others' last events (a proxy's final access
 * records, an api role's last writes) while they stop. */
static bool stops_last(size_t i)
{
    return strcmp(roles[i].name, "audit") == 0;
}

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
            "usage: cloisterd --config FILE [--check | --init] [OPTION...]\n"
            "       cloisterd --dev [--check] [OPTION...]\n"
            "       cloisterd unseal [--data-dir DIR] [--passphrase-fd N]\n"
            "\n"
            "  --config FILE         the configuration (YAML; docs/deployment.md); options below override it\n"
            "  --check               validate the configuration, list every problem, exit 0 or 1\n"
            "  --init                prepare a new cluster once: CA, role certificates, admin token, sealed KMS root\n"
            "  --passphrase-fd N     --init: read the KMS passphrase or PIN from N (else the seal's file, else\n"
            "                        the terminal)\n"
            "  --dev                 every default: all roles on this machine, the dev seal (auto-unsealed)\n"
            "  --data-dir DIR        state, keys and certificates (default ./cloister-data)\n"
            "  --api-listen A        the REST API, HTTPS (default 127.0.0.1:7443)\n"
            "  --proxy-listen A      the identity-aware proxy, HTTPS (default 127.0.0.1:8443)\n"
            "  --proxy-http-listen A an additional plain-HTTP proxy listener (off by default)\n"
            "  --api-threads N       the API's worker threads (default 2)\n"
            "  --proxy-threads N     the proxy's worker threads, one event loop each (default 2)\n"
            "  --proxy-upstream-idle N        idle keep-alive connections a proxy thread keeps to one\n"
            "                                 upstream (default 64)\n"
            "  --proxy-upstream-connections N connections a proxy thread opens to one upstream at once\n"
            "                                 (default 256; more requests wait)\n"
            "  --domain D            services are reached at <service>.D (default localhost)\n"
            "  --access-retention-days N      the audit role removes the proxy's access-log segments not\n"
            "                                 written for N days (their heads stay in the log); kept by default\n"
            "  --plugin-dir DIR      where plugins load from (docs/plugins.md); none by default\n"
            "  --plugin-trusted L    plugins (comma-separated names) the proxy loads in process; the\n"
            "                        others run out of process, in sandboxes the runner launches\n"
            "  --store URL           the resource store: sqlite:PATH (default DIR/api/store.db) or\n"
            "                        postgresql://USER@HOST/DB (several api replicas share it)\n"
            "  --seal MODE           how the KMS root key is sealed: dev (auto-unseal file, --dev's default),\n"
            "                        passphrase or pkcs11; unseal with `cloisterd unseal --data-dir DIR`\n"
            "  --pkcs11-module PATH  --seal pkcs11: the token's PKCS#11 module\n"
            "  --pkcs11-slot N       --seal pkcs11: the token's slot id\n"
            "  --log-level L         debug, info, warn or error\n");
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

/* Sets *DST to VALUE, the argument of FLAG, a number from 1 to MAX.
 * Returns 0, or 2 (the usage exit status) with the reason on stderr. */
static int number_arg(unsigned *dst, const char *flag, const char *value, long max)
{
    char *end;
    long n = strtol(value, &end, 10);
    if (*end || n < 1 || n > max) {
        fprintf(stderr, "cloisterd: %s takes a number from 1 to %ld\n", flag, max);
        return 2;
    }
    *dst = (unsigned)n;
    return 0;
}

typedef enum daemon_action { ACTION_RUN, ACTION_INIT } daemon_action; /* --check ends in parse_args */

enum { OPT_DATA_DIR = 256, OPT_API, OPT_PROXY, OPT_PROXY_HTTP, OPT_DOMAIN, OPT_THREADS, OPT_PROXY_THREADS, OPT_UPSTREAM_IDLE,
       OPT_UPSTREAM_CONNS, OPT_LOG, OPT_SEAL, OPT_P11_MODULE, OPT_P11_SLOT, OPT_CONFIG, OPT_CHECK, OPT_INIT, OPT_STORE,
       OPT_PASSPHRASE_FD, OPT_PLUGIN_DIR, OPT_PLUGIN_TRUSTED, OPT_ACCESS_RETENTION };

/* --init --passphrase-fd N: where the KMS passphrase or PIN is read from (-1: the terminal) */
static int passphrase_fd = -1;
static const struct option options[] = {
    {"dev", no_argument, NULL, 'd'},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"check", no_argument, NULL, OPT_CHECK},
    {"init", no_argument, NULL, OPT_INIT},
    {"data-dir", required_argument, NULL, OPT_DATA_DIR},
    {"api-listen", required_argument, NULL, OPT_API},
    {"proxy-listen", required_argument, NULL, OPT_PROXY},
    {"proxy-http-listen", required_argument, NULL, OPT_PROXY_HTTP},
    {"domain", required_argument, NULL, OPT_DOMAIN},
    {"api-threads", required_argument, NULL, OPT_THREADS},
    {"proxy-threads", required_argument, NULL, OPT_PROXY_THREADS},
    {"proxy-upstream-idle", required_argument, NULL, OPT_UPSTREAM_IDLE},
    {"proxy-upstream-connections", required_argument, NULL, OPT_UPSTREAM_CONNS},
    {"log-level", required_argument, NULL, OPT_LOG},
    {"seal", required_argument, NULL, OPT_SEAL},
    {"pkcs11-module", required_argument, NULL, OPT_P11_MODULE},
    {"pkcs11-slot", required_argument, NULL, OPT_P11_SLOT},
    {"store", required_argument, NULL, OPT_STORE},
    {"passphrase-fd", required_argument, NULL, OPT_PASSPHRASE_FD},
    {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
    {"plugin-trusted", required_argument, NULL, OPT_PLUGIN_TRUSTED},
    {"access-retention-days", required_argument, NULL, OPT_ACCESS_RETENTION},
    {"help", no_argument, NULL, 'h'},
    {},
};

/* Applies command-line option C (its argument OPTARG) over CFG; the options
 * that choose the mode were taken by the first pass. Returns 0, or the exit
 * status to use. */
static int apply_option(int c, daemon_config *cfg)
{
    switch (c) {
    case 'd':
    case OPT_CONFIG:
    case OPT_CHECK:
    case OPT_INIT:
        return 0;
    case OPT_DATA_DIR:
        return copy_arg(cfg->data_dir, sizeof(cfg->data_dir), "--data-dir", optarg) < 0 ? 2 : 0;
    case OPT_API:
    case OPT_PROXY:
    case OPT_PROXY_HTTP: {
        const char *flag = c == OPT_API ? "--api-listen" : c == OPT_PROXY ? "--proxy-listen" : "--proxy-http-listen";
        char *dst = c == OPT_API ? cfg->api_listen : c == OPT_PROXY ? cfg->proxy_listen : cfg->proxy_http_listen;
        if (!config_valid_listen(optarg)) {
            fprintf(stderr, "cloisterd: %s '%s' is not HOST:PORT (e.g. 127.0.0.1:7443)\n", flag, optarg);
            return 2;
        }
        return copy_arg(dst, 256, flag, optarg) < 0 ? 2 : 0;
    }
    case OPT_DOMAIN:
        return copy_arg(cfg->domain, sizeof(cfg->domain), "--domain", optarg) < 0 ? 2 : 0;
    case OPT_PASSPHRASE_FD: {
        char *end;
        long n = strtol(optarg, &end, 10);
        if (*end || !*optarg || n < 0 || n > INT_MAX) {
            fprintf(stderr, "cloisterd: --passphrase-fd takes a file descriptor number\n");
            return 2;
        }
        passphrase_fd = (int)n;
        return 0;
    }
    case OPT_PLUGIN_DIR:
        if (optarg[0] != '/') {
            fprintf(stderr, "cloisterd: --plugin-dir takes an absolute path\n");
            return 2;
        }
        return copy_arg(cfg->plugin_dir, sizeof(cfg->plugin_dir), "--plugin-dir", optarg) < 0 ? 2 : 0;
    case OPT_PLUGIN_TRUSTED:
        return copy_arg(cfg->plugin_trusted, sizeof(cfg->plugin_trusted), "--plugin-trusted", optarg) < 0 ? 2 : 0;
    case OPT_STORE:
        return copy_arg(cfg->store_url, sizeof(cfg->store_url), "--store", optarg) < 0 ? 2 : 0;
    case OPT_THREADS:
        return number_arg(&cfg->api_threads, "--api-threads", optarg, 64);
    case OPT_PROXY_THREADS:
        return number_arg(&cfg->proxy_threads, "--proxy-threads", optarg, 64);
    case OPT_UPSTREAM_IDLE:
        return number_arg(&cfg->proxy_upstream_idle, "--proxy-upstream-idle", optarg, 65536);
    case OPT_UPSTREAM_CONNS:
        return number_arg(&cfg->proxy_upstream_conns, "--proxy-upstream-connections", optarg, 65536);
    case OPT_ACCESS_RETENTION:
        return number_arg(&cfg->access_retention_days, "--access-retention-days", optarg, 36500);
    case OPT_LOG: {
        log_level level;
        if (log_level_from_string(optarg, &level) < 0) {
            fprintf(stderr, "cloisterd: --log-level takes debug, info, warn or error\n");
            return 2;
        }
        log_set_max_level(level);
        return 0;
    }
    case OPT_SEAL:
        if (!kms_seal_mode_valid(optarg)) {
            fprintf(stderr, "cloisterd: --seal takes dev, passphrase or pkcs11\n");
            return 2;
        }
        strcpy(cfg->seal_mode, optarg);
        return 0;
    case OPT_P11_MODULE:
        return copy_arg(cfg->pkcs11_module, sizeof(cfg->pkcs11_module), "--pkcs11-module", optarg) < 0 ? 2 : 0;
    case OPT_P11_SLOT: {
        char *end;
        errno = 0;
        unsigned long slot = strtoul(optarg, &end, 0);
        if (errno || *end || !*optarg || optarg[0] == '-') {
            fprintf(stderr, "cloisterd: --pkcs11-slot takes a slot id (a number)\n");
            return 2;
        }
        cfg->pkcs11_slot = slot;
        return 0;
    }
    case 'h':
        usage(stdout);
        return -1;
    default:
        usage(stderr);
        return 2;
    }
}

/* Prints PROBLEMS on stderr, one a line. */
static void print_problems(const config_problems *problems)
{
    for (size_t i = 0; i < problems->n && i < CONFIG_PROBLEMS_MAX; i++)
        fprintf(stderr, "%s\n", problems->items[i]);
    if (problems->n > CONFIG_PROBLEMS_MAX)
        fprintf(stderr, "... and %zu more\n", problems->n - CONFIG_PROBLEMS_MAX);
}

/* Fills CFG from the --dev preset, the file of --config over it and the
 * command line over both (two passes: the first finds the mode). Returns 0
 * with the action to take, -1 when done (help, a --check that passed), or
 * the exit status to use. */
static int parse_args(int argc, char **argv, daemon_config *cfg, daemon_action *ret_action)
{
    const char *config = NULL;
    bool dev = false, check = false, init = false;
    int c;
    opterr = 0; /* the second pass reports */
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (c == 'd')
            dev = true;
        else if (c == OPT_CONFIG)
            config = optarg;
        else if (c == OPT_CHECK)
            check = true;
        else if (c == OPT_INIT)
            init = true;
    }
    daemon_config_defaults(cfg);
    _cleanup_(config_problems_free) config_problems problems = {0};
    if (config)
        daemon_config_load(config, cfg, &problems);
    optind = 0;
    opterr = 1;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        int r = apply_option(c, cfg);
        if (r != 0)
            return r;
    }
    if (optind < argc) {
        fprintf(stderr, "cloisterd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!dev && !config) {
        fprintf(stderr, "cloisterd: start with --config FILE (see docs/deployment.md) or with --dev (development: "
                        "every default)\n");
        usage(stderr);
        return 2;
    }
    if (dev && config) {
        fprintf(stderr, "cloisterd: --dev and --config exclude each other (--dev is the preset a file starts from)\n");
        return 2;
    }
    if (init && (check || !config)) {
        fprintf(stderr, "cloisterd: --init takes --config FILE (and no --check)\n");
        return 2;
    }
    if (passphrase_fd >= 0 && !init) {
        fprintf(stderr, "cloisterd: --passphrase-fd goes with --init (a running KMS: cloisterd unseal)\n");
        return 2;
    }
    if (strcmp(cfg->seal_mode, "pkcs11") == 0 && !cfg->pkcs11_module[0] && !problems.n) {
        fprintf(stderr, "cloisterd: --seal pkcs11 needs --pkcs11-module PATH (and --pkcs11-slot N)\n");
        return 2;
    }
    print_problems(&problems);
    if (check) {
        if (problems.n) {
            fprintf(stderr, "cloisterd: %zu problem%s in %s\n", problems.n, problems.n == 1 ? "" : "s",
                    config ?: "the options");
            return 1;
        }
        printf("%s: the configuration is valid\n", config ?: "--dev");
        return -1;
    }
    if (problems.n)
        return 1;
    *ret_action = init ? ACTION_INIT : ACTION_RUN;
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

/* The cluster CA lies in pki.dir (the data dir when not configured), each
 * role's certificate in its roles/ (0700): a configured pki.dir is created
 * 0711, as the roles read ca.pem there. */
static int prepare_pki_dir(daemon_config *cfg)
{
    if (!cfg->pki_dir[0] || strcmp(cfg->pki_dir, cfg->data_dir) == 0)
        strcpy(cfg->pki_dir, cfg->data_dir);
    else {
        int r = mkdir_p(cfg->pki_dir, 0711);
        if (r < 0 || chmod(cfg->pki_dir, 0711) < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot create pki.dir", "path", cfg->pki_dir, "error",
                       strerror(r < 0 ? -r : errno), NULL);
            return r < 0 ? r : -errno;
        }
        if ((size_t)snprintf(cfg->ca_cert, sizeof(cfg->ca_cert), "%s/ca.pem", cfg->pki_dir) >= sizeof(cfg->ca_cert) ||
            (size_t)snprintf(cfg->ca_key, sizeof(cfg->ca_key), "%s/ca.key", cfg->pki_dir) >= sizeof(cfg->ca_key))
            return -ENAMETOOLONG;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/roles", cfg->pki_dir);
    int r = mkdir_p(path, 0700);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot create the roles' certificate dir", "path", path, "error", strerror(-r),
                   NULL);
    return r;
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
    /* a role this machine does not run is reached at its peer's URL */
    char *const addresses[][2] = {{cfg->kms_socket, cfg->peer_kms}, {cfg->audit_socket, cfg->peer_audit},
                                  {cfg->runner_socket, cfg->peer_runner}};
    for (size_t i = 0; i < ELEMENTSOF(addresses); i++)
        if (addresses[i][1][0])
            snprintf(addresses[i][0], sizeof(cfg->kms_socket), "%s", addresses[i][1]);
    if (chmod(cfg->run_dir, 0700) < 0)
        return -errno;
    if ((r = prepare_pki_dir(cfg)) < 0)
        return r;
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

static int ensure_proxy_ca(const daemon_config *cfg);

/* The proxy's default certificate (unless ISSUE_DEFAULT is false: an own
 * pair was configured): the cluster domain, its subdomains when
 * the domain has a dot (a wildcard under a single label is refused by TLS
 * clients), and loopback. Services may get their own (chosen by SNI). */
static int ensure_proxy_cert(const daemon_config *cfg, bool issue_default)
{
    if (!issue_default)
        return ensure_proxy_ca(cfg);
    char wildcard[300];
    snprintf(wildcard, sizeof(wildcard), "*.%s", cfg->domain);
    const char *names[5] = {cfg->domain, "localhost", "127.0.0.1", "::1"};
    size_t n = strcmp(cfg->domain, "localhost") == 0 ? 1 : 0;
    const char **first = names + n;
    size_t n_names = 4 - n;
    if (strchr(cfg->domain, '.'))
        first[n_names++] = wildcard;
    int r = pki_ensure_server_cert(cfg->ca_cert, cfg->ca_key, first, n_names, cfg->proxy_cert, cfg->proxy_key);
    return r < 0 ? r : ensure_proxy_ca(cfg);
}

/* The CA the proxy issues its services' certificates with: only names
 * under the domain, never the API's. */
static int ensure_proxy_ca(const daemon_config *cfg)
{
    char constraints[700];
    snprintf(constraints, sizeof(constraints), "critical,permitted;DNS:.%s,excluded;DNS:api.%s", cfg->domain,
             cfg->domain);
    return pki_ensure_intermediate(cfg->ca_cert, cfg->ca_key, "Cloister Proxy CA", constraints, cfg->proxy_ca_cert,
                                   cfg->proxy_ca_key);
}

#define OWN_TLS_FILE_MAX (1024u * 1024)

/* Copies a listener's own certificate and key (tls: {cert, key} in the
 * configuration) to where its role reads them, DST_CERT (0644) and DST_KEY
 * (0600) in the data dir: a role is confined to its part of it. Done on every
 * start, so a renewed pair is taken up by a restart. Returns 0 or a negative
 * errno (logged). */
static int install_own_pair(const char *cert, const char *key, const char *dst_cert, const char *dst_key)
{
    char *data = NULL;
    size_t len = 0;
    int r = read_file(cert, OWN_TLS_FILE_MAX, &data, &len);
    if (r == 0)
        r = write_file_atomic(dst_cert, data, len, 0644);
    free(data);
    data = NULL;
    const char *failed = r < 0 ? cert : key;
    if (r == 0 && (r = read_file(key, OWN_TLS_FILE_MAX, &data, &len)) == 0) {
        r = write_file_atomic(dst_key, data, len, 0600);
        OPENSSL_cleanse(data, len);
        free(data);
    }
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot copy a certificate or its key into place", "file", failed, "error",
                   strerror(-r), NULL);
    return r;
}

/* Writes CFG's api_trust, tls/api-trust.pem: the cluster CA and the API's
 * own certificate chain, which the proxy and the runner verify the API
 * with (a chain that need not end at a root: curl accepts a partial one).
 * Returns 0 or a negative errno (logged). */
static int write_api_trust(daemon_config *cfg)
{
    _cleanup_free_ char *ca = NULL, *own = NULL, *both = NULL;
    size_t ca_len, own_len;
    int r = read_file(cfg->ca_cert, OWN_TLS_FILE_MAX, &ca, &ca_len);
    if (r == 0)
        r = read_file(cfg->api_cert, OWN_TLS_FILE_MAX, &own, &own_len);
    if (r == 0 && asprintf(&both, "%s\n%s", ca, own) < 0)
        r = -ENOMEM;
    snprintf(cfg->api_trust, sizeof(cfg->api_trust), "%s/tls/api-trust.pem", cfg->data_dir);
    if (r == 0)
        r = write_file_atomic(cfg->api_trust, both, strlen(both), 0644);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot write the API's trust bundle", "path", cfg->api_trust, "error",
                   strerror(-r), NULL);
    return r;
}

/* The API's and the proxy's certificates: the configured own pairs, or
 * issued by the cluster CA; the proxy's intermediate CA in any case. */
static int ensure_listener_certs(daemon_config *cfg)
{
    strcpy(cfg->api_trust, cfg->ca_cert);
    int r = cfg->api_tls_cert[0] ? install_own_pair(cfg->api_tls_cert, cfg->api_tls_key, cfg->api_cert, cfg->api_key)
                                 : ensure_api_cert(cfg);
    if (r == 0 && cfg->api_tls_cert[0])
        r = write_api_trust(cfg);
    if (r == 0 && cfg->proxy_tls_cert[0])
        r = install_own_pair(cfg->proxy_tls_cert, cfg->proxy_tls_key, cfg->proxy_cert, cfg->proxy_key);
    return r < 0 ? r : ensure_proxy_cert(cfg, !cfg->proxy_tls_cert[0]);
}

/* Whether CFG has roles on other machines, or serves them: then every role
 * here needs its role certificate. */
static bool roles_apart(const daemon_config *cfg)
{
    return cfg->kms_listen[0] || cfg->audit_listen[0] || cfg->runner_listen[0] || cfg->api_role_listen[0] ||
           cfg->peer_api[0] || cfg->peer_api_roles[0] ||
           cfg->peer_kms[0] || cfg->peer_audit[0] || cfg->peer_runner[0];
}

/* Copies the role certificate and key of each role this machine runs from
 * pki.dir/roles/ into the role's own room (<role>/role.pem, role.key 0600),
 * where the role, confined to it, reads them: on every start, so a renewed
 * pair is taken up by a restart. Missing ones are an error only when roles
 * are apart (roles_apart()). Returns 0 or a negative errno (logged). */
static int install_role_certs(const daemon_config *cfg)
{
    for (size_t i = 0; i < N_ROLES; i++) {
        if (!cfg->role_wanted[i])
            continue;
        char cert[4300], key[4300], to_cert[4300], to_key[4300];
        snprintf(cert, sizeof(cert), "%s/roles/%s.pem", cfg->pki_dir, roles[i].name);
        snprintf(key, sizeof(key), "%s/roles/%s.key", cfg->pki_dir, roles[i].name);
        snprintf(to_cert, sizeof(to_cert), "%s/%s/role.pem", cfg->data_dir, roles[i].name);
        snprintf(to_key, sizeof(to_key), "%s/%s/role.key", cfg->data_dir, roles[i].name);
        if (access(cert, F_OK) < 0 && !roles_apart(cfg))
            continue;
        int r = install_own_pair(cert, key, to_cert, to_key);
        if (r < 0) {
            log_fields(LOG_LEVEL_ERROR, "a role talking to other machines needs its role certificate (made by "
                       "cloisterd --init in pki.dir/roles/)", "role", roles[i].name, "cert", cert, NULL);
            return r;
        }
    }
    return 0;
}

/* Prepares the data dir and the certificates, and with WITH_STORE (this
 * machine runs the api role, or --init) the store's bootstrap identities. */
static int first_start(daemon_config *cfg, bool with_store)
{
    int r = prepare_data_dir(cfg);
    if (r < 0)
        return r;
    r = pki_ensure_ca(cfg->ca_cert, cfg->ca_key, "Cloister Cluster CA", "P-256");
    if (r == 0)
        r = ensure_listener_certs(cfg);
    if (r == 0)
        r = pki_ensure_ca(cfg->platform_ca_cert, cfg->platform_ca_key, "Cloister Platform CA", "P-384");
    if (r == 0)
        r = pki_ensure_signing_cert(cfg->platform_ca_cert, cfg->platform_ca_key, "cloister runner",
                                    cfg->runner_cert, cfg->runner_key);
    if (r < 0 || !with_store)
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

/* Reads the seal's passphrase or PIN from CFG's seal_secret_file into
 * VIEW (the kms role unseals with it, wipes and frees it); the kms
 * child does so before it drops its privileges, on every (re)start. Returns
 * 0 or a negative errno (logged). */
static int read_seal_secret(const daemon_config *cfg, daemon_config *view)
{
    char *text = NULL;
    size_t len = 0;
    int r = read_file(cfg->seal_secret_file, KMS_SECRET_MAX + 2, &text, &len);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot read the KMS seal's secret file", "file", cfg->seal_secret_file, "error",
                   strerror(-r), NULL);
        return r;
    }
    size_t n = len;
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    view->seal_secret = malloc(n + 1);
    if (view->seal_secret) {
        memcpy(view->seal_secret, text, n);
        view->seal_secret[n] = 0;
        view->seal_secret_len = n;
    }
    OPENSSL_cleanse(text, len);
    free(text);
    return view->seal_secret ? 0 : -ENOMEM;
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
    if (strcmp(roles[i].name, "kms") == 0 && cfg->seal_secret_file[0] && read_seal_secret(cfg, view) < 0)
        _exit(1);
    /* its role certificate, in its own room (install_role_certs), for roles on other machines */
    snprintf(view->role_cert, sizeof(view->role_cert), "%s/%s/role.pem", cfg->data_dir, roles[i].name);
    snprintf(view->role_key, sizeof(view->role_key), "%s/%s/role.key", cfg->data_dir, roles[i].name);
    if (access(view->role_cert, F_OK) < 0)
        view->role_cert[0] = view->role_key[0] = 0;
    else if (peer_tls_set_identity(view->role_cert, view->role_key, view->ca_cert) < 0)
        _exit(1);
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
    if (!cfg->role_wanted[0]) { /* the api runs elsewhere: nothing here to log in to */
        char here[100] = "";
        for (size_t i = 0; i < N_ROLES; i++)
            if (cfg->role_wanted[i])
                snprintf(here + strlen(here), sizeof(here) - strlen(here), "%s%s", here[0] ? ", " : "",
                         roles[i].name);
        printf("Cloister is ready (%s): roles %s.\n", cfg->config_file, here);
        fflush(stdout);
        return;
    }
    /* the token itself only goes to a terminal, never into a captured log */
    char *token = NULL;
    size_t len = 0;
    bool have = isatty(STDOUT_FILENO) && read_file(cfg->admin_token, 4096, &token, &len) == 0;
    printf("Cloister is ready (%s).\n"
           "  API:          https://%s  (CA: %s)\n"
           "  admin token:  %s\n"
           "  log in:       cloister --server https://%s --ca %s login --token \"$(cat %s)\"\n",
           cfg->dev ? "development mode" : cfg->config_file, cfg->api_listen, cfg->ca_cert,
           have ? token : cfg->admin_token,
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
        if (!atomic_load(&health[i].wanted))
            continue;
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
    bool stopping = false, announced = false, last_signalled = false;
    uint64_t stop_deadline = 0;
    for (;;) {
        if (!announced) {
            bool all = true;
            for (size_t i = 0; i < N_ROLES; i++)
                all = all && (atomic_load(&health[i].ready) || !atomic_load(&health[i].wanted));
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
                if (procs[i].pid > 0 && !stops_last(i))
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
            bool any = false, others = false;
            for (size_t i = 0; i < N_ROLES; i++) {
                any = any || procs[i].pid > 0;
                others = others || (procs[i].pid > 0 && !stops_last(i));
            }
            if (!any)
                return 0;
            if (!others && !last_signalled) { /* the others are gone: their last events were delivered */
                last_signalled = true;
                stop_deadline = now + STOP_TIMEOUT_NS;
                for (size_t i = 0; i < N_ROLES; i++)
                    if (procs[i].pid > 0)
                        kill(procs[i].pid, SIGTERM);
            }
            if (now > stop_deadline) {
                for (size_t i = 0; i < N_ROLES; i++)
                    if (procs[i].pid > 0 && (last_signalled || !stops_last(i))) {
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

#define INIT_MARKER "initialized" /* in the data dir: written last by --init */

static bool cluster_initialised(const daemon_config *cfg)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" INIT_MARKER, cfg->data_dir);
    return access(path, F_OK) == 0;
}

/* The passphrase or PIN --init seals the KMS root key with, into SECRET's
 * seal_secret (the caller wipes and frees it): the configured file, else
 * --passphrase-fd N, else asked for on the terminal; none in dev mode, and
 * none when no terminal is there (the first `cloisterd unseal` then sets
 * it). A passphrase shorter than KMS_PASSPHRASE_MIN is refused. Returns 0
 * or the exit status (1, said on stderr). */
static int init_secret(const daemon_config *cfg, daemon_config *secret)
{
    int r = 0;
    if (strcmp(cfg->seal_mode, "dev") == 0)
        return 0;
    if (cfg->seal_secret_file[0])
        r = read_seal_secret(cfg, secret);
    else if ((r = unseal_read_secret(passphrase_fd, &secret->seal_secret, &secret->seal_secret_len)) == -ENOTTY)
        return 0;
    if (r < 0) {
        fprintf(stderr, "cloisterd: cannot read the KMS %s (%s)\n",
                strcmp(cfg->seal_mode, "pkcs11") == 0 ? "token's PIN" : "passphrase", strerror(-r));
        return 1;
    }
    if (strcmp(cfg->seal_mode, "passphrase") == 0 && secret->seal_secret_len < KMS_PASSPHRASE_MIN) {
        fprintf(stderr, "cloisterd: the KMS passphrase needs at least %d characters\n", KMS_PASSPHRASE_MIN);
        return 1;
    }
    return 0;
}

/* Creates the KMS root key sealed with the configured seal and SECRET
 * (the passphrase or PIN; none in dev mode): *RET_CREATED false when there
 * is no secret (the first `cloisterd unseal` creates it). Returns 0 or a
 * negative errno (logged). */
static int init_kms_root(const daemon_config *cfg, const daemon_config *secret, bool *ret_created)
{
    *ret_created = false;
    if (strcmp(cfg->seal_mode, "dev") != 0 && !secret->seal_secret)
        return 0;
    uint8_t *root = secmem_alloc(KMS_KEY_BYTES);
    const kms_seal_config seal = {.mode = cfg->seal_mode, .root_file = cfg->kms_root_file,
                                  .dev_key_file = cfg->kms_dev_key_file, .pkcs11_module = cfg->pkcs11_module,
                                  .pkcs11_slot = cfg->pkcs11_slot};
    kms_err err = {0};
    int r = root ? kms_root_unseal(&seal, secret->seal_secret, secret->seal_secret_len, root, ret_created, &err)
                 : -ENOMEM;
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot create the sealed KMS root key", "mode", cfg->seal_mode, "reason",
                   err.message[0] ? err.message : strerror(-r), NULL);
    if (root)
        secmem_free(root);
    return r;
}

/* --init: the api role's login handoff key, DIR/auth/handoff.key (32
 * random bytes, 0600), made here so that every api replica given a copy of
 * what --init made shares it: it seals the token signing keys in the store
 * (src/api/signing-keys.h). Returns 0 or a negative errno (logged). */
static int init_handoff_key(const daemon_config *cfg)
{
    char dir[4200], path[4300];
    snprintf(dir, sizeof(dir), "%s/auth", cfg->data_dir);
    snprintf(path, sizeof(path), "%s/handoff.key", dir);
    uint8_t key[HANDOFF_KEY_LEN];
    int r = mkdir_p(dir, 0700);
    if (r == 0)
        r = random_bytes(key, sizeof(key));
    if (r == 0)
        r = write_file_atomic(path, key, sizeof(key), 0600);
    OPENSSL_cleanse(key, sizeof(key));
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot write the api replicas' handoff key", "path", path, "error",
                   strerror(-r), NULL);
    return r;
}

/* cloisterd --init --config FILE: prepares a new cluster once: the data
 * dir, the cluster CA and the listeners' certificates, one certificate per
 * role in pki.dir/roles/, the bootstrap identities (admin token), the
 * sealed KMS root key, then the marker a start looks for. Refuses a data
 * dir initialised before (or holding a cluster CA). Returns the exit status. */
static int cluster_init(daemon_config *cfg)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" INIT_MARKER, cfg->data_dir);
    char ca[4200];
    snprintf(ca, sizeof(ca), "%s/ca.key", cfg->pki_dir[0] ? cfg->pki_dir : cfg->data_dir);
    if (access(path, F_OK) == 0 || access(ca, F_OK) == 0) {
        fprintf(stderr, "cloisterd: %s is initialised already (%s exists); --init prepares a new cluster only once\n",
                cfg->data_dir, access(path, F_OK) == 0 ? path : ca);
        return 1;
    }
    daemon_config secret = {0}; /* its seal_secret only */
    int r = init_secret(cfg, &secret);
    if (r != 0)
        return r;
    r = first_start(cfg, true);
    for (size_t i = 0; r == 0 && i < N_ROLES; i++) {
        char cert[4300], key[4300];
        snprintf(cert, sizeof(cert), "%s/roles/%s.pem", cfg->pki_dir, roles[i].name);
        snprintf(key, sizeof(key), "%s/roles/%s.key", cfg->pki_dir, roles[i].name);
        r = pki_ensure_role_cert(cfg->ca_cert, cfg->ca_key, roles[i].name, cert, key);
    }
    if (r == 0)
        r = init_handoff_key(cfg);
    bool created = false;
    if (r == 0)
        r = init_kms_root(cfg, &secret, &created);
    if (secret.seal_secret) {
        OPENSSL_cleanse(secret.seal_secret, secret.seal_secret_len);
        free(secret.seal_secret);
    }
    if (r < 0) {
        fprintf(stderr, "cloisterd: --init failed (logged above); nothing in %s is in use yet: remove it and run "
                        "--init again\n", cfg->data_dir);
        return 1;
    }
    char marker[600];
    char now[64];
    time_t t = time(NULL);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    int n = snprintf(marker, sizeof(marker), "{\"initializedAt\":\"%s\",\"seal\":\"%s\"}\n", now, cfg->seal_mode);
    snprintf(path, sizeof(path), "%s/" INIT_MARKER, cfg->data_dir);
    r = write_file_atomic(path, marker, (size_t)n, 0644);
    if (r < 0) {
        fprintf(stderr, "cloisterd: cannot write %s: %s\n", path, strerror(-r));
        return 1;
    }
    printf("Initialised the cluster in %s.\n"
           "  cluster CA:         %s\n"
           "  role certificates:  %s/roles/<role>.pem (DNS name <role>" PKI_ROLE_NAME_SUFFIX ")\n"
           "  admin token:        %s\n"
           "  api replicas' key:  %s/auth/handoff.key (every api replica needs this same file)\n"
           "  KMS root key:       %s (seal %s)\n"
           "Start it with: cloisterd --config %s\n",
           cfg->data_dir, cfg->ca_cert, cfg->pki_dir, cfg->admin_token, cfg->data_dir,
           created ? "created and sealed" : "created at the first `cloisterd unseal`", cfg->seal_mode,
           cfg->config_file);
    return 0;
}

/* telemetry.otlp: handed to the roles as the standard variables they read
 * (src/telemetry), unless the environment sets them already. */
static void export_telemetry(const daemon_config *cfg)
{
    if (cfg->otlp_endpoint[0])
        setenv("OTEL_EXPORTER_OTLP_ENDPOINT", cfg->otlp_endpoint, 0);
    if (cfg->otlp_headers[0])
        setenv("OTEL_EXPORTER_OTLP_HEADERS", cfg->otlp_headers, 0);
}

#define AGENT_FILE_MAX (512u * 1024 * 1024)

/* Copies the executable NAME that LOCATE finds beside cloisterd (or that
 * its environment variable names) into the runner's own part of the data dir
 * and records the copy in OUT (SIZE bytes): started as root, the runner runs
 * as a user of its own that may not be able to enter the folder cloisterd was
 * installed or built in (a checkout under /root). The copy is the same bytes,
 * so a measurement of it (the agent's PCR3) is unchanged. Without one nothing
 * is copied and OUT stays "" (the runner says what cannot run). Returns 0 or a
 * negative errno (logged). */
static int install_runner_executable(const daemon_config *cfg, int (*locate)(char *, size_t), const char *name,
                                     char *out, size_t size)
{
    char found[PATH_MAX];
    if (locate(found, sizeof(found)) < 0)
        return 0;
    char path[4200];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", cfg->runner_dir, name) >= MIN(sizeof(path), size))
        return -ENAMETOOLONG;
    _cleanup_free_ char *data = NULL, *old = NULL;
    size_t len, old_len;
    int r = strcmp(found, path) == 0 ? 0 : read_file(found, AGENT_FILE_MAX, &data, &len);
    if (r == 0 && data &&
        !(read_file(path, AGENT_FILE_MAX, &old, &old_len) == 0 && old_len == len && memcmp(old, data, len) == 0))
        r = write_file_atomic(path, data, len, 0755);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot install an executable for the runner", "name", name, "from", found, "to",
                   path, "error", strerror(-r), NULL);
        return r;
    }
    strcpy(out, path);
    return 0;
}

/* The runner's copies of cloister-agent (agent-mode sandboxes) and
 * cloister-plugin-sandbox (untrusted plugins). Returns 0 or a negative errno. */
static int install_agent(daemon_config *cfg)
{
    int r = install_runner_executable(cfg, runner_agent_locate, "cloister-agent", cfg->agent_path,
                                      sizeof(cfg->agent_path));
    return r < 0 ? r
                 : install_runner_executable(cfg, runner_plugin_sandbox_locate, "cloister-plugin-sandbox",
                                             cfg->plugin_sandbox_path, sizeof(cfg->plugin_sandbox_path));
}

/* Copies the regular files of directory FROM (a flat one: anything else in
 * it is refused with -EINVAL, so what is measured or served is exactly what
 * was built) into TO, made 0755 (past the umask) so a role's user and a
 * sandbox's root can enter it; files keep their mode bits within 0755.
 * FROM == TO copies nothing. Returns 0 or a negative errno. */
static int copy_flat_dir(const char *from_dir, const char *to_dir)
{
    if (strcmp(from_dir, to_dir) == 0)
        return 0;
    int r = mkdir_p(to_dir, 0755);
    if (r == 0 && chmod(to_dir, 0755) < 0)
        r = negative_errno();
    DIR *d = r == 0 ? opendir(from_dir) : NULL;
    if (r == 0 && !d)
        r = negative_errno();
    for (struct dirent *e; d && r == 0 && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char from[PATH_MAX + 300], to[PATH_MAX + 300];
        struct stat st;
        if ((size_t)snprintf(from, sizeof(from), "%s/%s", from_dir, e->d_name) >= sizeof(from) ||
            (size_t)snprintf(to, sizeof(to), "%s/%s", to_dir, e->d_name) >= sizeof(to)) {
            r = -ENAMETOOLONG;
            break;
        }
        _cleanup_free_ char *data = NULL;
        size_t len;
        if (lstat(from, &st) < 0)
            r = negative_errno();
        else if (!S_ISREG(st.st_mode))
            r = -EINVAL;
        else if ((r = read_file(from, AGENT_FILE_MAX, &data, &len)) == 0)
            r = write_file_atomic(to, data, len, st.st_mode & 0755);
    }
    if (d)
        closedir(d);
    return r;
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
    int r = copy_flat_dir(found, dir);
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

/* Copies the built portal app (portal_dir_locate(): $CLOISTER_PORTAL_DIR, or
 * beside cloisterd) into the proxy's part of the data dir and records the
 * copy in CFG->portal_dir, as install_agent() does for the runner: the proxy
 * runs as a user of its own that may not enter the folder cloisterd was
 * built in. Without a built app nothing is copied (portal Services answer
 * 503, logged by the proxy). Returns 0 or a negative errno (logged). */
static int install_portal(daemon_config *cfg)
{
    char found[PATH_MAX], dir[sizeof(cfg->portal_dir)];
    if (portal_dir_locate(found, sizeof(found)) < 0)
        return 0;
    if ((size_t)snprintf(dir, sizeof(dir), "%s/proxy/portal", cfg->data_dir) >= sizeof(dir))
        return -ENAMETOOLONG;
    int r = copy_flat_dir(found, dir);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot install the portal app for the proxy", "from", found, "to", dir, "error",
                   strerror(-r), NULL);
        return r;
    }
    strcpy(cfg->portal_dir, dir);
    return 0;
}

int main(int argc, char **argv)
{
    proctitle_init(argc, argv); /* the roles' titles; before getopt permutes argv */
    log_set_role("cloisterd");
    if (argc > 1 && strcmp(argv[1], "unseal") == 0)
        return cloisterd_unseal(argc - 1, argv + 1);
    static daemon_config cfg; /* large: not on the stack */
    daemon_action action = ACTION_RUN;
    int r = parse_args(argc, argv, &cfg, &action);
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

    if (action == ACTION_INIT)
        return cluster_init(&cfg);
    if (!cfg.dev && !cluster_initialised(&cfg)) {
        fprintf(stderr, "cloisterd: %s is not initialised; prepare it once with cloisterd --init --config %s\n",
                cfg.data_dir, cfg.config_file);
        return 1;
    }
    export_telemetry(&cfg);
    if (first_start(&cfg, cfg.role_wanted[0]) < 0 || install_role_certs(&cfg) < 0 || install_agent(&cfg) < 0 || install_engine(&cfg) < 0 ||
        install_portal(&cfg) < 0)
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
        atomic_store(&health[i].wanted, cfg.role_wanted[i]);
        atomic_store(&health[i].ready, false);
        atomic_store(&health[i].pid, 0);
    }
    r = supervise(&cfg, &table);
    role_table_free(&table);
    log_fields(LOG_LEVEL_INFO, "stopped", NULL);
    return r;
}
