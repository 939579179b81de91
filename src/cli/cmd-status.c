/* status: what the server's /readyz says: each role and its replicas, the
 * KMS seal, the store, the audit log, and what is not ready. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

/* Prints the /readyz answer V for people. Server text goes through
 * text_sanitize() (no terminal control). */
static void print_status(const cli_ctx *ctx, const json_t *v)
{
    char a[256], b[256];
    printf("%-10s%s\n", "server", ctx->server);
    printf("%-10s%s\n", "status",
           strcmp(json_string_value(json_object_get(v, "status")) ?: "", "ok") == 0 ? "ready" : "not ready");
    printf("roles:\n");
    const char *name;
    json_t *state;
    json_object_foreach(json_object_get(v, "roles"), name, state) {
        json_int_t n = json_integer_value(json_object_get(json_object_get(v, "replicas"), name));
        printf("  %-8s %-10s %lld replica%s\n", text_sanitize(name, a, sizeof(a)),
               text_sanitize(json_string_value(state) ?: "?", b, sizeof(b)), (long long)n, n == 1 ? "" : "s");
    }
    const json_t *seal = json_object_get(v, "seal"), *store = json_object_get(v, "store");
    printf("%-10s%s (%s)\n", "seal",
           text_sanitize(json_string_value(json_object_get(seal, "mode")) ?: "?", a, sizeof(a)),
           json_is_true(json_object_get(seal, "sealed")) ? "sealed: run cloisterd unseal" : "unsealed");
    printf("%-10s%s (%s)\n", "store",
           text_sanitize(json_string_value(json_object_get(store, "driver")) ?: "?", a, sizeof(a)),
           json_is_true(json_object_get(store, "reachable")) ? "reachable" : "unreachable");
    printf("%-10s%s\n", "audit",
           json_is_true(json_object_get(json_object_get(v, "audit"), "reachable")) ? "reachable" : "unreachable");
    const json_t *problems = json_object_get(v, "problems");
    if (json_array_size(problems) == 0)
        return;
    printf("not ready:\n");
    size_t i;
    const json_t *p;
    json_array_foreach(problems, i, p)
        printf("  %s\n", text_sanitize(json_string_value(p) ?: "?", a, sizeof(a)));
}

int cmd_status(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    int r = cli_connect(ctx, false);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *v = NULL;
    long status = 0;
    api_error err;
    if (api_health(ctx, "/readyz", &status, &v, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(v);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(v);
    else
        print_status(ctx, v);
    if (r < 0)
        return cli_error("cannot print the answer: %s", strerror(-r));
    return status == 200 ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}
