/* libFuzzer target: the ClientHello server-name parser of egress tunnels.
 * Whatever it accepts is a valid lower-case DNS name, and a prefix of an
 * input it answered is never judged differently than "needs more". */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runner/egress-check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char sni[EGRESS_HOST_MAX + 1];
    size_t need = 0;
    int r = egress_sni_parse(data, size, sni, &need);
    if (r == -EAGAIN && (need <= size || need > EGRESS_TLS_RECORD_MAX))
        abort();
    if (r == 0) {
        if (!egress_host_valid(sni) || strlen(sni) > EGRESS_HOST_MAX)
            abort();
        for (const char *p = sni; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                abort();
        /* a cut record needs more bytes, never succeeds */
        char again[EGRESS_HOST_MAX + 1];
        if (size > 0 && egress_sni_parse(data, size - 1, again, NULL) == 0 &&
            (size_t)(((size_t)data[3] << 8 | data[4]) + 5) > size - 1)
            abort();
    }
    return 0;
}
