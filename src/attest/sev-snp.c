/* AMD SEV-SNP attestation reports, versions 2 and 3 (SEV Secure Nested
 * Paging Firmware ABI Specification, "ATTESTATION_REPORT Structure"):
 * 1184 bytes, ECDSA P-384 with SHA-384 over bytes 0x0–0x29F by the VCEK (or
 * VLEK), whose RSA-PSS chain runs ARK → ASK → VCEK (or ARK → ASVK → VLEK). */
#include <errno.h>
#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "attest/attest-internal.h"

#define REPORT_SIZE 0x4A0
#define SIGNED_SIZE 0x2A0

/* field offsets */
#define OFF_VERSION 0x000
#define OFF_POLICY 0x008
#define OFF_VMPL 0x030
#define OFF_SIG_ALGO 0x034
#define OFF_FLAGS 0x048
#define OFF_RESERVED0 0x04C
#define OFF_REPORT_DATA 0x050
#define OFF_MEASUREMENT 0x090
#define OFF_HOST_DATA 0x0C0
#define OFF_REPORTED_TCB 0x180
#define OFF_RESERVED1 0x188 /* v3: CPUID family, model, stepping, then reserved */
#define OFF_CHIP_ID 0x1A0
#define OFF_RESERVED2 0x1F8
#define OFF_SIG_R 0x2A0
#define OFF_SIG_S 0x2E8
#define OFF_SIG_RESERVED 0x330

#define SIG_COMPONENT_SIZE 72 /* little-endian, of which 48 significant */
#define P384_SIZE 48
#define SIG_ALGO_ECDSA_P384_SHA384 1
#define POLICY_DEBUG (UINT64_C(1) << 19)
#define FLAGS_MASK_CHIP_ID (1u << 1)
#define FLAGS_SIGNING_KEY_SHIFT 2
#define FLAGS_SIGNING_KEY_MASK 7u
#define SIGNING_KEY_VCEK 0
#define SIGNING_KEY_VLEK 1
#define CPUID_FAMILY_TURIN 0x1A

/* Certificate extensions of the VCEK: the TCB components it was issued for,
 * as INTEGERs, and the chip it belongs to (hwID, 64 raw bytes). The byte is
 * the component's position in a Milan/Genoa TCB_VERSION. */
static const struct {
    const char *oid;
    const char *name;
    unsigned byte;
} tcb_extensions[] = {
    {"1.3.6.1.4.1.3704.1.3.1", "bootloader", 0},
    {"1.3.6.1.4.1.3704.1.3.2", "tee", 1},
    {"1.3.6.1.4.1.3704.1.3.3", "snp", 6},
    {"1.3.6.1.4.1.3704.1.3.8", "microcode", 7},
};
#define OID_HWID "1.3.6.1.4.1.3704.1.4"

/* The extension of CERT with the dotted OID, or NULL. -EBADMSG when it
 * appears more than once. */
static int find_extension(X509 *cert, const char *oid, X509_EXTENSION **ret_ext, attest_error *error)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    if (!obj)
        return attest_fail(error, -ENOMEM, "out of memory");
    int idx = X509_get_ext_by_OBJ(cert, obj, -1);
    int again = idx >= 0 ? X509_get_ext_by_OBJ(cert, obj, idx) : -1;
    ASN1_OBJECT_free(obj);
    if (again >= 0)
        return attest_fail(error, -EBADMSG, "certificate: extension %s repeated", oid);
    *ret_ext = idx >= 0 ? X509_get_ext(cert, idx) : NULL;
    return 0;
}

/* Checks each TCB extension the certificate carries against REPORTED_TCB
 * (Milan/Genoa layout) and the hwID extension against CHIP_ID unless the
 * report masks its chip ID. */
static int check_cert_extensions(X509 *cert, const uint8_t *report, attest_error *error)
{
    const uint8_t *tcb = report + OFF_REPORTED_TCB;
    X509_EXTENSION *ext;
    int r;

    for (size_t i = 0; i < ELEMENTSOF(tcb_extensions); i++) {
        r = find_extension(cert, tcb_extensions[i].oid, &ext, error);
        if (r < 0)
            return r;
        if (!ext)
            continue;
        const ASN1_OCTET_STRING *os = X509_EXTENSION_get_data(ext);
        const unsigned char *p = ASN1_STRING_get0_data(os);
        long n = ASN1_STRING_length(os);
        ASN1_INTEGER *value = d2i_ASN1_INTEGER(NULL, &p, n);
        uint64_t v = 0;
        bool ok = value && p == ASN1_STRING_get0_data(os) + n && ASN1_INTEGER_get_uint64(&v, value);
        ASN1_INTEGER_free(value);
        if (!ok)
            return attest_fail(error, -EBADMSG, "certificate: TCB extension %s is not an integer",
                               tcb_extensions[i].name);
        if (v != tcb[tcb_extensions[i].byte])
            return attest_fail(error, -EKEYREJECTED,
                               "report field reported_tcb: %s is %u, the certificate is for %llu",
                               tcb_extensions[i].name, tcb[tcb_extensions[i].byte],
                               (unsigned long long)v);
    }

    r = find_extension(cert, OID_HWID, &ext, error);
    if (r < 0)
        return r;
    if (ext && !(le32(report + OFF_FLAGS) & FLAGS_MASK_CHIP_ID)) {
        const ASN1_OCTET_STRING *os = X509_EXTENSION_get_data(ext);
        if (ASN1_STRING_length(os) != 64)
            return attest_fail(error, -EBADMSG, "certificate: hwID extension of %d bytes",
                               ASN1_STRING_length(os));
        if (memcmp(ASN1_STRING_get0_data(os), report + OFF_CHIP_ID, 64) != 0)
            return attest_fail(error, -EKEYREJECTED,
                               "report field chip_id: does not match the certificate's hwID");
    }
    return 0;
}

/* Checks the fields that must hold before anything is trusted: size,
 * version, algorithm, signing key kind, VMPL, reserved areas. Returns the
 * signing key kind (VCEK or VLEK) on success. */
static int check_report(const uint8_t *report, size_t len, attest_error *error)
{
    if (len != REPORT_SIZE)
        return attest_fail(error, -EBADMSG, "report: %zu bytes, expected %d", len, REPORT_SIZE);

    uint32_t version = le32(report + OFF_VERSION);
    if (version != 2 && version != 3)
        return attest_fail(error, -EBADMSG, "report field version: %u, expected 2 or 3", version);
    uint32_t algo = le32(report + OFF_SIG_ALGO);
    if (algo != SIG_ALGO_ECDSA_P384_SHA384)
        return attest_fail(error, -EBADMSG,
                           "report field signature_algo: %u, expected 1 (ECDSA P-384 SHA-384)", algo);
    uint64_t policy = le64(report + OFF_POLICY);
    if (policy >> 32)
        return attest_fail(error, -EBADMSG, "report field policy: reserved bits set (0x%llx)",
                           (unsigned long long)policy);
    uint32_t vmpl = le32(report + OFF_VMPL);
    if (vmpl > 3)
        return attest_fail(error, -EBADMSG, "report field vmpl: %u, expected 0 to 3", vmpl);
    uint32_t flags = le32(report + OFF_FLAGS);
    if (flags >> 5)
        return attest_fail(error, -EBADMSG, "report field flags: reserved bits set (0x%x)", flags);
    unsigned key = (flags >> FLAGS_SIGNING_KEY_SHIFT) & FLAGS_SIGNING_KEY_MASK;
    if (key != SIGNING_KEY_VCEK && key != SIGNING_KEY_VLEK)
        return attest_fail(error, -EKEYREJECTED,
                           "report field signing_key: %u, the report is not signed by a VCEK or VLEK",
                           key);

    if (version >= 3 && report[OFF_RESERVED1] == CPUID_FAMILY_TURIN)
        return attest_fail(error, -EBADMSG,
                           "report field cpuid_fam_id: 0x%x (Turin) is not supported",
                           report[OFF_RESERVED1]);
    size_t reserved1 = version >= 3 ? OFF_RESERVED1 + 3 : OFF_RESERVED1;
    const struct {
        size_t off, len;
    } mbz[] = {
        {OFF_RESERVED0, 4},
        {reserved1, OFF_CHIP_ID - reserved1},
        {OFF_RESERVED2, SIGNED_SIZE - OFF_RESERVED2},
        {OFF_SIG_R + P384_SIZE, SIG_COMPONENT_SIZE - P384_SIZE},
        {OFF_SIG_S + P384_SIZE, SIG_COMPONENT_SIZE - P384_SIZE},
        {OFF_SIG_RESERVED, REPORT_SIZE - OFF_SIG_RESERVED},
    };
    for (size_t i = 0; i < ELEMENTSOF(mbz); i++)
        if (!attest_all_zero(report + mbz[i].off, mbz[i].len))
            return attest_fail(error, -EBADMSG, "report: reserved bytes at 0x%zx are not zero",
                               mbz[i].off);
    return (int)key;
}

/* Checks that CERT is the kind of key the report names, by subject CN. */
static int check_cert_kind(X509 *cert, int key, attest_error *error)
{
    const char *want = key == SIGNING_KEY_VCEK ? "SEV-VCEK" : "SEV-VLEK";
    char cn[64] = "";
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    if (n < 0 || strcmp(cn, want) != 0)
        return attest_fail(error, -EKEYREJECTED,
                           "certificate: subject CN is \"%s\", the report is signed by a %s", cn,
                           key == SIGNING_KEY_VCEK ? "VCEK" : "VLEK");
    return 0;
}

/* Verifies the report signature: r and s are little-endian, 72 bytes each. */
static int check_signature(X509 *cert, const uint8_t *report, attest_error *error)
{
    uint8_t r[P384_SIZE], s[P384_SIZE];
    for (size_t i = 0; i < P384_SIZE; i++) {
        r[i] = report[OFF_SIG_R + P384_SIZE - 1 - i];
        s[i] = report[OFF_SIG_S + P384_SIZE - 1 - i];
    }
    return attest_ecdsa_verify("signature", X509_get0_pubkey(cert), NID_secp384r1, EVP_sha384(), r,
                               s, P384_SIZE, report, SIGNED_SIZE, error);
}

/* The claims of DESIGN.md. */
static int make_claims(const uint8_t *report, json_t **ret)
{
    const uint8_t *tcb = report + OFF_REPORTED_TCB;
    uint64_t policy = le64(report + OFF_POLICY);
    _cleanup_(json_decrefp) json_t *claims = json_object();
    if (!claims)
        return -ENOMEM;
    if (attest_json_set_new(claims, "version", json_integer(le32(report + OFF_VERSION))) < 0 ||
        attest_json_set_hex(claims, "measurement", report + OFF_MEASUREMENT, 48) < 0 ||
        attest_json_set_hex(claims, "report_data", report + OFF_REPORT_DATA, 64) < 0 ||
        attest_json_set_hex(claims, "host_data", report + OFF_HOST_DATA, 32) < 0 ||
        attest_json_set_new(claims, "policy", json_integer((json_int_t)policy)) < 0 ||
        attest_json_set_new(claims, "debug", json_boolean(policy & POLICY_DEBUG)) < 0 ||
        attest_json_set_hex(claims, "chip_id", report + OFF_CHIP_ID, 64) < 0 ||
        attest_json_set_new(claims, "reported_tcb",
                            json_pack("{s:i, s:i, s:i, s:i}", "bootloader", tcb[0], "tee", tcb[1],
                                      "snp", tcb[6], "microcode", tcb[7])) < 0)
        return -ENOMEM;
    *ret = TAKE_PTR(claims);
    return 0;
}

int attest_sev_snp_verify(const uint8_t *report, size_t len, const attest_options *opts,
                          json_t **ret_claims, attest_error *error)
{
    _cleanup_(X509_freep) X509 *cert = NULL;
    _cleanup_(attest_roots_done) attest_roots roots = {};
    int key, r;

    key = check_report(report, len, error);
    if (key < 0)
        return key;
    if (!opts->cert.data || opts->cert.len == 0)
        return attest_fail(error, -ENOKEY, "sev-snp evidence needs the VCEK or VLEK certificate");
    r = attest_cert_parse("certificate", opts->cert.data, opts->cert.len, &cert, error);
    if (r < 0)
        return r;
    r = check_cert_kind(cert, key, error);
    if (r < 0)
        return r;
    r = check_signature(cert, report, error);
    if (r < 0)
        return r;
    r = attest_roots_load(ATTEST_SEV_SNP, opts, &roots, error);
    if (r < 0)
        return r;
    r = attest_chain_verify(cert, NULL, &roots, NULL, opts->time, error);
    if (r < 0)
        return r;
    r = check_cert_extensions(cert, report, error);
    if (r < 0)
        return r;

    r = make_claims(report, ret_claims);
    if (r < 0)
        return attest_fail(error, r, "out of memory");
    return 0;
}
