/* Change visibility between two store handles on one PostgreSQL database
 * (two api replicas): handle A commits a write, handle B waits until its
 * store_revision() (moved by NOTIFY, or the fallback poll) reaches it and
 * reads the change from its feed. Prints p50/p99 in microseconds, from the
 * write's start and from its commit being reported. (With SQLite there is
 * one process per file: another handle's revision never moves.)
 * Usage: bench-store-latency URL [N]   (bench/api/run.sh runs it) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/timeutil.h"
#include "store/store.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench-store-latency URL [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 500;
    store *a, *b;
    int e = store_open(argv[1], &a);
    if (e == 0)
        e = store_open(argv[1], &b);
    if (e < 0 || n < 1) {
        fprintf(stderr, "bench-store-latency: cannot open the store: %s\n", strerror(-e));
        return 1;
    }
    uint64_t *lat = calloc((size_t)n, sizeof(*lat)), *after = calloc((size_t)n, sizeof(*after));
    for (int i = 0; i < n && lat && after; i++) {
        char name[64];
        snprintf(name, sizeof(name), "latency-%d-%llu", i, (unsigned long long)time_now_ns());
        json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:[s]}}", "apiVersion", "cloister.dev/v1", "kind",
                                "AttestationPolicy", "metadata", "name", name, "spec", "types", "sandbox");
        store_op op = {.type = STORE_CREATE, .kind = "AttestationPolicy", .name = name, .doc = doc};
        store_txn txn = {.ops = &op, .n_ops = 1};
        uint64_t t0 = time_mono_ns();
        if (store_write(a, &txn) < 0) {
            fprintf(stderr, "bench-store-latency: write %d failed: %s\n", i, strerror(-txn.error));
            return 1;
        }
        int64_t rv = atoll(json_string_value(json_object_get(json_object_get(op.result, "metadata"),
                                                             "resourceVersion")));
        store_txn_clear(&txn);
        json_decref(doc);
        uint64_t t1 = time_mono_ns();
        /* visible on B: its revision moved and its feed holds the change */
        while (store_revision(b) < rv)
            ;
        json_t *events;
        if (store_changes_since(b, "AttestationPolicy", rv - 1, 1, &events) < 0 || json_array_size(events) != 1) {
            fprintf(stderr, "bench-store-latency: the change of revision %lld is not in B's feed\n", (long long)rv);
            return 1;
        }
        json_decref(events);
        uint64_t t2 = time_mono_ns();
        lat[i] = (t2 - t0) / 1000;
        after[i] = (t2 - t1) / 1000;
    }
    if (!lat || !after)
        return 1;
    qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
    qsort(after, (size_t)n, sizeof(*after), cmp_u64);
    printf("change visibility on another handle, %d writes: after the commit was reported p50 %llu us p99 %llu us; "
           "from the write's start (durable commit included) p50 %llu us p99 %llu us\n",
           n, (unsigned long long)after[n / 2], (unsigned long long)after[(n * 99) / 100],
           (unsigned long long)lat[n / 2], (unsigned long long)lat[(n * 99) / 100]);
    free(lat);
    free(after);
    store_free(a);
    store_free(b);
    return 0;
}
