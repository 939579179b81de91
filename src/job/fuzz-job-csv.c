/* libFuzzer: the engine's typed CSV load (basic/csv.h and the loader) on any
 * input, split where the first byte says, then a query over what loaded. */
#include <stdint.h>
#include <stdlib.h>

#include "basic/macro.h"
#include "job/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const job_column cols[] = {{"id", CSV_INTEGER}, {"name", CSV_TEXT}, {"x", CSV_REAL}};
    static const job_limits limits = {.memory_mib = 64, .seconds = 5, .rows = 1000};
    if (size == 0)
        return 0;
    size_t split = data[0];
    data++;
    size--;
    job_engine *e;
    job_loader *l;
    char err[JOB_ERROR_MAX];
    if (job_engine_new(&limits, &e, err) < 0)
        abort();
    if (job_loader_new(e, "t", "t", cols, ELEMENTSOF(cols), &l) < 0)
        abort();
    split = MIN(split, size);
    int r = job_loader_feed(l, data, split);
    if (r == 0)
        r = job_loader_feed(l, data + split, size - split);
    if (r == 0)
        r = job_loader_finish(l, NULL);
    job_loader_free(l);
    if (r == 0 && job_engine_seal(e) == 0 &&
        job_engine_prepare(e, "SELECT count(*), sum(id), group_concat(name), avg(x) FROM t") == 0) {
        uint8_t buf[4096];
        while (job_engine_read(e, buf, sizeof(buf)) > 0)
            ;
    }
    job_engine_free(e);
    return 0;
}
