/* libFuzzer target: the parser of the rd (return URL) of a browser login,
 * and the invariants of what it accepts; the handoff opener and the login
 * link checker on the same bytes. */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/handoff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t key[HANDOFF_KEY_LEN] = {1};
    static login_rd rd;
    const char *why = NULL;
    handoff_claims h;
    if (handoff_open(key, (const char *)data, size, &h, &why) == 0) /* only a sealed one opens */
        abort();
    assert(why && why[0]);
    why = NULL;
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
    /* a link for it with any mac but its own is refused */
    static const char bind[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char mac[LOGIN_MAC_LEN + 1];
    assert(login_link_mac(key, rd.url, bind, 1000, mac) == 0);
    assert(login_link_check(key, rd.url, bind, "1000", mac, 999, NULL) == 0);
    mac[0] = mac[0] == '0' ? '1' : '0';
    assert(login_link_check(key, rd.url, bind, "1000", mac, 999, NULL) == -EKEYREJECTED);
    return 0;
}
