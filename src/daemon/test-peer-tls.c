/* The certificate-role check of mutual TLS between roles: the role a
 * certificate names (its one DNS name <role>.cloister.internal, nothing
 * else), and the server's decision on it under a socket's allow-list. The
 * certificates are made by the cluster PKI, as `cloisterd --init` makes them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "pki/pki.h"

static char dir[] = "/tmp/cloister-test-peer-tls-XXXXXX";
static char ca_cert[128], ca_key[128];
static role_health table[5];
static const char *const names[] = {"api", "kms", "audit", "runner", "proxy"};

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.pem", dir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", dir);
    cr_assert_eq(pki_ensure_ca(ca_cert, ca_key, "Test Cluster CA", "P-256"), 0);
    for (size_t i = 0; i < ELEMENTSOF(table); i++)
        table[i].name = names[i];
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(peer_tls, .init = setup, .fini = teardown);

/* The certificate `--init` would issue to ROLE (a new reference). */
static X509 *role_cert(const char *role)
{
    char cert[160], key[160];
    snprintf(cert, sizeof(cert), "%s/%s.pem", dir, role);
    snprintf(key, sizeof(key), "%s/%s.key", dir, role);
    cr_assert_eq(pki_ensure_role_cert(ca_cert, ca_key, role, cert, key), 0, "%s", role);
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    cr_assert_eq(pki_load(cert, key, &x, &k), 0);
    EVP_PKEY_free(k);
    return x;
}

/* A server certificate of the cluster CA naming NAMES (N of them). */
static X509 *server_cert(const char *file, const char *const *dns, size_t n)
{
    char cert[160], key[160];
    snprintf(cert, sizeof(cert), "%s/%s.pem", dir, file);
    snprintf(key, sizeof(key), "%s/%s.key", dir, file);
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, dns, n, cert, key), 0);
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    cr_assert_eq(pki_load(cert, key, &x, &k), 0);
    EVP_PKEY_free(k);
    return x;
}

Test(peer_tls, a_role_certificate_names_its_role)
{
    for (size_t i = 0; i < ELEMENTSOF(names); i++) {
        X509 *x = role_cert(names[i]);
        char role[PEER_TLS_ROLE_MAX] = "";
        cr_assert_eq(peer_cert_role(x, role, sizeof(role)), 0);
        cr_assert_str_eq(role, names[i]);
        char small[3];
        cr_assert_eq(peer_cert_role(x, small, sizeof(small)), -E2BIG);
        X509_free(x);
    }
}

Test(peer_tls, other_certificates_name_no_role)
{
    static const char *const listener[] = {"localhost", "127.0.0.1", "api.example.com"};
    static const char *const two[] = {"api.cloister.internal", "kms.cloister.internal"};
    static const char *const longer[] = {"api.cloister.internal.example.com"};
    static const char *const deeper[] = {"x.api.cloister.internal"};
    static const char *const bare[] = {".cloister.internal"};
    const struct {
        const char *file;
        const char *const *dns;
        size_t n;
    } cases[] = {{"listener", listener, ELEMENTSOF(listener)}, {"two", two, ELEMENTSOF(two)},
                 {"longer", longer, 1},                         {"deeper", deeper, 1},
                 {"bare", bare, 1}};
    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        X509 *x = server_cert(cases[i].file, cases[i].dns, cases[i].n);
        char role[PEER_TLS_ROLE_MAX] = "unchanged";
        cr_assert_eq(peer_cert_role(x, role, sizeof(role)), -ENOENT, "%s", cases[i].file);
        cr_assert_str_eq(role, "unchanged", "written on a refusal");
        X509_free(x);
    }
}

Test(peer_tls, a_server_takes_the_roles_of_its_allow_list_only)
{
    const peer_policy kms = {.socket = "kms.sock", .roles = table, .n_roles = ELEMENTSOF(table),
                             .allowed = {"api", "runner"}};
    const peer_policy audit = {.socket = "audit.sock", .roles = table, .n_roles = ELEMENTSOF(table),
                               .allowed = {"api", "proxy", "kms", "runner"}};
    int expect_kms[] = {0, -EACCES, -EACCES, 3, -EACCES}, expect_audit[] = {0, 1, -EACCES, 3, 4};
    for (size_t i = 0; i < ELEMENTSOF(names); i++) {
        X509 *x = role_cert(names[i]);
        int peer = -1;
        cr_assert_eq(peer_tls_check_hook(&kms, x, &peer), expect_kms[i] < 0 ? expect_kms[i] : 0, "%s", names[i]);
        cr_assert_eq(peer, expect_kms[i] < 0 ? -1 : expect_kms[i], "%s", names[i]);
        peer = -1;
        cr_assert_eq(peer_tls_check_hook(&audit, x, &peer), expect_audit[i] < 0 ? expect_audit[i] : 0, "%s",
                     names[i]);
        cr_assert_eq(peer, expect_audit[i] < 0 ? -1 : expect_audit[i], "%s", names[i]);
        X509_free(x);
    }
    /* a certificate naming a role the cluster does not have, or none */
    X509 *x = role_cert("scheduler");
    int peer = -1;
    cr_assert_eq(peer_tls_check_hook(&audit, x, &peer), -ESRCH);
    X509_free(x);
    static const char *const listener[] = {"localhost"};
    x = server_cert("listener", listener, 1);
    cr_assert_eq(peer_tls_check_hook(&audit, x, &peer), -ENOENT);
    cr_assert_eq(peer, -1);
    X509_free(x);
}

Test(peer_tls, addresses)
{
    cr_assert(peer_address_is_url("https://kms.internal:7444"));
    cr_assert_not(peer_address_is_url("/var/lib/cloister/run/kms.sock"));
    cr_assert_not(peer_address_is_url("http://kms.internal:7444"));
    cr_assert_not(peer_address_is_url(NULL));
    CURL *h = curl_easy_init();
    cr_assert_not_null(h);
    struct curl_slist *route = (void *)1;
    /* a socket needs no identity; a URL does */
    cr_assert_eq(peer_curl_target(h, "/run/kms.sock", "kms", "/v1/status", &route), 0);
    cr_assert_null(route);
    cr_assert_eq(peer_curl_target(h, "https://kms.internal:7444", "kms", "/v1/status", &route), -ENOKEY);
    cr_assert_eq(peer_tls_set_identity("/c.pem", "/c.key", "/ca.pem"), 0);
    cr_assert_eq(peer_curl_target(h, "https://kms.internal:7444/x", "kms", "/v1/status", &route), -EINVAL);
    cr_assert_eq(peer_curl_target(h, "https://[::1", "kms", "/v1/status", &route), -EINVAL);
    cr_assert_eq(peer_curl_target(h, "https://[::1]:7444", "kms", "/v1/status", &route), 0);
    cr_assert_not_null(route);
    cr_assert_str_eq(route->data, "kms.cloister.internal:443:[::1]:7444");
    curl_slist_free_all(route);
    cr_assert_eq(peer_curl_target(h, "https://kms.internal", "kms", "/v1/status", &route), 0);
    cr_assert_str_eq(route->data, "kms.cloister.internal:443:kms.internal:443");
    curl_slist_free_all(route);
    curl_easy_cleanup(h);
}
