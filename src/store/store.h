/* The resource store: versioned JSON documents keyed by (kind, name), a
 * global revision counter, and a change feed. One interface, two drivers with
 * the same semantics: SQLite (embedded default) and PostgreSQL (several
 * processes on one database; see docs/deployment.md).
 *
 * Every stored document has the shape
 *   {apiVersion, kind, metadata{name, uid, resourceVersion, createdAt,
 *    updatedAt, labels}, spec, status}
 * where the store owns uid, resourceVersion (the global revision of its last
 * change, as a decimal string), createdAt and updatedAt.
 *
 * Writes are grouped in transactions that are atomic and durable before they
 * are reported done; concurrent transactions share one commit (group commit).
 * Reads are safe from any thread. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store store;

typedef enum store_op_type {
    STORE_CREATE,  /* fails with -EEXIST when present */
    STORE_REPLACE, /* fails with -ENOENT when absent */
    STORE_APPLY,   /* create or replace */
    STORE_DELETE,  /* fails with -ENOENT when absent */
    STORE_REMOVE,  /* deletes when present; absent is no error (action STORE_UNCHANGED) */
} store_op_type;

typedef enum store_action {
    STORE_CREATED,
    STORE_CONFIGURED,
    STORE_UNCHANGED,
    STORE_DELETED,
} store_action;

typedef struct store_op {
    store_op_type type;
    const char *kind; /* borrowed for the life of the transaction */
    const char *name;
    json_t *doc;          /* CREATE/REPLACE/APPLY: validated input (borrowed) */
    int64_t expected_rv;  /* when > 0, the op fails with -ESTALE unless it matches */
    /* the unique key to find the document by: when NULL the stored one is
     * kept (a client write never sets or clears it) */
    const char *lookup_key;
    json_t *status; /* when set, replaces the server-owned status (borrowed); else it is kept */
    /* when UID_KIND is set, status.<UID_FIELD> becomes metadata.uid of the
     * document (UID_KIND, UID_NAME) as it stands in this transaction (ops
     * that set it run after the others of their transaction); the op fails
     * with -ENOLINK when that document does not exist. When the stored
     * status recorded another uid there, the rest of it is dropped (unless
     * the op sets a status): what was bound to the other document goes. */
    const char *uid_kind, *uid_name, *uid_field;

    /* results, written when the transaction completes */
    store_action action;
    json_t *result; /* the stored document, a new reference (NULL after delete) */
} store_op;

typedef struct store_txn store_txn;
typedef void (*store_txn_done)(store_txn *txn, void *userdata);

/* What a guard reads the store through (store_view_list()). */
typedef struct store_view store_view;

/* A transaction's guard: a rule on what the transaction leaves, checked
 * inside it once its ops are applied. It reads the store as the
 * transaction sees it (its own writes, and every write committed before
 * it by any process: the drivers serialise writers, so no other write
 * comes between the check and the commit). It returns 0 to keep the
 * transaction, or a negative errno that undoes it (txn->error, with
 * txn->failed_op the op it names in *RET_FAILED_OP); an error of
 * store_view_list() it returns as is. It runs on the writer thread, and
 * may run more than once (a batch retried on a new connection): what it
 * records must be rewritten by each run. */
typedef int (*store_txn_guard)(store_txn *txn, store_view *view, size_t *ret_failed_op);

/* Every document of KIND sorted by name (a new array), as the transaction
 * whose guard got VIEW sees them. */
int store_view_list(store_view *view, const char *kind, json_t **ret_items);

struct store_txn {
    store_op *ops;
    size_t n_ops;
    /* fencing: when FENCE_LEASE is set, the transaction is refused with
     * -ENOLCK unless that lease's token is still FENCE_TOKEN (checked inside
     * the transaction: a deposed holder's late write is refused) */
    const char *fence_lease;
    int64_t fence_token;
    /* when set, checked inside the transaction after its ops (store_txn_guard;
     * GUARD_DATA is its own) */
    store_txn_guard guard;
    void *guard_data;
    /* results: 0, or the first failing op's error (-EEXIST, -ENOENT, -ESTALE,
     * -EIO...) at failed_op; on failure nothing of the transaction is written. */
    int error;
    size_t failed_op;
    /* async completion; internal fields follow */
    store_txn_done done;
    void *userdata;
    store_txn *next;
};

typedef enum store_event_type {
    STORE_EVENT_ADDED,
    STORE_EVENT_MODIFIED,
    STORE_EVENT_DELETED,
} store_event_type;

/* Opens the store at URL ("sqlite:PATH" or a plain path to an SQLite file;
 * "postgres://…" or "postgresql://…", a libpq connection URI), creating the
 * schema if needed, and starts its writer. */
int store_open(const char *url, store **ret);
/* Drains pending writes, stops the writer and closes. Accepts NULL. */
void store_free(store *s);

/* Fetches one document (new reference) or -ENOENT. */
int store_get(store *s, const char *kind, const char *name, json_t **ret_doc);
/* Fetches the document whose lookup key is KEY, or -ENOENT. */
int store_get_by_lookup(store *s, const char *kind, const char *key, json_t **ret_doc);
/* All documents of KIND sorted by name (a new array) and the revision they
 * reflect, read in one snapshot. */
int store_list(store *s, const char *kind, json_t **ret_items, int64_t *ret_revision);

/* store_list() of the documents of KIND whose names start with PREFIX
 * (1 to 63 bytes, none of them 0xff), sorted by name: a range of the
 * store's key, so only those are read (a user's notifications among
 * everyone's). -EINVAL for a bad PREFIX. */
int store_list_prefix(store *s, const char *kind, const char *prefix, json_t **ret_items, int64_t *ret_revision);

/* The most kinds one call of the *_kinds functions below takes. */
#define STORE_KINDS_MAX 12

/* store_list() of several kinds read in one snapshot: every document of the
 * N_KINDS KINDS (1 to STORE_KINDS_MAX) in one new array, sorted by kind and
 * then by name, and the revision they all reflect. -EINVAL for a bad
 * N_KINDS. */
int store_list_kinds(store *s, const char *const *kinds, size_t n_kinds, json_t **ret_items,
                     int64_t *ret_revision);

/* Runs TXN and blocks until it is durable or has failed; returns txn->error. */
int store_write(store *s, store_txn *txn);
/* Queues TXN; txn->done runs on the writer thread once it is durable or has
 * failed. TXN and everything it points to must live until then. */
void store_write_async(store *s, store_txn *txn);
/* Releases the result references held by TXN's ops. */
void store_txn_clear(store_txn *txn);

/* Changes after revision AFTER, oldest first, at most MAX, as an array of
 * {"type": "ADDED|MODIFIED|DELETED", "revision": N, "object": doc} (new
 * reference). -ESTALE when AFTER is older than the retained history, in which
 * case the caller must list again. An empty array when nothing is new. */
int store_changes_since(store *s, const char *kind, int64_t after, size_t max, json_t **ret_events);
/* store_changes_since() of several kinds, merged in revision order: the
 * changes after AFTER of any of the N_KINDS KINDS (at most STORE_KINDS_MAX;
 * 0 means every kind), oldest first, at most MAX. Same events, same -ESTALE. */
int store_changes_since_kinds(store *s, const char *const *kinds, size_t n_kinds, int64_t after, size_t max,
                              json_t **ret_events);
/* store_changes_since_kinds() for a watcher that follows on from a list
 * made in epoch EPOCH (store_epoch() read before that list): also -ESTALE
 * when the database is no longer of EPOCH (it was reset or replaced), which
 * the driver checks on the connection the changes are read from, so a
 * watcher never takes a new database's revisions for its old ones. On
 * -ESTALE the watcher lists again (reading store_epoch() first). */
int store_changes_since_epoch(store *s, uint64_t epoch, const char *const *kinds, size_t n_kinds, int64_t after,
                              size_t max, json_t **ret_events);
/* The newest revision (with PostgreSQL: also other processes' writes, seen
 * once their notification or the next poll arrives). */
int64_t store_revision(store *s);
/* The epoch: a random non-zero id of the database, made with its schema.
 * Revisions only mean something within one epoch: when it changes (the
 * database was reset or replaced), a watcher must list again
 * (store_changes_since_epoch() tells it). PostgreSQL's epoch is the random
 * id of the schema mixed with the database's identity (the cluster's system
 * identifier and the database's OID), so a database dropped and made again,
 * or restored from a dump into another database or cluster, is a new epoch
 * even with the same schema row; it is read on every (re)connection and
 * poll, and store_revision() follows the new database's head down. SQLite
 * keeps it in the file, so it changes only when the file is replaced, which
 * a running process never sees. */
uint64_t store_epoch(store *s);

/* Leases, for "one holder at a time" (the controller): NAME is held by
 * HOLDER until it expires TTL_MS after the last acquire or renew. Each
 * acquisition by a holder that did not hold it unexpired takes a new,
 * larger fencing token; a transaction carrying it (store_txn.fence_lease)
 * is refused once another holder took the lease. Expiry is judged by the
 * database's clock (PostgreSQL) or the process's (SQLite).
 * store_lease_acquire: 0 and the token, or -EBUSY while another holds it. */
int store_lease_acquire(store *s, const char *name, const char *holder, int64_t ttl_ms, int64_t *ret_token);
/* Extends the lease by TTL_MS from now: 0, or -ESTALE when HOLDER no longer
 * holds it with TOKEN (another took it). */
int store_lease_renew(store *s, const char *name, const char *holder, int64_t token, int64_t ttl_ms);
/* Gives the lease up (the next holder takes a new token): 0 or -ESTALE. */
int store_lease_release(store *s, const char *name, const char *holder, int64_t token);

/* Counters, for a limit that every process on the database shares (rate
 * limits across replicas): adds 1 to counter NAME (1 to 200 bytes) in its
 * current window and returns the count in that window and the ms left of it.
 * A window of WINDOW_MS (1 ms to a day) begins at the first add after the
 * previous one ended; the add is one atomic statement, so concurrent adds
 * from several processes each count. Windows that ended are deleted now and
 * then. Time is the database's clock (PostgreSQL) or the process's (SQLite). */
int store_counter_add(store *s, const char *name, int64_t window_ms, int64_t *ret_count, int64_t *ret_left_ms);

/* Copies URL to OUT (of SIZE bytes) with any password in it replaced by
 * "***", for logs: a store URL may carry a PostgreSQL password. */
void store_url_redact(const char *url, char *out, size_t size);

const char *store_event_type_name(store_event_type t);
const char *store_action_name(store_action a);
/* Whether writing document INPUT over OLD leaves its content as it is: the
 * same spec and metadata.labels (absent counts as empty). A write that
 * changes nothing else (status, lookup key) is then "unchanged". */
bool store_same_content(const json_t *input, const json_t *old);
