/* The contract between the store's front (store.c) and a driver. A driver
 * keeps the semantics store.h promises: documents keyed by (kind, name), a
 * global revision counter, atomic and durable transactions (with group
 * commit where it can), a change feed, and reads safe from any thread. */
#pragma once

#include <pthread.h>

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
    /* N_KINDS is 0 (every kind) to STORE_KINDS_MAX (checked by the front);
     * EPOCH, when not 0, must be the epoch of the database the changes are
     * read from, else -ESTALE */
    int (*changes_since)(void *impl, uint64_t epoch, const char *const *kinds, size_t n_kinds, int64_t after,
                         size_t max, json_t **ret_events);
    int64_t (*revision)(void *impl);
    uint64_t (*epoch)(void *impl);
    /* leases (store.h): NOW_MS is the caller's wall clock; a driver may use its own */
    int (*lease_acquire)(void *impl, const char *name, const char *holder, int64_t ttl_ms, int64_t *ret_token);
    int (*lease_renew)(void *impl, const char *name, const char *holder, int64_t token, int64_t ttl_ms);
    int (*lease_release)(void *impl, const char *name, const char *holder, int64_t token);
    /* counters (store.h); SWEEP: also delete the windows that ended */
    int (*counter_add)(void *impl, const char *name, int64_t window_ms, bool sweep, int64_t *ret_count,
                       int64_t *ret_left_ms);
} store_driver;

extern const store_driver store_sqlite_driver;
extern const store_driver store_postgres_driver, store_postgresql_driver;

/* ---- shared by the drivers (store-doc.c): what one op writes ---- */

typedef enum store_plan_write {
    STORE_PLAN_NOTHING, /* the op wrote nothing (its action and result are set) */
    STORE_PLAN_INSERT,
    STORE_PLAN_UPDATE, /* compare-and-swap on OLD_RV */
    STORE_PLAN_DELETE, /* compare-and-swap on OLD_RV */
} store_plan_write;

typedef struct store_plan {
    store_plan_write write;
    int64_t rv, old_rv; /* the op's new revision; the stored row's */
    json_t *doc;        /* INSERT/UPDATE: the document to store (owned) */
    char *text;         /* the document (after a delete: the deleted one) as the change records it (owned) */
} store_plan;

/* Whether OP needs the document it links to (op->uid_kind) read before
 * store_op_plan(). */
bool store_op_needs_link(const store_op *op);
/* Decides what OP does against OLD (the stored document, stolen; NULL when
 * absent) at OLD_RV with OLD_LOOKUP, and LINKED (the document OP links to,
 * borrowed; NULL when absent): the errors of store.h (-EEXIST, -ENOENT,
 * -ESTALE, -ENOLINK), or 0 and *RET. A write advances *REV by one. When
 * *RET writes nothing, op->action and op->result are already set; else the
 * driver writes the row and the change, then calls store_plan_done(). */
int store_op_plan(store_op *op, json_t *old, int64_t old_rv, const char *old_lookup, const json_t *linked,
                  int64_t *rev, const char *now, store_plan *ret);
/* Sets OP's action and result from PLAN once it is written; clears PLAN. */
void store_plan_done(store_op *op, store_plan *plan);
void store_plan_clear(store_plan *plan);
store_event_type store_plan_event(const store_plan *plan);
/* The writer queue of a driver: store_write_async() pushes, one writer
 * thread takes what is queued as a batch and commits it together. */
typedef struct store_queue {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    store_txn *head, *tail;
    bool stopping;
} store_queue;

void store_queue_init(store_queue *q);
void store_queue_destroy(store_queue *q);
void store_queue_push(store_queue *q, store_txn *txn);
/* Waits for queued transactions and takes up to MAX of them (a list linked
 * through ->next); NULL once store_queue_stop() was called and the queue is
 * empty. */
store_txn *store_queue_take(store_queue *q, size_t max);
void store_queue_stop(store_queue *q);
/* What a driver's writer does with one op (its state in CTX): 0 or the
 * op's error. */
typedef int (*store_apply_fn)(store_op *op, void *ctx);

/* A driver's view for guards: LIST reads inside the writer's open
 * transaction (the driver embeds this in its own state). */
struct store_view {
    int (*list)(store_view *view, const char *kind, json_t **ret_items);
};

/* Runs APPLY on TXN's ops (after a fence check that set txn->error, none)
 * in a transaction's order: the ops that link to another document's uid
 * last, as that document may be made in the same transaction; then TXN's
 * guard, if any, reading through VIEW. Stops at the first failure, kept in
 * txn->error and txn->failed_op. */
void store_txn_apply(store_txn *txn, store_apply_fn apply, void *ctx, store_view *view);

/* Calls the done callback of each txn of BATCH. */
void store_batch_done(store_txn *batch);

/* The pool of a driver's read connections: reads borrow one (opening a new
 * one when none is free) and give it back; the pool keeps at most
 * STORE_POOL_MAX idle ones. A driver's connection struct starts with a
 * store_pooled. */
#define STORE_POOL_MAX 32

typedef struct store_pooled {
    struct store_pooled *next;
} store_pooled;

typedef struct store_pool {
    pthread_mutex_t lock;
    store_pooled *idle;
    size_t n_idle;
} store_pool;

void store_pool_init(store_pool *p);
/* An idle connection taken from the pool, or NULL when none is (the
 * driver opens one). */
store_pooled *store_pool_take(store_pool *p);
/* Keeps ITEM for a later store_pool_take(): true, or false when the pool
 * is full (the caller closes ITEM). */
bool store_pool_put(store_pool *p, store_pooled *item);
/* Empties the pool and destroys it: what it held, linked through ->next,
 * for the driver to close. */
store_pooled *store_pool_destroy(store_pool *p);

/* Whether a lease (store.h) request is well formed: a NAME and HOLDER of 1
 * to 200 bytes and a TTL of 1 ms to one day. */
bool store_lease_args_ok(const char *name, const char *holder, int64_t ttl_ms);
