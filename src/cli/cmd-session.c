/* login, logout, whoami: the saved session and who the server says we are. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

/* Reads a token from stdin: its first line, surrounding whitespace removed.
 * Returns a heap string the caller wipes and frees, or NULL. */
static char *read_token_stdin(void)
{
    char *data = NULL;
    size_t len;
    if (read_fd(STDIN_FILENO, 16 * 1024, &data, &len) < 0)
        return NULL;
    size_t start = 0, end = strcspn(data, "\r\n");
    while (start < end && (data[start] == ' ' || data[start] == '\t'))
        start++;
    while (end > start && (data[end - 1] == ' ' || data[end - 1] == '\t'))
        end--;
    char *token = strndup(data + start, end - start);
    explicit_bzero(data, len);
    free(data);
    return token;
}

/* Cleanup for heap strings holding a token: wipe, then free. */
static void wipe_free(char **p)
{
    if (*p) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
    }
}

/* Prints the whoami answer V for people: user, email, groups, credential. */
static void print_identity(const cli_ctx *ctx, const json_t *v)
{
    static const char *const fields[] = {"user", "email", "groups", "credential"};
    for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
        const json_t *f = json_object_get(v, fields[i]);
        char text[1024] = "", clean[1024];
        if (json_is_string(f))
            snprintf(text, sizeof(text), "%s", json_string_value(f));
        else if (json_is_array(f)) {
            size_t j, o = 0;
            const json_t *g;
            json_array_foreach(f, j, g) {
                if (json_is_string(g) && o < sizeof(text))
                    o += (size_t)snprintf(text + o, sizeof(text) - o, "%s%s", j ? "," : "",
                                          json_string_value(g));
            }
        }
        printf("%-12s%s\n", fields[i], text[0] ? text_sanitize(text, clean, sizeof(clean)) : "<none>");
    }
    printf("%-12s%s\n", "server", ctx->server);
}

/* Prints a whoami answer in the chosen output format; returns an exit status. */
static int print_answer(const cli_ctx *ctx, const json_t *v)
{
    int r = 0;
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(v);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(v);
    else
        print_identity(ctx, v);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

int cmd_login(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        {"token", required_argument, NULL, 't'},
        CLI_COMMON_LONG_OPTIONS,
        {},
    };
    const char *token_arg = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "t:" CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        if (c == 't')
            token_arg = optarg;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (!token_arg)
        return cli_usage_error(cmd, "login needs --token TOKEN (or --token - to read it from stdin)");

    _cleanup_(wipe_free) char *token = strcmp(token_arg, "-") == 0 ? read_token_stdin()
                                                                   : strdup(token_arg);
    if (!token)
        return cli_error("cannot read the token");
    if (!cli_token_valid(token))
        return cli_usage_error(cmd, "the token must be 1-8192 printable characters without spaces");
    int r = cli_connect(ctx, false);
    if (r != CLI_EXIT_OK)
        return r;

    json_auto_t *who = NULL;
    api_error err;
    if (api_request(ctx, token, "GET", "/whoami", NULL, &who, &err) < 0) {
        if (err.status == 401)
            return cli_error("the server refused the token: %s", err.message);
        return api_error_print(&err);
    }
    if (!json_is_string(json_object_get(who, "user")))
        return cli_error("the server's answer to /v1/whoami names no user");

    /* Save the CA as an absolute path: the session is used from anywhere. */
    _cleanup_free_ char *ca = NULL;
    if (ctx->ca && !(ca = realpath(ctx->ca, NULL)))
        return cli_error("cannot resolve the CA file %s: %m", ctx->ca);
    cli_session s = {.server = ctx->server, .ca = ca, .token = token};
    r = session_save(&s);
    if (r < 0) {
        _cleanup_free_ char *path = NULL;
        session_path(&path);
        return cli_error("cannot save the session to %s: %s", path ? path : "$XDG_CONFIG_HOME",
                         strerror(-r));
    }
    if (ctx->output != CLI_OUTPUT_TEXT)
        return print_answer(ctx, who);
    char clean[512];
    printf("logged in to %s as %s\n", ctx->server,
           text_sanitize(json_string_value(json_object_get(who, "user")), clean, sizeof(clean)));
    return CLI_EXIT_OK;
}

int cmd_logout(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {CLI_COMMON_LONG_OPTIONS, {}};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0)
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    int r = session_remove();
    if (r == -ENOENT) {
        printf("not logged in\n");
        return CLI_EXIT_OK;
    }
    if (r < 0)
        return cli_error("cannot remove the session file: %s", strerror(-r));
    printf("logged out\n");
    return CLI_EXIT_OK;
}

int cmd_whoami(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {CLI_COMMON_LONG_OPTIONS, {}};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0)
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *who = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", "/whoami", NULL, &who, &err) < 0)
        return api_error_print(&err);
    return print_answer(ctx, who);
}
