/* The part of klib's khash.h (0.2.8) that <h2o/http2_internal.h> uses, for
 * libh2o 2.2.5 packages that install that header without khash.h: the hash
 * table's layout and its lookup, as the library built them, so that
 * h2o_http2_conn_get_stream() finds the streams libh2o stored. Lookups only:
 * the table is libh2o's to change. */
#pragma once

#include <stdint.h>

typedef uint32_t khint32_t;
typedef uint64_t khint64_t;
typedef khint32_t khint_t;
typedef khint_t khiter_t;

#define __ac_isempty(flag, i) ((flag[(i) >> 4] >> (((i)&0xfU) << 1)) & 2)
#define __ac_isdel(flag, i) ((flag[(i) >> 4] >> (((i)&0xfU) << 1)) & 1)
#define __ac_iseither(flag, i) ((flag[(i) >> 4] >> (((i)&0xfU) << 1)) & 3)
#define kh_int64_hash_func(key) (khint32_t)((key) >> 33 ^ (key) ^ (key) << 11)

#define KHASH_MAP_INIT_INT64(name, khval_t)                                                                            \
    typedef struct kh_##name##_s {                                                                                     \
        khint_t n_buckets, size, n_occupied, upper_bound;                                                              \
        khint32_t *flags;                                                                                              \
        khint64_t *keys;                                                                                               \
        khval_t *vals;                                                                                                 \
    } kh_##name##_t;                                                                                                   \
    static inline __attribute__((unused)) khint_t kh_get_##name(const kh_##name##_t *h, khint64_t key)                 \
    {                                                                                                                  \
        if (!h->n_buckets)                                                                                             \
            return 0;                                                                                                  \
        khint_t mask = h->n_buckets - 1, step = 0;                                                                     \
        khint_t i = kh_int64_hash_func(key) & mask, last = i;                                                          \
        while (!__ac_isempty(h->flags, i) && (__ac_isdel(h->flags, i) || h->keys[i] != key)) {                         \
            i = (i + (++step)) & mask;                                                                                 \
            if (i == last)                                                                                             \
                return h->n_buckets;                                                                                   \
        }                                                                                                              \
        return __ac_iseither(h->flags, i) ? h->n_buckets : i;                                                          \
    }

#define khash_t(name) kh_##name##_t
#define kh_get(name, h, k) kh_get_##name(h, k)
#define kh_end(h) ((h)->n_buckets)
#define kh_val(h, x) ((h)->vals[x])
