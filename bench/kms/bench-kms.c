/* Bulk AES-256-GCM throughput of the KMS's sealing primitive (the one every
 * KMS encryption and data-key wrap goes through), on the buffer size given
 * (default 16 KiB, as `openssl speed -bytes 16384`), for about 3 seconds of
 * CPU time. Like `openssl speed`, it divides by the CPU time the process
 * used, so other load on the machine does not skew the comparison.
 * Prints "bench-kms: N bytes/s". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "basic/fileio.h"
#include "basic/timeutil.h"
#include "kms/crypto.h"

/* CPU time this process used, in nanoseconds. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
    double secs = argc > 2 ? strtod(argv[2], NULL) : 3.0;
    if (size == 0 || size > (64u << 20) || secs <= 0) {
        fprintf(stderr, "usage: bench-kms [BYTES] [SECONDS]\n");
        return 2;
    }
    uint8_t key[KMS_KEY_BYTES], nonce[KMS_NONCE_BYTES] = {0}, tag[KMS_TAG_BYTES], aad[32] = {0};
    uint8_t *in = malloc(size), *out = malloc(size);
    if (!in || !out || random_bytes(key, sizeof(key)) < 0)
        return 1;
    for (size_t i = 0; i < size; i++)
        in[i] = (uint8_t)i;
    uint64_t start = cpu_ns(), end = start + (uint64_t)(secs * 1e9), n = 0;
    while (cpu_ns() < end) {
        for (int i = 0; i < 64; i++) {
            nonce[0]++; /* a fresh nonce per message, as the KMS uses */
            if (aead_seal(key, nonce, aad, sizeof(aad), in, size, out, tag) < 0)
                return 1;
        }
        n += 64;
    }
    double elapsed = (double)(cpu_ns() - start) / 1e9;
    printf("bench-kms: %.0f bytes/s (%llu messages of %zu bytes in %.2fs of CPU)\n", (double)n * (double)size / elapsed,
           (unsigned long long)n, size, elapsed);
    free(in);
    free(out);
    return 0;
}
