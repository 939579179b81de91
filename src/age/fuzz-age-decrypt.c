/* libFuzzer target: age_decrypt() of arbitrary bytes with a fixed identity
 * (the one of the seed corpus, made by tests/test_age.py's helpers: the C2SP
 * vectors' X25519 identity). Must never crash, leak or release plaintext
 * for an input that does not verify. */
#include <stdint.h>
#include <string.h>

#include "age/age.h"
#include "basic/macro.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct mem {
    const uint8_t *p;
    size_t len, pos;
} mem;

static ssize_t rd(void *userdata, uint8_t *buf, size_t n)
{
    mem *m = userdata;
    /* short reads, to exercise the buffering */
    size_t left = MIN(n, m->len - m->pos);
    n = MIN(left, (size_t)7919);
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    return (ssize_t)n;
}

static int wr(void *userdata, const uint8_t *buf, size_t n)
{
    size_t *total = userdata;
    *total += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static age_identity id;
    static int ready;
    if (!ready) {
        if (age_identity_parse("AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0", &id) < 0)
            __builtin_trap();
        ready = 1;
    }
    mem m = {.p = data, .len = size};
    size_t total = 0;
    age_decrypt(&id, 1, rd, &m, wr, &total);
    return 0;
}
