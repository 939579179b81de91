#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/fileio.h"
#include "cli/cli.h"
#include "cli/output.h"
#include "cli/session.h"
#include "resource/resource.h"

/* Points XDG_CONFIG_HOME at a fresh directory; returns its path (static). */
static const char *fresh_config_home(void)
{
    static char dir[] = "/tmp/cloister-test-cli-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    setenv("XDG_CONFIG_HOME", dir, 1);
    unsetenv("CLOISTER_SERVER");
    unsetenv("CLOISTER_CA");
    unsetenv("CLOISTER_TOKEN");
    return dir;
}

static void remove_tree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(validate, tokens)
{
    char big[8194];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    cr_expect(cli_token_valid("abc.DEF-123_~+/="));
    cr_expect(!cli_token_valid(""));
    cr_expect(!cli_token_valid("a b"));
    cr_expect(!cli_token_valid("a\r\nX-Injected: 1"));
    cr_expect(!cli_token_valid("caf\xc3\xa9"));
    cr_expect(!cli_token_valid(big));
    big[8192] = 0;
    cr_expect(cli_token_valid(big));
}

Test(validate, server_urls)
{
    cr_expect(cli_server_url_valid("https://127.0.0.1:7443"));
    cr_expect(cli_server_url_valid("https://api.example.com/cloister/"));
    cr_expect(cli_server_url_valid("https://[::1]:7443"));
    cr_expect(!cli_server_url_valid("http://127.0.0.1:7443"));
    cr_expect(!cli_server_url_valid("https://user:pw@host"));
    cr_expect(!cli_server_url_valid("https://host/?a=1"));
    cr_expect(!cli_server_url_valid("https://host/#x"));
    cr_expect(!cli_server_url_valid("127.0.0.1:7443"));
}

Test(output, sanitize_replaces_control_characters)
{
    char out[64];
    cr_expect_str_eq(text_sanitize("plain é 漢", out, sizeof(out)), "plain é 漢");
    cr_expect_str_eq(text_sanitize("\x1b[31mred\x07\x7f", out, sizeof(out)), "?[31mred??");
    cr_expect_str_eq(text_sanitize("c1\xc2\x9b" "x", out, sizeof(out)), "c1?x");
    cr_expect_str_eq(text_sanitize("new\nline", out, sizeof(out)), "new?line");
    /* cut on a character boundary */
    cr_expect_str_eq(text_sanitize("ab\xc3\xa9", out, 4), "ab");
}

Test(output, ages)
{
    char b[32];
    cr_expect_str_eq(format_age(-5, b, sizeof(b)), "0s");
    cr_expect_str_eq(format_age(45, b, sizeof(b)), "45s");
    cr_expect_str_eq(format_age(119, b, sizeof(b)), "119s");
    cr_expect_str_eq(format_age(600, b, sizeof(b)), "10m");
    cr_expect_str_eq(format_age(5 * 3600, b, sizeof(b)), "5h");
    cr_expect_str_eq(format_age(3 * 86400, b, sizeof(b)), "3d");
    cr_expect_str_eq(format_age(3 * 365 * 86400LL, b, sizeof(b)), "3y");
}

Test(output, table_of_services, .init = cr_redirect_stdout)
{
    json_auto_t *items = json_loads(
        "[{\"metadata\": {\"name\": \"wiki\", \"createdAt\": \"2026-01-01T00:00:00Z\"},"
        "  \"spec\": {\"upstream\": {\"url\": \"http://127.0.0.1:9000\"}, \"policies\": [\"a\", \"b\"]}},"
        " {\"metadata\": {\"name\": \"scorer\", \"createdAt\": \"2025-12-31T23:59:00Z\"},"
        "  \"spec\": {\"upstream\": {\"enclave\": \"scorer\"}, \"hosts\": [\"s.example.com\"]}},"
        " {\"metadata\": {\"name\": \"evil\\u001b[2J\"}, \"spec\": {}}]",
        0, NULL);
    cr_assert_not_null(items);
    cr_assert_eq(output_table(resource_kind_find("services"), items, 1767225600 + 30), 0);
    fflush(stdout);
    cr_assert_stdout_eq_str("NAME       UPSTREAM                HOSTS           POLICIES   AGE\n"
                            "wiki       http://127.0.0.1:9000   <none>          a,b        30s\n"
                            "scorer     scorer                  s.example.com   <none>     90s\n"
                            "evil?[2J   <none>                  <none>          <none>     <unknown>\n");
}

Test(output, long_cells_are_cut, .init = cr_redirect_stdout)
{
    char url[200];
    snprintf(url, sizeof(url), "http://%0100d.example.com/", 0);
    json_auto_t *items = json_pack("[{s:{s:s},s:{s:s,s:{s:s}}}]", "metadata", "name", "x", "spec",
                                   "type", "oidc", "upstream", "url", url);
    json_object_set_new(json_object_get(json_array_get(items, 0), "spec"), "issuer", json_string(url));
    cr_assert_eq(output_table(resource_kind_find("IdentityProvider"), items, 0), 0);
    fflush(stdout);
    char expected[512];
    snprintf(expected, sizeof(expected), "NAME   TYPE   %-60s   AGE\nx      oidc   %.57s...   <unknown>\n",
             "ISSUER", url);
    cr_assert_stdout_eq_str(expected);
}

Test(session, saved_private_and_loaded_back)
{
    const char *home = fresh_config_home();
    cli_session s = {.server = "https://127.0.0.1:7443", .ca = "/tmp/ca.pem", .token = "secret-token"};
    cr_assert_eq(session_save(&s), 0);

    char path[512];
    struct stat st;
    snprintf(path, sizeof(path), "%s/cloister", home);
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 07777, 0700);
    snprintf(path, sizeof(path), "%s/cloister/session.json", home);
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_mode & 07777, 0600);

    cli_session back = {};
    cr_assert_eq(session_load(&back), 0);
    cr_expect_str_eq(back.server, s.server);
    cr_expect_str_eq(back.ca, s.ca);
    cr_expect_str_eq(back.token, s.token);
    session_done(&back);
    cr_expect_null(back.token);

    /* no CA is saved as null */
    s.ca = NULL;
    cr_assert_eq(session_save(&s), 0);
    cr_assert_eq(session_load(&back), 0);
    cr_expect_null(back.ca);
    session_done(&back);

    cr_expect_eq(session_remove(), 0);
    cr_expect_eq(session_remove(), -ENOENT);
    cr_expect_eq(session_load(&back), -ENOENT);
    remove_tree(home);
}

Test(session, refused_when_others_can_read_it_or_malformed)
{
    const char *home = fresh_config_home();
    cli_session s = {.server = "https://a", .token = "t"}, back = {};
    char dir[512], path[600];
    snprintf(dir, sizeof(dir), "%s/cloister", home);
    snprintf(path, sizeof(path), "%s/session.json", dir);
    cr_assert_eq(session_save(&s), 0);
    cr_assert_eq(chmod(path, 0644), 0);
    cr_expect_eq(session_load(&back), -EPERM);

    cr_assert_eq(write_file_atomic(path, "{\"server\": 1}", 13, 0600), 0);
    cr_expect_eq(session_load(&back), -EINVAL);
    cr_assert_eq(write_file_atomic(path, "not json", 8, 0600), 0);
    cr_expect_eq(session_load(&back), -EINVAL);

    /* a directory made too open is tightened on the next save */
    cr_assert_eq(chmod(dir, 0755), 0);
    cr_assert_eq(session_save(&s), 0);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_expect_eq(st.st_mode & 07777, 0700);
    remove_tree(home);
}

Test(connect, the_session_token_goes_only_to_its_server)
{
    const char *home = fresh_config_home();
    cli_session s = {.server = "https://127.0.0.1:7443/", .ca = "/dev/null", .token = "tok"};
    cr_assert_eq(session_save(&s), 0);

    cli_ctx ctx = {};
    cr_assert_eq(cli_connect(&ctx, true), CLI_EXIT_OK);
    cr_expect_str_eq(ctx.server, "https://127.0.0.1:7443");
    cr_expect_str_eq(ctx.ca, "/dev/null");
    cr_expect_str_eq(ctx.token, "tok");
    cli_ctx_done(&ctx);

    ctx = (cli_ctx){.server_flag = "https://other.example.com"};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_FAILED);
    cr_expect_null(ctx.token);
    cr_expect_null(ctx.ca);
    cli_ctx_done(&ctx);

    setenv("CLOISTER_TOKEN", "from-env", 1);
    ctx = (cli_ctx){.server_flag = "https://other.example.com"};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_OK);
    cr_expect_str_eq(ctx.token, "from-env");
    cli_ctx_done(&ctx);

    setenv("CLOISTER_TOKEN", "bad token", 1);
    ctx = (cli_ctx){};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_USAGE);
    cli_ctx_done(&ctx);
    unsetenv("CLOISTER_TOKEN");

    ctx = (cli_ctx){.server_flag = "http://127.0.0.1:7443"};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_USAGE);
    cli_ctx_done(&ctx);

    ctx = (cli_ctx){.ca_flag = "/nonexistent/ca.pem"};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_FAILED);
    cli_ctx_done(&ctx);
    remove_tree(home);
}

Test(connect, defaults_without_a_session)
{
    const char *home = fresh_config_home();
    cli_ctx ctx = {};
    cr_expect_eq(cli_connect(&ctx, false), CLI_EXIT_OK);
    cr_expect_str_eq(ctx.server, CLI_DEFAULT_SERVER);
    cr_expect_null(ctx.ca);
    cli_ctx_done(&ctx);
    setenv("CLOISTER_SERVER", "https://env.example.com:9443", 1);
    ctx = (cli_ctx){};
    cr_expect_eq(cli_connect(&ctx, true), CLI_EXIT_FAILED); /* no token anywhere */
    cr_expect_str_eq(ctx.server, "https://env.example.com:9443");
    cli_ctx_done(&ctx);
    remove_tree(home);
}

/* ---- the command table, --help and completion ---- */

/* What F (an open_memstream) holds once closed, in *BUF. */
static char *memstream_text(FILE *f, char **buf)
{
    cr_assert_eq(fclose(f), 0);
    return *buf;
}

Test(table, help_lists_every_command_of_the_table)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cli_usage(f);
    const char *text = memstream_text(f, &buf);
    const cli_command *cmd;
    size_t i;
    for (i = 0; (cmd = cli_command_get(i)); i++) {
        char line[96];
        snprintf(line, sizeof(line), "\n  %s ", cmd->name);
        cr_expect(strstr(text, line), "--help does not list %s", cmd->name);
        cr_expect(cmd->run && cmd->summary[0], "%s", cmd->name);
    }
    cr_assert_gt(i, 20);
    for (const char *must = "diff describe completion version"; *must;) {
        size_t n = strcspn(must, " ");
        char name[32];
        snprintf(name, sizeof(name), "\n  %.*s ", (int)n, must);
        cr_expect(strstr(text, name), "%s", name);
        must += n + (must[n] == ' ');
    }
    free(buf);
}

Test(table, completion_offers_every_command_kind_and_option)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_eq(cli_completion_script(f, "bash"), 0);
    const char *text = memstream_text(f, &buf);
    const cli_command *cmd;
    for (size_t i = 0; (cmd = cli_command_get(i)); i++) {
        char word[96];
        snprintf(word, sizeof(word), "\n    %s) words=", cmd->name);
        cr_expect(strstr(text, word), "no case for %s", cmd->name);
        snprintf(word, sizeof(word), " %s ", cmd->name);
        cr_expect(strstr(text, word), "%s not among the commands", cmd->name);
    }
    const resource_kind *k;
    for (size_t i = 0; (k = resource_kind_get(i)); i++) {
        char word[96];
        snprintf(word, sizeof(word), " %s ", k->plural);
        cr_expect(strstr(text, word), "kind %s missing", k->plural);
    }
    cr_expect(strstr(text, "    apply) words=''; options=' -f --dry-run -o '"), "%s", strstr(text, "    apply)"));
    cr_expect(strstr(text, "    audit) words='checkpoint verify export show '"));
    cr_expect(strstr(text, "    keys) words='init show register '"));
    cr_expect(strstr(text, "complete -F _cloister cloister\n"));
    free(buf);

    buf = NULL;
    f = open_memstream(&buf, &len);
    cr_assert_eq(cli_completion_script(f, "zsh"), 0);
    cr_expect(strstr(memstream_text(f, &buf), "bashcompinit"));
    free(buf);
    cr_expect_eq(cli_completion_script(stderr, "fish"), -EINVAL);
}

Test(output, wide_and_name_are_get_only)
{
    cli_output o;
    cr_assert_eq(cli_parse_output("wide", &o), 0);
    cr_assert_eq(o, CLI_OUTPUT_WIDE);
    cr_assert_eq(cli_parse_output("name", &o), 0);
    cr_assert_eq(o, CLI_OUTPUT_NAME);
    cr_assert_eq(cli_parse_output("table", &o), -EINVAL);
    const cli_command *get = NULL, *whoami = NULL, *cmd;
    for (size_t i = 0; (cmd = cli_command_get(i)); i++) {
        if (strcmp(cmd->name, "get") == 0)
            get = cmd;
        if (strcmp(cmd->name, "whoami") == 0)
            whoami = cmd;
    }
    cr_assert(get && whoami);
    cr_expect(cli_output_allowed(get, CLI_OUTPUT_WIDE) && cli_output_allowed(get, CLI_OUTPUT_NAME));
    cr_expect(!cli_output_allowed(whoami, CLI_OUTPUT_WIDE) && !cli_output_allowed(whoami, CLI_OUTPUT_NAME));
    cr_expect(cli_output_allowed(whoami, CLI_OUTPUT_JSON));
    char buf[64];
    cr_expect_str_eq(output_kind_name("AttestationPolicy", "prod", buf, sizeof(buf)), "attestationpolicy/prod");
}

Test(output, diff_is_field_level_and_unified, .init = cr_redirect_stdout)
{
    json_auto_t *before = json_loads("{\"metadata\":{\"labels\":{\"team\":\"a\"}},\"spec\":{\"policies\":[\"p1\"],"
                                     "\"upstream\":{\"url\":\"http://x\"}}}", 0, NULL);
    json_auto_t *after = json_loads("{\"metadata\":{\"labels\":{\"team\":\"b\"}},\"spec\":{\"upstream\":"
                                    "{\"url\":\"http://x\"},\"policies\":[\"p1\",\"p2\"]}}", 0, NULL);
    cr_assert_eq(output_diff("service/wiki", before, after), 3);
    json_auto_t *created = json_loads("{\"spec\":{}}", 0, NULL);
    cr_assert_eq(output_diff("policy/new", json_null(), created), 1);
    fflush(stdout);
    cr_assert_stdout_eq_str("--- service/wiki (stored)\n"
                            "+++ service/wiki (manifest)\n"
                            "-metadata.labels.team: \"a\"\n"
                            "+metadata.labels.team: \"b\"\n"
                            " spec.policies[0]: \"p1\"\n"
                            "+spec.policies[1]: \"p2\"\n"
                            " spec.upstream.url: \"http://x\"\n"
                            "--- policy/new (absent)\n"
                            "+++ policy/new (manifest)\n"
                            "+spec: {}\n");
}
