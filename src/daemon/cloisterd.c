/* cloisterd: the supervising parent. Prepares the data dir (cluster CA,
 * server certificates, bootstrap identity), then forks one process per role
 * from the role table, restarts a role that dies with exponential backoff, and
 * on SIGTERM stops every role and exits 0. */
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
#include "pki/pki.h"
#include "kms/seal.h"
#include "proxy/metrics.h"
#include "store/store.h"

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
            "                 [--proxy-threads N]\n"
            "                 [--log-level debug|info|warn|error]\n"
            "\n"
            "  --dev                 run every role on this machine with an embedded store\n"
            "  --data-dir DIR        state, keys and certificates (default ./cloister-data)\n"
            "  --api-listen A        the REST API, HTTPS (default 127.0.0.1:7443)\n"
            "  --proxy-listen A      the identity-aware proxy, HTTPS (default 127.0.0.1:8443)\n"
            "  --proxy-http-listen A an additional plain-HTTP proxy listener (off by default)\n"
            "  --proxy-threads N     the proxy's worker threads, one event loop each (default 2)\n"
            "  --domain D            services are reached at <service>.D (default localhost)\n"
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
           OPT_SEAL, OPT_P11_MODULE, OPT_P11_SLOT };
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

static int path_in(char *dst, size_t size, const char *dir, const char *name)
{
    return (size_t)snprintf(dst, size, "%s/%s", dir, name) < size ? 0 : -ENAMETOOLONG;
}

/* Creates the data dir (0700) and fills in every path inside it. */
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
    char tls[4200];
    if (path_in(tls, sizeof(tls), cfg->data_dir, "tls") < 0 || mkdir_p(tls, 0700) < 0)
        return -EIO;
    if (path_in(cfg->ca_cert, sizeof(cfg->ca_cert), cfg->data_dir, "ca.pem") < 0 ||
        path_in(cfg->ca_key, sizeof(cfg->ca_key), cfg->data_dir, "ca.key") < 0 ||
        path_in(cfg->api_cert, sizeof(cfg->api_cert), tls, "api.pem") < 0 ||
        path_in(cfg->api_key, sizeof(cfg->api_key), tls, "api.key") < 0 ||
        path_in(cfg->proxy_cert, sizeof(cfg->proxy_cert), tls, "proxy.pem") < 0 ||
        path_in(cfg->proxy_key, sizeof(cfg->proxy_key), tls, "proxy.key") < 0 ||
        path_in(cfg->proxy_ca_cert, sizeof(cfg->proxy_ca_cert), tls, "proxy-ca.pem") < 0 ||
        path_in(cfg->proxy_ca_key, sizeof(cfg->proxy_ca_key), tls, "proxy-ca.key") < 0 ||
        path_in(cfg->admin_token, sizeof(cfg->admin_token), cfg->data_dir, "admin.token") < 0 ||
        path_in(cfg->proxy_token, sizeof(cfg->proxy_token), cfg->data_dir, "proxy.token") < 0 ||
        path_in(cfg->runner_token, sizeof(cfg->runner_token), cfg->data_dir, "runner.token") < 0 ||
        (size_t)snprintf(cfg->store_url, sizeof(cfg->store_url), "sqlite:%s/store.db", cfg->data_dir) >=
            sizeof(cfg->store_url))
        return -ENAMETOOLONG;
    if (path_in(cfg->run_dir, sizeof(cfg->run_dir), cfg->data_dir, "run") < 0 ||
        path_in(cfg->audit_socket, sizeof(cfg->audit_socket), cfg->run_dir, "audit.sock") < 0 ||
        path_in(cfg->audit_db, sizeof(cfg->audit_db), cfg->data_dir, "audit.db") < 0 ||
        path_in(cfg->audit_key, sizeof(cfg->audit_key), cfg->data_dir, "audit.key") < 0 ||
        path_in(cfg->audit_pub, sizeof(cfg->audit_pub), cfg->data_dir, "audit.pub") < 0)
        return -ENAMETOOLONG;
    if (path_in(cfg->runner_socket, sizeof(cfg->runner_socket), cfg->run_dir, "runner.sock") < 0 ||
        path_in(cfg->platform_ca_cert, sizeof(cfg->platform_ca_cert), cfg->data_dir, "platform-ca.pem") < 0 ||
        path_in(cfg->platform_ca_key, sizeof(cfg->platform_ca_key), cfg->data_dir, "platform-ca.key") < 0 ||
        path_in(cfg->runner_dir, sizeof(cfg->runner_dir), cfg->data_dir, "runner") < 0 ||
        mkdir_p(cfg->runner_dir, 0700) < 0 ||
        path_in(cfg->runner_cert, sizeof(cfg->runner_cert), cfg->runner_dir, "platform.pem") < 0 ||
        path_in(cfg->runner_key, sizeof(cfg->runner_key), cfg->runner_dir, "platform.key") < 0)
        return -ENAMETOOLONG;
    if (mkdir_p(cfg->run_dir, 0700) < 0 || chmod(cfg->run_dir, 0700) < 0)
        return -EIO;
    char kms[4200];
    if (path_in(kms, sizeof(kms), cfg->data_dir, "kms") < 0 || mkdir_p(kms, 0700) < 0 ||
        path_in(cfg->kms_socket, sizeof(cfg->kms_socket), cfg->run_dir, "kms.sock") < 0 ||
        path_in(cfg->kms_unseal_socket, sizeof(cfg->kms_unseal_socket), cfg->run_dir, "kms-unseal.sock") < 0 ||
        path_in(cfg->kms_root_file, sizeof(cfg->kms_root_file), kms, "root.json") < 0 ||
        path_in(cfg->kms_dev_key_file, sizeof(cfg->kms_dev_key_file), kms, "dev-unseal.key") < 0 ||
        path_in(cfg->kms_keyring_file, sizeof(cfg->kms_keyring_file), kms, "keyring.json") < 0)
        return -ENAMETOOLONG;
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
        log_fields(LOG_LEVEL_ERROR, "cannot open the store", "store", cfg->store_url, "error", strerror(-r), NULL);
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

static pid_t spawn_role(const daemon_config *cfg, size_t i, role_health *health)
{
    pid_t pid = fork();
    if (pid > 0)
        atomic_store(&health[i].pid, pid);
    if (pid != 0)
        return pid;
    /* child: published before the role can connect anywhere, so a peer check
     * never sees it unknown; die with the supervisor; signals stay blocked
     * for the role's sigwait */
    atomic_store(&health[i].pid, getpid());
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    prctl(PR_SET_NAME, roles[i].name); /* /proc/PID/comm: the short name */
    proctitle_set("cloisterd: %s", roles[i].name); /* ps: "cloisterd: kms", as relayd's and sshd's */
    log_set_role(roles[i].name);
    _exit(roles[i].main(cfg, &health[i], health, N_ROLES));
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
static int supervise(const daemon_config *cfg, role_health *health)
{
    role_proc procs[N_ROLES] = {0};
    for (size_t i = 0; i < N_ROLES; i++) {
        procs[i].backoff = BACKOFF_MIN_NS;
        procs[i].started_at = time_mono_ns();
        procs[i].pid = spawn_role(cfg, i, health);
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
            procs[i].pid = spawn_role(cfg, i, health);
            if (procs[i].pid < 0) {
                procs[i].pid = 0;
                procs[i].restart_at = now + procs[i].backoff;
            } else
                log_fields(LOG_LEVEL_INFO, "role restarted", "role", roles[i].name, NULL);
        }
    }
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

    if (first_start(&cfg) < 0)
        return 1;
    raise_nofile_limit();

    role_health *health = mmap(NULL, sizeof(role_health) * N_ROLES, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cfg.proxy_metrics = mmap(NULL, sizeof(proxy_metrics), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (health == MAP_FAILED || cfg.proxy_metrics == MAP_FAILED) {
        log_fields(LOG_LEVEL_ERROR, "cannot map the role table", "error", strerror(errno), NULL);
        return 1;
    }
    for (size_t i = 0; i < N_ROLES; i++) {
        health[i].name = roles[i].name;
        atomic_store(&health[i].wanted, true);
        atomic_store(&health[i].ready, false);
        atomic_store(&health[i].pid, 0);
    }
    r = supervise(&cfg, health);
    munmap(health, sizeof(role_health) * N_ROLES);
    log_fields(LOG_LEVEL_INFO, "stopped", NULL);
    return r;
}
