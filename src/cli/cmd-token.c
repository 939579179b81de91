/* token create: a new credential token for an existing Credential. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"

/* `cloister token create CREDENTIAL`: asks the server for a fresh clst_
 * token (POST /v1/tokens), which replaces the credential's previous one.
 * The token is printed once, on its own last line; the server keeps only
 * its digest. */
int cmd_token(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind >= argc || strcmp(argv[optind], "create") != 0)
        return cli_usage_error(cmd, "the only subcommand is: token create CREDENTIAL");
    if (optind + 2 != argc)
        return cli_usage_error(cmd, "token create takes exactly one credential name");
    const char *name = argv[optind + 1];
    if (!resource_name_valid(name))
        return cli_usage_error(cmd, "\"%s\" is not a valid credential name", name);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *body = json_pack("{s:s}", "credential", name), *answer = NULL;
    api_error err;
    if (!body)
        return cli_error("out of memory");
    if (api_request(ctx, ctx->token, "POST", "/tokens", body, &answer, &err) < 0)
        return api_error_print(&err);
    const char *token = json_string_value(json_object_get(answer, "token"));
    if (!token || !cli_token_valid(token))
        return cli_error("the server's answer holds no token");
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(answer);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(answer);
    else {
        char clean[256];
        fprintf(stderr, "new token of credential %s (it replaces the previous one and is not shown again):\n",
                text_sanitize(name, clean, sizeof(clean)));
        r = printf("%s\n", token) < 0 ? -EIO : 0;
    }
    explicit_bzero((char *)token, strlen(token));
    return r < 0 ? cli_error("cannot print the token: %s", strerror(-r)) : CLI_EXIT_OK;
}
