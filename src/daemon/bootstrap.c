#include "daemon/bootstrap.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <string.h>
#include <sys/stat.h>

#include "auth/bootstrap-names.h"
#include "auth/credential.h"
#include "auth/session.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"

/* key release for enclaves: a challenge, then the attested release of a Key */
#define RUNNER_RULE                                                                                         \
    "(ctx.request.api.verb == \"create\" && ctx.request.api.kind == \"AttestationChallenge\") || "           \
    "(ctx.request.api.verb == \"release\" && ctx.request.api.kind in [\"Key\", \"Secret\"])"
/* the proxy's configuration stream is decided by identity, not by policy
 * (api_handle_proxy): its policy grants nothing */
#define PROXY_RULE_NAME "config-stream-is-decided-by-identity-not-policy"

#define IDENTITY_DOCS_MAX 3

/* A bootstrap identity: the documents it needs and the credential whose
 * token is kept in a file of the data dir. */
typedef struct identity {
    const char *what;                  /* in logs: "admin", "proxy" */
    json_t *docs[IDENTITY_DOCS_MAX];   /* policies, groups, the user: created when absent */
    size_t n_docs;
    json_t *credential;                /* the Credential; its token is the one in the file */
    bool workload;                     /* a role's identity: its documents are cloisterd's alone */
} identity;

static void identity_clear(identity *id)
{
    for (size_t i = 0; i < id->n_docs; i++)
        json_decref(id->docs[i]);
    json_decref(id->credential);
    *id = (identity){0};
}

static json_t *manifest(const char *kind, const char *name, json_t *spec)
{
    return json_pack("{s:s, s:s, s:{s:s}, s:o}", "apiVersion", "cloister.dev/v1", "kind", kind, "metadata", "name",
                     name, "spec", spec);
}

static const char *field(const json_t *doc, const char *a, const char *b)
{
    json_t *v = json_object_get(doc, a);
    return json_string_value(b ? json_object_get(v, b) : v);
}

/* Rewrites the documents of workload identity ID whose spec differs from
 * what this version of cloisterd writes (nobody may edit them through the
 * API, so a difference is an older vocabulary: an upgrade moves it).
 * Returns 0 or a negative errno (logged). */
static int refresh_workload_docs(store *s, const identity *id)
{
    store_op ops[IDENTITY_DOCS_MAX];
    size_t n = 0;
    for (size_t i = 0; i < id->n_docs; i++) {
        const char *kind = field(id->docs[i], "kind", NULL), *name = field(id->docs[i], "metadata", "name");
        _cleanup_(json_decrefp) json_t *stored = NULL;
        if (store_get(s, kind, name, &stored) == 0 &&
            json_equal(json_object_get(stored, "spec"), json_object_get(id->docs[i], "spec")))
            continue;
        ops[n++] = (store_op){.type = STORE_APPLY, .kind = kind, .name = name, .doc = id->docs[i]};
    }
    if (n == 0)
        return 0;
    store_txn txn = {.ops = ops, .n_ops = n};
    int r = store_write(s, &txn);
    store_txn_clear(&txn);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot update a workload identity's documents", "identity", id->what, "error",
                   strerror(-r), NULL);
    else
        log_fields(LOG_LEVEL_INFO, "updated a workload identity's documents to this version", "identity", id->what,
                   NULL);
    return r;
}

/* Records in credential CRED (stored, of identity WHAT) the uid of its user
 * when it was written before credentials recorded it, so that its token
 * keeps working (auth/session.h). Returns 0 or a negative errno (logged). */
static int bind_credential(store *s, const char *what, json_t *cred)
{
    if (json_object_get(json_object_get(cred, "status"), "userUid"))
        return 0;
    store_op op = {.type = STORE_APPLY, .kind = "Credential", .name = field(cred, "metadata", "name"), .doc = cred,
                   .uid_kind = "User", .uid_name = field(cred, "spec", "user"), .uid_field = "userUid"};
    store_txn txn = {.ops = &op, .n_ops = 1};
    int r = store_write(s, &txn);
    store_txn_clear(&txn);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot bind a bootstrap credential to its user", "identity", what, "error",
                   strerror(-r), NULL);
    return r;
}

/* Ensures identity ID in store S, its credential's token in TOKEN_PATH
 * (mode 0600). When both the credential and the file exist nothing is
 * touched (users may have changed the documents, and that is theirs) but
 * the credential's record of its user's uid, when it lacks one, and a
 * workload identity's documents, which are brought to this version's. When
 * the file is missing (or the credential is), a fresh token is made and its
 * digest stored (the old token stops working); the other documents are
 * created only when absent. Returns 0 or a negative errno (logged). ID stays
 * owned by the caller. */
static int ensure_identity(store *s, const char *token_path, const identity *id)
{
    const char *cred_name = field(id->credential, "metadata", "name");
    if (!cred_name || id->n_docs > IDENTITY_DOCS_MAX)
        return -EINVAL;
    struct stat st;
    bool have_token = stat(token_path, &st) == 0;
    json_auto_t *cred_doc = NULL;
    bool have_credential = store_get(s, "Credential", cred_name, &cred_doc) == 0;
    int64_t generation = auth_credential_generation(cred_doc); /* the new token ends the old one's sessions */
    if (have_token && have_credential) {
        int r = bind_credential(s, id->what, cred_doc);
        return r == 0 && id->workload ? refresh_workload_docs(s, id) : r;
    }

    char token[CREDENTIAL_TOKEN_LEN + 1], digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    json_t *cred_status = NULL;
    int r = credential_token_generate(token);
    if (r < 0)
        goto out;
    credential_token_digest(token, strlen(token), digest, key);
    cred_status = json_pack("{s:s, s:I}", "tokenDigest", digest, "tokenGeneration", (json_int_t)(generation + 1));
    if (!cred_status) {
        r = -ENOMEM;
        goto out;
    }

    store_op ops[IDENTITY_DOCS_MAX + 1];
    size_t n = 0;
    /* with the credential present only its lost token is replaced; otherwise
     * the rest may already exist after a partial first start, and is kept */
    for (size_t i = 0; !have_credential && i < id->n_docs; i++) {
        const char *kind = field(id->docs[i], "kind", NULL), *name = field(id->docs[i], "metadata", "name");
        json_t *existing;
        if (store_get(s, kind, name, &existing) == 0) {
            json_decref(existing);
            continue;
        }
        ops[n++] = (store_op){.type = STORE_CREATE, .kind = kind, .name = name, .doc = id->docs[i]};
    }
    /* bound to its user by uid (auth/session.h), which may be created here */
    ops[n++] = (store_op){.type = STORE_APPLY, .kind = "Credential", .name = cred_name, .doc = id->credential,
                          .status = cred_status, .lookup_key = key, .uid_kind = "User",
                          .uid_name = field(id->credential, "spec", "user"), .uid_field = "userUid"};
    store_txn txn = {.ops = ops, .n_ops = n};
    r = store_write(s, &txn);
    store_txn_clear(&txn);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot write the bootstrap identity", "identity", id->what, "error",
                   strerror(-r), NULL);
        goto out;
    }
    r = write_file_atomic(token_path, token, strlen(token), 0600);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot write a bootstrap token", "identity", id->what, "path", token_path,
                   "error", strerror(-r), NULL);
        goto out;
    }
    log_fields(LOG_LEVEL_INFO, "wrote a bootstrap token", "identity", id->what, "path", token_path, NULL);
out:
    OPENSSL_cleanse(token, sizeof(token));
    OPENSSL_cleanse(digest, sizeof(digest));
    json_decref(cred_status);
    return r;
}

/* Runs ensure_identity() on ID and releases it; -ENOMEM when building one
 * of its documents failed. */
static int ensure_and_clear(store *s, const char *token_path, identity *id)
{
    bool built = id->credential != NULL;
    for (size_t i = 0; i < id->n_docs; i++)
        built = built && id->docs[i];
    int r = built ? ensure_identity(s, token_path, id) : -ENOMEM;
    identity_clear(id);
    return r;
}

int bootstrap_admin(store *s, const char *token_path)
{
    identity id = {
        .what = "admin",
        .docs = {
            manifest("Policy", BOOTSTRAP_ADMIN_POLICY,
                     json_pack("{s:[{s:s, s:s, s:i, s:{s:s}}]}", "rules", "name", "admins-may-do-anything", "effect",
                               "allow", "priority", 0, "condition", "match",
                               "\"" BOOTSTRAP_ADMIN_GROUP "\" in ctx.user.groups")),
            manifest("Group", BOOTSTRAP_ADMIN_GROUP, json_pack("{s:[s]}", "policies", BOOTSTRAP_ADMIN_POLICY)),
            manifest("User", BOOTSTRAP_ADMIN_USER, json_pack("{s:s, s:[s]}", "type", "human", "groups", BOOTSTRAP_ADMIN_GROUP)),
        },
        .n_docs = 3,
        .credential = manifest("Credential", BOOTSTRAP_ADMIN_CREDENTIAL,
                               json_pack("{s:s, s:s}", "user", BOOTSTRAP_ADMIN_USER, "type", "authToken")),
    };
    return ensure_and_clear(s, token_path, &id);
}

int bootstrap_proxy(store *s, const char *token_path)
{
    identity id = {
        .what = "proxy",
        .docs = {
            manifest("Policy", BOOTSTRAP_PROXY_POLICY,
                     json_pack("{s:[{s:s, s:s, s:i, s:{s:s}}]}", "rules", "name", PROXY_RULE_NAME, "effect",
                               "allow", "priority", 0, "condition", "match", "false")),
            manifest("User", BOOTSTRAP_PROXY_USER, json_pack("{s:s, s:[s]}", "type", "workload", "policies", BOOTSTRAP_PROXY_POLICY)),
        },
        .n_docs = 2,
        .credential = manifest("Credential", BOOTSTRAP_PROXY_CREDENTIAL,
                               json_pack("{s:s, s:s}", "user", BOOTSTRAP_PROXY_USER, "type", "authToken")),
        .workload = true,
    };
    return ensure_and_clear(s, token_path, &id);
}

int bootstrap_runner(store *s, const char *token_path)
{
    identity id = {
        .what = "runner",
        .docs = {
            manifest("Policy", BOOTSTRAP_RUNNER_POLICY,
                     json_pack("{s:[{s:s, s:s, s:i, s:{s:s}}]}", "rules", "name", "runner-forwards-key-release",
                               "effect", "allow", "priority", 0, "condition", "match", RUNNER_RULE)),
            manifest("User", BOOTSTRAP_RUNNER_USER, json_pack("{s:s, s:[s]}", "type", "workload", "policies", BOOTSTRAP_RUNNER_POLICY)),
        },
        .n_docs = 2,
        .credential = manifest("Credential", BOOTSTRAP_RUNNER_CREDENTIAL,
                               json_pack("{s:s, s:s}", "user", BOOTSTRAP_RUNNER_USER, "type", "authToken")),
        .workload = true,
    };
    return ensure_and_clear(s, token_path, &id);
}
