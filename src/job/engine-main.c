/* cloister-job --manifest FILE: the job engine's program (engine.h). Prints
 * one JSON line on stdout: {"ok": true, "rows": N, "resultSha256": hex}, or
 * {"ok": false, "error": "..."} with exit status 1 (2 for a usage error). */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "job/engine.h"

static int answer_error(int status, const char *msg)
{
    json_t *j = json_pack("{s:b, s:s}", "ok", 0, "error", msg);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    printf("%s\n", s ? s : "{\"ok\":false,\"error\":\"out of memory\"}");
    free(s);
    json_decref(j);
    return status;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: cloister-job --manifest FILE\n"
               "Runs a confidential-analytics job described by FILE (docs/analytics.md, \"The job engine\").\n");
        return 0;
    }
    if (argc != 3 || strcmp(argv[1], "--manifest") != 0)
        return answer_error(2, "usage: cloister-job --manifest FILE");
    if (job_engine_global_init() < 0)
        return answer_error(1, "cannot set up SQLite's allocator");
    _cleanup_free_ char *text = NULL;
    size_t len;
    char err[JOB_ERROR_MAX];
    int r = read_file(argv[2], JOB_MANIFEST_MAX, &text, &len);
    if (r < 0) {
        snprintf(err, sizeof(err), "cannot read the manifest %s: %s", argv[2],
                 r == -EFBIG ? "larger than 1 MiB" : strerror(-r));
        return answer_error(1, err);
    }
    job_manifest *m = NULL;
    if (job_manifest_parse(text, len, &m, err) < 0)
        return answer_error(1, err);
    uint64_t rows = 0;
    uint8_t digest[32];
    r = job_run(m, &rows, digest, err);
    job_manifest_free(m);
    if (r < 0)
        return answer_error(1, err);
    char hex[65];
    hex_encode(digest, sizeof(digest), hex);
    printf("{\"ok\":true,\"rows\":%" PRIu64 ",\"resultSha256\":\"%s\"}\n", rows, hex);
    return 0;
}
