/* libFuzzer target: AWS Nitro / sandbox attestation documents (COSE_Sign1,
 * CBOR payload, certificates), raw or as base64 text. */
#include <stddef.h>
#include <stdint.h>

#include "attest/attest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    attest_options opts = {.time = 1725719860}; /* 2024-09-07T14:37:40Z */
    attest_error error;
    json_t *result = NULL;

    if (attest_verify(ATTEST_NITRO, data, size, &opts, &result, &error) == 0)
        json_decref(result);
    return 0;
}
