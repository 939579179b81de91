/* libFuzzer target: the query parameters of the audit endpoints (entry
 * ranges, inclusion and consistency proofs) and those naming a segment's
 * bytes (POST /v1/segment, the spool channel's messages). Accepted values
 * are in range and ids valid. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit/entry.h"
#include "audit/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[][2] = {{"start", "end"}, {"index", "size"}, {"from", "to"}};
    for (size_t i = 0; i < 3; i++) {
        uint64_t v[2];
        if (audit_parse_query((const char *)data, size, names[i], v) == 0 &&
            (v[0] > (UINT64_C(1) << 62) || v[1] > (UINT64_C(1) << 62)))
            abort();
    }
    char id[SEGMENT_ID_MAX + 1];
    uint64_t offset, length;
    if (segment_params_parse((const char *)data, size, id, &offset, &length) &&
        (!segment_id_valid(id, strlen(id)) || offset > (UINT64_C(1) << 62) || length > (UINT64_C(1) << 62)))
        abort();
    return 0;
}
