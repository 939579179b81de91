/* libFuzzer target: AMD SEV-SNP reports. The first 1184 bytes are the
 * report, anything after them the VCEK/VLEK certificate (DER or PEM). */
#include <stddef.h>
#include <stdint.h>

#include "attest/attest.h"

#define REPORT_SIZE 1184

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    attest_options opts = {.time = 1704067200}; /* 2024-01-01T00:00:00Z */
    size_t report_len = size > REPORT_SIZE ? REPORT_SIZE : size;
    attest_error error;
    json_t *result = NULL;

    opts.cert = (attest_blob){data + report_len, size - report_len};
    if (attest_verify(ATTEST_SEV_SNP, data, report_len, &opts, &result, &error) == 0)
        json_decref(result);
    return 0;
}
