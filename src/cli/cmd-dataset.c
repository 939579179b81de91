/* dataset upload|download|decrypt, and workspace create.
 *
 * upload checks a CSV file against its schema, encrypts it on this machine
 * to the workspace's recipient and the user's own (age), and sends the
 * ciphertext in parts (PUT /v1/datasets/NAME/data?offset=N, at most 4 MiB
 * each) as it is made, then commits it with its SHA-256 and size: memory
 * stays at one part whatever the file's size, and the plaintext never
 * leaves the machine. download writes the ciphertext to -o FILE.
 *
 * decrypt: an age file (a dataset or a job's result) decrypted on
 * this machine with the user's identity (keys/age-identity.txt) or the
 * identity file of -i. With -o FILE the plaintext appears only once the
 * whole file verified (written to a temporary, renamed); on stdout each
 * 64 KiB chunk is written once its tag verified, so after a failure (exit
 * 1) stdout may hold the leading chunks of a truncated or corrupted file:
 * use -o where that matters. */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "age/age.h"
#include "basic/csv.h"
#include "basic/macro.h"
#include "cli/ageio.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/keyfiles.h"
#include "cli/output.h"

#define PART_MAX (4 * 1024 * 1024) /* the server's cap of one part */

/* ---- CSV against a schema (basic/csv.h: the job engine loads by the same rules) ---- */

typedef struct csv_schema {
    size_t n;
    char *names[CSV_COLUMNS_MAX];
    csv_type types[CSV_COLUMNS_MAX];
    bool given; /* from --schema; else inferred: the narrowest type every value fits */
} csv_schema;

static void csv_schema_clear(csv_schema *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->names[i]);
    *s = (csv_schema){0};
}

/* The state of csv_check's parse: the schema, what each column's values
 * fit so far, and the first thing wrong (printed once the parse stops). */
typedef struct csv_check_state {
    const char *path;
    csv_schema *s;
    bool fits_int[CSV_COLUMNS_MAX], fits_real[CSV_COLUMNS_MAX];
    bool header_seen;
} csv_check_state;

/* One field of the header (record 0) or a row, checked against the
 * schema. Returns 0, or -EINVAL (-ENOMEM) once it printed what is wrong. */
static int csv_check_field(void *userdata, const char *field, size_t len, size_t col, uint64_t record, bool end)
{
    csv_check_state *st = userdata;
    csv_schema *s = st->s;
    const char *path = st->path;
    uint64_t line = record + 1;
    if (record == 0) {
        if (s->given && (col >= s->n || strcmp(field, s->names[col]) != 0)) {
            cli_error("%s: line 1: the header must name the schema's columns in order (column %zu is \"%s\", "
                      "the schema says \"%s\")", path, col + 1, field, col < s->n ? s->names[col] : "nothing");
            return -EINVAL;
        }
        if (!s->given && (col >= CSV_COLUMNS_MAX || len == 0)) {
            cli_error("%s: line 1: a header of 1 to %d non-empty column names is required", path, CSV_COLUMNS_MAX);
            return -EINVAL;
        }
        if (!s->given) {
            if (!(s->names[col] = strdup(field))) {
                cli_error("out of memory");
                return -ENOMEM;
            }
            s->n = col + 1;
        }
        st->fits_int[col] = st->fits_real[col] = true;
        st->header_seen = true;
        if (end && (col + 1 != s->n || (col == 0 && len == 0))) {
            cli_error("%s: line 1: the header names %zu columns, the schema %zu", path, col + 1, s->n);
            return -EINVAL;
        }
        return 0;
    }
    if (col >= s->n) {
        cli_error("%s: line %" PRIu64 ": more fields than the %zu columns", path, line, s->n);
        return -EINVAL;
    }
    if (len > 0) {
        st->fits_int[col] &= csv_value_integer(field, NULL);
        st->fits_real[col] &= csv_value_real(field, NULL);
    }
    if (s->given && len > 0 &&
        ((s->types[col] == CSV_INTEGER && !st->fits_int[col]) || (s->types[col] == CSV_REAL && !st->fits_real[col]))) {
        cli_error("%s: line %" PRIu64 ": column %s is %s, but holds \"%.40s\"", path, line, s->names[col],
                  csv_type_name(s->types[col]), field);
        return -EINVAL;
    }
    if (end && col + 1 != s->n) {
        cli_error("%s: line %" PRIu64 ": %zu fields, the schema has %zu columns", path, line, col + 1, s->n);
        return -EINVAL;
    }
    return 0;
}

/* Checks the CSV file PATH against S (given), or fills S's columns and
 * types from it (not given): a header row naming the columns (in the
 * schema's order), then rows of as many fields, each of its column's type
 * (an empty field is NULL and fits any type). Prints what is wrong and
 * returns an exit status. */
static int csv_check(const char *path, csv_schema *s)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_error("cannot open %s: %s", path, strerror(errno));
    _cleanup_free_ char *buf = malloc(AGE_CHUNK_SIZE);
    csv_check_state st = {.path = path, .s = s};
    csv_parser p;
    if (!buf || csv_parser_init(&p, csv_check_field, &st, false) < 0)
        return cli_error("out of memory");
    int r = 0;
    for (;;) {
        ssize_t k = read(fd, buf, AGE_CHUNK_SIZE);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = cli_error("cannot read %s: %s", path, strerror(errno));
            break;
        }
        int e = k == 0 ? csv_parser_finish(&p) : csv_parser_feed(&p, buf, (size_t)k);
        if (e == -EINVAL || e == -E2BIG)
            r = cli_error("%s: line %" PRIu64 ": a malformed %s%s", path, p.record + 1,
                          p.record == 0 ? "header field" : "field", e == -E2BIG ? " (longer than 1 MiB)" : "");
        else if (e < 0)
            r = CLI_EXIT_FAILED; /* printed by csv_check_field */
        if (e < 0 || k == 0)
            break;
    }
    csv_parser_done(&p);
    if (r != 0)
        return r;
    if (!st.header_seen || s->n == 0)
        return cli_error("%s: line 1: a header of 1 to %d non-empty column names is required", path, CSV_COLUMNS_MAX);
    for (size_t i = 0; !s->given && i < s->n; i++)
        s->types[i] = st.fits_int[i] ? CSV_INTEGER : st.fits_real[i] ? CSV_REAL : CSV_TEXT;
    return CLI_EXIT_OK;
}

/* Parses --schema "col:type,col:type" into S. Returns an exit status. */
static int schema_parse(const cli_command *cmd, const char *arg, csv_schema *s)
{
    _cleanup_free_ char *copy = strdup(arg);
    if (!copy)
        return cli_error("out of memory");
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        if (!colon || colon == item || s->n >= CSV_COLUMNS_MAX)
            return cli_usage_error(cmd, "--schema is COLUMN:TYPE,... (TYPE integer, real or text; at most %d)",
                                   CSV_COLUMNS_MAX);
        *colon = 0;
        int t = csv_type_from_name(colon + 1);
        if (t < 0)
            return cli_usage_error(cmd, "--schema: column %s has type \"%s\"; use integer, real or text", item,
                                   colon + 1);
        if (!(s->names[s->n] = strdup(item)))
            return cli_error("out of memory");
        s->types[s->n++] = (csv_type)t;
    }
    if (s->n == 0)
        return cli_usage_error(cmd, "--schema names no column");
    s->given = true;
    return CLI_EXIT_OK;
}

/* ---- upload ---- */

/* The ciphertext on its way: parts of at most PART_MAX sent as they fill. */
typedef struct uploader {
    cli_ctx *ctx;
    char path[160]; /* /datasets/NAME/data */
    uint8_t *buf;
    size_t len;
    uint64_t offset;
    EVP_MD_CTX *sha;
    api_error err;
    bool failed;
} uploader;

/* Sends the buffered part; a transport failure is retried once at the same
 * offset (the server takes a part sent again). Returns 0 or -EIO. */
static int send_part(uploader *u)
{
    char path[200];
    snprintf(path, sizeof(path), "%s?offset=%llu", u->path, (unsigned long long)u->offset);
    int r = -EIO;
    for (int attempt = 0; attempt < 2 && r < 0; attempt++) {
        json_auto_t *ans = NULL;
        r = api_request_bytes(u->ctx, "PUT", path, u->buf, u->len, &ans, &u->err);
        if (r < 0 && r != -EIO)
            break;
    }
    if (r < 0) {
        u->failed = true;
        return -EIO;
    }
    u->offset += u->len;
    u->len = 0;
    return 0;
}

/* age_write_fn: hashes and buffers the ciphertext, sending each full part. */
static int upload_write(void *userdata, const uint8_t *p, size_t n)
{
    uploader *u = userdata;
    if (EVP_DigestUpdate(u->sha, p, n) != 1)
        return -EIO;
    while (n > 0) {
        size_t take = MIN(n, (size_t)PART_MAX - u->len);
        memcpy(u->buf + u->len, p, take);
        u->len += take;
        p += take;
        n -= take;
        if (u->len == PART_MAX && send_part(u) < 0)
            return -EIO;
    }
    return 0;
}

/* The recipients of NAME's upload: workspace W's and the caller's own
 * (their keys' identity, which must be the one registered). */
static int recipients_of(cli_ctx *ctx, const char *workspace, age_recipient out[2])
{
    api_error err;
    json_auto_t *ws = NULL, *who = NULL;
    char path[200];
    snprintf(path, sizeof(path), "/workspaces/%s", workspace);
    if (api_request(ctx, ctx->token, "GET", path, NULL, &ws, &err) < 0)
        return api_error_print(&err);
    const char *wr = json_string_value(json_object_get(json_object_get(ws, "status"), "recipient"));
    if (!wr || age_recipient_parse(wr, &out[0]) < 0)
        return cli_error("workspace %s has no age recipient (status.recipient)", workspace);
    age_identity *ids;
    size_t n;
    int r = keyfile_load_identities(NULL, &ids, &n);
    if (r < 0)
        return cli_error("cannot read your age identity: %s (run `cloister keys init` and `cloister keys register`)",
                         strerror(-r));
    age_identity_recipient(&ids[0], &out[1]);
    age_identities_free(ids, n);
    char mine[AGE_RECIPIENT_STRLEN];
    age_recipient_format(&out[1], mine);
    if (api_request(ctx, ctx->token, "GET", "/whoami", NULL, &who, &err) < 0)
        return api_error_print(&err);
    const char *registered = json_string_value(json_object_get(json_object_get(who, "publicKeys"), "recipient"));
    if (!registered || strcmp(registered, mine) != 0)
        return cli_error("your age identity (%s) is not the recipient registered on your user; run `cloister keys "
                         "register`", mine);
    return CLI_EXIT_OK;
}

/* Creates Dataset NAME in WORKSPACE with schema S, or takes the one a
 * failed upload left (same workspace, no data yet). */
static int create_dataset(cli_ctx *ctx, const char *name, const char *workspace, const csv_schema *s)
{
    json_auto_t *cols = json_array(), *ans = NULL;
    for (size_t i = 0; cols && i < s->n; i++)
        json_array_append_new(cols, json_pack("{s:s, s:s}", "name", s->names[i], "type", csv_type_name(s->types[i])));
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:O}}", "apiVersion", "cloister.dev/v1", "kind",
                                 "Dataset", "metadata", "name", name, "spec", "workspace", workspace, "schema", cols);
    if (!doc)
        return cli_error("out of memory");
    api_error err;
    if (api_request(ctx, ctx->token, "POST", "/datasets", doc, &ans, &err) == 0)
        return CLI_EXIT_OK;
    if (err.status != 409)
        return api_error_print(&err);
    json_auto_t *old = NULL;
    char path[200];
    snprintf(path, sizeof(path), "/datasets/%s", name);
    api_error gerr;
    if (api_request(ctx, ctx->token, "GET", path, NULL, &old, &gerr) < 0)
        return api_error_print(&err);
    const json_t *status = json_object_get(old, "status"), *spec = json_object_get(old, "spec");
    if (json_object_get(status, "sha256"))
        return cli_error("dataset %s already holds its data; delete it first (cloister delete dataset %s)", name, name);
    if (!json_equal(json_object_get(spec, "workspace"), json_object_get(json_object_get(doc, "spec"), "workspace")))
        return cli_error("dataset %s exists in another workspace", name);
    fprintf(stderr, "dataset %s exists without data (an earlier upload stopped): uploading again\n", name);
    return CLI_EXIT_OK;
}

/* decrypt [-i IDENTITY]... [-o FILE] [IN] */
static int decrypt(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"identity", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},
        {},
    };
    const char *identity = NULL, *out_path = NULL;
    int c;
    optind = 0;
    /* here -o names the output file (as `dataset download -o`), not a format */
    while ((c = getopt_long(argc, argv, "hi:o:", options, NULL)) >= 0) {
        if (c == 'i') {
            identity = optarg;
            continue;
        }
        if (c == 'o') {
            out_path = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind + 1]);
    const char *in_path = optind < argc ? argv[optind] : NULL;
    age_identity *ids;
    size_t n;
    int r = keyfile_load_identities(identity, &ids, &n);
    if (r < 0)
        return cli_error("cannot read the identity file %s: %s%s", identity ? identity : "(keys/age-identity.txt)",
                         r == -EINVAL ? "it holds no AGE-SECRET-KEY-1 identity" : strerror(-r),
                         identity ? "" : " (run `cloister keys init`, or give -i FILE)");
    r = ageio_run(in_path, out_path, &(ageio_keys){.identities = ids, .n = n});
    age_identities_free(ids, n);
    return r;
}

/* Encrypts FILE to R (2 recipients) and sends it as Dataset NAME's data. */
static int send_file(cli_ctx *ctx, const char *name, const char *file, const age_recipient r[2])
{
    _cleanup_close_ int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_error("cannot open %s: %s", file, strerror(errno));
    _cleanup_free_ uint8_t *buf = malloc(PART_MAX);
    uploader u = {.ctx = ctx, .buf = buf, .sha = EVP_MD_CTX_new()};
    snprintf(u.path, sizeof(u.path), "/datasets/%s/data", name);
    int e = buf && u.sha && EVP_DigestInit_ex(u.sha, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
    if (e == 0)
        e = age_encrypt(r, 2, age_fd_read, &fd, upload_write, &u);
    if (e == 0 && u.len > 0)
        e = send_part(&u);
    uint8_t digest[32];
    char hex[65];
    if (e == 0 && EVP_DigestFinal_ex(u.sha, digest, NULL) != 1)
        e = -EIO;
    EVP_MD_CTX_free(u.sha);
    if (u.failed)
        return api_error_print(&u.err);
    if (e < 0)
        return cli_error("cannot encrypt %s: %s", file, age_strerror(e));
    for (size_t i = 0; i < sizeof(digest); i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    json_auto_t *body = json_pack("{s:s, s:I}", "sha256", hex, "size", (json_int_t)u.offset), *ans = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "POST", u.path, body, &ans, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_TEXT) {
        printf("uploaded dataset %s: %llu bytes of ciphertext, sha256 %s\n", name, (unsigned long long)u.offset, hex);
        return CLI_EXIT_OK;
    }
    return (ctx->output == CLI_OUTPUT_JSON ? output_json(ans) : output_yaml(ans)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

/* upload NAME --workspace W --file F.csv [--schema COL:TYPE,...] */
static int upload(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_WORKSPACE = 0x200, OPT_FILE, OPT_SCHEMA };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"file", required_argument, NULL, OPT_FILE},
        {"schema", required_argument, NULL, OPT_SCHEMA},
        {},
    };
    const char *workspace = NULL, *file = NULL, *schema_arg = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_WORKSPACE || c == OPT_FILE || c == OPT_SCHEMA) {
            *(c == OPT_WORKSPACE ? &workspace : c == OPT_FILE ? &file : &schema_arg) = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 != argc || !workspace || !file)
        return cli_usage_error(cmd, "usage: dataset upload NAME --workspace W --file F.csv [--schema COL:TYPE,...]");
    const char *name = argv[optind];
    csv_schema s = {0};
    int r = schema_arg ? schema_parse(cmd, schema_arg, &s) : CLI_EXIT_OK;
    if (r == CLI_EXIT_OK)
        r = csv_check(file, &s);
    age_recipient rcpt[2];
    if (r == CLI_EXIT_OK)
        r = cli_connect(ctx, true);
    if (r == CLI_EXIT_OK)
        r = recipients_of(ctx, workspace, rcpt);
    if (r == CLI_EXIT_OK)
        r = create_dataset(ctx, name, workspace, &s);
    csv_schema_clear(&s);
    if (r != CLI_EXIT_OK)
        return r;
    return send_file(ctx, name, file, rcpt);
}

/* download NAME -o FILE: the ciphertext, FILE appearing only once all of it came. */
static int download(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"out", required_argument, NULL, 'o'},
        {},
    };
    const char *out_path = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "ho:", options, NULL)) >= 0) {
        if (c == 'o') {
            out_path = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 != argc || !out_path)
        return cli_usage_error(cmd, "usage: dataset download NAME -o FILE");
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    ageio_out out;
    int e = ageio_out_open(&out, out_path);
    if (e < 0)
        return cli_error("cannot write %s: %s", out_path, strerror(-e));
    char path[200];
    snprintf(path, sizeof(path), "/datasets/%s/data", argv[optind]);
    api_error err;
    e = api_download(ctx, path, out.fd, &err);
    int f = ageio_out_finish(&out, e == 0);
    if (e < 0)
        return api_error_print(&err);
    if (f < 0)
        return cli_error("cannot write %s: %s", out_path, strerror(-f));
    return CLI_EXIT_OK;
}

int cmd_dataset(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(cmd, "missing a subcommand (upload, download or decrypt)");
    if (strcmp(argv[1], "upload") == 0)
        return upload(ctx, cmd, argc - 1, argv + 1);
    if (strcmp(argv[1], "download") == 0)
        return download(ctx, cmd, argc - 1, argv + 1);
    if (strcmp(argv[1], "decrypt") == 0)
        return decrypt(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", argv[1]);
}

/* workspace create NAME --member U... [--approvals owners|all] */
int cmd_workspace(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_MEMBER = 0x200, OPT_APPROVALS };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"member", required_argument, NULL, OPT_MEMBER},
        {"approvals", required_argument, NULL, OPT_APPROVALS},
        {},
    };
    json_auto_t *members = json_array(), *ans = NULL;
    const char *approvals = "owners";
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_MEMBER) {
            json_array_append_new(members, json_string(optarg));
            continue;
        }
        if (c == OPT_APPROVALS) {
            approvals = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 2 != argc || strcmp(argv[optind], "create") != 0 || json_array_size(members) == 0)
        return cli_usage_error(cmd, "usage: workspace create NAME --member USER... [--approvals owners|all]");
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:O, s:s}}", "apiVersion", "cloister.dev/v1", "kind",
                                 "Workspace", "metadata", "name", argv[optind + 1], "spec", "members", members,
                                 "approvals", approvals);
    api_error err;
    if (!doc)
        return cli_error("out of memory");
    if (api_request(ctx, ctx->token, "POST", "/workspaces", doc, &ans, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_TEXT) {
        printf("workspace %s created; its recipient: %s\n", argv[optind + 1],
               json_string_value(json_object_get(json_object_get(ans, "status"), "recipient")) ?: "-");
        return CLI_EXIT_OK;
    }
    return (ctx->output == CLI_OUTPUT_JSON ? output_json(ans) : output_yaml(ans)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}
