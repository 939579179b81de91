#include "daemon/bootstrap.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <string.h>
#include <sys/stat.h>

#include "auth/credential.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"

#define ADMIN_USER "admin"
#define ADMIN_GROUP "admins"
#define ADMIN_POLICY "cloister-admins"
#define ADMIN_CREDENTIAL "admin-bootstrap"

static json_t *manifest(const char *kind, const char *name, json_t *spec)
{
    return json_pack("{s:s, s:s, s:{s:s}, s:o}", "apiVersion", "cloister.dev/v1", "kind", kind, "metadata", "name",
                     name, "spec", spec);
}

int bootstrap_admin(store *s, const char *token_path)
{
    struct stat st;
    bool have_token = stat(token_path, &st) == 0;
    json_t *cred_doc = NULL;
    bool have_credential = store_get(s, "Credential", ADMIN_CREDENTIAL, &cred_doc) == 0;
    json_decref(cred_doc);

    json_t *group = manifest("Group", ADMIN_GROUP, json_pack("{s:[s]}", "policies", ADMIN_POLICY));
    json_t *policy = manifest(
        "Policy", ADMIN_POLICY,
        json_pack("{s:[{s:s, s:s, s:i, s:{s:s}}]}", "rules", "name", "admins-may-do-anything", "effect", "allow",
                  "priority", 0, "condition", "match", "\"" ADMIN_GROUP "\" in ctx.user.groups"));
    json_t *user = manifest("User", ADMIN_USER, json_pack("{s:s, s:[s]}", "type", "human", "groups", ADMIN_GROUP));
    json_t *cred = manifest("Credential", ADMIN_CREDENTIAL, json_pack("{s:s, s:s}", "user", ADMIN_USER, "type", "authToken"));

    char token[CREDENTIAL_TOKEN_LEN + 1], digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    bool new_token = !have_token || !have_credential;
    json_t *cred_status = NULL;
    store_op ops[4] = {
        {.type = STORE_CREATE, .kind = "Policy", .name = ADMIN_POLICY, .doc = policy},
        {.type = STORE_CREATE, .kind = "Group", .name = ADMIN_GROUP, .doc = group},
        {.type = STORE_CREATE, .kind = "User", .name = ADMIN_USER, .doc = user},
        {.type = STORE_APPLY, .kind = "Credential", .name = ADMIN_CREDENTIAL, .doc = cred},
    };
    size_t first = 0, n = 4;
    int r = 0;
    if (have_credential && !new_token) {
        n = 0; /* everything exists; users may have changed the rest and that is theirs */
    } else {
        if (have_credential)
            first = 3; /* only replace the lost token */
        r = credential_token_generate(token);
        if (r < 0)
            goto out;
        credential_token_digest(token, strlen(token), digest, key);
        cred_status = json_pack("{s:s}", "tokenDigest", digest);
        ops[3].status = cred_status;
        ops[3].lookup_key = key;
    }
    if (n > first) {
        /* the first three may already exist after a partial first start */
        for (size_t i = first; i < 3; i++) {
            json_t *existing;
            if (store_get(s, ops[i].kind, ops[i].name, &existing) == 0) {
                json_decref(existing);
                ops[i].type = STORE_APPLY;
                ops[i].doc = NULL;
            }
        }
        /* drop ops left without a document: they exist and are kept as users changed them */
        store_op todo[4];
        size_t m = 0;
        for (size_t i = first; i < n; i++)
            if (ops[i].doc)
                todo[m++] = ops[i];
        store_txn txn = {.ops = todo, .n_ops = m};
        r = store_write(s, &txn);
        store_txn_clear(&txn);
        if (r < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot write the bootstrap identity", "error", strerror(-r), NULL);
            goto out;
        }
        r = write_file_atomic(token_path, token, strlen(token), 0600);
        if (r < 0) {
            log_fields(LOG_LEVEL_ERROR, "cannot write the admin token", "path", token_path, "error", strerror(-r), NULL);
            goto out;
        }
        log_fields(LOG_LEVEL_INFO, "wrote the bootstrap admin token", "path", token_path, NULL);
    }
out:
    OPENSSL_cleanse(token, sizeof(token));
    OPENSSL_cleanse(digest, sizeof(digest));
    json_decref(cred_status);
    json_decref(group);
    json_decref(policy);
    json_decref(user);
    json_decref(cred);
    return r;
}
