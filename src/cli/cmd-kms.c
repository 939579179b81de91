/* kms: encrypt, decrypt, datakey, rotate and version through the server's /v1/kms/
 * endpoints. Plaintext comes from stdin and goes to stdout as raw bytes;
 * ciphertexts are the KMS's binary format (decrypt also takes their base64
 * text). Buffers that held plaintext are wiped. */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "kms/ciphertext.h"
#include "kms/client.h"
#include "resource/resource.h"

#define KMS_CONTEXT_ARG_MAX 16

enum { OPT_KEY = 0x200, OPT_CONTEXT };

/* Options of one kms subcommand. */
typedef struct kms_args {
    const char *key;
    json_t *context; /* owned */
    const char *positional;
} kms_args;

/* Parses --key, --context K=V (repeatable) and at most one positional
 * argument. Returns -1 to go on, or an exit status. */
static int parse(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, bool want_key, bool want_positional,
                 kms_args *a)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"key", required_argument, NULL, OPT_KEY},
        {"context", required_argument, NULL, OPT_CONTEXT},
        {},
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_KEY) {
            a->key = optarg;
            continue;
        }
        if (c == OPT_CONTEXT) {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                return cli_usage_error(cmd, "--context takes KEY=VALUE, not \"%s\"", optarg);
            if (!a->context)
                a->context = json_object();
            if (json_object_size(a->context) >= KMS_CONTEXT_ARG_MAX)
                return cli_usage_error(cmd, "at most %d --context pairs", KMS_CONTEXT_ARG_MAX);
            char k[KMS_CONTEXT_KEY_MAX + 1];
            if ((size_t)(eq - optarg) > KMS_CONTEXT_KEY_MAX)
                return cli_usage_error(cmd, "a context key has at most %d characters", KMS_CONTEXT_KEY_MAX);
            snprintf(k, sizeof(k), "%.*s", (int)(eq - optarg), optarg);
            json_object_set_new(a->context, k, json_string(eq + 1));
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (want_key && (!a->key || !resource_name_valid(a->key)))
        return cli_usage_error(cmd, a->key ? "invalid key name \"%s\"" : "missing --key NAME", a->key);
    if (optind < argc && want_positional)
        a->positional = argv[optind++];
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    return -1;
}

/* Writes N bytes to stdout; returns an exit status. */
static int write_out(const void *p, size_t n)
{
    if (fwrite(p, 1, n, stdout) != n || fflush(stdout) != 0)
        return cli_error("cannot write the output: %m");
    return CLI_EXIT_OK;
}

/* Decodes base64 field NAME of ANS into a new buffer (wiped and freed by the
 * caller); returns its length or -1. */
static long answer_b64(const json_t *ans, const char *name, uint8_t **ret)
{
    const char *s = json_string_value(json_object_get(ans, name));
    if (!s)
        return -1;
    size_t cap = strlen(s) / 4 * 3 + 3;
    uint8_t *buf = malloc(cap);
    long n = buf ? base64_decode(s, strlen(s), buf, cap, false) : -1;
    if (n < 0) {
        free(buf);
        return -1;
    }
    *ret = buf;
    return n;
}

/* POSTs BODY to /kms/OP; returns an exit status with *RET set on success. */
static int post(cli_ctx *ctx, const char *path, json_t *body, json_t **ret)
{
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    api_error err;
    if (api_request(ctx, ctx->token, "POST", path, body, ret, &err) < 0)
        return api_error_print(&err);
    return CLI_EXIT_OK;
}

/* kms encrypt --key NAME [--context K=V]... <plain >cipher */
static int kms_encrypt_cmd(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    kms_args a = {0};
    int r = parse(ctx, cmd, argc, argv, true, false, &a);
    if (r >= 0) {
        json_decref(a.context);
        return r;
    }
    char *plain = NULL;
    size_t n = 0;
    r = read_fd(STDIN_FILENO, KMS_PLAINTEXT_MAX, &plain, &n);
    if (r < 0) {
        json_decref(a.context);
        if (r == -EFBIG)
            return cli_error("the input is larger than %d bytes; encrypt a data key instead (kms datakey)",
                             KMS_PLAINTEXT_MAX);
        return cli_error("cannot read stdin: %s", strerror(-r));
    }
    char *b64 = malloc(base64_encoded_size(n));
    if (b64)
        base64_encode((const uint8_t *)plain, n, b64, false);
    OPENSSL_cleanse(plain, n);
    free(plain);
    json_t *body = NULL;
    if (b64)
        body = json_pack("{s:s, s:s, s:o*}", "key", a.key, "plaintext", b64, "context", a.context);
    else
        json_decref(a.context);
    if (b64) {
        OPENSSL_cleanse(b64, strlen(b64));
        free(b64);
    }
    if (!body)
        return cli_error("out of memory");
    json_t *ans = NULL;
    r = post(ctx, "/kms/encrypt", body, &ans);
    kms_json_wipe_decref(body);
    if (r != CLI_EXIT_OK)
        return r;
    uint8_t *ct;
    long len = answer_b64(ans, "ciphertext", &ct);
    json_decref(ans);
    if (len < 0)
        return cli_error("the server's answer has no ciphertext");
    r = write_out(ct, (size_t)len);
    free(ct);
    return r;
}

/* kms decrypt [--context K=V]... <cipher >plain */
static int kms_decrypt_cmd(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    kms_args a = {0};
    int r = parse(ctx, cmd, argc, argv, false, false, &a);
    if (r >= 0) {
        json_decref(a.context);
        return r;
    }
    char *in = NULL;
    size_t n = 0;
    r = read_fd(STDIN_FILENO, 2 * KMS_CIPHERTEXT_MAX, &in, &n);
    if (r < 0) {
        json_decref(a.context);
        return cli_error("cannot read the ciphertext from stdin: %s", strerror(-r));
    }
    /* the binary format starts with its magic; anything else is taken as its base64 text */
    char *b64 = NULL;
    if (n >= KMS_MAGIC_LEN && memcmp(in, KMS_MAGIC, KMS_MAGIC_LEN) == 0) {
        b64 = malloc(base64_encoded_size(n));
        if (b64)
            base64_encode((const uint8_t *)in, n, b64, false);
    } else {
        while (n > 0 && (in[n - 1] == '\n' || in[n - 1] == '\r' || in[n - 1] == ' '))
            in[--n] = 0;
        b64 = strdup(in);
    }
    free(in);
    json_t *body = NULL;
    if (b64)
        body = json_pack("{s:s, s:o*}", "ciphertext", b64, "context", a.context);
    else
        json_decref(a.context);
    free(b64);
    if (!body)
        return cli_error("out of memory");
    json_t *ans = NULL;
    r = post(ctx, "/kms/decrypt", body, &ans);
    json_decref(body);
    if (r != CLI_EXIT_OK)
        return r;
    uint8_t *pt;
    long len = answer_b64(ans, "plaintext", &pt);
    kms_json_wipe_decref(ans);
    if (len < 0)
        return cli_error("the server's answer has no plaintext");
    r = write_out(pt, (size_t)len);
    OPENSSL_cleanse(pt, (size_t)len);
    free(pt);
    return r;
}

/* kms datakey --key NAME [--context K=V]...: {plaintext, ciphertext} as JSON. */
static int kms_datakey_cmd(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    kms_args a = {0};
    int r = parse(ctx, cmd, argc, argv, true, false, &a);
    if (r >= 0) {
        json_decref(a.context);
        return r;
    }
    json_t *body = json_pack("{s:s, s:o*}", "key", a.key, "context", a.context), *ans = NULL;
    if (!body)
        return cli_error("out of memory");
    r = post(ctx, "/kms/datakey", body, &ans);
    json_decref(body);
    if (r != CLI_EXIT_OK)
        return r;
    json_t *out = json_pack("{s:O, s:O, s:O, s:O}", "plaintext", json_object_get(ans, "plaintext"), "ciphertext",
                            json_object_get(ans, "ciphertext"), "key", json_object_get(ans, "key"), "version",
                            json_object_get(ans, "version"));
    if (!out) {
        kms_json_wipe_decref(ans);
        return cli_error("the server's answer is not a data key");
    }
    r = ctx->output == CLI_OUTPUT_YAML ? output_yaml(out) : output_json(out);
    json_decref(out); /* its strings are ANS's, wiped with it */
    kms_json_wipe_decref(ans);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* Prints what a key version became: "key/NAME version N: STATE" and, when
 * pending destruction, its time. */
static void print_version(const char *name, unsigned long version, const json_t *key)
{
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(key, "versions"), i, v)
    {
        if (json_integer_value(json_object_get(v, "version")) != (json_int_t)version)
            continue;
        const char *at = json_string_value(json_object_get(v, "destroyAt"));
        printf("key/%s version %lu: %s%s%s\n", name, version, json_string_value(json_object_get(v, "state")) ?: "?",
               at ? ", destroyed at " : "", at ?: "");
    }
}

/* Prints the key description KEY (consumed) that rotating key NAME
 * (VERSION 0) or changing its version VERSION answered: as -o asks, or one
 * line saying what became of it. Returns an exit status. */
static int print_key(cli_ctx *ctx, const char *name, unsigned long version, json_t *key)
{
    int r = 0;
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(key);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(key);
    else if (version == 0)
        printf("key/%s rotated: version %lld is now primary\n", name,
               (long long)json_integer_value(json_object_get(key, "primaryVersion")));
    else
        print_version(name, version, key);
    json_decref(key);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* kms rotate NAME */
static int kms_rotate_cmd(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    kms_args a = {0};
    int r = parse(ctx, cmd, argc, argv, false, true, &a);
    json_decref(a.context);
    if (r >= 0)
        return r;
    if (!a.positional || !resource_name_valid(a.positional))
        return cli_usage_error(cmd, a.positional ? "invalid key name \"%s\"" : "missing the key NAME", a.positional);
    char path[128];
    snprintf(path, sizeof(path), "/kms/keys/%s/rotate", a.positional);
    json_t *ans = NULL;
    r = post(ctx, path, NULL, &ans);
    return r != CLI_EXIT_OK ? r : print_key(ctx, a.positional, 0, ans);
}

/* kms version NAME N enabled|disabled|destroyed [--after SECONDS]: sets a
 * version's state; destroyed schedules its destruction (at least a day
 * ahead, a week by default), and enabled or disabled cancel it. */
static int kms_version_cmd(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_AFTER = 0x300 };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"after", required_argument, NULL, OPT_AFTER},
        {},
    };
    const char *after = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_AFTER)
            after = optarg;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (argc - optind != 3)
        return cli_usage_error(cmd, "kms version takes NAME VERSION enabled|disabled|destroyed");
    const char *name = argv[optind], *state = argv[optind + 2];
    char *end;
    unsigned long version = strtoul(argv[optind + 1], &end, 10);
    if (!resource_name_valid(name))
        return cli_usage_error(cmd, "invalid key name \"%s\"", name);
    if (*end || version < 1 || version > UINT32_MAX || argv[optind + 1][0] == '0')
        return cli_usage_error(cmd, "VERSION must be a version number (1 or more), not \"%s\"", argv[optind + 1]);
    if (strcmp(state, "enabled") != 0 && strcmp(state, "disabled") != 0 && strcmp(state, "destroyed") != 0)
        return cli_usage_error(cmd, "the state is enabled, disabled or destroyed, not \"%s\"", state);
    json_auto_t *body = json_pack("{s:s}", "state", state);
    if (!body)
        return cli_error("out of memory");
    if (after) {
        long long secs = strtoll(after, &end, 10);
        if (strcmp(state, "destroyed") != 0)
            return cli_usage_error(cmd, "--after goes with destroyed");
        if (*end || !after[0] || secs < 0)
            return cli_usage_error(cmd, "--after takes a number of seconds, not \"%s\"", after);
        json_object_set_new(body, "destroyAfterSeconds", json_integer(secs));
    }
    char path[128];
    snprintf(path, sizeof(path), "/kms/keys/%s/versions/%lu", name, version);
    json_t *ans = NULL;
    int r = post(ctx, path, body, &ans);
    return r != CLI_EXIT_OK ? r : print_key(ctx, name, version, ans);
}

int cmd_kms(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(cli_ctx *, const cli_command *, int, char **);
    } subs[] = {
        {"encrypt", kms_encrypt_cmd},
        {"decrypt", kms_decrypt_cmd},
        {"datakey", kms_datakey_cmd},
        {"rotate", kms_rotate_cmd},
        {"version", kms_version_cmd},
    };
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: cloister kms %s\n  %s\n", cmd->synopsis, cmd->summary);
        return CLI_EXIT_OK;
    }
    if (argc < 2)
        return cli_usage_error(cmd, "missing subcommand (encrypt, decrypt, datakey, rotate, version)");
    for (size_t i = 0; i < ELEMENTSOF(subs); i++)
        if (strcmp(argv[1], subs[i].name) == 0)
            return subs[i].run(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", argv[1]);
}
