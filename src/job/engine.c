/* The job engine: the manifest, the typed load, the sealed query and the
 * encrypted result (see engine.h). */
#include "job/engine.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/strbuf.h"

#define NAME_MAX_LEN 63
#define PROGRESS_OPS 10000 /* VM instructions between two deadline checks */
#define RESULT_ROW_MAX (64 * 1024 * 1024)

struct job_engine {
    sqlite3 *db;
    sqlite3_stmt *query;
    job_limits limits;
    struct timespec deadline;
    bool timed_out, sealed, header_done, done;
    char *tables[JOB_INPUTS_MAX];
    size_t n_tables;
    char refused[256]; /* what the authorizer refused last */
    strbuf row;        /* the result row being handed out (secure) */
    size_t row_pos;
    uint64_t rows;
    char error[JOB_ERROR_MAX];
};

struct job_loader {
    job_engine *e;
    char *name;
    const job_column *columns;
    size_t n_columns;
    sqlite3_stmt *insert;
    csv_parser csv;
    uint64_t rows;
    size_t record_bytes;
    bool header_seen;
};

_printf_(2, 3) static int fail(job_engine *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->error, sizeof(e->error), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

_printf_(2, 3) static int manifest_fail(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(err, JOB_ERROR_MAX, "manifest: ");
    vsnprintf(err + n, JOB_ERROR_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* ---- the manifest ---- */

static void input_done(job_input *in)
{
    free(in->name);
    free(in->table);
    for (size_t i = 0; i < in->n_columns; i++)
        free(in->columns[i].name);
    free(in->columns);
    free(in->ciphertext);
    free(in->file_key);
}

void job_manifest_free(job_manifest *m)
{
    if (!m)
        return;
    free(m->query);
    for (size_t i = 0; i < m->n_inputs; i++)
        input_done(&m->inputs[i]);
    free(m->inputs);
    free(m->recipients);
    free(m->output);
    free(m);
}

/* Whether OBJ has only members named in ALLOWED (NULL-terminated); the first other one in *RET_BAD. */
static bool only_members(const json_t *obj, const char *const *allowed, const char **ret_bad)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], k) != 0)
            i++;
        if (!allowed[i]) {
            *ret_bad = k;
            return false;
        }
    }
    return true;
}

/* A copy of the string member KEY of OBJ, 1 to MAX bytes; NULL when it is not one. */
static char *string_member(const json_t *obj, const char *key, size_t max)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v))
        return NULL;
    return strdup(json_string_value(v));
}

/* The integer member KEY of OBJ in [1, MAX], or DEF when absent; -1 when out of range or not an integer. */
static int64_t limit_member(const json_t *obj, const char *key, int64_t def, int64_t max)
{
    const json_t *v = json_object_get(obj, key);
    if (!v)
        return def;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max)
        return -1;
    return json_integer_value(v);
}

static int parse_input(const json_t *j, size_t idx, job_input *in, char *err)
{
    static const char *const fields[] = {"name", "table", "schema", "ciphertext", "fileKey", "sha256", NULL};
    const char *bad;
    if (!json_is_object(j))
        return manifest_fail(err, "inputs[%zu] must be an object", idx);
    if (!only_members(j, fields, &bad))
        return manifest_fail(err, "inputs[%zu]: unknown field \"%.64s\"", idx, bad);
    if (!(in->name = string_member(j, "name", NAME_MAX_LEN)))
        return manifest_fail(err, "inputs[%zu].name must be a string of 1 to %d bytes", idx, NAME_MAX_LEN);
    if (!(in->table = string_member(j, "table", NAME_MAX_LEN)) || strncasecmp(in->table, "sqlite_", 7) == 0)
        return manifest_fail(err, "inputs[%zu].table must be a string of 1 to %d bytes, not starting with sqlite_",
                             idx, NAME_MAX_LEN);
    if (!(in->ciphertext = string_member(j, "ciphertext", PATH_MAX)) ||
        !(in->file_key = string_member(j, "fileKey", PATH_MAX)))
        return manifest_fail(err, "inputs[%zu]: ciphertext and fileKey must be paths", idx);
    const char *hex = json_string_value(json_object_get(j, "sha256"));
    if (!hex || strlen(hex) != 64 || hex_decode(hex, 64, in->sha256, sizeof(in->sha256)) < 0)
        return manifest_fail(err, "inputs[%zu].sha256 must be 64 hex digits", idx);
    const json_t *schema = json_object_get(j, "schema");
    if (!json_is_array(schema) || json_array_size(schema) == 0 || json_array_size(schema) > CSV_COLUMNS_MAX)
        return manifest_fail(err, "inputs[%zu].schema must be a list of 1 to %d columns", idx, CSV_COLUMNS_MAX);
    in->columns = calloc(json_array_size(schema), sizeof(*in->columns));
    if (!in->columns)
        return -ENOMEM;
    static const char *const col_fields[] = {"name", "type", NULL};
    for (size_t i = 0; i < json_array_size(schema); i++) {
        const json_t *c = json_array_get(schema, i);
        if (!json_is_object(c) || !only_members(c, col_fields, &bad))
            return manifest_fail(err, "inputs[%zu].schema[%zu] must be {\"name\", \"type\"}", idx, i);
        const char *type = json_string_value(json_object_get(c, "type"));
        int t = type ? csv_type_from_name(type) : -EINVAL;
        in->n_columns = i + 1;
        if (!(in->columns[i].name = string_member(c, "name", NAME_MAX_LEN)) || t < 0)
            return manifest_fail(err, "inputs[%zu].schema[%zu]: a name of 1 to %d bytes and a type integer, "
                                 "real or text", idx, i, NAME_MAX_LEN);
        in->columns[i].type = (csv_type)t;
        for (size_t k = 0; k < i; k++)
            if (strcasecmp(in->columns[k].name, in->columns[i].name) == 0)
                return manifest_fail(err, "inputs[%zu].schema: column %s twice", idx, in->columns[i].name);
    }
    return 0;
}

int job_manifest_parse(const char *text, size_t len, job_manifest **ret, char err[static JOB_ERROR_MAX])
{
    static const char *const fields[] = {"query", "inputs", "recipients", "output", "limits", NULL};
    static const char *const limit_fields[] = {"memoryMiB", "seconds", "rows", NULL};
    json_error_t jerr;
    const char *bad;
    if (len > JOB_MANIFEST_MAX)
        return manifest_fail(err, "larger than %d bytes", JOB_MANIFEST_MAX);
    _cleanup_(json_decrefp) json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        return manifest_fail(err, "not JSON: %s (line %d)", jerr.text, jerr.line);
    if (!json_is_object(j))
        return manifest_fail(err, "must be a JSON object");
    if (!only_members(j, fields, &bad))
        return manifest_fail(err, "unknown field \"%.64s\"", bad);
    job_manifest *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    int r = 0;
    if (!(m->query = string_member(j, "query", JOB_QUERY_MAX)))
        r = manifest_fail(err, "query must be a string of 1 to %d bytes", JOB_QUERY_MAX);
    if (r == 0 && !(m->output = string_member(j, "output", PATH_MAX)))
        r = manifest_fail(err, "output must be a path");
    const json_t *inputs = json_object_get(j, "inputs"), *recipients = json_object_get(j, "recipients");
    if (r == 0 && (!json_is_array(inputs) || json_array_size(inputs) == 0 || json_array_size(inputs) > JOB_INPUTS_MAX))
        r = manifest_fail(err, "inputs must be a list of 1 to %d inputs", JOB_INPUTS_MAX);
    if (r == 0 && !(m->inputs = calloc(json_array_size(inputs), sizeof(*m->inputs))))
        r = -ENOMEM;
    for (size_t i = 0; r == 0 && i < json_array_size(inputs); i++) {
        m->n_inputs = i + 1;
        r = parse_input(json_array_get(inputs, i), i, &m->inputs[i], err);
        for (size_t k = 0; r == 0 && k < i; k++)
            if (strcasecmp(m->inputs[k].table, m->inputs[i].table) == 0)
                r = manifest_fail(err, "inputs: table %s twice", m->inputs[i].table);
    }
    if (r == 0 && (!json_is_array(recipients) || json_array_size(recipients) == 0 ||
                   json_array_size(recipients) > JOB_RECIPIENTS_MAX))
        r = manifest_fail(err, "recipients must be a list of 1 to %d age recipients", JOB_RECIPIENTS_MAX);
    if (r == 0 && !(m->recipients = calloc(json_array_size(recipients), sizeof(*m->recipients))))
        r = -ENOMEM;
    for (size_t i = 0; r == 0 && i < json_array_size(recipients); i++) {
        const char *s = json_string_value(json_array_get(recipients, i));
        if (!s || age_recipient_parse(s, &m->recipients[i]) < 0)
            r = manifest_fail(err, "recipients[%zu] is not an age recipient (age1…)", i);
        m->n_recipients = i + 1;
    }
    const json_t *limits = json_object_get(j, "limits");
    if (r == 0 && limits && (!json_is_object(limits) || !only_members(limits, limit_fields, &bad)))
        r = manifest_fail(err, "limits must be {\"memoryMiB\", \"seconds\", \"rows\"}");
    if (r == 0) {
        int64_t mib = limit_member(limits, "memoryMiB", JOB_MEMORY_MIB_DEFAULT, JOB_MEMORY_MIB_MAX),
                secs = limit_member(limits, "seconds", JOB_SECONDS_DEFAULT, JOB_SECONDS_MAX),
                rows = limit_member(limits, "rows", JOB_ROWS_DEFAULT, JOB_ROWS_MAX);
        if (mib < 0 || secs < 0 || rows < 0)
            r = manifest_fail(err, "limits: memoryMiB 1..%d, seconds 1..%d, rows 1..%d", JOB_MEMORY_MIB_MAX,
                              JOB_SECONDS_MAX, JOB_ROWS_MAX);
        m->limits = (job_limits){.memory_mib = (uint64_t)mib, .seconds = (uint64_t)secs, .rows = (uint64_t)rows};
    }
    if (r < 0) {
        job_manifest_free(m);
        return r;
    }
    *ret = m;
    return 0;
}

/* ---- SQLite's memory: every block wiped when freed ---- */

#define MEM_HEADER 16 /* the block's size, keeping 16-byte alignment */

static void *mem_malloc(int n)
{
    uint8_t *b = malloc((size_t)n + MEM_HEADER);
    if (!b)
        return NULL;
    memcpy(b, &(size_t){(size_t)n}, sizeof(size_t));
    return b + MEM_HEADER;
}

static int mem_size(void *p)
{
    size_t n;
    memcpy(&n, (uint8_t *)p - MEM_HEADER, sizeof(n));
    return (int)n;
}

static void mem_free(void *p)
{
    if (!p)
        return;
    uint8_t *b = (uint8_t *)p - MEM_HEADER;
    OPENSSL_cleanse(b, (size_t)mem_size(p) + MEM_HEADER);
    free(b);
}

static void *mem_realloc(void *p, int n)
{
    void *q = mem_malloc(n);
    if (q && p) {
        memcpy(q, p, (size_t)MIN(n, mem_size(p)));
        mem_free(p);
    }
    return q;
}

static int mem_roundup(int n)
{
    return (n + 7) & ~7;
}

static int mem_init(void *unused)
{
    return SQLITE_OK;
}

static void mem_shutdown(void *unused)
{
}

int job_engine_global_init(void)
{
    static bool done;
    static const sqlite3_mem_methods wiping = {mem_malloc, mem_free, mem_realloc, mem_size, mem_roundup,
                                               mem_init,   mem_shutdown, NULL};
    if (done)
        return 0;
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &wiping) != SQLITE_OK || sqlite3_initialize() != SQLITE_OK)
        return -EIO;
    done = true;
    return 0;
}

/* ---- the engine ---- */

static bool past_deadline(job_engine *e)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > e->deadline.tv_sec || (now.tv_sec == e->deadline.tv_sec && now.tv_nsec >= e->deadline.tv_nsec))
        e->timed_out = true;
    return e->timed_out;
}

static int progress(void *userdata)
{
    return past_deadline(userdata) ? 1 : 0;
}

static int time_limit_error(job_engine *e)
{
    fail(e, "time limit: the job ran longer than its %" PRIu64 " s (limits.seconds)", e->limits.seconds);
    return -ETIME;
}

/* The engine's error for SQLite result code RC of WHAT. */
static int sql_error(job_engine *e, int rc, const char *what)
{
    rc &= 0xff; /* the primary code of an extended one */
    if (e->timed_out || rc == SQLITE_INTERRUPT)
        return time_limit_error(e);
    if (rc == SQLITE_NOMEM) {
        fail(e, "memory limit: the job needs more than its %" PRIu64 " MiB (limits.memoryMiB)", e->limits.memory_mib);
        return -ENOMEM;
    }
    if (*e->refused) { /* the authorizer said why; SQLite reports SQLITE_AUTH or SQLITE_ERROR */
        fail(e, "the query is refused: %s", e->refused);
        return -EPERM;
    }
    fail(e, "%s: %s", what, sqlite3_errmsg(e->db));
    return -EINVAL;
}

static int exec(job_engine *e, const char *sql)
{
    int rc = sqlite3_exec(e->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sql_error(e, rc, "loading the inputs");
}

int job_engine_new(const job_limits *limits, job_engine **ret, char err[static JOB_ERROR_MAX])
{
    if (job_engine_global_init() < 0) {
        snprintf(err, JOB_ERROR_MAX, "cannot set up SQLite's allocator");
        return -EIO;
    }
    job_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->limits = *limits;
    strbuf_init_secure(&e->row, RESULT_ROW_MAX);
    clock_gettime(CLOCK_MONOTONIC, &e->deadline);
    e->deadline.tv_sec += (time_t)limits->seconds;
    sqlite3_hard_heap_limit64((sqlite3_int64)(limits->memory_mib * 1024 * 1024));
    int rc = sqlite3_open_v2(":memory:", &e->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_MEMORY |
                                                    SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, NULL);
    int ok = rc == SQLITE_OK;
    /* no extensions, no triggers or views, no ATTACH, no double-quoted strings, defensive */
    static const int off[] = {SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, SQLITE_DBCONFIG_ENABLE_TRIGGER,
                              SQLITE_DBCONFIG_ENABLE_VIEW, SQLITE_DBCONFIG_TRUSTED_SCHEMA, SQLITE_DBCONFIG_DQS_DML,
                              SQLITE_DBCONFIG_DQS_DDL};
    for (size_t i = 0; ok && i < ELEMENTSOF(off); i++)
        ok = sqlite3_db_config(e->db, off[i], 0, NULL) == SQLITE_OK;
    ok = ok && sqlite3_db_config(e->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_limit(e->db, SQLITE_LIMIT_ATTACHED, 0);
        sqlite3_limit(e->db, SQLITE_LIMIT_SQL_LENGTH, JOB_QUERY_MAX);
        sqlite3_progress_handler(e->db, PROGRESS_OPS, progress, e);
        ok = exec(e, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY") == 0;
    }
    if (!ok) {
        snprintf(err, JOB_ERROR_MAX, "cannot open the in-memory database: %s",
                 e->db ? sqlite3_errmsg(e->db) : "out of memory");
        job_engine_free(e);
        return -EIO;
    }
    *ret = e;
    return 0;
}

void job_engine_free(job_engine *e)
{
    if (!e)
        return;
    sqlite3_finalize(e->query);
    sqlite3_close(e->db);
    for (size_t i = 0; i < e->n_tables; i++)
        free(e->tables[i]);
    strbuf_free_secure(&e->row);
    free(e);
}

const char *job_engine_error(const job_engine *e)
{
    return e->error;
}

/* Appends NAME as an SQL identifier ("…", quotes doubled). */
static int put_ident(strbuf *b, const char *name)
{
    int r = strbuf_putc(b, '"');
    for (const char *p = name; r == 0 && *p; p++)
        r = *p == '"' ? strbuf_puts(b, "\"\"") : strbuf_putc(b, *p);
    return r < 0 ? r : strbuf_putc(b, '"');
}

/* ---- the load ---- */

static int load_field(void *userdata, const char *field, size_t len, size_t col, uint64_t record, bool end)
{
    job_loader *l = userdata;
    job_engine *e = l->e;
    if (record == 0) {
        if (col >= l->n_columns || strcmp(field, l->columns[col].name) != 0)
            return fail(e, "input %s: the CSV header must name the schema's columns in order (column %zu is not %s)",
                        l->name, col + 1, col < l->n_columns ? l->columns[col].name : "in the schema");
        if (end && col + 1 != l->n_columns)
            return fail(e, "input %s: the CSV header names %zu columns, the schema %zu", l->name, col + 1,
                        l->n_columns);
        l->header_seen = end;
        return 0;
    }
    /* values are never named in a message: the error goes to the job's author */
    if (col >= l->n_columns)
        return fail(e, "input %s: row %" PRIu64 " has more fields than the schema's %zu columns", l->name, record,
                    l->n_columns);
    l->record_bytes += len;
    if (l->record_bytes > JOB_RECORD_MAX)
        return fail(e, "input %s: row %" PRIu64 " is longer than %d MiB", l->name, record, JOB_RECORD_MAX >> 20);
    int rc, i = (int)col + 1;
    const job_column *c = &l->columns[col];
    int64_t iv;
    double dv;
    if (len == 0)
        rc = sqlite3_bind_null(l->insert, i);
    else if (c->type == CSV_INTEGER && csv_value_integer(field, &iv))
        rc = sqlite3_bind_int64(l->insert, i, iv);
    else if (c->type == CSV_REAL && csv_value_real(field, &dv))
        rc = sqlite3_bind_double(l->insert, i, dv);
    else if (c->type == CSV_TEXT)
        rc = sqlite3_bind_text(l->insert, i, field, (int)len, SQLITE_TRANSIENT);
    else
        return fail(e, "input %s: row %" PRIu64 ", column %s: the value is not %s %s", l->name, record, c->name,
                    c->type == CSV_INTEGER ? "an" : "a", csv_type_name(c->type));
    if (rc != SQLITE_OK)
        return sql_error(e, rc, "loading the inputs");
    if (!end)
        return 0;
    if (col + 1 != l->n_columns)
        return fail(e, "input %s: row %" PRIu64 " has %zu fields, the schema %zu columns", l->name, record, col + 1,
                    l->n_columns);
    rc = sqlite3_step(l->insert);
    sqlite3_reset(l->insert);
    if (rc != SQLITE_DONE)
        return sql_error(e, rc, "loading the inputs");
    l->rows++;
    l->record_bytes = 0;
    return 0;
}

int job_loader_new(job_engine *e, const char *name, const char *table, const job_column *columns, size_t n_columns,
                   job_loader **ret)
{
    if (e->sealed || e->n_tables >= JOB_INPUTS_MAX)
        return fail(e, "no more inputs can be loaded");
    _cleanup_strbuf_ strbuf create, insert;
    strbuf_init(&create, 64 * 1024);
    strbuf_init(&insert, 16 * 1024);
    int r = strbuf_puts(&create, "CREATE TABLE ");
    if (r == 0)
        r = put_ident(&create, table);
    if (r == 0)
        r = strbuf_puts(&insert, "INSERT INTO ");
    if (r == 0)
        r = put_ident(&insert, table);
    if (r == 0)
        r = strbuf_puts(&insert, " VALUES (");
    for (size_t i = 0; r == 0 && i < n_columns; i++) {
        r = strbuf_puts(&create, i == 0 ? " (" : ", ");
        if (r == 0)
            r = put_ident(&create, columns[i].name);
        if (r == 0)
            r = strbuf_puts(&create, columns[i].type == CSV_INTEGER ? " INTEGER" : columns[i].type == CSV_REAL ? " REAL" : " TEXT");
        if (r == 0)
            r = strbuf_puts(&insert, i == 0 ? "?" : ", ?");
    }
    if (r == 0)
        r = strbuf_puts(&create, ") STRICT");
    if (r == 0)
        r = strbuf_puts(&insert, ")");
    if (r < 0)
        return fail(e, "input %s: the schema is too large", name);
    job_loader *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    *l = (job_loader){.e = e, .name = strdup(name), .columns = columns, .n_columns = n_columns};
    /* the table is the authorizer's to allow once sealed */
    e->tables[e->n_tables] = strdup(table);
    if (!l->name || !e->tables[e->n_tables]) {
        free(e->tables[e->n_tables]);
        e->tables[e->n_tables] = NULL;
        job_loader_free(l);
        return -ENOMEM;
    }
    e->n_tables++;
    r = exec(e, create.data);
    if (r == 0)
        r = exec(e, "BEGIN");
    if (r == 0) {
        int rc = sqlite3_prepare_v2(e->db, insert.data, -1, &l->insert, NULL);
        if (rc != SQLITE_OK)
            r = sql_error(e, rc, "loading the inputs");
    }
    if (r == 0)
        r = csv_parser_init(&l->csv, load_field, l, true);
    if (r < 0) {
        job_loader_free(l);
        return r;
    }
    *ret = l;
    return 0;
}

/* The engine's error for a CSV parse failure R of loader L. */
static int csv_error(job_loader *l, int r)
{
    if (r == -EINVAL && *l->e->error)
        return r; /* a field's own error */
    if (r == -E2BIG)
        return fail(l->e, "input %s: row %" PRIu64 ", column %zu: a field longer than %d MiB", l->name, l->csv.record,
                    l->csv.column + 1, CSV_FIELD_MAX >> 20);
    if (r == -EINVAL)
        return fail(l->e, "input %s: row %" PRIu64 " is not valid CSV (RFC 4180: a quote inside a quoted field must "
                    "be doubled, a CR must end a line)", l->name, l->csv.record);
    return r;
}

int job_loader_feed(job_loader *l, const uint8_t *data, size_t n)
{
    if (past_deadline(l->e))
        return time_limit_error(l->e);
    int r = csv_parser_feed(&l->csv, (const char *)data, n);
    return r < 0 ? csv_error(l, r) : 0;
}

int job_loader_finish(job_loader *l, uint64_t *ret_rows)
{
    int r = csv_parser_finish(&l->csv);
    if (r < 0)
        return csv_error(l, r);
    if (!l->header_seen)
        return fail(l->e, "input %s: the CSV has no header row", l->name);
    sqlite3_finalize(l->insert);
    l->insert = NULL;
    r = exec(l->e, "COMMIT");
    if (r < 0)
        return r;
    if (ret_rows)
        *ret_rows = l->rows;
    return 0;
}

void job_loader_free(job_loader *l)
{
    if (!l)
        return;
    if (l->insert) {
        sqlite3_finalize(l->insert);
        sqlite3_exec(l->e->db, "ROLLBACK", NULL, NULL, NULL);
    }
    csv_parser_done(&l->csv);
    free(l->name);
    free(l);
}

/* ---- the sealed query ---- */

/* Functions a query may call: pure ones of SQLite's core, math, date and
 * JSON sets. Not: load_extension, fts3_tokenizer, sqlite_* introspection,
 * random/randomblob/zeroblob, changes/last_insert_rowid (and the shell's
 * readfile/writefile/edit, not in the library anyway). */
static const char *const allowed_functions[] = {
    /* core scalar */
    "abs", "char", "coalesce", "format", "glob", "hex", "ifnull", "iif", "instr", "length", "like", "likelihood",
    "likely", "lower", "ltrim", "max", "min", "nullif", "printf", "quote", "replace", "round", "rtrim", "sign",
    "soundex", "substr", "substring", "trim", "typeof", "unicode", "unlikely", "upper",
    /* aggregate */
    "avg", "count", "group_concat", "sum", "total",
    /* window */
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
    "last_value", "nth_value",
    /* date and time */
    "date", "time", "datetime", "julianday", "strftime", "unixepoch",
    /* math */
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees", "exp",
    "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt", "tan",
    "tanh", "trunc",
    /* JSON */
    "json", "json_array", "json_array_length", "json_extract", "json_insert", "json_object", "json_patch",
    "json_quote", "json_remove", "json_replace", "json_set", "json_type", "json_valid", "json_group_array",
    "json_group_object", "->", "->>",
    NULL,
};

static bool in_list(const char *const *list, const char *s)
{
    for (size_t i = 0; s && list[i]; i++)
        if (strcasecmp(list[i], s) == 0)
            return true;
    return false;
}

static const char *action_name(int action)
{
    switch (action) {
    case SQLITE_ATTACH:
        return "ATTACH";
    case SQLITE_DETACH:
        return "DETACH";
    case SQLITE_PRAGMA:
        return "PRAGMA";
    case SQLITE_INSERT:
        return "INSERT";
    case SQLITE_UPDATE:
        return "UPDATE";
    case SQLITE_DELETE:
        return "DELETE";
    case SQLITE_TRANSACTION:
        return "a transaction";
    case SQLITE_SAVEPOINT:
        return "SAVEPOINT";
    case SQLITE_ANALYZE:
        return "ANALYZE";
    case SQLITE_REINDEX:
        return "REINDEX";
    case SQLITE_ALTER_TABLE:
        return "ALTER TABLE";
    default:
        return action >= SQLITE_CREATE_INDEX && action <= SQLITE_DROP_VIEW ? "CREATE or DROP"
               : action == SQLITE_CREATE_VTABLE || action == SQLITE_DROP_VTABLE ? "CREATE or DROP VIRTUAL TABLE"
                                                                                  : "this statement";
    }
}

/* After the seal: SELECT, reads of the loaded tables and of the query's own
 * CTEs and subqueries (no database name), allow-listed functions and
 * recursive CTEs; nothing else. Table-valued functions (json_each,
 * pragma_*) are refused too: connecting one touches sqlite_master. */
static int authorize(void *userdata, int action, const char *a3, const char *a4, const char *db, const char *trigger)
{
    job_engine *e = userdata;
    if (!e->sealed)
        return SQLITE_OK; /* the engine's own load statements */
    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
        return SQLITE_OK;
    case SQLITE_READ:
        if (!db)
            return SQLITE_OK; /* a CTE or subquery of the query */
        for (size_t i = 0; strcmp(db, "main") == 0 && i < e->n_tables; i++)
            if (a3 && strcasecmp(a3, e->tables[i]) == 0)
                return SQLITE_OK;
        snprintf(e->refused, sizeof(e->refused), "reading %.64s is not allowed (only the inputs' tables)",
                 a3 ? a3 : "?");
        return SQLITE_DENY;
    case SQLITE_FUNCTION:
        if (in_list(allowed_functions, a4))
            return SQLITE_OK;
        snprintf(e->refused, sizeof(e->refused),
                 "the function %.64s is not allowed (only pure functions on the allow-list: docs/analytics.md)",
                 a4 ? a4 : "?");
        return SQLITE_DENY;
    default:
        if (a3 && strcasecmp(a3, "sqlite_master") == 0)
            snprintf(e->refused, sizeof(e->refused), "touching sqlite_master is not allowed (nor are table-valued "
                     "functions such as json_each or pragma_table_info)");
        else
            snprintf(e->refused, sizeof(e->refused), "%s is not allowed (a job's query only reads)",
                     action_name(action));
        return SQLITE_DENY;
    }
}

int job_engine_seal(job_engine *e)
{
    int r = exec(e, "PRAGMA query_only=1");
    if (r < 0)
        return r;
    if (sqlite3_set_authorizer(e->db, authorize, e) != SQLITE_OK)
        return fail(e, "cannot install the authorizer");
    e->sealed = true;
    return 0;
}

int job_engine_prepare(job_engine *e, const char *query)
{
    if (!e->sealed || e->query)
        return fail(e, "the engine is not ready for a query");
    const char *tail = NULL;
    e->refused[0] = '\0';
    int rc = sqlite3_prepare_v3(e->db, query, -1, 0, &e->query, &tail);
    if (rc != SQLITE_OK)
        return sql_error(e, rc, "the query");
    if (!e->query)
        return fail(e, "the query is empty");
    sqlite3_stmt *next = NULL;
    rc = sqlite3_prepare_v3(e->db, tail, -1, 0, &next, NULL);
    sqlite3_finalize(next);
    if (rc != SQLITE_OK || next)
        return fail(e, "the query must be one statement (something follows the first)");
    if (!sqlite3_stmt_readonly(e->query))
        return fail(e, "the query is refused: it would write");
    return 0;
}

/* Appends one CSV field: quoted when it holds a comma, a quote or a line break. */
static int put_csv_field(strbuf *b, const char *s, size_t n)
{
    bool quote = false;
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
    if (!quote)
        return strbuf_append(b, s, n);
    int r = strbuf_putc(b, '"');
    for (size_t i = 0; r == 0 && i < n; i++)
        r = s[i] == '"' ? strbuf_puts(b, "\"\"") : strbuf_putc(b, s[i]);
    return r < 0 ? r : strbuf_putc(b, '"');
}

/* Formats the header (first call) or the next row into e->row. Returns 1
 * when there is one, 0 at the end, or a negative errno. */
static int next_row(job_engine *e)
{
    int n = sqlite3_column_count(e->query), r = 0;
    strbuf_reset(&e->row);
    e->row_pos = 0;
    if (!e->header_done) {
        for (int i = 0; i < n && r == 0; i++) {
            const char *name = sqlite3_column_name(e->query, i);
            if (i > 0)
                r = strbuf_putc(&e->row, ',');
            if (r == 0)
                r = name ? put_csv_field(&e->row, name, strlen(name)) : -ENOMEM;
        }
        e->header_done = true;
    } else {
        int rc = sqlite3_step(e->query);
        if (rc == SQLITE_DONE) {
            e->done = true;
            return 0;
        }
        if (rc != SQLITE_ROW)
            return sql_error(e, rc, "the query failed");
        if (e->rows >= e->limits.rows) {
            fail(e, "row limit: the result has more than %" PRIu64 " rows (limits.rows)", e->limits.rows);
            return -EFBIG;
        }
        for (int i = 0; i < n && r == 0; i++) {
            if (i > 0)
                r = strbuf_putc(&e->row, ',');
            if (r == 0 && sqlite3_column_type(e->query, i) != SQLITE_NULL) {
                const char *v = (const char *)sqlite3_column_text(e->query, i);
                if (!v)
                    return sql_error(e, SQLITE_NOMEM, "the query failed");
                r = put_csv_field(&e->row, v, (size_t)sqlite3_column_bytes(e->query, i));
            }
        }
        e->rows++;
    }
    if (r == 0)
        r = strbuf_puts(&e->row, "\r\n");
    if (r == -E2BIG) {
        fail(e, "a result row is longer than %d MiB", RESULT_ROW_MAX >> 20);
        return r;
    }
    return r < 0 ? r : 1;
}

ssize_t job_engine_read(void *userdata, uint8_t *buf, size_t n)
{
    job_engine *e = userdata;
    if (!e->query)
        return fail(e, "no query was prepared");
    size_t done = 0;
    while (done < n) {
        if (e->row_pos == e->row.len) {
            if (e->done)
                break;
            int r = next_row(e);
            if (r < 0)
                return r;
            if (r == 0)
                break;
        }
        size_t k = MIN(n - done, e->row.len - e->row_pos);
        memcpy(buf + done, e->row.data + e->row_pos, k);
        e->row_pos += k;
        done += k;
    }
    return (ssize_t)done;
}

uint64_t job_engine_rows(const job_engine *e)
{
    return e->rows;
}

/* ---- the run ---- */

/* SHA-256 of the file FD (read to its end, then rewound). Returns 0 or a negative errno. */
static int hash_fd(int fd, uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    _cleanup_free_ uint8_t *buf = malloc(AGE_CHUNK_SIZE);
    int r = md && buf && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
    for (ssize_t k; r == 0 && (k = age_fd_read(&fd, buf, AGE_CHUNK_SIZE)) != 0;)
        r = k < 0 ? (int)k : EVP_DigestUpdate(md, buf, (size_t)k) == 1 ? 0 : -EIO;
    if (r == 0 && EVP_DigestFinal_ex(md, out, NULL) != 1)
        r = -EIO;
    if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
        r = negative_errno();
    EVP_MD_CTX_free(md);
    return r;
}

/* Reads the 16 raw bytes of the file key at PATH. Returns 0 or a negative errno. */
static int read_file_key(const char *path, uint8_t ret[AGE_FILE_KEY_SIZE])
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return negative_errno();
    uint8_t buf[AGE_FILE_KEY_SIZE + 1];
    size_t have = 0;
    for (ssize_t k; have < sizeof(buf) && (k = age_fd_read(&fd, buf + have, sizeof(buf) - have)) != 0;) {
        if (k < 0) {
            OPENSSL_cleanse(buf, sizeof(buf));
            return (int)k;
        }
        have += (size_t)k;
    }
    int r = have == AGE_FILE_KEY_SIZE ? 0 : -EBADMSG;
    if (r == 0)
        memcpy(ret, buf, AGE_FILE_KEY_SIZE);
    OPENSSL_cleanse(buf, sizeof(buf));
    return r;
}

static int loader_write(void *userdata, const uint8_t *buf, size_t n)
{
    return job_loader_feed(userdata, buf, n);
}

/* Checks, decrypts and loads input IN. Returns 0 or a negative errno with ERR. */
static int load_input(job_engine *e, const job_input *in, char *err)
{
    uint8_t digest[32], file_key[AGE_FILE_KEY_SIZE];
    char have[65], want[65];
    _cleanup_close_ int fd = open(in->ciphertext, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int r = negative_errno();
        snprintf(err, JOB_ERROR_MAX, "input %s: cannot open the ciphertext %s: %s", in->name, in->ciphertext,
                 strerror(-r));
        return r;
    }
    int r = hash_fd(fd, digest);
    if (r < 0) {
        snprintf(err, JOB_ERROR_MAX, "input %s: cannot read the ciphertext: %s", in->name, strerror(-r));
        return r;
    }
    if (CRYPTO_memcmp(digest, in->sha256, sizeof(digest)) != 0) {
        hex_encode(digest, sizeof(digest), have);
        hex_encode(in->sha256, sizeof(in->sha256), want);
        snprintf(err, JOB_ERROR_MAX, "input %s: the ciphertext's SHA-256 is %s, the job's is %s: not the approved data",
                 in->name, have, want);
        return -EBADMSG;
    }
    r = read_file_key(in->file_key, file_key);
    if (r < 0) {
        snprintf(err, JOB_ERROR_MAX, "input %s: cannot read the file key %s (16 raw bytes): %s", in->name,
                 in->file_key, r == -EBADMSG ? "not 16 bytes" : strerror(-r));
        return r;
    }
    job_loader *l = NULL;
    r = job_loader_new(e, in->name, in->table, in->columns, in->n_columns, &l);
    if (r == 0) {
        e->error[0] = '\0';
        r = age_decrypt_with_file_key(file_key, age_fd_read, &fd, loader_write, l);
        if (r < 0 && !*e->error)
            fail(e, "input %s: %s", in->name, r == AGE_ERR_HMAC ? "the file key does not open the file (its header MAC "
                                                              "does not verify)" : age_strerror(r));
    }
    OPENSSL_cleanse(file_key, sizeof(file_key));
    if (r == 0)
        r = job_loader_finish(l, NULL);
    job_loader_free(l);
    if (r < 0)
        snprintf(err, JOB_ERROR_MAX, "%s", e->error);
    return r;
}

typedef struct output {
    int fd;
    EVP_MD_CTX *md;
} output;

static int output_write(void *userdata, const uint8_t *buf, size_t n)
{
    output *o = userdata;
    if (EVP_DigestUpdate(o->md, buf, n) != 1)
        return -EIO;
    return age_fd_write(&o->fd, buf, n);
}

/* Encrypts E's result to M's recipients into a temporary beside m->output,
 * renamed over it once whole. Returns 0 or a negative errno with ERR. */
static int write_result(job_engine *e, const job_manifest *m, uint8_t ret_sha256[32], char *err)
{
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp-XXXXXX", m->output) < 0)
        return -ENOMEM;
    output o = {.fd = mkostemp(tmp, O_CLOEXEC), .md = EVP_MD_CTX_new()};
    if (o.fd < 0) {
        int r = negative_errno();
        EVP_MD_CTX_free(o.md);
        snprintf(err, JOB_ERROR_MAX, "cannot create the output beside %s: %s", m->output, strerror(-r));
        return r;
    }
    e->error[0] = '\0';
    int r = o.md && EVP_DigestInit_ex(o.md, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
    if (r == 0)
        r = age_encrypt(m->recipients, m->n_recipients, job_engine_read, e, output_write, &o);
    if (r < 0)
        snprintf(err, JOB_ERROR_MAX, "%s", *e->error ? e->error : strerror(-r));
    if (r == 0 && EVP_DigestFinal_ex(o.md, ret_sha256, NULL) != 1)
        r = -EIO;
    if (r == 0 && (fsync(o.fd) < 0 || rename(tmp, m->output) < 0)) {
        r = negative_errno();
        snprintf(err, JOB_ERROR_MAX, "cannot write the output %s: %s", m->output, strerror(-r));
    }
    close(o.fd);
    EVP_MD_CTX_free(o.md);
    if (r < 0)
        unlink(tmp);
    return r;
}

int job_run(const job_manifest *m, uint64_t *ret_rows, uint8_t ret_sha256[32], char err[static JOB_ERROR_MAX])
{
    job_engine *e = NULL;
    int r = job_engine_new(&m->limits, &e, err);
    for (size_t i = 0; r == 0 && i < m->n_inputs; i++)
        r = load_input(e, &m->inputs[i], err);
    if (r == 0 && (r = job_engine_seal(e)) < 0)
        snprintf(err, JOB_ERROR_MAX, "%s", e->error);
    if (r == 0 && (r = job_engine_prepare(e, m->query)) < 0)
        snprintf(err, JOB_ERROR_MAX, "%s", e->error);
    uint8_t digest[32];
    if (r == 0)
        r = write_result(e, m, digest, err);
    if (r == 0) {
        *ret_rows = job_engine_rows(e);
        memcpy(ret_sha256, digest, sizeof(digest));
    }
    job_engine_free(e);
    return r;
}
