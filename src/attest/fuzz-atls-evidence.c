/* libFuzzer target: the content of the aTLS evidence extension
 * (CloisterAttestation DER) and the nonce SNI parser. Whatever decodes must
 * re-encode to the same bytes. */
#include <stdlib.h>
#include <string.h>

#include "attest/atls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    atls_evidence e = {0};
    attest_error error;
    if (atls_evidence_decode(data, size, &e, &error) == 0) {
        uint8_t *der = NULL;
        size_t len = 0;
        if (atls_evidence_encode(&e, &der, &len) != 0 || len != size || memcmp(der, data, size) != 0)
            abort();
        free(der);
        atls_evidence_done(&e);
    }
    if (size <= 128) {
        char sni[129];
        uint8_t nonce[ATLS_NONCE_LEN];
        memcpy(sni, data, size);
        sni[size] = 0;
        if (atls_sni_to_nonce(sni, nonce) == 0) {
            char again[ATLS_SNI_LEN + 1];
            atls_sni_from_nonce(nonce, again);
            if (strcmp(again, sni) != 0)
                abort();
        }
    }
    return 0;
}
