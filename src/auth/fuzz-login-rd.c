/* libFuzzer target: the parser of the rd (return URL) of a browser login,
 * and the invariants of what it accepts. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth/handoff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static login_rd rd;
    const char *why = NULL;
    if (login_rd_parse((const char *)data, size, &rd, &why) < 0) {
        assert(why && why[0]);
        return 0;
    }
    assert(strcmp(rd.scheme, "http") == 0 || strcmp(rd.scheme, "https") == 0);
    assert(rd.path[0] == '/' && rd.path[1] != '/' && rd.path[1] != '\\');
    assert(!strchr(rd.authority, '@') && !strchr(rd.host, ':') && rd.host[0]);
    for (const char *c = rd.path; *c; c++)
        assert((unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f);
    assert(strlen(rd.url) <= LOGIN_RD_MAX + 1);
    return 0;
}
