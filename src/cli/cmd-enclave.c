/* cloister enclave: workload bundles (`enclave measure DIR`). */
#include <string.h>

#include "basic/encoding.h"
#include "cli/cli.h"
#include "sandbox/measure.h"

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

int cmd_enclave(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "measure") == 0)
        return enclave_measure(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, argc >= 2 ? "unknown enclave command \"%s\"" : "which enclave command?",
                           argc >= 2 ? argv[1] : "");
}
