/* cloister's entry point: the global options, then the command of the
 * table (cloister.c) named by the first argument. */
#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int main(int argc, char **argv)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"version", no_argument, NULL, 'V'},
        {},
    };
    _cleanup_(cli_ctx_done) cli_ctx ctx = {};
    int c;
    while ((c = getopt_long(argc, argv, "+" CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        switch (c) {
        case 'h':
            cli_usage(stdout);
            return CLI_EXIT_OK;
        case 'V':
            printf("cloister %s\n", CLOISTER_VERSION);
            return CLI_EXIT_OK;
        case CLI_OPT_SERVER:
            ctx.server_flag = optarg;
            break;
        case CLI_OPT_CA:
            ctx.ca_flag = optarg;
            break;
        case 'o':
            if (cli_parse_output(optarg, &ctx.output) == 0)
                break;
            fprintf(stderr, "error: -o takes json, yaml, wide or name (the last two: get only)\n");
            cli_usage(stderr);
            return CLI_EXIT_USAGE;
        default:
            cli_usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        cli_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        cli_usage(stdout);
        return CLI_EXIT_OK;
    }
    const cli_command *cmd = NULL, *k;
    for (size_t i = 0; (k = cli_command_get(i)) && !cmd; i++)
        if (strcmp(name, k->name) == 0)
            cmd = k;
    if (!cmd) {
        fprintf(stderr, "error: unknown command \"%s\"\n", name);
        cli_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!cli_output_allowed(cmd, ctx.output))
        return cli_usage_error(cmd, "-o wide and -o name are for get only");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "error: cannot initialise libcurl\n");
        return CLI_EXIT_FAILED;
    }
    int r = cmd->run(&ctx, cmd, argc - optind, argv + optind);
    curl_global_cleanup();
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "error: cannot write the output: %m\n");
        return CLI_EXIT_FAILED;
    }
    return r;
}
