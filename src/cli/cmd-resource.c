/* get and delete: reading and removing resources by kind and name. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
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

/* Parses the common options and the positional arguments of get/delete
 * into ARGS (at most MAX, at least MIN). Returns -1 to go on, or an exit status. */
static int parse_args(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv, size_t min,
                      size_t max, const char **args, size_t *ret_n)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
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

int cmd_get(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    const char *args[2];
    size_t n;
    const resource_kind *k;
    int r = parse_args(ctx, cmd, argc, argv, 1, 2, args, &n);
    if (r >= 0)
        return r;
    if ((r = parse_kind(cmd, args[0], &k)) != CLI_EXIT_OK)
        return r;
    if (n == 2 && (r = parse_name(cmd, args[1])) != CLI_EXIT_OK)
        return r;
    if ((r = cli_connect(ctx, true)) != CLI_EXIT_OK)
        return r;

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
    else if (n == 1 && json_array_size(items) == 0) {
        fprintf(stderr, "no %s found\n", k->plural);
        r = 0;
    } else {
        json_auto_t *one = n == 2 ? json_pack("[O]", answer) : NULL;
        if (n == 2 && !one)
            return cli_error("out of memory");
        r = output_table(k, n == 2 ? one : items, (int64_t)(time_now_ns() / NSEC_PER_SEC));
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

int cmd_delete(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    const char *args[2];
    size_t n;
    const resource_kind *k;
    int r = parse_args(ctx, cmd, argc, argv, 2, 2, args, &n);
    if (r >= 0)
        return r;
    if ((r = parse_kind(cmd, args[0], &k)) != CLI_EXIT_OK || (r = parse_name(cmd, args[1])) != CLI_EXIT_OK)
        return r;
    if ((r = cli_connect(ctx, true)) != CLI_EXIT_OK)
        return r;

    char path[128];
    snprintf(path, sizeof(path), "/%s/%s", k->plural, args[1]);
    json_auto_t *answer = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "DELETE", path, NULL, &answer, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(answer);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(answer);
    else {
        char lower[64];
        snprintf(lower, sizeof(lower), "%s", k->kind);
        for (char *p = lower; *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        printf("%s/%s deleted\n", lower, args[1]);
    }
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}
