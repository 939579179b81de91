/* The API and the KMS (see handlers-kms.h). The api role never holds key
 * material: it checks the caller and the Key resource, forwards the
 * operation to the kms role, reports it as an audit event (never with a
 * plaintext) and answers. Plaintexts in requests and answers are wiped. */
#include "api/handlers-kms.h"

#include "api/handlers-attest.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <string.h>

#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "kms/ciphertext.h"
#include "kms/client.h"
#include "kms/respond.h"
#include "resource/resource.h"

#define SECRETS_KEY "_secrets" /* the KMS key of Secret values; not a valid resource name */
#define SECRET_FORMAT_PREFIX "kms:"

static const char *kms_socket;
static store *kms_store;

void api_kms_init(const char *socket, store *s)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    kms_socket = socket;
    kms_store = s;
}

void api_kms_done(void)
{
    kms_client_cleanup();
    curl_global_cleanup();
}

/* Calls the kms role; on anything but a 200 fills ERR from its answer (or
 * with 503 when it cannot be reached) and returns -1. */
static int call(const char *path, const json_t *body, json_t **ret, api_error *err)
{
    json_t *ans = NULL;
    metrics_count_kms_call();
    int status = kms_socket ? kms_call(kms_socket, path, body, &ans) : -ENOTCONN;
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
                                        "sealed", "internal"};
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

int api_kms_secret_value(const char *name, const char *key, char **ret, api_error *err)
{
    json_t *secret = NULL;
    if (!kms_store || store_get(kms_store, "Secret", name, &secret) < 0)
        return api_fail(err, 500, "internal", "Secret %s does not exist", name);
    const char *stored = json_string_value(json_object_get(json_object_get(json_object_get(secret, "spec"), "data"), key));
    json_t *body = stored && strncmp(stored, SECRET_FORMAT_PREFIX, STRLEN(SECRET_FORMAT_PREFIX)) == 0
                       ? json_pack("{s:s, s:o}", "ciphertext", stored + STRLEN(SECRET_FORMAT_PREFIX), "context",
                                   secret_context(name, key))
                       : NULL;
    json_decref(secret);
    if (!body)
        return api_fail(err, 500, "internal", "Secret %s has no sealed value %s", name, key);
    _cleanup_(kms_json_wipe_decrefp) json_t *ans = NULL;
    int r = call("/v1/decrypt", body, &ans, err);
    json_decref(body);
    if (r < 0)
        return -1;
    const char *pt = json_string_value(json_object_get(ans, "plaintext"));
    size_t cap = pt ? strlen(pt) / 4 * 3 + 3 : 0;
    char *value = pt ? malloc(cap + 1) : NULL;
    long n = value ? base64_decode(pt, strlen(pt), (uint8_t *)value, cap, false) : -1;
    if (n < 0 || memchr(value, 0, (size_t)n)) {
        if (value) {
            OPENSSL_cleanse(value, cap);
            free(value);
        }
        return api_fail(err, 500, "internal", "the KMS answered no usable value for Secret %s", name);
    }
    value[n] = 0;
    *ret = value;
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
        char *b64 = malloc(base64_encoded_size(n));
        json_t *body = NULL, *ans = NULL;
        if (b64) {
            base64_encode((const uint8_t *)value, n, b64, false);
            body = json_pack("{s:s, s:s, s:s, s:o}", "key", SECRETS_KEY, "algorithm", "aes-256-gcm", "plaintext", b64,
                             "context", ctx);
            OPENSSL_cleanse(b64, strlen(b64));
            free(b64);
        } else
            json_decref(ctx);
        if (!body)
            r = api_fail(err, 500, "internal", "out of memory");
        else
            r = call("/v1/encrypt", body, &ans, err);
        kms_json_wipe_decref(body);
        if (r < 0) {
            snprintf(err->message + strlen(err->message), sizeof(err->message) - strlen(err->message),
                     "; Secret values are stored only encrypted by the KMS");
            break;
        }
        char *sealed = NULL;
        if (asprintf(&sealed, SECRET_FORMAT_PREFIX "%s", json_string_value(json_object_get(ans, "ciphertext"))) < 0)
            sealed = NULL;
        json_decref(ans);
        OPENSSL_cleanse((char *)value, n);
        if (!sealed) {
            r = api_fail(err, 500, "internal", "out of memory");
            break;
        }
        json_object_set_new(data, k, json_string(sealed));
        free(sealed);
    }
    json_decref(stored);
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
} key_cache_entry;
static __thread key_cache_entry key_cache[KEY_CACHE_SLOTS];

/* The purpose and algorithm of Key NAME from the store (static strings), or
 * -1 with ERR: not found, or a purpose its algorithm cannot serve. */
static int key_lookup(const char *name, const char **ret_purpose, const char **ret_alg, api_error *err)
{
    json_t *doc = NULL;
    int e = store_get(kms_store, "Key", name, &doc);
    if (e < 0)
        return api_fail_store(err, e, "Key", name);
    json_t *spec = json_object_get(doc, "spec");
    const char *p = json_string_value(json_object_get(spec, "purpose")) ?: "";
    const char *alg = key_algorithm(spec);
    static const char *const algs[] = {"aes-256-gcm", "ecdsa-p256", "ed25519"};
    const char *stat = NULL;
    for (size_t i = 0; i < ELEMENTSOF(algs); i++)
        if (strcmp(alg, algs[i]) == 0)
            stat = algs[i];
    bool encrypt = strcmp(p, "encrypt") == 0;
    int r = 0;
    if (!stat || encrypt != (strcmp(stat, "aes-256-gcm") == 0))
        r = api_fail(err, 400, "invalid", "Key %s: purpose %s cannot use algorithm %s", name, p, alg);
    json_decref(doc);
    if (r == 0) {
        *ret_purpose = encrypt ? "encrypt" : "sign";
        *ret_alg = stat;
    }
    return r;
}

/* Looks up Key NAME (cached per thread and store revision) and checks it
 * serves PURPOSE (NULL: any); its algorithm into *RET_ALG (static). Returns
 * 0 or -1 with ERR. */
static int key_resource(const char *name, const char *purpose, const char **ret_alg, api_error *err)
{
    if (!name || !resource_name_valid(name))
        return api_fail(err, 400, "invalid", "key must name a Key resource");
    int64_t revision = store_revision(kms_store);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    key_cache_entry *slot = &key_cache[h % KEY_CACHE_SLOTS];
    if (slot->revision != revision || strcmp(slot->name, name) != 0) {
        const char *p, *alg;
        if (key_lookup(name, &p, &alg, err) < 0)
            return -1;
        *slot = (key_cache_entry){.revision = revision, .purpose = p, .algorithm = alg};
        snprintf(slot->name, sizeof(slot->name), "%s", name);
    }
    if (purpose && strcmp(slot->purpose, purpose) != 0)
        return api_fail(err, 400, "invalid", "Key %s is a %s key; it cannot be used to %s", name, slot->purpose,
                        purpose);
    *ret_alg = slot->algorithm;
    return 0;
}

int api_kms_datakey(const char *name, json_t **ret, api_error *err)
{
    const char *alg;
    if (key_resource(name, "encrypt", &alg, err) < 0)
        return -1;
    json_t *body = json_pack("{s:s, s:s}", "key", name, "algorithm", alg);
    int r = body ? call("/v1/datakey", body, ret, err) : api_fail(err, 500, "internal", "out of memory");
    json_decref(body);
    return r;
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

/* Reports one KMS operation: who, which key and version, the outcome, and
 * the names (never the values) of the encryption context. */
static void report(api_request *r, const char *action, const char *key, const json_t *body, const json_t *ans,
                   const api_error *err)
{
    char ip[64];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = json_object();
    json_t *ctx = json_object_get(body, "context");
    if (json_is_object(ctx)) {
        json_t *names = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(ctx, k, v) json_array_append_new(names, json_string(k));
        json_object_set_new(details, "contextKeys", names);
    }
    json_t *version = json_object_get(ans, "version") ?: json_object_get(ans, "primaryVersion");
    if (version)
        json_object_set(details, "version", version);
    if (err)
        json_object_set_new(details, "reason", json_string(err->message));
    audit_event_emit(&(audit_event){.action = action, .user = caller_name(r->caller), .ip = ip, .kind = "Key",
                                    .name = key, .outcome = err ? "failure" : "success", .details = details});
    json_decref(details);
}

/* Sends ANS, wiping it when it holds a plaintext, and records the metrics. */
static void respond(api_request *r, json_t *ans, bool secret)
{
    if (secret) {
        kms_send_json_wiped(r->req, ans);
        api_finish(r->route, r->started, 200);
    } else
        api_respond_json(r->req, r->route, r->started, 200, ans);
}

/* POST /v1/kms/{encrypt,decrypt,datakey,rewrap,sign,verify}. */
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
    const char *alg = NULL;
    int rc;
    if (ep->purpose) {
        const char *k = json_string_value(json_object_get(body, "key"));
        rc = key_resource(k, ep->purpose, &alg, err);
        if (rc == 0)
            snprintf(key, sizeof(key), "%s", k);
    } else {
        rc = ciphertext_key(json_string_value(json_object_get(body, "ciphertext")), key, err);
        /* the built-in key of Secret values is not reachable from here */
        if (rc == 0)
            rc = key_resource(key, "encrypt", &alg, err);
    }
    if (rc < 0) {
        report(r, ep->action, key[0] ? key : NULL, body, NULL, err);
        return -1;
    }
    _cleanup_(kms_json_wipe_decrefp) json_t *fwd = json_pack("{s:s, s:s}", "key", key, "algorithm", alg);
    if (!fwd)
        return api_fail(err, 500, "internal", "out of memory");
    copy_fields(fwd, body, ep->fields);
    _cleanup_(kms_json_wipe_decrefp) json_t *ans = NULL;
    if (call(ep->kms_path, fwd, &ans, err) < 0) {
        report(r, ep->action, key, body, NULL, err);
        return -1;
    }
    report(r, ep->action, key, body, ans, NULL);
    respond(r, ans, ep->secret_answer);
    return 0;
}

/* GET /v1/kms/keys/{name}, POST .../rotate, POST .../versions/{n}. */
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
    json_t *body = NULL;
    if (version) {
        body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
        if (!body)
            return -1;
        if (!json_is_object(body)) {
            json_decref(body);
            return api_fail(err, 400, "invalid", "the body must be {\"state\": \"enabled|disabled|destroyed\"}");
        }
    }
    const char *alg;
    if (key_resource(name, NULL, &alg, err) < 0) {
        json_decref(body);
        return -1;
    }
    json_t *fwd = json_pack("{s:s, s:s}", "key", name, "algorithm", alg), *ans = NULL;
    if (version) {
        static const char *const fields[] = {"state", "destroyAfterSeconds", NULL};
        copy_fields(fwd, body, fields);
        json_object_set_new(fwd, "version", json_integer((json_int_t)version));
    }
    int rc = call(path, fwd, &ans, err);
    if (strcmp(action, "kms.describe") != 0)
        report(r, action, name, NULL, ans, rc < 0 ? err : NULL);
    if (rc == 0)
        respond(r, ans, false);
    json_decref(fwd);
    json_decref(body);
    json_decref(ans);
    return rc;
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
