/* The auth server: credential tokens are exchanged for a Session with an
 * ES256 access token (JWT) and an opaque, single-use refresh token; refresh
 * rotates the refresh token, and presenting an already used one revokes the
 * whole session (it was stolen or replayed). Sessions are Session documents
 * in the store, so deleting one, or the credential that opened it, takes
 * effect on the next request: every access token is checked against its
 * session. Only digests of refresh and credential tokens are stored.
 *
 * Session writes are synchronous store writes on the event loop: logins are
 * rare next to API calls, and the write must be durable before the tokens
 * are handed out. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/handlers-policy.h"
#include "audit/event.h"
#include "auth/bootstrap-names.h"
#include "auth/credential.h"
#include "auth/keyring.h"
#include "auth/ratelimit.h"
#include "auth/session.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "resource/resource.h"

#define REFRESH_PREFIX "clsr_"
#define SID_LEN 25 /* "s" and 24 hex digits: a valid resource name */
#define REFRESH_SECRET_LEN 43
#define REFRESH_TOKEN_LEN (STRLEN(REFRESH_PREFIX) + SID_LEN + 1 + REFRESH_SECRET_LEN)
#define PREVIOUS_REFRESH_MAX 32 /* used refresh digests remembered to detect reuse */
#define RESOLVED_SLOTS 64
#define GC_EVERY 64  /* session openings between two collections of dead sessions */
#define GC_BATCH 256 /* dead sessions deleted at most per collection */

/* Limits of the token endpoints: per client address (what slows guessing:
 * each guess is another credential) and per credential or session (what
 * bounds the use of one leaked token). Generous for people and scripts. */
#define IP_BURST 100
#define IP_PER_SECOND 10
#define CREDENTIAL_BURST 100
#define CREDENTIAL_PER_SECOND 5

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

static void issuer_of(const api_server *srv, char *buf, size_t size)
{
    snprintf(buf, size, "https://api.%s", srv->cfg->domain ? srv->cfg->domain : "localhost");
}

void api_auth_issuer(const api_server *srv, char *buf, size_t size)
{
    issuer_of(srv, buf, size);
}

/* ---- per-thread cache of verified access tokens ---- */

typedef struct resolved_token {
    uint8_t hash[SHA256_DIGEST_LENGTH];
    int64_t revision, exp;
    json_t *user, *credential, *session;
} resolved_token;

typedef struct auth_tls {
    jwt_cache *jwt;
    resolved_token slots[RESOLVED_SLOTS];
} auth_tls;

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void resolved_clear(resolved_token *s)
{
    json_decref(s->user);
    json_decref(s->credential);
    json_decref(s->session);
    *s = (resolved_token){0};
}

static void tls_free(void *p)
{
    auth_tls *t = p;
    for (size_t i = 0; i < RESOLVED_SLOTS; i++)
        resolved_clear(&t->slots[i]);
    jwt_cache_free(t->jwt);
    free(t);
}

static void tls_init(void)
{
    pthread_key_create(&tls_key, tls_free);
}

/* This thread's cache, created on first use; NULL when out of memory. */
static auth_tls *tls_get(void)
{
    pthread_once(&tls_once, tls_init);
    auth_tls *t = pthread_getspecific(tls_key);
    if (t)
        return t;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->jwt = jwt_cache_new(1024);
    if (!t->jwt || pthread_setspecific(tls_key, t) != 0) {
        tls_free(t);
        return NULL;
    }
    return t;
}

/* ---- rate limits ---- */

/* A limit: a local token bucket per key (exact in one process), and with a
 * shared store (several replicas) also a counter per key in the store, a
 * fixed window of WINDOW_MS allowing BURST, that every replica adds to. The
 * local bucket is asked first, so a flood from one key reaches the store at
 * most at the local limit's pace on each replica. */
typedef struct auth_limit {
    ratelimit *local;
    int64_t burst, window_ms;
} auth_limit;

static auth_limit ip_limit = {.burst = IP_BURST, .window_ms = IP_BURST * 1000 / IP_PER_SECOND},
                  credential_limit = {.burst = CREDENTIAL_BURST,
                                      .window_ms = CREDENTIAL_BURST * 1000 / CREDENTIAL_PER_SECOND};
static pthread_once_t limits_once = PTHREAD_ONCE_INIT;

static void limits_init(void)
{
    ip_limit.local = ratelimit_new(4096, IP_BURST, IP_PER_SECOND);
    credential_limit.local = ratelimit_new(4096, CREDENTIAL_BURST, CREDENTIAL_PER_SECOND);
}

/* With a shared store, adds one attempt of KEY to LIMIT's counter there:
 * 0 when within the window's BURST, else the whole seconds (at least 1)
 * until the window ends; a negative errno when the store fails. */
static int64_t shared_wait(api_request *r, const auth_limit *limit, const char *what, const char *key)
{
    const char *driver = r->server->cfg->store_driver;
    if (!driver || strcmp(driver, "sqlite") == 0)
        return 0; /* one process: the local bucket is the whole limit */
    char name[RATELIMIT_KEY_MAX + 64];
    snprintf(name, sizeof(name), "ratelimit/%s/%.*s", what, RATELIMIT_KEY_MAX, key);
    int64_t count, left_ms;
    int e = store_counter_add(r->server->cfg->store, name, limit->window_ms, &count, &left_ms);
    if (e < 0)
        return e;
    return count <= limit->burst ? 0 : MAX((left_ms + 999) / 1000, 1);
}

/* Spends one attempt of KEY in LIMIT; fills ERR with a 429 and its
 * Retry-After when none is left (503 when the shared counter cannot be
 * read). Without a local limiter (out of memory at start) every attempt is
 * refused: failing closed. */
static int rate_check(api_request *r, auth_limit *limit, const char *what, const char *key, api_error *err)
{
    pthread_once(&limits_once, limits_init);
    int64_t wait = limit->local ? ratelimit_take(limit->local, key, time_mono_ns()) : 60;
    if (wait == 0)
        wait = shared_wait(r, limit, what, key);
    if (wait < 0)
        return api_fail_store(err, (int)wait, "rate limit", what);
    if (wait == 0)
        return 0;
    char v[24];
    int n = snprintf(v, sizeof(v), "%lld", (long long)wait);
    h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                   h2o_strdup(&r->req->pool, v, (size_t)n).base, (size_t)n);
    return api_fail(err, 429, "rate_limited", "too many token requests from this %s; retry in %lld s", what,
                    (long long)wait);
}

int api_auth_rate_check_ip(api_request *r, api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    return rate_check(r, &ip_limit, "address", ip, err);
}

/* ---- audit ---- */

/* Hands one auth event (ACTION on session SID of USER, both may be NULL)
 * to the audit log, with REASON when there is one. Never a secret. */
static void report(api_request *r, const char *action, const char *user, const char *sid, const char *outcome,
                   const char *reason)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = reason ? json_pack("{s:s}", "reason", reason) : NULL;
    audit_event_emit(&(audit_event){.action = action, .user = user, .session = sid, .ip = ip, .kind = "Session",
                                    .name = sid, .outcome = outcome, .details = details});
    json_decref(details);
}

/* ---- sessions ---- */

static const char *spec_string(const json_t *doc, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, "spec"), field));
}

/* Fills ERR from the verdict V of auth/session.c; returns -1. */
static int fail_verdict(api_error *err, const auth_verdict *v)
{
    return api_fail(err, v->status, v->code, "%s", v->message);
}

/* Decides SESSION (NULL when absent) at NOW by the rule of auth/session.c,
 * for an access token of SUBJECT (NULL for a refresh), with its user and
 * credential as the store holds them now. Fills the user and credential
 * (new references; the credential NULL for an identity provider's session)
 * on success; otherwise fills ERR (and *WHY when not NULL) and returns -1. */
static int session_check(api_server *srv, const json_t *session, const char *subject, int64_t now,
                         json_t **ret_user, json_t **ret_credential, auth_verdict *why, api_error *err)
{
    json_auto_t *user = NULL, *cred = NULL;
    const char *user_name = spec_string(session, "user"), *cred_name = spec_string(session, "credential");
    int e = user_name ? store_get(srv->cfg->store, "User", user_name, &user) : 0;
    if (e == 0 && cred_name)
        e = store_get(srv->cfg->store, "Credential", cred_name, &cred);
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, "Session", "?");
    auth_verdict v;
    if (auth_session_check(session, subject, user, cred, now, &v) < 0) {
        if (why)
            *why = v;
        return fail_verdict(err, &v);
    }
    *ret_user = TAKE_PTR(user);
    *ret_credential = TAKE_PTR(cred);
    return 0;
}

/* Writes one operation synchronously. Returns 0 or the store's error. */
static int write_one(api_server *srv, store_op *op)
{
    store_txn txn = {.ops = op, .n_ops = 1};
    int e = store_write(srv->cfg->store, &txn);
    store_txn_clear(&txn);
    return e;
}

/* Deletes session SID; a session already gone is fine. */
static int session_revoke(api_server *srv, const char *sid)
{
    store_op op = {.type = STORE_DELETE, .kind = "Session", .name = sid};
    int e = write_one(srv, &op);
    return e == -ENOENT ? 0 : e;
}

/* A fresh refresh token for SID into OUT (REFRESH_TOKEN_LEN + 1) and its
 * digest into DIGEST. */
static int refresh_token_new(const char *sid, char out[REFRESH_TOKEN_LEN + 1],
                             char digest[CREDENTIAL_DIGEST_HEX_LEN + 1])
{
    uint8_t secret[32];
    int r = random_bytes(secret, sizeof(secret));
    if (r < 0)
        return r;
    size_t o = (size_t)snprintf(out, REFRESH_TOKEN_LEN + 1, REFRESH_PREFIX "%s_", sid);
    base64_encode(secret, sizeof(secret), out + o, true);
    OPENSSL_cleanse(secret, sizeof(secret));
    char unused[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(out, REFRESH_TOKEN_LEN, digest, unused);
    return 0;
}

/* Parses a refresh token's session id into SID; false when malformed. */
static bool refresh_token_parse(const char *t, size_t len, char sid[SID_LEN + 1])
{
    if (len != REFRESH_TOKEN_LEN || memcmp(t, REFRESH_PREFIX, STRLEN(REFRESH_PREFIX)) != 0)
        return false;
    const char *s = t + STRLEN(REFRESH_PREFIX);
    if (s[0] != 's' || s[SID_LEN] != '_')
        return false;
    for (size_t i = 1; i < SID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    for (size_t i = SID_LEN + 1; i < len - STRLEN(REFRESH_PREFIX); i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    memcpy(sid, s, SID_LEN);
    sid[SID_LEN] = 0;
    return true;
}

/* Signs an access token for USER in session SID and builds the answer of
 * the token and refresh endpoints (new reference in *RET). */
static int issue_tokens(api_request *r, const json_t *user, const char *sid, const char *refresh, int64_t now,
                        json_t **ret, api_error *err)
{
    char iss[300], jti_hex[33];
    uint8_t jti[16];
    issuer_of(r->server, iss, sizeof(iss));
    if (random_bytes(jti, sizeof(jti)) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    hex_encode(jti, sizeof(jti), jti_hex);
    json_t *groups = json_object_get(json_object_get(user, "spec"), "groups");
    json_auto_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:o}", "iss", iss, "sub",
                                    doc_name(user), "aud", AUTH_AUDIENCE, "exp", (json_int_t)(now + AUTH_ACCESS_TTL_S),
                                    "iat", (json_int_t)now, "nbf", (json_int_t)now, "jti", jti_hex, "sid", sid,
                                    "groups", groups ? json_incref(groups) : json_array());
    char *access = NULL;
    int e = claims ? auth_keyring_sign(r->server->cfg->keyring, claims, &access) : -ENOMEM;
    if (e < 0)
        return api_fail(err, 500, "internal", "cannot sign the access token: %s", strerror(-e));
    json_t *body = json_pack("{s:s, s:s, s:s, s:i, s:s}", "access_token", access, "refresh_token", refresh,
                             "token_type", "Bearer", "expires_in", AUTH_ACCESS_TTL_S, "session", sid);
    OPENSSL_cleanse(access, strlen(access));
    free(access);
    if (!body)
        return api_fail(err, 500, "internal", "out of memory");
    *ret = body;
    return 0;
}

void api_auth_respond_tokens(api_request *r, api_route route, json_t *body)
{
    api_respond_json(r->req, route, r->started, 200, body);
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    json_decref(body);
}

/* A string member NAME of a small JSON request body into a fresh heap copy;
 * NULL with ERR filled when missing. */
static char *body_string(api_request *r, const char *name, api_error *err)
{
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return NULL;
    const json_t *v = json_object_get(body, name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 8192 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        api_fail(err, 400, "invalid", "the body must be {\"%s\": \"...\"}", name);
        return NULL;
    }
    char *copy = strdup(json_string_value(v));
    OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    if (!copy)
        api_fail(err, 500, "internal", "out of memory");
    return copy;
}

static void wipe_free(char **p)
{
    if (*p) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
    }
}

/* Deletes sessions that can no longer be used (expired, or their
 * credential or user is gone), at most GC_BATCH at a time. Runs on one
 * session opening in GC_EVERY, so the store does not fill up with dead
 * sessions; failures are left for the next run. */
static void sessions_gc(api_server *srv, int64_t now)
{
    static _Atomic uint64_t openings;
    if (atomic_fetch_add(&openings, 1) % GC_EVERY != 0)
        return;
    json_auto_t *items = NULL;
    int64_t rev;
    if (store_list(srv->cfg->store, "Session", &items, &rev) < 0)
        return;
    store_op ops[GC_BATCH];
    size_t n = 0, i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        json_t *user = NULL, *cred = NULL;
        api_error ignored;
        auth_verdict why = {0};
        if (session_check(srv, doc, NULL, now, &user, &cred, &why, &ignored) == 0) {
            json_decref(user);
            json_decref(cred);
            continue;
        }
        if (why.reason == AUTH_OK || why.reason == AUTH_USER_DISABLED)
            continue; /* a store failure, or a disabled user who may be enabled again */
        ops[n++] = (store_op){.type = STORE_REMOVE, .kind = "Session", .name = doc_name(doc)};
        if (n == GC_BATCH)
            break;
    }
    if (n == 0)
        return;
    store_txn txn = {.ops = ops, .n_ops = n};
    if (store_write(srv->cfg->store, &txn) == 0)
        log_fields(LOG_LEVEL_DEBUG, "deleted dead sessions", NULL);
    store_txn_clear(&txn);
}

int api_auth_open_session(api_request *r, const json_t *user, const json_t *credential, const char *idp,
                          int64_t expires_at, json_t **ret, api_error *err)
{
    api_server *srv = r->server;
    sessions_gc(srv, now_s());
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    uint8_t rnd[12];
    char sid[SID_LEN + 1] = "s", refresh[REFRESH_TOKEN_LEN + 1], refresh_digest[CREDENTIAL_DIGEST_HEX_LEN + 1];
    char expires[40];
    if (random_bytes(rnd, sizeof(rnd)) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    hex_encode(rnd, sizeof(rnd), sid + 1);
    if (refresh_token_new(sid, refresh, refresh_digest) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    time_format_rfc3339(expires_at, expires, sizeof(expires));
    /* bound by uid to its user and credential, and to the credential's
     * token generation (auth/session.h) */
    const char *user_uid = json_string_value(json_object_get(json_object_get(user, "metadata"), "uid"));
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s, s:s, s:s, s:s}}", "apiVersion",
                                 RESOURCE_API_VERSION, "kind", "Session", "metadata", "name", sid, "spec", "user",
                                 doc_name(user), "userUid", user_uid ? user_uid : "", "authMethod",
                                 credential ? "token" : idp ? "oidc" : "passkey", "expiresAt", expires, "clientIp", ip);
    json_t *spec = json_object_get(doc, "spec");
    if (doc && credential) {
        const char *uid = json_string_value(json_object_get(json_object_get(credential, "metadata"), "uid"));
        json_object_set_new(spec, "credential", json_string(doc_name(credential)));
        json_object_set_new(spec, "credentialUid", json_string(uid ? uid : ""));
        json_object_set_new(spec, "tokenGeneration", json_integer(auth_credential_generation(credential)));
    }
    if (doc && idp)
        json_object_set_new(spec, "identityProvider", json_string(idp));
    json_auto_t *status = json_pack("{s:s, s:[]}", "refreshDigest", refresh_digest, "previousRefreshDigests");
    if (!doc || !status)
        return api_fail(err, 500, "internal", "out of memory");
    store_op op = {.type = STORE_CREATE, .kind = "Session", .name = sid, .doc = doc, .status = status};
    int e = write_one(srv, &op);
    if (e < 0) {
        OPENSSL_cleanse(refresh, sizeof(refresh));
        return api_fail_store(err, e, "Session", sid);
    }
    int rr = issue_tokens(r, user, sid, refresh, now_s(), ret, err);
    OPENSSL_cleanse(refresh, sizeof(refresh));
    if (rr < 0)
        session_revoke(srv, sid);
    return rr;
}

/* POST /v1/auth/token {"token": credential token}: opens a session. */
static int handle_token(api_request *r, api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    if (rate_check(r, &ip_limit, "address", ip, err) < 0)
        return -1;
    _cleanup_(wipe_free) char *token = body_string(r, "token", err);
    if (!token)
        return -1;
    size_t len = strlen(token);
    if (!credential_token_well_formed(token, len)) {
        report(r, "auth.login", NULL, NULL, "failure", "malformed credential token");
        return api_fail(err, 401, "unauthenticated", "malformed credential token (expected clst_…)");
    }
    char digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(token, len, digest, key);
    if (rate_check(r, &credential_limit, "credential", key, err) < 0)
        return -1;

    api_server *srv = r->server;
    json_auto_t *cred = NULL;
    int e = store_get_by_lookup(srv->cfg->store, "Credential", key, &cred);
    const char *stored = json_string_value(json_object_get(json_object_get(cred, "status"), "tokenDigest"));
    bool ok = e == 0 && stored && credential_digest_equal(stored, digest);
    OPENSSL_cleanse(digest, sizeof(digest));
    if (!ok) {
        if (e < 0 && e != -ENOENT)
            return api_fail_store(err, e, "Credential", "?");
        report(r, "auth.login", NULL, NULL, "failure", "unknown or revoked credential token");
        return api_fail(err, 401, "unauthenticated", "unknown or revoked credential token");
    }
    int64_t now = now_s(), cred_exp = INT64_MAX;
    const char *exp_text = spec_string(cred, "expiresAt");
    if (exp_text && time_parse_rfc3339(exp_text, &cred_exp) < 0)
        cred_exp = 0;
    json_auto_t *user = NULL;
    const char *user_name = spec_string(cred, "user");
    e = user_name ? store_get(srv->cfg->store, "User", user_name, &user) : -ENOENT;
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, "User", user_name);
    auth_verdict v;
    if (auth_credential_check(cred, user, now, &v) < 0) {
        report(r, "auth.login", user_name, NULL, v.status == 403 ? "denied" : "failure", v.message);
        return fail_verdict(err, &v);
    }

    json_t *body;
    if (api_auth_open_session(r, user, cred, NULL, MIN(now + AUTH_SESSION_TTL_S, cred_exp), &body, err) < 0)
        return -1;
    report(r, "auth.login", user_name, json_string_value(json_object_get(body, "session")), "success", NULL);
    api_auth_respond_tokens(r, ROUTE_AUTH_TOKEN, body);
    return 0;
}

/* Whether DIGEST is one of the used refresh digests of SESSION. */
static bool refresh_was_used(const json_t *session, const char *digest)
{
    size_t i;
    const json_t *d;
    json_array_foreach(json_object_get(json_object_get(session, "status"), "previousRefreshDigests"), i, d)
    {
        if (json_is_string(d) && credential_digest_equal(json_string_value(d), digest))
            return true;
    }
    return false;
}

/* POST /v1/auth/refresh {"refresh_token": ...}: rotates the refresh token
 * and issues a new access token; a used refresh token revokes the session. */
static int handle_refresh(api_request *r, api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    if (rate_check(r, &ip_limit, "address", ip, err) < 0)
        return -1;
    _cleanup_(wipe_free) char *token = body_string(r, "refresh_token", err);
    if (!token)
        return -1;
    char sid[SID_LEN + 1];
    if (!refresh_token_parse(token, strlen(token), sid)) {
        report(r, "auth.refresh", NULL, NULL, "failure", "malformed refresh token");
        return api_fail(err, 401, "unauthenticated", "malformed refresh token");
    }
    if (rate_check(r, &credential_limit, "session", sid, err) < 0)
        return -1;
    char digest[CREDENTIAL_DIGEST_HEX_LEN + 1], unused[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(token, strlen(token), digest, unused);
    api_server *srv = r->server;

    /* two tries: a concurrent refresh of the same session makes the first stale */
    for (int attempt = 0; attempt < 2; attempt++) {
        json_auto_t *session = NULL;
        int e = store_get(srv->cfg->store, "Session", sid, &session);
        if (e == -ENOENT) {
            report(r, "auth.refresh", NULL, sid, "failure", "unknown or revoked session");
            return api_fail(err, 401, "unauthenticated", "unknown, expired or revoked refresh token");
        }
        if (e < 0)
            return api_fail_store(err, e, "Session", sid);
        const char *user_name = spec_string(session, "user");
        const char *current = json_string_value(json_object_get(json_object_get(session, "status"), "refreshDigest"));
        if (!current || !credential_digest_equal(current, digest)) {
            if (!refresh_was_used(session, digest)) {
                report(r, "auth.refresh", user_name, sid, "failure", "wrong refresh token");
                return api_fail(err, 401, "unauthenticated", "unknown, expired or revoked refresh token");
            }
            e = session_revoke(srv, sid);
            if (e < 0)
                return api_fail_store(err, e, "Session", sid);
            report(r, "auth.revoke", user_name, sid, "success", "refresh token reused");
            log_fields(LOG_LEVEL_WARN, "refresh token reused: session revoked", "session", sid, "user", user_name,
                       "ip", ip, NULL);
            return api_fail(err, 401, "unauthenticated", "refresh token already used: the session is revoked");
        }
        int64_t now = now_s();
        json_t *user = NULL, *cred = NULL;
        if (session_check(srv, session, NULL, now, &user, &cred, NULL, err) < 0) {
            report(r, "auth.refresh", user_name, sid, "failure", err->message);
            return -1;
        }
        json_decref(cred);

        char refresh[REFRESH_TOKEN_LEN + 1], new_digest[CREDENTIAL_DIGEST_HEX_LEN + 1];
        if (refresh_token_new(sid, refresh, new_digest) < 0) {
            json_decref(user);
            return api_fail(err, 500, "internal", "no randomness");
        }
        json_t *used = json_object_get(json_object_get(session, "status"), "previousRefreshDigests");
        json_auto_t *prev = json_is_array(used) ? json_deep_copy(used) : json_array();
        json_array_append_new(prev, json_string(current));
        while (json_array_size(prev) > PREVIOUS_REFRESH_MAX)
            json_array_remove(prev, 0);
        json_auto_t *status = json_pack("{s:s, s:O}", "refreshDigest", new_digest, "previousRefreshDigests", prev);
        const char *rv = json_string_value(json_object_get(json_object_get(session, "metadata"), "resourceVersion"));
        store_op op = {.type = STORE_REPLACE, .kind = "Session", .name = sid, .doc = session, .status = status,
                       .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
        e = status ? write_one(srv, &op) : -ENOMEM;
        if (e == -ESTALE && attempt == 0) {
            json_decref(user);
            OPENSSL_cleanse(refresh, sizeof(refresh));
            continue;
        }
        if (e < 0) {
            json_decref(user);
            OPENSSL_cleanse(refresh, sizeof(refresh));
            return api_fail_store(err, e, "Session", sid);
        }
        json_t *body;
        int rr = issue_tokens(r, user, sid, refresh, now, &body, err);
        OPENSSL_cleanse(refresh, sizeof(refresh));
        json_decref(user);
        if (rr < 0)
            return rr;
        report(r, "auth.refresh", user_name, sid, "success", NULL);
        api_auth_respond_tokens(r, ROUTE_AUTH_REFRESH, body);
        return 0;
    }
    return api_fail(err, 409, "conflict", "the session changed meanwhile; retry");
}

/* The session id of a valid access token in the Authorization header. */
static int access_token_session(api_request *r, char sid[SID_LEN + 1], api_error *err)
{
    ssize_t i = h2o_find_header(&r->req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return api_fail(err, 401, "unauthenticated", "send the refresh token in the body or the access token as bearer");
    h2o_iovec_t v = r->req->headers.entries[i].value;
    if (v.len < 7 || strncasecmp(v.base, "Bearer ", 7) != 0)
        return api_fail(err, 401, "unauthenticated", "Authorization header must use the Bearer scheme");
    char iss[300];
    issuer_of(r->server, iss, sizeof(iss));
    jwt_expect ex = {.issuer = iss, .audience = AUTH_AUDIENCE, .now = now_s(), .leeway = JWT_DEFAULT_LEEWAY_S};
    json_auto_t *claims = NULL;
    int e = auth_keyring_verify(r->server->cfg->keyring, v.base + 7, v.len - 7, &ex, &claims);
    if (e < 0)
        return api_fail(err, 401, "unauthenticated", "%s", jwt_strerror(e));
    const char *s = json_string_value(json_object_get(claims, "sid"));
    if (!s || strlen(s) != SID_LEN)
        return api_fail(err, 401, "unauthenticated", "the access token names no session");
    memcpy(sid, s, SID_LEN + 1);
    return 0;
}

/* POST /v1/auth/logout: revokes the session named by the refresh token in
 * the body, or by the access token presented as bearer. */
static int handle_logout(api_request *r, api_error *err)
{
    char sid[SID_LEN + 1];
    if (r->req->entity.len > 0) {
        _cleanup_(wipe_free) char *token = body_string(r, "refresh_token", err);
        if (!token)
            return -1;
        if (!refresh_token_parse(token, strlen(token), sid))
            return api_fail(err, 401, "unauthenticated", "malformed refresh token");
        json_auto_t *session = NULL;
        char digest[CREDENTIAL_DIGEST_HEX_LEN + 1], unused[CREDENTIAL_LOOKUP_KEY_LEN + 1];
        credential_token_digest(token, strlen(token), digest, unused);
        const char *current = store_get(r->server->cfg->store, "Session", sid, &session) == 0
                                  ? json_string_value(json_object_get(json_object_get(session, "status"), "refreshDigest"))
                                  : NULL;
        if (!current || (!credential_digest_equal(current, digest) && !refresh_was_used(session, digest)))
            return api_fail(err, 401, "unauthenticated", "unknown, expired or revoked refresh token");
    } else if (access_token_session(r, sid, err) < 0)
        return -1;
    json_auto_t *session = NULL;
    store_get(r->server->cfg->store, "Session", sid, &session);
    int e = session_revoke(r->server, sid);
    if (e < 0)
        return api_fail_store(err, e, "Session", sid);
    report(r, "auth.logout", session ? spec_string(session, "user") : NULL, sid, "success", NULL);
    json_t *body = json_pack("{s:s, s:s}", "session", sid, "status", "revoked");
    const char *idp = session ? spec_string(session, "identityProvider") : NULL;
    char *end_session = NULL;
    if (body && idp && api_oidc_end_session_url(r->server, idp, &end_session) == 0)
        json_object_set_new(body, "end_session_url", json_string(end_session)); /* log out at the provider too */
    free(end_session);
    api_respond_json(r->req, ROUTE_AUTH_LOGOUT, r->started, 200, body);
    json_decref(body);
    return 0;
}

/* POST /v1/auth/handoff/take {"handoff": sealed text}: a proxy takes a
 * login handoff before it sets the session cookie; 200 the first time
 * across every replica, 409 after. Public like the token exchange (holding
 * the handoff is the right to spend it); not limited per address, as the
 * caller is a proxy taking every browser's login. */
static int handle_handoff_take(api_request *r, api_error *err)
{
    _cleanup_(wipe_free) char *handoff = body_string(r, "handoff", err);
    if (!handoff)
        return -1;
    int e = api_handoff_take(r->server, handoff);
    if (e == -ENOENT) {
        report(r, "auth.handoff.take", NULL, NULL, "failure", "the login handoff was already used");
        return api_fail(err, 409, "already_used", "the login handoff was already used (or has expired); log in again");
    }
    if (e < 0)
        return api_fail_store(err, e, "LoginHandoff", "?");
    report(r, "auth.handoff.take", NULL, NULL, "success", NULL);
    json_t *body = json_pack("{s:b}", "taken", true);
    api_respond_json(r->req, ROUTE_AUTH_HANDOFF_TAKE, r->started, 200, body);
    json_decref(body);
    return 0;
}

int api_auth_handle(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    static const struct {
        const char *name;
        api_route route;
        int (*handle)(api_request *r, api_error *err);
    } ops[] = {
        {"token", ROUTE_AUTH_TOKEN, handle_token},
        {"refresh", ROUTE_AUTH_REFRESH, handle_refresh},
        {"logout", ROUTE_AUTH_LOGOUT, handle_logout},
        {"handoff/take", ROUTE_AUTH_HANDOFF_TAKE, handle_handoff_take},
    };
    for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
        if (!h2o_memis(rest, rest_len, ops[i].name, strlen(ops[i].name)))
            continue;
        r->route = ops[i].route;
        if (!api_method_is(r->req, "POST")) {
            api_method_not_allowed(r->req, ops[i].route, r->started, "POST");
            return 0;
        }
        return ops[i].handle(r, err);
    }
    return api_fail(err, 404, "not_found", "no such endpoint: /v1/auth/%.*s", (int)MIN(rest_len, (size_t)100), rest);
}

/* ---- access tokens on every endpoint ---- */

bool api_token_is_jwt(const char *token, size_t len)
{
    size_t dots = 0;
    for (size_t i = 0; i < len; i++) {
        char c = token[i];
        if (c == '.')
            dots++;
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                   c == '_'))
            return false;
    }
    return dots == 2;
}

int api_auth_access_token(api_server *srv, const char *token, size_t len, caller *ret, api_error *err)
{
    auth_keyring *kr = srv->cfg->keyring;
    auth_tls *tls = tls_get();
    if (!kr || !tls)
        return api_fail(err, 401, "unauthenticated", "access tokens are not accepted by this server");
    if (len > JWT_MAX_LEN)
        return api_fail(err, 401, "unauthenticated", "%s", jwt_strerror(-EMSGSIZE));
    int64_t now = now_s(), revision = store_revision(srv->cfg->store);
    uint8_t hash[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)token, len, hash);
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    resolved_token *slot = &tls->slots[h % RESOLVED_SLOTS];
    if (slot->user && slot->revision == revision && now < slot->exp && memeq_consttime(slot->hash, hash, sizeof(hash))) {
        *ret = (caller){.user = json_incref(slot->user), .credential = json_incref(slot->credential),
                        .session = json_incref(slot->session)};
        return 0;
    }

    char iss[300];
    issuer_of(srv, iss, sizeof(iss));
    jwt_expect ex = {.issuer = iss, .audience = AUTH_AUDIENCE, .now = now, .leeway = JWT_DEFAULT_LEEWAY_S};
    json_auto_t *claims = NULL;
    int e = auth_keyring_verify_cached(kr, tls->jwt, token, len, &ex, &claims);
    if (e < 0)
        return api_fail(err, 401, "unauthenticated", "access token refused: %s", jwt_strerror(e));
    const char *sid = json_string_value(json_object_get(claims, "sid"));
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    json_auto_t *session = NULL;
    e = sid && sub && resource_name_valid(sid) ? store_get(srv->cfg->store, "Session", sid, &session) : -ENOENT;
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, "Session", sid);
    json_t *user, *cred;
    if (session_check(srv, session, sub, now, &user, &cred, NULL, err) < 0)
        return -1;
    /* cached until the token or its session expires, whichever comes first */
    int64_t session_exp = INT64_MAX;
    time_parse_rfc3339(spec_string(session, "expiresAt"), &session_exp); /* session_check() parsed it */
    resolved_clear(slot);
    memcpy(slot->hash, hash, sizeof(hash));
    slot->revision = revision;
    slot->exp = MIN(json_integer_value(json_object_get(claims, "exp")), session_exp);
    slot->user = json_incref(user);
    slot->credential = json_incref(cred);
    slot->session = json_incref(session);
    *ret = (caller){.user = user, .credential = cred, .session = json_incref(session)};
    return 0;
}

/* ---- /v1/sessions ---- */

/* A session as clients see it: the document without its status (refresh
 * token digests). New reference. */
static json_t *session_view(const json_t *doc)
{
    json_t *v = json_deep_copy(doc);
    if (v)
        json_object_del(v, "status");
    return v;
}

/* Whether policy lets caller C do VERB on sessions of other users. */
static bool may_see_all(api_request *r, const caller *c, const char *verb, const char *sid)
{
    return api_may(r->server, r->req, c, verb, "Session", sid);
}

/* Whether SESSION is caller C's own: the same user by name and uid (a new
 * user of an old name does not own the old one's sessions). */
static bool own_session(const json_t *session, const caller *c)
{
    const char *user = spec_string(session, "user"), *uid = spec_string(session, "userUid");
    const char *caller_uid = json_string_value(json_object_get(json_object_get(c->user, "metadata"), "uid"));
    return user && uid && caller_uid && strcmp(user, caller_name(c)) == 0 && strcmp(uid, caller_uid) == 0;
}

/* GET /v1/sessions, GET|DELETE /v1/sessions/{id}. Everyone sees and
 * revokes their own sessions; other users' only when policy allows it
 * (ctx.request.api: list/get/delete on kind Session). */
int api_auth_handle_sessions(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    caller c = {0};
    if (api_authenticate(r->server, r->req, &c, err) < 0) {
        api_report_refusal(r->req, &c, err);
        return -1;
    }
    int ret = 0;
    store *st = r->server->cfg->store;
    json_t *doc = NULL; /* declared before the first goto: released at out */
    if (rest_len == 0 || (rest_len == 1 && rest[0] == '/')) {
        if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
            api_method_not_allowed(r->req, ROUTE_SESSIONS, r->started, "GET");
            goto out;
        }
        bool admin = may_see_all(r, &c, "list", "");
        json_t *items;
        int64_t rev;
        int e = store_list(st, "Session", &items, &rev);
        if (e < 0) {
            ret = api_fail_store(err, e, "Session", "*");
            goto out;
        }
        json_t *out = json_array();
        size_t i;
        json_t *item;
        int64_t now = now_s();
        json_array_foreach(items, i, item)
        {
            if (!admin && !own_session(item, &c))
                continue;
            json_t *user = NULL, *cred = NULL;
            api_error ignored;
            if (session_check(r->server, item, NULL, now, &user, &cred, NULL, &ignored) < 0)
                continue; /* expired, or its credential is gone: revoked */
            json_decref(user);
            json_decref(cred);
            json_array_append_new(out, session_view(item));
        }
        json_decref(items);
        char rvs[24];
        snprintf(rvs, sizeof(rvs), "%lld", (long long)rev);
        json_t *body = json_pack("{s:s, s:s, s:{s:s}, s:o}", "apiVersion", RESOURCE_API_VERSION, "kind", "List",
                                 "metadata", "resourceVersion", rvs, "items", out);
        api_respond_json(r->req, ROUTE_SESSIONS, r->started, 200, body);
        json_decref(body);
        goto out;
    }
    char sid[64];
    if (rest[0] != '/' || rest_len - 1 >= sizeof(sid)) {
        ret = api_fail(err, 404, "not_found", "no such session");
        goto out;
    }
    memcpy(sid, rest + 1, rest_len - 1);
    sid[rest_len - 1] = 0;
    bool get = api_method_is(r->req, "GET") || api_method_is(r->req, "HEAD");
    if (!get && !api_method_is(r->req, "DELETE")) {
        api_method_not_allowed(r->req, ROUTE_SESSIONS, r->started, "GET, DELETE");
        goto out;
    }
    if (!resource_name_valid(sid) || store_get(st, "Session", sid, &doc) < 0 ||
        (!own_session(doc, &c) && !may_see_all(r, &c, get ? "get" : "delete", sid))) {
        ret = api_fail(err, 404, "not_found", "session %s not found", resource_name_valid(sid) ? sid : "?");
        goto out;
    }
    if (get) {
        json_t *body = session_view(doc);
        api_respond_json(r->req, ROUTE_SESSIONS, r->started, 200, body);
        json_decref(body);
        goto out;
    }
    int e = session_revoke(r->server, sid);
    if (e < 0) {
        ret = api_fail_store(err, e, "Session", sid);
        goto out;
    }
    report(r, "auth.revoke", caller_name(&c), sid, "success", "deleted through the API");
    json_t *body = json_pack("{s:s, s:s, s:s}", "kind", "Session", "name", sid, "status", "deleted");
    api_respond_json(r->req, ROUTE_SESSIONS, r->started, 200, body);
    json_decref(body);
out:
    json_decref(doc);
    caller_clear(&c);
    return ret;
}

/* ---- JWKS and signing keys ---- */

/* GET /.well-known/jwks.json (public). */
int api_auth_handle_jwks(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (rest_len != 0)
        return api_fail(err, 404, "not_found", "no such endpoint");
    if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
        api_method_not_allowed(r->req, ROUTE_JWKS, r->started, "GET");
        return 0;
    }
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    json_t *jwks = auth_keyring_jwks(r->server->cfg->keyring);
    if (!jwks)
        return api_fail(err, 500, "internal", "out of memory");
    api_respond_json(r->req, ROUTE_JWKS, r->started, 200, jwks);
    json_decref(jwks);
    return 0;
}

/* POST /v1/auth/keys/rotate (admins): a new signing key now. */
int api_auth_handle_keys(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!h2o_memis(rest, rest_len, H2O_STRLIT("/rotate")))
        return api_fail(err, 404, "not_found", "no such endpoint; POST /v1/auth/keys/rotate rotates the signing key");
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, ROUTE_AUTH_KEYS, r->started, "POST");
        return 0;
    }
    if (api_authorize(r->server, r->req, r->caller, "rotate", "SigningKey", "", err) < 0)
        return -1;
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    char kid[JWT_KID_MAX + 1];
    int e = auth_keyring_rotate(r->server->cfg->keyring, kid);
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    audit_event_emit(&(audit_event){.action = "auth.keys.rotate", .user = caller_name(r->caller), .ip = ip,
                                    .outcome = e < 0 ? "failure" : "success"});
    if (e < 0)
        return api_fail(err, 500, "internal", "cannot rotate the signing key: %s", strerror(-e));
    json_t *body = json_pack("{s:s}", "kid", kid);
    api_respond_json(r->req, ROUTE_AUTH_KEYS, r->started, 200, body);
    json_decref(body);
    return 0;
}

/* ---- credential tokens ---- */

/* POST /v1/tokens {"credential": NAME}: a new clst_ token for an existing
 * Credential, replacing its previous one, decided as `token` on Credential
 * NAME before the credential is looked up (an unknown one is a 404 only to
 * a caller who may get it). The workload credentials of the roles are never minted
 * here: cloisterd writes their tokens. Only the digest is stored; the token
 * is in this answer and nowhere else. */
int api_auth_handle_tokens(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (rest_len != 0)
        return api_fail(err, 404, "not_found", "no such endpoint");
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, ROUTE_TOKENS, r->started, "POST");
        return 0;
    }
    _cleanup_free_ char *name = body_string(r, "credential", err);
    if (!name)
        return -1;
    if (!resource_name_valid(name))
        return api_fail(err, 400, "invalid", "credential: not a valid name");
    if (bootstrap_is_workload_credential(name))
        return api_refuse(r->req, r->caller, "token", "Credential", name,
                          "the token of a role's workload credential is written by cloisterd alone (in its data "
                          "dir); delete the token file and restart cloisterd to replace it",
                          err);
    if (api_authorize(r->server, r->req, r->caller, "token", "Credential", name, err) < 0)
        return -1;
    json_auto_t *cred = NULL;
    int e = store_get(r->server->cfg->store, "Credential", name, &cred);
    if (e == -ENOENT)
        return api_fail_absent(r->server, r->req, r->caller, "token", "Credential", name, err);
    if (e < 0)
        return api_fail_store(err, e, "Credential", name);
    char token[CREDENTIAL_TOKEN_LEN + 1], digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    if (credential_token_generate(token) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    credential_token_digest(token, strlen(token), digest, key);
    json_t *status = json_object_get(cred, "status");
    json_auto_t *new_status = json_is_object(status) ? json_deep_copy(status) : json_object();
    const char *rv = json_string_value(json_object_get(json_object_get(cred, "metadata"), "resourceVersion"));
    if (!new_status || json_object_set_new(new_status, "tokenDigest", json_string(digest)) < 0 ||
        json_object_set_new(new_status, "tokenGeneration", json_integer(auth_credential_generation(cred) + 1)) < 0) {
        OPENSSL_cleanse(token, sizeof(token));
        return api_fail(err, 500, "internal", "out of memory");
    }
    store_op op = {.type = STORE_REPLACE, .kind = "Credential", .name = name, .doc = cred, .status = new_status,
                   .lookup_key = key, .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    e = write_one(r->server, &op);
    OPENSSL_cleanse(digest, sizeof(digest));
    if (e < 0) {
        OPENSSL_cleanse(token, sizeof(token));
        return api_fail_store(err, e, "Credential", name);
    }
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    audit_event_emit(&(audit_event){.action = "auth.token.create", .user = caller_name(r->caller), .ip = ip,
                                    .kind = "Credential", .name = name, .outcome = "success"});
    json_t *body = json_pack("{s:s, s:s, s:s}", "credential", name, "user", spec_string(cred, "user") ?: "", "token",
                             token);
    OPENSSL_cleanse(token, sizeof(token));
    api_respond_json(r->req, ROUTE_TOKENS, r->started, 201, body);
    OPENSSL_cleanse((char *)json_string_value(json_object_get(body, "token")), CREDENTIAL_TOKEN_LEN);
    json_decref(body);
    return 0;
}

/* ---- identities bind by uid ---- */

void api_auth_bind_credential(store_op *op)
{
    if (strcmp(op->kind, "Credential") != 0 || !op->doc)
        return;
    op->uid_kind = "User";
    op->uid_name = spec_string(op->doc, "user");
    op->uid_field = "userUid";
}

/* Appends [kind, name] of every document of KIND in the store whose
 * spec.FIELD is VALUE to OUT. Returns 0 or -1 with ERR. */
static int append_matching(api_server *srv, const char *kind, const char *field, const char *value, json_t *out,
                           api_error *err)
{
    json_auto_t *items = NULL;
    int e = store_list(srv->cfg->store, kind, &items, NULL);
    if (e < 0)
        return api_fail_store(err, e, kind, "*");
    size_t i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        const char *v = spec_string(doc, field);
        if (v && strcmp(v, value) == 0 && json_array_append_new(out, json_pack("[s, s]", kind, doc_name(doc))) < 0)
            return api_fail(err, 500, "internal", "out of memory");
    }
    return 0;
}

int api_auth_delete_input(api_server *srv, const char *kind, const char *name, json_t **ret, api_error *err)
{
    json_auto_t *deps = json_array();
    if (!deps)
        return api_fail(err, 500, "internal", "out of memory");
    if (strcmp(kind, "User") == 0 && (append_matching(srv, "Credential", "user", name, deps, err) < 0 ||
                                      append_matching(srv, "Session", "user", name, deps, err) < 0))
        return -1;
    if (strcmp(kind, "Credential") == 0 && append_matching(srv, "Session", "credential", name, deps, err) < 0)
        return -1;
    json_t *input = json_pack("{s:s, s:O}", "name", name, "dependents", deps);
    if (!input)
        return api_fail(err, 500, "internal", "out of memory");
    *ret = input;
    return 0;
}

size_t api_auth_dependent_ops(const json_t *input, store_op *ops)
{
    size_t i;
    json_t *pair;
    json_array_foreach(json_object_get(input, "dependents"), i, pair)
        ops[i] = (store_op){.type = STORE_REMOVE, .kind = json_string_value(json_array_get(pair, 0)),
                            .name = json_string_value(json_array_get(pair, 1))};
    return json_array_size(json_object_get(input, "dependents"));
}
