/* The contract between the store's front (store.c) and a driver. A driver
 * keeps the semantics store.h promises: documents keyed by (kind, name), a
 * global revision counter, atomic and durable transactions (with group
 * commit where it can), a change feed, and reads safe from any thread. */
#pragma once

#include "store/store.h"

typedef struct store_driver {
    const char *scheme; /* URL scheme: "sqlite" */
    /* LOCATION is the URL without "scheme:"; *RET is the driver's own state */
    int (*open)(const char *location, void **ret);
    void (*close)(void *impl);
    int (*get)(void *impl, const char *kind, const char *name, json_t **ret_doc);
    int (*get_by_lookup)(void *impl, const char *kind, const char *key, json_t **ret_doc);
    /* N_KINDS is 1 to STORE_KINDS_MAX (checked by the front) */
    int (*list)(void *impl, const char *const *kinds, size_t n_kinds, json_t **ret_items, int64_t *ret_revision);
    /* the documents of KIND named FROM or after and before TO (byte order) */
    int (*list_range)(void *impl, const char *kind, const char *from, const char *to, json_t **ret_items,
                      int64_t *ret_revision);
    /* queues TXN; calls txn->done once it is durable or has failed */
    void (*write_async)(void *impl, store_txn *txn);
    /* N_KINDS is 0 (every kind) to STORE_KINDS_MAX (checked by the front) */
    int (*changes_since)(void *impl, const char *const *kinds, size_t n_kinds, int64_t after, size_t max,
                         json_t **ret_events);
    int64_t (*revision)(void *impl);
} store_driver;

extern const store_driver store_sqlite_driver;
