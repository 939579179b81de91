/* cloister enclave: workload bundles (`enclave measure DIR`) and what
 * running Enclaves print (`enclave logs NAME [-f]`). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "basic/encoding.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"
#include "resource/resource.h"
#include "sandbox/measure.h"

#define LOGS_FOLLOW_EVERY_MS 1000 /* between reads while following */
#define LOGS_TAIL_MAX 1000

static int enclave_measure(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    int c = cli_parse_common(ctx, cmd, argc, argv);
    if (c >= 0)
        return c;
    if (argc - optind != 1)
        return cli_usage_error(cmd, "enclave measure takes one bundle directory");
    uint8_t digest[48];
    char hex[97];
    measure_error err = {{0}};
    if (bundle_measure(argv[optind], digest, &err) < 0)
        return cli_error("cannot measure the bundle: %s", err.text);
    hex_encode(digest, sizeof(digest), hex);
    if (ctx->output == CLI_OUTPUT_JSON)
        printf("{\"pcr0\":\"%s\"}\n", hex);
    else
        printf("%s\n", hex);
    return CLI_EXIT_OK;
}

/* Prints the lines of one answer: "<replica> <text>" for people (text from
 * the workload cleaned for the terminal), one JSON object per line with
 * -o json. */
static void print_lines(const cli_ctx *ctx, const json_t *lines)
{
    size_t i;
    const json_t *l;
    json_array_foreach(lines, i, l)
    {
        if (ctx->output != CLI_OUTPUT_TEXT) {
            char *text = json_dumps(l, JSON_COMPACT);
            if (text)
                printf("%s\n", text);
            free(text);
            continue;
        }
        char replica[128], text[3 * 4096 + 1];
        text_sanitize(json_string_value(json_object_get(l, "replica")) ?: "", replica, sizeof(replica));
        text_sanitize(json_string_value(json_object_get(l, "text")) ?: "", text, sizeof(text));
        printf("%s %s\n", replica, text);
    }
    fflush(stdout);
}

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* `cloister enclave logs NAME [-f] [--replica R] [--tail N]`: the last N
 * lines (default 100) of the Enclave's replicas, oldest first; with -f,
 * then every new line until interrupted (reading again every second from
 * the cursor of the last answer). */
static int enclave_logs(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_REPLICA = 0x200, OPT_TAIL };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"follow", no_argument, NULL, 'f'},
        {"replica", required_argument, NULL, OPT_REPLICA},
        {"tail", required_argument, NULL, OPT_TAIL},
        {},
    };
    const char *replica = NULL;
    bool follow = false;
    long tail = 100;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS "f", options, NULL)) >= 0) {
        char *end;
        switch (c) {
        case 'f':
            follow = true;
            break;
        case OPT_REPLICA:
            replica = optarg;
            break;
        case OPT_TAIL:
            errno = 0;
            tail = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || tail < 0 || tail > LOGS_TAIL_MAX)
                return cli_usage_error(cmd, "--tail takes a number of lines from 0 to %d", LOGS_TAIL_MAX);
            break;
        default:
            if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
                return c;
        }
    }
    if (argc - optind != 1)
        return cli_usage_error(cmd, "enclave logs takes the name of one Enclave");
    const char *name = argv[optind];
    if (!resource_name_valid(name))
        return cli_usage_error(cmd, "%s is not an Enclave's name", name);
    if (replica && !resource_name_valid(replica))
        return cli_usage_error(cmd, "--replica takes a replica's name (%s-1, ...)", name);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    char path[512], cursor[64] = "";
    snprintf(path, sizeof(path), "/enclaves/%s/logs?tail=%ld%s%s", name, tail, replica ? "&replica=" : "",
             replica ? replica : "");
    if (follow) {
        struct sigaction sa = {.sa_handler = on_interrupt};
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    }
    for (;;) {
        json_auto_t *answer = NULL;
        api_error err;
        if (api_request(ctx, ctx->token, "GET", path, NULL, &answer, &err) < 0)
            return interrupted ? CLI_EXIT_OK : api_error_print(&err);
        const char *next = json_string_value(json_object_get(answer, "cursor"));
        if (!json_is_array(json_object_get(answer, "lines")) || !next || strlen(next) >= sizeof(cursor) ||
            strspn(next, "0123456789abcdef.") != strlen(next))
            return cli_error("the server's answer holds no lines and cursor");
        if (!follow && ctx->output != CLI_OUTPUT_TEXT) {
            if (ctx->output == CLI_OUTPUT_JSON)
                output_json(answer);
            else
                output_yaml(answer);
            return CLI_EXIT_OK;
        }
        print_lines(ctx, json_object_get(answer, "lines"));
        if (!follow)
            return CLI_EXIT_OK;
        if (strcmp(next, cursor) != 0) {
            snprintf(cursor, sizeof(cursor), "%s", next);
            snprintf(path, sizeof(path), "/enclaves/%s/logs?after=%s%s%s", name, cursor,
                     replica ? "&replica=" : "", replica ? replica : "");
        }
        struct timespec pause = {.tv_sec = LOGS_FOLLOW_EVERY_MS / 1000,
                                 .tv_nsec = (LOGS_FOLLOW_EVERY_MS % 1000) * 1000000L};
        if (!interrupted)
            nanosleep(&pause, NULL); /* an interrupt ends it at once (no SA_RESTART) */
        if (interrupted)
            return CLI_EXIT_OK;
    }
}

int cmd_enclave(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "measure") == 0)
        return enclave_measure(ctx, cmd, argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "logs") == 0)
        return enclave_logs(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, argc >= 2 ? "unknown enclave command \"%s\"" : "which enclave command?",
                           argc >= 2 ? argv[1] : "");
}
