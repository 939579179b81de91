/* get and delete: reading (once, or watching) and removing resources by
 * kind and name. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/manifest.h"
#include "resource/resource.h"

/* Resolves the KIND argument; prints a usage error listing the kinds when
 * it is unknown. Returns an exit status. */
static int parse_kind(const cli_command *cmd, const char *arg, const resource_kind **ret)
{
    const resource_kind *k = resource_kind_find(arg);
    if (k) {
        *ret = k;
        return CLI_EXIT_OK;
    }
    char list[512];
    strbuf b;
    strbuf_init_static(&b, list, sizeof(list));
    for (size_t i = 0; (k = resource_kind_get(i)); i++)
        strbuf_printf(&b, "%s%s", i ? ", " : "", k->plural);
    return cli_usage_error(cmd, "unknown kind \"%s\"; the kinds are: %s", arg, list);
}

/* Checks the NAME argument (it becomes a URL segment). Returns an exit status. */
static int parse_name(const cli_command *cmd, const char *arg)
{
    if (resource_name_valid(arg))
        return CLI_EXIT_OK;
    return cli_usage_error(cmd, "invalid name \"%s\": names are DNS-1123 labels (at most 63 "
                                "lower-case letters, digits and '-')",
                           arg);
}

/* Parses the options (the common ones and FLAG, -SHORT or --LONG, into
 * *RET_FLAG) and the positional arguments of get/delete into ARGS (at most
 * MAX, at least MIN). Returns -1 to go on, or an exit status. */
static int parse_args(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, size_t min, size_t max,
                      const struct option *flag, bool *ret_flag, const char **args, size_t *ret_n)
{
    const struct option options[] = {*flag, CLI_COMMON_LONG_OPTIONS, {}};
    char shorts[8] = "";
    if (flag->val < 0x100)
        shorts[0] = (char)flag->val;
    strcat(shorts, CLI_COMMON_SHORT_OPTIONS);
    int c;
    *ret_flag = false;
    optind = 0;
    while ((c = getopt_long(argc, argv, shorts, options, NULL)) >= 0) {
        if (c == flag->val)
            *ret_flag = true;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    size_t n = (size_t)(argc - optind);
    if (n < min)
        return cli_usage_error(cmd, n == 0 ? "missing KIND" : "missing NAME");
    if (n > max)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind + (int)max]);
    for (size_t i = 0; i < n; i++)
        args[i] = argv[optind + (int)i];
    *ret_n = n;
    return -1;
}

/* What a `get -w` prints each event with. */
typedef struct watch_print {
    cli_ctx *ctx;
    const resource_kind *kind;
    const char *name; /* only this one, or NULL */
} watch_print;

/* Prints one event of a watch: "ADDED service/wiki (resourceVersion 12)"
 * (-o name: "service/wiki"; -o json: the event, one compact line; -o yaml:
 * the event as a document). Returns 0, or -EIO when stdout is gone. */
static int print_event(const char *type, const json_t *data, void *userdata)
{
    watch_print *w = userdata;
    const json_t *obj = json_object_get(data, "object");
    const char *name = json_string_value(json_object_get(json_object_get(obj, "metadata"), "name"));
    if (!name || (w->name && strcmp(name, w->name) != 0))
        return 0;
    char label[128], clean[256];
    output_kind_name(w->kind->kind, name, label, sizeof(label));
    text_sanitize(label, clean, sizeof(clean));
    if (w->ctx->output == CLI_OUTPUT_JSON) {
        _cleanup_free_ char *text = json_dumps(data, JSON_COMPACT);
        if (text)
            printf("%s\n", text);
    } else if (w->ctx->output == CLI_OUTPUT_YAML)
        output_yaml(data);
    else if (w->ctx->output == CLI_OUTPUT_NAME)
        printf("%s\n", clean);
    else {
        const char *rv = json_string_value(json_object_get(json_object_get(obj, "metadata"), "resourceVersion"));
        char t[32];
        printf("%-9s %s%s%s%s\n", text_sanitize(type, t, sizeof(t)), clean, rv ? " (resourceVersion " : "",
               rv ? text_sanitize(rv, t, sizeof(t)) : "", rv ? ")" : "");
    }
    return fflush(stdout) == 0 ? 0 : -EIO;
}

/* get -w: every current resource of KIND (or NAME alone) as ADDED, then
 * each change as it comes, until the server ends the stream. Returns an
 * exit status. */
static int watch(cli_ctx *ctx, const resource_kind *k, const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "/%s?watch=1", k->plural);
    watch_print w = {.ctx = ctx, .kind = k, .name = name};
    api_error err;
    int r = api_watch(ctx, path, print_event, &w, &err);
    if (r == -EIO)
        return cli_error("cannot write the output");
    return r < 0 ? api_error_print(&err) : CLI_EXIT_OK;
}

int cmd_get(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    const char *args[2];
    size_t n;
    const resource_kind *k = NULL;
    bool follow;
    const struct option watch_flag = {"watch", no_argument, NULL, 'w'};
    int r = parse_args(ctx, cmd, argc, argv, 1, 2, &watch_flag, &follow, args, &n);
    if (r >= 0)
        return r;
    if ((r = parse_kind(cmd, args[0], &k)) != CLI_EXIT_OK)
        return r;
    if (n == 2 && (r = parse_name(cmd, args[1])) != CLI_EXIT_OK)
        return r;
    if ((r = cli_connect(ctx, true)) != CLI_EXIT_OK)
        return r;
    if (follow)
        return watch(ctx, k, n == 2 ? args[1] : NULL);

    char path[128];
    snprintf(path, sizeof(path), "/%s%s%s", k->plural, n == 2 ? "/" : "", n == 2 ? args[1] : "");
    json_auto_t *answer = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", path, NULL, &answer, &err) < 0)
        return api_error_print(&err);

    /* A list prints as its items, one YAML document each; -o json keeps the List. */
    json_t *items = n == 2 ? NULL : json_object_get(answer, "items");
    if (n == 1 && !json_is_array(items))
        return cli_error("the server's answer to GET /v1%s has no items", path);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(answer);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(n == 2 ? answer : items);
    else if (ctx->output == CLI_OUTPUT_NAME) {
        size_t i;
        const json_t *item;
        json_array_foreach(n == 2 ? NULL : items, i, item) {
            char label[128], clean[256];
            output_kind_name(k->kind, json_string_value(json_object_get(json_object_get(item, "metadata"), "name")) ?: "",
                             label, sizeof(label));
            printf("%s\n", text_sanitize(label, clean, sizeof(clean)));
        }
        if (n == 2) {
            char label[128];
            printf("%s\n", output_kind_name(k->kind, args[1], label, sizeof(label)));
        }
        r = 0;
    } else if (n == 1 && json_array_size(items) == 0) {
        fprintf(stderr, "no %s found\n", k->plural);
        r = 0;
    } else {
        json_auto_t *one = n == 2 ? json_pack("[O]", answer) : NULL;
        if (n == 2 && !one)
            return cli_error("out of memory");
        r = output_table_wide(k, n == 2 ? one : items, (int64_t)(time_now_ns() / NSEC_PER_SEC),
                              ctx->output == CLI_OUTPUT_WIDE);
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

int cmd_delete(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    const char *args[2];
    size_t n;
    const resource_kind *k = NULL;
    bool force;
    const struct option force_flag = {"force", no_argument, NULL, 0x200};
    int r = parse_args(ctx, cmd, argc, argv, 2, 2, &force_flag, &force, args, &n);
    if (r >= 0)
        return r;
    if ((r = parse_kind(cmd, args[0], &k)) != CLI_EXIT_OK || (r = parse_name(cmd, args[1])) != CLI_EXIT_OK)
        return r;
    if ((r = cli_connect(ctx, true)) != CLI_EXIT_OK)
        return r;

    char path[128];
    snprintf(path, sizeof(path), "/%s/%s%s", k->plural, args[1], force ? "?force=1" : "");
    json_auto_t *answer = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "DELETE", path, NULL, &answer, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(answer);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(answer);
    else {
        char label[128];
        printf("%s deleted\n", output_kind_name(k->kind, args[1], label, sizeof(label)));
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* Prints V as YAML below TITLE, each line indented by two spaces. Returns
 * 0 or a negative errno. */
static int print_yaml_section(const char *title, const json_t *v)
{
    _cleanup_strbuf_ strbuf text;
    strbuf_init(&text, (size_t)16 << 20);
    int r = yaml_emit_json(v, &text);
    if (r < 0)
        return r;
    printf("%s:\n", title);
    char *save = NULL;
    for (char *line = strtok_r(text.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strcmp(line, "---") == 0)
            continue;
        char clean[4096];
        printf("  %s\n", text_sanitize(line, clean, sizeof(clean)));
    }
    return 0;
}

/* Prints the referrers of REFS (GET .../referrers) whose kind is KIND
 * (NULL: any but SKIP_KIND) under TITLE; returns how many. */
static size_t print_referrers(const char *title, const json_t *refs, const char *kind, const char *skip_kind)
{
    size_t i, shown = 0;
    const json_t *r;
    json_array_foreach(json_object_get(refs, "referrers"), i, r) {
        const char *rk = json_string_value(json_object_get(r, "kind")) ?: "";
        if ((kind && strcmp(rk, kind) != 0) || (skip_kind && strcmp(rk, skip_kind) == 0))
            continue;
        if (shown++ == 0)
            printf("%s:\n", title);
        char label[128], clean[256], field[128];
        output_kind_name(rk, json_string_value(json_object_get(r, "name")) ?: "", label, sizeof(label));
        printf("  %-40s %s\n", text_sanitize(label, clean, sizeof(clean)),
               text_sanitize(json_string_value(json_object_get(r, "field")) ?: "", field, sizeof(field)));
    }
    return shown;
}

int cmd_describe(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (argc - optind != 2)
        return cli_usage_error(cmd, argc - optind < 2 ? "describe needs KIND and NAME" : "unexpected argument \"%s\"",
                               argv[MIN(argc - 1, optind + 2)]);
    const resource_kind *k = NULL;
    int r;
    const char *name = argv[optind + 1];
    if ((r = parse_kind(cmd, argv[optind], &k)) != CLI_EXIT_OK || (r = parse_name(cmd, name)) != CLI_EXIT_OK)
        return r;
    if ((r = cli_connect(ctx, true)) != CLI_EXIT_OK)
        return r;
    char path[160];
    json_auto_t *obj = NULL, *refs = NULL;
    api_error err;
    snprintf(path, sizeof(path), "/%s/%s", k->plural, name);
    if (api_request(ctx, ctx->token, "GET", path, NULL, &obj, &err) < 0)
        return api_error_print(&err);
    snprintf(path, sizeof(path), "/%s/%s/referrers", k->plural, name);
    if (api_request(ctx, ctx->token, "GET", path, NULL, &refs, &err) < 0)
        return api_error_print(&err);

    if (ctx->output == CLI_OUTPUT_JSON || ctx->output == CLI_OUTPUT_YAML) {
        json_auto_t *out = json_pack("{s:O, s:O}", "object", obj, "referrers", json_object_get(refs, "referrers"));
        if (!out)
            return cli_error("out of memory");
        r = ctx->output == CLI_OUTPUT_JSON ? output_json(out) : output_yaml(out);
        return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
    }
    const json_t *meta = json_object_get(obj, "metadata");
    char clean[512];
    printf("Kind:             %s\nName:             %s\n", k->kind, name);
    static const char *const fields[][2] = {
        {"uid", "UID"}, {"resourceVersion", "Resource version"}, {"createdAt", "Created"}, {"updatedAt", "Updated"}};
    for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
        const char *v = json_string_value(json_object_get(meta, fields[i][0]));
        if (v)
            printf("%-17s %s\n", fields[i][1], text_sanitize(v, clean, sizeof(clean)));
    }
    const json_t *labels = json_object_get(meta, "labels");
    if (json_object_size(labels) > 0)
        r = print_yaml_section("Labels", labels);
    const json_t *spec = json_object_get(obj, "spec");
    if (r == 0 && json_object_size(spec) > 0)
        r = print_yaml_section("Spec", spec);
    const json_t *status = json_object_get(obj, "status");
    if (r == 0)
        r = json_object_size(status) > 0 ? print_yaml_section("Status", status) : (printf("Status: <none>\n"), 0);
    if (r < 0)
        return cli_error("cannot print the answer: %s", strerror(-r));

    /* who refers to it, said as people ask it */
    size_t shown;
    if (strcmp(k->kind, "Group") == 0) {
        if (print_referrers("Members", refs, "User", NULL) == 0)
            printf("Members: <none>\n");
        shown = print_referrers("Referenced by", refs, NULL, "User");
    } else
        shown = print_referrers(strcmp(k->kind, "Policy") == 0 ? "Used by" : "Referenced by", refs, NULL, NULL);
    if (shown == 0 && strcmp(k->kind, "Group") != 0)
        printf("%s: <none>\n", strcmp(k->kind, "Policy") == 0 ? "Used by" : "Referenced by");
    json_int_t total = json_integer_value(json_object_get(refs, "total"));
    if (json_is_true(json_object_get(refs, "truncated")))
        printf("  ... %lld referrers in all; the first %zu are shown\n", (long long)total,
               json_array_size(json_object_get(refs, "referrers")));
    return CLI_EXIT_OK;
}
