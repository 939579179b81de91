/* `cloister policy check`: asks the server how its policies decide a
 * described request (POST /v1/policy/check) and prints the decision and the
 * rule that made it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

#define CHECK_HEADERS_MAX 64

/* Adds "K=V" to HEADERS (names lower-cased, as the proxy sees them).
 * Returns 0 or -EINVAL when ARG has no '=' or an empty name. */
static int add_header(json_t *headers, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || (size_t)(eq - arg) >= 256)
        return -EINVAL;
    char name[256];
    for (size_t i = 0; i < (size_t)(eq - arg); i++)
        name[i] = (char)(arg[i] >= 'A' && arg[i] <= 'Z' ? arg[i] + 32 : arg[i]);
    name[eq - arg] = 0;
    return json_object_set_new(headers, name, json_string(eq + 1)) < 0 ? -EINVAL : 0;
}

/* Prints the decision for people: the verdict, the deciding rule, why. */
static void print_decision(const json_t *d)
{
    char policy[256], rule[256], reason[1024];
    bool allow = json_is_true(json_object_get(d, "allow"));
    text_sanitize(json_string_value(json_object_get(d, "policy")) ?: "", policy, sizeof(policy));
    text_sanitize(json_string_value(json_object_get(d, "rule")) ?: "", rule, sizeof(rule));
    text_sanitize(json_string_value(json_object_get(d, "reason")) ?: "", reason, sizeof(reason));
    if (policy[0])
        printf("%s (policy %s, rule %s)\n", allow ? "allow" : "deny", policy, rule);
    else
        printf("%s\n", allow ? "allow" : "deny");
    printf("reason: %s\n", reason);
}

static int policy_check(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    static const struct option options[] = {
        {"user", required_argument, NULL, 'u'},  {"service", required_argument, NULL, 's'},
        {"method", required_argument, NULL, 'm'}, {"path", required_argument, NULL, 'p'},
        {"header", required_argument, NULL, 'H'}, {"ip", required_argument, NULL, 'i'},
        {"credential", required_argument, NULL, 'c'}, {"verb", required_argument, NULL, 'V'},
        {"kind", required_argument, NULL, 'K'}, {"name", required_argument, NULL, 'N'},
        CLI_COMMON_LONG_OPTIONS, {},
    };
    json_auto_t *body = json_object(), *headers = json_object(), *api = json_object();
    if (!body || !headers || !api)
        return cli_error("out of memory");
    static const struct {
        int opt;
        const char *field;
    } fields[] = {{'u', "user"}, {'s', "service"}, {'m', "method"}, {'p', "path"}, {'i', "ip"}, {'c', "credential"}},
      api_fields[] = {{'V', "verb"}, {'K', "kind"}, {'N', "name"}};
    int c;
    optind = 0; /* argv[0] is "check" */
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        bool done = false;
        for (size_t i = 0; i < ELEMENTSOF(fields) && !done; i++)
            if (fields[i].opt == c) {
                json_object_set_new(body, fields[i].field, json_string(optarg));
                done = true;
            }
        for (size_t i = 0; i < ELEMENTSOF(api_fields) && !done; i++)
            if (api_fields[i].opt == c) {
                json_object_set_new(api, api_fields[i].field, json_string(optarg));
                done = true;
            }
        if (done)
            continue;
        if (c == 'H') {
            if (json_object_size(headers) >= CHECK_HEADERS_MAX)
                return cli_usage_error(cmd, "at most %d --header options", CHECK_HEADERS_MAX);
            if (add_header(headers, optarg) < 0)
                return cli_usage_error(cmd, "--header takes NAME=VALUE, got \"%s\"", optarg);
            continue;
        }
        if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
            return c;
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (!json_object_get(body, "user"))
        return cli_usage_error(cmd, "--user is required");
    json_object_set(body, "headers", headers);
    if (json_object_size(api) > 0) /* an API call (ctx.request.api) rather than a service request */
        json_object_set(body, "api", api);
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    json_auto_t *d = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "POST", "/policy/check", body, &d, &err) < 0)
        return api_error_print(&err);
    if (ctx->output == CLI_OUTPUT_JSON)
        r = output_json(d);
    else if (ctx->output == CLI_OUTPUT_YAML)
        r = output_yaml(d);
    else
        print_decision(d);
    if (r < 0)
        return cli_error("cannot print the answer: %s", strerror(-r));
    return json_is_true(json_object_get(d, "allow")) ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}

int cmd_policy(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "check") == 0)
        return policy_check(ctx, cmd, argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: cloister policy %s\n%s\n", cmd->synopsis, cmd->summary);
        return CLI_EXIT_OK;
    }
    if (argc < 2)
        return cli_usage_error(cmd, "missing subcommand (check)");
    return cli_usage_error(cmd, "unknown subcommand \"%s\"", argv[1]);
}
