/* The job engine (cloister-job, docs/analytics.md "The job engine"): a pure
 * file-to-file program run inside an attested sandbox. From a manifest it
 * decrypts each input (age v1, with its released file key), loads it into
 * an in-memory SQLite table typed by the Dataset schema, runs one read-only
 * query under an authorizer and limits (heap, wall clock, result rows), and
 * writes the result as CSV encrypted with age to the recipients.
 *
 * Plaintext lives only in memory: SQLite's allocator wipes every block it
 * frees, and the engine wipes its own buffers and the file keys. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "age/age.h"
#include "basic/csv.h"

#define JOB_MANIFEST_MAX (1024 * 1024)
#define JOB_QUERY_MAX (64 * 1024)
#define JOB_INPUTS_MAX 16
#define JOB_RECIPIENTS_MAX 64
#define JOB_RECORD_MAX (16 * 1024 * 1024) /* bytes of one CSV row, all its fields */
/* limits: the manifest's, within these bounds, or these defaults */
#define JOB_MEMORY_MIB_DEFAULT 1024
#define JOB_MEMORY_MIB_MAX (64 * 1024)
#define JOB_SECONDS_DEFAULT 300
#define JOB_SECONDS_MAX 86400
#define JOB_ROWS_DEFAULT 1000000
#define JOB_ROWS_MAX 100000000
#define JOB_ERROR_MAX 512

typedef struct job_limits {
    uint64_t memory_mib, seconds, rows;
} job_limits;

typedef struct job_column {
    char *name;
    csv_type type;
} job_column;

typedef struct job_input {
    char *name, *table;
    job_column *columns;
    size_t n_columns;
    char *ciphertext, *file_key; /* paths */
    uint8_t sha256[32];
} job_input;

typedef struct job_manifest {
    char *query;
    job_input *inputs;
    size_t n_inputs;
    age_recipient *recipients;
    size_t n_recipients;
    char *output;
    job_limits limits;
} job_manifest;

/* Parses the manifest TEXT (LEN bytes of JSON):
 *   {"query", "inputs": [{"name", "table", "schema": [{"name", "type"}], "ciphertext", "fileKey", "sha256"}],
 *    "recipients": ["age1…"], "output", "limits"?: {"memoryMiB"?, "seconds"?, "rows"?}}
 * strictly (unknown fields, duplicate table or column names, values out of
 * bounds are refused). Returns 0 and the manifest (free with
 * job_manifest_free), or -EINVAL with what is wrong in ERR. */
int job_manifest_parse(const char *text, size_t len, job_manifest **ret, char err[static JOB_ERROR_MAX]);
void job_manifest_free(job_manifest *m);

typedef struct job_engine job_engine;

/* Makes SQLite wipe what it frees. Call before any other SQLite use in the
 * process (job_engine_new calls it; a no-op the second time). Returns 0 or -EIO. */
int job_engine_global_init(void);

/* An engine with an empty in-memory database under LIMITS: the heap limit
 * is set (process-wide) and the wall-clock deadline starts now. Returns 0
 * or a negative errno with ERR. */
int job_engine_new(const job_limits *limits, job_engine **ret, char err[static JOB_ERROR_MAX]);
/* Closes the database; accepts NULL. */
void job_engine_free(job_engine *e);
/* The message of the engine's last failure. */
const char *job_engine_error(const job_engine *e);

/* The load phase. Creates TABLE (STRICT, typed by COLUMNS) and returns a
 * loader fed with the table's CSV: a header naming the columns in order,
 * then rows (basic/csv.h). NAME is the input's name for messages. */
typedef struct job_loader job_loader;
int job_loader_new(job_engine *e, const char *name, const char *table, const job_column *columns, size_t n_columns,
                   job_loader **ret);
/* Feeds N bytes of CSV (any split). Returns 0 or a negative errno, the
 * engine's error naming the input, row and column. */
int job_loader_feed(job_loader *l, const uint8_t *data, size_t n);
/* Ends the CSV; the rows are committed. Returns 0 or a negative errno. */
int job_loader_finish(job_loader *l, uint64_t *ret_rows);
/* Wipes and frees (rolls back an unfinished load); accepts NULL. */
void job_loader_free(job_loader *l);

/* Ends the load phase: from now on the authorizer allows only reads of the
 * loaded tables and the allow-listed functions, and the database is
 * query-only. Returns 0 or a negative errno. */
int job_engine_seal(job_engine *e);

/* Prepares QUERY: exactly one statement, read-only, every table it reads
 * a loaded one and every function on the allow-list (else a negative errno
 * with the engine's error naming what was refused). */
int job_engine_prepare(job_engine *e, const char *query);
/* Reads the prepared query's result as CSV (a header row, then rows, CRLF
 * line ends as RFC 4180), running it as it goes: an age_read_fn, USERDATA
 * is the engine. Returns the bytes written to BUF (0 at the end), or a
 * negative errno with the engine's error: more rows than the limit, the
 * deadline, the heap limit, an SQL error. What was read must then be
 * discarded: a result is whole or nothing. */
ssize_t job_engine_read(void *userdata, uint8_t *buf, size_t n);
/* The result rows read so far. */
uint64_t job_engine_rows(const job_engine *e);

/* The whole run of manifest M: each input's SHA-256, decryption, load,
 * the query, the result encrypted to the recipients into a temporary beside
 * m->output, renamed over it only on success. Returns 0 with the result's
 * row count and the SHA-256 of the encrypted file, or a negative errno with
 * ERR (nothing at m->output then). */
int job_run(const job_manifest *m, uint64_t *ret_rows, uint8_t ret_sha256[32], char err[static JOB_ERROR_MAX]);
