/* The authenticate stage: the access token of a request (Authorization:
 * Bearer, else the session cookie) resolved to its session, user and
 * credential by the API's own rule (auth/session.h), cached per thread
 * (see corridor.h). */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "auth/credential.h"
#include "auth/jwt.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "proxy/cookie.h"
#include "proxy/corridor.h"

#define TOKEN_VALUES_MAX (64u * 1024) /* bytes of a caller's policy values (groups, attrs) */

h2o_iovec_t proxy_find_cookie(h2o_req_t *req, const char *name)
{
    for (ssize_t i = -1; (i = h2o_find_header(&req->headers, H2O_TOKEN_COOKIE, i)) != -1;) {
        const char *value;
        size_t len;
        h2o_iovec_t v = req->headers.entries[i].value;
        if (proxy_cookie_find(v.base, v.len, name, strlen(name), &value, &len))
            return h2o_iovec_init(value, len);
    }
    return h2o_iovec_init(NULL, 0);
}

h2o_iovec_t proxy_find_token(h2o_req_t *req, bool *ret_from_cookie)
{
    *ret_from_cookie = false;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (v.len > 7 && strncasecmp(v.base, "Bearer ", 7) == 0)
            return h2o_iovec_init(v.base + 7, v.len - 7);
        return h2o_iovec_init(v.base, 0); /* present, but not a bearer token */
    }
    *ret_from_cookie = true;
    return proxy_find_cookie(req, PROXY_SESSION_COOKIE);
}

static const char *spec_string(const json_t *doc, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, "spec"), field));
}

/* Empties R but for its arena, kept (reset) for the next resolution. */
static void resolved_clear(resolved_token *r)
{
    proxy_identity_done(&r->who);
    json_decref(r->user);
    json_decref(r->credential);
    json_decref(r->session);
    free(r->signed_part);
    cel_arena *values = r->values;
    if (values)
        cel_arena_reset(values);
    *r = (resolved_token){.values = values};
}

/* The signature of the access token TOKEN: what follows its last '.'; the
 * part before, dot included, is what it signs (*RET_SIGNED). A token
 * without a dot is all signature (it cannot verify). */
static h2o_iovec_t token_signature(h2o_iovec_t token, h2o_iovec_t *ret_signed)
{
    const char *dot = memrchr(token.base, '.', token.len);
    size_t cut = dot ? (size_t)(dot - token.base) + 1 : 0;
    *ret_signed = h2o_iovec_init(token.base, cut);
    return h2o_iovec_init(token.base + cut, token.len - cut);
}

void proxy_tokens_clear(proxy_thread *t)
{
    for (size_t i = 0; i < PROXY_TOKEN_SLOTS; i++) {
        resolved_clear(&t->tokens[i]);
        cel_arena_free(t->tokens[i].values);
        t->tokens[i].values = NULL;
    }
}

/* Fills SLOT's view of the caller (the corridor's strings, the policy's
 * ctx.user and ctx.session) from its documents, once per resolution.
 * Returns 0 or -ENOMEM. */
static int resolved_view(resolved_token *slot)
{
    if (!slot->values && !(slot->values = cel_arena_new(TOKEN_VALUES_MAX)))
        return -ENOMEM;
    int e = proxy_identity_init(&slot->who, slot->user, slot->session, slot->credential);
    if (e < 0)
        return e;
    policy_request_init(&slot->caller);
    if ((e = policy_request_set_user(&slot->caller, slot->user, slot->values)) < 0)
        return e;
    policy_request_set_session(&slot->caller, slot->session, slot->session_created, slot->session_expires, false);
    slot->caller.credential = slot->who.credential;
    return 0;
}

const resolved_token *proxy_request_token(const proxy_request *pr)
{
    const resolved_token *r = pr->token;
    return r && r->user && memcmp(r->hash, pr->token_hash, sizeof(pr->token_hash)) == 0 ? r : NULL;
}

/* Signature, expiry, issuer and audience, then the session, user and
 * credential by the rule of auth/session.h; a resolution is cached until
 * the token or its session expires or the configuration changes. The cache
 * is keyed by the SHA-256 of the token's signature, the secret part
 * (compared in constant time), and keeps the signed part to compare as is:
 * only the issuer can make a signature, so a hit is the same token, and a
 * token is never kept, only the digest of its signature (hashing the
 * signature alone is 2 SHA-256 blocks instead of the token's 10). */
const resolved_token *proxy_resolve(proxy_thread *t, const proxy_config *c, h2o_iovec_t token, int64_t now,
                                    const char **ret_why, int *ret_status)
{
    *ret_status = 401;
    if (token.len > JWT_MAX_LEN) {
        *ret_why = "the access token is too long";
        return NULL;
    }
    h2o_iovec_t signed_part, signature = token_signature(token, &signed_part);
    uint8_t hash[SHA256_DIGEST_LENGTH];
    proxy_sha256(signature.base, signature.len, hash);
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    resolved_token *slot = &t->tokens[h % PROXY_TOKEN_SLOTS];
    if (slot->user && slot->generation == c->generation && now < slot->exp &&
        memeq_consttime(slot->hash, hash, sizeof(hash)) && slot->signed_len == signed_part.len &&
        memcmp(slot->signed_part, signed_part.base, signed_part.len) == 0)
        return slot;

    jwt_expect ex = {.issuer = c->issuer, .audience = c->audience, .now = now, .leeway = JWT_DEFAULT_LEEWAY_S};
    json_t *claims = NULL;
    int e = jwt_verify_cached(t->jwt, token.base, token.len, c->keys, c->n_keys, &ex, &claims);
    if (e < 0) {
        *ret_why = jwt_strerror(e);
        return NULL;
    }
    const char *sid = json_string_value(json_object_get(claims, "sid"));
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    json_int_t exp = json_integer_value(json_object_get(claims, "exp"));
    json_t *session = sid ? json_object_get(c->sessions, sid) : NULL;
    const char *user_name = spec_string(session, "user"), *cred_name = spec_string(session, "credential");
    json_t *user = user_name ? json_object_get(c->users, user_name) : NULL;
    json_t *cred = cred_name ? json_object_get(c->credentials, cred_name) : NULL;
    e = auth_session_check(session, sub ? sub : "", user, cred, now, &t->refused);
    json_decref(claims);
    if (e < 0) {
        *ret_why = t->refused.message;
        *ret_status = t->refused.status;
        return NULL;
    }
    int64_t created = 0, expires = 0;
    time_parse_rfc3339(spec_string(session, "expiresAt"), &expires); /* the rule read it */
    time_parse_rfc3339(json_string_value(json_object_get(json_object_get(session, "metadata"), "createdAt")), &created);
    resolved_clear(slot);
    if (!(slot->signed_part = malloc(signed_part.len + 1))) {
        *ret_why = "the proxy is out of memory";
        return NULL;
    }
    memcpy(slot->signed_part, signed_part.base, signed_part.len);
    slot->signed_len = signed_part.len;
    memcpy(slot->hash, hash, sizeof(hash));
    slot->generation = c->generation;
    slot->exp = MIN((int64_t)exp, expires);
    slot->user = json_incref(user);
    slot->credential = json_incref(cred);
    slot->session = json_incref(session);
    slot->session_created = created;
    slot->session_expires = expires;
    if (resolved_view(slot) < 0) {
        resolved_clear(slot);
        *ret_why = "the proxy is out of memory";
        return NULL;
    }
    return slot;
}

/* 401: a browser is redirected to log in (login.c), an API client gets
 * JSON and a WWW-Authenticate challenge (naming the token invalid when
 * HAD_TOKEN). */
static proxy_step refuse_unauthenticated(proxy_request *pr, const char *why, bool had_token)
{
    h2o_req_t *req = pr->req;
    pr->rec.decision = PROXY_DECISION_UNAUTHENTICATED;
    if (proxy_wants_html(req) && pr->t->settings->login_url)
        return proxy_login_redirect(pr);
    static const char challenge[] = "Bearer realm=\"cloister\"";
    static const char invalid[] = "Bearer realm=\"cloister\", error=\"invalid_token\"";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, had_token ? invalid : challenge,
                   had_token ? sizeof(invalid) - 1 : sizeof(challenge) - 1);
    return proxy_fail(pr, 401, "unauthenticated", "%s", why);
}

/* Finds and resolves the request's access token; without a good one the
 * request is refused (401, or 403 for a disabled user: the API's answer
 * too). */
proxy_step proxy_stage_authenticate(proxy_request *pr)
{
    pr->now = (int64_t)(pr->rec.received / NSEC_PER_SEC);
    h2o_iovec_t token = proxy_find_token(pr->req, &pr->from_cookie);
    if (!token.base || token.len == 0)
        return refuse_unauthenticated(pr,
                                      token.base ? "the Authorization header must be \"Bearer <access token>\""
                                                 : "no access token: send \"Authorization: Bearer <access token>\" "
                                                   "(POST /v1/auth/token on the API) or log in",
                                      token.base != NULL);
    if (credential_token_well_formed(token.base, token.len))
        return refuse_unauthenticated(pr,
                                      "this is a credential token (clst_...), not an access token: exchange it on "
                                      "the API with POST /v1/auth/token {\"token\": \"clst_...\"} and send the "
                                      "answer's access_token, or run `cloister login --token clst_...` once and "
                                      "send `cloister token access` (or use `cloister connect SERVICE`)",
                                      true);
    const char *reason;
    int status;
    const resolved_token *r = proxy_resolve(pr->t, pr->c, token, pr->now, &reason, &status);
    if (!r && status == 403) {
        pr->rec.decision = PROXY_DECISION_DENY;
        return proxy_fail(pr, 403, "forbidden", "%s", reason);
    }
    if (!r)
        return refuse_unauthenticated(pr, reason, true);
    pr->token = r;
    memcpy(pr->token_hash, r->hash, sizeof(pr->token_hash));
    pr->rec.user = r->who.user;
    pr->rec.session = r->who.session;
    return PROXY_NEXT;
}
