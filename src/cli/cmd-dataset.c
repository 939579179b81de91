/* dataset decrypt: an age file (a dataset or a job's result) decrypted on
 * this machine with the user's identity (keys/age-identity.txt) or the
 * identity file of -i. With -o FILE the plaintext appears only once the
 * whole file verified (written to a temporary, renamed); on stdout each
 * 64 KiB chunk is written once its tag verified, so after a failure (exit
 * 1) stdout may hold the leading chunks of a truncated or corrupted file:
 * use -o where that matters. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "age/age.h"
#include "cli/ageio.h"
#include "cli/cli.h"
#include "cli/keyfiles.h"

/* decrypt [-i IDENTITY]... [-o FILE] [IN] */
static int decrypt(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"identity", required_argument, NULL, 'i'},
        {"out", required_argument, NULL, 'o'},
        {},
    };
    const char *identity = NULL, *out_path = NULL;
    int c;
    optind = 0;
    /* here -o names the output file (as `dataset download -o`), not a format */
    while ((c = getopt_long(argc, argv, "hi:o:", options, NULL)) >= 0) {
        if (c == 'i') {
            identity = optarg;
            continue;
        }
        if (c == 'o') {
            out_path = optarg;
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind + 1 < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind + 1]);
    const char *in_path = optind < argc ? argv[optind] : NULL;
    age_identity *ids;
    size_t n;
    int r = keyfile_load_identities(identity, &ids, &n);
    if (r < 0)
        return cli_error("cannot read the identity file %s: %s%s", identity ? identity : "(keys/age-identity.txt)",
                         r == -EINVAL ? "it holds no AGE-SECRET-KEY-1 identity" : strerror(-r),
                         identity ? "" : " (run `cloister keys init`, or give -i FILE)");
    r = ageio_run(in_path, out_path, &(ageio_keys){.identities = ids, .n = n});
    age_identities_free(ids, n);
    return r;
}

int cmd_dataset(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(cmd, "missing a subcommand (decrypt)");
    if (strcmp(argv[1], "decrypt") == 0)
        return decrypt(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", argv[1]);
}
