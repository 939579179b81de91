/* The SQLite driver of the store: WAL journal with synchronous=FULL, so a
 * commit is on disk before it is reported. One writer thread owns the write
 * connection and commits every queued transaction of a batch together (group
 * commit; each transaction inside its own SAVEPOINT so one failing transaction
 * does not spoil the others). Readers borrow connections from a pool. */
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "store/store-driver.h"

#define STORE_BATCH_MAX 1024
#define STORE_CHANGES_KEEP 100000
#define STORE_BUSY_TIMEOUT_MS 5000

typedef struct reader {
    store_pooled pooled; /* first: the pool's link */
    sqlite3 *db;
    sqlite3_stmt *get, *get_lookup, *list, *list_kinds, *list_range, *changes, *changes_kind, *changes_kinds,
        *min_change, *revision;
} reader;

typedef struct sqlite_store {
    char *path;
    sqlite3 *wdb; /* writer thread only */
    sqlite3_stmt *w_get, *w_put, *w_delete, *w_change, *w_trim, *w_fence, *w_list;
    store_view view; /* guards read through it (writer_view_list) */
    _Atomic int64_t revision;
    uint64_t epoch;
    int64_t last_trim;

    pthread_t writer;
    store_queue queue;

    store_pool readers;
} sqlite_store;

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS resources ("
    "  kind TEXT NOT NULL, name TEXT NOT NULL, rv INTEGER NOT NULL,"
    "  lookup_key TEXT UNIQUE, doc TEXT NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS changes ("
    "  rv INTEGER PRIMARY KEY, type INTEGER NOT NULL, kind TEXT NOT NULL,"
    "  name TEXT NOT NULL, doc TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS changes_kind ON changes (kind, rv);"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS leases ("
    "  name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS counters ("
    "  name TEXT PRIMARY KEY, count INTEGER NOT NULL, ends_ms INTEGER NOT NULL);";

static int sqlite_to_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW:
        return 0;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return -EACCES;
    default:
        return -EIO;
    }
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        log_debug("store: %s: %s", sql, err ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        return sqlite_to_errno(rc);
    }
    return 0;
}

/* Opens a connection with the settings every connection needs. */
static int open_db(const char *path, bool create, sqlite3 **ret)
{
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        log_debug("store: cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return sqlite_to_errno(rc) ?: -EIO;
    }
    sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
    int r = exec_sql(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
    if (r < 0) {
        sqlite3_close(db);
        return r;
    }
    *ret = db;
    return 0;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, ret, NULL);
    if (rc != SQLITE_OK) {
        log_debug("store: prepare %s: %s", sql, sqlite3_errmsg(db));
        return sqlite_to_errno(rc) ?: -EIO;
    }
    return 0;
}

static void reader_free(reader *r)
{
    if (!r)
        return;
    sqlite3_finalize(r->get);
    sqlite3_finalize(r->get_lookup);
    sqlite3_finalize(r->list);
    sqlite3_finalize(r->list_kinds);
    sqlite3_finalize(r->list_range);
    sqlite3_finalize(r->changes);
    sqlite3_finalize(r->changes_kind);
    sqlite3_finalize(r->changes_kinds);
    sqlite3_finalize(r->min_change);
    sqlite3_finalize(r->revision);
    sqlite3_close(r->db);
    free(r);
}

static int reader_new(sqlite_store *s, reader **ret)
{
    reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    int e = open_db(s->path, false, &r->db);
    if (e == 0)
        e = prepare(r->db, "SELECT doc FROM resources WHERE kind = ?1 AND name = ?2", &r->get);
    if (e == 0)
        e = prepare(r->db, "SELECT doc FROM resources WHERE kind = ?1 AND lookup_key = ?2",
                    &r->get_lookup);
    if (e == 0)
        e = prepare(r->db, "SELECT doc FROM resources WHERE kind = ?1 ORDER BY name", &r->list);
    if (e == 0) /* the parameters are STORE_KINDS_MAX kinds, NULL when unused (matches nothing) */
        e = prepare(r->db,
                    "SELECT doc FROM resources WHERE kind IN (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) "
                    "ORDER BY kind, name",
                    &r->list_kinds);
    if (e == 0) /* a range of the primary key: reads only what it returns */
        e = prepare(r->db,
                    "SELECT doc FROM resources WHERE kind = ?1 AND name >= ?2 AND name < ?3 ORDER BY name",
                    &r->list_range);
    if (e == 0)
        e = prepare(r->db, "SELECT rv, type, doc FROM changes WHERE rv > ?1 ORDER BY rv LIMIT ?2",
                    &r->changes);
    if (e == 0)
        e = prepare(r->db,
                    "SELECT rv, type, doc FROM changes WHERE kind = ?3 AND rv > ?1 ORDER BY rv LIMIT ?2",
                    &r->changes_kind);
    if (e == 0)
        e = prepare(r->db,
                    "SELECT rv, type, doc FROM changes WHERE kind IN (?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) "
                    "AND rv > ?1 ORDER BY rv LIMIT ?2",
                    &r->changes_kinds);
    if (e == 0)
        e = prepare(r->db, "SELECT min(rv) FROM changes", &r->min_change);
    if (e == 0)
        e = prepare(r->db, "SELECT coalesce(max(rv), 0) FROM changes", &r->revision);
    if (e < 0) {
        reader_free(r);
        return e;
    }
    *ret = r;
    return 0;
}

/* Borrows a read connection from the pool, opening one when none is free. */
static int reader_acquire(sqlite_store *s, reader **ret)
{
    reader *r = (reader *)store_pool_take(&s->readers);
    if (r) {
        *ret = r;
        return 0;
    }
    return reader_new(s, ret);
}

/* Returns R to the pool (or closes it when the pool is full). */
static void reader_release(sqlite_store *s, reader *r)
{
    if (!store_pool_put(&s->readers, &r->pooled))
        reader_free(r);
}

/* Parses a stored document; a row that does not parse is corruption. */
static int row_doc(sqlite3_stmt *st, int col, json_t **ret)
{
    const char *text = (const char *)sqlite3_column_text(st, col);
    int len = sqlite3_column_bytes(st, col);
    json_t *doc = text ? json_loadb(text, (size_t)len, 0, NULL) : NULL;
    if (!doc)
        return -EIO;
    *ret = doc;
    return 0;
}

static int query_one(sqlite3_stmt *st, json_t **ret)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return sqlite_to_errno(rc) ?: -EIO;
    return row_doc(st, 0, ret);
}

/* Runs the single-row statement chosen by PICK with text parameters A and B
 * on a pooled reader; the document found (new reference) or -ENOENT. */
static int read_one(sqlite_store *s, sqlite3_stmt *(*pick)(reader *), const char *a, const char *b,
                    json_t **ret_doc)
{
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    sqlite3_stmt *st = pick(r);
    sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
    e = query_one(st, ret_doc);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    reader_release(s, r);
    return e;
}

static sqlite3_stmt *pick_get(reader *r)
{
    return r->get;
}

static sqlite3_stmt *pick_get_lookup(reader *r)
{
    return r->get_lookup;
}

static int sqlite_get(void *impl, const char *kind, const char *name, json_t **ret_doc)
{
    return read_one(impl, pick_get, kind, name, ret_doc);
}

static int sqlite_get_by_lookup(void *impl, const char *kind, const char *key, json_t **ret_doc)
{
    return read_one(impl, pick_get_lookup, kind, key, ret_doc);
}

/* Binds KINDS (N of them) to the COUNT text parameters from FIRST on; the
 * parameters past N are NULL, which no kind equals. */
static void bind_kinds(sqlite3_stmt *st, int first, int count, const char *const *kinds, size_t n)
{
    for (int i = 0; i < count; i++) {
        if ((size_t)i < n)
            sqlite3_bind_text(st, first + i, kinds[i], -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, first + i);
    }
}

/* Runs ST (its parameters bound) on R in one read transaction: the
 * documents it selects and the revision they reflect, the same snapshot.
 * Resets ST. */
static int read_docs(reader *r, sqlite3_stmt *st, json_t **ret_items, int64_t *ret_revision)
{
    json_t *items = json_array();
    int64_t rev = 0;
    int e = items ? exec_sql(r->db, "BEGIN") : -ENOMEM;
    if (e == 0) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            json_t *doc;
            e = row_doc(st, 0, &doc);
            if (e < 0)
                break;
            json_array_append_new(items, doc);
        }
        if (e == 0 && rc != SQLITE_DONE)
            e = sqlite_to_errno(rc) ?: -EIO;
        if (e == 0 && sqlite3_step(r->revision) == SQLITE_ROW)
            rev = sqlite3_column_int64(r->revision, 0);
        sqlite3_reset(r->revision);
        exec_sql(r->db, "COMMIT");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (e < 0) {
        json_decref(items);
        return e;
    }
    *ret_items = items;
    if (ret_revision)
        *ret_revision = rev;
    return 0;
}

/* The documents of the N_KINDS (1..STORE_KINDS_MAX) KINDS, sorted by kind
 * and name, and the revision they reflect. */
static int sqlite_list(void *impl, const char *const *kinds, size_t n_kinds, json_t **ret_items,
                       int64_t *ret_revision)
{
    sqlite_store *s = impl;
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    sqlite3_stmt *st = n_kinds == 1 ? r->list : r->list_kinds;
    bind_kinds(st, 1, n_kinds == 1 ? 1 : STORE_KINDS_MAX, kinds, n_kinds);
    e = read_docs(r, st, ret_items, ret_revision);
    reader_release(s, r);
    return e;
}

/* The documents of KIND named FROM or after and before TO, sorted by name,
 * and the revision they reflect. */
static int sqlite_list_range(void *impl, const char *kind, const char *from, const char *to, json_t **ret_items,
                             int64_t *ret_revision)
{
    sqlite_store *s = impl;
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    sqlite3_bind_text(r->list_range, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(r->list_range, 2, from, -1, SQLITE_STATIC);
    sqlite3_bind_text(r->list_range, 3, to, -1, SQLITE_STATIC);
    e = read_docs(r, r->list_range, ret_items, ret_revision);
    reader_release(s, r);
    return e;
}

/* The changes after AFTER of the N_KINDS KINDS (0: every kind), oldest
 * first, at most MAX; -ESTALE when AFTER is older than the kept history.
 * EPOCH is not checked: the file's epoch never changes under an open store
 * (the front compares it with store_epoch()). */
static int sqlite_changes_since(void *impl, uint64_t epoch, const char *const *kinds, size_t n_kinds, int64_t after,
                                size_t max, json_t **ret_events)
{
    sqlite_store *s = impl;
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    json_t *events = json_array();
    if (sqlite3_step(r->min_change) == SQLITE_ROW &&
        sqlite3_column_type(r->min_change, 0) != SQLITE_NULL &&
        after + 1 < sqlite3_column_int64(r->min_change, 0))
        e = -ESTALE;
    sqlite3_reset(r->min_change);
    sqlite3_stmt *st = n_kinds == 0 ? r->changes : n_kinds == 1 ? r->changes_kind : r->changes_kinds;
    if (e == 0) {
        sqlite3_bind_int64(st, 1, after);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
        if (n_kinds > 0)
            bind_kinds(st, 3, n_kinds == 1 ? 1 : STORE_KINDS_MAX, kinds, n_kinds);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            json_t *doc;
            e = row_doc(st, 2, &doc);
            if (e < 0)
                break;
            int type = sqlite3_column_int(st, 1);
            if (type < STORE_EVENT_ADDED || type > STORE_EVENT_DELETED) {
                json_decref(doc);
                e = -EIO;
                break;
            }
            json_array_append_new(events,
                                  json_pack("{s:s, s:I, s:o}", "type", store_event_type_name(type),
                                            "revision", (json_int_t)sqlite3_column_int64(st, 0),
                                            "object", doc));
        }
        if (e == 0 && rc != SQLITE_DONE)
            e = sqlite_to_errno(rc) ?: -EIO;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    reader_release(s, r);
    if (e < 0) {
        json_decref(events);
        return e;
    }
    *ret_events = events;
    return 0;
}

static int64_t sqlite_revision(void *impl)
{
    sqlite_store *s = impl;
    return atomic_load(&s->revision);
}

/* ---- the writer ---- */

/* Reads the current row (doc, rv, lookup key) on the write connection. */
static int writer_get(sqlite_store *s, const char *kind, const char *name, json_t **ret_doc,
                      int64_t *ret_rv, char **ret_lookup)
{
    sqlite3_bind_text(s->w_get, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->w_get, 2, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->w_get), e;
    if (rc == SQLITE_ROW) {
        e = row_doc(s->w_get, 0, ret_doc);
        if (e == 0) {
            *ret_rv = sqlite3_column_int64(s->w_get, 1);
            const char *lk = (const char *)sqlite3_column_text(s->w_get, 2);
            *ret_lookup = lk ? strdup(lk) : NULL;
        }
    } else
        e = rc == SQLITE_DONE ? -ENOENT : (sqlite_to_errno(rc) ?: -EIO);
    sqlite3_reset(s->w_get);
    sqlite3_clear_bindings(s->w_get);
    return e;
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : (sqlite_to_errno(rc) ?: -EIO);
}

static int writer_record_change(sqlite_store *s, int64_t rv, store_event_type type, const char *kind,
                                const char *name, const char *text)
{
    sqlite3_bind_int64(s->w_change, 1, rv);
    sqlite3_bind_int(s->w_change, 2, (int)type);
    sqlite3_bind_text(s->w_change, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->w_change, 4, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->w_change, 5, text, -1, SQLITE_STATIC);
    return step_done(s->w_change);
}

/* Applies one operation inside the open transaction; REV is advanced for
 * each change it makes. */
static int writer_apply_op(sqlite_store *s, store_op *op, int64_t *rev, const char *now)
{
    json_t *old = NULL, *linked = NULL;
    int64_t old_rv = 0, linked_rv;
    _cleanup_free_ char *old_lookup = NULL, *linked_lookup = NULL;
    int e = writer_get(s, op->kind, op->name, &old, &old_rv, &old_lookup);
    if (e < 0 && e != -ENOENT)
        return e;
    e = store_op_needs_link(op) ? writer_get(s, op->uid_kind, op->uid_name, &linked, &linked_rv, &linked_lookup)
                                : 0;
    if (e < 0 && e != -ENOENT) {
        json_decref(old);
        return e;
    }
    store_plan plan;
    e = store_op_plan(op, old, old_rv, old_lookup, linked, rev, now, &plan);
    json_decref(linked);
    if (e < 0 || plan.write == STORE_PLAN_NOTHING)
        return e;
    if (plan.write == STORE_PLAN_DELETE) {
        sqlite3_bind_text(s->w_delete, 1, op->kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(s->w_delete, 2, op->name, -1, SQLITE_STATIC);
        e = step_done(s->w_delete);
    } else {
        const char *lookup_key = op->lookup_key ? op->lookup_key : old_lookup;
        sqlite3_bind_text(s->w_put, 1, op->kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(s->w_put, 2, op->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w_put, 3, plan.rv);
        if (lookup_key)
            sqlite3_bind_text(s->w_put, 4, lookup_key, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(s->w_put, 4);
        sqlite3_bind_text(s->w_put, 5, plan.text, -1, SQLITE_STATIC);
        e = step_done(s->w_put);
    }
    if (e == 0)
        e = writer_record_change(s, plan.rv, store_plan_event(&plan), op->kind, op->name, plan.text);
    if (e < 0) {
        store_plan_clear(&plan);
        return e;
    }
    store_plan_done(op, &plan);
    return 0;
}

typedef struct apply_ctx {
    sqlite_store *s;
    int64_t *rev;
    const char *now;
} apply_ctx;

static int apply_op(store_op *op, void *ctx)
{
    apply_ctx *a = ctx;
    return writer_apply_op(a->s, op, a->rev, a->now);
}

/* A guard's store_view_list(): KIND's documents read on the writer's
 * connection, inside the open transaction (which holds the database's
 * write lock: no other writer, of any process, runs until it ends). */
static int writer_view_list(store_view *view, const char *kind, json_t **ret_items)
{
    sqlite_store *s = (sqlite_store *)((char *)view - offsetof(sqlite_store, view));
    json_t *items = json_array();
    int e = items ? 0 : -ENOMEM, rc = SQLITE_DONE;
    sqlite3_bind_text(s->w_list, 1, kind, -1, SQLITE_STATIC);
    while (e == 0 && (rc = sqlite3_step(s->w_list)) == SQLITE_ROW) {
        json_t *doc;
        e = row_doc(s->w_list, 0, &doc);
        if (e == 0 && json_array_append_new(items, doc) < 0)
            e = -ENOMEM;
    }
    if (e == 0 && rc != SQLITE_DONE)
        e = sqlite_to_errno(rc) ?: -EIO;
    sqlite3_reset(s->w_list);
    sqlite3_clear_bindings(s->w_list);
    if (e < 0) {
        json_decref(items);
        return e;
    }
    *ret_items = items;
    return 0;
}

/* Runs one transaction inside its savepoint; on failure rolls it back alone. */
static void writer_run_txn(sqlite_store *s, store_txn *txn, int64_t *rev, const char *now)
{
    int64_t start = *rev;
    txn->error = exec_sql(s->wdb, "SAVEPOINT txn");
    if (txn->error == 0 && txn->fence_lease) {
        sqlite3_bind_text(s->w_fence, 1, txn->fence_lease, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->w_fence, 2, txn->fence_token);
        int rc = sqlite3_step(s->w_fence);
        txn->error = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOLCK : (sqlite_to_errno(rc) ?: -EIO);
        sqlite3_reset(s->w_fence);
        sqlite3_clear_bindings(s->w_fence);
    }
    store_txn_apply(txn, apply_op, &(apply_ctx){s, rev, now}, &s->view);
    if (txn->error < 0) {
        exec_sql(s->wdb, "ROLLBACK TO txn");
        store_txn_clear(txn);
        *rev = start;
    }
    exec_sql(s->wdb, "RELEASE txn");
}

/* Commits BATCH (a list linked through ->next) as one SQLite transaction. */
static void writer_commit_batch(sqlite_store *s, store_txn *batch)
{
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    int64_t rev = atomic_load(&s->revision);
    int e = exec_sql(s->wdb, "BEGIN IMMEDIATE");
    for (store_txn *t = batch; e == 0 && t; t = t->next)
        writer_run_txn(s, t, &rev, now);
    if (e == 0)
        e = exec_sql(s->wdb, "COMMIT");
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "store commit failed; the batch is refused", "error",
                   strerror(-e), NULL);
        exec_sql(s->wdb, "ROLLBACK");
        for (store_txn *t = batch; t; t = t->next)
            if (t->error == 0) {
                store_txn_clear(t);
                t->error = e;
                t->failed_op = 0;
            }
    } else {
        atomic_store(&s->revision, rev);
        if (rev - s->last_trim >= 1000) {
            /* keep a bounded history for watchers; the newest row always stays */
            sqlite3_bind_int64(s->w_trim, 1, rev - STORE_CHANGES_KEEP);
            step_done(s->w_trim);
            s->last_trim = rev;
        }
    }
    store_batch_done(batch);
}

static void *writer_main(void *arg)
{
    sqlite_store *s = arg;
    store_txn *batch;
    while ((batch = store_queue_take(&s->queue, STORE_BATCH_MAX)))
        writer_commit_batch(s, batch);
    return NULL;
}

/* Finalizes the writer's statements and closes its connection. */
static void writer_close(sqlite_store *s)
{
    sqlite3_finalize(s->w_get);
    sqlite3_finalize(s->w_put);
    sqlite3_finalize(s->w_delete);
    sqlite3_finalize(s->w_change);
    sqlite3_finalize(s->w_trim);
    sqlite3_finalize(s->w_fence);
    sqlite3_finalize(s->w_list);
    sqlite3_close(s->wdb);
}

/* Reads the file's epoch, making it when the file is new. */
static int read_epoch(sqlite_store *s)
{
    uint64_t fresh = 0;
    while (fresh == 0)
        if (random_bytes(&fresh, sizeof(fresh)) < 0)
            return -EIO;
    char sql[96];
    snprintf(sql, sizeof(sql), "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', '%016llx')",
             (unsigned long long)fresh);
    sqlite3_stmt *st = NULL;
    int e = exec_sql(s->wdb, sql);
    if (e == 0)
        e = prepare(s->wdb, "SELECT value FROM meta WHERE key = 'epoch'", &st);
    if (e == 0 && sqlite3_step(st) == SQLITE_ROW)
        s->epoch = strtoull((const char *)sqlite3_column_text(st, 0), NULL, 16);
    sqlite3_finalize(st);
    return e == 0 && s->epoch == 0 ? -EIO : e;
}

static int writer_open(sqlite_store *s)
{
    int e = open_db(s->path, true, &s->wdb);
    if (e == 0)
        e = exec_sql(s->wdb, schema_sql);
    if (e == 0)
        e = prepare(s->wdb, "SELECT doc, rv, lookup_key FROM resources WHERE kind = ?1 AND name = ?2",
                    &s->w_get);
    if (e == 0)
        e = prepare(s->wdb,
                    "INSERT INTO resources (kind, name, rv, lookup_key, doc) VALUES (?1, ?2, ?3, ?4, ?5) "
                    "ON CONFLICT (kind, name) DO UPDATE SET rv = excluded.rv, "
                    "lookup_key = excluded.lookup_key, doc = excluded.doc",
                    &s->w_put);
    if (e == 0)
        e = prepare(s->wdb, "DELETE FROM resources WHERE kind = ?1 AND name = ?2", &s->w_delete);
    if (e == 0)
        e = prepare(s->wdb, "INSERT INTO changes (rv, type, kind, name, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &s->w_change);
    if (e == 0)
        e = prepare(s->wdb, "DELETE FROM changes WHERE rv < ?1", &s->w_trim);
    if (e == 0)
        e = prepare(s->wdb, "SELECT 1 FROM leases WHERE name = ?1 AND token = ?2", &s->w_fence);
    if (e == 0)
        e = prepare(s->wdb, "SELECT doc FROM resources WHERE kind = ?1 ORDER BY name", &s->w_list);
    if (e == 0)
        e = read_epoch(s);
    if (e < 0)
        return e;
    sqlite3_stmt *st = NULL;
    e = prepare(s->wdb, "SELECT coalesce(max(rv), 0) FROM changes", &st);
    if (e == 0 && sqlite3_step(st) == SQLITE_ROW) {
        atomic_store(&s->revision, sqlite3_column_int64(st, 0));
        s->last_trim = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return e;
}

/* Opens (creating if needed) the database at PATH and starts the writer. */
static int sqlite_open(const char *path, void **ret)
{
    sqlite_store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->path = strdup(path);
    s->view.list = writer_view_list;
    store_queue_init(&s->queue);
    store_pool_init(&s->readers);
    int e = s->path ? writer_open(s) : -ENOMEM;
    if (e == 0 && pthread_create(&s->writer, NULL, writer_main, s) != 0)
        e = -EAGAIN;
    if (e < 0) {
        writer_close(s);
        free(s->path);
        free(s);
        return e;
    }
    *ret = s;
    return 0;
}

/* Drains the queue, stops the writer and closes every connection. */
static void sqlite_close(void *impl)
{
    sqlite_store *s = impl;
    store_queue_stop(&s->queue);
    pthread_join(s->writer, NULL);
    for (store_pooled *r = store_pool_destroy(&s->readers), *next; r; r = next) {
        next = r->next;
        reader_free((reader *)r);
    }
    writer_close(s);
    store_queue_destroy(&s->queue);
    free(s->path);
    free(s);
}

static uint64_t sqlite_epoch(void *impl)
{
    sqlite_store *s = impl;
    return s->epoch;
}

/* Runs the lease statement SQL (parameters: name, holder, A, B) on a pooled
 * connection, in its own transaction: the token of the row it returns, or
 * -ENOENT when it returns none. */
static int lease_exec(sqlite_store *s, const char *sql, const char *name, const char *holder, int64_t a, int64_t b,
                      int64_t *ret_token)
{
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    sqlite3_stmt *st = NULL;
    e = prepare(r->db, sql, &st);
    if (e == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, holder, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, a);
        sqlite3_bind_int64(st, 4, b);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            *ret_token = sqlite3_column_int64(st, 0);
        e = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : (sqlite_to_errno(rc) ?: -EIO);
    }
    sqlite3_finalize(st);
    reader_release(s, r);
    return e;
}

static int64_t now_ms(void)
{
    return (int64_t)(time_now_ns() / 1000000);
}

static int sqlite_lease_acquire(void *impl, const char *name, const char *holder, int64_t ttl_ms, int64_t *ret_token)
{
    int64_t token;
    int e = lease_exec(impl,
                       "INSERT INTO leases (name, holder, token, expires_ms) VALUES (?1, ?2, 1, ?3 + ?4) "
                       "ON CONFLICT (name) DO UPDATE SET token = CASE WHEN leases.holder = excluded.holder "
                       "AND leases.expires_ms > ?3 THEN leases.token ELSE leases.token + 1 END, "
                       "holder = excluded.holder, expires_ms = excluded.expires_ms "
                       "WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?3 RETURNING token",
                       name, holder, now_ms(), ttl_ms, &token);
    if (e == -ENOENT)
        return -EBUSY;
    if (e == 0)
        *ret_token = token;
    return e;
}

static int sqlite_lease_renew(void *impl, const char *name, const char *holder, int64_t token, int64_t ttl_ms)
{
    int64_t t;
    int e = lease_exec(impl,
                       "UPDATE leases SET expires_ms = ?4 WHERE name = ?1 AND holder = ?2 AND token = ?3 "
                       "RETURNING token",
                       name, holder, token, now_ms() + ttl_ms, &t);
    return e == -ENOENT ? -ESTALE : e;
}

static int sqlite_lease_release(void *impl, const char *name, const char *holder, int64_t token)
{
    int64_t t;
    int e = lease_exec(impl,
                       "UPDATE leases SET holder = '', expires_ms = ?4 WHERE name = ?1 AND holder = ?2 "
                       "AND token = ?3 RETURNING token",
                       name, holder, token, 0, &t);
    return e == -ENOENT ? -ESTALE : e;
}

/* Adds 1 to counter NAME in its window (a new one when the last ended) on a
 * pooled connection, in its own transaction; when SWEEP, first deletes the
 * windows that ended. */
static int sqlite_counter_add(void *impl, const char *name, int64_t window_ms, bool sweep, int64_t *ret_count,
                              int64_t *ret_left_ms)
{
    sqlite_store *s = impl;
    reader *r;
    int e = reader_acquire(s, &r);
    if (e < 0)
        return e;
    int64_t now = now_ms();
    sqlite3_stmt *st = NULL;
    if (sweep) {
        e = prepare(r->db, "DELETE FROM counters WHERE ends_ms <= ?1", &st);
        if (e == 0) {
            sqlite3_bind_int64(st, 1, now);
            e = sqlite_to_errno(sqlite3_step(st));
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (e == 0)
        e = prepare(r->db,
                    "INSERT INTO counters (name, count, ends_ms) VALUES (?1, 1, ?2 + ?3) "
                    "ON CONFLICT (name) DO UPDATE SET "
                    "count = CASE WHEN counters.ends_ms > ?2 THEN counters.count + 1 ELSE 1 END, "
                    "ends_ms = CASE WHEN counters.ends_ms > ?2 THEN counters.ends_ms ELSE excluded.ends_ms END "
                    "RETURNING count, ends_ms - ?2",
                    &st);
    if (e == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, window_ms);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *ret_count = sqlite3_column_int64(st, 0);
            *ret_left_ms = sqlite3_column_int64(st, 1);
        } else
            e = sqlite_to_errno(rc) ?: -EIO;
    }
    sqlite3_finalize(st);
    reader_release(s, r);
    return e;
}

/* Queues TXN for the writer thread, which commits it with whatever else is queued. */
static void sqlite_write_async(void *impl, store_txn *txn)
{
    sqlite_store *s = impl;
    store_queue_push(&s->queue, txn);
}

const store_driver store_sqlite_driver = {
    .scheme = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .get = sqlite_get,
    .get_by_lookup = sqlite_get_by_lookup,
    .list = sqlite_list,
    .list_range = sqlite_list_range,
    .write_async = sqlite_write_async,
    .changes_since = sqlite_changes_since,
    .revision = sqlite_revision,
    .epoch = sqlite_epoch,
    .lease_acquire = sqlite_lease_acquire,
    .lease_renew = sqlite_lease_renew,
    .lease_release = sqlite_lease_release,
    .counter_add = sqlite_counter_add,
};
