/* libFuzzer target: the audit entry decoder. Whatever it accepts must come
 * back canonical: decoding the canonical text gives the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit/entry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *out;
    size_t len;
    if (audit_entry_canonicalize((const char *)data, size, &out, &len) < 0)
        return 0;
    char *again;
    size_t len2;
    if (audit_entry_canonicalize(out, len, &again, &len2) < 0 || len2 != len || memcmp(out, again, len) != 0)
        abort();
    free(again);
    free(out);
    return 0;
}
