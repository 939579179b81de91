/* GET /v1/proxy/config: the proxy role's configuration as Server-Sent
 * Events. Each event is `event: NAME` and `data: <one line of JSON>`:
 *
 *   snapshot  {revision, epoch, issuer, audience, objects: {Service: [...], Policy,
 *             User, Group, Credential, Session}, jwks: {keys}, secrets: {...}}
 *             everything the proxy holds; it replaces what it had
 *   change    {type: ADDED|MODIFIED|DELETED, revision, object} for each
 *             change of those kinds after the snapshot, in revision order
 *   jwks      {keys} whenever the token verification keys change
 *   secrets   {"<secret>/<key>": value} the Secret values Services inject
 *             (spec.inject), in the clear, whenever that map changes
 *   handoff   {key: base64} the 32-byte key browser login handoffs are
 *             sealed with (handoff.h); also in every snapshot as `handoff`
 *   error     {error: {code, message}} just before the server ends a stream
 *
 * and a `: keep-alive` comment when nothing else was sent for 4 s. With
 * ?since=REV the stream resumes after revision REV (changes only, then the
 * current jwks, secrets and handoff key) while the store's history still
 * holds it, and starts with a fresh snapshot otherwise. A snapshot names the
 * store's `epoch` (16 hex digits); given back as &epoch=HEX, a resume is
 * refused (a snapshot instead) once the store was reset or replaced since,
 * even at a revision the new store has.
 *
 * Documents go out as stored but without `status` (a Credential's keeps only
 * userUid and tokenGeneration, an Enclave's its replicas): credential token
 * digests and session refresh-token digests never leave the api role. Only Secret
 * values a Service references are unsealed (by the KMS, on the API's local
 * offload pool: one batch at a time per stream, which sends nothing else
 * until it is back), and their clear text is wiped once queued; the stream
 * keeps only a digest of what it sent.
 * The caller is authenticated and authorized again every few seconds, so a
 * revoked proxy credential ends its stream. */
#include "api/handlers-proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/handlers-kms.h"
#include "api/handlers-policy.h"
#include "auth/handoff.h"
#include "api/sse.h"
#include "audit/event.h"
#include "auth/bootstrap-names.h"
#include "auth/keyring.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/offload.h"

#define PROXY_BUFFER_MAX (64 * 1024 * 1024) /* unsent bytes per stream: a snapshot must fit */
#define PROXY_KEEPALIVE_NS (4 * NSEC_PER_SEC) /* under 5 s even with a poll tick of delay */
#define PROXY_BATCH_MAX 1000                  /* changes read at once */
#define PROXY_BATCHES_PER_POLL 8
#define PROXY_SECRETS_RETRY_NS (2 * NSEC_PER_SEC) /* a value the KMS could not unseal is asked again */
#define PROXY_SECRETS_MAX 1024                    /* distinct Secret values injected */
#define PROXY_SINCE_MAX 18                        /* digits of ?since= (fits an int64) */

/* What the proxy gets, in this order in the snapshot; then Secret, whose
 * changes only decide when the secrets map is built again. */
/* what the proxy receives (Secret last: watched, never sent) */
static const char *const config_kinds[] = {"Service",    "Policy",  "User",    "Group",   "Credential",
                                           "Session",    "Enclave", "AttestationPolicy", "Secret"};
#define N_CONFIG_KINDS (ELEMENTSOF(config_kinds) - 1)
#define N_WATCHED_KINDS ELEMENTSOF(config_kinds)

typedef struct proxy_stream {
    api_sse super;
    api_server *server;
    int64_t revision; /* the last change looked at (sent, or a Secret's) */
    json_t *jwks_sent; /* the JWKS last sent */
    json_t *refs;      /* "<secret>/<key>" -> [secret, key]: the values the map last sent holds */
    uint8_t secrets_sent[SHA256_DIGEST_LENGTH]; /* digest of the map last sent */
    bool secrets_known;      /* a map was sent on this stream */
    uint64_t secrets_retry_at; /* monotonic; 0 unless a value could not be unsealed */
    bool unsealing;            /* a batch of values is being unsealed: the stream waits for it */
    bool handoff_after;        /* a resumed stream: `handoff` follows the batch's `secrets` */
    char user[256];
} proxy_stream;

/* ---- the documents and the keys ---- */

/* The document's kind, "" when it has none. */
static const char *kind_of(const json_t *doc)
{
    const char *k = json_string_value(json_object_get(doc, "kind"));
    return k ? k : "";
}

/* Removes from DOC (in place) the status the proxy has no use for: digests
 * of tokens stay here. An Enclave keeps its status (the replicas the proxy
 * reaches), a Credential only its user's uid and token generation, which
 * the proxy decides sessions by (auth/session.h). */
static void strip_status(json_t *doc)
{
    if (strcmp(kind_of(doc), "Enclave") == 0)
        return;
    json_t *status = json_object_get(doc, "status");
    json_t *kept = strcmp(kind_of(doc), "Credential") == 0 ? json_object() : NULL;
    static const char *const credential_fields[] = {"userUid", "tokenGeneration"};
    for (size_t i = 0; kept && i < ELEMENTSOF(credential_fields); i++) {
        json_t *v = json_object_get(status, credential_fields[i]);
        if (v)
            json_object_set(kept, credential_fields[i], v);
    }
    if (kept)
        json_object_set_new(doc, "status", kept);
    else
        json_object_del(doc, "status");
}

/* The current JWKS of the token signing keys (new reference), empty when the
 * server signs no tokens; NULL on allocation failure. */
static json_t *current_jwks(api_server *srv)
{
    if (!srv->cfg->keyring)
        return json_pack("{s:[]}", "keys");
    return auth_keyring_jwks(srv->cfg->keyring);
}

/* The Secret values SERVICES inject, as "<secret>/<key>" -> [secret, key]
 * (new reference; names only, no values), at most PROXY_SECRETS_MAX. NULL on
 * allocation failure. */
static json_t *inject_refs(const json_t *services)
{
    json_t *refs = json_object();
    size_t i;
    json_t *svc;
    json_array_foreach(services, i, svc)
    {
        if (!refs)
            break;
        json_t *inject = json_object_get(json_object_get(svc, "spec"), "inject");
        const char *secret = json_string_value(json_object_get(inject, "secret"));
        const char *key = json_string_value(json_object_get(inject, "key"));
        if (!secret || !key)
            continue;
        char ref[600];
        if ((size_t)snprintf(ref, sizeof(ref), "%s/%s", secret, key) >= sizeof(ref) || json_object_get(refs, ref))
            continue;
        if (json_object_size(refs) >= PROXY_SECRETS_MAX) {
            log_fields(LOG_LEVEL_WARN, "too many injected Secret values; the proxy does not get the rest", "service",
                       json_string_value(json_object_get(json_object_get(svc, "metadata"), "name")), NULL);
            break;
        }
        if (json_object_set_new(refs, ref, json_pack("[s, s]", secret, key)) < 0) {
            json_decref(refs);
            refs = NULL;
        }
    }
    return refs;
}

/* Unseals every value REFS names through the KMS into *RET_MAP ("<secret>/<key>"
 * -> clear value; a new reference the caller releases with
 * kms_json_wipe_decref()). A value that cannot be had is left out and
 * logged by name (at debug when QUIET: the last batch failed too);
 * *RET_COMPLETE is false when one of them failed for a reason that may pass
 * (the KMS sealed or down). Blocks on the KMS: runs on an offload worker.
 * Returns 0 or -ENOMEM. */
static int unseal_refs(const json_t *refs, bool quiet, json_t **ret_map, bool *ret_complete)
{
    json_t *map = json_object();
    if (!map)
        return -ENOMEM;
    bool complete = true;
    const char *ref;
    json_t *pair;
    json_object_foreach((json_t *)refs, ref, pair)
    {
        const char *secret = json_string_value(json_array_get(pair, 0)), *key = json_string_value(json_array_get(pair, 1));
        char *value = NULL;
        api_error err;
        if (api_kms_secret_value(secret, key, &value, &err) < 0) {
            if (err.status == 503)
                complete = false;
            log_fields(quiet ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARN,
                       "cannot unseal a Secret value a Service injects; the proxy does not get it", "secret", secret,
                       "key", key, "reason", err.message, NULL);
            continue;
        }
        json_t *v = json_string(value);
        OPENSSL_cleanse(value, strlen(value));
        free(value);
        if (!v) /* not UTF-8 text (or no memory): JSON cannot carry it */
            log_fields(LOG_LEVEL_WARN, "a Secret value a Service injects is not UTF-8 text; the proxy does not get it",
                       "secret", secret, "key", key, NULL);
        else if (json_object_set_new(map, ref, v) < 0) {
            kms_json_wipe_decref(map);
            return -ENOMEM;
        }
    }
    *ret_map = map;
    *ret_complete = complete;
    return 0;
}

/* The SHA-256 of MAP's canonical JSON into OUT; the text is wiped. */
static int map_digest(const json_t *map, uint8_t out[SHA256_DIGEST_LENGTH])
{
    char *text = json_dumps(map, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text)
        return -ENOMEM;
    SHA256((const uint8_t *)text, strlen(text), out);
    OPENSSL_cleanse(text, strlen(text));
    free(text);
    return 0;
}

/* One batch of Secret values unsealed off the loop for one stream (at most
 * one per stream: the stream does not poll while it runs). DONE reads the
 * stream only while its request is alive; otherwise, or once the stream
 * ends, the values are wiped unsent. */
typedef struct unseal_job {
    offload_job super;
    proxy_stream *p;
    json_t *refs; /* what to unseal: "<secret>/<key>" -> [secret, key] */
    bool quiet;
    int error;
    bool complete;
    json_t *map; /* the clear values (wiped with kms_json_wipe_decref) */
    /* a snapshot waiting for its secrets; NULL for a `secrets` event */
    json_t *objects, *jwks;
} unseal_job;

static void unseal_job_free(unseal_job *j)
{
    json_decref(j->refs);
    kms_json_wipe_decref(j->map);
    json_decref(j->objects);
    json_decref(j->jwks);
    free(j);
}

static void unseal_work(offload_job *job)
{
    unseal_job *j = (unseal_job *)job;
    j->error = unseal_refs(j->refs, j->quiet, &j->map, &j->complete);
}

static void unseal_done(offload_job *job, h2o_req_t *req);

/* Unseals the values SERVICES (documents, borrowed) inject on the local
 * offload pool; a snapshot's OBJECTS and JWKS (taken, NULL for a `secrets`
 * event) wait in the job. Returns 0 with the stream waiting for the batch,
 * or a negative errno: -ENOMEM, -EAGAIN (the pool is full), -ESHUTDOWN. */
static int submit_unseal(proxy_stream *p, const json_t *services, json_t *objects, json_t *jwks)
{
    unseal_job *j = calloc(1, sizeof(*j));
    json_t *refs = inject_refs(services);
    if (!j || !refs) {
        free(j);
        json_decref(refs);
        json_decref(objects);
        json_decref(jwks);
        return -ENOMEM;
    }
    *j = (unseal_job){.super = {.work = unseal_work, .done = unseal_done}, .p = p, .refs = refs,
                      .quiet = p->secrets_retry_at != 0, .objects = objects, .jwks = jwks};
    int e = offload_submit(p->server->local, p->super.thread->offload, p->super.req, &j->super);
    if (e < 0) {
        unseal_job_free(j);
        return e;
    }
    p->unsealing = true;
    api_sse_hold(&p->super, true); /* the changes queued before it go out with its result */
    return 0;
}

/* The handoff key as {"key": "<standard base64>"} (new reference, to release
 * with kms_json_wipe_decref()) into *RET; NULL there when the server holds
 * none. Returns 0 or -ENOMEM. */
static int handoff_json(api_server *srv, json_t **ret)
{
    if (!srv->cfg->handoff_key) {
        *ret = NULL;
        return 0;
    }
    char b64[64];
    base64_encode(srv->cfg->handoff_key, HANDOFF_KEY_LEN, b64, false);
    json_t *j = json_pack("{s:s}", "key", b64);
    OPENSSL_cleanse(b64, sizeof(b64));
    if (!j)
        return -ENOMEM;
    *ret = j;
    return 0;
}

/* ---- events ---- */

/* Fills ERR for a failed queue (E): the buffer cap, or memory. */
static int fail_queue(api_error *err, int e)
{
    if (e == -E2BIG)
        return api_fail(err, 507, "insufficient_storage",
                        "more than %d MiB of configuration waits to be sent (the client reads too slowly)",
                        PROXY_BUFFER_MAX / (1024 * 1024));
    return api_fail(err, 500, "internal", "out of memory");
}

/* Fills ERR for a batch of values that could not be handed to the offload
 * pool (E). */
static int fail_unseal(api_error *err, int e)
{
    if (e == -EAGAIN)
        return api_fail(err, 503, "unavailable", "too many calls to the KMS in progress; reconnect");
    if (e == -ESHUTDOWN)
        return api_fail(err, 503, "unavailable", "the server is stopping; reconnect");
    return fail_queue(err, e);
}

/* Reads everything for a `snapshot` and sends the values the Services inject
 * to be unsealed; the snapshot is queued once they are (snapshot_done), and
 * nothing else is sent before it. Returns 0 or -1 with ERR. */
static int queue_snapshot(proxy_stream *p, api_error *err)
{
    json_t *items;
    int64_t rev;
    uint64_t epoch = store_epoch(p->server->cfg->store); /* before the list: a reset meanwhile lists again */
    int e = store_list_kinds(p->server->cfg->store, config_kinds, N_CONFIG_KINDS, &items, &rev);
    if (e < 0)
        return api_fail_store(err, e, "ProxyConfig", "*");
    json_t *objects = json_object();
    for (size_t k = 0; objects && k < N_CONFIG_KINDS; k++)
        if (json_object_set_new(objects, config_kinds[k], json_array()) < 0) {
            json_decref(objects);
            objects = NULL;
        }
    size_t i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        json_t *list = json_object_get(objects, kind_of(doc));
        strip_status(doc);
        if (list && json_array_append(list, doc) < 0) {
            json_decref(objects);
            objects = NULL;
        }
    }
    json_decref(items);
    json_t *jwks = current_jwks(p->server);
    if (!objects || !jwks) {
        json_decref(objects);
        json_decref(jwks);
        return fail_queue(err, -ENOMEM);
    }
    e = submit_unseal(p, json_object_get(objects, "Service"), objects, jwks);
    if (e < 0)
        return fail_unseal(err, e);
    p->revision = rev; /* the stream polls again only once the snapshot is queued */
    p->super.epoch = epoch;
    return 0;
}

/* Queues the snapshot J waited for, with its secrets, and makes it the
 * stream's state. Returns 0 or -1 with ERR. */
static int snapshot_done(proxy_stream *p, unseal_job *j, api_error *err)
{
    json_t *handoff = NULL;
    char iss[300];
    api_auth_issuer(p->server, iss, sizeof(iss));
    int r = handoff_json(p->server, &handoff), e;
    char epoch[24];
    snprintf(epoch, sizeof(epoch), "%016llx", (unsigned long long)p->super.epoch);
    json_t *snap = r < 0 ? NULL
                         : json_pack("{s:I, s:s, s:s, s:s, s:O, s:O, s:O}", "revision", (json_int_t)p->revision,
                                     "epoch", epoch, "issuer", iss, "audience", AUTH_AUDIENCE, "objects", j->objects,
                                     "jwks", j->jwks, "secrets", j->map);
    if (snap && handoff && json_object_set(snap, "handoff", handoff) < 0) {
        json_decref(snap);
        snap = NULL;
    }
    if (!snap)
        r = fail_queue(err, -ENOMEM);
    else if ((e = api_sse_queue_event(&p->super, "snapshot", -1, snap)) < 0)
        r = fail_queue(err, e);
    json_decref(snap); /* the map's and HANDOFF's only references are ours again: wiped after */
    kms_json_wipe_decref(handoff);
    if (r == 0 && (e = map_digest(j->map, p->secrets_sent)) < 0)
        r = fail_queue(err, e);
    if (r < 0)
        return -1;
    p->secrets_known = true;
    json_decref(p->jwks_sent);
    p->jwks_sent = TAKE_PTR(j->jwks);
    return 0;
}

/* Whether a change of REFS' Secret NAME matters to the map. */
static bool secret_referenced(const json_t *refs, const char *name)
{
    const char *ref;
    json_t *pair;
    json_object_foreach((json_t *)refs, ref, pair)
    {
        const char *secret = json_string_value(json_array_get(pair, 0));
        if (secret && strcmp(secret, name) == 0)
            return true;
    }
    return false;
}

/* Queues a `change` for every change after the stream's revision; on a
 * history too old to replay or a store reset since (a new epoch), a fresh
 * snapshot instead (*RET_SNAPSHOT true).
 * Sets *RET_SERVICES when a Service changed and *RET_SECRET when a Secret
 * the map holds did. Returns 0 or -1 with ERR. */
static int queue_changes(proxy_stream *p, bool *ret_snapshot, bool *ret_services, bool *ret_secret, api_error *err)
{
    store *st = p->server->cfg->store;
    for (int batch = 0; batch < PROXY_BATCHES_PER_POLL; batch++) {
        json_t *events;
        int e = store_changes_since_epoch(st, p->super.epoch, config_kinds, N_WATCHED_KINDS, p->revision,
                                          PROXY_BATCH_MAX, &events);
        if (e == -ESTALE) { /* too old, or the store was reset (a new epoch) */
            *ret_snapshot = true;
            return queue_snapshot(p, err);
        }
        if (e < 0)
            return api_fail_store(err, e, "ProxyConfig", "*");
        size_t i, n = json_array_size(events);
        json_t *ev;
        json_array_foreach(events, i, ev)
        {
            int64_t rev = json_integer_value(json_object_get(ev, "revision"));
            json_t *obj = json_object_get(ev, "object");
            const char *kind = kind_of(obj);
            if (strcmp(kind, "Secret") == 0) {
                const char *name = json_string_value(json_object_get(json_object_get(obj, "metadata"), "name"));
                if (name && p->refs && secret_referenced(p->refs, name))
                    *ret_secret = true;
                p->revision = rev;
                continue; /* its ciphertexts are no business of the proxy */
            }
            if (strcmp(kind, "Service") == 0)
                *ret_services = true;
            strip_status(obj);
            if ((e = api_sse_queue_event(&p->super, "change", -1, ev)) < 0) {
                json_decref(events);
                return fail_queue(err, e);
            }
            p->revision = rev;
        }
        json_decref(events);
        if (n < PROXY_BATCH_MAX)
            break;
    }
    return 0;
}

/* Queues `jwks` when the keys differ from those last sent. */
static int queue_jwks(proxy_stream *p, api_error *err)
{
    json_t *jwks = current_jwks(p->server);
    if (!jwks)
        return fail_queue(err, -ENOMEM);
    if (p->jwks_sent && json_equal(jwks, p->jwks_sent)) {
        json_decref(jwks);
        return 0;
    }
    int e = api_sse_queue_event(&p->super, "jwks", -1, jwks);
    if (e < 0) {
        json_decref(jwks);
        return fail_queue(err, e);
    }
    json_decref(p->jwks_sent);
    p->jwks_sent = jwks;
    return 0;
}

/* Sends the values the Services inject to be unsealed when the map may have
 * changed; `secrets` is queued once they are, if the map differs from the
 * one last sent (secrets_done). SERVICES_CHANGED: look again at what the
 * Services inject (the values are unsealed only when that changed);
 * SECRET_CHANGED: a value the map holds may have changed. Returns 0 or -1
 * with ERR. */
static int queue_secrets(proxy_stream *p, bool services_changed, bool secret_changed, api_error *err)
{
    bool retry = p->secrets_retry_at && time_mono_ns() >= p->secrets_retry_at;
    if (!services_changed && !secret_changed && !retry && p->secrets_known)
        return 0;
    json_t *services;
    int e = store_list(p->server->cfg->store, "Service", &services, NULL);
    if (e < 0)
        return api_fail_store(err, e, "Service", "*");
    if (!secret_changed && !retry && p->secrets_known && p->refs) {
        json_t *refs = inject_refs(services);
        bool same = refs && json_equal(refs, p->refs);
        json_decref(refs);
        if (same) {
            json_decref(services);
            return 0;
        }
    }
    e = submit_unseal(p, services, NULL, NULL);
    json_decref(services);
    if (e == -EAGAIN) { /* the KMS pool is busy: asked again after a while */
        p->secrets_retry_at = time_mono_ns() + PROXY_SECRETS_RETRY_NS;
        return 0;
    }
    return e < 0 ? fail_unseal(err, e) : 0;
}

/* Queues `secrets` when the map J unsealed differs from the one last sent.
 * Returns 0 or -1 with ERR. */
static int secrets_done(proxy_stream *p, unseal_job *j, api_error *err)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    int e = map_digest(j->map, digest);
    if (e == 0 && (!p->secrets_known || CRYPTO_memcmp(digest, p->secrets_sent, sizeof(digest)) != 0)) {
        e = api_sse_queue_event(&p->super, "secrets", -1, j->map);
        if (e == 0) {
            memcpy(p->secrets_sent, digest, sizeof(digest));
            p->secrets_known = true;
        }
    }
    return e < 0 ? fail_queue(err, e) : 0;
}

/* Queues `handoff` with the handoff key (when the server holds one): a
 * resumed stream gets it although it gets no snapshot. Returns 0 or -1
 * with ERR. */
static int queue_handoff(proxy_stream *p, api_error *err)
{
    json_t *handoff = NULL;
    int e = handoff_json(p->server, &handoff);
    if (e == 0 && handoff)
        e = api_sse_queue_event(&p->super, "handoff", -1, handoff);
    kms_json_wipe_decref(handoff);
    return e < 0 ? fail_queue(err, e) : 0;
}

/* Brings the stream up to date: changes (or a snapshot), then keys and
 * secrets. Returns 0 or -1 with ERR. */
static int proxy_update(proxy_stream *p, api_error *err)
{
    bool snapshot = false, services = false, secret = false;
    if (queue_changes(p, &snapshot, &services, &secret, err) < 0)
        return -1;
    if (snapshot)
        return 0; /* it carries the keys and the secrets */
    if (queue_jwks(p, err) < 0)
        return -1;
    return queue_secrets(p, services, secret, err);
}

/* ---- the stream ---- */

/* Ends the stream with an `error` event saying why (ERR), in place of
 * what is still unsent. */
static void proxy_finish(proxy_stream *p, const api_error *err)
{
    json_t *e = json_pack("{s:{s:s, s:s}}", "error", "code", err->code, "message", err->message);
    api_sse_end(&p->super, "error", e);
    json_decref(e);
}

/* Whether C is the proxy role's own identity: the workload user
 * cloister-proxy authenticated through its bootstrap credential (directly or
 * by a session that credential opened). */
static bool is_proxy_identity(const caller *c)
{
    const json_t *user_spec = json_object_get(c->user, "spec");
    const json_t *cred_spec = json_object_get(c->credential, "spec");
    return c->user && c->credential && strcmp(caller_name(c), BOOTSTRAP_PROXY_USER) == 0 &&
           strcmp(json_string_value(json_object_get(user_spec, "type")) ?: "", "workload") == 0 &&
           strcmp(doc_name(c->credential) ?: "", BOOTSTRAP_PROXY_CREDENTIAL) == 0 &&
           strcmp(json_string_value(json_object_get(cred_spec, "user")) ?: "", BOOTSTRAP_PROXY_USER) == 0;
}

/* Lets caller C of REQ have the stream only when it is the proxy's own
 * identity, whatever policies say; anyone else is refused (403, audited as
 * `watch` on ProxyConfig). Returns 0 or -1 with ERR. */
static int authorize_proxy_identity(h2o_req_t *req, const caller *c, api_error *err)
{
    if (is_proxy_identity(c))
        return 0;
    return api_refuse(req, c, "watch", "ProxyConfig", "",
                      "the proxy configuration is served only to the proxy's workload identity (user " BOOTSTRAP_PROXY_USER
                      " through its credential " BOOTSTRAP_PROXY_CREDENTIAL "), whatever policies say",
                      err);
}

/* Authenticates the caller of the stream's request again and checks it is
 * still the proxy's identity (sse.c calls this every API_SSE_RECHECK_NS): a
 * revoked credential or session, an expired access token or a deleted or
 * disabled user ends the stream with an `error` event. */
static void proxy_recheck(api_sse *s)
{
    proxy_stream *p = (proxy_stream *)s;
    api_error err;
    caller c = {0};
    int r = api_authenticate(p->server, s->req, &c, &err);
    if (r < 0)
        api_report_refusal(s->req, &c, &err);
    else
        r = authorize_proxy_identity(s->req, &c, &err); /* audits a refusal itself */
    caller_clear(&c);
    if (r < 0) {
        log_fields(LOG_LEVEL_INFO, "proxy configuration stream ended: the caller lost access", "user", p->user,
                   "reason", err.message, NULL);
        proxy_finish(p, &err);
    }
}

/* Back on the loop with a batch of values: when the stream is still there
 * and open, queues what waited for them (the snapshot, or `secrets`),
 * remembers what the map names and sends it with the changes held back
 * for it; a failure ends the stream. The values are wiped either way. */
static void unseal_done(offload_job *job, h2o_req_t *req)
{
    unseal_job *j = (unseal_job *)job;
    proxy_stream *p = req ? j->p : NULL;
    if (p)
        p->unsealing = false;
    if (p && !p->super.finishing && !p->super.done) {
        api_error err;
        int r = j->error < 0 ? fail_queue(&err, j->error)
                : j->objects ? snapshot_done(p, j, &err)
                             : secrets_done(p, j, &err);
        if (r == 0 && p->handoff_after) {
            p->handoff_after = false;
            r = queue_handoff(p, &err);
        }
        if (r == 0) {
            json_decref(p->refs);
            p->refs = TAKE_PTR(j->refs);
            p->secrets_retry_at = j->complete ? 0 : time_mono_ns() + PROXY_SECRETS_RETRY_NS;
        } else {
            log_fields(LOG_LEVEL_WARN, "proxy configuration stream ended", "user", p->user, "reason", err.message,
                       NULL);
            proxy_finish(p, &err);
        }
    }
    if (p)
        api_sse_hold(&p->super, false);
    unseal_job_free(j);
}

/* A poll tick of the stream: whatever is new, unless a batch of values is
 * being unsealed (what comes after it waits); any failure ends the stream
 * with an `error` event. */
static void proxy_poll(api_sse *s)
{
    proxy_stream *p = (proxy_stream *)s;
    if (p->unsealing)
        return;
    api_error err;
    if (proxy_update(p, &err) < 0) {
        if (err.status == 503 && strcmp(err.code, "store_unavailable") == 0)
            return; /* the store is away (a restart): the stream waits and reads on at a later tick */
        if (err.status >= 500)
            log_fields(LOG_LEVEL_WARN, "proxy configuration stream ended", "user", p->user, "reason", err.message,
                       NULL);
        proxy_finish(p, &err);
    }
}

/* Releases what the stream holds (no secret but the digest of the last map). */
static void proxy_dispose(api_sse *s)
{
    proxy_stream *p = (proxy_stream *)s;
    json_decref(p->jwks_sent);
    json_decref(p->refs);
    OPENSSL_cleanse(p->secrets_sent, sizeof(p->secrets_sent));
}

static const api_sse_class proxy_stream_class = {
    .size = sizeof(proxy_stream),
    .route = ROUTE_PROXY_CONFIG,
    .buffer_max = PROXY_BUFFER_MAX,
    .heartbeat_ns = PROXY_KEEPALIVE_NS,
    .heartbeat = ": keep-alive\n\n",
    .secret = true,
    .poll = proxy_poll,
    .recheck = proxy_recheck,
    .dispose = proxy_dispose,
};

/* ?epoch=HEX (a snapshot's) into *RET (0 when absent). Returns 0 or -1 with ERR. */
static int parse_epoch(h2o_req_t *req, uint64_t *ret, api_error *err)
{
    char text[24];
    uint64_t epoch = 0;
    if (api_query_param(req, "epoch", text, sizeof(text))) {
        size_t n = strlen(text);
        if (n == 0 || n > 16 || strspn(text, "0123456789abcdef") != n)
            return api_fail(err, 400, "invalid", "epoch must be a snapshot's epoch: 1 to 16 lowercase hex digits");
        epoch = strtoull(text, NULL, 16);
    }
    *ret = epoch;
    return 0;
}

/* ?since=REV into *RET (0 when absent). Returns 0 or -1 with ERR. */
static int parse_since(h2o_req_t *req, int64_t *ret, api_error *err)
{
    char text[PROXY_SINCE_MAX + 2];
    int64_t since = 0;
    if (api_query_param(req, "since", text, sizeof(text))) {
        size_t n = strlen(text);
        if (n == 0 || n > PROXY_SINCE_MAX || strspn(text, "0123456789") != n)
            return api_fail(err, 400, "invalid", "since must be a revision: a decimal number of at most %d digits",
                            PROXY_SINCE_MAX);
        since = strtoll(text, NULL, 10);
    }
    *ret = since;
    return 0;
}

/* Opens the stream for the authorized caller C. Returns 0 once the response
 * started, or -1 with ERR. */
static int open_stream(api_request *r, const caller *c, int64_t since, uint64_t epoch, api_error *err)
{
    proxy_stream *p = (proxy_stream *)api_sse_new(r->req, r->started, &proxy_stream_class, c->user, err);
    if (!p)
        return -1;
    p->server = r->server;
    snprintf(p->user, sizeof(p->user), "%s", caller_name(c));
    /* a revision from another store (ahead of this one, or of another epoch) cannot be resumed */
    bool resume = since > 0 && since <= store_revision(r->server->cfg->store) && (epoch == 0 || epoch == p->super.epoch);
    if (resume)
        p->revision = since;
    if ((resume ? proxy_update(p, err) : queue_snapshot(p, err)) < 0)
        return -1;
    /* an API restarted since: the proxy may need the key (after the secrets) */
    if (resume && p->unsealing)
        p->handoff_after = true;
    else if (resume && queue_handoff(p, err) < 0)
        return -1;
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = json_pack("{s:I, s:b}", "revision", (json_int_t)p->revision, "resumed", resume);
    audit_event_emit(&(audit_event){.action = "proxy.config.watch", .user = caller_name(c), .ip = ip,
                                    .kind = "ProxyConfig", .outcome = "success", .details = details});
    json_decref(details);
    api_sse_start(&p->super);
    return 0;
}

int api_handle_proxy(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (rest_len != STRLEN("config") || memcmp(rest, "config", rest_len) != 0)
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/proxy/%.*s", (int)MIN(rest_len, (size_t)200),
                        rest);
    caller c = {0};
    if (api_authenticate(r->server, r->req, &c, err) < 0) {
        api_report_refusal(r->req, &c, err);
        caller_clear(&c);
        return -1;
    }
    if (authorize_proxy_identity(r->req, &c, err) < 0) {
        caller_clear(&c);
        return -1;
    }
    int ret = 0;
    int64_t since = 0;
    uint64_t epoch = 0;
    if (!api_method_is(r->req, "GET"))
        api_method_not_allowed(r->req, ROUTE_PROXY_CONFIG, r->started, "GET");
    else if (parse_since(r->req, &since, err) < 0 || parse_epoch(r->req, &epoch, err) < 0 ||
             open_stream(r, &c, since, epoch, err) < 0)
        ret = -1;
    caller_clear(&c);
    return ret;
}
