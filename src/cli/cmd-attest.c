/* cloister attest: verify TEE evidence offline (`attest verify`), and a
 * service's enclave through the proxy (`attest service`). */
#include <errno.h>
#include <getopt.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

#include "attest/atls.h"
#include "attest/attest.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

#define ATTEST_FILE_MAX (4 * 1024 * 1024)
#define ATTEST_CRLS_MAX 8
#define PROXY_ATTESTATION_URL_PATH "/.cloister/attestation" /* the proxy's, on every enclave service host */

/* Reads PATH for option FLAG into *RET (caller frees); prints the reason on failure. */
static int read_input(const char *flag, const char *path, char **ret, size_t *ret_len)
{
    int r = read_file(path, ATTEST_FILE_MAX, ret, ret_len);
    if (r == -EFBIG)
        return cli_error("%s %s: larger than %d bytes", flag, path, ATTEST_FILE_MAX);
    if (r < 0)
        return cli_error("%s %s: %s", flag, path, strerror(-r));
    return 0;
}

/* Prints a verified or refused document as the output format asks. */
static int print_result(const cli_ctx *ctx, const json_t *doc)
{
    if (ctx->output == CLI_OUTPUT_JSON)
        return output_json(doc) < 0 ? CLI_EXIT_FAILED : 0;
    if (ctx->output == CLI_OUTPUT_YAML)
        return output_yaml(doc) < 0 ? CLI_EXIT_FAILED : 0;
    const char *type = json_string_value(json_object_get(doc, "type"));
    if (!json_is_true(json_object_get(doc, "verified")))
        return 0; /* the reason goes to stderr */
    printf("verified %s evidence\n", type);
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(doc, "claims"), key, v)
    {
        char *text = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        printf("  %-14s %s\n", key, text ? text : json_string_value(v));
        free(text);
    }
    return 0;
}

static int attest_verify_command(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_TYPE = 0x200, OPT_EVIDENCE, OPT_CERT, OPT_ROOTS, OPT_AT, OPT_CRL };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"type", required_argument, NULL, OPT_TYPE},
        {"evidence", required_argument, NULL, OPT_EVIDENCE},
        {"cert", required_argument, NULL, OPT_CERT},
        {"roots", required_argument, NULL, OPT_ROOTS},
        {"at", required_argument, NULL, OPT_AT},
        {"crl", required_argument, NULL, OPT_CRL},
        {},
    };
    const char *type_s = NULL, *evidence_path = NULL, *cert_path = NULL, *roots_path = NULL, *at = NULL;
    const char *crl_paths[ATTEST_CRLS_MAX];
    size_t n_crls = 0;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        switch (c) {
        case OPT_TYPE:
            type_s = optarg;
            break;
        case OPT_EVIDENCE:
            evidence_path = optarg;
            break;
        case OPT_CERT:
            cert_path = optarg;
            break;
        case OPT_ROOTS:
            roots_path = optarg;
            break;
        case OPT_AT:
            at = optarg;
            break;
        case OPT_CRL:
            if (n_crls == ATTEST_CRLS_MAX)
                return cli_usage_error(cmd, "at most %d --crl files", ATTEST_CRLS_MAX);
            crl_paths[n_crls++] = optarg;
            break;
        default:
            if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
                return c;
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    attest_type type;
    if (!type_s || attest_type_from_string(type_s, &type) < 0)
        return cli_usage_error(cmd, "--type must be nitro, sev-snp, tdx or sandbox");
    if (!evidence_path)
        return cli_usage_error(cmd, "--evidence FILE is required");
    attest_options opts = {.time = (int64_t)(time_now_ns() / NSEC_PER_SEC)};
    if (at && time_parse_rfc3339(at, &opts.time) < 0)
        return cli_usage_error(cmd, "--at takes an RFC 3339 time such as 2024-09-07T14:37:39Z");
    if (type == ATTEST_SANDBOX && !roots_path)
        return cli_usage_error(cmd, "sandbox evidence needs --roots (the cluster's platform CA)");
    if (type == ATTEST_SEV_SNP && !cert_path)
        return cli_usage_error(cmd, "sev-snp evidence needs --cert (the VCEK or VLEK certificate)");

    _cleanup_free_ char *evidence = NULL, *cert = NULL, *roots = NULL;
    char *crls[ATTEST_CRLS_MAX] = {0};
    attest_blob crl_blobs[ATTEST_CRLS_MAX];
    size_t evidence_len = 0, cert_len = 0, roots_len = 0;
    int r = read_input("--evidence", evidence_path, &evidence, &evidence_len);
    if (r == 0 && cert_path && (r = read_input("--cert", cert_path, &cert, &cert_len)) == 0)
        opts.cert = (attest_blob){(const uint8_t *)cert, cert_len};
    if (r == 0 && roots_path && (r = read_input("--roots", roots_path, &roots, &roots_len)) == 0)
        opts.roots = (attest_blob){(const uint8_t *)roots, roots_len};
    for (size_t i = 0; r == 0 && i < n_crls; i++) {
        size_t len;
        if ((r = read_input("--crl", crl_paths[i], &crls[i], &len)) == 0)
            crl_blobs[i] = (attest_blob){(const uint8_t *)crls[i], len};
    }
    if (r == 0) {
        opts.crls = crl_blobs;
        opts.n_crls = n_crls;
        json_t *doc = NULL;
        attest_error error = {{0}};
        int v = attest_verify(type, (const uint8_t *)evidence, evidence_len, &opts, &doc, &error);
        if (v < 0)
            doc = attest_refusal_new(type, error.text[0] ? error.text : strerror(-v));
        r = doc ? print_result(ctx, doc) : cli_error("out of memory");
        json_decref(doc);
        if (r == 0 && v < 0)
            r = cli_error("%s evidence refused: %s", type_s, error.text[0] ? error.text : strerror(-v));
    }
    for (size_t i = 0; i < n_crls; i++)
        free(crls[i]);
    return r;
}

#define PCR0_VALUES_MAX 16

/* `attest service NAME`: asks the proxy for the certificate one of NAME's
 * enclave replicas makes for our nonce, and verifies it here: evidence
 * signed by a root of ours (--roots), carrying our nonce, binding the
 * certificate's key, and the Enclave's AttestationPolicy, with our own
 * PCR0 values (--pcr0) instead of its reference values when given. */
static int attest_service_command(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_PROXY = 0x200, OPT_DOMAIN, OPT_ROOTS, OPT_PCR0 };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"proxy", required_argument, NULL, OPT_PROXY},
        {"domain", required_argument, NULL, OPT_DOMAIN},
        {"roots", required_argument, NULL, OPT_ROOTS},
        {"pcr0", required_argument, NULL, OPT_PCR0},
        {},
    };
    const char *proxy = getenv("CLOISTER_PROXY"), *domain = "localhost", *roots_path = NULL;
    const char *pcr0[PCR0_VALUES_MAX];
    size_t n_pcr0 = 0;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        switch (c) {
        case OPT_PROXY:
            proxy = optarg;
            break;
        case OPT_DOMAIN:
            domain = optarg;
            break;
        case OPT_ROOTS:
            roots_path = optarg;
            break;
        case OPT_PCR0:
            if (n_pcr0 == PCR0_VALUES_MAX)
                return cli_usage_error(cmd, "at most %d --pcr0 values", PCR0_VALUES_MAX);
            pcr0[n_pcr0++] = optarg;
            break;
        default:
            if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
                return c;
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cmd, "attest service takes the service's name");
    const char *name = argv[optind];
    if (!roots_path)
        return cli_usage_error(cmd, "--roots is required: the platform CA the evidence must chain to");
    if (!proxy)
        proxy = "https://127.0.0.1:8443";
    if (strncmp(proxy, "https://", 8) != 0)
        return cli_usage_error(cmd, "--proxy takes the proxy's https:// address (HOST:PORT is kept, the host "
                                    "becomes <service>.<domain>)");
    int r = cli_connect(ctx, true);
    if (r != 0)
        return r;
    _cleanup_free_ char *roots = NULL;
    size_t roots_len = 0;
    if ((r = read_input("--roots", roots_path, &roots, &roots_len)) != 0)
        return r;
    uint8_t nonce[ATLS_NONCE_LEN];
    char nonce_hex[2 * ATLS_NONCE_LEN + 1];
    if (random_bytes(nonce, sizeof(nonce)) < 0)
        return cli_error("no randomness");
    hex_encode(nonce, sizeof(nonce), nonce_hex);
    /* https://<service>.<domain>[:port]: the name goes in SNI and Host (curl
     * resolves *.localhost itself) */
    const char *port = strrchr(proxy + 8, ':');
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "https://%s.%s%s" PROXY_ATTESTATION_URL_PATH "?nonce=%s", name, domain, port ? port : "",
                 nonce_hex) < 0)
        return cli_error("out of memory");
    json_auto_t *answer = NULL;
    api_error err;
    if (api_request_url(ctx, ctx->token, "GET", url, NULL, &answer, &err) < 0)
        return api_error_print(&err);
    const char *pem = json_string_value(json_object_get(answer, "certificate"));
    json_t *policy = json_object_get(answer, "attestationPolicy");
    BIO *bio = pem ? BIO_new_mem_buf(pem, -1) : NULL;
    X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!cert || !json_is_object(policy)) {
        X509_free(cert);
        return cli_error("the proxy's answer holds no certificate or attestation policy");
    }
    json_auto_t *mine = json_deep_copy(policy);
    if (mine && n_pcr0) { /* our expectation, not the operator's */
        json_t *values = json_array();
        for (size_t i = 0; values && i < n_pcr0; i++)
            json_array_append_new(values, json_string(pcr0[i]));
        json_object_set_new(json_object_get(mine, "spec"), "referenceValues", json_pack("{s:o}", "pcr0", values));
    }
    atls_verify_options opts = {.now = (int64_t)(time_now_ns() / NSEC_PER_SEC),
                                .roots = {(const uint8_t *)roots, roots_len},
                                .nonce = nonce,
                                .nonce_len = sizeof(nonce)};
    json_t *result = NULL;
    attest_error aerr = {{0}};
    int v = mine ? atls_verify(cert, mine, &opts, &result, &aerr) : -ENOMEM;
    X509_free(cert);
    json_auto_t *doc = v == 0 ? result : attest_refusal_new(ATTEST_SANDBOX, aerr.text[0] ? aerr.text : strerror(-v));
    if (!doc)
        return cli_error("out of memory");
    json_object_set_new(doc, "service", json_string(name));
    json_object_set(doc, "enclave", json_object_get(answer, "enclave"));
    json_object_set(doc, "replica", json_object_get(answer, "replica"));
    r = print_result(ctx, doc);
    if (r == 0 && v < 0)
        r = cli_error("service %s's enclave refused: %s", name, aerr.text[0] ? aerr.text : strerror(-v));
    return r;
}

int cmd_attest(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "verify") == 0)
        return attest_verify_command(ctx, cmd, argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "service") == 0)
        return attest_service_command(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, argc >= 2 ? "unknown attest command \"%s\"" : "which attest command?",
                           argc >= 2 ? argv[1] : "");
}
