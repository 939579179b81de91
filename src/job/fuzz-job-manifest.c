/* libFuzzer: the job manifest's parser on any input. */
#include <stdint.h>

#include "job/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    job_manifest *m = NULL;
    char err[JOB_ERROR_MAX];
    if (job_manifest_parse((const char *)data, size, &m, err) == 0)
        job_manifest_free(m);
    return 0;
}
