/* cloister: the command-line client of the Cloister control plane.
 * Global options, then a command from the table below; each command parses
 * its own arguments and returns the exit status. */
#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "resource/resource.h"

static const cli_command commands[] = {
    {"login", "--token TOKEN|- | --idp NAME",
     "open a session with a credential token or through an identity provider (browser); save it (0600)",
     cmd_login},
    {"logout", "", "revoke the saved session on the server and forget it", cmd_logout},
    {"whoami", "[-o json|yaml]", "show the user, groups and credential the server sees", cmd_whoami},
    {"apply", "-f FILE|- [-f FILE]... [-o json|yaml]",
     "create or update every resource of the manifests, all or nothing", cmd_apply},
    {"get", "KIND [NAME] [-o json|yaml]", "list the resources of a kind, or show one", cmd_get},
    {"delete", "KIND NAME", "delete a resource", cmd_delete},
    {"token", "create CREDENTIAL [-o json|yaml] | access",
     "make a new token for a credential (replacing its old one; shown once); print a fresh access token of your "
     "session (refreshed when it has less than 2 minutes left)", cmd_token},
    {"services", "[-o json|yaml]", "list the services policy lets you reach: URL and how to connect", cmd_services},
    {"connect", "SERVICE [--listen 127.0.0.1:PORT]",
     "forward a local plain-HTTP listener to SERVICE through the proxy with your session (kept fresh); exits 1 "
     "once the session has ended", cmd_connect},
    {"audit", "checkpoint|verify|export|show [--key VKEY|FILE]",
     "verify the signed audit log (verify [--bundle FILE]), export proofs (export --from N --to M "
     "[--out FILE]), read entries (show [--action A] [--user U] [--service S] [--decision allow|deny]: proxy "
     "access batches are shown one request a line)", cmd_audit},
    {"attest", "verify --type nitro|sev-snp|tdx|sandbox --evidence FILE [--cert FILE] [--roots PEM] [--crl FILE]... [--at RFC3339]\n"
               "         attest service NAME --roots PEM [--pcr0 HEX]... [--proxy https://HOST:PORT] [--domain D]",
     "verify TEE evidence offline; exit 0 only when it verifies", cmd_attest},
    {"enclave", "measure DIR | logs NAME [-f] [--replica R] [--tail N]",
     "print a workload bundle's measurement (PCR0, SHA-384); print (or follow with -f) the recent stdout and "
     "stderr of an Enclave's replicas", cmd_enclave},
    {"policy", "check --user U [--service S] [--method M] [--path P] [--header K=V]... [--ip IP] [--credential C] [--verb V --kind K [--name N]] [-o json|yaml]",
     "show how the server's policies decide a request and which rule decides; exit 0 only when allowed", cmd_policy},
    {"kms", "encrypt --key NAME [--context K=V]... | decrypt [--context K=V]... | datakey --key NAME | rotate NAME | "
            "version NAME N enabled|disabled|destroyed [--after SECONDS]",
     "encrypt stdin to stdout, decrypt it, make a data key (JSON: plaintext, ciphertext), rotate a key, set a "
     "version's state (destroyed: scheduled at least a day ahead; enabled or disabled cancel it)",
     cmd_kms},
    {"keys", "init [--force] | show [-o json|yaml] | register",
     "make your approval key (Ed25519) and age identity in $XDG_CONFIG_HOME/cloister/keys/ (0600), show their "
     "public halves, or publish them on your user (status.publicKeys)", cmd_keys},
    {"workspace", "create NAME --member USER... [--approvals owners|all]",
     "create a workspace; the KMS makes its key, whose age recipient datasets are encrypted to", cmd_workspace},
    {"dataset", "upload NAME --workspace W --file F.csv [--schema COL:TYPE,...] | download NAME -o FILE |\n"
                "         decrypt [-i IDENTITY] [-o FILE] [IN]",
     "check a CSV against its schema, encrypt it here to the workspace and to you, and upload the ciphertext; "
     "download the ciphertext; decrypt an age file with your identity (or -i FILE); -o FILE appears only once "
     "all of it verified, while stdout may get the leading chunks of a file that then fails", cmd_dataset},
    {"age", "encrypt -r RECIPIENT... | --self [-o FILE] [IN]",
     "encrypt a file to age recipients (age1...) with Cloister's age library", cmd_age},
    {"job", "propose NAME --workspace W --query SQL|--query-file F --input D... [--recipient U...] [--max-runs N] "
            "[--not-after T] |\n"
            "         list | show NAME | approve NAME [--pcr0 HEX] | reject NAME --reason R | revoke NAME |\n"
            "         veto NAME --reason R | run NAME [--wait [--timeout S]] | result NAME -o FILE [-i ID] [--run N]",
     "propose a query over a workspace's datasets (again: a new digest, approvals cleared); show what it covers and "
     "who must approve; approve it (the digest recomputed here, then signed with your approval key); reject it; "
     "withdraw your approval; veto it as an owner of an input; run it (its author, once every approval verifies); "
     "download its encrypted result and decrypt it with your identity", cmd_job},
    {"notifications", "[--watch] [--unread] | read ID... | webhooks [URL...|--clear] | webhook-secret [--rotate]",
     "list your notifications (newest first), or stream new ones as they come; mark them read; set the URLs they "
     "are POSTed to (Standard Webhooks) and show the secret that signs them", cmd_notify},
    /* Each later command group (token, policy, audit, attest, kms, enclave,
     * dataset, job, workspace) is one entry here, implemented in its own
     * cmd-<group>.c. */
};

/* The program's usage: synopsis, the command table, kinds, environment. */
static void usage(FILE *f)
{
    fprintf(f, "usage: cloister [--server URL] [--ca FILE] [-o json|yaml] COMMAND [ARGS]\n\n"
               "Commands:\n");
    for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
        char line[128];
        snprintf(line, sizeof(line), "%s %s", commands[i].name, commands[i].synopsis);
        fprintf(f, "  %-44s %s\n", line, commands[i].summary);
    }
    fprintf(f, "\nKinds:");
    const resource_kind *k;
    for (size_t i = 0; (k = resource_kind_get(i)); i++)
        fprintf(f, " %s", k->plural);
    fprintf(f, "\n\nThe server defaults to %s. Environment: CLOISTER_SERVER, CLOISTER_CA,\n"
               "CLOISTER_TOKEN (overrides the saved session), XDG_CONFIG_HOME (the session\n"
               "is kept in $XDG_CONFIG_HOME/cloister/session.json).\n"
               "Exit status: 0 success, 1 refused or failed, 2 usage error.\n",
            CLI_DEFAULT_SERVER);
}

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
            usage(stdout);
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
            fprintf(stderr, "error: -o takes json or yaml\n");
            usage(stderr);
            return CLI_EXIT_USAGE;
        default:
            usage(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    const cli_command *cmd = NULL;
    for (size_t i = 0; i < ELEMENTSOF(commands) && !cmd; i++)
        if (strcmp(name, commands[i].name) == 0)
            cmd = &commands[i];
    if (!cmd) {
        fprintf(stderr, "error: unknown command \"%s\"\n", name);
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
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
