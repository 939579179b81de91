/* Unit tests of the configuration file's parser (config.c): each key lands
 * in the daemon's configuration over the --dev preset, and every problem of
 * a file is reported with its file, line and key. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "daemon/config.h"

static daemon_config cfg;
static config_problems problems;

static void reset(void)
{
    daemon_config_defaults(&cfg);
    config_problems_free(&problems);
}

static void done(void)
{
    config_problems_free(&problems);
}

TestSuite(config, .init = reset, .fini = done);

static int parse(const char *text)
{
    return daemon_config_parse("c.yaml", text, strlen(text), &cfg, &problems);
}

/* Whether some problem starts with PREFIX. */
static bool has(const char *prefix)
{
    for (size_t i = 0; i < problems.n && i < CONFIG_PROBLEMS_MAX; i++)
        if (strncmp(problems.items[i], prefix, strlen(prefix)) == 0)
            return true;
    return false;
}

/* Parses TEXT over a fresh preset and expects it refused with PROBLEM among
 * the problems (a prefix). */
static void refused(const char *text, const char *problem)
{
    reset();
    cr_assert_eq(parse(text), -EINVAL, "%s", text);
    cr_assert(has(problem), "expected \"%s\" for %s", problem, text);
}

static void dump(void)
{
    for (size_t i = 0; i < problems.n && i < CONFIG_PROBLEMS_MAX; i++)
        fprintf(stderr, "  %s\n", problems.items[i]);
}

Test(config, the_dev_preset)
{
    cr_assert(cfg.dev);
    cr_assert_str_eq(cfg.data_dir, "./cloister-data");
    cr_assert_str_eq(cfg.api_listen, "127.0.0.1:7443");
    cr_assert_str_eq(cfg.proxy_listen, "127.0.0.1:8443");
    cr_assert_str_eq(cfg.domain, "localhost");
    cr_assert_str_eq(cfg.seal_mode, "dev");
    cr_assert_eq(cfg.api_threads, 2);
    for (size_t i = 0; i < DAEMON_N_ROLES; i++)
        cr_assert(cfg.role_wanted[i]);
}

Test(config, every_key_lands)
{
    int r = parse("domain: example.com\n"
                  "dataDir: /var/lib/c\n"
                  "roles: [runner, audit, kms, proxy, api]\n"
                  "store: {url: \"sqlite:///var/lib/c/api/s.db\"}\n"
                  "pki: {dir: /etc/c/pki}\n"
                  "api: {listen: \"0.0.0.0:7443\", threads: 8, tls: {cert: /dev/null, key: /dev/null}}\n"
                  "proxy:\n"
                  "  listen: \"[::]:443\"\n"
                  "  httpListen: \"0.0.0.0:80\"\n"
                  "  threads: 4\n"
                  "  upstreamIdle: 8\n"
                  "  upstreamConnections: 32\n"
                  "kms: {seal: {passphraseFile: /dev/null}}\n"
                  "telemetry: {otlp: {endpoint: \"https://otel:4318\", headers: {a: \"1\", b: \"x y\"}}}\n"
                  "plugins: {dir: /tmp, trusted: [claims-auth, request-log]}\n"
                  "audit: {accessRetentionDays: 400}\n");
    dump();
    cr_assert_eq(r, 0);
    cr_assert_not(cfg.dev);
    cr_assert_str_eq(cfg.config_file, "c.yaml");
    cr_assert_str_eq(cfg.domain, "example.com");
    cr_assert_str_eq(cfg.data_dir, "/var/lib/c");
    cr_assert_str_eq(cfg.store_url, "sqlite:/var/lib/c/api/s.db");
    cr_assert_str_eq(cfg.pki_dir, "/etc/c/pki");
    cr_assert_str_eq(cfg.api_listen, "0.0.0.0:7443");
    cr_assert_eq(cfg.api_threads, 8);
    cr_assert_str_eq(cfg.api_tls_cert, "/dev/null");
    cr_assert_str_eq(cfg.api_tls_key, "/dev/null");
    cr_assert_str_eq(cfg.proxy_listen, "[::]:443");
    cr_assert_str_eq(cfg.proxy_http_listen, "0.0.0.0:80");
    cr_assert_eq(cfg.proxy_threads, 4);
    cr_assert_eq(cfg.proxy_upstream_idle, 8);
    cr_assert_eq(cfg.proxy_upstream_conns, 32);
    cr_assert_str_eq(cfg.seal_mode, "passphrase");
    cr_assert_str_eq(cfg.seal_secret_file, "/dev/null");
    cr_assert_str_eq(cfg.otlp_endpoint, "https://otel:4318");
    cr_assert_str_eq(cfg.otlp_headers, "a=1,b=x y");
    cr_assert_str_eq(cfg.plugin_dir, "/tmp");
    cr_assert_str_eq(cfg.plugin_trusted, "claims-auth,request-log");
    cr_assert_eq(cfg.access_retention_days, 400);
}

Test(config, access_retention)
{
    refused("audit: {accessRetentionDays: 0}\n", "c.yaml:1: audit.accessRetentionDays: '0' is not a number from 1 to 36500");
    cr_assert_eq(parse("kms: {seal: {mode: passphrase}}\n"), 0);
    cr_assert_eq(cfg.access_retention_days, 0, "absent: the segments are kept");
}

Test(config, plugins)
{
    refused("plugins: {dir: relative/dir}\n", "c.yaml:1: plugins.dir: takes an absolute path");
    refused("plugins: {trusted: [\"../x\"]}\n", "c.yaml:1: plugins.trusted: '../x' is not a plugin name");
    refused("plugins: {trusted: noop}\n", "c.yaml:1: plugins.trusted: takes a list of plugin names");
}

Test(config, absent_keys_keep_the_preset)
{
    cr_assert_eq(parse("kms: {seal: {mode: passphrase}}\n"), 0);
    cr_assert_str_eq(cfg.api_listen, "127.0.0.1:7443");
    cr_assert_str_eq(cfg.data_dir, "./cloister-data");
    cr_assert_str_eq(cfg.seal_mode, "passphrase");
    cr_assert_str_eq(cfg.seal_secret_file, "");
}

Test(config, pkcs11_seal)
{
    int r = parse("kms:\n  seal:\n    pkcs11: {module: /dev/null, slot: 7, pinFile: /dev/null}\n");
    dump();
    cr_assert_eq(r, 0);
    cr_assert_str_eq(cfg.seal_mode, "pkcs11");
    cr_assert_str_eq(cfg.pkcs11_module, "/dev/null");
    cr_assert_eq(cfg.pkcs11_slot, 7);
    cr_assert_str_eq(cfg.seal_secret_file, "/dev/null");
    refused("kms:\n  seal:\n    pkcs11: {slot: 1}\n", "c.yaml:3: kms.seal.pkcs11: needs module");
}

Test(config, every_problem_with_file_line_and_key)
{
    int r = parse("domain: \"\"\n"                          /* 1 */
                  "roles: [api, api, dns]\n"                /* 2 */
                  "api:\n"                                  /* 3 */
                  "  listen: 7443\n"                        /* 4 */
                  "  tsl: {}\n"                             /* 5 */
                  "  threads: many\n"                       /* 6 */
                  "api: {}\n"                               /* 7 */
                  "proxy: [listen]\n"                       /* 8 */
                  "store: {url: \"mysql://db\"}\n"          /* 9 */
                  "kms: {seal: {passphraseFile: /nonexistent/pass}}\n" /* 10 */
                  "telemetry: {otlp: {endpoint: ftp://x, headers: {\"a,b\": c}}}\n" /* 11 */
                  "audit: {listen: \"10.0.0.6:7445\"}\n");  /* 12 */
    dump();
    cr_assert_eq(r, -EINVAL);
    cr_expect(has("c.yaml:1: domain: is empty"));
    cr_expect(has("c.yaml:2: roles: 'api' is listed twice"));
    cr_expect(has("c.yaml:2: roles: 'dns' is not a role"));
    cr_expect(has("c.yaml:4: api.listen: '7443' is not HOST:PORT"));
    cr_expect(has("c.yaml:5: api.tsl: unknown key (known here: listen, threads, tls, roleListen)"));
    cr_expect(has("c.yaml:6: api.threads: 'many' is not a number from 1 to 64"));
    cr_expect(has("c.yaml:7: api: given twice"));
    cr_expect(has("c.yaml:8: proxy: takes a mapping, not a list"));
    cr_expect(has("c.yaml:9: store.url: not a store URL"));
    cr_expect(has("c.yaml:10: kms.seal.passphraseFile: cannot read /nonexistent/pass (No such file or directory)"));
    cr_expect(has("c.yaml:11: telemetry.otlp.endpoint: 'ftp://x' is not an http:// or https:// URL"));
    cr_expect(has("c.yaml:11: telemetry.otlp.headers.a,b: a header name cannot hold"));
    cr_expect(has("c.yaml:12: audit.listen: this machine does not run audit (roles); leave it out"));
    cr_expect(has("c.yaml:2: roles: roles [api] need peers.kms, peers.audit, peers.runner: "));
    cr_expect_eq(problems.n, 14);
}

Test(config, roles_apart_name_each_missing_peer)
{
    refused("roles: [proxy]\n", "c.yaml:1: roles: roles [proxy] need peers.api, peers.audit: ");
    cr_assert_eq(problems.n, 1);
    refused("roles: [kms, runner]\nkms: {seal: {mode: passphrase}}\npeers: {api: \"https://api.internal:7443\"}\n",
            "c.yaml:1: roles: roles [kms, runner] need peers.audit: ");
    cr_assert_eq(problems.n, 1);
    refused("roles: [audit]\npeers: {audit: \"https://a:1\"}\nkms: {listen: \"0.0.0.0:7444\"}\n",
            "c.yaml:2: peers.audit: this machine runs audit itself");
    cr_assert(has("c.yaml:3: kms.listen: this machine does not run kms (roles); leave it out"));
    cr_assert_eq(problems.n, 2);
    refused("roles: [api]\npeers: {kms: \"https://k:1/x\", runner: \"http://r:2\", audit: \"https://a:3\"}\n",
            "c.yaml:2: peers.kms: 'https://k:1/x' is not https://HOST[:PORT]");
    cr_assert(has("c.yaml:2: peers.runner: 'http://r:2' is not https://HOST[:PORT]"));
    /* the api's listener for roles: on the api's machine; its peer: elsewhere */
    refused("roles: [proxy]\napi: {roleListen: \"0.0.0.0:7447\"}\n"
            "peers: {api: \"https://a:7443\", audit: \"https://a:7445\", apiRoles: \"https://a:7447\"}\n",
            "c.yaml:2: api.roleListen: this machine does not run api (roles); leave it out");
    cr_assert_eq(problems.n, 1);
    refused("roles: [api, proxy, kms, audit, runner]\nkms: {seal: {mode: passphrase}}\n"
            "peers: {apiRoles: \"https://a:7447\"}\n",
            "c.yaml:3: peers.apiRoles: this machine runs api itself");
}

Test(config, the_api_listener_for_roles)
{
    char url[600];
    cr_assert_eq(parse("roles: [api, proxy]\napi: {roleListen: \"0.0.0.0:7447\"}\n"
                       "peers: {kms: \"https://k:1\", audit: \"https://a:2\", runner: \"https://r:3\"}\n"), 0);
    daemon_api_role_url(&cfg, url, sizeof(url));
    cr_expect_str_eq(url, "https://127.0.0.1:7447");
    reset();
    cr_assert_eq(parse("roles: [proxy]\npeers: {api: \"https://a:7443\", audit: \"https://a:7445\", "
                       "apiRoles: \"https://a:7447\"}\n"), 0);
    daemon_api_role_url(&cfg, url, sizeof(url));
    cr_expect_str_eq(url, "https://a:7447");
    reset();
    cr_assert_eq(parse("roles: [proxy]\npeers: {api: \"https://a:7443\", audit: \"https://a:7445\"}\n"), 0);
    daemon_api_role_url(&cfg, url, sizeof(url));
    cr_expect_str_eq(url, ""); /* the public listener with the role token */
    reset();
}

Test(config, a_subset_with_its_peers_and_listeners)
{
    int r = parse("roles: [api, proxy]\n"
                  "peers: {kms: \"https://10.0.0.5:7444\", audit: \"https://[::1]:7445\",\n"
                  "        runner: \"https://r:7446\"}\n");
    dump();
    cr_assert_eq(r, 0);
    cr_assert_str_eq(cfg.peer_kms, "https://10.0.0.5:7444");
    cr_assert_str_eq(cfg.peer_audit, "https://[::1]:7445");
    cr_assert_str_eq(cfg.peer_runner, "https://r:7446");
    cr_assert(cfg.role_wanted[0] && cfg.role_wanted[4] && !cfg.role_wanted[1] && !cfg.role_wanted[2]);
    reset();
    r = parse("roles: [runner]\nrunner: {listen: \"0.0.0.0:7446\"}\n"
              "peers: {api: \"https://api.internal\", audit: \"https://audit.internal:7445\"}\n");
    dump();
    cr_assert_eq(r, 0);
    cr_assert_str_eq(cfg.runner_listen, "0.0.0.0:7446");
    reset();
    r = parse("roles: [audit]\naudit: {listen: \"127.0.0.1:7445\"}\n");
    dump();
    cr_assert_eq(r, 0, "the audit role calls no other role");
}

Test(config, one_seal)
{
    refused("kms:\n  seal: {passphraseFile: /dev/null, pkcs11: {module: /dev/null}}\n",
            "c.yaml:2: kms.seal: gives both passphraseFile and pkcs11");
    cr_assert_eq(problems.n, 1);
    refused("kms:\n  seal: {passphraseFile: /dev/null, mode: dev}\n",
            "c.yaml:2: kms.seal: mode dev contradicts passphraseFile");
    refused("kms:\n  seal: {mode: passphrase, pkcs11: {module: /dev/null}}\n",
            "c.yaml:2: kms.seal: mode passphrase contradicts pkcs11");
    reset();
    cr_assert_eq(parse("kms:\n  seal: {mode: pkcs11, pkcs11: {module: /dev/null, pinFile: /dev/null}}\n"), 0);
    cr_assert_str_eq(cfg.seal_mode, "pkcs11");
    cr_assert_str_eq(cfg.seal_secret_file, "/dev/null");
}

Test(config, a_missing_seal_is_named_outside_dev)
{
    refused("domain: example.com\n", "c.yaml:1: kms.seal: required outside --dev");
    cr_assert_eq(problems.n, 1);
}

Test(config, a_sqlite_store_outside_the_api_subtree)
{
    cr_assert_eq(parse("dataDir: /d\nstore: {url: \"sqlite:/elsewhere/s.db\"}\nkms: {seal: {mode: passphrase}}\n"),
                 -EINVAL);
    cr_assert(has("c.yaml:2: store.url: a SQLite store lies in the api role's part of the data dir, /d/api/"));
    reset();
    cr_assert_eq(parse("store: {url: \"postgres://c@db/c\"}\nkms: {seal: {mode: passphrase}}\n"), 0);
    cr_assert_str_eq(cfg.store_url, "postgres://c@db/c");
    refused("store: {url: \"mysql://c:hunter22@db/c\"}\nkms: {seal: {mode: passphrase}}\n",
            "c.yaml:1: store.url: not a store URL");
    cr_assert_null(strstr(problems.items[0], "hunter22"), "%s", problems.items[0]);
}

Test(config, syntax_and_shape)
{
    refused("a: [\n", "c.yaml:2: (syntax): ");
    refused("", "c.yaml:1: (top): the file is empty");
    refused("- a\n", "c.yaml:1: (top): takes a mapping, not a list");
    refused("kms: {seal: {mode: passphrase}}\n---\ndomain: x\n", "c.yaml:");
    cr_assert(strstr(problems.items[0], "(top): a second YAML document"), "%s", problems.items[0]);
    refused("roles: api\n", "c.yaml:1: roles: takes a list of roles");
}

Test(config, aliases_cannot_make_the_walk_explode)
{
    /* each level names the one before nine times: 9^8 nodes if walked */
    char text[2048] = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n";
    for (int i = 1; i <= 8; i++)
        snprintf(text + strlen(text), sizeof(text) - strlen(text),
                 "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i - 1, i - 1, i - 1,
                 i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    snprintf(text + strlen(text), sizeof(text) - strlen(text), "roles: *a8\n");
    cr_assert_eq(parse(text), -EINVAL);
    cr_assert_lt(problems.n, 20);
}

Test(config, problems_past_the_cap_are_counted)
{
    char text[8192] = "";
    for (int i = 0; i < 150; i++)
        snprintf(text + strlen(text), sizeof(text) - strlen(text), "k%d: 1\n", i);
    cr_assert_eq(parse(text), -EINVAL);
    cr_assert_eq(problems.n, 151); /* 150 unknown keys and the missing seal */
    cr_assert(has("c.yaml:1: k0: unknown key"));
}

Test(config, control_characters_of_the_file_are_not_printed)
{
    refused("\"a\\e[31mb\": 1\nkms: {seal: {mode: passphrase}}\n", "c.yaml:1: a?[31mb: unknown key");
}

Test(config, listen_addresses)
{
    cr_assert(config_valid_listen("0.0.0.0:1"));
    cr_assert(config_valid_listen("[::1]:65535"));
    cr_assert(config_valid_listen("host.example:443"));
    cr_assert_not(config_valid_listen(":443"));
    cr_assert_not(config_valid_listen("host:"));
    cr_assert_not(config_valid_listen("host:0"));
    cr_assert_not(config_valid_listen("host:65536"));
    cr_assert_not(config_valid_listen("host:+80"));
    cr_assert_not(config_valid_listen("host:80 "));
    cr_assert_not(config_valid_listen("443"));
}
