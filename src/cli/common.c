#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/output.h"
#include "resource/schema.h"

#define TOKEN_MAX 8192

int cli_error(const char *fmt, ...)
{
    char msg[2048], clean[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "error: %s\n", text_sanitize(msg, clean, sizeof(clean)));
    return CLI_EXIT_FAILED;
}

int cli_usage_error(const cli_command *cmd, const char *why, ...)
{
    if (why) {
        char msg[1024], clean[1024];
        va_list ap;
        va_start(ap, why);
        vsnprintf(msg, sizeof(msg), why, ap);
        va_end(ap);
        fprintf(stderr, "error: %s\n", text_sanitize(msg, clean, sizeof(clean)));
    }
    fprintf(stderr, "usage: cloister %s %s\n", cmd->name, cmd->synopsis);
    return CLI_EXIT_USAGE;
}

int cli_parse_output(const char *arg, cli_output *ret)
{
    if (strcmp(arg, "json") == 0)
        *ret = CLI_OUTPUT_JSON;
    else if (strcmp(arg, "yaml") == 0)
        *ret = CLI_OUTPUT_YAML;
    else if (strcmp(arg, "wide") == 0)
        *ret = CLI_OUTPUT_WIDE;
    else if (strcmp(arg, "name") == 0)
        *ret = CLI_OUTPUT_NAME;
    else
        return -EINVAL;
    return 0;
}

bool cli_output_allowed(const cli_command *cmd, cli_output output)
{
    return (output != CLI_OUTPUT_WIDE && output != CLI_OUTPUT_NAME) || strcmp(cmd->name, "get") == 0;
}

int cli_common_option(cli_ctx *ctx, const cli_command *cmd, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_SERVER:
        ctx->server_flag = arg;
        return -1;
    case CLI_OPT_CA:
        ctx->ca_flag = arg;
        return -1;
    case 'o':
        if (cli_parse_output(arg, &ctx->output) < 0 || !cli_output_allowed(cmd, ctx->output))
            return cli_usage_error(cmd, "-o takes json or yaml%s, not \"%s\"",
                                   strcmp(cmd->name, "get") == 0 ? ", wide or name" : "", arg);
        return -1;
    case 'h':
        printf("usage: cloister %s %s\n  %s\n", cmd->name, cmd->synopsis, cmd->summary);
        return CLI_EXIT_OK;
    default: /* getopt_long already said what is wrong */
        return cli_usage_error(cmd, NULL);
    }
}

bool cli_token_valid(const char *token)
{
    size_t n = strlen(token);
    if (n == 0 || n > TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (token[i] <= 0x20 || token[i] >= 0x7f)
            return false;
    return true;
}

bool cli_server_url_valid(const char *url)
{
    return schema_string_matches(FORMAT_HTTPS_URL, url, strlen(url)) && !strchr(url, '?');
}

/* A copy of URL without trailing slashes, or NULL on ENOMEM. */
static char *url_normalize(const char *url)
{
    char *p = strdup(url);
    if (!p)
        return NULL;
    size_t n = strlen(p);
    while (n > STRLEN("https://") && p[n - 1] == '/')
        p[--n] = 0;
    return p;
}

/* The environment variable NAME, unless unset or empty. */
static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* Loads the saved session into CTX. When it exists but cannot be used,
 * explains why (unless QUIET) and returns CLI_EXIT_FAILED. */
static int load_session(cli_ctx *ctx, bool quiet, bool *ret_have)
{
    int r = session_load(&ctx->session);
    *ret_have = r == 0;
    if (r == 0 || r == -ENOENT)
        return CLI_EXIT_OK;
    if (quiet)
        return CLI_EXIT_FAILED;
    _cleanup_free_ char *path = NULL;
    session_path(&path);
    if (r == -EPERM)
        return cli_error("refusing the session file %s: it is not a file of yours readable only "
                         "by you (chmod 600 it, or log in again)",
                         path ? path : "");
    if (r == -EINVAL)
        return cli_error("the session file %s is malformed; log in again", path ? path : "");
    return cli_error("cannot read the session file %s: %s", path ? path : "", strerror(-r));
}

int cli_connect(cli_ctx *ctx, bool need_token)
{
    bool have_session;
    /* login (!need_token) replaces a session it cannot read */
    int r = load_session(ctx, !need_token, &have_session);
    if (r != CLI_EXIT_OK && need_token)
        return r;

    const char *server = ctx->server_flag;
    if (!server)
        server = env_nonempty("CLOISTER_SERVER");
    if (!server && have_session)
        server = ctx->session.server;
    if (!server)
        server = CLI_DEFAULT_SERVER;
    if (!cli_server_url_valid(server)) {
        cli_error("invalid server URL \"%s\": it must be https://HOST[:PORT][/PATH]", server);
        return CLI_EXIT_USAGE;
    }
    _cleanup_free_ char *session_server = have_session ? url_normalize(ctx->session.server) : NULL;
    ctx->server = url_normalize(server);
    if (!ctx->server || (have_session && !session_server))
        return cli_error("out of memory");
    bool same_server = session_server && strcmp(session_server, ctx->server) == 0;

    const char *ca = ctx->ca_flag;
    if (!ca)
        ca = env_nonempty("CLOISTER_CA");
    if (!ca && same_server)
        ca = ctx->session.ca;
    if (ca) {
        if (access(ca, R_OK) < 0)
            return cli_error("cannot read the CA file %s: %m", ca);
        if (!(ctx->ca = strdup(ca)))
            return cli_error("out of memory");
    }
    if (!need_token)
        return CLI_EXIT_OK;

    const char *token = env_nonempty("CLOISTER_TOKEN");
    if (token && !cli_token_valid(token)) {
        cli_error("CLOISTER_TOKEN is not a valid token");
        return CLI_EXIT_USAGE;
    }
    if (!token && same_server)
        token = ctx->session.access_token ? ctx->session.access_token : ctx->session.token;
    if (!token) {
        if (have_session)
            return cli_error("not logged in to %s (the saved session is for %s); run: "
                             "cloister --server %s login --token TOKEN",
                             ctx->server, ctx->session.server, ctx->server);
        return cli_error("not logged in; run: cloister login --token TOKEN");
    }
    if (!(ctx->token = strdup(token)))
        return cli_error("out of memory");
    return CLI_EXIT_OK;
}

void cli_ctx_done(cli_ctx *ctx)
{
    if (ctx->token) {
        explicit_bzero(ctx->token, strlen(ctx->token));
        free(ctx->token);
    }
    free(ctx->server);
    free(ctx->ca);
    session_done(&ctx->session);
    ctx->token = ctx->server = ctx->ca = NULL;
}

int cli_parse_common(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {CLI_COMMON_LONG_OPTIONS, {}};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0)
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    return -1;
}
