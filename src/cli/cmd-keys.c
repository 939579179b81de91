/* keys init|show|register: the user's approval key (Ed25519) and age
 * identity (X25519), made here and never sent anywhere; only the public
 * halves go to the server (POST /v1/users/{me}/keys). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/keyfiles.h"
#include "cli/output.h"
#include "cli/session.h"

#define APPROVAL_FILE "approval-key.pem"
#define IDENTITY_FILE "age-identity.txt"
#define KEYFILE_MAX (64 * 1024)

int keyfile_path(const char *name, char **ret)
{
    _cleanup_free_ char *dir = NULL;
    int r = session_dir(&dir);
    if (r < 0)
        return r;
    char *p;
    if ((name ? asprintf(&p, "%s/keys/%s", dir, name) : asprintf(&p, "%s/keys", dir)) < 0)
        return -ENOMEM;
    *ret = p;
    return 0;
}

/* Reads a secret file (at most KEYFILE_MAX bytes); the caller wipes and frees it. */
static int read_secret(const char *path, char **ret, size_t *ret_len)
{
    return read_file(path, KEYFILE_MAX, ret, ret_len);
}

static void wipe_text(char *p, size_t n)
{
    if (p) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

int keyfile_load_identities(const char *path, age_identity **ret, size_t *ret_n)
{
    _cleanup_free_ char *own = NULL;
    if (!path) {
        int r = keyfile_path(IDENTITY_FILE, &own);
        if (r < 0)
            return r;
        path = own;
    }
    char *text = NULL;
    size_t len = 0;
    int r = read_secret(path, &text, &len);
    if (r < 0)
        return r;
    r = age_identities_parse(text, len, ret, ret_n);
    wipe_text(text, len);
    return r;
}

/* The saved approval key into *RET (the caller frees it; OpenSSL wipes it
 * then). Returns 0, -EINVAL when the file holds no Ed25519 key, or a
 * negative errno. */
static int approval_key_load(EVP_PKEY **ret)
{
    _cleanup_free_ char *path = NULL;
    int r = keyfile_path(APPROVAL_FILE, &path);
    if (r < 0)
        return r;
    FILE *f = fopen(path, "re");
    if (!f)
        return negative_errno();
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k || EVP_PKEY_get_base_id(k) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(k);
        return -EINVAL;
    }
    *ret = k;
    return 0;
}

int keyfile_approval_public(char out[static KEYFILE_APPROVAL_B64_LEN + 1])
{
    EVP_PKEY *k = NULL;
    int r = approval_key_load(&k);
    if (r < 0)
        return r;
    uint8_t pub[32];
    size_t n = sizeof(pub);
    int ok = EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == 32;
    EVP_PKEY_free(k);
    if (!ok)
        return -EINVAL;
    base64_encode(pub, sizeof(pub), out, false);
    return 0;
}

int keyfile_approval_sign(const void *msg, size_t n, uint8_t sig[static KEYFILE_SIGNATURE_SIZE])
{
    EVP_PKEY *k = NULL;
    int r = approval_key_load(&k);
    if (r < 0)
        return r;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t len = KEYFILE_SIGNATURE_SIZE;
    bool ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestSign(ctx, sig, &len, msg, n) == 1 && len == KEYFILE_SIGNATURE_SIZE;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    return ok ? 0 : -EINVAL;
}

/* The age identity file's text (age-keygen's format) for ID into a new string. */
static char *identity_text(const age_identity *id)
{
    char secret[AGE_IDENTITY_STRLEN], recipient[AGE_RECIPIENT_STRLEN], created[32];
    age_recipient r;
    age_identity_recipient(id, &r);
    age_recipient_format(&r, recipient);
    age_identity_format(id, secret);
    time_t now = time(NULL);
    struct tm tm;
    strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    char *text = NULL;
    if (asprintf(&text, "# created: %s\n# public key: %s\n%s\n", created, recipient, secret) < 0)
        text = NULL;
    OPENSSL_cleanse(secret, sizeof(secret));
    return text;
}

/* A new Ed25519 key as PKCS#8 PEM (unencrypted: the file is 0600 in a 0700 directory). */
static char *approval_key_pem(size_t *ret_len)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *b = BIO_new(BIO_s_secmem());
    char *out = NULL;
    if (k && b && PEM_write_bio_PKCS8PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) {
        char *data;
        long n = BIO_get_mem_data(b, &data);
        if (n > 0 && (out = malloc((size_t)n + 1))) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
            *ret_len = (size_t)n;
        }
    }
    BIO_free(b); /* a secure-heap BIO is wiped when freed */
    EVP_PKEY_free(k);
    return out;
}

/* The public halves of the saved keys into APPROVAL and RECIPIENT. Returns an exit status. */
static int load_public(char approval[static KEYFILE_APPROVAL_B64_LEN + 1], char recipient[static AGE_RECIPIENT_STRLEN])
{
    age_identity *ids;
    size_t n;
    int r = keyfile_approval_public(approval);
    if (r < 0)
        return cli_error("cannot read the approval key: %s (run `cloister keys init`)", strerror(-r));
    r = keyfile_load_identities(NULL, &ids, &n);
    if (r < 0)
        return cli_error("cannot read the age identity: %s (run `cloister keys init`)", strerror(-r));
    age_recipient rc;
    age_identity_recipient(&ids[0], &rc);
    age_recipient_format(&rc, recipient);
    age_identities_free(ids, n);
    return CLI_EXIT_OK;
}

/* Prints the public halves (text or -o json/yaml). */
static int show(cli_ctx *ctx)
{
    char approval[KEYFILE_APPROVAL_B64_LEN + 1], recipient[AGE_RECIPIENT_STRLEN];
    int r = load_public(approval, recipient);
    if (r != CLI_EXIT_OK)
        return r;
    if (ctx->output == CLI_OUTPUT_TEXT) {
        printf("approval: %s\nrecipient: %s\n", approval, recipient);
        return CLI_EXIT_OK;
    }
    json_auto_t *v = json_pack("{s:s, s:s}", "approval", approval, "recipient", recipient);
    return (ctx->output == CLI_OUTPUT_JSON ? output_json(v) : output_yaml(v)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

/* Makes both keys; refuses to replace existing ones unless FORCE. */
static int init(cli_ctx *ctx, bool force)
{
    _cleanup_free_ char *dir = NULL, *apath = NULL, *ipath = NULL;
    int r = keyfile_path(NULL, &dir);
    if (r == 0)
        r = keyfile_path(APPROVAL_FILE, &apath);
    if (r == 0)
        r = keyfile_path(IDENTITY_FILE, &ipath);
    if (r < 0)
        return cli_error("cannot find the configuration directory: %s", strerror(-r));
    if (!force && (access(apath, F_OK) == 0 || access(ipath, F_OK) == 0))
        return cli_error("keys already exist in %s; replacing them loses what they decrypt and sign "
                         "(use --force to replace them anyway)", dir);
    r = mkdir_p(dir, 0700);
    if (r == 0 && chmod(dir, 0700) < 0)
        r = negative_errno();
    if (r < 0)
        return cli_error("cannot create %s: %s", dir, strerror(-r));
    age_identity id;
    if (age_identity_generate(&id) < 0)
        return cli_error("cannot make an age identity (no randomness?)");
    char *text = identity_text(&id);
    age_identity_wipe(&id);
    size_t plen = 0;
    char *pem = approval_key_pem(&plen);
    if (text && pem)
        r = write_file_atomic(apath, pem, plen, 0600);
    else
        r = -ENOMEM;
    if (r == 0)
        r = write_file_atomic(ipath, text, strlen(text), 0600);
    wipe_text(text, text ? strlen(text) : 0);
    wipe_text(pem, plen);
    if (r < 0)
        return cli_error("cannot write the keys in %s: %s", dir, strerror(-r));
    fprintf(stderr, "made %s and %s\n", apath, ipath);
    return show(ctx);
}

/* Publishes the public halves on the caller's User (status.publicKeys). */
static int do_register(cli_ctx *ctx)
{
    char approval[KEYFILE_APPROVAL_B64_LEN + 1], recipient[AGE_RECIPIENT_STRLEN];
    int r = load_public(approval, recipient);
    if (r == CLI_EXIT_OK)
        r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *who = NULL, *ans = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", "/whoami", NULL, &who, &err) < 0)
        return api_error_print(&err);
    const char *me = json_string_value(json_object_get(who, "user"));
    if (!me || !*me)
        return cli_error("the server did not say who this session is");
    char path[320];
    snprintf(path, sizeof(path), "/users/%s/keys", me);
    json_auto_t *body = json_pack("{s:s, s:s}", "approval", approval, "recipient", recipient);
    if (api_request(ctx, ctx->token, "POST", path, body, &ans, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_TEXT) {
        printf("registered on user %s: approval %s, recipient %s\n", me, approval, recipient);
        return CLI_EXIT_OK;
    }
    return (ctx->output == CLI_OUTPUT_JSON ? output_json(ans) : output_yaml(ans)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

int cmd_keys(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_FORCE = 0x200 };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"force", no_argument, NULL, OPT_FORCE},
        {},
    };
    bool force = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_FORCE) {
            force = true;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 != argc)
        return cli_usage_error(cmd, optind >= argc ? "missing init, show or register" : "unexpected argument \"%s\"",
                               argv[MIN(optind + 1, argc - 1)]);
    const char *sub = argv[optind];
    if (force && strcmp(sub, "init") != 0)
        return cli_usage_error(cmd, "--force goes with init only");
    if (strcmp(sub, "init") == 0)
        return init(ctx, force);
    if (strcmp(sub, "show") == 0)
        return show(ctx);
    if (strcmp(sub, "register") == 0)
        return do_register(ctx);
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", sub);
}
