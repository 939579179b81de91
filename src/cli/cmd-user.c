/* user invite | user passkeys: local login without an identity provider
 * (docs/auth.md, "Passkeys"). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "basic/macro.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"

/* Prints ANSWER as -o asks, or with TEXT (a function printing the human
 * form) by default. */
static int print_answer(cli_ctx *ctx, const json_t *answer, int (*text)(const json_t *answer))
{
    int r = ctx->output == CLI_OUTPUT_JSON ? output_json(answer)
            : ctx->output == CLI_OUTPUT_YAML ? output_yaml(answer)
                                             : text(answer);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

static int invite_text(const json_t *a)
{
    char user[256], exp[64];
    text_sanitize(json_string_value(json_object_get(a, "user")) ?: "", user, sizeof(user));
    text_sanitize(json_string_value(json_object_get(a, "expiresAt")) ?: "", exp, sizeof(exp));
    fprintf(stderr, "%sinvitation for user %s, valid until %s, usable once; send this link to them:\n",
            json_is_true(json_object_get(a, "userCreated")) ? "user created; " : "", user, exp);
    return printf("%s\n", json_string_value(json_object_get(a, "url")) ?: "") < 0 ? -EIO : 0;
}

static int revoke_text(const json_t *a)
{
    char user[256];
    return printf("invitation of user %s revoked\n",
                  text_sanitize(json_string_value(json_object_get(a, "user")) ?: "", user, sizeof(user))) < 0
               ? -EIO
               : 0;
}

static int passkeys_text(const json_t *a)
{
    json_t *list = json_object_get(a, "passkeys"), *pk;
    size_t i;
    if (printf("%-44s %-22s %-22s %s\n", "ID", "CREATED", "LAST USED", "SIGN COUNT") < 0)
        return -EIO;
    json_array_foreach(list, i, pk)
    {
        char id[128], created[64], used[64];
        text_sanitize(json_string_value(json_object_get(pk, "id")) ?: "", id, sizeof(id));
        text_sanitize(json_string_value(json_object_get(pk, "createdAt")) ?: "-", created, sizeof(created));
        text_sanitize(json_string_value(json_object_get(pk, "lastUsedAt")) ?: "-", used, sizeof(used));
        if (printf("%-44s %-22s %-22s %lld\n", id, created, used,
                   (long long)json_integer_value(json_object_get(pk, "signCount"))) < 0)
            return -EIO;
    }
    return 0;
}

static int deleted_text(const json_t *a)
{
    char id[128];
    return printf("passkey %s deleted\n", text_sanitize(json_string_value(json_object_get(a, "id")) ?: "", id, sizeof(id))) <
                   0
               ? -EIO
               : 0;
}

/* `cloister user invite NAME [--email E] [--revoke]` and `cloister user
 * passkeys NAME [--delete ID]`. The invitation link is printed once, on
 * stdout; the server keeps only its digest. */
int cmd_user(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_EMAIL = 0x200, OPT_REVOKE, OPT_DELETE };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"email", required_argument, NULL, OPT_EMAIL},
        {"revoke", no_argument, NULL, OPT_REVOKE},
        {"delete", required_argument, NULL, OPT_DELETE},
        {},
    };
    const char *email = NULL, *del = NULL;
    bool revoke = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == OPT_EMAIL)
            email = optarg;
        else if (c == OPT_REVOKE)
            revoke = true;
        else if (c == OPT_DELETE)
            del = optarg;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 2 != argc)
        return cli_usage_error(cmd, optind + 2 > argc ? "missing: user invite NAME | user passkeys NAME"
                                                      : "unexpected argument \"%s\"", argv[MIN(optind + 2, argc - 1)]);
    const char *sub = argv[optind], *name = argv[optind + 1];
    bool invite = strcmp(sub, "invite") == 0, passkeys = strcmp(sub, "passkeys") == 0;
    if (!invite && !passkeys)
        return cli_usage_error(cmd, "unknown subcommand \"%s\" (invite or passkeys)", sub);
    if (!resource_name_valid(name))
        return cli_usage_error(cmd, "\"%s\" is not a valid user name", name);
    if ((email || revoke) && !invite)
        return cli_usage_error(cmd, "--email and --revoke go with invite");
    if (del && !passkeys)
        return cli_usage_error(cmd, "--delete goes with passkeys");
    if (email && revoke)
        return cli_usage_error(cmd, "--email and --revoke exclude each other");
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    char path[512];
    json_auto_t *body = NULL, *answer = NULL;
    api_error err;
    if (invite) {
        snprintf(path, sizeof(path), "/users/%s/invite", name);
        body = email ? json_pack("{s:s}", "email", email) : json_object();
        if (!body)
            return cli_error("out of memory");
        if (api_request(ctx, ctx->token, revoke ? "DELETE" : "POST", path, revoke ? NULL : body, &answer, &err) < 0)
            return api_error_print(&err);
        r = print_answer(ctx, answer, revoke ? revoke_text : invite_text);
        json_t *url = json_object_get(answer, "url");
        if (url)
            explicit_bzero((char *)json_string_value(url), json_string_length(url));
        return r;
    }
    if (del) {
        size_t n = strlen(del);
        if (n == 0 || n > 340 || strspn(del, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != n)
            return cli_usage_error(cmd, "\"%s\" is not a passkey id (base64url, as `user passkeys NAME` lists)", del);
        snprintf(path, sizeof(path), "/users/%s/passkeys?id=%s", name, del);
    } else
        snprintf(path, sizeof(path), "/users/%s/passkeys", name);
    if (api_request(ctx, ctx->token, del ? "DELETE" : "GET", path, NULL, &answer, &err) < 0)
        return api_error_print(&err);
    return print_answer(ctx, answer, del ? deleted_text : passkeys_text);
}
