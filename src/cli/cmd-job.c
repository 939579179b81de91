/* job propose|list|show|approve|reject|revoke|veto|run|result (DESIGN.md,
 * "Confidential analytics").
 *
 * approve never trusts the server's digest: it rebuilds the digest input
 * here from the job's spec, the inputs' sha256 (GET /v1/datasets/NAME) and
 * the recipients' registered age keys (GET /v1/users/NAME/keys), compares
 * it with the digestInput the server shows, recomputes the digest with the
 * same RFC 8785 code the server uses (src/job/digest.c), and only then
 * signs "cloister job approval v1\n" || hex(digest) || "\n" with the
 * user's Ed25519 approval key (keys/approval-key.pem). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/ageio.h"
#include "cli/client.h"
#include "cli/keyfiles.h"
#include "cli/output.h"
#include "job/digest.h"

#define QUERY_FILE_MAX (64 * 1024)
#define NAME_PATH_MAX 320
#define WAIT_DEFAULT_S 900   /* run --wait: how long at most */
#define WAIT_POLL_MS 100

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

/* Prints V (text from the server, "-" when NULL) whole, after PREFIX, with
 * control characters replaced; each of its lines starts with PREFIX (so a
 * query of several lines reads as written). */
static void put_clean(const char *prefix, const char *v)
{
    v = v ? v : "-";
    _cleanup_free_ char *line_buf = malloc(strlen(v) + 1), *clean = malloc(strlen(v) + 1);
    for (const char *line = v; line_buf && clean;) {
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        memcpy(line_buf, line, n);
        line_buf[n] = 0;
        printf("%s%s\n", prefix, text_sanitize(line_buf, clean, n + 1));
        if (!nl)
            break;
        line = nl + 1;
    }
}

/* Prints the "user" of each entry of array A on one line ("-" when none),
 * with each entry's FIELD after it when FIELD is set. */
static void put_entries(const char *label, const json_t *a, const char *field)
{
    char clean[1100]; /* a reason: at most 1,024 bytes */
    printf("%-12s", label);
    if (json_array_size(a) == 0)
        printf(" -");
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        const char *user = json_is_string(v) ? json_string_value(v) : json_string_value(json_object_get(v, "user"));
        printf("%s %s", i ? "," : "", text_sanitize(user ? user : "?", clean, sizeof(clean)));
        const char *extra = field ? json_string_value(json_object_get(v, field)) : NULL;
        if (extra)
            printf(" (%s)", text_sanitize(extra, clean, sizeof(clean)));
    }
    printf("\n");
}

/* GET /v1/jobs/NAME into *RET. Returns an exit status. */
static int fetch_job(cli_ctx *ctx, const char *name, json_t **ret)
{
    char path[NAME_PATH_MAX];
    api_error err;
    snprintf(path, sizeof(path), "/jobs/%s", name);
    return api_request(ctx, ctx->token, "GET", path, NULL, ret, &err) < 0 ? api_error_print(&err) : CLI_EXIT_OK;
}

/* What this machine finds for JOB's digest input: {inputs: [{name, sha256}],
 * recipients: ["age1…"], engine: {pcr0}} from the datasets and the
 * recipients' registered keys as the server shows them to this user, and
 * the engine PCR0 of PCR0 (when given) or else of the job's digestInput.
 * Returns an exit status; *RET a new object. */
static int resolve_here(cli_ctx *ctx, const json_t *job, const char *pcr0, json_t **ret)
{
    const json_t *spec = json_object_get(job, "spec");
    json_auto_t *inputs = json_array(), *keys = json_array();
    char path[NAME_PATH_MAX];
    api_error err;
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(spec, "inputs"), i, v)
    {
        json_auto_t *ds = NULL;
        snprintf(path, sizeof(path), "/datasets/%s", json_string_value(v));
        if (api_request(ctx, ctx->token, "GET", path, NULL, &ds, &err) < 0)
            return api_error_print(&err);
        const char *sha = str_at(ds, "status", "sha256");
        if (!sha)
            return cli_error("dataset %s has no data yet", json_string_value(v));
        json_array_append_new(inputs, json_pack("{s:O, s:s}", "name", v, "sha256", sha));
    }
    json_array_foreach(json_object_get(spec, "recipients"), i, v)
    {
        json_auto_t *k = NULL;
        snprintf(path, sizeof(path), "/users/%s/keys", json_string_value(v));
        if (api_request(ctx, ctx->token, "GET", path, NULL, &k, &err) < 0)
            return api_error_print(&err);
        const char *key = str_at(k, "publicKeys", "recipient");
        if (!key)
            return cli_error("recipient %s has no registered age key", json_string_value(v));
        json_array_append_new(keys, json_string(key));
    }
    const char *shown = str_at(json_object_get(json_object_get(job, "status"), "digestInput"), "engine", "pcr0");
    if (pcr0 && shown && strcmp(pcr0, shown) != 0)
        return cli_error("the job names engine PCR0 %s, not the %s you expect: refusing", shown, pcr0);
    json_t *resolved = json_pack("{s:O, s:O, s:{s:s}}", "inputs", inputs, "recipients", keys, "engine", "pcr0",
                                 pcr0 ? pcr0 : shown ? shown : "");
    if (!resolved)
        return cli_error("out of memory");
    *ret = resolved;
    return CLI_EXIT_OK;
}

/* Checks JOB here (see the top of the file): the digest input rebuilt
 * from what this machine fetched equals the job's digestInput, and its
 * digest the job's digest, which goes into DIGEST. PCR0: the engine
 * measurement the user expects, or NULL. Prints what differs. Returns an
 * exit status. */
static int verify_here(cli_ctx *ctx, const json_t *job, const char *pcr0, uint8_t digest[JOB_DIGEST_SIZE])
{
    const json_t *status = json_object_get(job, "status");
    const json_t *shown = json_object_get(status, "digestInput");
    const char *digest_hex = json_string_value(json_object_get(status, "digest"));
    if (!shown || !digest_hex)
        return cli_error("the job has no digest yet");
    json_auto_t *resolved = NULL, *mine = NULL;
    int r = resolve_here(ctx, job, pcr0, &resolved);
    if (r != CLI_EXIT_OK)
        return r;
    if (job_digest_input(json_object_get(job, "spec"), resolved, &mine) < 0)
        return cli_error("the job's spec or what it names cannot make a digest input");
    const char *key;
    const json_t *v;
    json_object_foreach(mine, key, v)
    {
        if (!json_equal(v, json_object_get(shown, key)))
            return cli_error("the digest input the server shows differs from this machine's in \"%s\": refusing "
                             "to sign (the job, a dataset or a recipient's key changed, or the server is lying)",
                             key);
    }
    if (json_object_size(shown) != json_object_size(mine))
        return cli_error("the digest input the server shows has fields this machine does not know: refusing");
    if (job_digest(mine, digest) < 0)
        return cli_error("the digest input cannot be put in canonical form");
    char hex[2 * JOB_DIGEST_SIZE + 1];
    hex_encode(digest, JOB_DIGEST_SIZE, hex);
    if (strcmp(hex, digest_hex) != 0)
        return cli_error("the server's digest %s is not the digest of its own digest input (%s): refusing",
                         digest_hex, hex);
    return CLI_EXIT_OK;
}

/* Prints JOB for people: everything an approver signs, and where it stands. */
static void show_text(const json_t *job)
{
    const json_t *spec = json_object_get(job, "spec"), *status = json_object_get(job, "status");
    const json_t *input = json_object_get(status, "digestInput");
    put_clean("job:        ", str_at(job, "metadata", "name"));
    put_clean("workspace:  ", json_string_value(json_object_get(spec, "workspace")));
    put_clean("author:     ", json_string_value(json_object_get(status, "author")));
    put_clean("state:      ", json_string_value(json_object_get(status, "state")));
    printf("query:\n");
    put_clean("    ", json_string_value(json_object_get(spec, "query")));
    printf("inputs:\n");
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(input, "inputs"), i, v)
    {
        char line[600];
        snprintf(line, sizeof(line), "%s  sha256 %s", json_string_value(json_object_get(v, "name")) ?: "?",
                 json_string_value(json_object_get(v, "sha256")) ?: "?");
        put_clean("    ", line);
    }
    printf("recipients:\n");
    json_array_foreach(json_object_get(spec, "recipients"), i, v)
    {
        char line[600];
        snprintf(line, sizeof(line), "%s  %s", json_string_value(v) ?: "?",
                 json_string_value(json_array_get(json_object_get(input, "recipients"), i)) ?: "?");
        put_clean("    ", line);
    }
    put_clean("engine:     pcr0 ", str_at(input, "engine", "pcr0"));
    printf("maxRuns:    %lld\n", (long long)json_integer_value(json_object_get(spec, "maxRuns")));
    put_clean("notAfter:   ", json_string_value(json_object_get(spec, "notAfter")));
    put_clean("digest:     ", json_string_value(json_object_get(status, "digest")));
    put_entries("required:", json_object_get(status, "requiredApprovers"), NULL);
    put_entries("approved:", json_object_get(status, "approvals"), "at");
    put_entries("missing:", json_object_get(status, "missingApprovers"), NULL);
    put_entries("rejected:", json_object_get(status, "rejections"), "reason");
    put_entries("vetoed:", json_object_get(status, "vetoes"), "reason");
    printf("runs:\n");
    if (json_array_size(json_object_get(status, "runs")) == 0)
        printf("    -\n");
    json_array_foreach(json_object_get(status, "runs"), i, v)
    {
        _cleanup_free_ char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        put_clean("    ", text);
    }
}

/* Prints ANS (a Job) as -o asks, or LINE for people. */
static int answer(cli_ctx *ctx, const json_t *ans, const char *line)
{
    if (ctx->output == CLI_OUTPUT_TEXT) {
        put_clean("", line);
        return CLI_EXIT_OK;
    }
    return (ctx->output == CLI_OUTPUT_JSON ? output_json(ans) : output_yaml(ans)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

/* The options of every job subcommand: the common ones and these. */
enum {
    OPT_WORKSPACE = 0x200,
    OPT_QUERY,
    OPT_QUERY_FILE,
    OPT_INPUT,
    OPT_RECIPIENT,
    OPT_MAX_RUNS,
    OPT_NOT_AFTER,
    OPT_REASON,
    OPT_PCR0,
    OPT_WAIT,
    OPT_TIMEOUT,
};

typedef struct job_args {
    const char *sub, *name;
    const char *workspace, *query, *query_file, *not_after, *reason, *pcr0;
    long max_runs;
    bool wait;
    long timeout_s;
    json_t *inputs, *recipients; /* owned */
} job_args;

static void job_args_clear(job_args *a)
{
    json_decref(a->inputs);
    json_decref(a->recipients);
}

/* Parses ARGV into A. Returns -1 to go on, or an exit status. */
static int parse(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, job_args *a)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"query", required_argument, NULL, OPT_QUERY},
        {"query-file", required_argument, NULL, OPT_QUERY_FILE},
        {"input", required_argument, NULL, OPT_INPUT},
        {"recipient", required_argument, NULL, OPT_RECIPIENT},
        {"max-runs", required_argument, NULL, OPT_MAX_RUNS},
        {"not-after", required_argument, NULL, OPT_NOT_AFTER},
        {"reason", required_argument, NULL, OPT_REASON},
        {"pcr0", required_argument, NULL, OPT_PCR0},
        {"wait", no_argument, NULL, OPT_WAIT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {},
    };
    a->inputs = json_array();
    a->recipients = json_array();
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        char *end;
        switch (c) {
        case OPT_WORKSPACE:
            a->workspace = optarg;
            continue;
        case OPT_QUERY:
            a->query = optarg;
            continue;
        case OPT_QUERY_FILE:
            a->query_file = optarg;
            continue;
        case OPT_INPUT:
            json_array_append_new(a->inputs, json_string(optarg));
            continue;
        case OPT_RECIPIENT:
            json_array_append_new(a->recipients, json_string(optarg));
            continue;
        case OPT_MAX_RUNS:
            errno = 0;
            a->max_runs = strtol(optarg, &end, 10);
            if (errno || *end || a->max_runs < 1)
                return cli_usage_error(cmd, "--max-runs takes a positive number");
            continue;
        case OPT_NOT_AFTER:
            a->not_after = optarg;
            continue;
        case OPT_REASON:
            a->reason = optarg;
            continue;
        case OPT_PCR0:
            a->pcr0 = optarg;
            continue;
        case OPT_WAIT:
            a->wait = true;
            continue;
        case OPT_TIMEOUT:
            errno = 0;
            a->timeout_s = strtol(optarg, &end, 10);
            if (errno || *end || a->timeout_s < 1)
                return cli_usage_error(cmd, "--timeout takes seconds");
            continue;
        default:
            if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
                return c;
        }
    }
    if (optind >= argc)
        return cli_usage_error(cmd, "missing a subcommand");
    a->sub = argv[optind];
    bool needs_name = strcmp(a->sub, "list") != 0;
    if (optind + (needs_name ? 2 : 1) != argc)
        return cli_usage_error(cmd, needs_name ? "job %s takes one job NAME" : "job %s takes no argument", a->sub);
    a->name = needs_name ? argv[optind + 1] : NULL;
    return -1;
}

/* propose: creates the Job, or replaces its spec (a new digest: every
 * approval is cleared) when it exists. */
static int propose(cli_ctx *ctx, const cli_command *cmd, job_args *a)
{
    if (!a->workspace || !(a->query || a->query_file) || (a->query && a->query_file) || !json_array_size(a->inputs))
        return cli_usage_error(cmd, "job propose NAME --workspace W --query SQL|--query-file F --input D...");
    _cleanup_free_ char *text = NULL;
    size_t len;
    if (a->query_file) {
        int e = read_file(a->query_file, QUERY_FILE_MAX, &text, &len);
        if (e < 0)
            return cli_error("cannot read %s: %s (at most 64 KiB)", a->query_file, strerror(-e));
        a->query = text;
    }
    json_auto_t *spec = json_pack("{s:s, s:s, s:O}", "workspace", a->workspace, "query", a->query, "inputs",
                                  a->inputs);
    if (spec && json_array_size(a->recipients))
        json_object_set(spec, "recipients", a->recipients);
    if (spec && a->max_runs)
        json_object_set_new(spec, "maxRuns", json_integer(a->max_runs));
    if (spec && a->not_after)
        json_object_set_new(spec, "notAfter", json_string(a->not_after));
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:O}", "apiVersion", JOB_API_VERSION, "kind", "Job",
                                 "metadata", "name", a->name, "spec", spec);
    if (!doc)
        return cli_error("out of memory");
    char path[NAME_PATH_MAX];
    snprintf(path, sizeof(path), "/jobs/%s", a->name);
    json_auto_t *old = NULL, *ans = NULL;
    api_error err;
    /* created, or (it exists: 409) replaced as the version read now */
    bool exists = api_request(ctx, ctx->token, "POST", "/jobs", doc, &ans, &err) < 0;
    if (exists && err.status != 409)
        return api_error_print(&err);
    if (exists && api_request(ctx, ctx->token, "GET", path, NULL, &old, &err) < 0)
        return api_error_print(&err);
    if (exists && (json_object_set(json_object_get(doc, "metadata"), "resourceVersion",
                                   json_object_get(json_object_get(old, "metadata"), "resourceVersion")) < 0 ||
                   api_request(ctx, ctx->token, "PUT", path, doc, &ans, &err) < 0))
        return api_error_print(&err);
    char line[400];
    snprintf(line, sizeof(line), "job %s %s: digest %s; waiting for %s", a->name, exists ? "changed" : "proposed",
             str_at(ans, "status", "digest") ?: "-", "approvals (cloister job show)");
    return answer(ctx, ans, line);
}

static int list(cli_ctx *ctx)
{
    json_auto_t *ans = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", "/jobs", NULL, &ans, &err) < 0)
        return api_error_print(&err);
    const json_t *items = json_object_get(ans, "items");
    if (ctx->output != CLI_OUTPUT_TEXT)
        return (ctx->output == CLI_OUTPUT_JSON ? output_json(items) : output_yaml(items)) < 0 ? CLI_EXIT_FAILED
                                                                                               : CLI_EXIT_OK;
    return output_table(resource_kind_find("Job"), items, time(NULL)) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

static int show(cli_ctx *ctx, job_args *a)
{
    json_auto_t *job = NULL;
    int r = fetch_job(ctx, a->name, &job);
    if (r != CLI_EXIT_OK)
        return r;
    if (ctx->output != CLI_OUTPUT_TEXT)
        return answer(ctx, job, NULL);
    show_text(job);
    return CLI_EXIT_OK;
}

/* approve: checks the job here, signs its digest, sends the signature. */
static int approve(cli_ctx *ctx, job_args *a)
{
    json_auto_t *job = NULL, *ans = NULL;
    int r = fetch_job(ctx, a->name, &job);
    uint8_t digest[JOB_DIGEST_SIZE], sig[KEYFILE_SIGNATURE_SIZE];
    if (r == CLI_EXIT_OK)
        r = verify_here(ctx, job, a->pcr0, digest);
    if (r != CLI_EXIT_OK)
        return r;
    char msg[JOB_APPROVAL_MESSAGE_LEN + 1];
    job_approval_message(digest, msg);
    int e = keyfile_approval_sign(msg, JOB_APPROVAL_MESSAGE_LEN, sig);
    if (e < 0)
        return cli_error("cannot sign with the approval key: %s (run `cloister keys init` and `cloister keys "
                         "register`)", strerror(-e));
    char sig_b64[128], hex[2 * JOB_DIGEST_SIZE + 1], path[NAME_PATH_MAX];
    base64_encode(sig, sizeof(sig), sig_b64, false);
    hex_encode(digest, sizeof(digest), hex);
    json_auto_t *body = json_pack("{s:s, s:s}", "signature", sig_b64, "digest", hex);
    api_error err;
    snprintf(path, sizeof(path), "/jobs/%s/approvals", a->name);
    if (!body || api_request(ctx, ctx->token, "POST", path, body, &ans, &err) < 0)
        return body ? api_error_print(&err) : cli_error("out of memory");
    char line[400];
    snprintf(line, sizeof(line), "approved job %s (digest %s, checked here); state %s", a->name, hex,
             str_at(ans, "status", "state") ?: "-");
    return answer(ctx, ans, line);
}

/* reject, veto (with --reason) and revoke: one call on the job. */
static int sign_off(cli_ctx *ctx, const cli_command *cmd, job_args *a)
{
    bool revoke = strcmp(a->sub, "revoke") == 0;
    if (!revoke && !a->reason)
        return cli_usage_error(cmd, "job %s NAME --reason TEXT", a->sub);
    char path[NAME_PATH_MAX], line[400];
    snprintf(path, sizeof(path), "/jobs/%s/%s", a->name,
             revoke ? "approvals" : strcmp(a->sub, "veto") == 0 ? "vetoes" : "rejections");
    json_auto_t *body = revoke ? NULL : json_pack("{s:s}", "reason", a->reason), *ans = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, revoke ? "DELETE" : "POST", path, body, &ans, &err) < 0)
        return api_error_print(&err);
    snprintf(line, sizeof(line), "job %s: %s recorded; state %s", a->name,
             revoke ? "approval revoked" : strcmp(a->sub, "veto") == 0 ? "veto" : "rejection",
             str_at(ans, "status", "state") ?: "-");
    return answer(ctx, ans, line);
}

/* The run numbered N of JOB, or NULL. */
static const json_t *run_numbered(const json_t *job, json_int_t n)
{
    size_t i;
    const json_t *run;
    json_array_foreach(json_object_get(json_object_get(job, "status"), "runs"), i, run) if (
        json_integer_value(json_object_get(run, "n")) == n) return run;
    return NULL;
}

/* run NAME [--wait [--timeout S]]: starts a run (the author); with --wait
 * follows it to its end and fails unless it succeeded. */
static int run(cli_ctx *ctx, job_args *a)
{
    char path[NAME_PATH_MAX], line[900];
    snprintf(path, sizeof(path), "/jobs/%s/runs", a->name);
    json_auto_t *ans = NULL, *body = json_object();
    api_error err;
    if (api_request(ctx, ctx->token, "POST", path, body, &ans, &err) < 0)
        return api_error_print(&err);
    json_int_t n = json_integer_value(json_object_get(ans, "run"));
    if (!a->wait) {
        snprintf(line, sizeof(line), "job %s: run %lld started (cloister job show %s)", a->name, (long long)n,
                 a->name);
        return answer(ctx, ans, line);
    }
    uint64_t deadline = time_mono_ns() + (uint64_t)(a->timeout_s ? a->timeout_s : WAIT_DEFAULT_S) * NSEC_PER_SEC;
    for (;;) {
        json_auto_t *job = NULL;
        int r = fetch_job(ctx, a->name, &job);
        if (r != CLI_EXIT_OK)
            return r;
        const json_t *it = run_numbered(job, n);
        const char *state = json_string_value(json_object_get(it, "state")) ?: "running";
        if (strcmp(state, "running") != 0) {
            if (strcmp(state, "succeeded") == 0)
                snprintf(line, sizeof(line), "job %s: run %lld succeeded: result sha256 %s, %lld rows; receipt: "
                         "audit entry %lld (cloister job result %s -o FILE)", a->name, (long long)n,
                         str_at(it, "result", "sha256") ?: "-",
                         (long long)json_integer_value(json_object_get(json_object_get(it, "result"), "rows")),
                         (long long)json_integer_value(json_object_get(it, "receipt")), a->name);
            else
                snprintf(line, sizeof(line), "job %s: run %lld %s: %s", a->name, (long long)n, state,
                         json_string_value(json_object_get(it, "reason")) ?: "-");
            int out = answer(ctx, it, line);
            return strcmp(state, "succeeded") == 0 ? out : CLI_EXIT_FAILED;
        }
        if (time_mono_ns() > deadline)
            return cli_error("job %s: run %lld still runs after the --timeout; cloister job show %s follows it",
                             a->name, (long long)n, a->name);
        usleep(WAIT_POLL_MS * 1000);
    }
}

/* result NAME -o FILE [-i IDENTITY] [--run N]: downloads the encrypted
 * result and decrypts it with your age identity; FILE appears only once
 * all of it verified. */
static int result(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_RUN = 0x300 };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"identity", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},
        {"run", required_argument, NULL, OPT_RUN},
        {},
    };
    const char *identity = NULL, *out_path = NULL, *run_n = NULL;
    int c;
    optind = 0;
    /* here -o names the output file (as `dataset download -o`), not a format */
    while ((c = getopt_long(argc, argv, "hi:o:", options, NULL)) >= 0) {
        if (c == 'i' || c == 'o' || c == OPT_RUN) {
            *(c == 'i' ? &identity : c == 'o' ? &out_path : &run_n) = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 2 != argc || !out_path || (run_n && strspn(run_n, "0123456789") != strlen(run_n)))
        return cli_usage_error(cmd, "usage: job result NAME -o FILE [-i IDENTITY] [--run N]");
    const char *name = argv[optind + 1];
    age_identity *ids;
    size_t n;
    int r = keyfile_load_identities(identity, &ids, &n);
    if (r < 0)
        return cli_error("cannot read the identity file %s: %s%s", identity ? identity : "(keys/age-identity.txt)",
                         r == -EINVAL ? "it holds no AGE-SECRET-KEY-1 identity" : strerror(-r),
                         identity ? "" : " (run `cloister keys init`, or give -i FILE)");
    r = cli_connect(ctx, true);
    /* the ciphertext goes to an unnamed file first: nothing of it is kept */
    char tmp_dir[PATH_MAX];
    snprintf(tmp_dir, sizeof(tmp_dir), "%s", getenv("TMPDIR") ?: "/tmp");
    _cleanup_close_ int fd = r == CLI_EXIT_OK ? open(tmp_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) : -1;
    if (r == CLI_EXIT_OK && fd < 0)
        r = cli_error("cannot make a temporary file in %s: %s", tmp_dir, strerror(errno));
    char path[NAME_PATH_MAX], in_path[64];
    snprintf(path, sizeof(path), "/jobs/%s/result%s%s", name, run_n ? "?run=" : "", run_n ? run_n : "");
    api_error err;
    if (r == CLI_EXIT_OK && api_download(ctx, path, fd, &err) < 0)
        r = api_error_print(&err);
    snprintf(in_path, sizeof(in_path), "/proc/self/fd/%d", fd);
    if (r == CLI_EXIT_OK && lseek(fd, 0, SEEK_SET) < 0)
        r = cli_error("cannot read the downloaded result: %s", strerror(errno));
    if (r == CLI_EXIT_OK)
        r = ageio_run(in_path, out_path, &(ageio_keys){.identities = ids, .n = n});
    age_identities_free(ids, n);
    return r;
}

int cmd_job(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-') {
            if (strcmp(argv[i], "result") == 0)
                return result(ctx, cmd, argc, argv);
            break;
        }
    _cleanup_(job_args_clear) job_args a = {0};
    int r = parse(ctx, cmd, argc, argv, &a);
    if (r >= 0)
        return r;
    static const char *const subs[] = {"propose", "list", "show", "approve", "reject", "revoke", "veto", "run"};
    bool known = false;
    for (size_t i = 0; i < ELEMENTSOF(subs); i++)
        known |= strcmp(a.sub, subs[i]) == 0;
    if (!known)
        return cli_usage_error(cmd, "unknown subcommand \"%s\"", a.sub);
    r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    if (strcmp(a.sub, "propose") == 0)
        return propose(ctx, cmd, &a);
    if (strcmp(a.sub, "list") == 0)
        return list(ctx);
    if (strcmp(a.sub, "show") == 0)
        return show(ctx, &a);
    if (strcmp(a.sub, "approve") == 0)
        return approve(ctx, &a);
    if (strcmp(a.sub, "run") == 0)
        return run(ctx, &a);
    return sign_off(ctx, cmd, &a);
}
