/* The cloister command-line client: shared state, the command table's
 * entry type, and helpers every command uses. One file per command group
 * (cmd-*.c); the table lives in cloister.c. */
#pragma once

#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "basic/macro.h"
#include "cli/session.h"

/* Exit statuses (DESIGN.md, "cloister (CLI)"). */
#define CLI_EXIT_OK 0
#define CLI_EXIT_FAILED 1 /* the operation was refused or failed */
#define CLI_EXIT_USAGE 2

#define CLI_DEFAULT_SERVER "https://127.0.0.1:7443"

typedef enum cli_output {
    CLI_OUTPUT_TEXT, /* tables and sentences for people */
    CLI_OUTPUT_JSON,
    CLI_OUTPUT_YAML,
    CLI_OUTPUT_WIDE, /* get: the table with more columns */
    CLI_OUTPUT_NAME, /* get: kind/name, one a line */
} cli_output;

/* One invocation. The *_flag fields come from the command line; server, ca
 * and token are settled by cli_connect() and owned here. */
typedef struct cli_ctx {
    const char *server_flag;
    const char *ca_flag;
    cli_output output;
    char *server;  /* base URL, without trailing '/' */
    char *ca;      /* CA file the server is verified against, or NULL for the system store */
    char *token;   /* bearer token; wiped when the context is released */
    cli_session session;
} cli_ctx;

typedef struct cli_command cli_command;
struct cli_command {
    const char *name;
    const char *synopsis; /* the arguments after the name, for usage lines */
    const char *summary;
    /* Runs the command; ARGV[0] is its name. Returns an exit status. */
    int (*run)(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
};

/* Options every command accepts, wherever they appear on the line. */
#define CLI_COMMON_SHORT_OPTIONS "ho:"
enum { CLI_OPT_SERVER = 0x100, CLI_OPT_CA };
#define CLI_COMMON_LONG_OPTIONS                                                                    \
    {"server", required_argument, NULL, CLI_OPT_SERVER},                                           \
        {"ca", required_argument, NULL, CLI_OPT_CA},                                               \
        {"output", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'}

/* Parses an -o value ("json", "yaml", "wide" or "name") into *RET.
 * Returns 0 or -EINVAL. */
int cli_parse_output(const char *arg, cli_output *ret);
/* Whether command CMD takes OUTPUT: wide and name are get's only. */
bool cli_output_allowed(const cli_command *cmd, cli_output output);

/* The command table (cloister.c): the I-th command, NULL past the last. */
const cli_command *cli_command_get(size_t i);
/* Prints the program's usage: synopsis, every command of the table, the
 * kinds and the environment. */
void cli_usage(FILE *f);

/* Handles option OPT (a getopt_long result) if it is a common one. Returns
 * -1 when parsing goes on, or the exit status to end the command with: 0
 * after printing the command's help, CLI_EXIT_USAGE after a usage error. */
int cli_common_option(cli_ctx *ctx, const cli_command *cmd, int opt, const char *arg);

/* Parses ARGV of a command that takes only the common options, leaving
 * optind at the first positional argument. Returns -1 to go on, or the exit
 * status to end the command with (as cli_common_option). */
int cli_parse_common(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
/* Prints "usage: cloister NAME SYNOPSIS" and, when WHY is set, the reason,
 * to stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const cli_command *cmd, const char *why, ...) _printf_(2, 3);

/* Prints "error: MESSAGE" to stderr with control characters replaced, so
 * text from a server cannot drive the terminal; returns CLI_EXIT_FAILED. */
int cli_error(const char *fmt, ...) _printf_(1, 2);

/* Settles the server URL, the CA file and (when NEED_TOKEN) the token:
 * --server, then CLOISTER_SERVER, then the saved session, then the default;
 * --ca, then CLOISTER_CA, then the session's CA when the server is the
 * session's; CLOISTER_TOKEN, then the session's token when the server is
 * the session's (a token never goes to another server). Returns an exit
 * status, CLI_EXIT_OK when the context is ready. */
int cli_connect(cli_ctx *ctx, bool need_token);

/* Releases what cli_connect() settled, wiping the token. */
void cli_ctx_done(cli_ctx *ctx);

/* Whether TOKEN may be sent as a bearer token: 1..8192 printable ASCII bytes. */
bool cli_token_valid(const char *token);
/* Whether URL can be a server URL: https:// with a host, no credentials,
 * query or fragment. */
bool cli_server_url_valid(const char *url);

int cmd_login(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_logout(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_whoami(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_status(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_apply(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_get(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_delete(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_token(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_kms(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_audit(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_attest(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_enclave(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_policy(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_keys(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_user(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_dataset(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_workspace(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_age(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_job(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_notify(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_services(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_connect(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
/* apply --dry-run's twin, in cmd-apply.c */
int cmd_diff(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
/* CLI habits (cmd-habits.c): describe, completion, version */
int cmd_describe(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_completion(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
int cmd_version(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv);
/* Writes the completion script of SHELL ("bash" or "zsh") to F, generated
 * from the command table. Returns 0, or -EINVAL for another shell. */
int cli_completion_script(FILE *f, const char *shell);

