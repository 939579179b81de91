/* The store alone, without HTTP: durable creates/s from W threads each
 * writing one document per transaction with store_write() (so W
 * transactions wait at once and share commits, as W API clients would),
 * then gets/s of those documents from R threads. What the API adds is the
 * difference to bench/api/run.sh's figures through HTTPS.
 * Usage: bench-store-throughput URL [SECONDS] [W] [R]   (defaults 5 64 2) */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/timeutil.h"
#include "store/store.h"

typedef struct worker {
    store *s;
    int id;
    uint64_t deadline;
    long done;
    int error;
} worker;

static long *per_writer; /* the readers pick from create-<id>-<n>, n below writer id's count */

static void *writer(void *arg)
{
    worker *w = arg;
    while (time_mono_ns() < w->deadline) {
        char name[64];
        snprintf(name, sizeof(name), "create-%d-%ld", w->id, w->done);
        json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:[s]}}", "apiVersion", "cloister.dev/v1", "kind",
                                "AttestationPolicy", "metadata", "name", name, "spec", "types", "sandbox");
        store_op op = {.type = STORE_CREATE, .kind = "AttestationPolicy", .name = name, .doc = doc};
        store_txn txn = {.ops = &op, .n_ops = 1};
        int e = store_write(w->s, &txn);
        store_txn_clear(&txn);
        json_decref(doc);
        if (e < 0) {
            w->error = e;
            break;
        }
        w->done++;
        per_writer[w->id] = w->done;
    }
    return NULL;
}

static void *reader(void *arg)
{
    worker *w = arg;
    unsigned seed = (unsigned)w->id * 7919u + 1;
    while (time_mono_ns() < w->deadline) {
        int id = (int)(rand_r(&seed) % 64);
        long n = per_writer[id];
        if (n == 0)
            continue;
        char name[64];
        snprintf(name, sizeof(name), "create-%d-%ld", id, (long)(rand_r(&seed) % n));
        json_t *doc;
        int e = store_get(w->s, "AttestationPolicy", name, &doc);
        if (e < 0) {
            w->error = e;
            break;
        }
        json_decref(doc);
        w->done++;
    }
    return NULL;
}

/* Runs N threads of FN for SECONDS: the operations per second, or -1 on an error. */
static double run(store *s, void *(*fn)(void *), int n, double seconds, const char *what)
{
    worker *w = calloc((size_t)n, sizeof(*w));
    pthread_t *t = calloc((size_t)n, sizeof(*t));
    if (!w || !t)
        return -1;
    uint64_t start = time_mono_ns(), deadline = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < n; i++) {
        w[i] = (worker){.s = s, .id = i, .deadline = deadline};
        pthread_create(&t[i], NULL, fn, &w[i]);
    }
    long total = 0;
    int error = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        total += w[i].done;
        error = error ?: w[i].error;
    }
    double took = (double)(time_mono_ns() - start) / 1e9;
    free(w);
    free(t);
    if (error) {
        fprintf(stderr, "bench-store-throughput: a %s failed: %s\n", what, strerror(-error));
        return -1;
    }
    return (double)total / took;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench-store-throughput URL [SECONDS] [WRITERS] [READERS]\n");
        return 2;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 5;
    int writers = argc > 3 ? atoi(argv[3]) : 64, readers = argc > 4 ? atoi(argv[4]) : 2;
    if (seconds <= 0 || writers < 1 || writers > 64 || readers < 1 || readers > 64) {
        fprintf(stderr, "bench-store-throughput: SECONDS > 0, 1 to 64 writers and readers\n");
        return 2;
    }
    per_writer = calloc(64, sizeof(*per_writer));
    store *s;
    int e = store_open(argv[1], &s);
    if (e < 0 || !per_writer) {
        fprintf(stderr, "bench-store-throughput: cannot open the store: %s\n", strerror(-e));
        return 1;
    }
    double creates = run(s, writer, writers, seconds, "create");
    double gets = creates < 0 ? -1 : run(s, reader, readers, seconds, "get");
    store_free(s);
    free(per_writer);
    if (creates < 0 || gets < 0)
        return 1;
    printf("store alone: durable creates/s %.0f (%d writers)  gets/s %.0f (%d readers)\n", creates, writers, gets,
           readers);
    return 0;
}
