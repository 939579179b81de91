/* Local login without an identity provider: invitations and passkeys
 * (WebAuthn, ES256; the checks are auth/webauthn.h's).
 *
 *   POST   /v1/users/{name}/invite      an admin invites a user (decided as
 *          `invite` on User NAME, and `create` on it when it does not exist
 *          yet: it is created); answers a one-time link valid 24 hours to
 *          the registration page. The token is kept only as its SHA-256
 *          (status.inviteDigest, never shown), compared in constant time,
 *          spent by the registration it starts; a new invite replaces it.
 *   DELETE /v1/users/{name}/invite      revokes the pending invitation
 *   GET    /v1/users/{name}/passkeys    the user's passkeys (the user, or
 *          `get` on the User)
 *   DELETE /v1/users/{name}/passkeys?id=ID   removes one (the user, or
 *          `invite` on the User)
 *
 * and, public, on the API's origin (https://api.<domain>[:port]):
 *
 *   GET  /v1/auth/passkey/register#TOKEN, /v1/auth/passkey/login[?rd=...]
 *        the pages (static HTML, script from 'self' only), passkey.js; at
 *        another authority than the origin their calls are refused (403
 *        naming the origin to open)
 *   POST /v1/auth/passkey/register/begin {invite}  -> creation options
 *   POST /v1/auth/passkey/register/finish {invite, id, clientDataJSON,
 *        attestationObject}                       -> the passkey stored
 *   POST /v1/auth/passkey/login/begin[?rd=&bind=&exp=&mac=] -> request options
 *   POST /v1/auth/passkey/login/finish {id, clientDataJSON,
 *        authenticatorData, signature, userHandle} -> the login's end, as
 *        an OIDC login's (api_login_open/api_login_send), as JSON
 *
 * Challenges are 32 random bytes, single use, valid 5 minutes, kept in
 * this process with what they are bound to (the invitation and user uid of
 * a registration; the proxy's return URL and bind of a login). Passkeys
 * live in the User's server-owned status.passkeys (id, publicKey,
 * signCount, createdAt, lastUsedAt), at most PASSKEYS_MAX per user; the
 * RP ID is the API's host, api.<domain>, and the origin the API's exactly. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/handlers-passkeys.h"
#include "api/tickets.h"
#include "api/handlers-policy.h"
#include "audit/event.h"
#include "auth/credential.h"
#include "auth/webauthn.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "resource/resource.h"
#include "store/store.h"

#define INVITE_PREFIX "clsi_"
#define INVITE_TOKEN_LEN (STRLEN(INVITE_PREFIX) + 43) /* base64url of 32 random bytes */
#define INVITE_TTL_S (24 * 3600)
#define CEREMONY_TTL_S 300
#define CEREMONIES_MAX 1024
#define PASSKEYS_MAX 16
#define PASSKEY_BODY_MAX 32768 /* bytes of a begin/finish body: the largest messages base64url'd */
#define UID_MAX 64

extern const unsigned char passkey_html[], passkey_js[];
extern const size_t passkey_html_len, passkey_js_len;

/* A ceremony between begin and finish. */
typedef struct ceremony {
    bool registration;
    uint8_t challenge[WEBAUTHN_CHALLENGE_LEN];
    int64_t created;
    char user[RESOURCE_NAME_MAX + 1];        /* registration: the invited user */
    char user_uid[UID_MAX];                  /* registration: its uid when invited */
    char invite_digest[CREDENTIAL_DIGEST_HEX_LEN + 1];
    char rd[LOGIN_RD_MAX + 1];               /* login: the proxy's return URL, or "" */
    char bind[LOGIN_BIND_LEN + 1];
} ceremony;

/* ceremonies in progress, shared by the api replicas (api/tickets.h) */
static api_ticket_kind ceremony_kind = {.kind = "PasskeyCeremony", .seal_label = "cloister passkey ceremonies v1",
                                        .ttl_s = CEREMONY_TTL_S, .max_live = CEREMONIES_MAX,
                                        .content_max = 8192};

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

/* The hex of CHALLENGE into HEX: the key its ceremony is kept under. */
static void challenge_key(const uint8_t challenge[WEBAUTHN_CHALLENGE_LEN], char hex[2 * WEBAUTHN_CHALLENGE_LEN + 1])
{
    hex_encode(challenge, WEBAUTHN_CHALLENGE_LEN, hex);
}

/* Keeps C in the store, found by its challenge. Returns 0 or a negative errno. */
static int ceremony_put(api_server *srv, const ceremony *c)
{
    char key[2 * WEBAUTHN_CHALLENGE_LEN + 1];
    challenge_key(c->challenge, key);
    json_t *v = json_pack("{s:s, s:s, s:s, s:s, s:s}", "user", c->user, "userUid", c->user_uid, "inviteDigest",
                          c->invite_digest, "rd", c->rd, "bind", c->bind);
    int r = v ? api_ticket_put(srv, &ceremony_kind, c->registration ? 'r' : 'l', key, c->created, v) : -ENOMEM;
    api_ticket_content_free(v);
    return r;
}

/* Takes the live ceremony of kind REGISTRATION whose challenge is
 * CHALLENGE out of the store into *RET: single use, on every replica. */
static bool ceremony_take(api_server *srv, const uint8_t challenge[WEBAUTHN_CHALLENGE_LEN], bool registration,
                          ceremony *ret)
{
    char key[2 * WEBAUTHN_CHALLENGE_LEN + 1];
    challenge_key(challenge, key);
    json_t *v = NULL;
    if (api_ticket_take(srv, &ceremony_kind, registration ? 'r' : 'l', key, &v) < 0)
        return false;
    ceremony c = {.registration = registration, .created = now_s()};
    memcpy(c.challenge, challenge, sizeof(c.challenge));
    bool ok = api_ticket_string(v, "user", c.user, sizeof(c.user)) &&
              api_ticket_string(v, "userUid", c.user_uid, sizeof(c.user_uid)) &&
              api_ticket_string(v, "inviteDigest", c.invite_digest, sizeof(c.invite_digest)) &&
              api_ticket_string(v, "rd", c.rd, sizeof(c.rd)) && api_ticket_string(v, "bind", c.bind, sizeof(c.bind));
    api_ticket_content_free(v);
    if (ok)
        *ret = c;
    OPENSSL_cleanse(&c, sizeof(c));
    return ok;
}

/* ---- the relying party ---- */

void api_passkey_relying_party(const api_server *srv, char rp[PASSKEY_ORIGIN_MAX], char origin[PASSKEY_ORIGIN_MAX])
{
    const char *domain = srv->cfg->domain && srv->cfg->domain[0] ? srv->cfg->domain : "localhost";
    const char *listen = srv->cfg->listen ? srv->cfg->listen : "";
    const char *colon = strrchr(listen, ':');
    const char *port = colon ? colon + 1 : "443";
    bool default_port = strcmp(port, "443") == 0 || !port[0];
    snprintf(rp, PASSKEY_ORIGIN_MAX, "api.%s", domain);
    snprintf(origin, PASSKEY_ORIGIN_MAX, "https://%s%s%s", rp, default_port ? "" : ":", default_port ? "" : port);
}

/* Whether R's Origin header is exactly ORIGIN: a ceremony's calls come from
 * the API's own pages, never from another site's (login CSRF). */
static int origin_check(api_request *r, const char *origin, api_error *err)
{
    ssize_t i = h2o_find_header_by_str(&r->req->headers, H2O_STRLIT("origin"), -1);
    if (i < 0 || !h2o_memis(r->req->headers.entries[i].value.base, r->req->headers.entries[i].value.len, origin,
                            strlen(origin)))
        return api_fail(err, 403, "forbidden", "passkey calls come only from the API's own pages at %s (Origin header)",
                        origin);
    return 0;
}

/* A base64url member NAME of BODY decoded into OUT (capacity CAP): its
 * length, or -1 with ERR (400 naming it, or its cap). */
static long b64_member(const json_t *body, const char *name, uint8_t *out, size_t cap, api_error *err)
{
    const char *s = json_string_value(json_object_get(body, name));
    if (!s || strlen(s) != json_string_length(json_object_get(body, name)))
        return api_fail(err, 400, "invalid", "%s: missing or not a string (base64url)", name);
    if (strlen(s) > base64_encoded_size(cap))
        return api_fail(err, 400, "invalid", "%s: longer than %zu bytes", name, cap);
    long n = base64_decode(s, strlen(s), out, cap, true);
    if (n <= 0)
        return api_fail(err, 400, "invalid", "%s: not base64url (no padding)", name);
    return n;
}

/* The JSON body of R, at most PASSKEY_BODY_MAX bytes (new reference). */
static json_t *small_body(api_request *r, api_error *err)
{
    if (r->req->entity.len > PASSKEY_BODY_MAX) {
        api_fail(err, 413, "too_large", "a passkey call's body is at most %d bytes", PASSKEY_BODY_MAX);
        return NULL;
    }
    return api_decode_body(r->req->entity.base, r->req->entity.len, err);
}

/* Audits a passkey event ACTION of USER (may be NULL) with OUTCOME, REASON
 * and the passkey's CREDENTIAL_ID (both may be NULL). */
static void report(api_request *r, const char *action, const char *user, const char *outcome, const char *reason,
                   const char *credential_id)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = json_pack("{s:s, s:s?, s:s?}", "method", "passkey", "reason", reason, "credentialId", credential_id);
    audit_event_emit(&(audit_event){.action = action, .user = user, .ip = ip, .kind = "User",
                                    .name = user, .outcome = outcome, .details = details});
    json_decref(details);
}

static const char *status_string(const json_t *doc, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, "status"), field));
}

static const char *uid_of(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "metadata"), "uid"));
}

/* Writes USER back with NEW_STATUS if it did not change since it was read
 * (its resourceVersion). Returns 0 or a negative errno (-ESTALE/-EEXIST on
 * a concurrent change, as the store says). */
static int write_status(api_server *srv, const json_t *user, json_t *new_status)
{
    const char *rv = json_string_value(json_object_get(json_object_get(user, "metadata"), "resourceVersion"));
    store_op op = {.type = STORE_REPLACE, .kind = "User", .name = doc_name(user), .doc = (json_t *)user,
                   .status = new_status, .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    store_txn txn = {.ops = &op, .n_ops = 1};
    int e = store_write(srv->cfg->store, &txn);
    store_txn_clear(&txn);
    return e;
}

/* A copy of USER's status to change (new reference), NULL when out of memory. */
static json_t *status_copy(const json_t *user)
{
    json_t *status = json_object_get(user, "status");
    return json_is_object(status) ? json_deep_copy(status) : json_object();
}

/* ---- invitations ---- */

/* The User whose pending invitation is TOKEN (new reference in *RET),
 * unexpired, and TOKEN's digest into DIGEST. Returns 0, or -1 with ERR (400
 * for what is no invitation token, 401 naming what is wrong). */
static int invited_user(api_server *srv, const char *token, json_t **ret, char digest[CREDENTIAL_DIGEST_HEX_LEN + 1],
                        api_error *err)
{
    if (strlen(token) != INVITE_TOKEN_LEN || strncmp(token, INVITE_PREFIX, STRLEN(INVITE_PREFIX)) != 0)
        return api_fail(err, 400, "invalid", "not an invitation token (clsi_...): open the whole link you were given");
    char key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(token, strlen(token), digest, key);
    json_auto_t *users = NULL;
    int e = store_list(srv->cfg->store, "User", &users, NULL);
    if (e < 0)
        return api_fail_store(err, e, "User", "*");
    size_t i;
    json_t *u, *found = NULL;
    json_array_foreach(users, i, u)
    {
        const char *d = status_string(u, "inviteDigest");
        if (d && strlen(d) == CREDENTIAL_DIGEST_HEX_LEN && credential_digest_equal(d, digest))
            found = u;
    }
    if (!found)
        return api_fail(err, 401, "unauthenticated",
                        "unknown, used or revoked invitation: ask your administrator for a new one (cloister user invite)");
    int64_t exp = 0;
    const char *expires = json_string_value(json_object_get(json_object_get(json_object_get(found, "status"), "invite"), "expiresAt"));
    if (!expires || time_parse_rfc3339(expires, &exp) < 0 || exp <= now_s())
        return api_fail(err, 401, "unauthenticated",
                        "this invitation has expired (24 hours): ask your administrator for a new one");
    *ret = json_incref(found);
    return 0;
}

/* POST: a new invitation for NAME (the user created when absent). */
static int invite_create(api_request *r, const char *name, api_error *err)
{
    api_server *srv = r->server;
    if (api_authorize(srv, r->req, r->caller, "invite", "User", name, err) < 0)
        return -1;
    json_auto_t *body = r->req->entity.len ? small_body(r, err) : json_object();
    if (!body)
        return -1;
    json_t *email = json_object_get(body, "email");
    if ((email && (!json_is_string(email) || !strchr(json_string_value(email), '@') || json_string_length(email) > 254)) ||
        json_object_size(body) > (email ? 1u : 0u))
        return api_fail(err, 400, "invalid", "the body is {} or {\"email\": \"name@example.com\"}");
    json_auto_t *user = NULL;
    int e = store_get(srv->cfg->store, "User", name, &user);
    bool created = false;
    if (e == -ENOENT) {
        if (api_authorize(srv, r->req, r->caller, "create", "User", name, err) < 0)
            return -1;
        json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s?}}", "apiVersion", RESOURCE_API_VERSION, "kind",
                                     "User", "metadata", "name", name, "spec", "type", "human", "email",
                                     json_string_value(email));
        if (!doc)
            return api_fail(err, 500, "internal", "out of memory");
        store_op op = {.type = STORE_CREATE, .kind = "User", .name = name, .doc = doc};
        store_txn txn = {.ops = &op, .n_ops = 1};
        e = store_write(srv->cfg->store, &txn);
        user = e == 0 ? json_incref(op.result) : NULL;
        store_txn_clear(&txn);
        created = e == 0;
    }
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    if (json_is_true(json_object_get(json_object_get(user, "spec"), "disabled")))
        return api_fail(err, 409, "conflict", "user %s is disabled: enable it before inviting", name);

    uint8_t raw[32];
    char token[INVITE_TOKEN_LEN + 1] = INVITE_PREFIX, digest[CREDENTIAL_DIGEST_HEX_LEN + 1];
    char key[CREDENTIAL_LOOKUP_KEY_LEN + 1], expires[40], at[40];
    if (random_bytes(raw, sizeof(raw)) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    base64_encode(raw, sizeof(raw), token + STRLEN(INVITE_PREFIX), true);
    OPENSSL_cleanse(raw, sizeof(raw));
    credential_token_digest(token, strlen(token), digest, key);
    time_format_rfc3339(now_s() + INVITE_TTL_S, expires, sizeof(expires));
    time_format_rfc3339(now_s(), at, sizeof(at));
    json_auto_t *status = status_copy(user);
    if (!status || json_object_set_new(status, "inviteDigest", json_string(digest)) < 0 ||
        json_object_set_new(status, "invite", json_pack("{s:s, s:s, s:s}", "expiresAt", expires, "createdAt", at,
                                                        "createdBy", caller_name(r->caller))) < 0) {
        OPENSSL_cleanse(token, sizeof(token));
        return api_fail(err, 500, "internal", "out of memory");
    }
    e = write_status(srv, user, status);
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_auto_t *details = json_pack("{s:s, s:b}", "expiresAt", expires, "userCreated", created);
    audit_event_emit(&(audit_event){.action = "user.invite", .user = caller_name(r->caller), .ip = ip, .kind = "User",
                                    .name = name, .outcome = e < 0 ? "failure" : "success", .details = details});
    if (e < 0) {
        OPENSSL_cleanse(token, sizeof(token));
        return api_fail_store(err, e, "User", name);
    }
    char rp[PASSKEY_ORIGIN_MAX], origin[PASSKEY_ORIGIN_MAX];
    api_passkey_relying_party(srv, rp, origin);
    char url[PASSKEY_ORIGIN_MAX + 128];
    snprintf(url, sizeof(url), "%s/v1/auth/passkey/register#%s", origin, token);
    json_t *answer = json_pack("{s:s, s:s, s:s, s:b}", "user", name, "url", url, "expiresAt", expires, "userCreated",
                               created);
    OPENSSL_cleanse(token, sizeof(token));
    OPENSSL_cleanse(url, sizeof(url));
    if (!answer)
        return api_fail(err, 500, "internal", "out of memory");
    h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    api_respond_json(r->req, r->route, r->started, created ? 201 : 200, answer);
    const char *k;
    json_t *v;
    json_object_foreach(answer, k, v) if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    json_decref(answer);
    return 0;
}

/* DELETE: NAME's pending invitation revoked. */
static int invite_revoke(api_request *r, const char *name, api_error *err)
{
    api_server *srv = r->server;
    if (api_authorize(srv, r->req, r->caller, "invite", "User", name, err) < 0)
        return -1;
    json_auto_t *user = NULL;
    int e = store_get(srv->cfg->store, "User", name, &user);
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    if (!status_string(user, "inviteDigest"))
        return api_fail(err, 404, "not_found", "user %s has no pending invitation", name);
    json_auto_t *status = status_copy(user);
    if (!status)
        return api_fail(err, 500, "internal", "out of memory");
    json_object_del(status, "inviteDigest");
    json_object_del(status, "invite");
    e = write_status(srv, user, status);
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    audit_event_emit(&(audit_event){.action = "user.invite.revoke", .user = caller_name(r->caller), .ip = ip,
                                    .kind = "User", .name = name, .outcome = e < 0 ? "failure" : "success"});
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_auto_t *answer = json_pack("{s:s, s:b}", "user", name, "revoked", true);
    api_respond_json(r->req, r->route, r->started, 200, answer);
    return 0;
}

int api_handle_user_invite(api_request *r, const char *name, api_error *err)
{
    if (!resource_name_valid(name))
        return api_fail(err, 400, "invalid", "'%s' is not a valid user name", name);
    if (api_method_is(r->req, "POST"))
        return invite_create(r, name, err);
    if (api_method_is(r->req, "DELETE"))
        return invite_revoke(r, name, err);
    api_method_not_allowed(r->req, r->route, r->started, "POST, DELETE");
    return 0;
}

/* ---- a user's passkeys ---- */

/* The status.passkeys array of USER (borrowed), or NULL. Nothing in it is
 * secret: clients are shown it as it is. */
static json_t *passkeys_of(const json_t *user)
{
    json_t *list = json_object_get(json_object_get(user, "status"), "passkeys");
    return json_is_array(list) ? list : NULL;
}

/* Shown in handlers-passkeys.h; the user themself needs no right. */
int api_handle_user_passkeys(api_request *r, const char *name, api_error *err)
{
    bool get = api_method_is(r->req, "GET"), del = api_method_is(r->req, "DELETE");
    if (!get && !del) {
        api_method_not_allowed(r->req, r->route, r->started, "GET, DELETE");
        return 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "User '%s' not found (not a valid name)", name);
    bool self = r->caller->user && strcmp(caller_name(r->caller), name) == 0;
    if (!self && api_authorize(r->server, r->req, r->caller, get ? "get" : "invite", "User", name, err) < 0)
        return -1;
    json_auto_t *user = NULL;
    int e = store_get(r->server->cfg->store, "User", name, &user);
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_t *list = passkeys_of(user);
    if (get) {
        json_auto_t *answer = json_pack("{s:s, s:O}", "user", name, "passkeys", list ? list : json_array());
        api_respond_json(r->req, r->route, r->started, 200, answer);
        return 0;
    }
    char id[2 * WEBAUTHN_CREDENTIAL_ID_MAX];
    if (!api_query_param(r->req, "id", id, sizeof(id)) || !id[0])
        return api_fail(err, 400, "invalid", "name the passkey: DELETE /v1/users/%s/passkeys?id=<credential id>", name);
    json_auto_t *status = status_copy(user);
    json_t *kept = json_array(), *pk;
    size_t i;
    bool found = false;
    json_array_foreach(list, i, pk)
    {
        const char *pid = json_string_value(json_object_get(pk, "id"));
        if (pid && strcmp(pid, id) == 0)
            found = true;
        else
            json_array_append(kept, pk);
    }
    if (!status || !kept || json_object_set_new(status, "passkeys", kept) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    if (!found)
        return api_fail(err, 404, "not_found", "user %s has no passkey %s", name, id);
    e = write_status(r->server, user, status);
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_auto_t *details = json_pack("{s:s}", "credentialId", id);
    audit_event_emit(&(audit_event){.action = "user.passkey.delete", .user = caller_name(r->caller), .ip = ip,
                                    .kind = "User", .name = name, .outcome = e < 0 ? "failure" : "success",
                                    .details = details});
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    json_auto_t *answer = json_pack("{s:s, s:s, s:b}", "user", name, "id", id, "deleted", true);
    api_respond_json(r->req, r->route, r->started, 200, answer);
    return 0;
}

/* ---- the ceremonies ---- */

/* A fresh challenge into C and its base64url into B64. */
static int new_challenge(ceremony *c, char b64[64], api_error *err)
{
    if (random_bytes(c->challenge, sizeof(c->challenge)) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    base64_encode(c->challenge, sizeof(c->challenge), b64, true);
    c->created = now_s();
    return 0;
}

/* The {type, id} descriptors of USER's passkeys (new reference). */
static json_t *descriptors(const json_t *user)
{
    json_t *out = json_array(), *pk;
    size_t i;
    json_array_foreach(passkeys_of(user), i, pk)
        json_array_append_new(out, json_pack("{s:s, s:O}", "type", "public-key", "id", json_object_get(pk, "id")));
    return out;
}

/* POST register/begin {invite}: the creation options of a registration
 * for the invited user, its challenge kept bound to the invitation and the
 * user's uid. Answers R and returns 0, or -1 with ERR. */
static int register_begin(api_request *r, const char *origin, const char *rp, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    json_auto_t *body = small_body(r, err);
    if (!body)
        return -1;
    const char *invite = json_string_value(json_object_get(body, "invite"));
    if (!invite)
        return api_fail(err, 400, "invalid", "the body is {\"invite\": \"clsi_...\"}");
    ceremony c = {.registration = true};
    json_auto_t *user = NULL;
    if (invited_user(r->server, invite, &user, c.invite_digest, err) < 0) {
        report(r, "auth.passkey.register", NULL, "denied", err->message, NULL);
        return -1;
    }
    if (json_array_size(passkeys_of(user)) >= PASSKEYS_MAX)
        return api_fail(err, 409, "conflict", "user %s has %d passkeys already: delete one first", doc_name(user),
                        PASSKEYS_MAX);
    const char *uid = uid_of(user);
    snprintf(c.user, sizeof(c.user), "%s", doc_name(user));
    snprintf(c.user_uid, sizeof(c.user_uid), "%s", uid ? uid : "");
    char challenge[64], user_id[UID_MAX * 2];
    if (new_challenge(&c, challenge, err) < 0)
        return -1;
    base64_encode((const uint8_t *)c.user_uid, strlen(c.user_uid), user_id, true);
    const char *email = json_string_value(json_object_get(json_object_get(user, "spec"), "email"));
    json_auto_t *options = json_pack(
        "{s:{s:s, s:{s:s, s:s}, s:{s:s, s:s, s:s}, s:[{s:s, s:i}], s:i, s:s, s:{s:s, s:b, s:s}, s:o}, s:s}", "publicKey",
        "challenge", challenge, "rp", "id", rp, "name", "Cloister", "user", "id", user_id, "name", c.user,
        "displayName", email ? email : c.user, "pubKeyCredParams", "type", "public-key", "alg", -7, "timeout",
        CEREMONY_TTL_S * 1000, "attestation", "none", "authenticatorSelection", "residentKey", "required",
        "requireResidentKey", true, "userVerification", "required", "excludeCredentials", descriptors(user), "user",
        c.user);
    if (!options)
        return api_fail(err, 500, "internal", "out of memory");
    int e = ceremony_put(r->server, &c);
    OPENSSL_cleanse(&c, sizeof(c));
    if (e < 0)
        return api_fail(err, 503, "unavailable", "cannot keep the passkey ceremony in the store (%s); try again",
                        strerror(-e));
    api_respond_json(r->req, r->route, r->started, 200, options);
    return 0;
}

/* The user holding passkey ID (base64url) in *RET_USER (borrowed from
 * *RET_USERS, the list of every user, which the caller releases), or NULL.
 * Returns 0, or -1 with ERR. */
static int credential_owner(api_server *srv, const char *id, json_t **ret_user, json_t **ret_users, api_error *err)
{
    json_t *users = NULL;
    int e = store_list(srv->cfg->store, "User", &users, NULL);
    if (e < 0)
        return api_fail_store(err, e, "User", "*");
    size_t i, j;
    json_t *u, *pk;
    *ret_user = NULL;
    json_array_foreach(users, i, u) json_array_foreach(passkeys_of(u), j, pk)
    {
        const char *pid = json_string_value(json_object_get(pk, "id"));
        if (pid && strcmp(pid, id) == 0)
            *ret_user = u;
    }
    *ret_users = users;
    return 0;
}

/* POST register/finish: the attestation checked against its ceremony and
 * the still-pending invitation, then the passkey stored and the invitation
 * spent in one write of the User. Answers R (201) and returns 0, or -1 with
 * ERR; every refusal is audited. */
static int register_finish(api_request *r, const char *origin, const char *rp, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    json_auto_t *body = small_body(r, err);
    if (!body)
        return -1;
    const char *invite = json_string_value(json_object_get(body, "invite"));
    uint8_t cd[WEBAUTHN_CLIENT_DATA_MAX], att[WEBAUTHN_ATTESTATION_MAX], challenge[WEBAUTHN_CHALLENGE_LEN];
    long cd_len = b64_member(body, "clientDataJSON", cd, sizeof(cd), err);
    long att_len = cd_len < 0 ? -1 : b64_member(body, "attestationObject", att, sizeof(att), err);
    if (att_len < 0)
        return -1;
    if (!invite)
        return api_fail(err, 400, "invalid", "invite: missing (the token of the invitation link)");
    const char *why = NULL;
    if (webauthn_client_data_challenge(cd, (size_t)cd_len, challenge, &why) < 0)
        return api_fail(err, 400, "invalid", "%s", why);
    ceremony c;
    if (!ceremony_take(r->server, challenge, true, &c)) {
        report(r, "auth.passkey.register", NULL, "denied", "unknown, used or expired challenge", NULL);
        return api_fail(err, 401, "unauthenticated",
                        "unknown, already used or expired registration challenge (5 minutes): start again");
    }
    json_auto_t *user = NULL;
    char digest[CREDENTIAL_DIGEST_HEX_LEN + 1];
    int ret = -1;
    if (invited_user(r->server, invite, &user, digest, err) < 0)
        report(r, "auth.passkey.register", c.user, "denied", err->message, NULL);
    else if (!credential_digest_equal(digest, c.invite_digest) || strcmp(doc_name(user), c.user) != 0 ||
             strcmp(uid_of(user) ?: "", c.user_uid) != 0) {
        report(r, "auth.passkey.register", c.user, "denied", "challenge issued for another invitation", NULL);
        api_fail(err, 401, "unauthenticated", "this challenge was issued for another invitation: start again");
    } else
        ret = 0;
    if (ret < 0) {
        OPENSSL_cleanse(&c, sizeof(c));
        return -1;
    }
    webauthn_expect ex = {.origin = origin, .rp_id = rp, .challenge = c.challenge, .require_uv = true};
    webauthn_credential cred;
    int e = webauthn_register_verify(cd, (size_t)cd_len, att, (size_t)att_len, &ex, &cred, &why);
    OPENSSL_cleanse(&c, sizeof(c));
    if (e < 0) {
        report(r, "auth.passkey.register", doc_name(user), "denied", why, NULL);
        return api_fail(err, e == -ENOTSUP || e == -E2BIG || e == -EBADMSG ? 400 : 401,
                        e == -ENOTSUP || e == -E2BIG || e == -EBADMSG ? "invalid" : "unauthenticated",
                        "passkey registration refused: %s", why);
    }
    char id[2 * WEBAUTHN_CREDENTIAL_ID_MAX], pub[2 * WEBAUTHN_PUBLIC_KEY_LEN], aaguid[33], at[40];
    base64_encode(cred.id, cred.id_len, id, true);
    base64_encode(cred.public_key, sizeof(cred.public_key), pub, true);
    hex_encode(cred.aaguid, sizeof(cred.aaguid), aaguid);
    json_t *owner = NULL;
    json_auto_t *users = NULL;
    if (credential_owner(r->server, id, &owner, &users, err) < 0)
        return -1;
    if (owner)
        return api_fail(err, 409, "conflict", "this passkey is registered already (to user %s)", doc_name(owner));
    time_format_rfc3339(now_s(), at, sizeof(at));
    json_auto_t *status = status_copy(user);
    json_t *list = status ? json_object_get(status, "passkeys") : NULL;
    if (status && !json_is_array(list)) {
        list = json_array();
        json_object_set_new(status, "passkeys", list);
    }
    if (!list || json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:s, s:I, s:b, s:s, s:n}", "id", id,
                                                       "publicKey", pub, "algorithm", "ES256", "aaguid", aaguid,
                                                       "signCount", (json_int_t)cred.sign_count, "backupEligible",
                                                       (cred.flags & WEBAUTHN_FLAG_BE) != 0, "createdAt", at,
                                                       "lastUsedAt")) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    if (json_array_size(list) > PASSKEYS_MAX)
        return api_fail(err, 409, "conflict", "user %s has %d passkeys already: delete one first", doc_name(user),
                        PASSKEYS_MAX);
    /* the invitation is spent by this write (a concurrent one loses on the resourceVersion) */
    json_object_del(status, "inviteDigest");
    json_object_del(status, "invite");
    e = write_status(r->server, user, status);
    report(r, "auth.passkey.register", doc_name(user), e < 0 ? "failure" : "success", NULL, id);
    if (e < 0)
        return api_fail_store(err, e, "User", doc_name(user));
    json_auto_t *answer = json_pack("{s:s, s:s, s:s}", "user", doc_name(user), "id", id, "format", cred.format);
    api_respond_json(r->req, r->route, r->started, 201, answer);
    return 0;
}

/* POST login/begin[?rd=&bind=&exp=&mac=]: the request options of a
 * sign-in, its challenge bound to the proxy's login link when there is
 * one. Answers R and returns 0, or -1 with ERR. */
static int login_begin(api_request *r, const char *origin, const char *rp, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    login_link link;
    bool has_rd;
    if (api_login_link_from_query(r, &link, &has_rd, err) < 0)
        return -1;
    ceremony c = {.registration = false};
    if (has_rd) {
        snprintf(c.rd, sizeof(c.rd), "%s", link.rd.url);
        snprintf(c.bind, sizeof(c.bind), "%s", link.bind);
    }
    char challenge[64];
    if (new_challenge(&c, challenge, err) < 0)
        return -1;
    /* discoverable credentials: the authenticator says whose passkey it is */
    json_auto_t *options = json_pack("{s:{s:s, s:s, s:i, s:s, s:[]}}", "publicKey", "challenge", challenge, "rpId", rp,
                                     "timeout", CEREMONY_TTL_S * 1000, "userVerification", "required",
                                     "allowCredentials");
    if (!options)
        return api_fail(err, 500, "internal", "out of memory");
    int e = ceremony_put(r->server, &c);
    OPENSSL_cleanse(&c, sizeof(c));
    if (e < 0)
        return api_fail(err, 503, "unavailable", "cannot keep the passkey ceremony in the store (%s); try again",
                        strerror(-e));
    api_respond_json(r->req, r->route, r->started, 200, options);
    return 0;
}

/* The stored passkey ID of USER (borrowed from it), or NULL. */
static json_t *passkey_find(const json_t *user, const char *id)
{
    size_t i;
    json_t *pk;
    json_array_foreach(passkeys_of(user), i, pk)
    {
        const char *pid = json_string_value(json_object_get(pk, "id"));
        if (pid && strcmp(pid, id) == 0)
            return pk;
    }
    return NULL;
}

/* POST login/finish: the assertion checked against its ceremony and the
 * stored passkey, the counter and time of use written, then the login
 * ended as every browser login ends (api_login_open, api_login_send).
 * Answers R and returns 0, or -1 with ERR; every refusal is audited. */
static int login_finish(api_request *r, const char *origin, const char *rp, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    json_auto_t *body = small_body(r, err);
    if (!body)
        return -1;
    uint8_t cd[WEBAUTHN_CLIENT_DATA_MAX], ad[WEBAUTHN_AUTH_DATA_MAX], sig[WEBAUTHN_SIGNATURE_MAX];
    uint8_t challenge[WEBAUTHN_CHALLENGE_LEN], pub[WEBAUTHN_PUBLIC_KEY_LEN + 2], handle[UID_MAX];
    long cd_len = b64_member(body, "clientDataJSON", cd, sizeof(cd), err);
    long ad_len = cd_len < 0 ? -1 : b64_member(body, "authenticatorData", ad, sizeof(ad), err);
    long sig_len = ad_len < 0 ? -1 : b64_member(body, "signature", sig, sizeof(sig), err);
    if (sig_len < 0)
        return -1;
    const char *id = json_string_value(json_object_get(body, "id"));
    if (!id || !id[0] || strlen(id) > base64_encoded_size(WEBAUTHN_CREDENTIAL_ID_MAX))
        return api_fail(err, 400, "invalid", "id: missing or too long (the credential id, base64url)");
    long handle_len = -1;
    if (json_is_string(json_object_get(body, "userHandle")) &&
        (handle_len = b64_member(body, "userHandle", handle, sizeof(handle) - 1, err)) < 0)
        return -1;
    const char *why = NULL;
    if (webauthn_client_data_challenge(cd, (size_t)cd_len, challenge, &why) < 0)
        return api_fail(err, 400, "invalid", "%s", why);
    ceremony c;
    if (!ceremony_take(r->server, challenge, false, &c)) {
        report(r, "auth.login", NULL, "denied", "unknown, used or expired passkey challenge", NULL);
        return api_fail(err, 401, "unauthenticated",
                        "unknown, already used or expired sign-in challenge (5 minutes): sign in again");
    }
    json_t *owner = NULL;
    json_auto_t *users = NULL;
    if (credential_owner(r->server, id, &owner, &users, err) < 0)
        return -1;
    if (!owner) {
        report(r, "auth.login", NULL, "denied", "unknown passkey", id);
        return api_fail(err, 401, "unauthenticated", "this passkey is not registered here (or was deleted)");
    }
    json_auto_t *user = json_incref(owner);
    const char *uid = uid_of(user) ?: "";
    if (handle_len >= 0 && ((size_t)handle_len != strlen(uid) || memcmp(handle, uid, (size_t)handle_len) != 0)) {
        report(r, "auth.login", doc_name(user), "denied", "the user handle is not the passkey's user", id);
        return api_fail(err, 401, "unauthenticated", "the passkey's user handle does not name its user");
    }
    json_t *pk = passkey_find(user, id);
    const char *pub_b64 = json_string_value(json_object_get(pk, "publicKey"));
    json_int_t stored = json_integer_value(json_object_get(pk, "signCount"));
    if (!pub_b64 || base64_decode(pub_b64, strlen(pub_b64), pub, sizeof(pub), true) != WEBAUTHN_PUBLIC_KEY_LEN ||
        stored < 0 || stored > UINT32_MAX)
        return api_fail(err, 500, "internal", "the stored passkey of user %s is unusable", doc_name(user));
    webauthn_expect ex = {.origin = origin, .rp_id = rp, .challenge = c.challenge, .require_uv = true};
    uint32_t count;
    int e = webauthn_assert_verify(cd, (size_t)cd_len, ad, (size_t)ad_len, sig, (size_t)sig_len, &ex, pub,
                                   (uint32_t)stored, &count, &why);
    if (e < 0) {
        report(r, "auth.login", doc_name(user), "denied", why, id);
        OPENSSL_cleanse(&c, sizeof(c));
        return api_fail(err, e == -EBADMSG || e == -E2BIG ? 400 : 401,
                        e == -EBADMSG || e == -E2BIG ? "invalid" : "unauthenticated", "passkey sign-in refused: %s", why);
    }
    /* the new counter and the time of use, before the session: a replay of
     * this assertion finds neither the challenge nor a lower counter */
    char at[40];
    time_format_rfc3339(now_s(), at, sizeof(at));
    json_auto_t *status = status_copy(user);
    json_auto_t *in_status = status ? json_pack("{s:O}", "status", status) : NULL;
    json_t *used = in_status ? passkey_find(in_status, id) : NULL;
    if (!used || json_object_set_new(used, "signCount", json_integer(count)) < 0 ||
        json_object_set_new(used, "lastUsedAt", json_string(at)) < 0) {
        OPENSSL_cleanse(&c, sizeof(c));
        return api_fail(err, 500, "internal", "out of memory");
    }
    e = write_status(r->server, user, status);
    if (e < 0) {
        OPENSSL_cleanse(&c, sizeof(c));
        return api_fail_store(err, e, "User", doc_name(user));
    }
    const api_login_end end = {.method = "passkey", .rd = c.rd, .bind = c.bind, .json = true};
    json_t *tokens;
    int ret = api_login_open(r, user, &end, &tokens, err);
    if (ret == 0)
        ret = api_login_send(r, user, &end, tokens, err);
    OPENSSL_cleanse(&c, sizeof(c));
    return ret;
}

/* Serves one of the pages' files with the headers a page of the API gets:
 * a CSP allowing only this origin's script and calls, no framing. */
static int send_static(api_request *r, const unsigned char *data, size_t len, const char *type)
{
    h2o_req_t *req = r->req;
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                          H2O_STRLIT("default-src 'none'; script-src 'self'; connect-src 'self'; base-uri 'none'; "
                                     "form-action 'none'; frame-ancestors 'none'"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-frame-options"), 0, NULL, H2O_STRLIT("DENY"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("referrer-policy"), 0, NULL,
                          H2O_STRLIT("no-referrer"));
    h2o_send_inline(req, (const char *)data, len);
    api_finish(r->route, r->started, 200);
    return 0;
}

int api_passkey_handle(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    char rp[PASSKEY_ORIGIN_MAX], origin[PASSKEY_ORIGIN_MAX];
    api_passkey_relying_party(r->server, rp, origin);
    bool get = api_method_is(r->req, "GET") || api_method_is(r->req, "HEAD");
    static const struct {
        const char *name;
        int (*handle)(api_request *r, const char *origin, const char *rp, api_error *err);
    } calls[] = {
        {"register/begin", register_begin},
        {"register/finish", register_finish},
        {"login/begin", login_begin},
        {"login/finish", login_finish},
    };
    for (size_t i = 0; i < ELEMENTSOF(calls); i++) {
        if (!h2o_memis(rest, rest_len, calls[i].name, strlen(calls[i].name)))
            continue;
        if (!api_method_is(r->req, "POST")) {
            api_method_not_allowed(r->req, r->route, r->started, "POST");
            return 0;
        }
        if (origin_check(r, origin, err) < 0)
            return -1;
        return calls[i].handle(r, origin, rp, err);
    }
    bool page = h2o_memis(rest, rest_len, H2O_STRLIT("register")) || h2o_memis(rest, rest_len, H2O_STRLIT("login"));
    bool script = h2o_memis(rest, rest_len, H2O_STRLIT("passkey.js"));
    if (!page && !script)
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/auth/passkey/%.*s", (int)MIN(rest_len, (size_t)100),
                        rest);
    if (!get) {
        api_method_not_allowed(r->req, r->route, r->started, "GET");
        return 0;
    }
    return page ? send_static(r, passkey_html, passkey_html_len, "text/html; charset=utf-8")
                : send_static(r, passkey_js, passkey_js_len, "text/javascript; charset=utf-8");
}

bool api_passkeys_registered(api_server *srv)
{
    json_auto_t *users = NULL;
    if (store_list(srv->cfg->store, "User", &users, NULL) < 0)
        return false;
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u) if (json_array_size(passkeys_of(u)) > 0) return true;
    return false;
}
