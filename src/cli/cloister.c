/* cloister: the command table of the command-line client. Global options,
 * then a command from the table below (main.c); each command parses its own
 * arguments and returns the exit status. --help, `cloister completion` and
 * the unit tests read this one table. */
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
    {"status", "[-o json|yaml]",
     "show whether the server is ready (/readyz): each role and its replicas, the KMS seal, the store; exit 0 only "
     "when ready", cmd_status},
    {"apply", "-f FILE|- [-f FILE]... [--dry-run] [-o json|yaml]",
     "create or update every resource of the manifests, all or nothing; warns about references to missing "
     "resources; --dry-run: what would change, nothing written", cmd_apply},
    {"get", "KIND [NAME] [-w] [-o json|yaml|wide|name]",
     "list the resources of a kind, or show one; -w: then print each change as it comes", cmd_get},
    {"delete", "KIND NAME [--force]",
     "delete a resource; one still referenced needs --force (the referrers are named)", cmd_delete},
    /* CLI habits: keep these together */
    {"diff", "-f FILE|- [-f FILE]...",
     "show what apply would change, field by field (the server decides it as apply; nothing written)", cmd_diff},
    {"describe", "KIND NAME [-o json|yaml]",
     "show a resource, its status and what references it (where a policy is used, who is in a group)",
     cmd_describe},
    {"completion", "bash|zsh", "print a shell completion script (source <(cloister completion bash))",
     cmd_completion},
    {"version", "[-o json|yaml]", "print the client's version and build, and the server's when reachable",
     cmd_version},
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
    {"user", "invite NAME [--email E] [--revoke] | passkeys NAME [--delete ID]",
     "invite a user to register a passkey (a one-time link, 24 h; created if needed), or revoke the invitation; "
     "list or delete a user's passkeys", cmd_user},
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

const cli_command *cli_command_get(size_t i)
{
    return i < ELEMENTSOF(commands) ? &commands[i] : NULL;
}

void cli_usage(FILE *f)
{
    fprintf(f, "usage: cloister [--server URL] [--ca FILE] [-o json|yaml] [--version] COMMAND [ARGS]\n\n"
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
