/* Token-bucket rate limits by key (a client address, a credential): each key
 * may spend BURST requests at once and regains PER_SECOND of them every
 * second. Keys live in a fixed-size set-associative table, so memory is
 * bounded whatever clients send; when a set is full the most rested bucket
 * is recycled (an idle key loses nothing by it). Thread-safe. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define RATELIMIT_KEY_MAX 96

typedef struct ratelimit ratelimit;

/* A limiter of about SLOTS buckets. NULL on allocation failure. */
ratelimit *ratelimit_new(size_t slots, double burst, double per_second);
void ratelimit_free(ratelimit *rl);
/* Spends one request of KEY at NOW_NS (monotonic). Returns 0 when allowed,
 * else the whole seconds (at least 1) until one is available again. */
int64_t ratelimit_take(ratelimit *rl, const char *key, uint64_t now_ns);
