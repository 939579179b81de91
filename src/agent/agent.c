/* cloister-agent: the first process of an agent-mode sandbox (pid 1 of its
 * pid namespace), started by the runner. It
 *   1. makes an ephemeral P-384 key pair, in memory only;
 *   2. obtains the sandbox's evidence binding the public key (and a
 *      challenge) from the runner over the channel;
 *   3. obtains each --secret KEY:FILE through key release and writes the
 *      data key to /run/secrets/FILE (0400), and each --secret-value
 *      SECRET:KEY:FILE (a Secret's value, which the KMS sealed to our key)
 *      the same way, wiping every copy after;
 *   4. starts the workload (the command after "--") as its child, forwards
 *      SIGTERM/SIGINT/SIGHUP to it and exits with its status;
 *   5. serves attested TLS on the listening socket the runner handed over
 *      (--atls-fd), relaying each connection to 127.0.0.1:--port.
 * A failed key release stops it before the workload starts, with a log line
 * naming the key and the API's reason. See docs/enclaves.md. */
#include <cjose/cjose.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "agent/channel.h"
#include "agent/egress.h"
#include "agent/job.h"
#include "agent/server.h"
#include "attest/atls.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "resource/resource.h"
#include "sandbox/launch.h"

#define SECRETS_MAX 16
#define SECRET_VALUE_MAX (64 * 1024) /* a released data key is 32 bytes; a Secret's value at most this */
#define STOP_GRACE_S 10       /* after forwarding SIGTERM, the workload is killed this much later */
#define REFRESH_DEFAULT_S 60
#define PROBE_INTERVAL_MS 50 /* how often the workload's port is tried until it answers */
#define CERT_LIFETIME_S (24 * 3600)
#define EVIDENCE_B64_MAX (2 * ATTEST_EVIDENCE_MAX)

#if defined(__SANITIZE_ADDRESS__)
/* Inside the sandbox ptrace is refused by seccomp, so LeakSanitizer cannot
 * stop the world at exit and would replace the workload's exit status by
 * its own failure. */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return getpid() == 1;
}
#endif

/* Every buffer jansson and cjose free is wiped first: parsing the released
 * key's JSON and opening its JWE leave copies of it in their own buffers. */
static void free_wiped(void *p)
{
    if (p) {
        OPENSSL_cleanse(p, malloc_usable_size(p));
        free(p);
    }
}

static void *realloc_wiped(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    void *q = malloc(n ? n : 1);
    if (!q)
        return NULL;
    memcpy(q, p, MIN(n, malloc_usable_size(p)));
    free_wiped(p);
    return q;
}

typedef struct secret {
    char secret[64]; /* a Secret's name; "" for a Key */
    char key[64];    /* the Key, or the Secret's data key */
    char file[ATLS_SECRET_FILE_MAX + 1];
} secret;

typedef struct agent {
    const char *channel;
    const char *secrets_dir;
    secret secrets[SECRETS_MAX];
    size_t n_secrets;
    int atls_fd; /* -1: no aTLS */
    uint16_t port;
    unsigned long long memory_bytes; /* the workload's RLIMIT_AS; 0: none */
    unsigned refresh_s;
    char **command;
    EVP_PKEY *key;
    uint8_t *spki; /* DER SubjectPublicKeyInfo of KEY */
    size_t spki_len;
    bool job_mode; /* --job: one run of a Job (agent/job.h) */
    agent_job job;
} agent;

static void usage(FILE *f)
{
    fprintf(f, "usage: cloister-agent [--channel PATH] [--secret KEY:FILE]... [--secrets-dir DIR]\n"
               "                      [--atls-fd N --port PORT] [--refresh SECONDS] [--memory-bytes N]\n"
               "                      [--job NAME:RUN:DIGEST]\n"
               "                      -- COMMAND [ARG]...\n"
               "\n"
               "  --channel PATH     the runner's channel socket (default " CHANNEL_DEFAULT_PATH ")\n"
               "  --secret KEY:FILE  release Key KEY by attestation into SECRETS-DIR/FILE (0400); at most 16\n"
               "  --secret-value SECRET:KEY:FILE  release value KEY of Secret SECRET into SECRETS-DIR/FILE (0400)\n"
               "  --secrets-dir DIR  where released keys go (default /run/secrets)\n"
               "  --atls-fd N        serve attested TLS on this inherited listening socket\n"
               "  --port PORT        the workload's TCP port on 127.0.0.1, where aTLS connections go\n"
               "  --memory-bytes N   the workload's address-space limit (RLIMIT_AS)\n"
               "  --refresh SECONDS  renew the certificate's evidence this often (default 60; 5-3600)\n"
               "  --job NAME:RUN:DIGEST  job mode: run RUN of Job NAME (digest in hex) with COMMAND as the engine\n");
}


/* Parses a number in [MIN, MAX]; -EINVAL otherwise. */
static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *ret)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || !*s || *end || s[0] == '-' || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* Parses the command line into A; returns 0 or the exit status to use. */
static int parse_args(int argc, char **argv, agent *a)
{
    enum { OPT_CHANNEL = 256, OPT_SECRET, OPT_SECRET_VALUE, OPT_SECRETS_DIR, OPT_ATLS_FD, OPT_PORT, OPT_REFRESH, OPT_MEMORY, OPT_JOB };
    static const struct option opts[] = {
        {"channel", required_argument, NULL, OPT_CHANNEL},
        {"secret", required_argument, NULL, OPT_SECRET},
        {"secret-value", required_argument, NULL, OPT_SECRET_VALUE},
        {"secrets-dir", required_argument, NULL, OPT_SECRETS_DIR},
        {"atls-fd", required_argument, NULL, OPT_ATLS_FD},
        {"port", required_argument, NULL, OPT_PORT},
        {"refresh", required_argument, NULL, OPT_REFRESH},
        {"memory-bytes", required_argument, NULL, OPT_MEMORY},
        {"job", required_argument, NULL, OPT_JOB},
        {"help", no_argument, NULL, 'h'},
        {},
    };
    *a = (agent){.channel = CHANNEL_DEFAULT_PATH, .secrets_dir = "/run/secrets", .atls_fd = -1,
                 .refresh_s = REFRESH_DEFAULT_S};
    unsigned long v;
    int c;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CHANNEL:
            a->channel = optarg;
            break;
        case OPT_SECRETS_DIR:
            a->secrets_dir = optarg;
            break;
        case OPT_SECRET:
        case OPT_SECRET_VALUE: {
            const char *arg = optarg;
            if (a->n_secrets == SECRETS_MAX) {
                fprintf(stderr, "cloister-agent: at most %d --secret and --secret-value\n", SECRETS_MAX);
                return 2;
            }
            secret *s = &a->secrets[a->n_secrets];
            if (c == OPT_SECRET_VALUE) {
                const char *sep = strchr(arg, ':');
                size_t sn = sep ? (size_t)(sep - arg) : 0;
                if (!sep || sn == 0 || sn >= sizeof(s->secret)) {
                    fprintf(stderr, "cloister-agent: --secret-value takes SECRET:KEY:FILE, e.g. db:password:db.pass\n");
                    return 2;
                }
                memcpy(s->secret, arg, sn);
                s->secret[sn] = 0;
                arg = sep + 1;
            }
            const char *colon = strchr(arg, ':');
            size_t kn = colon ? (size_t)(colon - arg) : 0;
            if (!colon || kn == 0 || kn >= sizeof(s->key)) {
                fprintf(stderr, "cloister-agent: --secret takes KEY:FILE, e.g. model-key:model.key, and "
                                "--secret-value SECRET:KEY:FILE\n");
                return 2;
            }
            memcpy(s->key, arg, kn);
            s->key[kn] = 0;
            bool names_ok = s->secret[0] ? resource_name_valid(s->secret) && resource_data_key_valid(s->key)
                                         : resource_name_valid(s->key);
            if (!names_ok || !atls_secret_file_valid(colon + 1)) {
                fprintf(stderr, "cloister-agent: --secret %s: KEY must be a resource name and FILE a plain file "
                                "name ([A-Za-z0-9._-], not starting with '.', at most %d)\n", optarg, ATLS_SECRET_FILE_MAX);
                return 2;
            }
            strcpy(s->file, colon + 1);
            for (size_t i = 0; i < a->n_secrets; i++)
                if (strcmp(a->secrets[i].file, s->file) == 0) {
                    fprintf(stderr, "cloister-agent: two secrets go to the file %s\n", s->file);
                    return 2;
                }
            a->n_secrets++;
            break;
        }
        case OPT_ATLS_FD:
            if (parse_uint(optarg, 3, 1024, &v) < 0) {
                fprintf(stderr, "cloister-agent: --atls-fd takes an inherited file descriptor (3-1024)\n");
                return 2;
            }
            a->atls_fd = (int)v;
            break;
        case OPT_MEMORY: {
            char *end;
            errno = 0;
            unsigned long long m = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-' || m < (1ull << 20)) {
                fprintf(stderr, "cloister-agent: --memory-bytes takes the workload's address-space limit in bytes "
                                "(at least 1 MiB)\n");
                return 2;
            }
            a->memory_bytes = m;
            break;
        }
        case OPT_JOB:
            if (agent_job_parse(optarg, &a->job) < 0) {
                fprintf(stderr, "cloister-agent: --job takes NAME:RUN:DIGEST (a Job's name, the run's number, the "
                                "digest as 64 lower-case hex digits)\n");
                return 2;
            }
            a->job_mode = true;
            break;
        case OPT_PORT:
            if (parse_uint(optarg, 1, 65535, &v) < 0) {
                fprintf(stderr, "cloister-agent: --port takes a TCP port (1-65535)\n");
                return 2;
            }
            a->port = (uint16_t)v;
            break;
        case OPT_REFRESH:
            if (parse_uint(optarg, 5, 3600, &v) < 0) {
                fprintf(stderr, "cloister-agent: --refresh takes seconds (5-3600)\n");
                return 2;
            }
            a->refresh_s = (unsigned)v;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc || argv[optind][0] != '/') {
        fprintf(stderr, "cloister-agent: the workload's command (an absolute path) follows \"--\"\n");
        usage(stderr);
        return 2;
    }
    if (a->job_mode && (a->n_secrets || a->atls_fd >= 0)) {
        fprintf(stderr, "cloister-agent: --job runs the engine alone: no --secret, no --atls-fd\n");
        return 2;
    }
    if ((a->atls_fd >= 0) != (a->port != 0)) {
        fprintf(stderr, "cloister-agent: --atls-fd and --port go together\n");
        return 2;
    }
    a->command = argv + optind;
    return 0;
}

/* Makes the ephemeral P-384 key pair and its SubjectPublicKeyInfo. */
static int make_key(agent *a)
{
    a->key = EVP_EC_gen("P-384");
    if (!a->key)
        return -ENOMEM;
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(a->key, &der);
    if (n <= 0 || !(a->spki = malloc((size_t)n))) {
        OPENSSL_free(der);
        return -ENOMEM;
    }
    memcpy(a->spki, der, (size_t)n);
    a->spki_len = (size_t)n;
    OPENSSL_free(der);
    return 0;
}

/* The private key as a cjose JWK for opening JWEs; NULL on failure. The
 * private scalar's copies are wiped. */
static cjose_jwk_t *private_jwk(const agent *a)
{
    BIGNUM *d = NULL, *x = NULL, *y = NULL;
    uint8_t db[48], xb[48], yb[48];
    cjose_jwk_t *jwk = NULL;
    cjose_err err;
    if (EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1 &&
        EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
        EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1 && BN_bn2binpad(d, db, 48) == 48 &&
        BN_bn2binpad(x, xb, 48) == 48 && BN_bn2binpad(y, yb, 48) == 48) {
        cjose_jwk_ec_keyspec spec = {.crv = CJOSE_JWK_EC_P_384, .d = db, .dlen = 48, .x = xb, .xlen = 48,
                                     .y = yb, .ylen = 48};
        jwk = cjose_jwk_create_EC_spec(&spec, &err);
    }
    OPENSSL_cleanse(db, sizeof(db));
    BN_clear_free(d);
    BN_free(x);
    BN_free(y);
    return jwk;
}

/* Asks the runner for this sandbox's evidence binding our public key,
 * NONCE and USER_DATA (NULL: none). On success *RET is the raw document
 * (malloc'd). The reason of a failure is logged. */
static int get_evidence_for(const agent *a, const uint8_t *nonce, size_t nonce_len, const uint8_t *user_data,
                            size_t user_data_len, uint8_t **ret, size_t *ret_len)
{
    _cleanup_free_ char *key_hex = malloc(2 * a->spki_len + 1);
    char nonce_hex[2 * 64 + 1], user_data_hex[2 * 64 + 1];
    if (nonce_len > 64 || user_data_len > 64)
        return -EINVAL;
    if (!key_hex)
        return -ENOMEM;
    hex_encode(a->spki, a->spki_len, key_hex);
    _cleanup_(json_decrefp) json_t *body = json_pack("{s:s}", "public_key", key_hex), *answer = NULL;
    if (nonce) {
        hex_encode(nonce, nonce_len, nonce_hex);
        json_object_set_new(body, "nonce", json_string(nonce_hex));
    }
    if (user_data) {
        hex_encode(user_data, user_data_len, user_data_hex);
        json_object_set_new(body, "user_data", json_string(user_data_hex));
    }
    int status = body ? channel_post(a->channel, "/v1/evidence", body, &answer) : -ENOMEM;
    if (status != 200) {
        char st[16];
        snprintf(st, sizeof(st), "%d", status);
        log_fields(LOG_LEVEL_ERROR, "the runner did not give evidence", "status", status > 0 ? st : strerror(-status),
                   "reason", status > 0 ? channel_error_message(answer, "") : "", NULL);
        return status > 0 ? -EPERM : status;
    }
    const char *b64 = json_string_value(json_object_get(answer, "document"));
    size_t n = b64 ? strlen(b64) : 0;
    if (!b64 || n > EVIDENCE_B64_MAX)
        return -EBADMSG;
    uint8_t *doc = malloc(n / 4 * 3 + 3);
    long len = doc ? base64_decode(b64, n, doc, n / 4 * 3 + 3, false) : -ENOMEM;
    if (len <= 0) {
        free(doc);
        return len < 0 ? (int)len : -EBADMSG;
    }
    *ret = doc;
    *ret_len = (size_t)len;
    return 0;
}

static int get_evidence(const agent *a, const uint8_t *nonce, size_t nonce_len, uint8_t **ret, size_t *ret_len)
{
    return get_evidence_for(a, nonce, nonce_len, NULL, 0, ret, ret_len);
}

/* agent_job_env's evidence: USERDATA is the agent. */
static int job_evidence(void *userdata, const uint8_t *nonce, size_t nonce_len, const uint8_t *user_data,
                        size_t user_data_len, uint8_t **ret, size_t *ret_len)
{
    return get_evidence_for(userdata, nonce, nonce_len, user_data, user_data_len, ret, ret_len);
}

/* Job mode: one run of a Job with the workload's command as the engine;
 * returns the exit status. */
static int run_job(agent *a, const sigset_t *blocked)
{
    cjose_jwk_t *jwk = private_jwk(a);
    if (!jwk) {
        log_fields(LOG_LEVEL_ERROR, "cannot prepare the ephemeral key for key release", NULL);
        return 1;
    }
    const agent_job_env env = {.channel = a->channel, .secrets_dir = a->secrets_dir, .work_dir = "/tmp/job",
                               .jwk = jwk, .spki = a->spki, .spki_len = a->spki_len, .command = a->command,
                               .blocked = blocked, .memory_bytes = a->memory_bytes, .evidence = job_evidence,
                               .evidence_userdata = a};
    int r = agent_job_main(&a->job, &env);
    cjose_jwk_release(jwk);
    return r;
}

/* server_make_cert: a certificate for our key with fresh evidence. */
static int make_cert(void *userdata, const uint8_t *nonce, size_t nonce_len, X509 **ret)
{
    const agent *a = userdata;
    atls_evidence e = {.type = ATTEST_SANDBOX};
    int r = get_evidence(a, nonce, nonce_len, &e.evidence, &e.evidence_len);
    if (r < 0)
        return r;
    r = atls_certificate_new(a->key, &e, (int64_t)(time_now_ns() / NSEC_PER_SEC), CERT_LIFETIME_S, ret);
    free(e.evidence);
    return r;
}

/* Overwrites every string value inside V (object keys aside) with zeros. */
static void json_wipe(json_t *v)
{
    const char *k;
    json_t *item;
    size_t i;
    if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    else if (json_is_object(v))
        json_object_foreach(v, k, item) json_wipe(item);
    else if (json_is_array(v))
        json_array_foreach(v, i, item) json_wipe(item);
}

/* Writes the LEN bytes of VALUE to DIR/FILE, created with mode 0400. */
static int write_secret(const char *dir, const char *file, const uint8_t *value, size_t len)
{
    char path[4200];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
    if (fd < 0)
        return negative_errno();
    int r = fd_write_all(fd, value, len);
    if (r < 0)
        return r;
    return fchmod(fd, 0400) < 0 ? negative_errno() : 0;
}

/* Opens the JWE of a release answer with JWK and writes what it holds for
 * S (a Key's data key, or a Secret's value) to the secret's file. Every
 * plaintext copy is wiped. */
static int store_released(const agent *a, const secret *s, const char *jwe_text, cjose_jwk_t *jwk)
{
    cjose_err err;
    cjose_jwe_t *jwe = cjose_jwe_import(jwe_text, strlen(jwe_text), &err);
    size_t len = 0;
    uint8_t *plain = jwe ? cjose_jwe_decrypt(jwe, jwk, &len, &err) : NULL;
    cjose_jwe_release(jwe);
    if (!plain)
        return -EBADMSG;
    json_t *doc = json_loadb((const char *)plain, len, 0, NULL);
    OPENSSL_cleanse(plain, len);
    cjose_get_dealloc()(plain);
    const char *key = json_string_value(json_object_get(doc, "key"));
    const char *secret_name = json_string_value(json_object_get(doc, "secret"));
    const char *b64 = json_string_value(json_object_get(doc, "plaintext"));
    bool ours = key && strcmp(key, s->key) == 0 && (s->secret[0] ? secret_name && strcmp(secret_name, s->secret) == 0 : !secret_name);
    size_t cap = b64 ? strlen(b64) / 4 * 3 + 3 : 0;
    uint8_t *value = ours && b64 && cap <= SECRET_VALUE_MAX + 3 ? malloc(cap) : NULL;
    long n = value ? base64_decode(b64, strlen(b64), value, cap, false) : -EBADMSG;
    json_wipe(doc);
    json_decref(doc);
    int r = n >= 0 && (n > 0 || s->secret[0]) ? write_secret(a->secrets_dir, s->file, value, (size_t)n) : -EBADMSG;
    if (value) {
        OPENSSL_cleanse(value, cap);
        free(value);
    }
    return r;
}

/* Tells the runner how the workload is (POST /v1/status on the channel):
 * READY once it answers on its port, or ERROR (may be NULL) when
 * something stops it; shown in the Enclave's status. A failure to report
 * is logged only: the runner then sees the exit alone. */
static void report_status(const agent *a, bool ready, const char *error)
{
    _cleanup_(json_decrefp) json_t *body = error ? json_pack("{s:s}", "error", error)
                                                 : json_pack("{s:b}", "ready", ready);
    _cleanup_(json_decrefp) json_t *answer = NULL;
    int status = body ? channel_post(a->channel, "/v1/status", body, &answer) : -ENOMEM;
    if (status != 200) {
        char st[16];
        snprintf(st, sizeof(st), "%d", status);
        log_fields(LOG_LEVEL_WARN, "cannot report the workload's status to the runner", "status",
                   status > 0 ? st : strerror(-status), NULL);
    }
}

/* Whether something accepts TCP connections on 127.0.0.1:PORT (the
 * workload's port, in the sandbox's own network namespace). */
static bool port_answers(uint16_t port)
{
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
}

/* Releases secret S: a challenge, evidence binding it and our key, the
 * release call, the JWE opened and the data key stored. Logs the reason
 * of a refusal (the API's message, never key material). */
static int release_secret(const agent *a, const secret *s, cjose_jwk_t *jwk)
{
    _cleanup_(json_decrefp) json_t *challenge = NULL, *answer = NULL, *body = NULL;
    const char *step = "challenge", *reason = "";
    char status_s[16] = "";
    int status = channel_post(a->channel, "/v1/attest/challenge", NULL, &challenge);
    const char *nonce_hex = json_string_value(json_object_get(challenge, "nonce"));
    uint8_t nonce[64];
    size_t nonce_len = nonce_hex ? strlen(nonce_hex) / 2 : 0;
    if (status == 200 && (!nonce_hex || nonce_len == 0 || nonce_len > sizeof(nonce) ||
                          hex_decode(nonce_hex, strlen(nonce_hex), nonce, nonce_len) < 0))
        status = -EBADMSG;
    int r = 0;
    if (status == 200) {
        step = "evidence";
        _cleanup_free_ uint8_t *doc = NULL;
        size_t doc_len = 0;
        r = get_evidence(a, nonce, nonce_len, &doc, &doc_len);
        _cleanup_free_ char *doc_b64 = r == 0 ? malloc(base64_encoded_size(doc_len)) : NULL;
        _cleanup_free_ char *key_b64 = malloc(base64_encoded_size(a->spki_len));
        if (r == 0 && doc_b64 && key_b64) {
            base64_encode(doc, doc_len, doc_b64, false);
            base64_encode(a->spki, a->spki_len, key_b64, false);
            body = json_pack("{s:s, s:s, s:s}", "type", "sandbox", "evidence", doc_b64, "publicKey", key_b64);
            char path[192];
            if (s->secret[0])
                snprintf(path, sizeof(path), "/v1/secrets/%s/%s/release", s->secret, s->key);
            else
                snprintf(path, sizeof(path), "/v1/kms/keys/%s/release", s->key);
            step = "release";
            status = body ? channel_post(a->channel, path, body, &answer) : -ENOMEM;
        } else
            status = r < 0 ? r : -ENOMEM;
    } else
        answer = json_incref(challenge);
    if (status == 200) {
        const char *jwe = json_string_value(json_object_get(answer, "jwe"));
        r = jwe ? store_released(a, s, jwe, jwk) : -EBADMSG;
        if (r == 0)
            return 0;
        step = "store";
        reason = r == -EBADMSG ? "the release answer could not be opened with this agent's key" : strerror(-r);
    } else if (status > 0) {
        snprintf(status_s, sizeof(status_s), "%d", status);
        reason = channel_error_message(answer, "");
        r = -EPERM;
    } else {
        reason = strerror(-status);
        r = status;
    }
    log_fields(LOG_LEVEL_ERROR, "key release refused; the workload is not started", "key", s->key, "file", s->file,
               "step", step, "status", status_s, "reason", reason, s->secret[0] ? "secret" : NULL, s->secret, NULL);
    char report[512];
    snprintf(report, sizeof(report), "key release refused (%s%s%s, step %s): %s", s->secret[0] ? s->secret : "",
             s->secret[0] ? "/" : "", s->key, step, reason[0] ? reason : "no reason given");
    report_status(a, false, report);
    return r;
}

/* Starts the workload with our environment; returns its pid or a negative errno. */
static pid_t start_workload(const agent *a, const sigset_t *blocked)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid < 0 ? negative_errno() : pid;
    sigprocmask(SIG_UNBLOCK, blocked, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (a->memory_bytes) {
        struct rlimit rl = {a->memory_bytes, a->memory_bytes};
        if (setrlimit(RLIMIT_AS, &rl) < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot limit the workload's memory", "error", strerror(errno), NULL);
            _exit(127);
        }
    }
    extern char **environ;
    execve(a->command[0], a->command, environ);
    log_fields(LOG_LEVEL_ERROR, "cannot start the workload", "command", a->command[0], "error", strerror(errno), NULL);
    _exit(127);
}

/* The exit status that reports STATUS (from waitpid) of the workload. */
static int exit_code(int status)
{
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Serves until the workload ends: reaps children (as pid 1 we inherit
 * orphans), forwards stop signals, accepts aTLS connections and renews
 * the certificate. Returns the agent's exit status. */
static int run(agent *a, pid_t workload, int sfd, server *srv)
{
    uint64_t next_refresh = srv ? time_mono_ns() + (uint64_t)a->refresh_s * NSEC_PER_SEC : UINT64_MAX, kill_at = 0;
    /* ready once the workload answers on its port (at once without one) */
    uint64_t next_probe = a->port ? time_mono_ns() : UINT64_MAX;
    if (!a->port)
        report_status(a, true, NULL);
    for (;;) {
        uint64_t now = time_mono_ns(), wake = next_refresh;
        if (next_probe <= now) {
            if (port_answers(a->port)) {
                char port_s[8];
                snprintf(port_s, sizeof(port_s), "%u", a->port);
                log_fields(LOG_LEVEL_INFO, "the workload answers on its port; ready", "port", port_s, NULL);
                report_status(a, true, NULL);
                next_probe = UINT64_MAX;
            } else
                next_probe = now + PROBE_INTERVAL_MS * NSEC_PER_MSEC;
        }
        wake = MIN(wake, next_probe);
        if (kill_at && kill_at < wake)
            wake = kill_at;
        int timeout = wake > now ? (int)MIN((wake - now) / NSEC_PER_MSEC + 1, (uint64_t)60000) : 0;
        struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = srv ? a->atls_fd : -1, .events = POLLIN}};
        if (poll(p, 2, timeout) < 0 && errno != EINTR)
            return 1;
        if (p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                if (si.ssi_signo == SIGCHLD)
                    continue;
                if (!kill_at) {
                    log_fields(LOG_LEVEL_INFO, "stopping the workload", "signal", strsignal((int)si.ssi_signo), NULL);
                    kill_at = time_mono_ns() + (uint64_t)STOP_GRACE_S * NSEC_PER_SEC;
                }
                kill(workload, (int)si.ssi_signo);
            }
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                if (pid == workload) {
                    char how[32];
                    snprintf(how, sizeof(how), WIFEXITED(status) ? "exit status %d" : "signal %d",
                             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                    log_fields(LOG_LEVEL_INFO, "the workload exited", "how", how, NULL);
                    if (!kill_at) { /* by itself, not stopped */
                        char report[64];
                        snprintf(report, sizeof(report), "the workload exited (%s)", how);
                        report_status(a, false, report);
                    }
                    return exit_code(status);
                }
        }
        if (p[1].revents)
            server_accept(srv);
        now = time_mono_ns();
        if (kill_at && now >= kill_at) {
            log_fields(LOG_LEVEL_WARN, "the workload did not stop in time; killing it", NULL);
            kill(workload, SIGKILL);
            kill_at = UINT64_MAX;
        }
        if (srv && now >= next_refresh) {
            int r = server_refresh(srv);
            if (r < 0)
                log_fields(LOG_LEVEL_WARN, "cannot renew the aTLS certificate; keeping the old one", "error",
                           strerror(-r), NULL);
            /* a failed renewal is retried sooner */
            next_refresh = now + (uint64_t)(r < 0 ? 5 : a->refresh_s) * NSEC_PER_SEC;
        }
    }
}

int main(int argc, char **argv)
{
    log_set_role("agent");
    agent a;
    int r = parse_args(argc, argv, &a);
    if (r != 0)
        return r < 0 ? 0 : r;
    /* signals are read from a signalfd, and every thread inherits them blocked */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_DUMPABLE, 0);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0 || (a.atls_fd >= 0 && fcntl(a.atls_fd, F_SETFD, FD_CLOEXEC) < 0)) {
        log_fields(LOG_LEVEL_ERROR, "cannot set up signals or the aTLS socket", "error", strerror(errno), NULL);
        return 1;
    }
    json_set_alloc_funcs(malloc, free_wiped);
    cjose_set_alloc_funcs(malloc, realloc_wiped, free_wiped);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    r = make_key(&a);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot make the ephemeral key", "error", strerror(-r), NULL);
        return 1;
    }
    if (a.job_mode)
        return run_job(&a, &set);
    if (a.n_secrets) {
        cjose_jwk_t *jwk = private_jwk(&a);
        if (!jwk) {
            log_fields(LOG_LEVEL_ERROR, "cannot prepare the ephemeral key for key release", NULL);
            return 1;
        }
        for (size_t i = 0; i < a.n_secrets && r == 0; i++)
            r = release_secret(&a, &a.secrets[i], jwk);
        cjose_jwk_release(jwk);
        if (r < 0)
            return 1;
        char n[16];
        snprintf(n, sizeof(n), "%zu", a.n_secrets);
        log_fields(LOG_LEVEL_INFO, "secrets released", "count", n, "dir", a.secrets_dir, NULL);
    }
    server *srv = NULL;
    if (a.atls_fd >= 0) {
        server_config sc = {.listen_fd = a.atls_fd, .port = a.port, .key = a.key, .make_cert = make_cert,
                            .userdata = &a};
        r = server_new(&sc, &srv);
        if (r < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot make the aTLS certificate", "error", strerror(-r), NULL);
            return 1;
        }
    }
    /* an Enclave with egress: the CONNECT proxy, named in the workload's environment */
    if (agent_egress_start(SANDBOX_EGRESS_PATH) < 0)
        return 1;
    pid_t workload = start_workload(&a, &set);
    if (workload < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot start the workload", "error", strerror(-workload), NULL);
        return 1;
    }
    char pid_s[16], port_s[8];
    snprintf(pid_s, sizeof(pid_s), "%d", (int)workload);
    snprintf(port_s, sizeof(port_s), "%u", a.port);
    log_fields(LOG_LEVEL_INFO, "workload started", "pid", pid_s, "atls_port", srv ? port_s : "", NULL);
    return run(&a, workload, sfd, srv);
}
