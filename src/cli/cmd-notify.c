/* cloister notifications: one's own notifications listed, watched and
 * marked read; one's webhook URLs and signing secret
 * (/v1/notifications, docs/notifications.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

#define READ_IDS_MAX 500 /* what one POST /v1/notifications/read takes */

/* One notification as a line for people: id, type, Kind/name, when, read. */
static void print_line(const json_t *n)
{
    char id[64], type[64], kind[96], name[300], at[48];
    const char *fields[] = {"id", "type", "kind", "name", "createdAt"};
    char *outs[] = {id, type, kind, name, at};
    size_t sizes[] = {sizeof(id), sizeof(type), sizeof(kind), sizeof(name), sizeof(at)};
    for (size_t i = 0; i < ELEMENTSOF(fields); i++)
        text_sanitize(json_string_value(json_object_get(n, fields[i])) ?: "", outs[i], sizes[i]);
    char object[400];
    snprintf(object, sizeof(object), "%s%s%s", kind, kind[0] ? "/" : "", name);
    printf("%-42s %-22s %-28s %-24s %s\n", id, type, object, at,
           json_is_true(json_object_get(n, "read")) ? "read" : "unread");
}

static int print_value(const cli_ctx *ctx, const json_t *v)
{
    int r = ctx->output == CLI_OUTPUT_JSON ? output_json(v) : output_yaml(v);
    return r < 0 ? cli_error("cannot print the answer: %s", strerror(-r)) : CLI_EXIT_OK;
}

static int list(cli_ctx *ctx, bool unread)
{
    json_auto_t *ans = NULL;
    api_error err;
    const char *path = unread ? "/notifications?unread=1" : "/notifications";
    if (api_request(ctx, ctx->token, "GET", path, NULL, &ans, &err) < 0)
        return api_error_print(&err);
    if (ctx->output != CLI_OUTPUT_TEXT)
        return print_value(ctx, ans);
    const json_t *items = json_object_get(ans, "items");
    if (json_array_size(items) == 0) {
        printf(unread ? "no unread notifications\n" : "no notifications\n");
        return CLI_EXIT_OK;
    }
    printf("%-42s %-22s %-28s %-24s %s\n", "ID", "TYPE", "OBJECT", "CREATED", "STATE");
    size_t i;
    const json_t *n;
    json_array_foreach(items, i, n)
    {
        print_line(n);
    }
    return CLI_EXIT_OK;
}

/* What a watch prints each notification with. */
typedef struct watch_print {
    cli_ctx *ctx;
    bool unread;
} watch_print;

/* Prints one ADDED notification (-o json: one compact JSON object a line). */
static int print_added(const char *type, const json_t *v, void *userdata)
{
    watch_print *w = userdata;
    if (strcmp(type, "ADDED") != 0 || (w->unread && json_is_true(json_object_get(v, "read"))))
        return 0;
    if (w->ctx->output == CLI_OUTPUT_TEXT)
        print_line(v);
    else if (w->ctx->output == CLI_OUTPUT_JSON) {
        char *text = json_dumps(v, JSON_COMPACT);
        if (text)
            printf("%s\n", text);
        free(text);
    } else
        output_yaml(v);
    fflush(stdout);
    return 0;
}

/* Prints each new notification as it comes (ADDED events) until the server
 * ends the stream. */
static int watch(cli_ctx *ctx, bool unread)
{
    if (ctx->output == CLI_OUTPUT_TEXT)
        printf("%-42s %-22s %-28s %-24s %s\n", "ID", "TYPE", "OBJECT", "CREATED", "STATE");
    fflush(stdout);
    watch_print w = {.ctx = ctx, .unread = unread};
    api_error err;
    if (api_watch(ctx, "/notifications?watch=1", print_added, &w, &err) < 0)
        return api_error_print(&err); /* "the stream ended: WHY" for an ERROR event */
    return CLI_EXIT_OK;
}

static int mark_read(cli_ctx *ctx, int argc, char **argv)
{
    if (argc == 0)
        return cli_error("name the notifications to mark read (their ids, as `cloister notifications` lists them)");
    if (argc > READ_IDS_MAX)
        return cli_error("at most %d ids at once", READ_IDS_MAX);
    json_auto_t *ids = json_array();
    for (int i = 0; ids && i < argc; i++)
        json_array_append_new(ids, json_string(argv[i]));
    json_auto_t *body = ids ? json_pack("{s:O}", "ids", ids) : NULL, *ans = NULL;
    api_error err;
    if (!body)
        return cli_error("out of memory");
    if (api_request(ctx, ctx->token, "POST", "/notifications/read", body, &ans, &err) < 0)
        return api_error_print(&err);
    if (ctx->output != CLI_OUTPUT_TEXT)
        return print_value(ctx, ans);
    printf("marked %zu notification%s read\n", json_array_size(json_object_get(ans, "read")),
           json_array_size(json_object_get(ans, "read")) == 1 ? "" : "s");
    return CLI_EXIT_OK;
}

/* Shows the webhook URLs, or sets them (URLS; CLEAR: none). */
static int webhooks(cli_ctx *ctx, int argc, char **argv, bool clear)
{
    json_auto_t *ans = NULL, *body = NULL;
    api_error err;
    int r;
    if (argc == 0 && !clear)
        r = api_request(ctx, ctx->token, "GET", "/notifications/webhooks", NULL, &ans, &err);
    else {
        json_t *urls = json_array();
        for (int i = 0; urls && i < argc; i++)
            json_array_append_new(urls, json_string(argv[i]));
        body = urls ? json_pack("{s:o}", "webhooks", urls) : NULL;
        if (!body)
            return cli_error("out of memory");
        r = api_request(ctx, ctx->token, "PUT", "/notifications/webhooks", body, &ans, &err);
    }
    if (r < 0)
        return api_error_print(&err);
    if (ctx->output != CLI_OUTPUT_TEXT)
        return print_value(ctx, ans);
    const json_t *urls = json_object_get(ans, "webhooks");
    if (json_array_size(urls) == 0)
        printf("no webhooks\n");
    size_t i;
    const json_t *u;
    json_array_foreach(urls, i, u)
    {
        char clean[2100];
        printf("%s\n", text_sanitize(json_string_value(u) ?: "", clean, sizeof(clean)));
    }
    return CLI_EXIT_OK;
}

/* Prints the caller's webhook signing secret (made on first use; ROTATE
 * makes a new one). */
static int webhook_secret(cli_ctx *ctx, bool rotate)
{
    json_auto_t *ans = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "POST", rotate ? "/notifications/webhook-secret?rotate=1"
                                                    : "/notifications/webhook-secret", NULL, &ans, &err) < 0)
        return api_error_print(&err);
    json_t *secret = json_object_get(ans, "secret");
    int rc = CLI_EXIT_OK;
    if (ctx->output != CLI_OUTPUT_TEXT)
        rc = print_value(ctx, ans);
    else if (json_is_string(secret) && strncmp(json_string_value(secret), "whsec_", 6) == 0)
        printf("%s\n", json_string_value(secret));
    else
        rc = cli_error("the server's answer holds no webhook secret");
    if (json_is_string(secret))
        explicit_bzero((char *)json_string_value(secret), json_string_length(secret));
    return rc;
}

int cmd_notify(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_WATCH = 0x200, OPT_UNREAD, OPT_ROTATE, OPT_CLEAR };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"watch", no_argument, NULL, OPT_WATCH},
        {"unread", no_argument, NULL, OPT_UNREAD},
        {"rotate", no_argument, NULL, OPT_ROTATE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {},
    };
    bool watching = false, unread = false, rotate = false, clear = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS "w", options, NULL)) >= 0) {
        if (c == OPT_WATCH || c == 'w')
            watching = true;
        else if (c == OPT_UNREAD)
            unread = true;
        else if (c == OPT_ROTATE)
            rotate = true;
        else if (c == OPT_CLEAR)
            clear = true;
        else if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    const char *sub = optind < argc ? argv[optind] : NULL;
    bool is_webhooks = sub && strcmp(sub, "webhooks") == 0, is_secret = sub && strcmp(sub, "webhook-secret") == 0;
    if (rotate && !is_secret)
        return cli_usage_error(cmd, "--rotate goes with webhook-secret only");
    if (clear && (!is_webhooks || optind + 1 < argc))
        return cli_usage_error(cmd, "--clear goes with webhooks, without URLs");
    if ((watching || unread) && sub)
        return cli_usage_error(cmd, "--watch and --unread go with the list only (cloister notifications)");
    if (sub && !is_webhooks && !is_secret && strcmp(sub, "read") != 0)
        return cli_usage_error(cmd, "unknown subcommand \"%s\"", sub);
    if (is_secret && optind + 1 < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind + 1]);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    if (!sub)
        return watching ? watch(ctx, unread) : list(ctx, unread);
    if (is_webhooks)
        return webhooks(ctx, argc - optind - 1, argv + optind + 1, clear);
    if (is_secret)
        return webhook_secret(ctx, rotate);
    return mark_read(ctx, argc - optind - 1, argv + optind + 1);
}
