#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "store/store.h"

/* The same tests run on both drivers: this file is built twice, once with
 * STORE_TEST_POSTGRES, where each test gets a new database of the cluster
 * CLOISTER_TEST_POSTGRES_URL names (postgresql:///DB?host=…&user=…, as
 * scripts/pg-test.sh prints it; `meson test` starts one through that
 * script). */
#ifdef STORE_TEST_POSTGRES
#include <libpq-fe.h>
#include <unistd.h>
#endif

static char dir[64];
static char path[128];
static char url[512]; /* the store every test opens */

#ifdef STORE_TEST_POSTGRES
static char db_name[64];

/* Runs SQL on the database DB of the test cluster (the one of the URL
 * when NULL): NULL, or the server's error (static until the next call). */
static const char *pg_admin_try(const char *db, const char *sql)
{
    static char error[512];
    const char *base = getenv("CLOISTER_TEST_POSTGRES_URL");
    const char *keys[] = {"dbname", "dbname", NULL}, *values[] = {base, db, NULL};
    PGconn *c = PQconnectdbParams(keys, values, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(error, sizeof(error), "cannot connect to the test PostgreSQL: %s", PQerrorMessage(c));
        PQfinish(c);
        return error;
    }
    PGresult *res = PQexec(c, sql);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    snprintf(error, sizeof(error), "%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    return ok ? NULL : error;
}

static void pg_admin(const char *db, const char *sql)
{
    const char *error = pg_admin_try(db, sql);
    cr_assert_null(error, "%s", error);
}

/* Drops database NAME, ending its sessions. */
static void pg_drop_database(const char *name)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "DROP DATABASE %s WITH (FORCE)", name);
    /* an autovacuum worker in it is not ours to end: it leaves within moments */
    const char *error = NULL;
    for (int tries = 0; tries < 100 && (error = pg_admin_try("postgres", sql)); tries++)
        usleep(100000);
    cr_assert_null(error, "%s", error);
}
#endif

static void setup(void)
{
    strcpy(dir, "/tmp/cloister-store-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/store.db", dir);
#ifdef STORE_TEST_POSTGRES
    const char *base = getenv("CLOISTER_TEST_POSTGRES_URL");
    if (!base || !*base)
        cr_skip_test("no PostgreSQL to test on: CLOISTER_TEST_POSTGRES_URL is not set and scripts/pg-test.sh "
                     "could not start one (apt install postgresql)");
    const char *query = strchr(base, '?');
    cr_assert(strncmp(base, "postgresql:///", 14) == 0 && query, "CLOISTER_TEST_POSTGRES_URL must look like "
              "postgresql:///DB?host=…: %s", base);
    snprintf(db_name, sizeof(db_name), "cloister_test_%d", (int)getpid());
    char sql[128];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db_name);
    pg_admin(NULL, sql);
    snprintf(url, sizeof(url), "postgresql:///%s%s", db_name, query);
#else
    snprintf(url, sizeof(url), "%s", path);
#endif
}

static void teardown(void)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
#ifdef STORE_TEST_POSTGRES
    if (db_name[0]) {
        pg_drop_database(db_name);
    }
#endif
}

static json_t *service_doc(const char *name, const char *upstream)
{
    return json_pack("{s:s, s:s, s:{s:s}, s:{s:{s:s}}}", "apiVersion", "cloister.dev/v1", "kind",
                     "Service", "metadata", "name", name, "spec", "upstream", "url", upstream);
}

static json_t *credential_doc(const char *name, const char *user)
{
    return json_pack("{s:s,s:s,s:{s:s},s:{s:s}}", "apiVersion", "cloister.dev/v1", "kind", "Credential",
                     "metadata", "name", name, "spec", "user", user);
}

static int write_one(store *s, store_op_type type, const char *name, json_t *doc, int64_t rv,
                     store_op *ret_op)
{
    store_op op = {.type = type, .kind = "Service", .name = name, .doc = doc, .expected_rv = rv};
    store_txn txn = {.ops = &op, .n_ops = 1};
    int e = store_write(s, &txn);
    *ret_op = op;
    return e;
}

static int64_t rv_of(const json_t *doc)
{
    return atoll(json_string_value(json_object_get(json_object_get(doc, "metadata"), "resourceVersion")));
}

TestSuite(store, .init = setup, .fini = teardown);

Test(store, create_get_list_and_metadata)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *in = service_doc("wiki", "http://127.0.0.1:9000");
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "wiki", in, 0, &op), 0);
    cr_assert_eq(op.action, STORE_CREATED);
    json_t *meta = json_object_get(op.result, "metadata");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "resourceVersion")), "1");
    cr_assert_eq(strlen(json_string_value(json_object_get(meta, "uid"))), 36);
    json_decref(op.result);

    cr_assert_eq(write_one(s, STORE_CREATE, "wiki", in, 0, &op), -EEXIST);
    cr_assert_null(op.result);

    json_t *got;
    cr_assert_eq(store_get(s, "Service", "wiki", &got), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(got, "spec"), "upstream"), "url")),
                     "http://127.0.0.1:9000");
    json_decref(got);
    cr_assert_eq(store_get(s, "Service", "nope", &got), -ENOENT);
    cr_assert_eq(store_get(s, "User", "wiki", &got), -ENOENT);

    json_t *items;
    int64_t rev;
    cr_assert_eq(store_list(s, "Service", &items, &rev), 0);
    cr_assert_eq(json_array_size(items), 1);
    cr_assert_eq(rev, 1);
    json_decref(items);
    json_decref(in);
    store_free(s);
}

Test(store, optimistic_concurrency_and_unchanged)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *a = service_doc("wiki", "http://a"), *b = service_doc("wiki", "http://b");
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "wiki", a, 0, &op), 0);
    int64_t rv1 = rv_of(op.result);
    json_decref(op.result);

    cr_assert_eq(write_one(s, STORE_APPLY, "wiki", a, 0, &op), 0);
    cr_assert_eq(op.action, STORE_UNCHANGED);
    cr_assert_eq(rv_of(op.result), rv1);
    json_decref(op.result);

    cr_assert_eq(write_one(s, STORE_REPLACE, "wiki", b, rv1, &op), 0);
    cr_assert_eq(op.action, STORE_CONFIGURED);
    int64_t rv2 = rv_of(op.result);
    cr_assert_gt(rv2, rv1);
    json_decref(op.result);

    /* a writer holding the old version loses */
    cr_assert_eq(write_one(s, STORE_REPLACE, "wiki", a, rv1, &op), -ESTALE);
    cr_assert_eq(write_one(s, STORE_REPLACE, "other", a, 0, &op), -ENOENT);
    cr_assert_eq(write_one(s, STORE_DELETE, "wiki", NULL, rv1, &op), -ESTALE);
    cr_assert_eq(write_one(s, STORE_DELETE, "wiki", NULL, rv2, &op), 0);
    cr_assert_eq(op.action, STORE_DELETED);
    cr_assert_eq(write_one(s, STORE_DELETE, "wiki", NULL, 0, &op), -ENOENT);
    json_decref(a);
    json_decref(b);
    store_free(s);
}

Test(store, failing_transaction_writes_nothing)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *x = service_doc("x", "http://x"), *y = service_doc("y", "http://y");
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "y", y, 0, &op), 0);
    json_decref(op.result);
    store_op ops[2] = {
        {.type = STORE_CREATE, .kind = "Service", .name = "x", .doc = x},
        {.type = STORE_CREATE, .kind = "Service", .name = "y", .doc = y},
    };
    store_txn txn = {.ops = ops, .n_ops = 2};
    cr_assert_eq(store_write(s, &txn), -EEXIST);
    cr_assert_eq(txn.failed_op, 1);
    json_t *got;
    cr_assert_eq(store_get(s, "Service", "x", &got), -ENOENT);
    cr_assert_eq(store_revision(s), 1);
    json_decref(x);
    json_decref(y);
    store_free(s);
}

Test(store, lookup_key_is_unique_and_found)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *d = credential_doc("c1", "admin");
    store_op op = {.type = STORE_CREATE, .kind = "Credential", .name = "c1", .doc = d, .lookup_key = "abc"};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    store_op op2 = {.type = STORE_CREATE, .kind = "Credential", .name = "c2", .doc = d, .lookup_key = "abc"};
    store_txn txn2 = {.ops = &op2, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn2), -EEXIST);
    json_t *got;
    cr_assert_eq(store_get_by_lookup(s, "Credential", "abc", &got), 0);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(got, "metadata"), "name")), "c1");
    json_decref(got);
    cr_assert_eq(store_get_by_lookup(s, "Credential", "abd", &got), -ENOENT);
    json_decref(d);
    store_free(s);
}

/* A client write gives no lookup key and no status: the server's stay, and an
 * identical re-apply is unchanged (the re-apply regression of issue 13). */
Test(store, client_write_keeps_lookup_key_and_status)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *d = credential_doc("c1", "alice");
    json_t *st = json_pack("{s:s, s:i}", "tokenDigest", "d1", "tokenGeneration", 1);
    store_op op = {.type = STORE_APPLY, .kind = "Credential", .name = "c1", .doc = d, .lookup_key = "k1",
                   .status = st};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);

    store_op again = {.type = STORE_APPLY, .kind = "Credential", .name = "c1", .doc = d};
    store_txn txn2 = {.ops = &again, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn2), 0);
    cr_assert_eq(again.action, STORE_UNCHANGED);
    store_txn_clear(&txn2);

    json_object_set_new(json_object_get(d, "spec"), "expiresAt", json_string("2099-01-01T00:00:00Z"));
    store_op changed = {.type = STORE_REPLACE, .kind = "Credential", .name = "c1", .doc = d};
    store_txn txn3 = {.ops = &changed, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn3), 0);
    cr_assert_eq(changed.action, STORE_CONFIGURED);
    cr_assert(json_equal(json_object_get(changed.result, "status"), st));
    store_txn_clear(&txn3);

    json_t *got;
    cr_assert_eq(store_get_by_lookup(s, "Credential", "k1", &got), 0);
    cr_assert(json_equal(json_object_get(got, "status"), st));
    json_decref(got);
    json_decref(st);
    json_decref(d);
    store_free(s);
}

/* An op's uid link reads the linked document inside the transaction, which
 * may create it; a missing one fails the transaction with -ENOLINK. REMOVE
 * deletes what is there and ignores what is not. */
Test(store, uid_link_and_remove)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *cred = credential_doc("c1", "bob");
    json_t *user = json_pack("{s:s,s:s,s:{s:s},s:{}}", "apiVersion", "cloister.dev/v1", "kind", "User",
                             "metadata", "name", "bob", "spec");
    store_op lone = {.type = STORE_CREATE, .kind = "Credential", .name = "c1", .doc = cred, .uid_kind = "User",
                     .uid_name = "bob", .uid_field = "userUid"};
    store_txn t1 = {.ops = &lone, .n_ops = 1};
    cr_assert_eq(store_write(s, &t1), -ENOLINK);

    /* the credential first in the transaction, the user it links to second */
    store_op ops[2] = {lone, {.type = STORE_CREATE, .kind = "User", .name = "bob", .doc = user}};
    store_txn t2 = {.ops = ops, .n_ops = 2};
    cr_assert_eq(store_write(s, &t2), 0);
    char uid[40];
    snprintf(uid, sizeof(uid), "%s",
             json_string_value(json_object_get(json_object_get(ops[1].result, "metadata"), "uid")));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ops[0].result, "status"), "userUid")), uid);
    store_txn_clear(&t2);

    /* linked again to another document of that name: what the old one had is dropped */
    store_op tok = {.type = STORE_REPLACE, .kind = "Credential", .name = "c1", .doc = cred,
                    .status = json_pack("{s:s, s:s}", "userUid", uid, "tokenDigest", "d1")};
    store_txn t4 = {.ops = &tok, .n_ops = 1};
    cr_assert_eq(store_write(s, &t4), 0);
    store_txn_clear(&t4);
    json_decref(tok.status);
    store_op same_user = lone;
    store_txn t5 = {.ops = &same_user, .n_ops = 1};
    cr_assert_eq(store_write(s, &t5), -EEXIST); /* CREATE of a present one */
    same_user.type = STORE_APPLY;
    cr_assert_eq(store_write(s, &t5), 0);
    cr_assert_eq(same_user.action, STORE_UNCHANGED); /* the same uid: the token stays */
    store_txn_clear(&t5);
    store_op del_user = {.type = STORE_DELETE, .kind = "User", .name = "bob"};
    store_op new_user = {.type = STORE_CREATE, .kind = "User", .name = "bob", .doc = user};
    store_op rebind = same_user;
    store_op again[3] = {del_user, new_user, rebind};
    store_txn t6 = {.ops = again, .n_ops = 3};
    cr_assert_eq(store_write(s, &t6), 0);
    const char *uid2 = json_string_value(json_object_get(json_object_get(again[1].result, "metadata"), "uid"));
    cr_assert_str_neq(uid2, uid);
    json_t *want = json_pack("{s:s}", "userUid", uid2);
    cr_assert(json_equal(json_object_get(again[2].result, "status"), want));
    json_decref(want);
    store_txn_clear(&t6);

    store_op rm[2] = {{.type = STORE_REMOVE, .kind = "Credential", .name = "c1"},
                      {.type = STORE_REMOVE, .kind = "Credential", .name = "absent"}};
    store_txn t3 = {.ops = rm, .n_ops = 2};
    cr_assert_eq(store_write(s, &t3), 0);
    cr_assert_eq(rm[0].action, STORE_DELETED);
    cr_assert_eq(rm[1].action, STORE_UNCHANGED);
    json_t *got;
    cr_assert_eq(store_get(s, "Credential", "c1", &got), -ENOENT);
    json_decref(cred);
    json_decref(user);
    store_free(s);
}

Test(store, change_feed_in_order_and_survives_reopen)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *a = service_doc("a", "http://a"), *a2 = service_doc("a", "http://a2");
    store_op op;
    write_one(s, STORE_CREATE, "a", a, 0, &op);
    json_decref(op.result);
    write_one(s, STORE_APPLY, "a", a2, 0, &op);
    json_decref(op.result);
    write_one(s, STORE_DELETE, "a", NULL, 0, &op);
    json_t *ev;
    cr_assert_eq(store_changes_since(s, "Service", 0, 100, &ev), 0);
    cr_assert_eq(json_array_size(ev), 3);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ev, 0), "type")), "ADDED");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ev, 1), "type")), "MODIFIED");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(ev, 2), "type")), "DELETED");
    json_decref(ev);
    cr_assert_eq(store_changes_since(s, "Service", 2, 100, &ev), 0);
    cr_assert_eq(json_array_size(ev), 1);
    json_decref(ev);
    cr_assert_eq(store_changes_since(s, "User", 0, 100, &ev), 0);
    cr_assert_eq(json_array_size(ev), 0);
    json_decref(ev);
    store_free(s);

    cr_assert_eq(store_open(url, &s), 0);
    cr_assert_eq(store_revision(s), 3);
    json_decref(a);
    json_decref(a2);
    store_free(s);
}

/* Writes a document of KIND named NAME (an empty spec). */
static void put_kind(store *s, const char *kind, const char *name, store_op_type type)
{
    json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{}}", "apiVersion", "cloister.dev/v1", "kind", kind, "metadata",
                            "name", name, "spec");
    store_op op = {.type = type, .kind = kind, .name = name, .doc = type == STORE_DELETE ? NULL : doc};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    json_decref(doc);
}

Test(store, several_kinds_listed_together_and_changes_merged_by_revision)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    put_kind(s, "User", "u1", STORE_CREATE);     /* 1 */
    put_kind(s, "Group", "g1", STORE_CREATE);    /* 2 */
    put_kind(s, "Secret", "s1", STORE_CREATE);   /* 3: not asked for */
    put_kind(s, "User", "u0", STORE_CREATE);     /* 4 */
    put_kind(s, "Group", "g1", STORE_DELETE);    /* 5 */
    put_kind(s, "Session", "x1", STORE_CREATE);  /* 6 */
    const char *kinds[] = {"User", "Group", "Session"};

    json_t *items;
    int64_t rev;
    cr_assert_eq(store_list_kinds(s, kinds, 3, &items, &rev), 0);
    cr_assert_eq(rev, 6);
    cr_assert_eq(json_array_size(items), 3); /* Session x1, User u0, User u1: by kind, then name */
    const char *want[][2] = {{"Session", "x1"}, {"User", "u0"}, {"User", "u1"}};
    for (size_t i = 0; i < 3; i++) {
        json_t *d = json_array_get(items, i);
        cr_expect_str_eq(json_string_value(json_object_get(d, "kind")), want[i][0]);
        cr_expect_str_eq(json_string_value(json_object_get(json_object_get(d, "metadata"), "name")), want[i][1]);
    }
    json_decref(items);

    json_t *ev;
    cr_assert_eq(store_changes_since_kinds(s, kinds, 3, 0, 100, &ev), 0);
    int64_t want_rev[] = {1, 2, 4, 5, 6};
    cr_assert_eq(json_array_size(ev), 5);
    for (size_t i = 0; i < 5; i++)
        cr_expect_eq(json_integer_value(json_object_get(json_array_get(ev, i), "revision")), want_rev[i]);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(ev, 3), "type")), "DELETED");
    json_decref(ev);
    cr_assert_eq(store_changes_since_kinds(s, kinds, 3, 2, 2, &ev), 0); /* after 2, at most 2 */
    cr_assert_eq(json_array_size(ev), 2);
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(ev, 0), "revision")), 4);
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(ev, 1), "revision")), 5);
    json_decref(ev);
    cr_assert_eq(store_changes_since_kinds(s, NULL, 0, 0, 100, &ev), 0); /* every kind */
    cr_expect_eq(json_array_size(ev), 6);
    json_decref(ev);

    const char *too_many[STORE_KINDS_MAX + 1] = {0};
    for (size_t i = 0; i <= STORE_KINDS_MAX; i++)
        too_many[i] = "User";
    cr_expect_eq(store_list_kinds(s, too_many, STORE_KINDS_MAX + 1, &items, &rev), -EINVAL);
    cr_expect_eq(store_list_kinds(s, kinds, 0, &items, &rev), -EINVAL);
    cr_expect_eq(store_changes_since_kinds(s, too_many, STORE_KINDS_MAX + 1, 0, 10, &ev), -EINVAL);
    store_free(s);
}

typedef struct {
    store *s;
    int id;
} writer_arg;

static void *concurrent_writer(void *p)
{
    writer_arg *w = p;
    for (int i = 0; i < 200; i++) {
        char name[32];
        snprintf(name, sizeof(name), "svc-%d-%d", w->id, i);
        json_t *d = service_doc(name, "http://x");
        store_op op = {.type = STORE_CREATE, .kind = "Service", .name = name, .doc = d};
        store_txn txn = {.ops = &op, .n_ops = 1};
        cr_assert_eq(store_write(w->s, &txn), 0);
        store_txn_clear(&txn);
        json_decref(d);
    }
    return NULL;
}

/* Many writers at once share commits; every write lands with its own revision. */
Test(store, group_commit_keeps_every_write)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    pthread_t t[8];
    writer_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (writer_arg){s, i};
        pthread_create(&t[i], NULL, concurrent_writer, &args[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    json_t *items;
    cr_assert_eq(store_list(s, "Service", &items, NULL), 0);
    cr_assert_eq(json_array_size(items), 1600);
    cr_assert_eq(store_revision(s), 1600);
    json_decref(items);
    store_free(s);
}

Test(store, url_selects_the_driver)
{
    store *s;
    char sqlite_url[160];
    snprintf(sqlite_url, sizeof(sqlite_url), "sqlite:%s", path);
    cr_assert_eq(store_open(sqlite_url, &s), 0);
    store_free(s);
    cr_assert_eq(store_open(path, &s), 0); /* a plain path is SQLite */
    store_free(s);
    cr_assert_eq(store_open("mysql://db.example/cloister", &s), -EPROTONOSUPPORT);
    cr_assert_eq(store_open("sqlite:/nonexistent-dir/x/store.db", &s) < 0, true);
    cr_assert_eq(store_open("postgresql:///cloister?host=/nonexistent-dir", &s) < 0, true);
}

Test(store, url_redacted_for_logs)
{
    char out[160];
    store_url_redact("postgres://cloister:s3cret@db.internal:5432/cloister?sslmode=verify-full", out, sizeof(out));
    cr_assert_str_eq(out, "postgres://cloister:***@db.internal:5432/cloister?sslmode=verify-full");
    store_url_redact("postgresql:///cloister?host=/run/pg&user=c&password=s3cret&sslmode=disable", out,
                     sizeof(out));
    cr_assert_str_eq(out, "postgresql:///cloister?host=/run/pg&user=c&password=***&sslmode=disable");
    store_url_redact("sqlite:/var/lib/cloister/store.db", out, sizeof(out));
    cr_assert_str_eq(out, "sqlite:/var/lib/cloister/store.db");
    /* found by fuzz-daemon-config: "password=" at the very start was read one byte before the buffer */
    store_url_redact("password=x://h", out, sizeof(out));
    cr_assert_str_eq(out, "password=x://h");
    /* a look-alike parameter before the real one does not hide it */
    store_url_redact("postgresql:///c?xpassword=a&password=s3cret", out, sizeof(out));
    cr_assert_str_eq(out, "postgresql:///c?xpassword=a&password=***");
    /* no room for "***": the URL is cut before the password, never shown */
    char small[32];
    store_url_redact("postgresql:///c?password=ab&sslmode=x", small, sizeof(small));
    cr_assert_eq(strstr(small, "ab&") == NULL, true, "%s", small);
}

/* The epoch is made once with the database and read again on reopen. */
Test(store, epoch_is_kept_with_the_database)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    uint64_t epoch = store_epoch(s);
    cr_assert_neq(epoch, 0);
    store_free(s);
    cr_assert_eq(store_open(url, &s), 0);
    cr_assert_eq(store_epoch(s), epoch);
    store_free(s);
}

/* One holder at a time; a new holder takes a larger token, and a write
 * fenced by the old token is refused inside its transaction. */
Test(store, lease_and_fencing_token)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    int64_t t1, t2, t3;
    cr_assert_eq(store_lease_acquire(s, "controller", "a", 60000, &t1), 0);
    cr_assert_eq(store_lease_acquire(s, "controller", "a", 60000, &t2), 0, "the holder acquires again");
    cr_assert_eq(t2, t1, "and keeps its token");
    cr_assert_eq(store_lease_acquire(s, "controller", "b", 60000, &t2), -EBUSY);
    cr_assert_eq(store_lease_renew(s, "controller", "a", t1, 1), 0);
    /* expired after 1 ms: b takes it with a new token */
    int e;
    while ((e = store_lease_acquire(s, "controller", "b", 60000, &t2)) == -EBUSY)
        ;
    cr_assert_eq(e, 0);
    cr_assert_gt(t2, t1);
    cr_assert_eq(store_lease_renew(s, "controller", "a", t1, 60000), -ESTALE, "a was deposed");
    cr_assert_eq(store_lease_release(s, "controller", "a", t1), -ESTALE);

    json_t *d = service_doc("late", "http://x");
    store_op op = {.type = STORE_CREATE, .kind = "Service", .name = "late", .doc = d};
    store_txn txn = {.ops = &op, .n_ops = 1, .fence_lease = "controller", .fence_token = t1};
    cr_assert_eq(store_write(s, &txn), -ENOLCK, "the deposed holder's late write is refused");
    json_t *got;
    cr_assert_eq(store_get(s, "Service", "late", &got), -ENOENT);
    txn.fence_token = t2;
    cr_assert_eq(store_write(s, &txn), 0, "the holder's write goes through");
    store_txn_clear(&txn);

    cr_assert_eq(store_lease_release(s, "controller", "b", t2), 0);
    cr_assert_eq(store_lease_acquire(s, "controller", "a", 60000, &t3), 0, "released: free at once");
    cr_assert_gt(t3, t2);
    cr_assert_eq(store_lease_acquire(s, "", "a", 1000, &t3), -EINVAL);
    cr_assert_eq(store_lease_acquire(s, "x", "a", 0, &t3), -EINVAL);
    json_decref(d);
    store_free(s);
}

typedef struct counter_adder {
    store *s;
    int64_t counts[50];
    int error;
} counter_adder;

static void *add_to_counter(void *arg)
{
    counter_adder *a = arg;
    int64_t left;
    for (size_t i = 0; i < 50 && !a->error; i++)
        a->error = store_counter_add(a->s, "limit/x", 60000, &a->counts[i], &left);
    return NULL;
}

/* Counters: adds from two handles (two processes on the database) at once
 * each count exactly once, and a window that ended starts again at 1. */
Test(store, counter_counts_every_add_once_and_windows_end)
{
    store *s1, *s2;
    cr_assert_eq(store_open(url, &s1), 0);
    cr_assert_eq(store_open(url, &s2), 0);
    counter_adder a[4] = {{.s = s1}, {.s = s2}, {.s = s1}, {.s = s2}};
    pthread_t th[4];
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, add_to_counter, &a[i]), 0);
    bool seen[201] = {false};
    for (size_t i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(a[i].error, 0);
        for (size_t j = 0; j < 50; j++) {
            cr_assert(a[i].counts[j] >= 1 && a[i].counts[j] <= 200, "count %lld", (long long)a[i].counts[j]);
            cr_assert(!seen[a[i].counts[j]], "count %lld returned twice", (long long)a[i].counts[j]);
            seen[a[i].counts[j]] = true;
        }
    }
    int64_t count, left;
    cr_assert_eq(store_counter_add(s2, "limit/x", 60000, &count, &left), 0);
    cr_assert_eq(count, 201);
    cr_assert(left > 0 && left <= 60000, "left %lld", (long long)left);

    /* a window of 20 ms ends: the first add after it starts a new one */
    cr_assert_eq(store_counter_add(s1, "limit/y", 20, &count, &left), 0);
    cr_assert_eq(count, 1);
    int64_t previous;
    do {
        previous = count;
        cr_assert_eq(store_counter_add(s1, "limit/y", 20, &count, &left), 0);
        cr_assert(count == previous + 1 || count == 1, "count %lld after %lld", (long long)count,
                  (long long)previous);
    } while (count != 1);
    cr_assert_eq(store_counter_add(s1, "limit/z", 60000, &count, &left), 0);
    cr_assert_eq(count, 1, "another name, another counter");
    cr_assert_eq(store_counter_add(s1, "", 1000, &count, &left), -EINVAL);
    cr_assert_eq(store_counter_add(s1, "x", 0, &count, &left), -EINVAL);
    store_free(s1);
    store_free(s2);
}

Test(store, list_prefix_reads_a_range_of_names)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    const char *names[] = {"a-1", "ab-2", "ab-1", "ac", "ab", "b"};
    store_op op;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        json_t *doc = service_doc(names[i], "http://127.0.0.1:9000");
        cr_assert_eq(write_one(s, STORE_CREATE, names[i], doc, 0, &op), 0);
        json_decref(op.result);
        json_decref(doc);
    }
    json_t *cred = credential_doc("ab-3", "alice");
    store_op c = {.type = STORE_CREATE, .kind = "Credential", .name = "ab-3", .doc = cred};
    store_txn txn = {.ops = &c, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    json_decref(cred);

    json_t *items;
    int64_t rev;
    cr_assert_eq(store_list_prefix(s, "Service", "ab-", &items, &rev), 0);
    cr_assert_eq(rev, 7);
    cr_assert_eq(json_array_size(items), 2, "another kind's ab-3 and other names are not listed");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_array_get(items, 0), "metadata"), "name")),
                     "ab-1");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_array_get(items, 1), "metadata"), "name")),
                     "ab-2");
    json_decref(items);
    cr_assert_eq(store_list_prefix(s, "Service", "a", &items, NULL), 0);
    cr_assert_eq(json_array_size(items), 5);
    json_decref(items);
    cr_assert_eq(store_list_prefix(s, "Service", "zz", &items, NULL), 0);
    cr_assert_eq(json_array_size(items), 0);
    json_decref(items);
    cr_assert_eq(store_list_prefix(s, "Service", "", &items, NULL), -EINVAL);
    cr_assert_eq(store_list_prefix(s, "Service", NULL, &items, NULL), -EINVAL);
    store_free(s);
}

/* The tests' guard: a rule like the api's host claims, on upstream URLs:
 * refuses (-EADDRINUSE, naming the op) a transaction writing a Service
 * whose spec.upstream.url another Service has. GUARD_DATA is the number of
 * Services it saw on its last run. */
static const char *upstream_of(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(doc, "spec"), "upstream"), "url"));
}

static int unique_upstream_guard(store_txn *txn, store_view *view, size_t *ret_failed_op)
{
    json_t *services;
    int e = store_view_list(view, "Service", &services);
    if (e < 0)
        return e;
    *(size_t *)txn->guard_data = json_array_size(services);
    for (size_t i = 0; e == 0 && i < txn->n_ops; i++) {
        size_t j;
        const json_t *other;
        json_array_foreach(services, j, other)
        {
            const char *name = json_string_value(json_object_get(json_object_get(other, "metadata"), "name"));
            if (txn->ops[i].doc && strcmp(name, txn->ops[i].name) != 0 &&
                strcmp(upstream_of(other), upstream_of(txn->ops[i].doc)) == 0) {
                *ret_failed_op = i;
                e = -EADDRINUSE;
            }
        }
    }
    json_decref(services);
    return e;
}

/* A guard sees the store as its transaction leaves it, and its refusal
 * undoes the whole transaction, naming the op it chose. */
Test(store, guard_checks_what_the_transaction_leaves)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *a = service_doc("a", "http://x"), *b = service_doc("b", "http://x"), *c = service_doc("c", "http://c");
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "a", a, 0, &op), 0);
    json_decref(op.result);
    size_t seen = 0;
    store_op ops[2] = {
        {.type = STORE_CREATE, .kind = "Service", .name = "c", .doc = c},
        {.type = STORE_CREATE, .kind = "Service", .name = "b", .doc = b},
    };
    store_txn txn = {.ops = ops, .n_ops = 2, .guard = unique_upstream_guard, .guard_data = &seen};
    cr_assert_eq(store_write(s, &txn), -EADDRINUSE);
    cr_assert_eq(txn.failed_op, 1);
    cr_assert_eq(seen, 3, "the guard saw a and the transaction's own c and b, not %zu", seen);
    json_t *got;
    cr_assert_eq(store_get(s, "Service", "c", &got), -ENOENT);
    cr_assert_eq(store_get(s, "Service", "b", &got), -ENOENT);
    cr_assert_eq(store_revision(s), 1);
    /* the same transaction without the clash is kept */
    json_object_set_new(json_object_get(json_object_get(b, "spec"), "upstream"), "url", json_string("http://b"));
    txn = (store_txn){.ops = ops, .n_ops = 2, .guard = unique_upstream_guard, .guard_data = &seen};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    cr_assert_eq(store_get(s, "Service", "b", &got), 0);
    json_decref(got);
    cr_assert_eq(store_revision(s), 3);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    store_free(s);
}

typedef struct {
    store *s;
    const char *name, *upstream;
    pthread_barrier_t *start;
    int result;
} guarded_arg;

static void *guarded_writer(void *p)
{
    guarded_arg *g = p;
    json_t *d = service_doc(g->name, g->upstream);
    size_t seen;
    store_op op = {.type = STORE_CREATE, .kind = "Service", .name = g->name, .doc = d};
    store_txn txn = {.ops = &op, .n_ops = 1, .guard = unique_upstream_guard, .guard_data = &seen};
    pthread_barrier_wait(g->start);
    g->result = store_write(g->s, &txn);
    store_txn_clear(&txn);
    json_decref(d);
    return NULL;
}

#define GUARDED_WRITERS 4

/* Writers at once, each a Service with the same upstream under the guard:
 * whatever the interleaving (in one batch of the writer, or, on
 * PostgreSQL, through two handles as two replicas would), exactly one
 * wins. An SQLite file has one process's handle. */
Test(store, guarded_writes_at_once_one_wins)
{
    store *handles[2];
    cr_assert_eq(store_open(url, &handles[0]), 0);
#ifdef STORE_TEST_POSTGRES
    cr_assert_eq(store_open(url, &handles[1]), 0);
#else
    handles[1] = handles[0];
#endif
    for (int round = 0; round < 20; round++) {
        char upstream[32], names[GUARDED_WRITERS][16];
        snprintf(upstream, sizeof(upstream), "http://round-%d", round);
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, GUARDED_WRITERS);
        guarded_arg g[GUARDED_WRITERS];
        pthread_t t[GUARDED_WRITERS];
        for (int i = 0; i < GUARDED_WRITERS; i++) {
            snprintf(names[i], sizeof(names[i]), "w%d-%d", i, round);
            g[i] = (guarded_arg){handles[i % 2], names[i], upstream, &start, 1};
            pthread_create(&t[i], NULL, guarded_writer, &g[i]);
        }
        int won = 0;
        for (int i = 0; i < GUARDED_WRITERS; i++) {
            pthread_join(t[i], NULL);
            cr_assert(g[i].result == 0 || g[i].result == -EADDRINUSE, "round %d: writer %d: %d", round, i,
                      g[i].result);
            won += g[i].result == 0;
        }
        pthread_barrier_destroy(&start);
        cr_assert_eq(won, 1, "round %d: %d writers won", round, won);
    }
    json_t *items;
    cr_assert_eq(store_list(handles[1], "Service", &items, NULL), 0);
    cr_assert_eq(json_array_size(items), 20);
    json_decref(items);
    if (handles[1] != handles[0])
        store_free(handles[1]);
    store_free(handles[0]);
}

#ifdef STORE_TEST_POSTGRES
#include <time.h>

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Two handles on one database (two api replicas): a write through one
 * reaches the other's revision (NOTIFY) and feed within a second. */
Test(store, write_seen_by_another_handles_feed)
{
    store *a, *b;
    cr_assert_eq(store_open(url, &a), 0);
    cr_assert_eq(store_open(url, &b), 0);
    cr_assert_eq(store_epoch(a), store_epoch(b));
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof(name), "svc-%d", i);
        json_t *d = service_doc(name, "http://x");
        store_op op;
        uint64_t t0 = mono_ms();
        cr_assert_eq(write_one(a, STORE_CREATE, name, d, 0, &op), 0);
        int64_t rv = rv_of(op.result);
        json_decref(op.result);
        json_decref(d);
        while (store_revision(b) < rv && mono_ms() - t0 < 1000)
            ;
        cr_assert_geq(store_revision(b), rv, "the other handle saw revision %lld within 1 s", (long long)rv);
        json_t *ev;
        cr_assert_eq(store_changes_since(b, "Service", rv - 1, 10, &ev), 0);
        cr_assert_eq(json_array_size(ev), 1);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(ev, 0), "revision")), rv);
        json_decref(ev);
    }
    store_free(a);
    store_free(b);
}

typedef struct {
    store *s;
    int64_t rv;
    const char *upstream;
    int result;
} cas_arg;

static void *cas_writer(void *p)
{
    cas_arg *c = p;
    json_t *d = service_doc("wiki", c->upstream);
    store_op op;
    c->result = write_one(c->s, STORE_REPLACE, "wiki", d, c->rv, &op);
    json_decref(op.result);
    json_decref(d);
    return NULL;
}

/* Conflicting updates from two handles, each holding the same version:
 * exactly one wins, the other gets -ESTALE. */
Test(store, conflicting_updates_from_two_handles_one_wins)
{
    store *a, *b;
    cr_assert_eq(store_open(url, &a), 0);
    cr_assert_eq(store_open(url, &b), 0);
    for (int round = 0; round < 20; round++) {
        json_t *d = service_doc("wiki", "http://base"), *got;
        store_op op;
        cr_assert_eq(write_one(a, STORE_APPLY, "wiki", d, 0, &op), 0);
        json_decref(op.result);
        json_decref(d);
        cr_assert_eq(store_get(b, "Service", "wiki", &got), 0);
        int64_t rv = rv_of(got);
        json_decref(got);
        cas_arg ca = {a, rv, "http://a", 1}, cb = {b, rv, "http://b", 1};
        pthread_t ta, tb;
        pthread_create(&ta, NULL, cas_writer, &ca);
        pthread_create(&tb, NULL, cas_writer, &cb);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        cr_assert((ca.result == 0 && cb.result == -ESTALE) || (ca.result == -ESTALE && cb.result == 0),
                  "round %d: %d and %d", round, ca.result, cb.result);
    }
    /* the feed stayed gap-free: every revision once */
    json_t *ev;
    cr_assert_eq(store_changes_since(b, NULL, 0, 1000, &ev), 0);
    for (size_t i = 0; i < json_array_size(ev); i++)
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(ev, i), "revision")), (json_int_t)i + 1);
    cr_assert_eq((int64_t)json_array_size(ev), store_revision(a));
    json_decref(ev);
    store_free(a);
    store_free(b);
}

typedef struct {
    store *s;
    int acked;
    _Atomic bool stop;
} stream_arg;

static void *write_stream(void *p)
{
    stream_arg *w = p;
    for (int i = 0; !w->stop; i++) {
        char name[32];
        snprintf(name, sizeof(name), "stream-%d", i);
        json_t *d = service_doc(name, "http://x");
        store_op op;
        if (write_one(w->s, STORE_CREATE, name, d, 0, &op) == 0)
            w->acked = i + 1;
        else
            cr_assert_fail("write %d failed", i);
        json_decref(op.result);
        json_decref(d);
    }
    return NULL;
}

/* Every connection of the store is killed (as when PostgreSQL restarts)
 * while writes stream: they reconnect; every acknowledged write is there
 * and the other handle's feed goes on. */
Test(store, connections_killed_while_writing_lose_no_acknowledged_write)
{
    store *a, *b;
    cr_assert_eq(store_open(url, &a), 0);
    cr_assert_eq(store_open(url, &b), 0);
    stream_arg w = {.s = a};
    pthread_t t;
    pthread_create(&t, NULL, write_stream, &w);
    for (int kill = 0; kill < 3; kill++) {
        int start = w.acked;
        while (w.acked < start + 20)
            ;
        char sql[200];
        snprintf(sql, sizeof(sql),
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s' AND pid <> "
                 "pg_backend_pid()",
                 db_name);
        pg_admin("postgres", sql);
    }
    int start = w.acked;
    while (w.acked < start + 20)
        ;
    w.stop = true;
    pthread_join(t, NULL);
    json_t *items;
    cr_assert_eq(store_list(b, "Service", &items, NULL), 0, "the reader reconnects");
    cr_assert_eq((int)json_array_size(items), w.acked, "every acknowledged write is there, no other");
    json_decref(items);
    uint64_t t0 = mono_ms();
    while (store_revision(b) < w.acked && mono_ms() - t0 < 3000)
        ;
    cr_assert_eq(store_revision(b), w.acked, "the listener reconnected and caught up");
    store_free(a);
    store_free(b);
}
#endif

#ifdef STORE_TEST_POSTGRES
/* The database is dropped and made again under a running store (a reset):
 * the store makes the schema again, its epoch changes, and a reader asking
 * for changes after a revision the new database does not have must list
 * again. */
Test(store, a_reset_database_changes_the_epoch_and_readers_list_again)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    uint64_t epoch = store_epoch(s);
    for (int i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof(name), "s%d", i);
        json_t *d = service_doc(name, "http://x");
        store_op op;
        cr_assert_eq(write_one(s, STORE_CREATE, name, d, 0, &op), 0);
        json_decref(op.result);
        json_decref(d);
    }
    char sql[128];
    pg_drop_database(db_name);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db_name);
    pg_admin("postgres", sql);

    json_t *d = service_doc("after-reset", "http://x"), *ev;
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "after-reset", d, 0, &op), 0, "the writer reconnects to the new one");
    cr_assert_eq(rv_of(op.result), 1, "revisions start over");
    json_decref(op.result);
    json_decref(d);
    uint64_t deadline = mono_ms() + 3000;
    while (store_epoch(s) == epoch && mono_ms() < deadline)
        ;
    cr_assert_neq(store_epoch(s), epoch, "the listener saw the new epoch");
    cr_assert_eq(store_revision(s), 1, "the revision follows the new database down");
    cr_assert_eq(store_changes_since(s, "Service", 3, 10, &ev), -ESTALE, "revision 3 is not this database's");
    cr_assert_eq(store_changes_since(s, "Service", 0, 10, &ev), 0);
    cr_assert_eq(json_array_size(ev), 1);
    json_decref(ev);
    /* the new database passes the old head: a watcher of the old epoch at
     * revision 3 is told to list again, never handed revisions 4 and 5 */
    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof(name), "n%d", i);
        d = service_doc(name, "http://x");
        cr_assert_eq(write_one(s, STORE_CREATE, name, d, 0, &op), 0);
        json_decref(op.result);
        json_decref(d);
    }
    const char *kinds[] = {"Service"};
    cr_assert_eq(store_changes_since_epoch(s, epoch, kinds, 1, 3, 10, &ev), -ESTALE);
    cr_assert_eq(store_changes_since_epoch(s, store_epoch(s), kinds, 1, 3, 10, &ev), 0);
    cr_assert_eq(json_array_size(ev), 2);
    json_decref(ev);
    store_free(s);
}

/* A copy of the database (CREATE DATABASE … TEMPLATE, as a restore into
 * another database would be) put in its place keeps the schema's epoch row
 * but is another database: a new epoch all the same. */
Test(store, a_database_copied_into_place_is_a_new_epoch)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    uint64_t epoch = store_epoch(s);
    store_free(s);
    char sql[200];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s_copy TEMPLATE %s", db_name, db_name);
    pg_admin("postgres", sql);
    pg_drop_database(db_name);
    snprintf(sql, sizeof(sql), "ALTER DATABASE %s_copy RENAME TO %s", db_name, db_name);
    pg_admin("postgres", sql);
    cr_assert_eq(store_open(url, &s), 0);
    cr_assert_neq(store_epoch(s), epoch);
    store_free(s);
}
#endif

/* A watcher's changes are of the epoch it listed in: another epoch is
 * told to list again (-ESTALE), the store's own reads on. */
Test(store, changes_since_epoch_checks_the_epoch)
{
    store *s;
    cr_assert_eq(store_open(url, &s), 0);
    json_t *d = service_doc("a", "http://x"), *ev;
    store_op op;
    cr_assert_eq(write_one(s, STORE_CREATE, "a", d, 0, &op), 0);
    json_decref(op.result);
    json_decref(d);
    const char *kinds[] = {"Service"};
    cr_assert_eq(store_changes_since_epoch(s, store_epoch(s), kinds, 1, 0, 10, &ev), 0);
    cr_assert_eq(json_array_size(ev), 1);
    json_decref(ev);
    cr_assert_eq(store_changes_since_epoch(s, store_epoch(s) ^ 1, kinds, 1, 0, 10, &ev), -ESTALE);
    cr_assert_eq(store_changes_since_epoch(s, store_epoch(s), NULL, 0, 0, 10, &ev), 0, "every kind");
    json_decref(ev);
    store_free(s);
}
