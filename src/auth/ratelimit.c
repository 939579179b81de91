#include "auth/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/fileio.h"
#include "basic/timeutil.h"

#define WAYS 4

typedef struct bucket {
    char key[RATELIMIT_KEY_MAX + 1];
    double tokens;
    uint64_t updated_ns;
} bucket;

struct ratelimit {
    pthread_mutex_t lock;
    double burst, per_second;
    uint64_t seed; /* random, so clients cannot aim at one set */
    size_t n_sets;
    bucket buckets[];
};

ratelimit *ratelimit_new(size_t slots, double burst, double per_second)
{
    size_t n_sets = slots / WAYS ? slots / WAYS : 1;
    ratelimit *rl = calloc(1, sizeof(*rl) + n_sets * WAYS * sizeof(bucket));
    if (!rl)
        return NULL;
    if (random_bytes(&rl->seed, sizeof(rl->seed)) < 0) {
        free(rl);
        return NULL;
    }
    pthread_mutex_init(&rl->lock, NULL);
    rl->burst = burst;
    rl->per_second = per_second;
    rl->n_sets = n_sets;
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (!rl)
        return;
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

/* The bucket's level at NOW_NS after refilling since its last update. */
static double refilled(const ratelimit *rl, const bucket *b, uint64_t now_ns)
{
    double t = b->tokens + (double)(now_ns - b->updated_ns) / 1e9 * rl->per_second;
    return t > rl->burst ? rl->burst : t;
}

int64_t ratelimit_take(ratelimit *rl, const char *key, uint64_t now_ns)
{
    uint64_t h = 14695981039346656037u ^ rl->seed; /* FNV-1a, seeded */
    for (const char *p = key; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211u;
    pthread_mutex_lock(&rl->lock);
    bucket *set = &rl->buckets[(h % rl->n_sets) * WAYS], *b = NULL, *victim = &set[0];
    for (size_t i = 0; i < WAYS && !b; i++) {
        if (set[i].key[0] && strncmp(set[i].key, key, RATELIMIT_KEY_MAX) == 0)
            b = &set[i];
        else if (!set[i].key[0] || refilled(rl, &set[i], now_ns) > refilled(rl, victim, now_ns))
            victim = &set[i];
    }
    if (!b) {
        b = victim;
        snprintf(b->key, sizeof(b->key), "%s", key);
        b->tokens = rl->burst;
        b->updated_ns = now_ns;
    }
    b->tokens = refilled(rl, b, now_ns);
    b->updated_ns = now_ns;
    int64_t wait = 0;
    if (b->tokens >= 1)
        b->tokens -= 1;
    else
        wait = (int64_t)ceil((1 - b->tokens) / rl->per_second);
    pthread_mutex_unlock(&rl->lock);
    return wait;
}
