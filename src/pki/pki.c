#include "pki/pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"

#define CA_DAYS 3650
#define SERVER_DAYS 397

DEFINE_TRIVIAL_CLEANUP_FUNC(X509 *, X509_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_PKEY *, EVP_PKEY_free)
DEFINE_TRIVIAL_CLEANUP_FUNC(BIO *, BIO_free)

static void log_openssl(const char *what, const char *path)
{
    char buf[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    log_fields(LOG_LEVEL_ERROR, what, "path", path, "error", buf, NULL);
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -EINVAL;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -EINVAL;
}

/* A certificate with a random serial, SUBJECT_CN, valid from an hour ago for DAYS. */
static X509 *new_cert(EVP_PKEY *key, const char *subject_cn, int days)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    uint8_t serial[16];
    random_bytes(serial, sizeof(serial));
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    ASN1_INTEGER *sn = BN_to_ASN1_INTEGER(bn, NULL);
    X509_NAME *name = X509_NAME_new();
    bool ok = bn && sn && name && X509_set_version(x, 2) && X509_set_serialNumber(x, sn) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) &&
              X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Cloister", -1, -1, 0) &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)subject_cn, -1, -1, 0) &&
              X509_set_subject_name(x, name) && X509_set_pubkey(x, key);
    BN_free(bn);
    ASN1_INTEGER_free(sn);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int write_pem_key(const char *path, EVP_PKEY *key)
{
    _cleanup_(BIO_freep) BIO *b = BIO_new(BIO_s_mem());
    if (!b || !PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL))
        return -ENOMEM;
    char *data;
    long len = BIO_get_mem_data(b, &data);
    int r = write_file_atomic(path, data, (size_t)len, 0600);
    OPENSSL_cleanse(data, (size_t)len);
    return r;
}

static int write_pem_certs(const char *path, X509 *leaf, X509 *ca)
{
    _cleanup_(BIO_freep) BIO *b = BIO_new(BIO_s_mem());
    if (!b || !PEM_write_bio_X509(b, leaf) || (ca && !PEM_write_bio_X509(b, ca)))
        return -ENOMEM;
    char *data;
    long len = BIO_get_mem_data(b, &data);
    return write_file_atomic(path, data, (size_t)len, 0644);
}

/* Writes KEY (mode 0600) to KEY_PATH and CERT, followed by ISSUER when
 * set, to CERT_PATH, and logs it as WHAT named NAME (with FIELD=VALUE when
 * FIELD is set). Returns 0 or a negative errno (logged). */
static int save_issued(const char *what, const char *name, const char *field, const char *value, const char *key_path,
                       EVP_PKEY *key, const char *cert_path, X509 *cert, X509 *issuer)
{
    int r = write_pem_key(key_path, key);
    if (r == 0)
        r = write_pem_certs(cert_path, cert, issuer);
    if (r < 0) {
        char msg[64];
        snprintf(msg, sizeof(msg), "cannot write %s", what);
        log_fields(LOG_LEVEL_ERROR, msg, "path", cert_path, "error", strerror(-r), NULL);
        return r;
    }
    char msg[64];
    snprintf(msg, sizeof(msg), "issued %s", what);
    if (field)
        log_fields(LOG_LEVEL_INFO, msg, "name", name, "path", cert_path, field, value, NULL);
    else
        log_fields(LOG_LEVEL_INFO, msg, "name", name, "path", cert_path, NULL);
    return 0;
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static EVP_PKEY *load_key(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

/* The digest a CA with KEY signs with: SHA-384 for P-384 keys, else SHA-256. */
static const EVP_MD *ca_digest(EVP_PKEY *key)
{
    return EVP_PKEY_get_bits(key) >= 384 ? EVP_sha384() : EVP_sha256();
}

int pki_ensure_ca(const char *cert_path, const char *key_path, const char *common_name, const char *curve)
{
    struct stat st;
    if (stat(cert_path, &st) == 0 && stat(key_path, &st) == 0) {
        _cleanup_(X509_freep) X509 *ca = load_cert(cert_path);
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = load_key(key_path);
        if (!ca || !key || X509_check_private_key(ca, key) != 1) {
            log_openssl("a CA in the data dir is unreadable or does not match its key", cert_path);
            return -EINVAL;
        }
        return 0;
    }
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = EVP_EC_gen(curve);
    _cleanup_(X509_freep) X509 *ca = key ? new_cert(key, common_name, CA_DAYS) : NULL;
    if (!ca || !X509_set_issuer_name(ca, X509_get_subject_name(ca)) ||
        add_ext(ca, ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:1") < 0 ||
        add_ext(ca, ca, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(ca, ca, NID_subject_key_identifier, "hash") < 0 || !X509_sign(ca, key, ca_digest(key))) {
        log_openssl("cannot create a CA", cert_path);
        return -EIO;
    }
    return save_issued("a CA", common_name, NULL, NULL, key_path, key, cert_path, ca, NULL);
}

static bool is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* True when CERT is signed by CA, still valid for a month, and names every entry of NAMES. */
static bool cert_covers(X509 *cert, X509 *ca, const char *const *names, size_t n)
{
    EVP_PKEY *ca_key = X509_get0_pubkey(ca);
    if (!ca_key || X509_verify(cert, ca_key) != 1)
        return false;
    time_t soon = time(NULL) + 30 * 86400;
    if (X509_cmp_time(X509_get0_notAfter(cert), &soon) <= 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        int ok = is_ip(names[i]) ? X509_check_ip_asc(cert, names[i], 0) : X509_check_host(cert, names[i], 0, 0, NULL);
        if (ok != 1)
            return false;
    }
    return true;
}

/* What a leaf certificate is for: its name, key and extensions. */
typedef struct leaf_profile {
    const char *common_name;
    const char *curve;
    const char *ext_key_usage; /* NULL: none */
    const char *const *names;  /* subjectAltName entries (DNS or IP) */
    size_t n_names;
} leaf_profile;

/* Issues (or keeps, when still valid for P's names) the leaf certificate at
 * CERT_PATH/KEY_PATH signed by the CA; the file holds the leaf then the CA. */
static int ensure_leaf(const char *ca_cert_path, const char *ca_key_path, const leaf_profile *p,
                       const char *cert_path, const char *key_path)
{
    _cleanup_(X509_freep) X509 *ca = load_cert(ca_cert_path);
    if (!ca) {
        log_openssl("cannot read the CA", ca_cert_path);
        return -EINVAL;
    }
    {
        _cleanup_(X509_freep) X509 *existing = load_cert(cert_path);
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *existing_key = load_key(key_path);
        if (existing && existing_key && X509_check_private_key(existing, existing_key) == 1 &&
            cert_covers(existing, ca, p->names, p->n_names))
            return 0;
    }
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *ca_key = load_key(ca_key_path);
    if (!ca_key) {
        log_openssl("cannot read the CA key", ca_key_path);
        return -EINVAL;
    }
    _cleanup_strbuf_ strbuf san;
    strbuf_init(&san, 4096);
    for (size_t i = 0; i < p->n_names; i++)
        strbuf_printf(&san, "%s%s:%s", i ? "," : "", is_ip(p->names[i]) ? "IP" : "DNS", p->names[i]);
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = EVP_EC_gen(p->curve);
    _cleanup_(X509_freep) X509 *cert = key ? new_cert(key, p->common_name, SERVER_DAYS) : NULL;
    if (!cert || !X509_set_issuer_name(cert, X509_get_subject_name(ca)) ||
        add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(cert, ca, NID_key_usage, "critical,digitalSignature") < 0 ||
        (p->ext_key_usage && add_ext(cert, ca, NID_ext_key_usage, p->ext_key_usage) < 0) ||
        (p->n_names && add_ext(cert, ca, NID_subject_alt_name, san.data) < 0) ||
        add_ext(cert, ca, NID_authority_key_identifier, "keyid:always") < 0 ||
        !X509_sign(cert, ca_key, ca_digest(ca_key))) {
        log_openssl("cannot issue a certificate", cert_path);
        return -EIO;
    }
    return save_issued("a certificate", p->common_name, "names", san.data ? san.data : "", key_path, key, cert_path,
                       cert, ca);
}

int pki_ensure_server_cert(const char *ca_cert_path, const char *ca_key_path, const char *const *names,
                           size_t n_names, const char *cert_path, const char *key_path)
{
    leaf_profile p = {.common_name = names[0], .curve = "P-256", .ext_key_usage = "serverAuth", .names = names,
                      .n_names = n_names};
    return ensure_leaf(ca_cert_path, ca_key_path, &p, cert_path, key_path);
}

int pki_ensure_role_cert(const char *ca_cert_path, const char *ca_key_path, const char *role, const char *cert_path,
                         const char *key_path)
{
    char name[128];
    if ((size_t)snprintf(name, sizeof(name), "%s" PKI_ROLE_NAME_SUFFIX, role) >= sizeof(name))
        return -ENAMETOOLONG;
    const char *names[] = {name};
    leaf_profile p = {.common_name = name, .curve = "P-256", .ext_key_usage = "serverAuth,clientAuth", .names = names,
                      .n_names = 1};
    return ensure_leaf(ca_cert_path, ca_key_path, &p, cert_path, key_path);
}

int pki_ensure_signing_cert(const char *ca_cert_path, const char *ca_key_path, const char *common_name,
                            const char *cert_path, const char *key_path)
{
    leaf_profile p = {.common_name = common_name, .curve = "P-384"};
    return ensure_leaf(ca_cert_path, ca_key_path, &p, cert_path, key_path);
}

int pki_ensure_intermediate(const char *ca_cert_path, const char *ca_key_path, const char *common_name,
                            const char *name_constraints, const char *cert_path, const char *key_path)
{
    _cleanup_(X509_freep) X509 *ca = load_cert(ca_cert_path);
    if (!ca) {
        log_openssl("cannot read the CA", ca_cert_path);
        return -EINVAL;
    }
    {
        _cleanup_(X509_freep) X509 *existing = load_cert(cert_path);
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *existing_key = load_key(key_path);
        time_t soon = time(NULL) + 30 * 86400;
        if (existing && existing_key && X509_check_private_key(existing, existing_key) == 1 &&
            X509_verify(existing, X509_get0_pubkey(ca)) == 1 &&
            X509_cmp_time(X509_get0_notAfter(existing), &soon) > 0)
            return 0;
    }
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *ca_key = load_key(ca_key_path);
    if (!ca_key) {
        log_openssl("cannot read the CA key", ca_key_path);
        return -EINVAL;
    }
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = EVP_EC_gen("P-256");
    _cleanup_(X509_freep) X509 *cert = key ? new_cert(key, common_name, SERVER_DAYS) : NULL;
    if (!cert || !X509_set_issuer_name(cert, X509_get_subject_name(ca)) ||
        add_ext(cert, ca, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        add_ext(cert, ca, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        add_ext(cert, ca, NID_name_constraints, name_constraints) < 0 ||
        add_ext(cert, cert, NID_subject_key_identifier, "hash") < 0 ||
        add_ext(cert, ca, NID_authority_key_identifier, "keyid:always") < 0 ||
        !X509_sign(cert, ca_key, ca_digest(ca_key))) {
        log_openssl("cannot issue an intermediate CA", cert_path);
        return -EIO;
    }
    return save_issued("an intermediate CA", common_name, "constraints", name_constraints, key_path, key, cert_path,
                       cert, NULL);
}

int pki_load(const char *cert_path, const char *key_path, X509 **ret_cert, EVP_PKEY **ret_key)
{
    _cleanup_(X509_freep) X509 *cert = load_cert(cert_path);
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = load_key(key_path);
    if (!cert || !key || X509_check_private_key(cert, key) != 1) {
        log_openssl("cannot load a certificate and its key", cert_path);
        return -EINVAL;
    }
    *ret_cert = TAKE_PTR(cert);
    *ret_key = TAKE_PTR(key);
    return 0;
}

int pki_issue_server(X509 *issuer, EVP_PKEY *issuer_key, const char *name, X509 **ret_cert, EVP_PKEY **ret_key)
{
    if (!name || !*name || strlen(name) > 253 || is_ip(name))
        return -EINVAL;
    char san[300];
    snprintf(san, sizeof(san), "DNS:%s", name);
    _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = EVP_EC_gen("P-256");
    _cleanup_(X509_freep) X509 *cert = key ? new_cert(key, name, SERVER_DAYS) : NULL;
    if (!cert || !X509_set_issuer_name(cert, X509_get_subject_name(issuer)) ||
        add_ext(cert, issuer, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(cert, issuer, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(cert, issuer, NID_ext_key_usage, "serverAuth") < 0 ||
        add_ext(cert, issuer, NID_subject_alt_name, san) < 0 ||
        add_ext(cert, issuer, NID_authority_key_identifier, "keyid:always") < 0 ||
        !X509_sign(cert, issuer_key, ca_digest(issuer_key))) {
        ERR_clear_error();
        return -EIO;
    }
    *ret_cert = TAKE_PTR(cert);
    *ret_key = TAKE_PTR(key);
    return 0;
}
