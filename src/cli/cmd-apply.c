/* apply and diff: validate every document of the given manifests locally,
 * then send them all in one request to the server's all-or-nothing
 * endpoint, for real or as a dry run (?dryRun=1: decided and checked the
 * same way, nothing written). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "policy/policy.h"
#include "resource/manifest.h"
#include "resource/resource.h"

#define APPLY_MAX_FILES 64
/* Invalid documents reported before giving up on the rest. */
#define APPLY_MAX_REPORTS 20

typedef struct source {
    const char *name; /* as shown in messages: the path, or <stdin> */
    char *data;
    size_t len;
    manifest m;
} source;

/* Where document INDEX of the request came from. */
typedef struct origin {
    const source *src;
    size_t doc; /* index in src->m */
} origin;

/* Frees the data and manifests of the first N sources. */
static void sources_free(source *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        manifest_free(&s[i].m);
        free(s[i].data);
    }
}

/* Reads and parses PATH ("-": stdin) into S; prints why and returns an
 * exit status on failure. */
static int source_load(source *s, const char *path)
{
    s->name = strcmp(path, "-") == 0 ? "<stdin>" : path;
    int r = strcmp(path, "-") == 0 ? read_fd(STDIN_FILENO, MANIFEST_MAX_SIZE, &s->data, &s->len)
                                   : read_file(path, MANIFEST_MAX_SIZE, &s->data, &s->len);
    if (r == -EFBIG)
        return cli_error("%s: a manifest must be at most %zu MiB", s->name, MANIFEST_MAX_SIZE >> 20);
    if (r < 0)
        return cli_error("cannot read %s: %s", s->name, strerror(-r));
    resource_error err;
    if (manifest_parse(s->data, s->len, &s->m, &err) < 0)
        return cli_error("%s: %s: %s", s->name, err.path, err.message);
    return CLI_EXIT_OK;
}

/* "Service/wiki" for DOC, or "" when it has no usable kind or name. */
static const char *doc_label(const json_t *doc, char *buf, size_t size)
{
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    if (!kind || !name)
        return "";
    snprintf(buf, size, " (%s/%s)", kind, name);
    return buf;
}

/* Prints "FILE:LINE: document N (Kind/name): [SHOWN: ]MESSAGE", LINE being
 * where the field at PATH is; returns CLI_EXIT_FAILED. */
static int report(const origin *o, const char *path, const char *shown, const char *message)
{
    const manifest_document *d = &o->src->m.docs[o->doc];
    unsigned line = manifest_field_line(o->src->data, o->src->len, &o->src->m, o->doc, path);
    char label[300];
    return cli_error("%s:%u: document %zu%s: %s%s%s", o->src->name, line, o->doc + 1,
                     doc_label(d->value, label, sizeof(label)), shown, shown[0] ? ": " : "", message);
}

/* Validates every document; refuses two documents naming the same resource.
 * Returns an exit status. */
static int validate_all(const origin *origins, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n && bad < APPLY_MAX_REPORTS; i++) {
        const json_t *doc = origins[i].src->m.docs[origins[i].doc].value;
        resource_error err;
        if (resource_validate(doc, &err) < 0) {
            report(&origins[i], err.path, err.path, err.message);
            bad++;
            continue;
        }
        policy_problem pp;
        if (policy_validate_document(doc, &pp) == -EINVAL) {
            char msg[600];
            snprintf(msg, sizeof(msg), "%u:%u: %s", pp.line, pp.column, pp.message);
            report(&origins[i], pp.field, pp.field, msg);
            bad++;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            const json_t *other = origins[j].src->m.docs[origins[j].doc].value;
            if (json_equal(json_object_get(doc, "kind"), json_object_get(other, "kind")) &&
                json_equal(json_object_get(json_object_get(doc, "metadata"), "name"),
                           json_object_get(json_object_get(other, "metadata"), "name"))) {
                char msg[512];
                snprintf(msg, sizeof(msg), "the same resource as document %zu of %s",
                         origins[j].doc + 1, origins[j].src->name);
                report(&origins[i], "metadata.name", "metadata.name", msg);
                bad++;
                break;
            }
        }
    }
    return bad ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

/* Prints "service/wiki created" for each item of the answer ("(dry run)"
 * after it for a dry run); with DIFF, the field-level diff of each item
 * that would change instead. Returns 0 or -ENOMEM. */
static int print_results(const json_t *answer, bool diff)
{
    bool dry_run = json_is_true(json_object_get(answer, "dryRun"));
    size_t i, changed = 0;
    const json_t *item;
    json_array_foreach(json_object_get(answer, "items"), i, item) {
        const char *kind = json_string_value(json_object_get(item, "kind"));
        const char *name = json_string_value(json_object_get(item, "name"));
        const char *action = json_string_value(json_object_get(item, "action"));
        char label[300], clean[512];
        output_kind_name(kind ? kind : "?", name ? name : "?", label, sizeof(label));
        if (!diff) {
            char line[400];
            snprintf(line, sizeof(line), "%s %s%s", label, action ? action : "applied", dry_run ? " (dry run)" : "");
            printf("%s\n", text_sanitize(line, clean, sizeof(clean)));
        } else if (!action || strcmp(action, "unchanged") != 0) {
            changed++;
            int r = output_diff(label, json_object_get(item, "before"), json_object_get(item, "after"));
            if (r < 0)
                return r;
            if (r == 0) /* a Secret's values are not shown, so a change of them has no line */
                printf(" (values that are not shown change)\n");
        }
    }
    if (diff && changed == 0)
        fprintf(stderr, "no changes\n");
    return 0;
}

/* Prints the answer's warnings on stderr, "warning: ..." each. */
static void print_warnings(const json_t *answer)
{
    size_t i;
    const json_t *w;
    json_array_foreach(json_object_get(answer, "warnings"), i, w) {
        char clean[1024];
        fprintf(stderr, "warning: %s\n", text_sanitize(json_string_value(w) ?: "", clean, sizeof(clean)));
    }
}

/* Sends the N validated documents in one POST /v1/apply (?dryRun=1 with
 * DRY_RUN) and prints the outcome (DIFF: as diffs); a refused document is
 * named by file, line and field. Returns an exit status. */
static int apply(cli_ctx *ctx, const origin *origins, size_t n, bool dry_run, bool diff)
{
    json_auto_t *items = json_array();
    json_auto_t *body = json_pack("{s:O}", "items", items);
    if (!items || !body)
        return cli_error("out of memory");
    for (size_t i = 0; i < n; i++)
        if (json_array_append(items, origins[i].src->m.docs[origins[i].doc].value) < 0)
            return cli_error("out of memory");

    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *answer = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "POST", dry_run ? "/apply?dryRun=1" : "/apply", body, &answer, &err) < 0) {
        if (err.document >= 0 && (size_t)err.document < n) {
            /* the field names where to look; the message says it again */
            char msg[sizeof(err.field) + sizeof(err.message) + 2];
            return report(&origins[err.document], err.field, "",
                          api_error_message(&err, msg, sizeof(msg)));
        }
        return api_error_print(&err);
    }
    print_warnings(answer);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(answer);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(answer);
    else
        r = print_results(answer, diff);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

static int apply_files(cli_ctx *ctx, const char *const *files, size_t n_files, bool dry_run, bool diff);

enum { OPT_DRY_RUN = 0x200 };

/* apply and diff: -f FILE... and (apply) --dry-run. */
static int apply_command(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, bool diff)
{
    static const struct option options[] = {
        {"filename", required_argument, NULL, 'f'},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        CLI_COMMON_LONG_OPTIONS,
        {},
    };
    const char *files[APPLY_MAX_FILES];
    size_t n_files = 0;
    bool stdin_used = false, dry_run = diff;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "f:" CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_DRY_RUN && !diff)
            dry_run = true;
        else if (c == OPT_DRY_RUN)
            return cli_usage_error(cmd, "diff is always a dry run");
        else if (c == 'f') {
            if (n_files == APPLY_MAX_FILES)
                return cli_usage_error(cmd, "at most %d files at once", APPLY_MAX_FILES);
            if (strcmp(optarg, "-") == 0) {
                if (stdin_used)
                    return cli_usage_error(cmd, "-f - can be given only once");
                stdin_used = true;
            }
            files[n_files++] = optarg;
        } else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (n_files == 0)
        return cli_usage_error(cmd, "%s needs -f FILE (or -f - for stdin)", cmd->name);
    return apply_files(ctx, files, n_files, dry_run, diff);
}

int cmd_apply(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    return apply_command(ctx, cmd, argc, argv, false);
}

int cmd_diff(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    return apply_command(ctx, cmd, argc, argv, true);
}

/* Loads, validates and applies FILES (as apply() does). Returns an exit status. */
static int apply_files(cli_ctx *ctx, const char *const *files, size_t n_files, bool dry_run, bool diff)
{
    source sources[APPLY_MAX_FILES] = {};
    _cleanup_free_ origin *origins = NULL;
    size_t n = 0;
    int r = CLI_EXIT_OK;
    for (size_t i = 0; i < n_files && r == CLI_EXIT_OK; i++) {
        r = source_load(&sources[i], files[i]);
        if (r == CLI_EXIT_OK && n + sources[i].m.n_docs > MANIFEST_MAX_DOCUMENTS)
            r = cli_error("at most %d documents can be applied at once", MANIFEST_MAX_DOCUMENTS);
        if (r != CLI_EXIT_OK)
            break;
        origin *grown = realloc(origins, (n + sources[i].m.n_docs + 1) * sizeof(*grown));
        if (!grown) {
            r = cli_error("out of memory");
            break;
        }
        origins = grown;
        for (size_t d = 0; d < sources[i].m.n_docs; d++)
            origins[n++] = (origin){&sources[i], d};
    }
    if (r == CLI_EXIT_OK && n == 0)
        r = cli_error("no documents in %s%s", sources[0].name, n_files > 1 ? " and the other files" : "");
    if (r == CLI_EXIT_OK)
        r = validate_all(origins, n);
    if (r == CLI_EXIT_OK)
        r = apply(ctx, origins, n, dry_run, diff);
    sources_free(sources, n_files);
    return r;
}
