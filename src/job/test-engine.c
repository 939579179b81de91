#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "job/engine.h"

static const job_column patients[] = {{"id", CSV_INTEGER}, {"city", CSV_TEXT}, {"score", CSV_REAL}};

/* An engine under LIMITS with table "patients" loaded from CSV. Returns the load's result. */
static int load(const job_limits *limits, const char *csv, job_engine **ret)
{
    job_engine *e;
    char err[JOB_ERROR_MAX];
    cr_assert_eq(job_engine_new(limits, &e, err), 0, "%s", err);
    job_loader *l;
    cr_assert_eq(job_loader_new(e, "patients", "patients", patients, ELEMENTSOF(patients), &l), 0);
    /* fed in small pieces: any split must do */
    int r = 0;
    for (size_t i = 0, n = strlen(csv); r == 0 && i < n; i += 5)
        r = job_loader_feed(l, (const uint8_t *)csv + i, MIN((size_t)5, n - i));
    if (r == 0)
        r = job_loader_finish(l, NULL);
    job_loader_free(l);
    *ret = e;
    return r;
}

static const job_limits small = {.memory_mib = 64, .seconds = 20, .rows = 1000};
static const char *const csv3 = "id,city,score\n1,Lyon,1.5\r\n2,\"Paris, \"\"center\"\"\",\n3,,-2e3\n";

/* Runs QUERY on E (sealed here); the result CSV in *RET_OUT (freed by the caller). */
static int query(job_engine *e, const char *q, char **ret_out)
{
    cr_assert_eq(job_engine_seal(e), 0);
    int r = job_engine_prepare(e, q);
    if (r < 0)
        return r;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    for (;;) {
        if (len + 4096 + 1 > cap)
            out = realloc(out, cap *= 2);
        ssize_t k = job_engine_read(e, (uint8_t *)out + len, 4096);
        if (k < 0) {
            free(out);
            return (int)k;
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    out[len] = 0;
    *ret_out = out;
    return 0;
}

Test(job_engine, loads_typed_rows_and_writes_csv)
{
    job_engine *e;
    cr_assert_eq(load(&small, csv3, &e), 0, "%s", job_engine_error(e));
    char *out = NULL;
    cr_assert_eq(query(e, "SELECT id, typeof(id) AS ti, city, typeof(city), score, typeof(score) FROM patients "
                          "ORDER BY id", &out), 0, "%s", job_engine_error(e));
    cr_assert_str_eq(out, "id,ti,city,typeof(city),score,typeof(score)\r\n"
                          "1,integer,Lyon,text,1.5,real\r\n"
                          "2,integer,\"Paris, \"\"center\"\"\",text,,null\r\n"
                          "3,integer,,null,-2000.0,real\r\n");
    cr_assert_eq(job_engine_rows(e), 3);
    free(out);
    job_engine_free(e);
}

Test(job_engine, a_bad_value_names_row_and_column_never_the_value)
{
    job_engine *e;
    cr_assert_lt(load(&small, "id,city,score\n1,Lyon,1\n2,Paris,secret-value\n", &e), 0);
    cr_assert_str_eq(job_engine_error(e), "input patients: row 2, column score: the value is not a real");
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,city,score\n1.5,Lyon,1\n", &e), 0);
    cr_assert_str_eq(job_engine_error(e), "input patients: row 1, column id: the value is not an integer");
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,city\n1,Lyon\n", &e), 0);
    cr_assert_str_eq(job_engine_error(e), "input patients: the CSV header names 2 columns, the schema 3");
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,town,score\n", &e), 0);
    cr_assert(strstr(job_engine_error(e), "must name the schema's columns in order (column 2 is not city)"));
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,city,score\n1,Lyon\n", &e), 0);
    cr_assert_str_eq(job_engine_error(e), "input patients: row 1 has 2 fields, the schema 3 columns");
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,city,score\n1,\"Ly\"on,2\n", &e), 0);
    cr_assert(strstr(job_engine_error(e), "row 1 is not valid CSV"), "%s", job_engine_error(e));
    job_engine_free(e);
    cr_assert_lt(load(&small, "id,city,score\n1,\"Lyon,2\n", &e), 0);
    job_engine_free(e);
    cr_assert_lt(load(&small, "", &e), 0);
    cr_assert_str_eq(job_engine_error(e), "input patients: the CSV has no header row");
    job_engine_free(e);
}

/* Asserts that QUERY is refused with a message holding WHY. */
static void refused(const char *q, const char *why)
{
    job_engine *e;
    cr_assert_eq(load(&small, csv3, &e), 0);
    char *out = NULL;
    int r = query(e, q, &out);
    cr_assert_lt(r, 0, "%s was not refused: %s", q, out);
    cr_assert(strstr(job_engine_error(e), why), "%s: \"%s\" does not say \"%s\"", q, job_engine_error(e), why);
    job_engine_free(e);
}

Test(job_engine, refuses_every_query_that_is_not_a_pure_read)
{
    refused("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH is not allowed");
    refused("ATTACH ':memory:' AS x", "ATTACH is not allowed");
    refused("DETACH main", "DETACH is not allowed");
    refused("SELECT readfile('/etc/passwd')", "no such function: readfile");
    refused("SELECT writefile('/tmp/x', city) FROM patients", "no such function: writefile");
    refused("SELECT load_extension('/tmp/evil.so')", "the function load_extension is not allowed");
    refused("SELECT fts3_tokenizer('simple')", "fts3_tokenizer");
    refused("SELECT randomblob(10)", "the function randomblob is not allowed");
    refused("SELECT sqlite_version()", "the function sqlite_version is not allowed");
    refused("PRAGMA query_only=0", "PRAGMA is not allowed");
    refused("PRAGMA writable_schema=1", "PRAGMA is not allowed");
    refused("PRAGMA table_info(patients)", "PRAGMA is not allowed");
    refused("SELECT * FROM pragma_table_info('patients')", "not allowed");
    refused("SELECT sql FROM sqlite_master", "reading sqlite_master is not allowed");
    refused("SELECT value FROM json_each('[1]')", "nor are table-valued functions");
    refused("SELECT * FROM temp.sqlite_master", "not allowed");
    refused("INSERT INTO patients VALUES (4, 'Nice', 1)", "INSERT is not allowed");
    refused("UPDATE patients SET city = 'x'", "UPDATE is not allowed");
    refused("DELETE FROM patients", "DELETE is not allowed");
    refused("CREATE TABLE t (x)", "not allowed");
    refused("CREATE TEMP TABLE t AS SELECT * FROM patients", "not allowed");
    refused("DROP TABLE patients", "not allowed");
    refused("BEGIN", "a transaction is not allowed");
    refused("VACUUM INTO '/tmp/copy.db'", "the query is refused: it would write"); /* no authorizer code: caught as a writer */
    refused("SELECT 1; DELETE FROM patients", "the query must be one statement");
    refused("SELECT 1; SELECT 2", "the query must be one statement");
    refused("", "the query is empty");
    refused("  -- nothing\n", "the query is empty");
}

Test(job_engine, allows_pure_reads_ctes_windows_and_json)
{
    job_engine *e;
    cr_assert_eq(load(&small, csv3, &e), 0);
    char *out = NULL;
    cr_assert_eq(query(e, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3), "
                          "j AS (SELECT 10 AS v UNION ALL SELECT json_extract('{\"a\": 20}', '$.a')) "
                          "SELECT x, row_number() OVER (ORDER BY x DESC) AS r, round(sqrt(x * 4), 1) AS s, "
                          "(SELECT sum(v) FROM j) AS t, upper(coalesce(city, '-')) AS c "
                          "FROM n LEFT JOIN patients ON id = x ORDER BY x", &out), 0, "%s", job_engine_error(e));
    cr_assert_str_eq(out, "x,r,s,t,c\r\n1,3,2.0,30,LYON\r\n2,2,2.8,30,\"PARIS, \"\"CENTER\"\"\"\r\n3,1,3.5,30,-\r\n");
    free(out);
    job_engine_free(e);
}

Test(job_engine, an_endless_recursive_cte_ends_at_the_deadline, .timeout = 30)
{
    job_limits one_second = small;
    one_second.seconds = 1;
    job_engine *e;
    cr_assert_eq(load(&one_second, csv3, &e), 0);
    char *out = NULL;
    cr_assert_eq(query(e, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                       &out), -ETIME);
    cr_assert_str_eq(job_engine_error(e), "time limit: the job ran longer than its 1 s (limits.seconds)");
    job_engine_free(e);
}

Test(job_engine, the_heap_limit_ends_a_query_that_grows, .timeout = 60)
{
    job_limits tight = small;
    tight.memory_mib = 4;
    job_engine *e;
    cr_assert_eq(load(&tight, csv3, &e), 0);
    char *out = NULL;
    cr_assert_eq(query(e, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
                          "SELECT length(group_concat(x)) FROM c", &out), -ENOMEM);
    cr_assert_str_eq(job_engine_error(e), "memory limit: the job needs more than its 4 MiB (limits.memoryMiB)");
    job_engine_free(e);
}

Test(job_engine, more_result_rows_than_the_limit_is_an_error)
{
    job_limits two = small;
    two.rows = 2;
    job_engine *e;
    cr_assert_eq(load(&two, csv3, &e), 0);
    char *out = NULL;
    cr_assert_eq(query(e, "SELECT id FROM patients", &out), -EFBIG);
    cr_assert_str_eq(job_engine_error(e), "row limit: the result has more than 2 rows (limits.rows)");
    job_engine_free(e);
}

/* ---- the whole run ---- */

typedef struct mem {
    uint8_t *p;
    size_t len, pos;
} mem;

static ssize_t mem_read(void *userdata, uint8_t *out, size_t n)
{
    mem *m = userdata;
    n = MIN(n, m->len - m->pos);
    memcpy(out, m->p + m->pos, n);
    m->pos += n;
    return (ssize_t)n;
}

static int mem_write(void *userdata, const uint8_t *in, size_t n)
{
    mem *m = userdata;
    m->p = realloc(m->p, m->len + n + 1);
    memcpy(m->p + m->len, in, n);
    m->len += n;
    m->p[m->len] = 0;
    return 0;
}

/* Writes PLAIN encrypted to ID's recipient at DIR/NAME.age and its file key
 * at DIR/NAME.key; the ciphertext's SHA-256 hex in SHA. */
static void make_input(const char *dir, const char *name, const age_identity *id, const char *plain, char sha[65])
{
    age_recipient r;
    age_identity_recipient(id, &r);
    mem in = {.p = (uint8_t *)plain, .len = strlen(plain)}, file = {};
    cr_assert_eq(age_encrypt(&r, 1, mem_read, &in, mem_write, &file), 0);
    uint8_t fk[AGE_FILE_KEY_SIZE], digest[32];
    mem again = {.p = file.p, .len = file.len};
    cr_assert_eq(age_unwrap_file_key(id, 1, mem_read, &again, fk), 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.age", dir, name);
    cr_assert_eq(write_file_atomic(path, file.p, file.len, 0600), 0);
    snprintf(path, sizeof(path), "%s/%s.key", dir, name);
    cr_assert_eq(write_file_atomic(path, fk, sizeof(fk), 0600), 0);
    EVP_Digest(file.p, file.len, digest, NULL, EVP_sha256(), NULL);
    hex_encode(digest, sizeof(digest), sha);
    free(file.p);
}

/* Runs the manifest JSON; the answer of job_run, with ERR. */
static int run(const char *json, uint64_t *rows, uint8_t sha[32], char err[JOB_ERROR_MAX])
{
    job_manifest *m = NULL;
    int r = job_manifest_parse(json, strlen(json), &m, err);
    if (r == 0)
        r = job_run(m, rows, sha, err);
    job_manifest_free(m);
    return r;
}

/* The manifest of the two-input job: QUERY over DIR's a (whose SHA-256 the
 * manifest says is SHA_A) and b (opened with the key DIR/B_KEY.key), to RCPT. */
static void manifest(char json[4096], const char *query, const char *dir, const char *sha_a, const char *b_key,
                     const char *sha_b, const char *rcpt)
{
    snprintf(json, 4096,
        "{\"query\": \"%s\", \"inputs\": ["
        "{\"name\": \"a\", \"table\": \"patients\", \"schema\": [{\"name\": \"id\", \"type\": \"integer\"}, "
        "{\"name\": \"city\", \"type\": \"text\"}, {\"name\": \"score\", \"type\": \"real\"}], "
        "\"ciphertext\": \"%s/a.age\", \"fileKey\": \"%s/a.key\", \"sha256\": \"%s\"}, "
        "{\"name\": \"b\", \"table\": \"visits\", \"schema\": [{\"name\": \"id\", \"type\": \"integer\"}, "
        "{\"name\": \"visits\", \"type\": \"integer\"}], "
        "\"ciphertext\": \"%s/b.age\", \"fileKey\": \"%s/%s.key\", \"sha256\": \"%s\"}], "
        "\"recipients\": [\"%s\"], \"output\": \"%s/out.age\", \"limits\": {\"memoryMiB\": 64, \"seconds\": 10, "
        "\"rows\": 100}}",
             query, dir, dir, sha_a, dir, dir, b_key, sha_b, rcpt, dir);
}

Test(job_run, decrypts_loads_queries_and_encrypts_the_result)
{
    char dir[] = "/tmp/test-job-XXXXXX", sha_a[65], sha_b[65], json[4096], err[JOB_ERROR_MAX], rcpt[AGE_RECIPIENT_STRLEN];
    cr_assert(mkdtemp(dir));
    age_identity owner, reader;
    cr_assert_eq(age_identity_generate(&owner), 0);
    cr_assert_eq(age_identity_generate(&reader), 0);
    make_input(dir, "a", &owner, "id,city,score\n1,Lyon,1.5\n2,Paris,2\n3,Lyon,3\n", sha_a);
    make_input(dir, "b", &owner, "id,visits\n1,10\n3,5\n", sha_b);
    age_recipient r;
    age_identity_recipient(&reader, &r);
    age_recipient_format(&r, rcpt);
    const char *join = "SELECT city, count(*) AS n, sum(visits) AS v FROM patients JOIN visits USING (id) "
                       "GROUP BY city ORDER BY city";
    manifest(json, join, dir, sha_a, "b", sha_b, rcpt);
    uint64_t rows;
    uint8_t sha[32], digest[32];
    cr_assert_eq(run(json, &rows, sha, err), 0, "%s", err);
    cr_assert_eq(rows, 1);
    char path[512];
    snprintf(path, sizeof(path), "%s/out.age", dir);
    _cleanup_free_ char *file = NULL;
    size_t len;
    cr_assert_eq(read_file(path, 1 << 20, &file, &len), 0);
    EVP_Digest(file, len, digest, NULL, EVP_sha256(), NULL);
    cr_assert_eq(memcmp(digest, sha, 32), 0, "resultSha256 is the SHA-256 of the encrypted file");
    mem in = {.p = (uint8_t *)file, .len = len}, plain = {};
    cr_assert_eq(age_decrypt(&reader, 1, mem_read, &in, mem_write, &plain), 0);
    cr_assert_str_eq((char *)plain.p, "city,n,v\r\nLyon,2,15\r\n");
    free(plain.p);
    unlink(path);

    /* another input's file key: the header MAC does not verify; nothing written */
    manifest(json, join, dir, sha_a, "a", sha_b, rcpt);
    cr_assert_lt(run(json, &rows, sha, err), 0);
    cr_assert_str_eq(err, "input b: the file key does not open the file (its header MAC does not verify)");
    cr_assert_eq(access(path, F_OK), -1);
    /* a ciphertext other than the approved one */
    manifest(json, join, dir, sha_b, "b", sha_b, rcpt);
    cr_assert_lt(run(json, &rows, sha, err), 0);
    cr_assert(strstr(err, "input a: the ciphertext's SHA-256 is "), "%s", err);
    cr_assert_eq(access(path, F_OK), -1);
    /* a failing query leaves no output and no temporary */
    manifest(json, "SELECT load_extension('x')", dir, sha_a, "b", sha_b, rcpt);
    cr_assert_lt(run(json, &rows, sha, err), 0);
    cr_assert(strstr(err, "load_extension is not allowed"), "%s", err);
    /* so does one that fails half-way through its result */
    manifest(json, "SELECT id, json(city) FROM patients ORDER BY id", dir, sha_a, "b", sha_b, rcpt);
    cr_assert_lt(run(json, &rows, sha, err), 0);
    cr_assert(strstr(err, "malformed JSON"), "%s", err);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "test $(ls %s | wc -l) -eq 4 && rm -rf %s", dir, dir);
    cr_assert_eq(system(cmd), 0, "only the four inputs remain");
}

Test(job_manifest, is_parsed_strictly)
{
    job_manifest *m = NULL;
    char err[JOB_ERROR_MAX];
    static const char *const bad[] = {
        "[]",
        "{\"query\": \"SELECT 1\"}",
        "{\"query\": \"SELECT 1\", \"inputs\": [], \"recipients\": [], \"output\": \"/tmp/o\"}",
        "{\"query\": \"SELECT 1\", \"extra\": 1}",
        "{\"query\": \"SELECT 1\", \"query\": \"SELECT 2\"}",
    };
    for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
        cr_assert_eq(job_manifest_parse(bad[i], strlen(bad[i]), &m, err), -EINVAL, "%s", bad[i]);
        cr_assert(strncmp(err, "manifest: ", 10) == 0);
    }
#define DUP "{\"query\": \"SELECT 1\", \"output\": \"/tmp/o\", \"recipients\": " \
                      "[\"age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef\"], \"inputs\": [" \
                      "{\"name\": \"a\", \"table\": \"T\", \"schema\": [{\"name\": \"x\", \"type\": \"integer\"}], " \
                      "\"ciphertext\": \"/a\", \"fileKey\": \"/k\", \"sha256\": \"" "%s" "\"}, " \
                      "{\"name\": \"b\", \"table\": \"t\", \"schema\": [{\"name\": \"x\", \"type\": \"blob\"}], " \
                      "\"ciphertext\": \"/a\", \"fileKey\": \"/k\", \"sha256\": \"%s\"}]%s}"
    char json[2048], zero[65];
    memset(zero, '0', 64);
    zero[64] = 0;
    snprintf(json, sizeof(json), DUP, zero, zero, "");
    cr_assert_eq(job_manifest_parse(json, strlen(json), &m, err), -EINVAL);
    cr_assert_str_eq(err, "manifest: inputs[1].schema[0]: a name of 1 to 63 bytes and a type integer, real or text");
    char *blob = strstr(json, "blob");
    memcpy(blob, "real", 4);
    cr_assert_eq(job_manifest_parse(json, strlen(json), &m, err), -EINVAL);
    cr_assert_str_eq(err, "manifest: inputs: table t twice");
    strstr(json, "\"t\"")[1] = 'u';
    cr_assert_eq(job_manifest_parse(json, strlen(json), &m, err), 0, "%s", err);
    cr_assert_eq(m->limits.memory_mib, JOB_MEMORY_MIB_DEFAULT);
    cr_assert_eq(m->n_inputs, 2);
    cr_assert_eq(m->inputs[1].columns[0].type, CSV_REAL);
    job_manifest_free(m);
    snprintf(json, sizeof(json), DUP, zero, zero, ", \"limits\": {\"seconds\": 0}");
    memcpy(strstr(json, "blob"), "text", 4);
    strstr(json, "\"t\"")[1] = 'u';
    cr_assert_eq(job_manifest_parse(json, strlen(json), &m, err), -EINVAL);
    cr_assert(strstr(err, "limits: memoryMiB 1..65536, seconds 1..86400"), "%s", err);
}
