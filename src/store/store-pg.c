/* The PostgreSQL driver of the store, on libpq. Several processes (api
 * replicas) share one database:
 *  - every write transaction first locks the one-row `revision` counter
 *    (SELECT … FOR UPDATE), so writers of every process are serialised, the
 *    revisions they take are gap-free and a change row becomes visible only
 *    after every smaller one (the lock passes on at COMMIT);
 *  - updates and deletes compare-and-swap the row's rv in the statement
 *    (… WHERE rv = $n, one row affected or -ESTALE);
 *  - a transaction's guard (store_txn_guard) reads under that lock, so what
 *    it checks cannot change before the commit;
 *  - the change feed is the `changes` table; each commit that changed
 *    something sends NOTIFY cloister_changes, which one dedicated listening
 *    connection turns into a new store_revision(); it also polls, so a lost
 *    notification only delays;
 *  - an epoch (a random id made with the schema) tells a reset database;
 *  - one writer thread commits whatever is queued as one transaction (group
 *    commit, a SAVEPOINT per store transaction); a lost connection before
 *    COMMIT retries the batch on a new one, a lost COMMIT asks the server
 *    whether it committed (txid_status): nothing is reported done that did
 *    not commit;
 *  - reads borrow connections from a pool and reconnect once when theirs
 *    broke.
 * The URL (libpq's, with its password if any) is never logged. */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "store/store-driver.h"

/* transactions per commit. On the savepoint path each is a
 * subtransaction, and more than 64 of them in one transaction slow every
 * other session's snapshots: a batch that may take that path stays below */
#define PG_BATCH_MAX 60
#define PG_CHANGES_KEEP 100000
#define PG_SCHEMA_VERSION 1
#define PG_POLL_MS 500         /* the listener's fallback poll */
#define PG_RETRY_NS 10000000000ULL     /* how long a write waits for the database to come back */
#define PG_DOWN_RETRY_NS 1000000000ULL /* and once the store is known unreachable (a long outage) */
#define PG_READ_RETRY_NS 3000000000ULL /* and a read */
#define PG_CHANNEL "cloister_changes"

/* The prepared statements every connection has. */
enum {
    Q_GET,
    Q_GET_LOOKUP,
    Q_LIST,
    Q_LIST_RANGE,
    Q_CHANGES,
    Q_HEAD,
    Q_W_LOCK,
    Q_W_GET,
    Q_W_INSERT,
    Q_W_UPDATE,
    Q_W_DELETE,
    Q_W_FENCE,
    Q_W_ADVANCE,
    Q_W_TRIM,
    Q_TXID_STATUS,
    Q_W_GET_MANY,
    Q_LEASE_ACQUIRE,
    Q_LEASE_RENEW,
    Q_LEASE_RELEASE,
    Q_COUNTER_ADD,
    Q_COUNTER_SWEEP,
    Q_COUNT,
};

static const struct {
    const char *sql;
    int n_params;
} queries[Q_COUNT] = {
    [Q_GET] = {"SELECT doc FROM resources WHERE kind = $1 AND name = $2", 2},
    [Q_GET_LOOKUP] = {"SELECT doc FROM resources WHERE kind = $1 AND lookup_key = $2", 2},
    /* one statement is one snapshot: the documents and the revision they reflect */
    [Q_LIST] = {"SELECT r.rv, d.doc FROM revision r LEFT JOIN LATERAL (SELECT kind, name, doc FROM resources "
                "WHERE kind = ANY ($1::text[])) d ON true WHERE r.id = 1 ORDER BY d.kind, d.name",
                1},
    [Q_LIST_RANGE] = {"SELECT r.rv, d.doc FROM revision r LEFT JOIN LATERAL (SELECT name, doc FROM resources "
                      "WHERE kind = $1 AND name >= $2 AND name < $3) d ON true WHERE r.id = 1 ORDER BY d.name",
                      3},
    /* the oldest kept change and the head with the changes, one snapshot; $3 NULL: every kind */
    [Q_CHANGES] = {"SELECT m.oldest, m.head, c.rv, c.type, c.doc FROM (SELECT (SELECT min(rv) FROM changes) "
                   "AS oldest, (SELECT rv FROM revision WHERE id = 1) AS head) m LEFT JOIN LATERAL "
                   "(SELECT rv, type, doc FROM changes WHERE rv > $1 AND ($3::text[] IS NULL OR "
                   "kind = ANY ($3::text[])) ORDER BY rv LIMIT $2) c ON true ORDER BY c.rv",
                   3},
    /* the head and what the epoch is made of: the schema's random id, the
     * cluster's system identifier and the database's OID */
    [Q_HEAD] = {"SELECT r.rv, m.value, (SELECT system_identifier FROM pg_control_system()), "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                "FROM revision r, cloister_meta m WHERE r.id = 1 AND m.key = 'epoch'",
                0},
    [Q_W_LOCK] = {"SELECT rv, txid_current() FROM revision WHERE id = 1 FOR UPDATE", 0},
    [Q_W_GET] = {"SELECT doc, rv, lookup_key FROM resources WHERE kind = $1 AND name = $2", 2},
    /* each write and its change in one statement; the change row is there
     * only when the write was (one row: the compare-and-swap held) */
    [Q_W_INSERT] = {"WITH w AS (INSERT INTO resources (kind, name, rv, lookup_key, doc) "
                    "VALUES ($1, $2, $3, $4, $5) RETURNING rv) "
                    "INSERT INTO changes (rv, type, kind, name, doc) SELECT rv, $6, $1, $2, $5 FROM w",
                    6},
    [Q_W_UPDATE] = {"WITH w AS (UPDATE resources SET rv = $3, lookup_key = $4, doc = $5 "
                    "WHERE kind = $1 AND name = $2 AND rv = $6 RETURNING rv) "
                    "INSERT INTO changes (rv, type, kind, name, doc) SELECT rv, $7, $1, $2, $5 FROM w",
                    7},
    [Q_W_DELETE] = {"WITH w AS (DELETE FROM resources WHERE kind = $1 AND name = $2 AND rv = $3 RETURNING 1) "
                    "INSERT INTO changes (rv, type, kind, name, doc) SELECT $4, $5, $1, $2, $6 FROM w",
                    6},
    [Q_W_FENCE] = {"SELECT 1 FROM leases WHERE name = $1 AND token = $2 FOR SHARE", 2},
    [Q_W_ADVANCE] = {"WITH u AS (UPDATE revision SET rv = $1 WHERE id = 1) "
                     "SELECT pg_notify('" PG_CHANNEL "', $1::bigint::text)",
                     1},
    [Q_W_TRIM] = {"DELETE FROM changes WHERE rv < $1", 1},
    [Q_TXID_STATUS] = {"SELECT txid_status($1)", 1},
    /* the rows of a batch at once: the keys are two arrays, kinds and names */
    [Q_W_GET_MANY] = {"SELECT r.kind, r.name, r.doc, r.rv, r.lookup_key FROM unnest($1::text[], $2::text[]) "
                      "AS k(kind, name) JOIN resources r ON r.kind = k.kind COLLATE \"C\" "
                      "AND r.name = k.name COLLATE \"C\"",
                      2},
    /* a new holder (or the same one after expiry) takes the next token */
    [Q_LEASE_ACQUIRE] = {"INSERT INTO leases AS l (name, holder, token, expires) "
                         "VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond') "
                         "ON CONFLICT (name) DO UPDATE SET token = CASE WHEN l.holder = excluded.holder "
                         "AND l.expires > clock_timestamp() THEN l.token ELSE l.token + 1 END, "
                         "holder = excluded.holder, expires = excluded.expires "
                         "WHERE l.holder = excluded.holder OR l.expires <= clock_timestamp() RETURNING token",
                         3},
    [Q_LEASE_RENEW] = {"UPDATE leases SET expires = clock_timestamp() + $4::bigint * interval '1 millisecond' "
                       "WHERE name = $1 AND holder = $2 AND token = $3 RETURNING token",
                       4},
    [Q_LEASE_RELEASE] = {"UPDATE leases SET holder = '', expires = '-infinity' "
                         "WHERE name = $1 AND holder = $2 AND token = $3 RETURNING token",
                         3},
    /* one atomic upsert: concurrent adds from several processes each count */
    [Q_COUNTER_ADD] = {"INSERT INTO counters AS c (name, count, ends) "
                       "VALUES ($1, 1, clock_timestamp() + $2::bigint * interval '1 millisecond') "
                       "ON CONFLICT (name) DO UPDATE SET "
                       "count = CASE WHEN c.ends > clock_timestamp() THEN c.count + 1 ELSE 1 END, "
                       "ends = CASE WHEN c.ends > clock_timestamp() THEN c.ends ELSE excluded.ends END "
                       "RETURNING count, GREATEST(0, CEIL(EXTRACT(EPOCH FROM ends - clock_timestamp()) * 1000))"
                       "::bigint",
                       2},
    [Q_COUNTER_SWEEP] = {"DELETE FROM counters WHERE ends <= clock_timestamp()", 0},
};

/* Version 1 of the schema. Names compare byte-wise (COLLATE "C") like the
 * SQLite driver's, so lists and ranges come in the same order. */
static const char schema_v1[] =
    "CREATE TABLE revision (id integer PRIMARY KEY CHECK (id = 1), rv bigint NOT NULL);"
    "INSERT INTO revision VALUES (1, 0);"
    "CREATE TABLE resources (kind text COLLATE \"C\" NOT NULL, name text COLLATE \"C\" NOT NULL,"
    "  rv bigint NOT NULL, lookup_key text UNIQUE, doc text NOT NULL, PRIMARY KEY (kind, name));"
    "CREATE TABLE changes (rv bigint PRIMARY KEY, type smallint NOT NULL, kind text COLLATE \"C\" NOT NULL,"
    "  name text COLLATE \"C\" NOT NULL, doc text NOT NULL);"
    "CREATE INDEX changes_kind ON changes (kind, rv);"
    "CREATE TABLE leases (name text PRIMARY KEY, holder text NOT NULL, token bigint NOT NULL,"
    "  expires timestamptz NOT NULL);";

typedef struct pg_conn {
    store_pooled pooled; /* first: the readers' pool's link */
    PGconn *c;
    uint64_t epoch; /* of the database C is connected to, read when it connected */
} pg_conn;

typedef struct pg_store {
    char *url; /* secret: may hold a password */
    pg_conn *writer_conn;   /* writer thread only */
    _Atomic int64_t revision;
    _Atomic uint64_t epoch;
    int64_t last_trim;
    /* a read or a batch gave up waiting for the database: until the
     * listener connects again, reads fail at once and batches wait less */
    _Atomic bool unreachable;

    pthread_t writer;
    store_queue queue;

    pthread_t listener;
    int stop_fd; /* eventfd: ends the listener */

    store_pool readers;
} pg_store;

/* The errno of a failed statement: a broken connection is -ECONNRESET (the
 * caller may reconnect), a unique key -EEXIST. */
static int result_errno(PGconn *c, const PGresult *res)
{
    if (!res || PQstatus(c) == CONNECTION_BAD)
        return -ECONNRESET;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!state)
        return -EIO;
    if (strcmp(state, "23505") == 0)
        return -EEXIST;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
        return -ECONNRESET; /* connection exception, operator intervention (shutdown) */
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return -EAGAIN;
    if (strncmp(state, "53", 2) == 0)
        return -ENOSPC;
    if (strcmp(state, "42501") == 0)
        return -EACCES;
    return -EIO;
}

/* Runs prepared statement Q with the text PARAMS (NULL is SQL NULL): 0 and
 * the result in *RET (the caller clears it), or a negative errno. */
static int run(PGconn *c, int q, const char *const *params, PGresult **ret)
{
    char name[8];
    snprintf(name, sizeof(name), "q%d", q);
    PGresult *res = PQexecPrepared(c, name, queries[q].n_params, params, NULL, NULL, 0);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        int e = result_errno(c, res);
        if (e != -EEXIST)
            log_debug("store: postgres statement %d: %s", q, res ? PQresultErrorMessage(res) : PQerrorMessage(c));
        PQclear(res);
        return e;
    }
    *ret = res;
    return 0;
}

/* Runs SQL (no parameters, maybe several statements) for its effect. */
static int exec_simple(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int e = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : result_errno(c, res);
    if (e < 0)
        log_debug("store: postgres: %s", res ? PQresultErrorMessage(res) : PQerrorMessage(c));
    PQclear(res);
    return e;
}

static int prepare_all(PGconn *c)
{
    for (int q = 0; q < Q_COUNT; q++) {
        char name[8];
        snprintf(name, sizeof(name), "q%d", q);
        PGresult *res = PQprepare(c, name, queries[q].sql, queries[q].n_params, NULL);
        int e = res && PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : result_errno(c, res);
        if (e < 0)
            log_error("store: postgres cannot prepare a statement: %s",
                      res ? PQresultErrorMessage(res) : PQerrorMessage(c));
        PQclear(res);
        if (e < 0)
            return e;
    }
    return 0;
}

/* The server's notices ("already exists, skipping") are not errors: debug log only. */
static void notice_ignored(void *arg, const char *message)
{
    log_debug("store: postgres notice: %s", message);
}

static int ensure_schema(PGconn *c);
static int refresh_head(pg_store *s, PGconn *c, uint64_t *ret_epoch);

/* Opens a connection to S's database: with the schema made when missing (a
 * reset database has none), every statement prepared, and the head and
 * epoch read (store_epoch() follows a new one). A failure is logged at
 * LEVEL. *RET_EPOCH (may be NULL) is the connection's epoch. */
static int connect_db(pg_store *s, log_level level, PGconn **ret, uint64_t *ret_epoch)
{
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *values[] = {"10", "cloisterd", s->url, NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1);
    if (!c)
        return -ENOMEM;
    if (PQstatus(c) != CONNECTION_OK) {
        /* libpq's message names the host and the reason, never the password */
        log_fields(level, "cannot connect to PostgreSQL", "error", PQerrorMessage(c), NULL);
        PQfinish(c);
        return -ECONNREFUSED;
    }
    PQsetNoticeProcessor(c, notice_ignored, NULL);
    uint64_t epoch = 0;
    int e = ensure_schema(c);
    if (e == 0)
        e = prepare_all(c);
    if (e == 0)
        e = refresh_head(s, c, &epoch);
    if (e < 0) {
        PQfinish(c);
        return e;
    }
    *ret = c;
    if (ret_epoch)
        *ret_epoch = epoch;
    return 0;
}

/* Reconnects PC after its connection broke: 0, or a negative errno (PC is
 * left broken). */
static int reconnect(pg_store *s, pg_conn *pc)
{
    PGconn *c;
    uint64_t epoch;
    int e = connect_db(s, LOG_LEVEL_DEBUG, &c, &epoch);
    if (e < 0)
        return e;
    PQfinish(pc->c);
    pc->c = c;
    pc->epoch = epoch;
    return 0;
}

/* ---- readers ---- */

static int reader_acquire(pg_store *s, pg_conn **ret)
{
    pg_conn *pc = (pg_conn *)store_pool_take(&s->readers);
    if (!pc) {
        pc = calloc(1, sizeof(*pc));
        if (!pc)
            return -ENOMEM;
        int e = connect_db(s, LOG_LEVEL_DEBUG, &pc->c, &pc->epoch);
        if (e < 0) {
            free(pc);
            return e;
        }
    }
    *ret = pc;
    return 0;
}

static void conn_free(pg_conn *pc)
{
    if (!pc)
        return;
    PQfinish(pc->c);
    free(pc);
}

/* Returns PC to the pool, or closes it when broken or the pool is full. */
static void reader_release(pg_store *s, pg_conn *pc)
{
    if (PQstatus(pc->c) != CONNECTION_OK || PQtransactionStatus(pc->c) != PQTRANS_IDLE ||
        !store_pool_put(&s->readers, &pc->pooled))
        conn_free(pc);
}

/* Sleeps MS milliseconds and doubles MS (up to a second). */
static void backoff(unsigned *ms)
{
    struct timespec ts = {.tv_sec = *ms / 1000, .tv_nsec = (long)(*ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
    *ms = *ms < 500 ? *ms * 2 : 1000;
}

/* Runs the read-only (or single-statement) Q on a pooled connection: 0
 * and *RET, or a negative errno. A broken connection is replaced, and
 * while the database is away (a restart) the read waits for it up to
 * PG_READ_RETRY_NS; once a read gave up, the store is unreachable and
 * reads fail at once (-ECONNREFUSED: no thread of the API waits) until the
 * listener connects again. With EPOCH not 0, -ESTALE when the connection's
 * database is of another epoch (nothing is read). */
static int read_query(pg_store *s, uint64_t epoch, int q, const char *const *params, PGresult **ret)
{
    uint64_t deadline = time_mono_ns() + PG_READ_RETRY_NS;
    unsigned ms = 20;
    for (;;) {
        if (atomic_load(&s->unreachable))
            return -ECONNREFUSED;
        pg_conn *pc;
        int e = reader_acquire(s, &pc);
        if (e == 0) {
            e = epoch && pc->epoch != epoch ? -ESTALE : run(pc->c, q, params, ret);
            if (e == -ECONNRESET && reconnect(s, pc) == 0)
                e = epoch && pc->epoch != epoch ? -ESTALE : run(pc->c, q, params, ret);
            reader_release(s, pc);
        }
        if (e != -ECONNRESET && e != -ECONNREFUSED)
            return e;
        if (time_mono_ns() >= deadline) {
            atomic_store(&s->unreachable, true);
            return e;
        }
        backoff(&ms);
    }
}

/* Parses the document in column COL of ROW; a row that does not parse is corruption. */
static int row_doc(const PGresult *res, int row, int col, json_t **ret)
{
    json_t *doc = json_loadb(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), 0, NULL);
    if (!doc)
        return -EIO;
    *ret = doc;
    return 0;
}

static int64_t row_int(const PGresult *res, int row, int col)
{
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static int read_one(pg_store *s, int q, const char *a, const char *b, json_t **ret_doc)
{
    const char *params[] = {a, b};
    PGresult *res = NULL;
    int e = read_query(s, 0, q, params, &res);
    if (e < 0)
        return e;
    e = PQntuples(res) == 0 ? -ENOENT : row_doc(res, 0, 0, ret_doc);
    PQclear(res);
    return e;
}

static int pg_get(void *impl, const char *kind, const char *name, json_t **ret_doc)
{
    return read_one(impl, Q_GET, kind, name, ret_doc);
}

static int pg_get_by_lookup(void *impl, const char *kind, const char *key, json_t **ret_doc)
{
    return read_one(impl, Q_GET_LOOKUP, kind, key, ret_doc);
}

/* The text[] literal of the N KINDS ({"a","b"}, each quoted and escaped) in
 * a new string. */
static char *kinds_array(const char *const *kinds, size_t n)
{
    size_t len = 3;
    for (size_t i = 0; i < n; i++)
        len += 2 * strlen(kinds[i]) + 3;
    char *out = malloc(len), *p = out;
    if (!out)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        *p++ = '"';
        for (const char *k = kinds[i]; *k; k++) {
            if (*k == '"' || *k == '\\')
                *p++ = '\\';
            *p++ = *k;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    return out;
}

/* The documents of a list result (rows of revision, doc; one row with a
 * NULL doc when there is none) and the revision they reflect. */
static int list_result(PGresult *res, json_t **ret_items, int64_t *ret_revision)
{
    json_t *items = json_array();
    int64_t rev = 0;
    int e = items ? 0 : -ENOMEM;
    for (int i = 0; e == 0 && i < PQntuples(res); i++) {
        rev = row_int(res, i, 0);
        if (PQgetisnull(res, i, 1))
            continue;
        json_t *doc;
        e = row_doc(res, i, 1, &doc);
        if (e == 0)
            json_array_append_new(items, doc);
    }
    PQclear(res);
    if (e < 0) {
        json_decref(items);
        return e;
    }
    *ret_items = items;
    if (ret_revision)
        *ret_revision = rev;
    return 0;
}

static int pg_list(void *impl, const char *const *kinds, size_t n_kinds, json_t **ret_items, int64_t *ret_revision)
{
    _cleanup_free_ char *array = kinds_array(kinds, n_kinds);
    if (!array)
        return -ENOMEM;
    const char *params[] = {array};
    PGresult *res = NULL;
    int e = read_query(impl, 0, Q_LIST, params, &res);
    return e < 0 ? e : list_result(res, ret_items, ret_revision);
}

static int pg_list_range(void *impl, const char *kind, const char *from, const char *to, json_t **ret_items,
                         int64_t *ret_revision)
{
    const char *params[] = {kind, from, to};
    PGresult *res = NULL;
    int e = read_query(impl, 0, Q_LIST_RANGE, params, &res);
    return e < 0 ? e : list_result(res, ret_items, ret_revision);
}

/* The changes after AFTER of the N_KINDS KINDS (0: every kind), oldest
 * first, at most MAX; -ESTALE when AFTER is older than the kept history or
 * newer than the database's head, or when EPOCH (not 0) is not the epoch of
 * the database they are read from (the database was reset: list again). */
static int pg_changes_since(void *impl, uint64_t epoch, const char *const *kinds, size_t n_kinds, int64_t after,
                            size_t max, json_t **ret_events)
{
    _cleanup_free_ char *array = n_kinds > 0 ? kinds_array(kinds, n_kinds) : NULL;
    if (n_kinds > 0 && !array)
        return -ENOMEM;
    char after_s[24], max_s[24];
    snprintf(after_s, sizeof(after_s), "%lld", (long long)after);
    snprintf(max_s, sizeof(max_s), "%zu", max);
    const char *params[] = {after_s, max_s, array};
    PGresult *res = NULL;
    int e = read_query(impl, epoch, Q_CHANGES, params, &res);
    if (e < 0)
        return e;
    int n = PQntuples(res);
    if (n > 0 && ((!PQgetisnull(res, 0, 0) && after + 1 < row_int(res, 0, 0)) || after > row_int(res, 0, 1))) {
        PQclear(res);
        return -ESTALE;
    }
    json_t *events = json_array();
    for (int i = 0; e == 0 && i < n; i++) {
        if (PQgetisnull(res, i, 2))
            continue;
        int type = (int)row_int(res, i, 3);
        json_t *doc;
        e = type < STORE_EVENT_ADDED || type > STORE_EVENT_DELETED ? -EIO : row_doc(res, i, 4, &doc);
        if (e == 0)
            json_array_append_new(events, json_pack("{s:s, s:I, s:o}", "type", store_event_type_name(type),
                                                    "revision", (json_int_t)row_int(res, i, 2), "object", doc));
    }
    PQclear(res);
    if (e < 0) {
        json_decref(events);
        return e;
    }
    *ret_events = events;
    return 0;
}

static int64_t pg_revision(void *impl)
{
    pg_store *s = impl;
    return atomic_load(&s->revision);
}

static uint64_t pg_epoch(void *impl)
{
    pg_store *s = impl;
    return atomic_load(&s->epoch);
}

/* Raises the known revision to REV (never lowers it: a reader of another
 * connection may be behind). */
static void revision_raise(pg_store *s, int64_t rev)
{
    int64_t cur = atomic_load(&s->revision);
    while (cur < rev && !atomic_compare_exchange_weak(&s->revision, &cur, rev))
        ;
}

/* A 64-bit mix (splitmix64's finaliser). */
static uint64_t mix64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Reads the head revision and epoch on C (*RET_EPOCH, may be NULL). When
 * the epoch changed (the database was reset or replaced), the revision
 * follows the new database down. */
static int refresh_head(pg_store *s, PGconn *c, uint64_t *ret_epoch)
{
    PGresult *res = NULL;
    int e = run(c, Q_HEAD, NULL, &res);
    if (e < 0)
        return e;
    if (PQntuples(res) != 1) {
        PQclear(res);
        return -EIO;
    }
    int64_t rev = row_int(res, 0, 0);
    /* the schema's id alone survives a dump and restore: the database's identity goes in too */
    uint64_t epoch = mix64(strtoull(PQgetvalue(res, 0, 1), NULL, 16) ^
                           mix64(strtoull(PQgetvalue(res, 0, 2), NULL, 10) ^ mix64(strtoull(PQgetvalue(res, 0, 3), NULL, 10))));
    PQclear(res);
    epoch = epoch ?: 1;
    uint64_t old = atomic_load(&s->epoch);
    if (old != 0 && old != epoch)
        atomic_store(&s->revision, rev);
    else
        revision_raise(s, rev);
    /* after the revision: who sees the new epoch sees its revision */
    old = atomic_exchange(&s->epoch, epoch);
    if (old != 0 && old != epoch) /* logged once per change: one thread exchanges the old one */
        log_fields(LOG_LEVEL_WARN, "the PostgreSQL store was reset or replaced (a new epoch): watchers list again",
                   NULL);
    if (ret_epoch)
        *ret_epoch = epoch;
    return 0;
}

/* ---- the listener: NOTIFY and the fallback poll move store_revision() ---- */

/* Waits up to MS for FD (when >= 0) to be readable or the store to stop:
 * true when stopping. */
static bool listener_wait(pg_store *s, int fd, int ms)
{
    struct pollfd p[2] = {{.fd = s->stop_fd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
    poll(p, fd >= 0 ? 2 : 1, ms);
    return p[0].revents & POLLIN;
}

static void *listener_main(void *arg)
{
    pg_store *s = arg;
    PGconn *c = NULL;
    bool lost = false; /* logged once per outage (the listener notices first) */
    for (;;) {
        if (!c || PQstatus(c) != CONNECTION_OK) {
            if (c && !lost) {
                log_fields(LOG_LEVEL_WARN, "store: lost the connection to PostgreSQL; reconnecting", NULL);
                lost = true;
            }
            PQfinish(c);
            c = NULL;
            if (connect_db(s, LOG_LEVEL_DEBUG, &c, NULL) < 0 || exec_simple(c, "LISTEN " PG_CHANNEL) < 0) {
                PQfinish(c);
                c = NULL;
                if (listener_wait(s, -1, PG_POLL_MS))
                    break;
                continue;
            }
            if (lost)
                log_fields(LOG_LEVEL_INFO, "store: connected to PostgreSQL again", NULL);
            lost = false;
            atomic_store(&s->unreachable, false);
        }
        /* after (re)connecting, after each wake-up and each poll: what is the head now? */
        refresh_head(s, c, NULL);
        if (listener_wait(s, PQsocket(c), PG_POLL_MS))
            break;
        if (!PQconsumeInput(c))
            continue; /* broken: reconnect above */
        PGnotify *n;
        while ((n = PQnotifies(c)))
            PQfreemem(n);
    }
    PQfinish(c);
    return NULL;
}

/* ---- the writer ---- */

/* Reads the current row (doc, rv, lookup key) inside the writer's transaction. */
static int writer_get(PGconn *c, const char *kind, const char *name, json_t **ret_doc, int64_t *ret_rv,
                      char **ret_lookup)
{
    const char *params[] = {kind, name};
    PGresult *res = NULL;
    int e = run(c, Q_W_GET, params, &res);
    if (e < 0)
        return e;
    if (PQntuples(res) == 0)
        e = -ENOENT;
    else
        e = row_doc(res, 0, 0, ret_doc);
    if (e == 0) {
        *ret_rv = row_int(res, 0, 1);
        *ret_lookup = PQgetisnull(res, 0, 2) ? NULL : strdup(PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    return e;
}

/* Runs the writing statement Q; -ESTALE when it changed no row (the
 * compare-and-swap lost). */
static int write_row(PGconn *c, int q, const char *const *params)
{
    PGresult *res = NULL;
    int e = run(c, q, params, &res);
    if (e < 0)
        return e;
    e = strcmp(PQcmdTuples(res), "1") == 0 ? 0 : -ESTALE;
    PQclear(res);
    return e;
}

/* One writing statement (Q_W_INSERT, Q_W_UPDATE or Q_W_DELETE) and its
 * parameters (owned; NULL is SQL NULL). */
typedef struct pg_write {
    int q;
    char *params[7];
} pg_write;

static void pg_write_clear(pg_write *w)
{
    for (size_t i = 0; i < ELEMENTSOF(w->params); i++) {
        free(w->params[i]);
        w->params[i] = NULL;
    }
}

/* The statement that writes PLAN of OP (the row and its change; the
 * compare-and-swap is in it: the row must still be at the rv it was read
 * at), with LOOKUP_KEY (may be NULL). Takes PLAN's text. 0 or -ENOMEM. */
static int plan_statement(const store_op *op, store_plan *plan, const char *lookup_key, pg_write *ret)
{
    char rv_s[24], old_rv_s[24], type_s[4];
    snprintf(rv_s, sizeof(rv_s), "%lld", (long long)plan->rv);
    snprintf(old_rv_s, sizeof(old_rv_s), "%lld", (long long)plan->old_rv);
    snprintf(type_s, sizeof(type_s), "%d", (int)store_plan_event(plan));
    const char *p[7];
    size_t n;
    if (plan->write == STORE_PLAN_DELETE) {
        ret->q = Q_W_DELETE;
        n = 6;
        memcpy(p, (const char *[]){op->kind, op->name, old_rv_s, rv_s, type_s, NULL}, n * sizeof(*p));
    } else if (plan->write == STORE_PLAN_UPDATE) {
        ret->q = Q_W_UPDATE;
        n = 7;
        memcpy(p, (const char *[]){op->kind, op->name, rv_s, lookup_key, NULL, old_rv_s, type_s}, n * sizeof(*p));
    } else {
        ret->q = Q_W_INSERT;
        n = 6;
        memcpy(p, (const char *[]){op->kind, op->name, rv_s, lookup_key, NULL, type_s}, n * sizeof(*p));
    }
    size_t text_at = plan->write == STORE_PLAN_DELETE ? 5 : 4;
    int e = 0;
    for (size_t i = 0; i < ELEMENTSOF(ret->params); i++) {
        ret->params[i] = i == text_at ? TAKE_PTR(plan->text) : i < n && p[i] ? strdup(p[i]) : NULL;
        if (i < n && !ret->params[i] && (i == text_at || p[i]))
            e = -ENOMEM;
    }
    if (e < 0)
        pg_write_clear(ret);
    return e;
}

/* Applies one operation inside the open transaction; REV is advanced for
 * each change it makes. */
static int writer_apply_op(PGconn *c, store_op *op, int64_t *rev, const char *now)
{
    json_t *old = NULL, *linked = NULL;
    int64_t old_rv = 0, linked_rv;
    _cleanup_free_ char *old_lookup = NULL, *linked_lookup = NULL;
    int e = writer_get(c, op->kind, op->name, &old, &old_rv, &old_lookup);
    if (e < 0 && e != -ENOENT)
        return e;
    e = store_op_needs_link(op) ? writer_get(c, op->uid_kind, op->uid_name, &linked, &linked_rv, &linked_lookup) : 0;
    if (e < 0 && e != -ENOENT) {
        json_decref(old);
        return e;
    }
    store_plan plan;
    e = store_op_plan(op, old, old_rv, old_lookup, linked, rev, now, &plan);
    json_decref(linked);
    if (e < 0 || plan.write == STORE_PLAN_NOTHING)
        return e;
    pg_write w;
    e = plan_statement(op, &plan, op->lookup_key ? op->lookup_key : old_lookup, &w);
    if (e == 0) {
        e = write_row(c, w.q, (const char *const *)w.params);
        pg_write_clear(&w);
    }
    if (e < 0) {
        store_plan_clear(&plan);
        return e;
    }
    store_plan_done(op, &plan);
    return 0;
}

typedef struct apply_ctx {
    PGconn *c;
    int64_t *rev;
    const char *now;
    store_view view; /* guards read through it (writer_view_list) */
} apply_ctx;

static int apply_op(store_op *op, void *ctx)
{
    apply_ctx *a = ctx;
    return writer_apply_op(a->c, op, a->rev, a->now);
}

/* A guard's store_view_list(): KIND's documents read on the writer's
 * connection inside its transaction. It holds the revision lock, so the
 * writers of every process that came before have committed, and this
 * statement's snapshot (READ COMMITTED: taken now) sees their writes. */
static int writer_view_list(store_view *view, const char *kind, json_t **ret_items)
{
    apply_ctx *a = (apply_ctx *)((char *)view - offsetof(apply_ctx, view));
    _cleanup_free_ char *array = kinds_array(&kind, 1);
    if (!array)
        return -ENOMEM;
    PGresult *res = NULL;
    int e = run(a->c, Q_LIST, (const char *const[]){array}, &res);
    return e < 0 ? e : list_result(res, ret_items, NULL);
}

/* Runs one transaction inside the savepoint "txn" (open); on failure rolls
 * it back alone. Leaves a fresh savepoint open for the next. Returns
 * -ECONNRESET when the connection broke (the batch must be retried), else 0
 * (TXN's own error is in txn->error). */
static int writer_run_txn(PGconn *c, store_txn *txn, int64_t *rev, const char *now)
{
    int64_t start = *rev;
    txn->error = 0;
    if (txn->fence_lease) {
        char token[24];
        snprintf(token, sizeof(token), "%lld", (long long)txn->fence_token);
        PGresult *res = NULL;
        txn->error = run(c, Q_W_FENCE, (const char *const[]){txn->fence_lease, token}, &res);
        if (txn->error == 0) {
            txn->error = PQntuples(res) == 1 ? 0 : -ENOLCK;
            PQclear(res);
        }
    }
    apply_ctx ctx = {c, rev, now, {.list = writer_view_list}};
    store_txn_apply(txn, apply_op, &ctx, &ctx.view);
    if (txn->error == -ECONNRESET)
        return -ECONNRESET;
    if (txn->error < 0) {
        store_txn_clear(txn);
        *rev = start;
        /* undone; the savepoint stays, fresh */
        return exec_simple(c, "ROLLBACK TO SAVEPOINT txn") < 0 ? -ECONNRESET : 0;
    }
    /* one round trip: kept, and a new savepoint for the next */
    return exec_simple(c, "RELEASE SAVEPOINT txn; SAVEPOINT txn") < 0 ? -ECONNRESET : 0;
}

/* Resets BATCH's results before it is run (again). */
static void batch_reset(store_txn *batch)
{
    for (store_txn *t = batch; t; t = t->next) {
        store_txn_clear(t);
        t->error = 0;
        t->failed_op = 0;
    }
}

typedef enum commit_outcome {
    COMMIT_DONE,     /* committed (or failed as a whole with an error set in each txn) */
    COMMIT_RETRY,    /* nothing was committed: run the batch again on a new connection */
    COMMIT_UNKNOWN,  /* the server could not tell yet */
} commit_outcome;

/* ---- the writer's fast path: a batch in three round trips ----
 *
 * Under the revision lock no other writer runs, so the batch's rows can be
 * read at once, every transaction planned here against them (a row as the
 * batch's earlier transactions left it), and the writes sent together in
 * libpq's pipeline mode: BEGIN, the lock and the rows; the writes and the
 * new head; COMMIT. A transaction whose plan fails (-EEXIST, -ESTALE…) is
 * undone here alone. Anything the database refuses (a lookup key taken, a
 * compare-and-swap that lost) rolls the batch back and it runs again on
 * the savepoint path (writer_try_batch), which tells each transaction its
 * own error. Batches with a fence, a guard or a uid link take that path
 * directly. */

/* A row of the batch as its earlier transactions left it. */
typedef struct pg_row {
    const char *kind, *name; /* borrowed from an op */
    json_t *doc;             /* NULL when absent */
    int64_t rv;
    char *lookup;
} pg_row;

/* What one planned write replaced in its row, to undo a failed transaction. */
typedef struct pg_undo {
    pg_row *row;
    json_t *doc;
    int64_t rv;
    char *lookup;
} pg_undo;

static bool fast_path_suits(const store_txn *batch)
{
    for (const store_txn *t = batch; t; t = t->next) {
        if (t->fence_lease || t->guard)
            return false;
        for (size_t i = 0; i < t->n_ops; i++)
            if (t->ops[i].uid_kind)
                return false;
    }
    return true;
}

static pg_row *row_find(pg_row *rows, size_t n, const char *kind, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].kind, kind) == 0 && strcmp(rows[i].name, name) == 0)
            return &rows[i];
    return NULL;
}

/* Reads the results of the pipeline's commands up to its sync into RES (N
 * of them, one per command; the rest cleared). 0, -ECONNRESET when the
 * connection broke, or the first failing command's errno. */
static int pipeline_results(PGconn *c, PGresult **res, int n)
{
    int got = 0, e = 0;
    for (;;) {
        PGresult *r = PQgetResult(c);
        if (!r) {
            if (PQstatus(c) != CONNECTION_OK) {
                e = -ECONNRESET;
                break;
            }
            continue; /* the end of one command's results */
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        if (e == 0 && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
            e = st == PGRES_PIPELINE_ABORTED ? -EIO : result_errno(c, r);
        if (got < n)
            res[got++] = r;
        else
            PQclear(r);
    }
    if (e == 0 && got < n)
        e = -ECONNRESET;
    return e;
}

static void results_clear(PGresult **res, int n)
{
    for (int i = 0; i < n; i++) {
        PQclear(res[i]);
        res[i] = NULL;
    }
}

/* Sends prepared statement Q in pipeline mode: 0 or -ECONNRESET. */
static int pipeline_send(PGconn *c, int q, const char *const *params)
{
    char name[8];
    snprintf(name, sizeof(name), "q%d", q);
    return PQsendQueryPrepared(c, name, queries[q].n_params, params, NULL, NULL, 0) ? 0 : -ECONNRESET;
}

/* Round trip one: BEGIN, the lock (the head and XID) and the N_ROWS rows'
 * stored values. 0 or a negative errno. */
static int fast_read(PGconn *c, pg_row *rows, size_t n_rows, int64_t *rev, char xid[24])
{
    const char **kinds = calloc(n_rows, sizeof(*kinds)), **names = calloc(n_rows, sizeof(*names));
    for (size_t i = 0; kinds && names && i < n_rows; i++) {
        kinds[i] = rows[i].kind;
        names[i] = rows[i].name;
    }
    _cleanup_free_ char *kind_array = kinds ? kinds_array(kinds, n_rows) : NULL;
    _cleanup_free_ char *name_array = names ? kinds_array(names, n_rows) : NULL;
    free(kinds);
    free(names);
    if (!kind_array || !name_array)
        return -ENOMEM;
    PGresult *res[3] = {0};
    int e = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ? 0 : -ECONNRESET;
    if (e == 0)
        e = pipeline_send(c, Q_W_LOCK, NULL);
    if (e == 0)
        e = pipeline_send(c, Q_W_GET_MANY, (const char *const[]){kind_array, name_array});
    if (e == 0)
        e = PQpipelineSync(c) ? 0 : -ECONNRESET;
    if (e == 0)
        e = pipeline_results(c, res, 3);
    if (e == 0) {
        *rev = row_int(res[1], 0, 0);
        snprintf(xid, 24, "%s", PQgetvalue(res[1], 0, 1));
    }
    for (int i = 0; e == 0 && i < PQntuples(res[2]); i++) {
        pg_row *row = row_find(rows, n_rows, PQgetvalue(res[2], i, 0), PQgetvalue(res[2], i, 1));
        if (!row)
            continue;
        e = row_doc(res[2], i, 2, &row->doc);
        row->rv = row_int(res[2], i, 3);
        if (e == 0 && !PQgetisnull(res[2], i, 4) && !(row->lookup = strdup(PQgetvalue(res[2], i, 4))))
            e = -ENOMEM;
    }
    results_clear(res, 3);
    return e;
}

/* Plans TXN's ops against ROWS, appending its writes to WRITES (*N_WRITES)
 * and what they replaced to UNDO (*N_UNDO); REV advances. TXN's own
 * failure is in txn->error; returns -ENOMEM only. */
static void fast_plan_txn(store_txn *txn, pg_row *rows, size_t n_rows, int64_t *rev, const char *now,
                          pg_write *writes, size_t *n_writes, pg_undo *undo, size_t *n_undo)
{
    txn->error = 0;
    for (size_t i = 0; txn->error == 0 && i < txn->n_ops; i++) {
        store_op *op = &txn->ops[i];
        pg_row *row = row_find(rows, n_rows, op->kind, op->name);
        json_t *old = row->doc ? json_deep_copy(row->doc) : NULL;
        store_plan plan;
        int e = row->doc && !old ? -ENOMEM : store_op_plan(op, old, row->rv, row->lookup, NULL, rev, now, &plan);
        if (e == 0 && plan.write != STORE_PLAN_NOTHING) {
            const char *lookup_key = op->lookup_key ? op->lookup_key : row->lookup;
            char *new_lookup = plan.write != STORE_PLAN_DELETE && lookup_key ? strdup(lookup_key) : NULL;
            int64_t new_rv = plan.rv;
            bool deleted = plan.write == STORE_PLAN_DELETE;
            e = (lookup_key && !deleted && !new_lookup) ? -ENOMEM
                                                         : plan_statement(op, &plan, lookup_key, &writes[*n_writes]);
            if (e < 0) {
                free(new_lookup);
                store_plan_clear(&plan);
            } else {
                (*n_writes)++;
                store_plan_done(op, &plan);
                undo[(*n_undo)++] = (pg_undo){.row = row, .doc = row->doc, .rv = row->rv, .lookup = row->lookup};
                row->doc = deleted ? NULL : json_incref(op->result);
                row->rv = new_rv;
                row->lookup = new_lookup;
            }
        }
        if (e < 0) {
            txn->error = e;
            txn->failed_op = i;
        }
    }
}

/* Runs BATCH on the fast path: COMMIT_DONE, COMMIT_UNKNOWN (COMMIT's
 * answer was lost: XID names the transaction), or COMMIT_RETRY when
 * nothing was committed (the caller runs the savepoint path). */
static commit_outcome writer_fast_batch(pg_store *s, store_txn *batch, int64_t *rev, char xid[24])
{
    PGconn *c = s->writer_conn->c;
    xid[0] = 0;
    size_t n_ops = 0, n_rows = 0, n_writes = 0, n_undo = 0;
    for (store_txn *t = batch; t; t = t->next)
        n_ops += t->n_ops;
    pg_row *rows = calloc(n_ops + 1, sizeof(*rows));
    pg_write *writes = calloc(n_ops + 1, sizeof(*writes));
    pg_undo *undo = calloc(n_ops + 1, sizeof(*undo));
    int e = rows && writes && undo ? 0 : -ENOMEM;
    for (store_txn *t = batch; e == 0 && t; t = t->next)
        for (size_t i = 0; i < t->n_ops; i++)
            if (!row_find(rows, n_rows, t->ops[i].kind, t->ops[i].name))
                rows[n_rows++] = (pg_row){.kind = t->ops[i].kind, .name = t->ops[i].name};
    if (e == 0 && PQstatus(c) == CONNECTION_OK && PQenterPipelineMode(c)) {
        char now[40];
        time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
        e = fast_read(c, rows, n_rows, rev, xid);
        int64_t start = *rev;
        for (store_txn *t = batch; e == 0 && t; t = t->next) {
            int64_t txn_start = *rev;
            size_t writes_at = n_writes, undo_at = n_undo;
            fast_plan_txn(t, rows, n_rows, rev, now, writes, &n_writes, undo, &n_undo);
            if (t->error == -ENOMEM)
                e = -ENOMEM;
            for (size_t u = n_undo; u > undo_at; u--) { /* kept: drop what it replaced; failed: put it back */
                pg_undo *x = &undo[u - 1];
                if (t->error < 0) {
                    json_decref(x->row->doc);
                    free(x->row->lookup);
                    *x->row = (pg_row){.kind = x->row->kind, .name = x->row->name, .doc = x->doc, .rv = x->rv,
                                       .lookup = x->lookup};
                } else {
                    json_decref(x->doc);
                    free(x->lookup);
                }
            }
            n_undo = undo_at;
            if (t->error < 0) {
                while (n_writes > writes_at)
                    pg_write_clear(&writes[--n_writes]);
                store_txn_clear(t);
                *rev = txn_start;
            }
        }
        /* round trip two: the writes and the new head (each write must change its one row) */
        int n_res = (int)n_writes + (*rev > start ? 1 : 0);
        PGresult **res = e == 0 ? calloc(n_res + 1, sizeof(*res)) : NULL;
        if (e == 0 && !res)
            e = -ENOMEM;
        char rv_s[24];
        snprintf(rv_s, sizeof(rv_s), "%lld", (long long)*rev);
        for (size_t i = 0; e == 0 && i < n_writes; i++)
            e = pipeline_send(c, writes[i].q, (const char *const *)writes[i].params);
        if (e == 0 && *rev > start)
            e = pipeline_send(c, Q_W_ADVANCE, (const char *const[]){rv_s});
        if (e == 0)
            e = PQpipelineSync(c) ? 0 : -ECONNRESET;
        if (e == 0)
            e = pipeline_results(c, res, n_res);
        for (size_t i = 0; e == 0 && i < n_writes; i++)
            if (strcmp(PQcmdTuples(res[i]), "1") != 0)
                e = -ESTALE;
        if (res)
            results_clear(res, n_res);
        free(res);
    } else if (e == 0)
        e = -ECONNRESET;
    for (size_t i = 0; i < n_rows; i++) {
        json_decref(rows[i].doc);
        free(rows[i].lookup);
    }
    for (size_t i = 0; i < n_writes; i++)
        pg_write_clear(&writes[i]);
    free(rows);
    free(writes);
    free(undo);
    if (PQpipelineStatus(c) != PQ_PIPELINE_OFF && !PQexitPipelineMode(c))
        e = e < 0 ? e : -ECONNRESET; /* results left unread: only a broken connection leaves them */
    if (e < 0) {
        if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
            exec_simple(c, "ROLLBACK");
        return COMMIT_RETRY;
    }
    /* round trip three */
    e = exec_simple(c, "COMMIT");
    if (e == -ECONNRESET)
        return COMMIT_UNKNOWN;
    if (e < 0) /* COMMIT answered with an error: rolled back; the savepoint path tells each its own */
        return COMMIT_RETRY;
    return COMMIT_DONE;
}

static commit_outcome writer_try_batch(pg_store *s, store_txn *batch, int64_t *rev, char xid[24]);

/* Runs BATCH: on the fast path when it suits, else (or when the database
 * refused something there) on the savepoint path. */
static commit_outcome writer_run_batch(pg_store *s, store_txn *batch, int64_t *rev, char xid[24])
{
    if (fast_path_suits(batch)) {
        commit_outcome o = writer_fast_batch(s, batch, rev, xid);
        if (o != COMMIT_RETRY || PQstatus(s->writer_conn->c) != CONNECTION_OK)
            return o;
        batch_reset(batch);
    }
    return writer_try_batch(s, batch, rev, xid);
}

/* Asks the server whether transaction XID committed, after COMMIT's answer
 * was lost with the connection. */
static commit_outcome commit_status(pg_store *s, const char *xid)
{
    if (reconnect(s, s->writer_conn) < 0)
        return COMMIT_UNKNOWN;
    PGresult *res = NULL;
    if (run(s->writer_conn->c, Q_TXID_STATUS, (const char *const[]){xid}, &res) < 0)
        return COMMIT_UNKNOWN;
    const char *status = PQgetisnull(res, 0, 0) ? "" : PQgetvalue(res, 0, 0);
    commit_outcome o = strcmp(status, "committed") == 0 ? COMMIT_DONE
                       : strcmp(status, "aborted") == 0 ? COMMIT_RETRY
                                                        : COMMIT_UNKNOWN;
    PQclear(res);
    return o;
}

/* Runs BATCH as one PostgreSQL transaction. On COMMIT_DONE *REV is the new
 * head; XID (24 bytes) names the transaction for commit_status(). */
static commit_outcome writer_try_batch(pg_store *s, store_txn *batch, int64_t *rev, char xid[24])
{
    PGconn *c = s->writer_conn->c;
    xid[0] = 0;
    if (PQstatus(c) != CONNECTION_OK)
        return COMMIT_RETRY;
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    PGresult *res = NULL;
    int e = exec_simple(c, "BEGIN");
    if (e == 0)
        e = run(c, Q_W_LOCK, NULL, &res); /* serialises the writers of every process */
    if (e == 0 && exec_simple(c, "SAVEPOINT txn") < 0) {
        PQclear(res);
        e = -ECONNRESET;
    }
    if (e == 0) {
        *rev = row_int(res, 0, 0);
        snprintf(xid, 24, "%s", PQgetvalue(res, 0, 1));
        PQclear(res);
    }
    int64_t start = *rev;
    for (store_txn *t = batch; e == 0 && t; t = t->next)
        e = writer_run_txn(c, t, rev, now);
    if (e == 0 && *rev > start) {
        char rv_s[24];
        snprintf(rv_s, sizeof(rv_s), "%lld", (long long)*rev);
        e = run(c, Q_W_ADVANCE, (const char *const[]){rv_s}, &res);
        if (e == 0)
            PQclear(res);
    }
    if (e == -ECONNRESET)
        return COMMIT_RETRY; /* COMMIT was never sent: nothing of it is written */
    if (e < 0) {
        /* not the connection: the database refused (full disk, permissions…) */
        exec_simple(c, "ROLLBACK");
        log_fields(LOG_LEVEL_ERROR, "store commit failed; the batch is refused", "error", strerror(-e), NULL);
        for (store_txn *t = batch; t; t = t->next)
            if (t->error == 0) {
                store_txn_clear(t);
                t->error = e;
            }
        return COMMIT_DONE;
    }
    e = exec_simple(c, "COMMIT");
    if (e == -ECONNRESET)
        return COMMIT_UNKNOWN;
    if (e < 0) { /* COMMIT answered with an error: rolled back */
        for (store_txn *t = batch; t; t = t->next)
            if (t->error == 0) {
                store_txn_clear(t);
                t->error = e;
            }
        *rev = start;
    }
    return COMMIT_DONE;
}

/* Commits BATCH (a list linked through ->next), waiting out a lost
 * connection for up to PG_RETRY_NS (PG_DOWN_RETRY_NS while the store is
 * known unreachable: the queue behind a long outage is answered quickly);
 * calls each txn's done. A txn is reported done only when its
 * COMMIT is known to have succeeded; when that cannot be learned in time it
 * fails with -EIO, when the database stays away with -ECONNREFUSED. */
static void writer_commit_batch(pg_store *s, store_txn *batch)
{
    uint64_t deadline = time_mono_ns() + (atomic_load(&s->unreachable) ? PG_DOWN_RETRY_NS : PG_RETRY_NS);
    int64_t rev = 0;
    char xid[24];
    unsigned backoff_ms = 50;
    commit_outcome o = writer_run_batch(s, batch, &rev, xid);
    while (o != COMMIT_DONE && time_mono_ns() < deadline) {
        if (o == COMMIT_UNKNOWN && xid[0])
            o = commit_status(s, xid);
        if (o == COMMIT_RETRY) {
            if (PQstatus(s->writer_conn->c) == CONNECTION_OK || reconnect(s, s->writer_conn) == 0) {
                batch_reset(batch);
                o = writer_run_batch(s, batch, &rev, xid);
                if (o == COMMIT_DONE)
                    break;
            }
        }
        if (o == COMMIT_DONE)
            break;
        backoff(&backoff_ms);
    }
    if (o != COMMIT_DONE) {
        atomic_store(&s->unreachable, true);
        int e = o == COMMIT_UNKNOWN && xid[0] ? -EIO : -ECONNREFUSED;
        log_fields(LOG_LEVEL_ERROR, "store commit failed: PostgreSQL unreachable; the batch is refused", "error",
                   strerror(-e), NULL);
        for (store_txn *t = batch; t; t = t->next) {
            store_txn_clear(t);
            t->error = e;
            t->failed_op = 0;
        }
    } else {
        revision_raise(s, rev);
        if (rev < s->last_trim) /* a new database (epoch) */
            s->last_trim = rev;
        if (rev - s->last_trim >= 1000) {
            /* keep a bounded history for watchers; the newest row always stays */
            char keep[24];
            snprintf(keep, sizeof(keep), "%lld", (long long)(rev - PG_CHANGES_KEEP));
            PGresult *res = NULL;
            if (run(s->writer_conn->c, Q_W_TRIM, (const char *const[]){keep}, &res) == 0)
                PQclear(res);
            s->last_trim = rev;
        }
    }
    store_batch_done(batch);
}

static void *writer_main(void *arg)
{
    pg_store *s = arg;
    store_txn *batch;
    while ((batch = store_queue_take(&s->queue, PG_BATCH_MAX)))
        writer_commit_batch(s, batch);
    return NULL;
}

static void pg_write_async(void *impl, store_txn *txn)
{
    pg_store *s = impl;
    store_queue_push(&s->queue, txn);
}

/* ---- schema ---- */

/* Creates the schema when the database has none (under an advisory lock:
 * replicas may start together) and checks its version. */
static int ensure_schema(PGconn *c)
{
    int e = exec_simple(c, "BEGIN; SELECT pg_advisory_xact_lock(7164096952711886196);"
                           "CREATE TABLE IF NOT EXISTS cloister_meta (key text PRIMARY KEY, value text NOT NULL)");
    PGresult *res = e == 0 ? PQexec(c, "SELECT value FROM cloister_meta WHERE key = 'schema_version'") : NULL;
    if (e == 0 && (!res || PQresultStatus(res) != PGRES_TUPLES_OK))
        e = result_errno(c, res);
    int version = e == 0 && PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    if (e == 0 && version == 0) {
        uint64_t epoch = 0;
        while (epoch == 0)
            if (random_bytes(&epoch, sizeof(epoch)) < 0)
                abort(); /* the kernel CSPRNG does not fail once the system is up */
        char sql[sizeof(schema_v1) + 200];
        snprintf(sql, sizeof(sql),
                 "%sINSERT INTO cloister_meta VALUES ('schema_version', '%d'), ('epoch', '%016llx')", schema_v1,
                 PG_SCHEMA_VERSION, (unsigned long long)epoch);
        e = exec_simple(c, sql);
        if (e == 0)
            log_fields(LOG_LEVEL_INFO, "created the store schema in PostgreSQL", NULL);
    } else if (e == 0 && version > PG_SCHEMA_VERSION) {
        log_error("store: the PostgreSQL schema is version %d, newer than this cloisterd knows (%d): upgrade "
                  "cloisterd",
                  version, PG_SCHEMA_VERSION);
        e = -EPROTO;
    }
    /* the counters came after version 1 and need no migration: a table of
     * short-lived windows, made where it is missing */
    if (e == 0)
        e = exec_simple(c, "CREATE TABLE IF NOT EXISTS counters (name text PRIMARY KEY, count bigint NOT NULL,"
                           " ends timestamptz NOT NULL)");
    if (e == 0)
        e = exec_simple(c, "COMMIT");
    else
        exec_simple(c, "ROLLBACK");
    return e;
}

static void pg_free(pg_store *s)
{
    for (store_pooled *pc = store_pool_destroy(&s->readers), *next; pc; pc = next) {
        next = pc->next;
        conn_free((pg_conn *)pc);
    }
    conn_free(s->writer_conn);
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    store_queue_destroy(&s->queue);
    if (s->url) {
        explicit_bzero(s->url, strlen(s->url));
        free(s->url);
    }
    free(s);
}

/* Connects to the database at "postgresql:" LOCATION, creates the schema
 * if needed and starts the writer and the listener. */
static int pg_open(const char *location, void **ret)
{
    pg_store *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    store_queue_init(&s->queue);
    store_pool_init(&s->readers);
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    size_t n = strlen("postgresql:") + strlen(location) + 1;
    s->url = malloc(n);
    if (!s->url || s->stop_fd < 0) {
        pg_free(s);
        return -ENOMEM;
    }
    snprintf(s->url, n, "postgresql:%s", location);
    s->writer_conn = calloc(1, sizeof(*s->writer_conn));
    int e = s->writer_conn ? connect_db(s, LOG_LEVEL_ERROR, &s->writer_conn->c, &s->writer_conn->epoch) : -ENOMEM;
    if (e == 0) {
        s->last_trim = atomic_load(&s->revision);
        if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
            e = -EAGAIN;
    }
    if (e == 0 && pthread_create(&s->listener, NULL, listener_main, s) != 0) {
        store_queue_stop(&s->queue);
        pthread_join(s->writer, NULL);
        e = -EAGAIN;
    }
    if (e < 0) {
        pg_free(s);
        return e;
    }
    *ret = s;
    return 0;
}

/* Drains the queue, stops the threads and closes every connection. */
static void pg_close(void *impl)
{
    pg_store *s = impl;
    store_queue_stop(&s->queue);
    pthread_join(s->writer, NULL);
    uint64_t one = 1;
    if (write(s->stop_fd, &one, sizeof(one)) != sizeof(one))
        abort(); /* an eventfd write of 1 cannot fail */
    pthread_join(s->listener, NULL);
    pg_free(s);
}

/* ---- leases ---- */

/* Runs the lease statement Q: the token it returned, or -ENOENT when it
 * matched no lease. */
static int lease_query(pg_store *s, int q, const char *const *params, int64_t *ret_token)
{
    PGresult *res = NULL;
    int e = read_query(s, 0, q, params, &res);
    if (e < 0)
        return e;
    if (PQntuples(res) == 1)
        *ret_token = row_int(res, 0, 0);
    else
        e = -ENOENT;
    PQclear(res);
    return e;
}

static int pg_lease_acquire(void *impl, const char *name, const char *holder, int64_t ttl_ms, int64_t *ret_token)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_ms);
    int e = lease_query(impl, Q_LEASE_ACQUIRE, (const char *const[]){name, holder, ttl}, ret_token);
    return e == -ENOENT ? -EBUSY : e;
}

static int pg_lease_renew(void *impl, const char *name, const char *holder, int64_t token, int64_t ttl_ms)
{
    char ttl[24], tok[24];
    int64_t t;
    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_ms);
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    int e = lease_query(impl, Q_LEASE_RENEW, (const char *const[]){name, holder, tok, ttl}, &t);
    return e == -ENOENT ? -ESTALE : e;
}

static int pg_lease_release(void *impl, const char *name, const char *holder, int64_t token)
{
    char tok[24];
    int64_t t;
    snprintf(tok, sizeof(tok), "%lld", (long long)token);
    int e = lease_query(impl, Q_LEASE_RELEASE, (const char *const[]){name, holder, tok}, &t);
    return e == -ENOENT ? -ESTALE : e;
}

/* ---- counters ---- */

/* Adds 1 to counter NAME in one atomic upsert; when SWEEP, first deletes
 * the windows that ended. */
static int pg_counter_add(void *impl, const char *name, int64_t window_ms, bool sweep, int64_t *ret_count,
                          int64_t *ret_left_ms)
{
    PGresult *res;
    int e = sweep ? read_query(impl, 0, Q_COUNTER_SWEEP, NULL, &res) : 0;
    if (sweep && e == 0)
        PQclear(res);
    if (e < 0)
        return e;
    char window[24];
    snprintf(window, sizeof(window), "%lld", (long long)window_ms);
    e = read_query(impl, 0, Q_COUNTER_ADD, (const char *const[]){name, window}, &res);
    if (e < 0)
        return e;
    if (PQntuples(res) == 1) {
        *ret_count = row_int(res, 0, 0);
        *ret_left_ms = row_int(res, 0, 1);
    } else
        e = -EIO;
    PQclear(res);
    return e;
}

#define PG_DRIVER(var, name)                                                                                    \
    const store_driver var = {                                                                                  \
        .scheme = name,                                                                                         \
        .open = pg_open,                                                                                        \
        .close = pg_close,                                                                                      \
        .get = pg_get,                                                                                          \
        .get_by_lookup = pg_get_by_lookup,                                                                      \
        .list = pg_list,                                                                                        \
        .list_range = pg_list_range,                                                                            \
        .write_async = pg_write_async,                                                                          \
        .changes_since = pg_changes_since,                                                                      \
        .revision = pg_revision,                                                                                \
        .epoch = pg_epoch,                                                                                      \
        .lease_acquire = pg_lease_acquire,                                                                      \
        .lease_renew = pg_lease_renew,                                                                          \
        .lease_release = pg_lease_release,                                                                      \
        .counter_add = pg_counter_add,                                                                          \
    }

/* both schemes libpq knows */
PG_DRIVER(store_postgres_driver, "postgres");
PG_DRIVER(store_postgresql_driver, "postgresql");
