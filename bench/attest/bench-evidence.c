/* Sandbox evidence for bench/attest/release.py, made as the runner makes it
 * (attest_sandbox_issue() with the runner's platform key, certificate and
 * platform CA, read from the data dir by this process of the daemon's user)
 * now that runner.sock answers only the api role:
 *
 *   bench-evidence DATA BUNDLE RUNTIME
 *
 * prints "pcr0 HEX" (BUNDLE's measurement, the runner's PCR0), then for each
 * line "NONCE_HEX PUBLIC_KEY_HEX" on stdin one line with a base64 document
 * whose PCRs are those of a plain-mode sandbox of BUNDLE launched by the
 * cloisterd executable RUNTIME with no configuration (PCR1 its SHA-384,
 * PCR2 the SHA-384 of "{}"). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attest/attest.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "sandbox/measure.h"

#define BINDING_MAX 1024

static void *read_pem(const char *data, const char *name, bool key)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", data, name);
    FILE *f = fopen(path, "re");
    void *v = !f ? NULL : key ? (void *)PEM_read_PrivateKey(f, NULL, NULL, NULL) : (void *)PEM_read_X509(f, NULL, NULL, NULL);
    if (f)
        fclose(f);
    if (!v)
        fprintf(stderr, "bench-evidence: cannot read %s\n", path);
    return v;
}

/* Decodes the hex word at *P (up to a space or the end) into OUT; its
 * length, or -1 when it is not hex of at most BINDING_MAX bytes. */
static ssize_t hex_word(char **p, uint8_t out[BINDING_MAX])
{
    char *s = *p, *end = s + strcspn(s, " \n");
    size_t n = (size_t)(end - s);
    *p = *end ? end + 1 : end;
    if (n % 2 || n / 2 > BINDING_MAX || hex_decode(s, n, out, n / 2) < 0)
        return -1;
    return (ssize_t)(n / 2);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: bench-evidence DATA BUNDLE RUNTIME\n");
        return 2;
    }
    EVP_PKEY *key = read_pem(argv[1], "runner/platform.key", true);
    X509 *cert = read_pem(argv[1], "runner/platform.pem", false), *ca = read_pem(argv[1], "platform-ca.pem", false);
    if (!key || !cert || !ca)
        return 1;
    attest_sandbox_claims c = {.module_id = "sandbox-bench"};
    measure_error merr = {{0}};
    if (bundle_measure(argv[2], c.pcrs[0], &merr) < 0) {
        fprintf(stderr, "bench-evidence: cannot measure %s: %s\n", argv[2], merr.text);
        return 1;
    }
    int r = sha384_file(AT_FDCWD, argv[3], true, c.pcrs[1], NULL);
    if (r < 0) {
        fprintf(stderr, "bench-evidence: cannot hash %s: %s\n", argv[3], strerror(-r));
        return 1;
    }
    EVP_Digest("{}", 2, c.pcrs[2], NULL, EVP_sha384(), NULL);
    char pcr0[2 * ATTEST_SANDBOX_PCR_LEN + 1];
    hex_encode(c.pcrs[0], ATTEST_SANDBOX_PCR_LEN, pcr0);
    printf("pcr0 %s\n", pcr0);
    fflush(stdout);

    char line[4 * BINDING_MAX + 8];
    static uint8_t nonce[BINDING_MAX], public_key[BINDING_MAX];
    while (fgets(line, sizeof(line), stdin)) {
        char *p = line;
        ssize_t nn = hex_word(&p, nonce), np = hex_word(&p, public_key);
        if (nn < 0 || np < 0) {
            fprintf(stderr, "bench-evidence: expected NONCE_HEX PUBLIC_KEY_HEX\n");
            return 1;
        }
        c.nonce = nonce;
        c.nonce_len = (size_t)nn;
        c.public_key = public_key;
        c.public_key_len = (size_t)np;
        c.timestamp_ms = time_now_ns() / NSEC_PER_MSEC;
        _cleanup_free_ uint8_t *doc = NULL;
        size_t len;
        r = attest_sandbox_issue(key, cert, &ca, 1, &c, &doc, &len);
        _cleanup_free_ char *b64 = r == 0 ? malloc(base64_encoded_size(len)) : NULL;
        if (!b64) {
            fprintf(stderr, "bench-evidence: cannot sign the document: %s\n", strerror(r < 0 ? -r : ENOMEM));
            return 1;
        }
        base64_encode(doc, len, b64, false);
        printf("%s\n", b64);
        fflush(stdout);
    }
    EVP_PKEY_free(key);
    X509_free(cert);
    X509_free(ca);
    return 0;
}
