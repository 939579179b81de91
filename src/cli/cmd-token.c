/* token create: a new credential token for an existing Credential; token
 * access: a fresh access token of the saved session. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"

#define ACCESS_MIN_VALID_S 120 /* `token access` refreshes a token with less left */

/* `cloister token access`: prints an access token of the saved session with
 * at least ACCESS_MIN_VALID_S left, refreshing the session when needed
 * (for `curl -H "Authorization: Bearer $(cloister token access)"`). */
static int token_access(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (optind + 1 != argc)
        return cli_usage_error(cmd, "token access takes no argument");
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    if (!ctx->session.refresh_token || !ctx->session.access_token || strcmp(ctx->token, ctx->session.access_token))
        return cli_error("token access needs a session: run cloister login --token TOKEN (or --idp NAME) first; a "
                         "credential token (CLOISTER_TOKEN) is exchanged at POST /v1/auth/token");
    api_error err;
    if (cli_session_fresh(ctx, ACCESS_MIN_VALID_S, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_TEXT)
        r = printf("%s\n", ctx->token) < 0 ? -EIO : 0;
    else {
        int64_t exp = 0;
        cli_token_expiry(ctx->token, &exp);
        json_auto_t *v = json_pack("{s:s, s:s, s:I}", "access_token", ctx->token, "token_type", "Bearer", "expires_at",
                                   (json_int_t)exp);
        r = !v ? -ENOMEM : ctx->output == CLI_OUTPUT_JSON ? output_json(v) : output_yaml(v);
        if (v)
            explicit_bzero((char *)json_string_value(json_object_get(v, "access_token")), strlen(ctx->token));
    }
    return r < 0 ? cli_error("cannot print the token: %s", strerror(-r)) : CLI_EXIT_OK;
}

/* `cloister token create CREDENTIAL`: asks the server for a fresh clst_
 * token (POST /v1/tokens), which replaces the credential's previous one.
 * The token is printed once, on its own last line; the server keeps only
 * its digest. */
int cmd_token(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (optind < argc && strcmp(argv[optind], "access") == 0)
        return token_access(ctx, cmd, argc, argv);
    if (optind >= argc || strcmp(argv[optind], "create") != 0)
        return cli_usage_error(cmd, "token takes create CREDENTIAL, or access");
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
