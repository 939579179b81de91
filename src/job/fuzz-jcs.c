/* libFuzzer target: jcs_serialize() of any JSON jansson parses. Must never
 * crash or leak; what it accepts must be a fixed point (the canonical form
 * parses back to the same value and serializes to the same bytes), and a
 * job digest input built from the value, when one is, hashes without error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "job/digest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!v)
        return 0;
    char *text = NULL;
    if (jcs_serialize(v, &text) == 0) {
        json_t *again = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        char *text2 = NULL;
        if (!again || !json_equal(v, again) || jcs_serialize(again, &text2) != 0 || strcmp(text, text2) != 0)
            abort();
        free(text2);
        json_decref(again);
    }
    free(text);
    /* the value as a job spec and what the server resolved for it */
    json_t *input = NULL;
    uint8_t digest[JOB_DIGEST_SIZE];
    if (job_digest_input(json_object_get(v, "spec"), json_object_get(v, "resolved"), &input) == 0 &&
        job_digest(input, digest) != 0)
        abort();
    json_decref(input);
    json_decref(v);
    return 0;
}
