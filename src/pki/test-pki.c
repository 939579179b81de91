/* The cluster PKI on a temporary data dir: a CA made once and kept, server
 * and signing certificates that chain to it under OpenSSL's own verifier,
 * and the proxy's intermediate, whose name constraints make a certificate
 * it issues outside the domain (or for the API's name) fail verification. */
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "pki/pki.h"

static char dir[] = "/tmp/cloister-test-pki-XXXXXX";
static char ca_cert[256], ca_key[256];

static void path(char *out, const char *name)
{
    snprintf(out, 256, "%s/%s", dir, name);
}

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    path(ca_cert, "ca.pem");
    path(ca_key, "ca.key");
    cr_assert_eq(pki_ensure_ca(ca_cert, ca_key, "Test CA", "P-256"), 0);
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(pki, .init = setup, .fini = teardown);

static char *slurp(const char *p)
{
    char *data = NULL;
    size_t len;
    cr_assert_eq(read_file(p, 1 << 20, &data, &len), 0, "read %s", p);
    return data;
}

static X509 *load_first_cert(const char *p)
{
    FILE *f = fopen(p, "re");
    cr_assert_not_null(f, "open %s", p);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert_not_null(x);
    return x;
}

static mode_t mode_of(const char *p)
{
    struct stat st;
    cr_assert_eq(stat(p, &st), 0, "stat %s", p);
    return st.st_mode & 07777;
}

/* X509_verify_cert()'s error for LEAF under the trusted ROOT with
 * UNTRUSTED intermediates (NULL: none), as a TLS client checks it; 0 when
 * it verifies. */
static int verify(X509 *root, STACK_OF(X509) *untrusted, X509 *leaf)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    cr_assert(store && ctx && X509_STORE_add_cert(store, root) == 1);
    cr_assert_eq(X509_STORE_CTX_init(ctx, store, leaf, untrusted), 1);
    int ok = X509_verify_cert(ctx);
    int err = ok == 1 ? 0 : X509_STORE_CTX_get_error(ctx);
    cr_assert(ok == 1 || err != 0);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return err;
}

static int curve_of(X509 *x)
{
    char name[64];
    size_t len;
    cr_assert_eq(EVP_PKEY_get_utf8_string_param(X509_get0_pubkey(x), "group", name, sizeof(name), &len), 1);
    return OBJ_sn2nid(name);
}

Test(pki, ca_made_once_then_kept)
{
    cr_assert_eq(mode_of(ca_key), 0600, "the CA key is the owner's alone");
    X509 *ca = load_first_cert(ca_cert);
    cr_assert_eq(X509_check_ca(ca), 1);
    cr_assert_eq(X509_check_issued(ca, ca), X509_V_OK, "self-signed");
    cr_assert_eq(curve_of(ca), NID_X9_62_prime256v1);
    char *before = slurp(ca_cert), *key_before = slurp(ca_key);
    cr_assert_eq(pki_ensure_ca(ca_cert, ca_key, "Test CA", "P-256"), 0);
    char *after = slurp(ca_cert), *key_after = slurp(ca_key);
    cr_assert_str_eq(before, after, "a second start keeps the CA");
    cr_assert_str_eq(key_before, key_after);
    free(before);
    free(after);
    free(key_before);
    free(key_after);
    X509_free(ca);
}

Test(pki, ca_on_p384)
{
    char c[256], k[256];
    path(c, "p384.pem");
    path(k, "p384.key");
    cr_assert_eq(pki_ensure_ca(c, k, "Platform CA", "P-384"), 0);
    X509 *ca = load_first_cert(c);
    cr_assert_eq(curve_of(ca), NID_secp384r1);
    cr_assert_eq(X509_get_signature_nid(ca), NID_ecdsa_with_SHA384);
    X509_free(ca);
}

Test(pki, a_ca_whose_key_does_not_match_is_refused)
{
    char c[256], k[256];
    path(c, "other.pem");
    path(k, "other.key");
    cr_assert_eq(pki_ensure_ca(c, k, "Other CA", "P-256"), 0);
    /* the cluster CA's certificate beside another CA's key */
    cr_assert_eq(pki_ensure_ca(ca_cert, k, "Test CA", "P-256"), -EINVAL);
}

Test(pki, server_cert_chains_to_the_ca_and_names_its_hosts)
{
    char c[256], k[256];
    path(c, "api.pem");
    path(k, "api.key");
    const char *names[] = {"localhost", "127.0.0.1", "::1", "api.example.com"};
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, names, 4, c, k), 0);
    cr_assert_eq(mode_of(k), 0600);
    X509 *leaf, *ca = load_first_cert(ca_cert);
    EVP_PKEY *key;
    cr_assert_eq(pki_load(c, k, &leaf, &key), 0, "the key file matches the certificate file");
    cr_assert_eq(verify(ca, NULL, leaf), 0);
    cr_assert_eq(X509_check_host(leaf, "api.example.com", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_host(leaf, "localhost", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
    cr_assert_eq(X509_check_ip_asc(leaf, "::1", 0), 1);
    cr_assert_neq(X509_check_host(leaf, "other.example.com", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0), 1);
    cr_assert_eq(X509_check_ca(leaf), 0);

    /* the file holds the leaf, then the CA */
    FILE *f = fopen(c, "re");
    X509 *first = PEM_read_X509(f, NULL, NULL, NULL), *second = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert_eq(X509_cmp(first, leaf), 0);
    cr_assert_not_null(second);
    cr_assert_eq(X509_cmp(second, ca), 0);

    /* the same names: kept; one more name: issued anew */
    char *before = slurp(c);
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, names, 4, c, k), 0);
    char *kept = slurp(c);
    cr_assert_str_eq(before, kept);
    const char *more[] = {"localhost", "127.0.0.1", "::1", "api.example.com", "10.1.2.3"};
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, more, 5, c, k), 0);
    char *reissued = slurp(c);
    cr_assert_str_neq(before, reissued);
    X509 *again;
    EVP_PKEY *again_key;
    cr_assert_eq(pki_load(c, k, &again, &again_key), 0);
    cr_assert_eq(X509_check_ip_asc(again, "10.1.2.3", 0), 1);
    free(before);
    free(kept);
    free(reissued);
    X509_free(first);
    X509_free(second);
    X509_free(again);
    EVP_PKEY_free(again_key);
    X509_free(leaf);
    EVP_PKEY_free(key);
    X509_free(ca);
}

Test(pki, signing_cert_is_p384_under_the_ca)
{
    char pc[256], pk[256], c[256], k[256];
    path(pc, "platform-ca.pem");
    path(pk, "platform-ca.key");
    path(c, "platform.pem");
    path(k, "platform.key");
    cr_assert_eq(pki_ensure_ca(pc, pk, "Platform CA", "P-384"), 0);
    cr_assert_eq(pki_ensure_signing_cert(pc, pk, "runner", c, k), 0);
    X509 *leaf, *ca = load_first_cert(pc);
    EVP_PKEY *key;
    cr_assert_eq(pki_load(c, k, &leaf, &key), 0);
    cr_assert_eq(EVP_PKEY_get_bits(key), 384);
    cr_assert_eq(verify(ca, NULL, leaf), 0);
    cr_assert_eq(X509_check_ca(leaf), 0);
    X509_free(leaf);
    EVP_PKEY_free(key);
    X509_free(ca);
}

/* The proxy's intermediate under "permitted .example.com, excluded
 * api.example.com": what it issues for a service host verifies; for the
 * API's name or a name outside the domain it does not. */
Test(pki, intermediate_name_constraints_hold_under_x509_verify)
{
    char c[256], k[256];
    path(c, "proxy-ca.pem");
    path(k, "proxy-ca.key");
    cr_assert_eq(pki_ensure_intermediate(ca_cert, ca_key, "Proxy CA",
                                         "critical,permitted;DNS:.example.com,excluded;DNS:api.example.com", c, k),
                 0);
    cr_assert_eq(mode_of(k), 0600);
    X509 *root = load_first_cert(ca_cert), *inter;
    EVP_PKEY *inter_key;
    cr_assert_eq(pki_load(c, k, &inter, &inter_key), 0);
    cr_assert_eq(X509_check_ca(inter), 1);
    cr_assert_eq(verify(root, NULL, inter), 0);
    STACK_OF(X509) *chain = sk_X509_new_null();
    sk_X509_push(chain, inter);

    static const struct {
        const char *name;
        int error;
    } cases[] = {
        {"app.example.com", 0},
        {"a.b.example.com", 0},
        {"api.example.com", X509_V_ERR_EXCLUDED_VIOLATION},
        {"app.example.org", X509_V_ERR_PERMITTED_VIOLATION},
        {"example.com.evil.net", X509_V_ERR_PERMITTED_VIOLATION},
        {"localhost", X509_V_ERR_PERMITTED_VIOLATION},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *leaf;
        EVP_PKEY *key;
        cr_assert_eq(pki_issue_server(inter, inter_key, cases[i].name, &leaf, &key), 0, "%s", cases[i].name);
        cr_expect_eq(verify(root, chain, leaf), cases[i].error, "%s: %s", cases[i].name,
                     X509_verify_cert_error_string(verify(root, chain, leaf)));
        cr_expect_eq(X509_check_host(leaf, cases[i].name, 0, 0, NULL), 1);
        X509_free(leaf);
        EVP_PKEY_free(key);
    }
    /* without the intermediate there is no chain */
    X509 *leaf;
    EVP_PKEY *key;
    cr_assert_eq(pki_issue_server(inter, inter_key, "app.example.com", &leaf, &key), 0);
    cr_assert_eq(verify(root, NULL, leaf), X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

    /* kept while valid: a second start issues nothing */
    char *before = slurp(c);
    cr_assert_eq(pki_ensure_intermediate(ca_cert, ca_key, "Proxy CA",
                                         "critical,permitted;DNS:.example.com,excluded;DNS:api.example.com", c, k),
                 0);
    char *after = slurp(c);
    cr_assert_str_eq(before, after);
    free(before);
    free(after);
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_free(chain);
    X509_free(inter);
    EVP_PKEY_free(inter_key);
    X509_free(root);
}

Test(pki, issue_server_refuses_what_cannot_be_a_host_name)
{
    X509 *root = load_first_cert(ca_cert), *leaf = NULL;
    EVP_PKEY *root_key, *key = NULL;
    X509 *ca_again;
    cr_assert_eq(pki_load(ca_cert, ca_key, &ca_again, &root_key), 0);
    char long_name[300];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = 0;
    cr_assert_eq(pki_issue_server(root, root_key, "", &leaf, &key), -EINVAL);
    cr_assert_eq(pki_issue_server(root, root_key, NULL, &leaf, &key), -EINVAL);
    cr_assert_eq(pki_issue_server(root, root_key, "127.0.0.1", &leaf, &key), -EINVAL);
    cr_assert_eq(pki_issue_server(root, root_key, long_name, &leaf, &key), -EINVAL);
    cr_assert_null(leaf, "ret_cert written on a refusal");
    cr_assert_null(key);
    X509_free(ca_again);
    EVP_PKEY_free(root_key);
    X509_free(root);
}

Test(pki, load_refuses_missing_and_mismatched_files)
{
    char c[256], k[256], other_c[256], other_k[256];
    path(c, "a.pem");
    path(k, "a.key");
    path(other_c, "b.pem");
    path(other_k, "b.key");
    const char *a[] = {"a.example.com"}, *b[] = {"b.example.com"};
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, a, 1, c, k), 0);
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, b, 1, other_c, other_k), 0);
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    cr_assert_eq(pki_load(c, other_k, &cert, &key), -EINVAL, "a key that is not the certificate's");
    char missing[256];
    path(missing, "missing.pem");
    cr_assert_eq(pki_load(missing, k, &cert, &key), -EINVAL);
    cr_assert_eq(pki_load(c, missing, &cert, &key), -EINVAL);
    cr_assert_null(cert);
    cr_assert_null(key);
    /* a server certificate from another key is issued anew, not kept */
    cr_assert_eq(write_file_atomic(k, "junk", 4, 0600), 0);
    cr_assert_eq(pki_ensure_server_cert(ca_cert, ca_key, a, 1, c, k), 0);
    cr_assert_eq(pki_load(c, k, &cert, &key), 0);
    X509_free(cert);
    EVP_PKEY_free(key);
}
