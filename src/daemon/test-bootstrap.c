/* The bootstrap identities on a temporary SQLite store, as cloisterd's first
 * and later starts make them: the admin, proxy and runner identities with
 * their 0600 token files on the first start; nothing changed on the next;
 * a lost token file replaced by a new token whose digest the credential
 * stores, its token generation bumped (the old token's sessions end),
 * without touching what users changed; a role's workload documents brought
 * back to this version's. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/bootstrap-names.h"
#include "auth/credential.h"
#include "auth/session.h"
#include "basic/fileio.h"
#include "daemon/bootstrap.h"
#include "store/store.h"

static char dir[] = "/tmp/cloister-test-bootstrap-XXXXXX";
static char admin_token[200], proxy_token[200], runner_token[200];
static store *s;

static void open_store(void)
{
    char url[200];
    snprintf(url, sizeof(url), "sqlite:%s/store.db", dir);
    cr_assert_eq(store_open(url, &s), 0);
}

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
    snprintf(admin_token, sizeof(admin_token), "%s/admin.token", dir);
    snprintf(proxy_token, sizeof(proxy_token), "%s/proxy.token", dir);
    snprintf(runner_token, sizeof(runner_token), "%s/runner.token", dir);
    open_store();
}

static void teardown(void)
{
    store_free(s);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(bootstrap, .init = setup, .fini = teardown);

/* cloisterd's first_start(), as far as the store goes */
static void start(void)
{
    cr_assert_eq(bootstrap_admin(s, admin_token), 0);
    cr_assert_eq(bootstrap_proxy(s, proxy_token), 0);
    cr_assert_eq(bootstrap_runner(s, runner_token), 0);
}

static char *slurp(const char *path)
{
    char *data = NULL;
    size_t len;
    cr_assert_eq(read_file(path, 4096, &data, &len), 0, "read %s", path);
    return data;
}

static json_t *get(const char *kind, const char *name)
{
    json_t *doc = NULL;
    cr_assert_eq(store_get(s, kind, name, &doc), 0, "%s %s is stored", kind, name);
    return doc;
}

static const char *status_string(const json_t *doc, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, "status"), field));
}

/* The token in TOKEN_PATH (0600) is credential CRED's: the stored digest
 * and lookup key are its, and the credential is bound to USER's uid. */
static void expect_token_of(const char *token_path, const char *cred, const char *user)
{
    struct stat st;
    cr_assert_eq(stat(token_path, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600, "%s is the daemon's alone", token_path);
    char *token = slurp(token_path);
    cr_assert_eq(strlen(token), CREDENTIAL_TOKEN_LEN);
    char digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(token, strlen(token), digest, key);
    json_t *c = get("Credential", cred), *u = get("User", user), *by_key = NULL;
    cr_assert_str_eq(status_string(c, "tokenDigest"), digest);
    cr_assert_eq(store_get_by_lookup(s, "Credential", key, &by_key), 0, "found by the token's lookup key");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(by_key, "metadata"), "name")), cred);
    cr_assert_str_eq(status_string(c, "userUid"), json_string_value(json_object_get(json_object_get(u, "metadata"), "uid")));
    json_decref(by_key);
    json_decref(c);
    json_decref(u);
    free(token);
}

Test(bootstrap, first_start_writes_three_identities_and_their_tokens)
{
    start();
    expect_token_of(admin_token, BOOTSTRAP_ADMIN_CREDENTIAL, BOOTSTRAP_ADMIN_USER);
    expect_token_of(proxy_token, BOOTSTRAP_PROXY_CREDENTIAL, BOOTSTRAP_PROXY_USER);
    expect_token_of(runner_token, BOOTSTRAP_RUNNER_CREDENTIAL, BOOTSTRAP_RUNNER_USER);
    char *a = slurp(admin_token), *p = slurp(proxy_token), *r = slurp(runner_token);
    cr_assert(strcmp(a, p) && strcmp(a, r) && strcmp(p, r), "three different tokens");
    free(a);
    free(p);
    free(r);

    json_t *group = get("Group", BOOTSTRAP_ADMIN_GROUP), *admin = get("User", BOOTSTRAP_ADMIN_USER);
    json_t *proxy = get("User", BOOTSTRAP_PROXY_USER), *runner_policy = get("Policy", BOOTSTRAP_RUNNER_POLICY);
    json_t *admin_policy = get("Policy", BOOTSTRAP_ADMIN_POLICY), *cred = get("Credential", BOOTSTRAP_ADMIN_CREDENTIAL);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(json_object_get(group, "spec"), "policies"), 0)),
                     BOOTSTRAP_ADMIN_POLICY);
    cr_assert_str_eq(json_string_value(json_array_get(json_object_get(json_object_get(admin, "spec"), "groups"), 0)),
                     BOOTSTRAP_ADMIN_GROUP);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(proxy, "spec"), "type")), "workload");
    cr_assert(json_object_get(runner_policy, "spec"));
    cr_assert(json_object_get(admin_policy, "spec"));
    cr_assert_eq(auth_credential_generation(cred), 1, "the first token is generation 1");
    json_decref(group);
    json_decref(admin);
    json_decref(proxy);
    json_decref(runner_policy);
    json_decref(admin_policy);
    json_decref(cred);
}

Test(bootstrap, second_start_changes_nothing)
{
    start();
    char *a = slurp(admin_token), *p = slurp(proxy_token), *r = slurp(runner_token);
    int64_t revision = store_revision(s);
    /* the next start is a new process on the same files */
    store_free(s);
    open_store();
    start();
    cr_assert_eq(store_revision(s), revision, "no write to the store");
    char *a2 = slurp(admin_token), *p2 = slurp(proxy_token), *r2 = slurp(runner_token);
    cr_assert_str_eq(a, a2);
    cr_assert_str_eq(p, p2);
    cr_assert_str_eq(r, r2);
    json_t *cred = get("Credential", BOOTSTRAP_ADMIN_CREDENTIAL);
    cr_assert_eq(auth_credential_generation(cred), 1);
    json_decref(cred);
    free(a);
    free(p);
    free(r);
    free(a2);
    free(p2);
    free(r2);
}

Test(bootstrap, a_lost_token_file_gets_a_new_token_and_generation)
{
    start();
    char *old = slurp(admin_token), *proxy_before = slurp(proxy_token);
    json_t *cred = get("Credential", BOOTSTRAP_ADMIN_CREDENTIAL);
    char *old_digest = strdup(status_string(cred, "tokenDigest"));
    json_decref(cred);
    /* what a user changed stays: the admin was put in one more group */
    json_t *admin = get("User", BOOTSTRAP_ADMIN_USER);
    json_array_append_new(json_object_get(json_object_get(admin, "spec"), "groups"), json_string("ops"));
    store_op op = {.type = STORE_REPLACE, .kind = "User", .name = BOOTSTRAP_ADMIN_USER, .doc = admin};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    json_decref(admin);

    cr_assert_eq(unlink(admin_token), 0);
    start();
    char *fresh = slurp(admin_token);
    cr_assert_str_neq(old, fresh, "a new token");
    expect_token_of(admin_token, BOOTSTRAP_ADMIN_CREDENTIAL, BOOTSTRAP_ADMIN_USER);
    cred = get("Credential", BOOTSTRAP_ADMIN_CREDENTIAL);
    cr_assert_str_neq(status_string(cred, "tokenDigest"), old_digest, "the old token no longer matches");
    cr_assert_eq(auth_credential_generation(cred), 2, "sessions of the old token end");
    json_decref(cred);
    char old_d[CREDENTIAL_DIGEST_HEX_LEN + 1], old_key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(old, strlen(old), old_d, old_key);
    json_t *by_old = NULL;
    cr_assert_eq(store_get_by_lookup(s, "Credential", old_key, &by_old), -ENOENT, "the old token finds nothing");

    admin = get("User", BOOTSTRAP_ADMIN_USER);
    cr_assert_eq(json_array_size(json_object_get(json_object_get(admin, "spec"), "groups")), 2,
                 "the user's change is kept");
    json_decref(admin);
    char *proxy_after = slurp(proxy_token);
    cr_assert_str_eq(proxy_before, proxy_after, "the other identities are untouched");
    free(old);
    free(fresh);
    free(old_digest);
    free(proxy_before);
    free(proxy_after);
}

Test(bootstrap, a_lost_credential_gets_a_new_token)
{
    start();
    char *old = slurp(runner_token);
    store_op op = {.type = STORE_DELETE, .kind = "Credential", .name = BOOTSTRAP_RUNNER_CREDENTIAL};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    start();
    char *fresh = slurp(runner_token);
    cr_assert_str_neq(old, fresh);
    expect_token_of(runner_token, BOOTSTRAP_RUNNER_CREDENTIAL, BOOTSTRAP_RUNNER_USER);
    free(old);
    free(fresh);
}

Test(bootstrap, a_workload_identity_is_brought_to_this_version)
{
    start();
    json_t *expected = get("Policy", BOOTSTRAP_RUNNER_POLICY);
    /* an older cloisterd's policy for the runner */
    json_t *older = json_deep_copy(expected);
    json_object_set_new(json_object_get(older, "spec"), "rules",
                        json_pack("[{s:s, s:s, s:i, s:{s:s}}]", "name", "old", "effect", "allow", "priority", 0,
                                  "condition", "match", "true"));
    store_op op = {.type = STORE_REPLACE, .kind = "Policy", .name = BOOTSTRAP_RUNNER_POLICY, .doc = older};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    /* and a user's change of the admin policy, which is theirs */
    json_t *admin_policy = get("Policy", BOOTSTRAP_ADMIN_POLICY);
    json_object_set_new(json_array_get(json_object_get(json_object_get(admin_policy, "spec"), "rules"), 0), "priority",
                        json_integer(5));
    store_op op2 = {.type = STORE_REPLACE, .kind = "Policy", .name = BOOTSTRAP_ADMIN_POLICY, .doc = admin_policy};
    store_txn txn2 = {.ops = &op2, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn2), 0);
    store_txn_clear(&txn2);

    char *token = slurp(runner_token);
    start();
    json_t *now = get("Policy", BOOTSTRAP_RUNNER_POLICY);
    cr_assert(json_equal(json_object_get(now, "spec"), json_object_get(expected, "spec")),
              "the runner's policy is this version's again");
    char *same = slurp(runner_token);
    cr_assert_str_eq(token, same, "its token is kept");
    json_t *kept = get("Policy", BOOTSTRAP_ADMIN_POLICY);
    cr_assert(json_equal(json_object_get(kept, "spec"), json_object_get(admin_policy, "spec")),
              "the admin policy a user edited is theirs");
    json_decref(kept);
    json_decref(admin_policy);
    json_decref(now);
    json_decref(older);
    json_decref(expected);
    free(token);
    free(same);
}

Test(bootstrap, an_unwritable_token_path_is_an_error)
{
    char bad[300];
    snprintf(bad, sizeof(bad), "%s/no-such-dir/admin.token", dir);
    cr_assert_lt(bootstrap_admin(s, bad), 0);
}
