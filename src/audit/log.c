#include "audit/log.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define BUSY_TIMEOUT_MS 5000

struct audit_log {
    sqlite3 *db;
    sqlite3_stmt *ins_entry, *ins_node, *get_node, *set_size, *read;
    merkle_frontier frontier;
};

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
    "  PRIMARY KEY (level, idx)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO meta (k, v) VALUES ('size', 0);";

static int sqlite_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
        return -EACCES;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return -EBADMSG;
    default:
        return -EIO;
    }
}

void audit_log_free(audit_log *l)
{
    if (!l)
        return;
    sqlite3_finalize(l->ins_entry);
    sqlite3_finalize(l->ins_node);
    sqlite3_finalize(l->get_node);
    sqlite3_finalize(l->set_size);
    sqlite3_finalize(l->read);
    sqlite3_close(l->db);
    free(l);
}

int audit_log_get_node(void *userdata, unsigned level, uint64_t index, merkle_hash out)
{
    audit_log *l = userdata;
    if (index > INT64_MAX)
        return -EINVAL;
    sqlite3_stmt *st = l->get_node;
    sqlite3_reset(st);
    sqlite3_bind_int(st, 1, (int)level);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)index);
    int rc = sqlite3_step(st);
    int r = 0;
    if (rc != SQLITE_ROW)
        r = rc == SQLITE_DONE ? -ENOENT : sqlite_errno(rc);
    else if (sqlite3_column_bytes(st, 0) != MERKLE_HASH_LEN)
        r = -EBADMSG;
    else
        memcpy(out, sqlite3_column_blob(st, 0), MERKLE_HASH_LEN);
    sqlite3_reset(st);
    return r;
}

int audit_log_open(const char *path, audit_log **ret)
{
    audit_log *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    int rc = sqlite3_open_v2(path, &l->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(l->db, BUSY_TIMEOUT_MS);
        rc = sqlite3_exec(l->db, schema, NULL, NULL, NULL);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(l->db, "INSERT INTO entries (idx, data) VALUES (?, ?)", -1, &l->ins_entry, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(l->db, "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", -1, &l->ins_node, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(l->db, "SELECT hash FROM nodes WHERE level = ? AND idx = ?", -1, &l->get_node, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(l->db, "UPDATE meta SET v = ? WHERE k = 'size'", -1, &l->set_size, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(l->db, "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", -1,
                                &l->read, NULL);
    if (rc != SQLITE_OK) {
        audit_log_free(l);
        return sqlite_errno(rc);
    }
    sqlite3_stmt *st;
    int64_t size = -1;
    if (sqlite3_prepare_v2(l->db, "SELECT v FROM meta WHERE k = 'size'", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            size = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    int r = size < 0 ? -EBADMSG : merkle_frontier_load((uint64_t)size, audit_log_get_node, l, &l->frontier);
    if (r < 0) {
        audit_log_free(l);
        return r == -ENOENT ? -EBADMSG : r;
    }
    *ret = l;
    return 0;
}

uint64_t audit_log_size(const audit_log *l)
{
    return l->frontier.size;
}

void audit_log_root(const audit_log *l, merkle_hash out)
{
    merkle_frontier_root(&l->frontier, out);
}

static int store_node(void *userdata, unsigned level, uint64_t index, const merkle_hash hash)
{
    audit_log *l = userdata;
    sqlite3_stmt *st = l->ins_node;
    sqlite3_reset(st);
    sqlite3_bind_int(st, 1, (int)level);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)index);
    sqlite3_bind_blob(st, 3, hash, MERKLE_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : sqlite_errno(rc);
}

/* Inserts one entry, its leaf hash and the nodes it completes into the open
 * transaction, advancing F. Leaf hashes live with the nodes, so proofs never
 * depend on the entries' text. */
static int append_one(audit_log *l, merkle_frontier *f, const char *text, size_t len)
{
    merkle_hash leaf;
    merkle_leaf_hash(text, len, leaf);
    sqlite3_stmt *st = l->ins_entry;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)f->size);
    sqlite3_bind_blob(st, 2, text, (int)len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlite_errno(rc);
    int r = store_node(l, 0, f->size, leaf);
    return r < 0 ? r : merkle_frontier_append(f, leaf, store_node, l);
}

int audit_log_append(audit_log *l, const char *const *entries, const size_t *lens, size_t n, uint64_t *ret_first)
{
    if (n == 0) {
        *ret_first = l->frontier.size;
        return 0;
    }
    merkle_frontier f = l->frontier;
    int rc = sqlite3_exec(l->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sqlite_errno(rc);
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++)
        r = lens[i] > INT32_MAX ? -E2BIG : append_one(l, &f, entries[i], lens[i]);
    if (r == 0) {
        sqlite3_reset(l->set_size);
        sqlite3_bind_int64(l->set_size, 1, (sqlite3_int64)f.size);
        rc = sqlite3_step(l->set_size);
        sqlite3_reset(l->set_size);
        r = rc == SQLITE_DONE ? 0 : sqlite_errno(rc);
    }
    if (r == 0) {
        rc = sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL);
        r = rc == SQLITE_OK ? 0 : sqlite_errno(rc);
    }
    if (r < 0) {
        sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
        return r;
    }
    *ret_first = l->frontier.size;
    l->frontier = f;
    return 0;
}

int audit_log_read(audit_log *l, uint64_t start, uint64_t end,
                   int (*cb)(void *userdata, uint64_t index, const char *text, size_t len), void *userdata)
{
    if (start > INT64_MAX || end > INT64_MAX)
        return -EINVAL;
    sqlite3_stmt *st = l->read;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)start);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)end);
    int r = 0, rc;
    uint64_t want = start;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t idx = (uint64_t)sqlite3_column_int64(st, 0);
        if (idx != want)
            break;
        const void *data = sqlite3_column_blob(st, 1);
        r = cb(userdata, idx, data ? data : "", (size_t)sqlite3_column_bytes(st, 1));
        if (r < 0)
            break;
        want++;
    }
    if (r == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
        r = sqlite_errno(rc);
    sqlite3_reset(st);
    return r;
}
