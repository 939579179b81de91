/* libFuzzer target: Intel TDX quotes (header, TD report body, signature
 * data, QE report, PCK certificate chain in PEM). */
#include <stddef.h>
#include <stdint.h>

#include "attest/attest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    attest_options opts = {.time = 1688173200}; /* 2023-07-01T01:00:00Z */
    attest_error error;
    json_t *result = NULL;

    if (attest_verify(ATTEST_TDX, data, size, &opts, &result, &error) == 0)
        json_decref(result);
    return 0;
}
