/* Attestation verification speed: for every evidence file in the vectors'
 * attestation folders, the median and p99 time of attest_verify() at the
 * evidence's documented time, and verifications per second. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attest/attest.h"
#include "basic/fileio.h"
#include "basic/timeutil.h"

#define RUNS 400

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static char *slurp(const char *dir, const char *name, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    char *data = NULL;
    if (read_file(path, 1 << 20, &data, len) < 0) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    return data;
}

static void bench(const char *label, attest_type type, const char *evidence, size_t len, const attest_options *o)
{
    static uint64_t t[RUNS];
    for (int i = 0; i < RUNS; i++) {
        json_t *res = NULL;
        uint64_t start = time_mono_ns();
        int r = attest_verify(type, (const uint8_t *)evidence, len, o, &res, NULL);
        t[i] = time_mono_ns() - start;
        if (r < 0) {
            fprintf(stderr, "%s: does not verify (%d)\n", label, r);
            exit(1);
        }
        json_decref(res);
    }
    qsort(t, RUNS, sizeof(t[0]), cmp_u64);
    double median = (double)t[RUNS / 2] / 1e6, p99 = (double)t[RUNS * 99 / 100] / 1e6;
    printf("%-8s median %.3f ms  p99 %.3f ms  %.0f verifications/s  (target <= 5 ms)\n", label, median, p99,
           1e3 / median);
}

int main(void)
{
    const char *v = getenv("CLOISTER_VECTORS");
    if (!v) {
        fprintf(stderr, "set CLOISTER_VECTORS\n");
        return 2;
    }
    char dir[4096];
    size_t len, cert_len, crl1_len, crl2_len;
    int64_t t;

    snprintf(dir, sizeof(dir), "%s/attestation/nitro", v);
    char *nitro = slurp(dir, "nitro_attestation.b64", &len);
    time_parse_rfc3339("2024-09-07T14:37:39Z", &t);
    bench("nitro", ATTEST_NITRO, nitro, len, &(attest_options){.time = t});

    snprintf(dir, sizeof(dir), "%s/attestation/sev-snp", v);
    char *snp = slurp(dir, "test-report.bin", &len), *vcek = slurp(dir, "test-vcek.der", &cert_len);
    bench("sev-snp", ATTEST_SEV_SNP, snp, len,
          &(attest_options){.time = t, .cert = {(const uint8_t *)vcek, cert_len}});

    snprintf(dir, sizeof(dir), "%s/attestation/tdx", v);
    char *tdx = slurp(dir, "tdx_prod_quote_SPR_E4.dat", &len);
    char *crl1 = slurp(dir, "pckcrl", &crl1_len), *crl2 = slurp(dir, "rootcrl.der", &crl2_len);
    time_parse_rfc3339("2023-07-01T01:00:00Z", &t);
    attest_blob crls[2] = {{(const uint8_t *)crl1, crl1_len}, {(const uint8_t *)crl2, crl2_len}};
    bench("tdx", ATTEST_TDX, tdx, len, &(attest_options){.time = t, .crls = crls, .n_crls = 2});
    free(nitro);
    free(snp);
    free(vcek);
    free(tdx);
    free(crl1);
    free(crl2);
    return 0;
}
