/* age encrypt: encrypts a file (or stdin) to age recipients ("age1…") or to
 * the user's own identity, with Cloister's age library; the standard `age`
 * tool decrypts the result. -o FILE appears only once complete. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "age/age.h"
#include "cli/ageio.h"
#include "cli/cli.h"
#include "cli/keyfiles.h"

#define RECIPIENTS_MAX 64

/* encrypt -r RECIPIENT... | --self [-o FILE] [IN] */
static int encrypt(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_SELF = 0x200 };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"recipient", required_argument, NULL, 'r'},
        {"self", no_argument, NULL, OPT_SELF},
        {"out", required_argument, NULL, 'o'},
        {},
    };
    age_recipient rs[RECIPIENTS_MAX];
    size_t n = 0;
    bool self = false;
    const char *out_path = NULL;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "hr:o:", options, NULL)) >= 0) {
        if (c == 'r') {
            if (n == RECIPIENTS_MAX)
                return cli_usage_error(cmd, "at most %d recipients", RECIPIENTS_MAX);
            if (age_recipient_parse(optarg, &rs[n]) < 0)
                return cli_usage_error(cmd, "not an age X25519 recipient: \"%s\" (expected age1...)", optarg);
            n++;
            continue;
        }
        if (c == OPT_SELF) {
            self = true;
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
    if (self) {
        age_identity *ids;
        size_t k;
        int r = keyfile_load_identities(NULL, &ids, &k);
        if (r < 0)
            return cli_error("cannot read the age identity: %s (run `cloister keys init`)", strerror(-r));
        if (n < RECIPIENTS_MAX)
            age_identity_recipient(&ids[0], &rs[n++]);
        age_identities_free(ids, k);
    }
    if (n == 0)
        return cli_usage_error(cmd, "missing -r RECIPIENT (or --self)");
    const char *in_path = optind < argc ? argv[optind] : NULL;
    return ageio_run(in_path, out_path, &(ageio_keys){.recipients = rs, .n = n});
}

int cmd_age(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(cmd, "missing a subcommand (encrypt)");
    if (strcmp(argv[1], "encrypt") == 0)
        return encrypt(ctx, cmd, argc - 1, argv + 1);
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", argv[1]);
}
