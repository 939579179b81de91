/* The `kms` role: the only process that holds the root key and the key ring
 * in the clear. It serves a local HTTP/JSON API on a Unix socket in
 * <data-dir>/run/: kms.sock answers only the api and runner roles (their
 * SO_PEERCRED checked at accept, daemon/peer.h), kms-unseal.sock only
 * status and unseal for `cloisterd unseal`. It starts sealed unless the
 * --dev auto-unseal file is used, and refuses every key operation while
 * sealed. Key material is locked in memory, left out of
 * core dumps, and the process cannot be dumped or ptraced. */
#include <errno.h>
#include <h2o.h>
#include <openssl/crypto.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "attest/release.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "httpd/httpd.h"
#include "httpd/json.h"
#include "kms/client.h"
#include "kms/job-release.h"
#include "kms/keyring.h"
#include "kms/respond.h"
#include "kms/seal.h"
#include "kms/server.h"

#define KMS_BODY_MAX (256 * 1024)
#define KMS_DATAKEY_MAX 64
#define KMS_UNSEAL_TAG 1 /* connections of `cloisterd unseal`'s socket */

typedef struct kms_role {
    const kms_server_config *cfg;
    role_health *health; /* its sealed flag tells /readyz */
    kms_seal_config seal;
    char keyring_file[4200];
    uint8_t *root; /* locked; NULL while sealed */
    kms_keyring *ring;
    uint64_t last_tick; /* monotonic ns of the last look for versions due for destruction */
    httpd_listener *unseal_listener; /* `cloisterd unseal`'s socket (KMS_UNSEAL_TAG) */
    kms_job_config job;              /* the job release's run counts and evidence roots */
} kms_role;

typedef struct kms_handler {
    h2o_handler_t super;
    kms_role *role;
} kms_handler;

/* One operation: the decoded body, and what the handler fills in. */
typedef struct kms_op {
    kms_role *role;
    const char *peer; /* the calling role's name ("" when unknown) */
    json_t *body;
    api_error err;
} kms_op;

/* ---- helpers ---- */

/* Maps a key-ring error to the API error the caller sees. */
static int op_fail(kms_op *op, int e, const kms_err *kerr)
{
    const char *msg = kerr && kerr->message[0] ? kerr->message : strerror(-e);
    switch (e) {
    case -ENOENT:
        return api_fail(&op->err, 404, "not_found", "%s", msg);
    case -EKEYREVOKED:
    case -EKEYEXPIRED:
    case -EBUSY:
    case -EPERM:
        return api_fail(&op->err, 409, "conflict", "%s", msg);
    case -EBADMSG:
        return api_fail(&op->err, 400, "decrypt_failed", "%s", msg);
    case -EINVAL:
    case -ERANGE:
    case -EMEDIUMTYPE:
        return api_fail(&op->err, 400, "invalid", "%s", msg);
    case -E2BIG:
        return api_fail(&op->err, 413, "too_large", "%s", msg);
    default:
        return api_fail(&op->err, 500, "internal", "%s", msg);
    }
}

/* String field NAME of the body, or NULL with a 400 filled in. */
static const char *field(kms_op *op, const char *name, bool required)
{
    json_t *v = json_object_get(op->body, name);
    if (json_is_string(v))
        return json_string_value(v);
    if (required || v)
        api_fail(&op->err, 400, "invalid", "%s must be a string", name);
    return NULL;
}

/* Decodes base64 field NAME into a new buffer of at most MAX bytes (the
 * caller wipes and frees it). Returns the length or -1 with a 400. */
static long field_b64(kms_op *op, const char *name, size_t max, uint8_t **ret)
{
    const char *s = field(op, name, true);
    if (!s)
        return -1;
    size_t n = strlen(s);
    uint8_t *buf = malloc(n / 4 * 3 + 3);
    if (!buf)
        return api_fail(&op->err, 500, "internal", "out of memory");
    long len = base64_decode(s, n, buf, n / 4 * 3 + 3, false);
    if (len < 0 || (size_t)len > max) {
        free(buf);
        return api_fail(&op->err, len == -E2BIG || len > 0 ? 413 : 400, len < 0 ? "invalid" : "too_large",
                        "%s must be standard base64 of at most %zu bytes", name, max);
    }
    *ret = buf;
    return len;
}

static json_t *b64_string(const uint8_t *p, size_t n)
{
    char *s = malloc(base64_encoded_size(n));
    if (!s)
        return NULL;
    base64_encode(p, n, s, false);
    json_t *v = json_string(s);
    OPENSSL_cleanse(s, strlen(s));
    free(s);
    return v;
}

/* Key name and algorithm of the body; creates the key's first version when
 * it has none yet (the api role only names keys that exist as resources). */
static const char *ensure_key(kms_op *op)
{
    const char *name = field(op, "key", true), *alg = name ? field(op, "algorithm", true) : NULL;
    if (!alg)
        return NULL;
    kms_err kerr = {""};
    int r = kms_keyring_ensure(op->role->ring, name, alg, &kerr);
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    return name;
}

/* The encoded encryption context of the body into OUT. */
static int context(kms_op *op, uint8_t *out, size_t *ret_len)
{
    int r = kms_context_encode(json_object_get(op->body, "context"), out, ret_len);
    if (r < 0)
        return api_fail(&op->err, 400, "invalid",
                        "context must be an object of at most %d string values (keys [A-Za-z0-9._:/-], at most "
                        "%d bytes; values at most %d)",
                        KMS_CONTEXT_PAIRS_MAX, KMS_CONTEXT_KEY_MAX, KMS_CONTEXT_VALUE_MAX);
    return 0;
}

/* ---- operations: each returns the answer (a new reference) or NULL with op->err ---- */

/* Encrypts N bytes of PT under NAME bound to the body's context; the answer
 * {ciphertext, key, version} or NULL with op->err. */
static json_t *do_encrypt_bytes(kms_op *op, const char *name, const uint8_t *pt, size_t n)
{
    uint8_t ctx[KMS_CONTEXT_ENCODED_MAX];
    size_t ctx_len, len;
    kms_err kerr = {""};
    if (context(op, ctx, &ctx_len) < 0)
        return NULL;
    _cleanup_free_ uint8_t *ct = malloc(n + KMS_CIPHERTEXT_OVERHEAD_MAX);
    if (!ct) {
        api_fail(&op->err, 500, "internal", "out of memory");
        return NULL;
    }
    int r = kms_encrypt(op->role->ring, name, ctx, ctx_len, pt, n, ct, &len, &kerr);
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    kms_ciphertext c;
    kms_ciphertext_decode(ct, len, &c);
    return json_pack("{s:o, s:s, s:I}", "ciphertext", b64_string(ct, len), "key", name, "version",
                     (json_int_t)c.version);
}

static json_t *op_encrypt(kms_op *op)
{
    const char *name = ensure_key(op);
    uint8_t *pt = NULL;
    long n = name ? field_b64(op, "plaintext", KMS_PLAINTEXT_MAX, &pt) : -1;
    if (n < 0)
        return NULL;
    json_t *ans = do_encrypt_bytes(op, name, pt, (size_t)n);
    OPENSSL_cleanse(pt, (size_t)n);
    free(pt);
    return ans;
}

/* Decrypts the body's ciphertext into a new buffer (the caller wipes and frees). */
static long decrypt_body(kms_op *op, uint8_t **ret, char *ret_key, uint32_t *ret_version)
{
    uint8_t ctx[KMS_CONTEXT_ENCODED_MAX], *ct = NULL;
    size_t ctx_len, len;
    kms_err kerr = {""};
    long n = field_b64(op, "ciphertext", KMS_CIPHERTEXT_MAX, &ct);
    if (n < 0 || context(op, ctx, &ctx_len) < 0) {
        free(ct);
        return -1;
    }
    uint8_t *pt = malloc((size_t)n + 1);
    int r = pt ? kms_decrypt(op->role->ring, ct, (size_t)n, ctx, ctx_len, pt, &len, ret_key, ret_version, &kerr)
               : -ENOMEM;
    free(ct);
    if (r < 0) {
        free(pt);
        return op_fail(op, r, &kerr);
    }
    *ret = pt;
    return (long)len;
}

static json_t *op_decrypt(kms_op *op)
{
    uint8_t *pt;
    char key[KMS_KEY_NAME_MAX + 1];
    uint32_t version;
    long n = decrypt_body(op, &pt, key, &version);
    if (n < 0)
        return NULL;
    json_t *ans = json_pack("{s:o, s:s, s:I}", "plaintext", b64_string(pt, (size_t)n), "key", key, "version",
                            (json_int_t)version);
    OPENSSL_cleanse(pt, (size_t)n);
    free(pt);
    return ans;
}

static json_t *op_rewrap(kms_op *op)
{
    uint8_t *pt;
    char key[KMS_KEY_NAME_MAX + 1];
    uint32_t version;
    long n = decrypt_body(op, &pt, key, &version);
    if (n < 0)
        return NULL;
    json_t *ans = do_encrypt_bytes(op, key, pt, (size_t)n);
    OPENSSL_cleanse(pt, (size_t)n);
    free(pt);
    return ans;
}

static json_t *op_datakey(kms_op *op)
{
    const char *name = ensure_key(op);
    if (!name)
        return NULL;
    json_int_t bytes = 32;
    json_t *b = json_object_get(op->body, "bytes");
    if (b)
        bytes = json_is_integer(b) ? json_integer_value(b) : -1;
    if (bytes < 16 || bytes > KMS_DATAKEY_MAX) {
        api_fail(&op->err, 400, "invalid", "bytes must be an integer from 16 to %d", KMS_DATAKEY_MAX);
        return NULL;
    }
    uint8_t dk[KMS_DATAKEY_MAX];
    if (random_bytes(dk, (size_t)bytes) < 0) {
        api_fail(&op->err, 500, "internal", "no randomness");
        return NULL;
    }
    json_t *ans = do_encrypt_bytes(op, name, dk, (size_t)bytes);
    if (ans)
        json_object_set_new(ans, "plaintext", b64_string(dk, (size_t)bytes));
    OPENSSL_cleanse(dk, sizeof(dk));
    return ans;
}

static json_t *op_sign(kms_op *op)
{
    const char *name = ensure_key(op);
    uint8_t *msg = NULL, sig[KMS_SIGNATURE_MAX];
    long n = name ? field_b64(op, "message", KMS_PLAINTEXT_MAX, &msg) : -1;
    if (n < 0)
        return NULL;
    size_t len;
    uint32_t version;
    kms_err kerr = {""};
    int r = kms_sign(op->role->ring, name, msg, (size_t)n, sig, &len, &version, &kerr);
    free(msg);
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    return json_pack("{s:o, s:s, s:I}", "signature", b64_string(sig, len), "key", name, "version",
                     (json_int_t)version);
}

/* The body's "version" as a key version number, or 0 with a 400. */
static uint32_t version_field(kms_op *op)
{
    json_t *v = json_object_get(op->body, "version");
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    if (n < 1 || n > UINT32_MAX) {
        api_fail(&op->err, 400, "invalid", "version must be a key version number (1 or more)");
        return 0;
    }
    return (uint32_t)n;
}

static json_t *op_verify(kms_op *op)
{
    const char *name = field(op, "key", true);
    uint32_t version = name ? version_field(op) : 0;
    uint8_t *msg = NULL, *sig = NULL;
    long n = version ? field_b64(op, "message", KMS_PLAINTEXT_MAX, &msg) : -1;
    long sl = n >= 0 ? field_b64(op, "signature", KMS_SIGNATURE_MAX, &sig) : -1;
    json_t *ans = NULL;
    if (sl >= 0) {
        kms_err kerr = {""};
        int r = kms_verify(op->role->ring, name, version, msg, (size_t)n, sig, (size_t)sl, &kerr);
        if (r == 0 || r == -EBADMSG)
            ans = json_pack("{s:b, s:s, s:I}", "valid", r == 0, "key", name, "version", (json_int_t)version);
        else
            op_fail(op, r, &kerr);
    }
    free(msg);
    free(sig);
    return ans;
}

/* The public half of an x25519 key (made on first use, like every key):
 * {key, version, public: base64 of the 32 raw bytes}. The private half
 * never leaves the ring. */
static json_t *op_public(kms_op *op)
{
    const char *name = ensure_key(op);
    if (!name)
        return NULL;
    uint8_t pub[KMS_X25519_BYTES];
    uint32_t version;
    kms_err kerr = {""};
    int r = kms_public_x25519(op->role->ring, name, pub, &version, &kerr);
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    return json_pack("{s:s, s:I, s:o}", "key", name, "version", (json_int_t)version, "public",
                     b64_string(pub, sizeof(pub)));
}

static json_t *op_rotate(kms_op *op)
{
    const char *name = ensure_key(op);
    uint32_t version;
    kms_err kerr = {""};
    if (!name)
        return NULL;
    int r = kms_keyring_rotate(op->role->ring, name, &version, &kerr);
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    return kms_keyring_describe(op->role->ring, name);
}

static json_t *op_describe(kms_op *op)
{
    const char *name = ensure_key(op);
    return name ? kms_keyring_describe(op->role->ring, name) : NULL;
}

/* Enables or disables one version, or schedules its destruction (after
 * destroyAfterSeconds, KMS_DESTROY_DEFAULT_SECONDS when absent; the
 * minimum is enforced here, by the role that holds the ring). A version
 * pending destruction is enabled or disabled (cancelled) only when the API
 * says the caller may destroy it ("cancel": true). */
static json_t *op_version(kms_op *op)
{
    const char *name = field(op, "key", true);
    uint32_t version = name ? version_field(op) : 0;
    const char *state = version ? field(op, "state", true) : NULL;
    if (!state)
        return NULL;
    json_t *cancel = json_object_get(op->body, "cancel");
    if (cancel && !json_is_boolean(cancel)) {
        api_fail(&op->err, 400, "invalid", "cancel must be a boolean");
        return NULL;
    }
    kms_err kerr = {""};
    int r;
    if (strcmp(state, "enabled") == 0 || strcmp(state, "disabled") == 0)
        r = kms_keyring_set_state(op->role->ring, name, version,
                                  state[0] == 'e' ? KMS_STATE_ENABLED : KMS_STATE_DISABLED, json_is_true(cancel),
                                  &kerr);
    else if (strcmp(state, "destroyed") == 0) {
        json_t *after = json_object_get(op->body, "destroyAfterSeconds");
        if (after && !json_is_integer(after)) {
            api_fail(&op->err, 400, "invalid", "destroyAfterSeconds must be an integer (seconds, at least %d)",
                     KMS_DESTROY_MIN_SECONDS);
            return NULL;
        }
        r = kms_keyring_schedule_destroy(op->role->ring, name, version,
                                         after ? json_integer_value(after) : KMS_DESTROY_DEFAULT_SECONDS,
                                         (int64_t)(time_now_ns() / NSEC_PER_SEC), &kerr);
    } else {
        api_fail(&op->err, 400, "invalid", "state must be enabled, disabled or destroyed");
        return NULL;
    }
    if (r < 0) {
        op_fail(op, r, &kerr);
        return NULL;
    }
    return kms_keyring_describe(op->role->ring, name);
}

/* Destroys a workspace key at once, every version (its Workspace is being
 * deleted): only the api role may ask, and only for a "workspace_" key,
 * which no Key resource can be named (the api role takes the name from the
 * stored Workspace's status.key). A key already gone is no error, so a
 * retried delete succeeds. The answer {key, destroyed: whether it was still
 * there}; the kms role's own audit entry kms.key.destroy says so too. */
static json_t *op_destroy_key(kms_op *op)
{
    const char *name = field(op, "key", true);
    if (!name)
        return NULL;
    if (strcmp(op->peer, "api") != 0) {
        api_fail(&op->err, 403, "forbidden", "only the api role may destroy a workspace key (the caller is %s)",
                 op->peer[0] ? op->peer : "unknown");
        return NULL;
    }
    if (strncmp(name, "workspace_", STRLEN("workspace_")) != 0 || !kms_key_name_valid(name)) {
        api_fail(&op->err, 400, "invalid", "only workspace keys (workspace_<hex>) are destroyed this way");
        return NULL;
    }
    bool existed = false;
    kms_err kerr = {""};
    int r = kms_keyring_destroy_key(op->role->ring, name, &existed, &kerr);
    json_t *details = json_pack("{s:s, s:b, s:s*}", "key", name, "existed", existed, "reason",
                                r < 0 ? kerr.message : NULL);
    audit_event_emit(&(audit_event){.action = "kms.key.destroy", .user = "system:kms",
                                    .outcome = r < 0 ? "failure" : "success", .details = details});
    json_decref(details);
    if (r < 0) { /* the ring could not be written: the key stays whole */
        api_fail(&op->err, 500, "internal", "%s; the key is kept", kerr.message);
        return NULL;
    }
    if (existed)
        log_fields(LOG_LEVEL_INFO, "destroyed a workspace key", "key", name, NULL);
    return json_pack("{s:s, s:b}", "key", name, "destroyed", existed);
}

/* The file keys of a job's inputs, sealed to its attested sandbox once
 * every check passed (job-release.h). */
static json_t *op_job_release(kms_op *op)
{
    if (!op->role->job.platform_ca) {
        api_fail(&op->err, 503, "unavailable", "the KMS could not read the platform CA; no job key is released");
        return NULL;
    }
    return kms_job_release(op->role->ring, &op->role->job, op->body, &op->err);
}

/* A Secret's value for an attested enclave: the stored ciphertext (under
 * the Secret values' key, bound to {kind: Secret, name, key}) opened here
 * and sealed at once to the sandbox's public key as a JWE whose payload is
 * {"secret", "key", "plaintext": base64}. The api role checked the
 * evidence; it gets the JWE, never the value. */
static json_t *op_secret_release(kms_op *op)
{
    const char *secret = field(op, "secret", true), *item = secret ? field(op, "key", true) : NULL;
    if (!item)
        return NULL;
    const json_t *ctx = json_object_get(op->body, "context");
    const char *ctx_kind = json_string_value(json_object_get(ctx, "kind"));
    const char *ctx_name = json_string_value(json_object_get(ctx, "name"));
    const char *ctx_key = json_string_value(json_object_get(ctx, "key"));
    if (json_object_size(ctx) != 3 || !ctx_kind || strcmp(ctx_kind, "Secret") != 0 || !ctx_name ||
        strcmp(ctx_name, secret) != 0 || !ctx_key || strcmp(ctx_key, item) != 0) {
        api_fail(&op->err, 400, "invalid", "context must be {kind: Secret, name: secret, key: key}");
        return NULL;
    }
    uint8_t *spki = NULL;
    long spki_len = field_b64(op, "publicKey", 1024, &spki);
    if (spki_len < 0)
        return NULL;
    uint8_t *pt = NULL;
    char key[KMS_KEY_NAME_MAX + 1];
    uint32_t version;
    long n = decrypt_body(op, &pt, key, &version);
    json_t *ans = NULL;
    if (n >= 0 && strcmp(key, "_secrets") != 0)
        api_fail(&op->err, 400, "invalid", "the ciphertext is not a Secret value");
    else if (n >= 0) {
        json_t *payload = json_pack("{s:s, s:s, s:o}", "secret", secret, "key", item, "plaintext",
                                    b64_string(pt, (size_t)n));
        char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
        char *jwe = NULL;
        int r = text ? release_seal_jwe(spki, (size_t)spki_len, (const uint8_t *)text, strlen(text), &jwe) : -ENOMEM;
        if (text) {
            OPENSSL_cleanse(text, strlen(text));
            free(text);
        }
        kms_json_wipe_decref(payload);
        if (r == -EINVAL)
            api_fail(&op->err, 400, "invalid", "publicKey is not a DER SubjectPublicKeyInfo of an EC key");
        else if (r < 0 || !(ans = json_pack("{s:s}", "jwe", jwe)))
            api_fail(&op->err, 500, "internal", "cannot seal the value");
        free(jwe);
    }
    if (n >= 0) {
        OPENSSL_cleanse(pt, (size_t)n);
        free(pt);
    }
    free(spki);
    return ans;
}

/* ---- sealing ---- */

/* Forgets the root key and the key ring (wiping both). */
static void role_seal(kms_role *role)
{
    kms_keyring_free(role->ring);
    role->ring = NULL;
    secmem_free(role->root);
    role->root = NULL;
    atomic_store(&role->health->sealed, true);
}

/* Unseals with SECRET (passphrase or PIN, ignored in dev mode); 0 or -1 with ERR. */
static int role_unseal(kms_role *role, const char *secret, size_t len, api_error *err)
{
    if (role->ring)
        return 0;
    uint8_t *root = secmem_alloc(KMS_KEY_BYTES);
    if (!root)
        return api_fail(err, 500, "internal", "out of locked memory");
    bool created = false;
    kms_err kerr = {""};
    int r = kms_root_unseal(&role->seal, secret, len, root, &created, &kerr);
    if (r == 0 && (r = kms_keyring_open(role->keyring_file, root, &role->ring)) < 0)
        snprintf(kerr.message, sizeof(kerr.message), "cannot open the key ring: %s",
                 r == -EBADMSG ? "it does not authenticate under this root key" : strerror(-r));
    audit_event_emit(&(audit_event){.action = "kms.unseal", .outcome = r == 0 ? "success" : "failure"});
    if (r < 0) {
        secmem_free(root);
        log_fields(LOG_LEVEL_WARN, "KMS unseal refused", "mode", role->seal.mode, "reason", kerr.message, NULL);
        return api_fail(err, r == -EKEYREJECTED ? 403 : r == -EINVAL || r == -E2BIG ? 400 : 500,
                        r == -EKEYREJECTED ? "unseal_refused" : r == -EINVAL || r == -E2BIG ? "invalid" : "internal",
                        "%s", kerr.message);
    }
    role->root = root;
    atomic_store(&role->health->sealed, false);
    log_fields(LOG_LEVEL_INFO, created ? "KMS initialised: a new root key was created and sealed" : "KMS unsealed",
               "mode", role->seal.mode, NULL);
    return 0;
}

/* {sealed, initialized, mode}: what `cloisterd unseal` needs to know. */
static json_t *status_body(const kms_role *role)
{
    char mode[16] = "";
    bool initialized = kms_root_mode(role->seal.root_file, mode) == 0;
    return json_pack("{s:b, s:b, s:s}", "sealed", !role->ring, "initialized", initialized, "mode", role->seal.mode);
}

/* Destroys the versions whose scheduled time has passed, at most once a
 * second; a scheduled version refuses every use until then anyway. */
static void destroy_due_versions(kms_role *role)
{
    uint64_t now = time_mono_ns();
    if (!role->ring || now - role->last_tick < NSEC_PER_SEC)
        return;
    role->last_tick = now;
    int n = kms_keyring_tick(role->ring, (int64_t)(time_now_ns() / NSEC_PER_SEC));
    if (n > 0)
        log_fields(LOG_LEVEL_INFO, "destroyed key versions whose time had come", NULL);
    else if (n < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot write the key ring after destroying versions", "error", strerror(-n),
                   NULL);
}

/* ---- HTTP ---- */

typedef json_t *(*op_fn)(kms_op *op);

static const struct {
    const char *path;
    op_fn fn;
    bool secret_answer; /* the answer carries a plaintext */
} ops[] = {
    {"/v1/encrypt", op_encrypt, false},
    {"/v1/decrypt", op_decrypt, true},
    {"/v1/datakey", op_datakey, true},
    {"/v1/rewrap", op_rewrap, false},
    {"/v1/sign", op_sign, false},
    {"/v1/verify", op_verify, false},
    {"/v1/rotate", op_rotate, false},
    {"/v1/key", op_describe, false},
    {"/v1/version", op_version, false},
    {"/v1/public", op_public, false},
    {"/v1/job-release", op_job_release, false}, /* file keys leave only as JWEs to the sandbox */
    {"/v1/secret-release", op_secret_release, false}, /* a Secret's value leaves only as a JWE to the sandbox */
    {"/v1/destroy-key", op_destroy_key, false},        /* the api role only, workspace keys only */
};
_Static_assert(ELEMENTSOF(ops) == ROLE_KMS_OPS, "role.h's ROLE_KMS_OP_NAMES name kms/server.c's operations in order");

/* Counts operation I's answer in the role's entry (GET /metrics): success,
 * refused (a 4xx), sealed, or error. */
static void count_op(const kms_op *op, size_t i, bool answered)
{
    const api_error *e = &op->err;
    int outcome = answered                                ? 0
                  : e->code && strcmp(e->code, "sealed") == 0 ? 2
                  : e->status >= 400 && e->status < 500   ? 1
                                                          : 3;
    atomic_fetch_add_explicit(&op->role->health->kms_ops[i][outcome], 1, memory_order_relaxed);
}

/* Every request: POST only, a capped JSON body (wiped once decoded), then
 * status and unseal, or a key operation when unsealed. Always answers. */
static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    kms_role *role = ((kms_handler *)self)->role;
    int peer = httpd_conn_peer(req);
    kms_op op = {.role = role,
                 .peer = peer >= 0 && (size_t)peer < role->cfg->n_roles ? role->cfg->roles[peer].name : ""};
    h2o_iovec_t path = req->path_normalized;
    json_t *ans = NULL;
    bool secret_answer = false;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        api_fail(&op.err, 405, "method_not_allowed", "the KMS takes POST only");
        goto out;
    }
    if (req->entity.len > KMS_BODY_MAX) {
        api_fail(&op.err, 413, "too_large", "at most %d bytes of JSON", KMS_BODY_MAX);
        goto out;
    }
    op.body = api_decode_body(req->entity.base ? req->entity.base : "{}", req->entity.base ? req->entity.len : 2,
                              &op.err);
    /* the request may carry plaintext or a passphrase: wipe h2o's copy */
    if (req->entity.base)
        OPENSSL_cleanse(req->entity.base, req->entity.len);
    if (!op.body)
        goto out;
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/status"))) {
        ans = status_body(role);
        goto out;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/unseal"))) {
        json_t *s = json_object_get(op.body, "secret");
        if (strcmp(role->seal.mode, "dev") != 0 && !json_is_string(s))
            api_fail(&op.err, 400, "invalid", "secret (the passphrase or PIN) must be a string");
        else if (role_unseal(role, json_string_value(s), json_string_length(s), &op.err) == 0)
            ans = status_body(role);
        goto out;
    }
    if (httpd_conn_tag(req) == KMS_UNSEAL_TAG) {
        api_fail(&op.err, 403, "forbidden", "the unseal socket serves only /v1/status and /v1/unseal");
        goto out;
    }
    destroy_due_versions(role);
    for (size_t i = 0; i < ELEMENTSOF(ops); i++)
        if (h2o_memis(path.base, path.len, ops[i].path, strlen(ops[i].path))) {
            if (!role->ring)
                api_fail(&op.err, 503, "sealed", "the KMS is sealed; unseal it with `cloisterd unseal --data-dir %s`",
                         role->cfg->data_dir);
            else
                ans = ops[i].fn(&op);
            count_op(&op, i, ans != NULL);
            secret_answer = ops[i].secret_answer;
            goto out;
        }
    api_fail(&op.err, 404, "not_found", "no such KMS operation");
out:
    if (ans && secret_answer)
        kms_send_json_wiped(req, ans);
    else if (ans)
        api_send_json(req, 200, ans);
    else
        api_send_error(req, op.err.status ? &op.err : &(api_error){500, "internal", "out of memory", "", -1});
    kms_json_wipe_decref(ans);
    kms_json_wipe_decref(op.body);
    return 0;
}

static void register_handlers(h2o_pathconf_t *pathconf, void *userdata)
{
    kms_handler *h = (kms_handler *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->role = userdata;
}

/* Opens `cloisterd unseal`'s socket beside kms.sock on the serving loop. It
 * takes no peer check (the operator is no role): its mode (0600, the
 * daemon's uid) decides who may connect, and on_req serves only status and
 * unseal there. A failure is logged; the KMS then serves without it. */
static void *thread_init(h2o_context_t *ctx, void *userdata)
{
    kms_role *role = userdata;
    int fd, r = httpd_listen_unix(role->cfg->unseal_socket, SOCK_STREAM, &fd);
    if (r == 0)
        r = httpd_listener_add(ctx, fd, KMS_UNSEAL_TAG, 4, &role->unseal_listener);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot open the unseal socket; `cloisterd unseal` cannot reach the KMS", "socket",
                   role->cfg->unseal_socket, "error", strerror(-r), NULL);
    return role;
}

static void thread_drain(void *state)
{
    kms_role *role = state;
    httpd_listener_close(role->unseal_listener);
    role->unseal_listener = NULL;
    unlink(role->cfg->unseal_socket);
}

/* Hardens the process that will hold keys: no core dumps, no ptrace. */
static void harden(void)
{
    struct rlimit none = {0, 0};
    if (prctl(PR_SET_DUMPABLE, 0) < 0 || setrlimit(RLIMIT_CORE, &none) < 0)
        log_fields(LOG_LEVEL_WARN, "cannot make the KMS process undumpable", "error", strerror(errno), NULL);
    if (!secmem_locked())
        log_warn("cannot lock KMS key memory (RLIMIT_MEMLOCK); keys may be swapped out");
}

int kms_serve(const kms_server_config *cfg)
{
    harden();
    /* unseal attempts are audit events, delivered to the audit role */
    int r = audit_event_start(cfg->audit_socket);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot start audit event delivery; events go to the log", "error", strerror(-r),
                   NULL);
    atomic_store(&cfg->health->sealed, true);
    kms_role role = {.cfg = cfg, .health = cfg->health, .seal = cfg->seal,
                     .job = {.runs_dir = cfg->job_runs_dir, .dev = cfg->dev}};
    _cleanup_free_ char *platform_ca = NULL;
    r = read_file(cfg->platform_ca_cert, 1024 * 1024, &platform_ca, &role.job.platform_ca_len);
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot read the platform CA; jobs get no keys", "path", cfg->platform_ca_cert,
                   "error", strerror(-r), NULL);
    role.job.platform_ca = platform_ca;
    snprintf(role.keyring_file, sizeof(role.keyring_file), "%s", cfg->keyring_file);
    char mode[16];
    if (kms_root_mode(cfg->seal.root_file, mode) == 0 && strcmp(mode, cfg->seal.mode) != 0)
        log_fields(LOG_LEVEL_ERROR, "the KMS root key is sealed with another mode; it stays sealed", "sealed_with",
                   mode, "configured", cfg->seal.mode, "hint", "start cloisterd with the --seal it was created with",
                   NULL);
    else if (strcmp(cfg->seal.mode, "dev") == 0) {
        log_fields(LOG_LEVEL_WARN,
                   "!!! DEVELOPMENT MODE: the KMS root key is unsealed automatically from a file in the data dir; "
                   "whoever can read that file holds every key. Never use --seal dev in production !!!",
                   "file", cfg->seal.dev_key_file, NULL);
        api_error err;
        if (role_unseal(&role, NULL, 0, &err) < 0)
            log_fields(LOG_LEVEL_ERROR, "the KMS cannot auto-unseal", "reason", err.message, NULL);
    } else if (cfg->secret) {
        api_error err;
        if (role_unseal(&role, cfg->secret, cfg->secret_len, &err) < 0)
            log_fields(LOG_LEVEL_ERROR, "the KMS cannot unseal with the configured secret file; it stays sealed",
                       "mode", cfg->seal.mode, "reason", err.message, NULL);
    } else
        log_fields(LOG_LEVEL_WARN, "the KMS is sealed; key operations are refused until `cloisterd unseal`", "mode",
                   cfg->seal.mode, NULL);
    if (cfg->secret) {
        OPENSSL_cleanse(cfg->secret, cfg->secret_len);
        free(cfg->secret);
    }

    char listen[4300];
    snprintf(listen, sizeof(listen), "unix:%s", cfg->socket);
    /* keys are used by the api role (on behalf of callers it authorised) and the runner */
    const peer_policy peers = {.socket = "kms.sock", .roles = cfg->roles, .n_roles = cfg->n_roles, .uid = geteuid(),
                               .allowed = {"api", "runner"}};
    httpd_config http = {
        .name = "KMS",
        .listen = listen,
        .threads = 1, /* the key ring is used by one thread only */
        .max_request_body = KMS_BODY_MAX * 2,
        .hooks = {.register_handlers = register_handlers, .thread_init = thread_init, .thread_drain = thread_drain},
        .userdata = &role,
        .ready_flag = &cfg->health->ready,
        .check_peer = peer_check_hook,
        .peer_data = &peers,
        .mtls = cfg->mtls,
        .check_cert = peer_tls_check_hook,
    };
    r = httpd_run(&http);
    role_seal(&role);
    audit_event_stop(2000);
    return r < 0 ? 1 : 0;
}
