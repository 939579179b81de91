/* The API and the KMS (see handlers-kms.h). The api role never holds key
 * material: it checks the caller and the Key resource on the event loop,
 * forwards the operation to the kms role from a worker of the server's
 * local pool (offload.h), then reports it as an audit event (never with a
 * plaintext) and answers back on the loop. Plaintexts in requests and
 * answers are wiped. */
#include "api/handlers-kms.h"

#include "api/handlers-attest.h"
#include "api/handlers-policy.h"
#include "api/span.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "age/age.h"
#include "audit/event.h"
#include "basic/fileio.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "daemon/peer-tls.h"
#include "kms/ciphertext.h"
#include "kms/client.h"
#include "kms/respond.h"
#include "resource/resource.h"
#include "telemetry/telemetry.h"

#define SECRETS_KEY "_secrets" /* the KMS key of Secret values; not a valid resource name */
#define SECRET_FORMAT_PREFIX "kms:"

static const char *kms_socket;
static store *kms_store;

/* what a remote kms role last said of itself (watch_remote) */
static struct {
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop, answered, reachable, sealed;
    char mode[16];
} remote = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* Asks the remote kms role for its status every KMS_REMOTE_POLL_MS until
 * api_kms_done(): the answer feeds /readyz, which must not wait on the
 * network itself. */
static void *watch_remote(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&remote.lock);
    while (!remote.stop) {
        pthread_mutex_unlock(&remote.lock);
        json_t *ans = NULL;
        int status = kms_call(kms_socket, "/v1/status", NULL, &ans);
        pthread_mutex_lock(&remote.lock);
        if ((status == 200) != remote.reachable || !remote.answered) {
            char why[64];
            snprintf(why, sizeof(why), "%s", status < 0 ? strerror(-status) : "not a status answer");
            if (status == 200)
                log_fields(LOG_LEVEL_INFO, "the remote kms role answers", "kms", kms_socket, NULL);
            else
                log_fields(LOG_LEVEL_WARN, "cannot reach the remote kms role", "kms", kms_socket, "error", why, NULL);
        }
        remote.answered = true;
        remote.reachable = status == 200;
        remote.sealed = !json_is_false(json_object_get(ans, "sealed"));
        snprintf(remote.mode, sizeof(remote.mode), "%s", json_string_value(json_object_get(ans, "mode")) ?: "unknown");
        json_decref(ans);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += KMS_REMOTE_POLL_MS / 1000;
        until.tv_nsec += (KMS_REMOTE_POLL_MS % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!remote.stop)
            pthread_cond_timedwait(&remote.wake, &remote.lock, &until);
    }
    pthread_mutex_unlock(&remote.lock);
    return NULL;
}

bool api_kms_remote_status(bool *ret_reachable, bool *ret_sealed, char mode[16])
{
    if (!remote.started)
        return false;
    pthread_mutex_lock(&remote.lock);
    *ret_reachable = remote.answered && remote.reachable;
    *ret_sealed = !remote.answered || remote.sealed;
    snprintf(mode, 16, "%s", remote.answered ? remote.mode : "unknown");
    pthread_mutex_unlock(&remote.lock);
    return true;
}

void api_kms_init(const char *socket, store *s)
{
    /* the kms client needs no libcurl; the API's remote calls (OIDC, on the
     * offload workers) do, and it is set up once here, before any runs */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    kms_socket = socket;
    kms_store = s;
    if (peer_address_is_url(socket)) {
        remote.started = pthread_create(&remote.thread, NULL, watch_remote, NULL) == 0;
        if (!remote.started)
            log_fields(LOG_LEVEL_WARN, "cannot watch the remote kms role; /readyz cannot tell its seal", NULL);
    }
}

void api_kms_done(void)
{
    if (remote.started) {
        pthread_mutex_lock(&remote.lock);
        remote.stop = true;
        pthread_cond_signal(&remote.wake);
        pthread_mutex_unlock(&remote.lock);
        pthread_join(remote.thread, NULL);
        remote.started = false;
    }
    kms_client_cleanup();
    curl_global_cleanup();
}

/* Calls the kms role, blocking: from a worker only (offload.h). On
 * anything but a 200 fills ERR from its answer (or with 503 when it cannot
 * be reached) and returns -1. */
static int call(const char *path, const json_t *body, json_t **ret, api_error *err)
{
    json_t *ans = NULL;
    metrics_count_kms_call();
    /* the KMS operation's span, in the trace of the request that asked (the
     * kms role opens no IP socket and exports nothing itself) */
    trace_context parent;
    bool has_parent = telemetry_current_context(&parent);
    char name[96];
    snprintf(name, sizeof(name), "kms %s", path);
    telemetry_span *span = telemetry_span_start(name, TELEMETRY_SPAN_CLIENT, has_parent ? &parent : NULL);
    telemetry_span_set_attr_str(span, "rpc.system", "cloister-kms");
    telemetry_span_set_attr_str(span, "cloister.kms.operation", path);
    telemetry_span_set_attr_str(span, "server.address", "kms");
    int status = kms_socket ? kms_call(kms_socket, path, body, &ans) : -ENOTCONN;
    if (status > 0)
        telemetry_span_set_attr_int(span, "http.response.status_code", status);
    if (status != 200)
        telemetry_span_set_status(span, TELEMETRY_STATUS_ERROR, status < 0 ? strerror(-status) : "the KMS refused");
    telemetry_span_end(span);
    if (status == 200) {
        *ret = ans;
        return 0;
    }
    if (status < 0)
        return api_fail(err, 503, "unavailable", "the KMS is not reachable (%s)", strerror(-status));
    json_t *e = json_object_get(ans, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    /* codes come from a fixed set in the kms role; keep a static copy */
    static const char *const codes[] = {"not_found", "conflict", "decrypt_failed", "invalid", "too_large",
                                        "sealed", "internal", "release_refused", "unavailable"};
    const char *c = "internal";
    for (size_t i = 0; code && i < ELEMENTSOF(codes); i++)
        if (strcmp(code, codes[i]) == 0)
            c = codes[i];
    api_fail(err, status >= 400 && status < 600 ? status : 502, c, "%s",
             json_string_value(json_object_get(e, "message")) ?: "the KMS failed");
    json_decref(ans);
    return -1;
}

/* ---- Secret values ---- */

/* The encryption context binding a Secret value to where it is stored. */
static json_t *secret_context(const char *name, const char *key)
{
    return json_pack("{s:s, s:s, s:s}", "kind", "Secret", "name", name, "key", key);
}

/* Whether the stored ciphertext STORED (with its prefix) holds exactly VALUE.
 * Once decrypted, the comparison takes a time that depends only on VALUE's
 * length: every byte of VALUE is compared against the stored value (padded
 * with zeros), and a difference of lengths is folded in at the end rather
 * than deciding early. */
static bool stored_value_equals(const char *stored, json_t *context, const char *value)
{
    if (!stored || strncmp(stored, SECRET_FORMAT_PREFIX, STRLEN(SECRET_FORMAT_PREFIX)) != 0)
        return false;
    _cleanup_(kms_json_wipe_decrefp) json_t *ans = NULL;
    json_t *body = json_pack("{s:s, s:O}", "ciphertext", stored + STRLEN(SECRET_FORMAT_PREFIX), "context", context);
    api_error ignored;
    int r = body ? call("/v1/decrypt", body, &ans, &ignored) : -1;
    json_decref(body);
    const char *pt = r == 0 ? json_string_value(json_object_get(ans, "plaintext")) : NULL;
    if (!pt)
        return false;
    size_t vlen = strlen(value), cap = MAX(strlen(pt) / 4 * 3 + 3, vlen);
    uint8_t *buf = calloc(1, cap);
    long n = buf ? base64_decode(pt, strlen(pt), buf, cap, false) : -1;
    bool same_length = n >= 0 && (size_t)n == vlen;
    bool same_bytes = buf && memeq_consttime(buf, value, vlen);
    bool eq = same_length & same_bytes;
    if (buf) {
        OPENSSL_cleanse(buf, cap);
        free(buf);
    }
    return eq;
}

int api_kms_unseal(const char *sealed, const json_t *context, uint8_t **ret, size_t *ret_len, api_error *err)
{
    if (!sealed || strncmp(sealed, SECRET_FORMAT_PREFIX, STRLEN(SECRET_FORMAT_PREFIX)) != 0)
        return api_fail(err, 500, "internal", "the stored value is not sealed by the KMS");
    json_t *body = json_pack("{s:s, s:O}", "ciphertext", sealed + STRLEN(SECRET_FORMAT_PREFIX), "context", context);
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    _cleanup_(kms_json_wipe_decrefp) json_t *ans = NULL;
    int r = call("/v1/decrypt", body, &ans, err);
    json_decref(body);
    if (r < 0)
        return -1;
    const char *pt = json_string_value(json_object_get(ans, "plaintext"));
    size_t cap = pt ? strlen(pt) / 4 * 3 + 3 : 0;
    uint8_t *value = pt ? malloc(cap + 1) : NULL;
    long n = value ? base64_decode(pt, strlen(pt), value, cap, false) : -1;
    if (n < 0) {
        if (value) {
            OPENSSL_cleanse(value, cap);
            free(value);
        }
        return api_fail(err, 500, "internal", "the KMS answered no usable plaintext");
    }
    value[n] = 0;
    *ret = value;
    *ret_len = (size_t)n;
    return 0;
}

int api_kms_seal(const json_t *context, const uint8_t *plaintext, size_t n, char **ret, api_error *err)
{
    char *b64 = malloc(base64_encoded_size(n));
    if (!b64)
        return api_fail(err, 500, "internal", "out of memory");
    base64_encode(plaintext, n, b64, false);
    json_t *body = json_pack("{s:s, s:s, s:s, s:O}", "key", SECRETS_KEY, "algorithm", "aes-256-gcm", "plaintext", b64,
                             "context", context);
    OPENSSL_cleanse(b64, strlen(b64));
    free(b64);
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    json_t *ans = NULL;
    int r = call("/v1/encrypt", body, &ans, err);
    kms_json_wipe_decref(body);
    if (r < 0)
        return -1;
    char *sealed = NULL;
    if (asprintf(&sealed, SECRET_FORMAT_PREFIX "%s", json_string_value(json_object_get(ans, "ciphertext")) ?: "") < 0)
        sealed = NULL;
    json_decref(ans);
    if (!sealed)
        return api_fail(err, 500, "internal", "out of memory");
    *ret = sealed;
    return 0;
}

int api_kms_secret_value(const char *name, const char *key, char **ret, api_error *err)
{
    json_t *secret = NULL;
    if (!kms_store || store_get(kms_store, "Secret", name, &secret) < 0)
        return api_fail(err, 500, "internal", "Secret %s does not exist", name);
    const char *stored = json_string_value(json_object_get(json_object_get(json_object_get(secret, "spec"), "data"), key));
    if (!stored || strncmp(stored, SECRET_FORMAT_PREFIX, STRLEN(SECRET_FORMAT_PREFIX)) != 0) {
        json_decref(secret);
        return api_fail(err, 500, "internal", "Secret %s has no sealed value %s", name, key);
    }
    json_t *ctx = secret_context(name, key);
    uint8_t *value = NULL;
    size_t n = 0;
    int r = ctx ? api_kms_unseal(stored, ctx, &value, &n, err) : api_fail(err, 500, "internal", "out of memory");
    json_decref(ctx);
    json_decref(secret);
    if (r < 0)
        return -1;
    if (memchr(value, 0, n)) {
        OPENSSL_cleanse(value, n);
        free(value);
        return api_fail(err, 500, "internal", "the KMS answered no usable value for Secret %s", name);
    }
    *ret = (char *)value;
    return 0;
}

int api_kms_secret_release(const char *name, const char *key, const char *sealed, const uint8_t *public_key,
                           size_t public_key_len, char **ret, api_error *err)
{
    if (!sealed || strncmp(sealed, SECRET_FORMAT_PREFIX, STRLEN(SECRET_FORMAT_PREFIX)) != 0)
        return api_fail(err, 500, "internal", "the stored value of Secret %s is not sealed by the KMS", name);
    _cleanup_free_ char *pk = malloc(base64_encoded_size(public_key_len));
    if (!pk)
        return api_fail(err, 500, "internal", "out of memory");
    base64_encode(public_key, public_key_len, pk, false);
    json_t *ctx = secret_context(name, key);
    json_t *body = ctx ? json_pack("{s:s, s:o, s:s, s:s, s:s}", "ciphertext", sealed + STRLEN(SECRET_FORMAT_PREFIX),
                                   "context", ctx, "publicKey", pk, "secret", name, "key", key)
                       : NULL;
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    json_t *ans = NULL;
    int r = call("/v1/secret-release", body, &ans, err);
    json_decref(body);
    if (r < 0)
        return -1;
    const char *jwe = json_string_value(json_object_get(ans, "jwe"));
    char *copy = jwe ? strdup(jwe) : NULL;
    json_decref(ans);
    if (!copy)
        return api_fail(err, 502, "bad_gateway", "the KMS answered no JWE");
    *ret = copy;
    return 0;
}

int api_kms_seal_secret(json_t *doc, api_error *err)
{
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    json_t *data = json_object_get(json_object_get(doc, "spec"), "data");
    json_t *stored = NULL;
    if (kms_store)
        store_get(kms_store, "Secret", name, &stored);
    json_t *old = json_object_get(json_object_get(stored, "spec"), "data");
    const char *k;
    json_t *v;
    int r = 0;
    json_object_foreach(data, k, v)
    {
        json_t *ctx = secret_context(name, k);
        const char *value = json_string_value(v);
        const char *prev = json_string_value(json_object_get(old, k));
        if (!ctx || !value) {
            json_decref(ctx);
            r = api_fail(err, 500, "internal", "out of memory");
            break;
        }
        if (stored_value_equals(prev, ctx, value)) {
            OPENSSL_cleanse((char *)value, strlen(value));
            json_object_set_new(data, k, json_string(prev));
            json_decref(ctx);
            continue;
        }
        size_t n = strlen(value);
        char *sealed = NULL;
        r = api_kms_seal(ctx, (const uint8_t *)value, n, &sealed, err);
        json_decref(ctx);
        OPENSSL_cleanse((char *)value, n);
        if (r < 0) {
            snprintf(err->message + strlen(err->message), sizeof(err->message) - strlen(err->message),
                     "; Secret values are stored only encrypted by the KMS");
            break;
        }
        json_object_set_new(data, k, json_string(sealed));
        free(sealed);
    }
    json_decref(stored);
    return r;
}

/* ---- workspace keys ---- */

int api_kms_workspace_key(json_t **ret_status, api_error *err)
{
    uint8_t rnd[16];
    char key[64] = "workspace_"; /* "_": never a Key resource's name (a DNS label) */
    if (random_bytes(rnd, sizeof(rnd)) < 0)
        return api_fail(err, 500, "internal", "no random bytes for the workspace key's name");
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(key + strlen(key), 3, "%02x", rnd[i]);
    json_auto_t *body = json_pack("{s:s, s:s}", "key", key, "algorithm", "x25519"), *ans = NULL;
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    if (call("/v1/public", body, &ans, err) < 0)
        return -1;
    const char *pub = json_string_value(json_object_get(ans, "public"));
    age_recipient r;
    uint8_t raw[AGE_KEY_SIZE + 2];
    if (!pub || base64_decode(pub, strlen(pub), raw, sizeof(raw), false) != AGE_KEY_SIZE)
        return api_fail(err, 502, "internal", "the KMS answered no X25519 public key");
    memcpy(r.public, raw, AGE_KEY_SIZE);
    char recipient[AGE_RECIPIENT_STRLEN];
    age_recipient_format(&r, recipient);
    json_t *status = json_pack("{s:s, s:s}", "recipient", recipient, "key", key);
    if (!status)
        return api_fail(err, 500, "internal", "out of memory");
    *ret_status = status;
    return 0;
}

int api_kms_destroy_workspace_key(const char *workspace, const char *key, const char *user, const char *ip,
                                  api_error *err)
{
    json_auto_t *body = json_pack("{s:s}", "key", key), *ans = NULL;
    int r = body ? call("/v1/destroy-key", body, &ans, err) : api_fail(err, 500, "internal", "out of memory");
    if (r < 0) {
        size_t n = strlen(err->message);
        snprintf(err->message + n, sizeof(err->message) - n,
                 "; Workspace %s is not deleted: its key %s must be destroyed by the kms role first (nothing was "
                 "changed; delete it again once the kms role answers)",
                 workspace, key);
    }
    bool destroyed = json_is_true(json_object_get(ans, "destroyed"));
    json_auto_t *details = json_pack("{s:s, s:s*, s:s*}", "key", key, "result",
                                     r < 0 ? NULL : destroyed ? "destroyed" : "already gone", "reason",
                                     r < 0 ? err->message : NULL);
    audit_event_emit(&(audit_event){.action = "workspace.key.destroy", .user = user, .ip = ip, .kind = "Workspace",
                                    .name = workspace, .outcome = r < 0 ? "failure" : "success",
                                    .details = details});
    return r;
}

/* ---- the /v1/kms/ endpoints ---- */

/* The default algorithm of a Key's purpose. */
static const char *key_algorithm(const json_t *spec)
{
    const char *alg = json_string_value(json_object_get(spec, "algorithm"));
    if (alg)
        return alg;
    return strcmp(json_string_value(json_object_get(spec, "purpose")) ?: "", "sign") == 0 ? "ecdsa-p256"
                                                                                          : "aes-256-gcm";
}

/* Keys recently looked up by this thread, valid while the store is unchanged
 * since (any write may have changed or deleted the Key). */
#define KEY_CACHE_SLOTS 16
typedef struct key_cache_entry {
    char name[RESOURCE_NAME_MAX + 1];
    int64_t revision;
    const char *purpose, *algorithm; /* static strings */
    bool release;                    /* spec.release: only attested release reaches it */
} key_cache_entry;
static __thread key_cache_entry key_cache[KEY_CACHE_SLOTS];

/* What the API needs of a Key resource. */
typedef struct key_info {
    const char *algorithm; /* static */
    bool release;
} key_info;

/* Fills SLOT from Key NAME in the store. Returns 0, -ENOENT (with ERR: 404)
 * when there is no such Key, or -1 with ERR: a purpose its algorithm cannot
 * serve, or the store failed. */
static int key_lookup(const char *name, key_cache_entry *slot, api_error *err)
{
    _cleanup_(json_decrefp) json_t *doc = NULL;
    int e = store_get(kms_store, "Key", name, &doc);
    if (e < 0) {
        api_fail_store(err, e, "Key", name);
        return e == -ENOENT ? -ENOENT : -1;
    }
    json_t *spec = json_object_get(doc, "spec");
    const char *p = json_string_value(json_object_get(spec, "purpose")) ?: "";
    const char *alg = key_algorithm(spec);
    static const char *const algs[] = {"aes-256-gcm", "ecdsa-p256", "ed25519"};
    const char *stat = NULL;
    for (size_t i = 0; i < ELEMENTSOF(algs); i++)
        if (strcmp(alg, algs[i]) == 0)
            stat = algs[i];
    bool encrypt = strcmp(p, "encrypt") == 0;
    if (!stat || encrypt != (strcmp(stat, "aes-256-gcm") == 0))
        return api_fail(err, 400, "invalid", "Key %s: purpose %s cannot use algorithm %s", name, p, alg);
    slot->purpose = encrypt ? "encrypt" : "sign";
    slot->algorithm = stat;
    slot->release = json_object_get(spec, "release") != NULL;
    return 0;
}

/* Looks up Key NAME (a valid resource name; cached per thread and store
 * revision) and checks it serves PURPOSE (NULL: any) into *RET. Returns 0,
 * -ENOENT with ERR (404) when there is no such Key, or -1 with ERR. */
static int key_resource(const char *name, const char *purpose, key_info *ret, api_error *err)
{
    int64_t revision = store_revision(kms_store);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    key_cache_entry *slot = &key_cache[h % KEY_CACHE_SLOTS];
    if (slot->revision != revision || strcmp(slot->name, name) != 0) {
        key_cache_entry fresh = {.revision = revision};
        int e = key_lookup(name, &fresh, err);
        if (e < 0)
            return e;
        snprintf(fresh.name, sizeof(fresh.name), "%s", name);
        *slot = fresh;
    }
    if (purpose && strcmp(slot->purpose, purpose) != 0)
        return api_fail(err, 400, "invalid", "Key %s is a %s key; it cannot be used to %s", name, slot->purpose,
                        purpose);
    *ret = (key_info){.algorithm = slot->algorithm, .release = slot->release};
    return 0;
}

/* Decides VERB on Key NAME for the caller of R, then finds the Key (for
 * PURPOSE, NULL: any) into *RET: the decision comes first, and a Key that
 * does not exist is told only to a caller who may get it
 * (api_fail_absent()). A Key with spec.release is refused to every VERB but
 * those of its management (PLAIN false) whatever the policies say: only
 * attested release reaches it. Returns 0, -EACCES with ERR when the call
 * is refused (already an audit entry), or -1 with ERR. */
static int key_decide(api_request *r, const char *verb, const char *name, const char *purpose, bool plain,
                      key_info *ret, api_error *err)
{
    if (!resource_name_valid(name))
        return api_fail(err, 400, "invalid", "key must name a Key resource");
    if (api_authorize(r->server, r->req, r->caller, verb, "Key", name, err) < 0)
        return -EACCES;
    key_info k;
    int e = key_resource(name, purpose, &k, err);
    if (e == -ENOENT) {
        api_fail_absent(r->server, r->req, r->caller, verb, "Key", name, err);
        return err->status == 403 ? -EACCES : -1; /* a 404 to who may get it */
    }
    if (e < 0)
        return -1;
    if (plain && k.release) {
        char reason[256];
        snprintf(reason, sizeof(reason),
                 "Key %s has spec.release: it is reached only by attested release (POST /v1/kms/keys/%s/release)",
                 name, name);
        api_refuse(r->req, r->caller, verb, "Key", name, reason, err);
        return -EACCES;
    }
    *ret = k;
    return 0;
}

int api_kms_datakey(const char *name, json_t **ret, api_error *err)
{
    key_info k;
    if (!resource_name_valid(name))
        return api_fail(err, 400, "invalid", "key must name a Key resource");
    if (key_resource(name, "encrypt", &k, err) < 0)
        return -1;
    json_t *body = json_pack("{s:s, s:s}", "key", name, "algorithm", k.algorithm);
    int r = body ? call("/v1/datakey", body, ret, err) : api_fail(err, 500, "internal", "out of memory");
    json_decref(body);
    return r;
}

int api_kms_job_release(const json_t *body, json_t **ret, api_error *err)
{
    return call("/v1/job-release", body, ret, err);
}

/* The key named inside a base64 KMS ciphertext, into OUT. */
static int ciphertext_key(const char *b64, char *out, api_error *err)
{
    if (!b64)
        return api_fail(err, 400, "invalid", "ciphertext must be a string (base64)");
    size_t len = strlen(b64);
    if (len > base64_encoded_size(KMS_CIPHERTEXT_MAX))
        return api_fail(err, 413, "too_large", "ciphertext is larger than any KMS ciphertext");
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    long n = buf ? base64_decode(b64, len, buf, len / 4 * 3 + 3, false) : -ENOMEM;
    kms_ciphertext c;
    int r = n >= 0 ? kms_ciphertext_decode(buf, (size_t)n, &c) : -EINVAL;
    free(buf);
    if (r < 0)
        return api_fail(err, 400, "invalid", "ciphertext is not a KMS ciphertext (standard base64 of format 1)");
    strcpy(out, c.key);
    return 0;
}

/* Copies the fields NAMES (NULL-terminated) present in FROM into TO. */
static void copy_fields(json_t *to, const json_t *from, const char *const *names)
{
    for (; *names; names++) {
        json_t *v = json_object_get(from, *names);
        if (v)
            json_object_set(to, *names, v);
    }
}

typedef struct kms_endpoint {
    const char *name;    /* after /v1/kms/ */
    const char *action;  /* audit action */
    const char *kms_path;
    const char *purpose; /* the Key's purpose; NULL when the key comes from the ciphertext */
    bool secret_answer;  /* the answer carries a plaintext */
    const char *fields[6];
} kms_endpoint;

static const kms_endpoint endpoints[] = {
    {"encrypt", "kms.encrypt", "/v1/encrypt", "encrypt", false, {"plaintext", "context"}},
    {"decrypt", "kms.decrypt", "/v1/decrypt", NULL, true, {"ciphertext", "context"}},
    {"datakey", "kms.datakey", "/v1/datakey", "encrypt", true, {"context", "bytes"}},
    {"rewrap", "kms.rewrap", "/v1/rewrap", NULL, false, {"ciphertext", "context"}},
    {"sign", "kms.sign", "/v1/sign", "sign", false, {"message"}},
    {"verify", "kms.verify", "/v1/verify", "sign", false, {"message", "signature", "version"}},
};

/* Reports one KMS operation by USER from IP: which key and version, the
 * outcome, and the names (never the values) of the encryption context
 * CONTEXT (may be NULL). Safe off the loop: it needs no request. */
static void report_op(const char *action, const char *user, const char *ip, const char *key, const json_t *context,
                      const json_t *ans, const api_error *err)
{
    json_t *details = json_object();
    if (json_is_object(context)) {
        json_t *names = json_array();
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)context, k, v) json_array_append_new(names, json_string(k));
        json_object_set_new(details, "contextKeys", names);
    }
    json_t *version = json_object_get(ans, "version") ?: json_object_get(ans, "primaryVersion");
    if (version)
        json_object_set(details, "version", version);
    if (err)
        json_object_set_new(details, "reason", json_string(err->message));
    audit_event_emit(&(audit_event){.action = action, .user = user, .ip = ip, .kind = "Key", .name = key,
                                    .outcome = err ? "failure" : "success", .details = details});
    json_decref(details);
}

/* report_op() for the caller of R, with BODY's context. */
static void report(api_request *r, const char *action, const char *key, const json_t *body, const api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    report_op(action, caller_name(r->caller), ip, key, json_object_get(body, "context"), NULL, err);
}

/* Sends ANS, wiping it when it holds a plaintext, and records the metrics. */
static void respond(h2o_req_t *req, api_route route, uint64_t started, json_t *ans, bool secret)
{
    if (secret) {
        api_span_route(route, req);
        kms_send_json_wiped(req, ans);
        api_finish(route, started, 200);
    } else
        api_respond_json(req, route, started, 200, ans);
}

/* One call to the kms role off the event loop, reported and answered back
 * on it. Owns FWD, BODY and ANS (wiped when freed: FWD shares BODY's
 * values, so BODY lives as long). */
typedef struct kms_job {
    offload_job super;
    const char *path;   /* the kms role's */
    const char *action; /* audit action; NULL: not reported (reads) */
    bool secret_answer;
    api_route route;
    uint64_t started;
    char key[KMS_KEY_NAME_MAX + 1];
    char user[RESOURCE_NAME_MAX + 1];
    char ip[INET6_ADDRSTRLEN];
    json_t *fwd, *body, *ans;
    int rc;
    api_error err;
} kms_job;

static void kms_job_work(offload_job *j)
{
    kms_job *job = (kms_job *)j;
    job->rc = call(job->path, job->fwd, &job->ans, &job->err);
}

/* Reports the operation (whether or not its client is still there: it
 * happened) and answers REQ when there is one. */
static void kms_job_done(offload_job *j, h2o_req_t *req)
{
    kms_job *job = (kms_job *)j;
    bool ran = job->rc < 0 || job->ans; /* skipped when the client left before it started */
    if (job->action && ran)
        report_op(job->action, job->user, job->ip, job->key, json_object_get(job->body, "context"), job->ans, job->rc < 0 ? &job->err : NULL);
    if (req && job->rc < 0)
        api_respond_error(req, job->route, job->started, &job->err);
    else if (req)
        respond(req, job->route, job->started, job->ans, job->secret_answer);
    kms_json_wipe_decref(job->fwd);
    kms_json_wipe_decref(job->body);
    kms_json_wipe_decref(job->ans);
    free(job);
}

/* Forwards FWD to PATH of the kms role for R off the loop; KEY names the
 * Key, BODY (the request's, may be NULL) the encryption context reported
 * with ACTION (NULL: not reported), failures included. FWD and BODY are
 * taken over, also on failure. Returns 0 (the answer follows), or -1 with
 * ERR. */
static int kms_forward(api_request *r, const char *path, const char *action, const char *key, json_t *fwd,
                       json_t *body, bool secret_answer, api_error *err)
{
    kms_job *job = calloc(1, sizeof(*job));
    if (!job) {
        kms_json_wipe_decref(fwd);
        kms_json_wipe_decref(body);
        return api_fail(err, 500, "internal", "out of memory");
    }
    *job = (kms_job){.super = {.work = kms_job_work, .done = kms_job_done}, .path = path, .action = action,
                     .secret_answer = secret_answer, .route = r->route, .started = r->started, .fwd = fwd,
                     .body = body};
    snprintf(job->key, sizeof(job->key), "%s", key);
    snprintf(job->user, sizeof(job->user), "%s", caller_name(r->caller));
    httpd_peer_ip(r->req, job->ip, sizeof(job->ip));
    if (api_offload(r, r->server->local, &job->super, err) < 0) {
        if (action)
            report_op(action, job->user, job->ip, key, json_object_get(body, "context"), NULL, err);
        kms_json_wipe_decref(job->fwd);
        kms_json_wipe_decref(job->body);
        free(job);
        return -1;
    }
    return 0;
}

/* POST /v1/kms/{encrypt,decrypt,datakey,rewrap,sign,verify}: decided as
 * that verb on the Key named in the body, or for decrypt and rewrap inside
 * the ciphertext. */
static int handle_op(api_request *r, const kms_endpoint *ep, api_error *err)
{
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    _cleanup_(kms_json_wipe_decrefp) json_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (r->req->entity.base)
        OPENSSL_cleanse(r->req->entity.base, r->req->entity.len);
    if (!body)
        return -1;
    if (!json_is_object(body))
        return api_fail(err, 400, "invalid", "the body must be a JSON object");
    char key[KMS_KEY_NAME_MAX + 1] = "";
    int rc = 0;
    if (ep->purpose) {
        const char *k = json_string_value(json_object_get(body, "key"));
        if (!k || strlen(k) >= sizeof(key))
            rc = api_fail(err, 400, "invalid", "key must name a Key resource");
        else
            snprintf(key, sizeof(key), "%s", k);
    } else
        rc = ciphertext_key(json_string_value(json_object_get(body, "ciphertext")), key, err);
    /* the built-in key of Secret values is no resource: not reachable here */
    key_info k;
    if (rc == 0)
        rc = key_decide(r, ep->name, key, ep->purpose ?: "encrypt", true, &k, err);
    if (rc < 0) {
        if (rc != -EACCES) /* a refusal is an audit entry already */
            report(r, ep->action, key[0] ? key : NULL, body, err);
        return -1;
    }
    json_t *fwd = json_pack("{s:s, s:s}", "key", key, "algorithm", k.algorithm);
    if (!fwd)
        return api_fail(err, 500, "internal", "out of memory");
    copy_fields(fwd, body, ep->fields);
    return kms_forward(r, ep->kms_path, ep->action, key, fwd, TAKE_PTR(body), ep->secret_answer, err);
    return 0;
}

/* Decides VERB on Key NAME for R, then forwards the call (PATH, audited as
 * ACTION unless it is a describe) to the kms role; for a version change
 * (VERSION > 0), with BODY's state and CANCEL. Returns 0 (the answer
 * follows), or -1 with ERR. */
static int key_call(api_request *r, const char *name, const char *action, const char *path, const char *verb,
                    unsigned long version, bool cancel, const json_t *body, api_error *err)
{
    key_info k;
    if (key_decide(r, verb, name, NULL, false, &k, err) < 0)
        return -1;
    json_t *fwd = json_pack("{s:s, s:s}", "key", name, "algorithm", k.algorithm);
    if (!fwd)
        return api_fail(err, 500, "internal", "out of memory");
    if (version) {
        static const char *const fields[] = {"state", "destroyAfterSeconds", NULL};
        copy_fields(fwd, body, fields);
        json_object_set_new(fwd, "version", json_integer((json_int_t)version));
        json_object_set_new(fwd, "cancel", json_boolean(cancel));
    }
    return kms_forward(r, path, strcmp(action, "kms.describe") != 0 ? action : NULL, name, fwd, NULL, false, err);
}

/* Enabling or disabling a version needs `disable`, or `destroy` when the
 * version is pending destruction (which this cancels): the Key's
 * description is asked of the kms role off the loop (a kms_job on
 * /v1/key, its BODY the request's), then the call is decided and made.
 * Holds the caller's references. */
typedef struct version_job {
    kms_job super;
    api_server *server;
    caller who;
    uint32_t version;
} version_job;

static void version_done(offload_job *j, h2o_req_t *req)
{
    version_job *job = (version_job *)j;
    kms_job *k = &job->super;
    bool pending = false;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(k->ans, "versions"), i, v)
    {
        if (json_integer_value(json_object_get(v, "version")) == (json_int_t)job->version &&
            strcmp(json_string_value(json_object_get(v, "state")) ?: "", "pendingDestruction") == 0)
            pending = true;
    }
    api_request r = {.server = job->server, .req = req, .route = k->route, .started = k->started,
                     .caller = &job->who};
    if (req && (k->rc < 0 || key_call(&r, k->key, "kms.version", "/v1/version", pending ? "destroy" : "disable",
                                      job->version, pending, k->body, &k->err) < 0))
        api_respond_error(req, k->route, k->started, &k->err);
    caller_clear(&job->who);
    json_decref(k->fwd);
    json_decref(k->body);
    json_decref(k->ans);
    free(job);
}

/* Enables or disables VERSION of Key NAME (BODY: the request's): the
 * version's state is read only for a caller who may disable or destroy,
 * from a Key that exists; otherwise the call is decided as `disable`, for
 * key_decide() to refuse. Returns 0 (the answer follows), or -1 with ERR. */
static int version_change(api_request *r, const char *name, uint32_t version, json_t *body, api_error *err)
{
    key_info k;
    api_error ignored;
    if ((!api_may(r->server, r->req, r->caller, "disable", "Key", name) &&
         !api_may(r->server, r->req, r->caller, "destroy", "Key", name)) ||
        key_resource(name, NULL, &k, &ignored) < 0)
        return key_call(r, name, "kms.version", "/v1/version", "disable", version, false, body, err);
    version_job *job = calloc(1, sizeof(*job));
    if (!job)
        return api_fail(err, 500, "internal", "out of memory");
    *job = (version_job){.super = {.super = {.work = kms_job_work, .done = version_done}, .path = "/v1/key",
                                   .route = r->route, .started = r->started,
                                   .fwd = json_pack("{s:s, s:s}", "key", name, "algorithm", k.algorithm),
                                   .body = json_incref(body)},
                         .server = r->server, .version = version,
                         .who = {json_incref(r->caller->user), json_incref(r->caller->credential)}};
    snprintf(job->super.key, sizeof(job->super.key), "%s", name);
    int e = job->super.fwd ? api_offload(r, r->server->local, &job->super.super, err)
                           : api_fail(err, 500, "internal", "out of memory");
    if (e < 0) {
        caller_clear(&job->who);
        json_decref(job->super.fwd);
        json_decref(job->super.body);
        free(job);
    }
    return e;
}

/* GET /v1/kms/keys/{name} (get), POST .../rotate (rotate), POST
 * .../versions/{n} (disable, or destroy: see version_change()), each
 * decided on Key NAME; .../release is attested release (handlers-attest.c). */
static int handle_key(api_request *r, const char *rest, size_t len, api_error *err)
{
    char name[RESOURCE_NAME_MAX + 1], tail[64] = "";
    const char *slash = memchr(rest, '/', len);
    size_t nlen = slash ? (size_t)(slash - rest) : len;
    if (nlen == 0 || nlen > RESOURCE_NAME_MAX || (slash && len - nlen - 1 >= sizeof(tail)))
        return api_fail(err, 404, "not_found", "Key not found (not a valid name)");
    memcpy(name, rest, nlen);
    name[nlen] = 0;
    if (slash) {
        memcpy(tail, slash + 1, len - nlen - 1);
        tail[len - nlen - 1] = 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "Key %s not found (not a valid name)", name);
    const char *action, *path, *method;
    unsigned long version = 0;
    if (strcmp(tail, "release") == 0)
        return api_attest_release(r, name, err); /* key release against attestation evidence */
    if (!tail[0])
        action = "kms.describe", path = "/v1/key", method = "GET";
    else if (strcmp(tail, "rotate") == 0)
        action = "kms.rotate", path = "/v1/rotate", method = "POST";
    else if (strncmp(tail, "versions/", 9) == 0) {
        char *end;
        version = strtoul(tail + 9, &end, 10);
        if (*end || version < 1 || version > UINT32_MAX || tail[9] == '0')
            return api_fail(err, 404, "not_found", "Key %s has no version %s", name, tail + 9);
        action = "kms.version", path = "/v1/version", method = "POST";
    } else
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/kms/keys/%s/%s", name, tail);
    if (!api_method_is(r->req, method)) {
        api_method_not_allowed(r->req, r->route, r->started, method);
        return 0;
    }
    if (!version)
        return key_call(r, name, action, path, !tail[0] ? "get" : "rotate", 0, false, NULL, err);
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    const char *state = json_string_value(json_object_get(body, "state"));
    if (!json_is_object(body) || !state ||
        (strcmp(state, "enabled") != 0 && strcmp(state, "disabled") != 0 && strcmp(state, "destroyed") != 0))
        return api_fail(err, 400, "invalid",
                        "the body must be {\"state\": \"enabled|disabled|destroyed\"[, \"destroyAfterSeconds\": N]}");
    if (strcmp(state, "destroyed") == 0)
        return key_call(r, name, action, path, "destroy", version, false, body, err);
    return version_change(r, name, (uint32_t)version, body, err);
}

int api_handle_kms(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (rest_len > 5 && memcmp(rest, "keys/", 5) == 0)
        return handle_key(r, rest + 5, rest_len - 5, err);
    for (size_t i = 0; i < ELEMENTSOF(endpoints); i++)
        if (strlen(endpoints[i].name) == rest_len && memcmp(rest, endpoints[i].name, rest_len) == 0)
            return handle_op(r, &endpoints[i], err);
    return api_fail(err, 404, "not_found", "no such endpoint: /v1/kms/%.*s", (int)MIN(rest_len, (size_t)100), rest);
}
