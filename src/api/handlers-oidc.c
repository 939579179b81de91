/* OIDC login (authorization code flow with PKCE, state and nonce) against
 * the IdentityProvider resources:
 *
 *   GET  /v1/auth/login?rd=URL&bind=B&exp=T&mac=M   where the proxy sends a
 *        browser without a session: rd (a URL on a Service's host) is
 *        checked, and the link must be the proxy's (a mac over rd, bind and
 *        exp, auth/handoff.h), then the one identity provider's login
 *        starts, or a page lists them all
 *   GET  /v1/auth/oidc/{idp}/login     redirects the browser to the provider
 *        (or, for the CLI, answers the URL: ?cli_redirect=<loopback URI>
 *        &cli_challenge=<S256 PKCE challenge of the CLI's own verifier>);
 *        ?rd=URL&bind=B&exp=T&mac=M as above
 *   GET  /v1/auth/oidc/callback        the provider sends the browser back:
 *        the code is exchanged, the ID token validated, the user mapped, a
 *        Session opened; a login with rd is sent back to the service host's
 *        /.cloister/callback with a sealed handoff (handoff.h), any other
 *        browser gets the cloister_session cookie of the API host, a CLI
 *        login is redirected to its loopback URI with a one-time code
 *   POST /v1/auth/oidc/exchange        the CLI trades that code and its PKCE
 *        verifier for the session's tokens (RFC 8252 loopback redirect)
 *
 * Logins in progress live in the store for 10 minutes (api/tickets.h: one
 * PendingLogin record each, found by its state or code), so a login
 * started on one api replica finishes on any other, once. Provider
 * metadata and keys are cached for an hour; an ID token signed with an
 * unknown kid makes the keys be fetched again (at most every 10 seconds).
 * Provider HTTP calls (discovery, keys, token exchange) and the client
 * secret's unsealing run off the event loops, on the API's pool for remote
 * calls (offload.h), each call capped at 15 seconds; a logout finds the
 * provider's end-session endpoint among those discovered, without a call. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/auth.h"
#include "api/handlers-kms.h"
#include "api/handlers-passkeys.h"
#include "api/tickets.h"
#include "auth/handoff.h"
#include "audit/event.h"
#include "auth/oidc.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "resource/resource.h"

#define PENDING_MAX 1024
#define PENDING_TTL_S 600
/* logins in progress: a login's fields and, for a CLI, its tokens (api/tickets.h) */
static api_ticket_kind pending_kind = {.kind = "PendingLogin", .seal_label = "cloister pending logins v1",
                                       .ttl_s = PENDING_TTL_S, .max_live = PENDING_MAX,
                                       .content_max = 64 * 1024};
/* the handoffs made and not yet taken by a proxy (api_handoff_take) */
static api_ticket_kind handoff_kind = {.kind = "LoginHandoff", .seal_label = "cloister login handoffs v1",
                                       .ttl_s = HANDOFF_TTL_S, .max_live = PENDING_MAX, .content_max = 256};
#define PROVIDERS_MAX 32
#define PROVIDER_TTL_S 3600
#define JWKS_REFETCH_MIN_S 10
#define URI_MAX 512
#define CHOOSER_IDPS_MAX 100     /* identity providers a login page lists */
#define CHOOSER_PAGE_MAX 65536   /* bytes of that page */

/* A login between /login and /callback (CODE empty), or a finished CLI
 * login waiting for /exchange (TOKENS set, found by CODE). */
typedef struct pending {
    char state[OIDC_RANDOM_LEN + 1];
    char nonce[OIDC_RANDOM_LEN + 1];
    char verifier[OIDC_RANDOM_LEN + 1];
    char code[OIDC_RANDOM_LEN + 1];
    char idp[RESOURCE_NAME_MAX + 1];
    char redirect_uri[URI_MAX];  /* our callback, as sent to the provider */
    char cli_redirect[URI_MAX];  /* a CLI's loopback URI, or "" */
    char cli_challenge[OIDC_RANDOM_LEN + 1];
    char rd[LOGIN_RD_MAX + 1];   /* a browser login's return URL (login_rd.url), or "" */
    char bind[LOGIN_BIND_LEN + 1]; /* with rd: hex SHA-256 of the proxy's login cookie in that browser */
    int64_t created;
    json_t *tokens;
} pending;


/* A provider's discovery metadata and keys. */
typedef struct provider {
    char name[RESOURCE_NAME_MAX + 1];
    char rv[32]; /* resourceVersion of the IdentityProvider they were fetched for */
    oidc_metadata meta;
    jwt_key *keys[OIDC_MAX_KEYS];
    size_t n_keys;
    int64_t fetched, keys_fetched;
} provider;

/* Held by workers across discovery (network calls): never taken on a loop. */
static pthread_mutex_t providers_lock = PTHREAD_MUTEX_INITIALIZER;
static provider providers[PROVIDERS_MAX];

/* The end-session endpoints of the providers discovered, for logouts on
 * the event loops, under a lock never held across a network call. */
typedef struct end_session {
    char name[RESOURCE_NAME_MAX + 1];
    char url[1024]; /* "" when the provider has none, or a longer one */
} end_session;
static pthread_mutex_t end_sessions_lock = PTHREAD_MUTEX_INITIALIZER;
static end_session end_sessions[PROVIDERS_MAX];

/* Remembers provider NAME's end-session endpoint URL (may be NULL). */
static void end_session_remember(const char *name, const char *url)
{
    pthread_mutex_lock(&end_sessions_lock);
    end_session *slot = &end_sessions[0];
    for (size_t i = 0; i < PROVIDERS_MAX; i++) {
        if (strcmp(end_sessions[i].name, name) == 0 || !end_sessions[i].name[0]) {
            slot = &end_sessions[i];
            break;
        }
    }
    snprintf(slot->name, sizeof(slot->name), "%s", name);
    if (!url || strlen(url) >= sizeof(slot->url))
        url = "";
    snprintf(slot->url, sizeof(slot->url), "%s", url);
    pthread_mutex_unlock(&end_sessions_lock);
}

static int64_t now_s(void)
{
    return (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

/* Wipes P, the tokens it may hold included. */
static void pending_clear(pending *p)
{
    if (p->tokens) {
        const char *k;
        json_t *v;
        json_object_foreach(p->tokens, k, v) if (json_is_string(v))
            OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
        json_decref(p->tokens);
    }
    OPENSSL_cleanse(p, sizeof(*p));
}

/* P as JSON (new reference), or NULL on allocation failure. */
static json_t *pending_to_json(const pending *p)
{
    json_t *v = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I}", "state", p->state, "nonce",
                          p->nonce, "verifier", p->verifier, "code", p->code, "idp", p->idp, "redirectUri",
                          p->redirect_uri, "cliRedirect", p->cli_redirect, "cliChallenge", p->cli_challenge, "rd",
                          p->rd, "bind", p->bind, "created", (json_int_t)p->created);
    if (v && p->tokens && json_object_set(v, "tokens", p->tokens) < 0) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* Fills *P from V (pending_to_json()'s form; its tokens become P's own
 * reference). Returns 0 or -EINVAL. */
static int pending_from_json(const json_t *v, pending *p)
{
    *p = (pending){0};
    bool ok = api_ticket_string(v, "state", p->state, sizeof(p->state)) &&
              api_ticket_string(v, "nonce", p->nonce, sizeof(p->nonce)) &&
              api_ticket_string(v, "verifier", p->verifier, sizeof(p->verifier)) &&
              api_ticket_string(v, "code", p->code, sizeof(p->code)) && api_ticket_string(v, "idp", p->idp, sizeof(p->idp)) &&
              api_ticket_string(v, "redirectUri", p->redirect_uri, sizeof(p->redirect_uri)) &&
              api_ticket_string(v, "cliRedirect", p->cli_redirect, sizeof(p->cli_redirect)) &&
              api_ticket_string(v, "cliChallenge", p->cli_challenge, sizeof(p->cli_challenge)) &&
              api_ticket_string(v, "rd", p->rd, sizeof(p->rd)) && api_ticket_string(v, "bind", p->bind, sizeof(p->bind)) &&
              json_is_integer(json_object_get(v, "created"));
    if (!ok) {
        OPENSSL_cleanse(p, sizeof(*p));
        return -EINVAL;
    }
    p->created = json_integer_value(json_object_get(v, "created"));
    json_t *tokens = json_object_get(v, "tokens");
    p->tokens = json_is_object(tokens) ? json_incref(tokens) : NULL;
    return 0;
}

/* Keeps login P in the store under its state (or, with a CODE, that code).
 * Returns 0 or a negative errno. */
static int pending_put(api_server *srv, const pending *p)
{
    bool by_code = p->code[0] != 0;
    json_t *plain = pending_to_json(p);
    int r = plain ? api_ticket_put(srv, &pending_kind, by_code ? 'c' : 's', by_code ? p->code : p->state, p->created,
                                   plain)
                  : -ENOMEM;
    if (plain)
        json_object_del(plain, "tokens"); /* P's own: wiped by its owner */
    api_ticket_content_free(plain);
    return r;
}

/* Takes the live login whose STATE (or, when BY_CODE, exchange code) is KEY
 * out of the store into *RET: single use, on every replica. */
static bool pending_take(api_server *srv, const char *key, bool by_code, pending *ret)
{
    if (strlen(key) != OIDC_RANDOM_LEN)
        return false;
    json_t *plain = NULL;
    pending p;
    int r = api_ticket_take(srv, &pending_kind, by_code ? 'c' : 's', key, &plain);
    if (r == 0)
        r = pending_from_json(plain, &p);
    if (plain)
        json_object_del(plain, "tokens"); /* P's own now */
    api_ticket_content_free(plain);
    if (r < 0)
        return false;
    if ((p.code[0] != 0) != by_code || !memeq_consttime(by_code ? p.code : p.state, key, OIDC_RANDOM_LEN)) {
        pending_clear(&p);
        return false;
    }
    *ret = p;
    return true;
}

/* ---- the IdentityProvider and its provider ---- */

/* The IdentityProvider NAME (new reference in *RET). */
static int load_idp(api_server *srv, const char *name, json_t **ret, api_error *err)
{
    json_t *idp = NULL;
    if (!resource_name_valid(name) || store_get(srv->cfg->store, "IdentityProvider", name, &idp) < 0)
        return api_fail(err, 404, "not_found", "identity provider %s not found", resource_name_valid(name) ? name : "?");
    *ret = idp;
    return 0;
}

/* The client secret of IDP, unsealed from the Secret it names (heap, wiped
 * and freed by the caller). */
static int client_secret(const json_t *idp, char **ret, api_error *err)
{
    json_t *ref = json_object_get(json_object_get(idp, "spec"), "clientSecret");
    const char *sname = json_string_value(json_object_get(ref, "secret"));
    const char *skey = json_string_value(json_object_get(ref, "key"));
    if (!sname || !skey)
        return api_fail(err, 500, "internal", "identity provider %s names no client secret", doc_name(idp));
    return api_kms_secret_value(sname, skey, ret, err);
}

static const char *idp_string(const json_t *idp, const char *field)
{
    return json_string_value(json_object_get(json_object_get(idp, "spec"), field));
}

static void provider_clear(provider *p)
{
    oidc_metadata_done(&p->meta);
    for (size_t i = 0; i < p->n_keys; i++)
        jwt_key_free(p->keys[i]);
    *p = (provider){0};
}

/* Fetches the provider's keys into P. Caller holds providers_lock. */
static int provider_fetch_keys(provider *p, const char *ca, int64_t now)
{
    json_auto_t *jwks = NULL;
    long status;
    int r = oidc_http_json(p->meta.jwks_uri, ca, NULL, NULL, NULL, &jwks, &status);
    if (r < 0 || status != 200)
        return r < 0 ? r : -EIO;
    jwt_key *keys[OIDC_MAX_KEYS];
    int n = oidc_jwks_parse(jwks, keys);
    if (n < 0)
        return n;
    for (size_t i = 0; i < p->n_keys; i++)
        jwt_key_free(p->keys[i]);
    memcpy(p->keys, keys, (size_t)n * sizeof(keys[0]));
    p->n_keys = (size_t)n;
    p->keys_fetched = now;
    return 0;
}

/* The cached provider of IDP, discovered (again) when absent, older than
 * PROVIDER_TTL_S or fetched for another version of the resource. Caller
 * holds providers_lock; the result stays valid while it does. */
static provider *provider_get_locked(const json_t *idp, api_error *err)
{
    const char *name = doc_name(idp);
    const char *rv = json_string_value(json_object_get(json_object_get(idp, "metadata"), "resourceVersion")) ?: "";
    const char *issuer = idp_string(idp, "issuer"), *ca = idp_string(idp, "ca");
    int64_t now = now_s();
    provider *p = NULL, *oldest = &providers[0];
    for (size_t i = 0; i < PROVIDERS_MAX && !p; i++) {
        if (strcmp(providers[i].name, name) == 0)
            p = &providers[i];
        else if (providers[i].fetched < oldest->fetched)
            oldest = &providers[i];
    }
    if (p && strcmp(p->rv, rv) == 0 && now - p->fetched < PROVIDER_TTL_S)
        return p;
    if (!p)
        p = oldest;
    provider_clear(p);
    /* OpenID Connect Discovery: the issuer with /.well-known/openid-configuration appended */
    char url[2200];
    size_t ilen = strlen(issuer);
    snprintf(url, sizeof(url), "%.*s/.well-known/openid-configuration", (int)(ilen && issuer[ilen - 1] == '/' ? ilen - 1 : ilen),
             issuer);
    json_auto_t *doc = NULL;
    long status;
    int r = oidc_http_json(url, ca, NULL, NULL, NULL, &doc, &status);
    if (r == 0 && status != 200)
        r = -EIO;
    if (r == 0)
        r = oidc_metadata_parse(doc, issuer, &p->meta);
    if (r == 0)
        r = provider_fetch_keys(p, ca, now);
    if (r < 0) {
        provider_clear(p);
        log_fields(LOG_LEVEL_WARN, "OIDC discovery failed", "idp", name, "issuer", issuer, "error",
                   r == -EBADMSG ? "malformed or foreign discovery document or keys" : strerror(-r), NULL);
        api_fail(err, 502, "bad_gateway", "identity provider %s cannot be reached or answered badly (discovery at %s)",
                 name, url);
        return NULL;
    }
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->rv, sizeof(p->rv), "%s", rv);
    p->fetched = now;
    end_session_remember(name, p->meta.end_session_endpoint);
    return p;
}

/* ---- helpers ---- */

/* Appends "&NAME=VALUE" (VALUE percent-encoded) to B. */
static int add_param(strbuf *b, const char *name, const char *value)
{
    char *e = curl_easy_escape(NULL, value, 0);
    if (!e)
        return -ENOMEM;
    int r = strbuf_printf(b, "%s%s=%s", b->len ? "&" : "", name, e);
    curl_free(e);
    return r;
}

/* Whether URI is a loopback redirect a native app may ask for (RFC 8252
 * 7.3): http://127.0.0.1:PORT/... or http://[::1]:PORT/..., nothing else. */
static bool loopback_uri_ok(const char *uri)
{
    const char *rest = NULL;
    if (strncmp(uri, "http://127.0.0.1:", 17) == 0)
        rest = uri + 17;
    else if (strncmp(uri, "http://[::1]:", 13) == 0)
        rest = uri + 13;
    if (!rest || strlen(uri) >= URI_MAX)
        return false;
    size_t digits = strspn(rest, "0123456789");
    if (digits == 0 || digits > 5 || rest[digits] != '/')
        return false;
    for (const char *c = rest + digits; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("/-._~", *c)))
            return false;
    return true;
}

/* Our callback URI, on the host the client reached us by. */
static int callback_uri(h2o_req_t *req, char *out, size_t size, api_error *err)
{
    h2o_iovec_t host = req->authority;
    if (host.len == 0 || host.len > 255)
        return api_fail(err, 400, "invalid", "the request names no host");
    for (size_t i = 0; i < host.len; i++) {
        char c = host.base[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(".-:[]", c)))
            return api_fail(err, 400, "invalid", "malformed Host header");
    }
    snprintf(out, size, "https://%.*s/v1/auth/oidc/callback", (int)host.len, host.base);
    return 0;
}

/* A query parameter that must be a plain token (base64url and the like). */
static bool query_token(const h2o_req_t *req, const char *name, char *out, size_t size)
{
    if (!api_query_param(req, name, out, size) || !out[0])
        return false;
    for (const char *c = out; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("-._~", *c)))
            return false;
    return true;
}

/* Decodes %XX escapes of a query parameter value in place; false when malformed. */
static bool percent_decode(char *s)
{
    char *o = s;
    for (char *i = s; *i; i++) {
        if (*i == '%') {
            int hi = hex_digit_value(i[1]), lo = hi < 0 ? -1 : hex_digit_value(i[2]);
            if (lo < 0 || (hi | lo) == 0)
                return false;
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else
            *o++ = *i == '+' ? ' ' : *i;
    }
    *o = 0;
    return true;
}

/* Whether REQ's query has a parameter NAME at all (with or without a value). */
static bool query_names(const h2o_req_t *req, const char *name)
{
    if (req->query_at == SIZE_MAX)
        return false;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t n = strlen(name);
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) >= n && memcmp(p, name, n) == 0 && (p + n == stop || p[n] == '='))
            return true;
        p = stop + 1;
    }
    return false;
}

/* Whether HOST (lower case, no port) is NAME (any case, one trailing dot
 * ignored). */
static bool host_is(const char *host, const char *name)
{
    size_t n = strlen(name);
    if (n > 1 && name[n - 1] == '.')
        n--;
    return strlen(host) == n && strncasecmp(host, name, n) == 0;
}

/* The Service served at RD's host (<service>.<domain>, or one of a
 * Service's spec.hosts, as the proxy routes), its name into SERVICE.
 * Returns 0, or -1 with ERR (400 when no Service is there). */
static int rd_service(api_server *srv, const login_rd *rd, char service[RESOURCE_NAME_MAX + 1], api_error *err)
{
    json_auto_t *services = NULL;
    int e = store_list(srv->cfg->store, "Service", &services, NULL);
    if (e < 0)
        return api_fail_store(err, e, "Service", "*");
    const char *domain = srv->cfg->domain ? srv->cfg->domain : "";
    size_t i, j;
    json_t *svc, *h;
    json_array_foreach(services, i, svc)
    {
        const char *name = doc_name(svc);
        if (!name)
            continue;
        char own[RESOURCE_NAME_MAX + 300];
        bool found = (size_t)snprintf(own, sizeof(own), "%s.%s", name, domain) < sizeof(own) && host_is(rd->host, own);
        json_array_foreach(json_object_get(json_object_get(svc, "spec"), "hosts"), j, h) if (json_is_string(h))
            found = found || host_is(rd->host, json_string_value(h));
        if (found) {
            snprintf(service, RESOURCE_NAME_MAX + 1, "%s", name);
            return 0;
        }
    }
    return api_fail(err, 400, "invalid",
                    "rd must be a URL on a service host: %s is neither <service>.%s of a Service nor one of a "
                    "Service's spec.hosts",
                    rd->host, domain);
}

static void report(api_request *r, const char *action, const char *method, const char *user, const char *idp,
                   const char *sid, const char *outcome, const char *reason);

int api_login_link_from_query(api_request *r, login_link *ret, bool *ret_present, api_error *err)
{
    api_server *srv = r->server;
    const h2o_req_t *req = r->req;
    char text[3 * LOGIN_RD_MAX + 1];
    if (!api_query_param(req, "rd", text, sizeof(text))) {
        if (query_names(req, "rd"))
            return api_fail(err, 400, "invalid", "rd is longer than %d bytes", LOGIN_RD_MAX);
        *ret_present = false;
        return 0;
    }
    if (!percent_decode(text))
        return api_fail(err, 400, "invalid", "rd is not a properly percent-encoded URL");
    const char *why = NULL;
    char service[RESOURCE_NAME_MAX + 1];
    if (login_rd_parse(text, strlen(text), &ret->rd, &why) < 0)
        return api_fail(err, 400, "invalid", "%s", why);
    if (rd_service(srv, &ret->rd, service, err) < 0)
        return -1;
    char bind[LOGIN_BIND_LEN + 8];
    if (!api_query_param(req, "bind", bind, sizeof(bind)) || !login_bind_valid(bind))
        return api_fail(err, 400, "invalid",
                        "a login with rd needs bind, the hex SHA-256 of the proxy's login cookie: start the login "
                        "from the service's address");
    if (!srv->cfg->handoff_key)
        return api_fail(err, 503, "unavailable", "this API holds no handoff key: logins cannot return to a service");
    /* the rd and bind are the proxy's: made for a browser it saw, never
     * chosen by whoever sends the link */
    char exp[sizeof(ret->exp)] = "", mac[LOGIN_MAC_LEN + 2] = "";
    api_query_param(req, "exp", exp, sizeof(exp));
    api_query_param(req, "mac", mac, sizeof(mac));
    int e = login_link_check(srv->cfg->handoff_key, ret->rd.url, bind, exp, mac, now_s(), &why);
    if (e == -EKEYREJECTED) { /* forged: audited, as often as the address may try a login */
        if (api_auth_rate_check_ip(r, err) < 0)
            return -1;
        report(r, "auth.login", NULL, NULL, NULL, NULL, "denied", why);
    }
    if (e < 0)
        return api_fail(err, 400, "invalid", "%s", why);
    memcpy(ret->bind, bind, LOGIN_BIND_LEN + 1);
    snprintf(ret->exp, sizeof(ret->exp), "%s", exp);
    memcpy(ret->mac, mac, LOGIN_MAC_LEN + 1);
    *ret_present = true;
    return 0;
}

/* Hands a login event by METHOD ("oidc", "passkey"; NULL: not known yet)
 * to the audit log (USER, IDP and SID may be NULL). */
static void report(api_request *r, const char *action, const char *method, const char *user, const char *idp,
                   const char *sid, const char *outcome, const char *reason)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = json_pack("{s:s?, s:s?, s:s?}", "method", method, "identityProvider", idp, "reason", reason);
    audit_event_emit(&(audit_event){.action = action, .user = user, .session = sid, .ip = ip, .kind = "Session",
                                    .name = sid, .outcome = outcome, .details = details});
    json_decref(details);
}

/* ---- GET /v1/auth/oidc/{idp}/login ---- */

/* The provider half of a login start, off the loop: discovery (when not
 * cached) and the authorization URL. Owns IDP; P is wiped when freed. */
typedef struct login_job {
    offload_job super;
    api_server *server;
    api_route route;
    uint64_t started;
    pending p;
    char challenge[OIDC_RANDOM_LEN + 1];
    json_t *idp;
    strbuf url;
    int rc;
    api_error err;
} login_job;

/* The authorization URL of login P at provider IDP with CHALLENGE into
 * URL (which holds the provider's authorization endpoint). */
static int authorization_url(const pending *p, const json_t *idp, const char *challenge, strbuf *url)
{
    /* scope: openid first, then the resource's scopes */
    _cleanup_strbuf_ strbuf scope;
    strbuf_init(&scope, 4096);
    strbuf_puts(&scope, "openid");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(json_object_get(idp, "spec"), "scopes"), i, s) if (strcmp(json_string_value(s), "openid"))
        strbuf_printf(&scope, " %s", json_string_value(s));
    _cleanup_strbuf_ strbuf q;
    strbuf_init(&q, 8192);
    int e = add_param(&q, "response_type", "code");
    if (e == 0)
        e = add_param(&q, "client_id", idp_string(idp, "clientId"));
    if (e == 0)
        e = add_param(&q, "redirect_uri", p->redirect_uri);
    if (e == 0)
        e = add_param(&q, "scope", scope.data);
    if (e == 0)
        e = add_param(&q, "state", p->state);
    if (e == 0)
        e = add_param(&q, "nonce", p->nonce);
    if (e == 0)
        e = add_param(&q, "code_challenge", challenge);
    if (e == 0)
        e = add_param(&q, "code_challenge_method", "S256");
    if (e == 0)
        e = strbuf_printf(url, "%c%s", strchr(url->data, '?') ? '&' : '?', q.data);
    return e;
}

static void login_work(offload_job *j)
{
    login_job *job = (login_job *)j;
    pthread_mutex_lock(&providers_lock);
    provider *prov = provider_get_locked(job->idp, &job->err);
    if (prov)
        strbuf_puts(&job->url, prov->meta.authorization_endpoint);
    pthread_mutex_unlock(&providers_lock);
    if (!prov)
        job->rc = -1;
    else if (authorization_url(&job->p, job->idp, job->challenge, &job->url) < 0)
        job->rc = api_fail(&job->err, 500, "internal", "cannot build the authorization URL");
}

/* Keeps the login pending and sends the browser (or the CLI) to the
 * provider; a login whose client went away is forgotten. */
static void login_done(offload_job *j, h2o_req_t *req)
{
    login_job *job = (login_job *)j;
    if (req && job->rc < 0)
        api_respond_error(req, job->route, job->started, &job->err);
    else if (req && job->url.data && (job->p.created = now_s(), pending_put(job->server, &job->p)) < 0) {
        api_error err;
        api_fail(&err, 503, "unavailable", "cannot keep the login in the store; try again");
        api_respond_error(req, job->route, job->started, &err);
    } else if (req && job->url.data) {
        json_t *body;
        if (job->p.cli_redirect[0])
            body = json_pack("{s:s}", "authorization_url", job->url.data);
        else {
            h2o_iovec_t loc = h2o_strdup(&req->pool, job->url.data, job->url.len);
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, loc.base, loc.len);
            body = json_pack("{s:s}", "location", job->url.data);
        }
        api_respond_json(req, job->route, job->started, job->p.cli_redirect[0] ? 200 : 302, body);
        json_decref(body);
    }
    OPENSSL_cleanse(&job->p, sizeof(job->p));
    strbuf_free(&job->url);
    json_decref(job->idp);
    free(job);
}

/* Starts a login at IDP_NAME: a pending login (state, nonce, PKCE verifier,
 * and LINK's return URL and bind when the browser came from a service host;
 * LINK may be NULL) and a redirect to the provider, once the provider is
 * known (off the loop). Returns 0, or -1 with ERR. */
static int handle_login(api_request *r, const char *idp_name, const login_link *link, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    _cleanup_free_ login_job *job = calloc(1, sizeof(*job));
    if (!job)
        return api_fail(err, 500, "internal", "out of memory");
    *job = (login_job){.super = {.work = login_work, .done = login_done}, .server = r->server, .route = r->route,
                       .started = r->started};
    pending *p = &job->p;
    char cli_redirect[URI_MAX] = "";
    if (api_query_param(r->req, "cli_redirect", cli_redirect, sizeof(cli_redirect))) {
        if (!percent_decode(cli_redirect) || !loopback_uri_ok(cli_redirect))
            return api_fail(err, 400, "invalid", "cli_redirect must be a loopback URI: http://127.0.0.1:PORT/PATH");
        if (!query_token(r->req, "cli_challenge", p->cli_challenge, sizeof(p->cli_challenge)) ||
            strlen(p->cli_challenge) != OIDC_RANDOM_LEN)
            return api_fail(err, 400, "invalid", "a CLI login needs cli_challenge, the S256 PKCE challenge of its verifier");
        snprintf(p->cli_redirect, sizeof(p->cli_redirect), "%s", cli_redirect);
    }
    if (link) {
        if (p->cli_redirect[0])
            return api_fail(err, 400, "invalid", "rd (a browser login) and cli_redirect (a CLI login) exclude each other");
        snprintf(p->rd, sizeof(p->rd), "%s", link->rd.url);
        snprintf(p->bind, sizeof(p->bind), "%s", link->bind);
    }
    json_auto_t *idp = NULL;
    if (load_idp(r->server, idp_name, &idp, err) < 0)
        return -1;
    if (callback_uri(r->req, p->redirect_uri, sizeof(p->redirect_uri), err) < 0)
        return -1;
    if (oidc_random(p->state) < 0 || oidc_random(p->nonce) < 0 || oidc_random(p->verifier) < 0)
        return api_fail(err, 500, "internal", "no randomness");
    oidc_pkce_challenge(p->verifier, job->challenge);
    snprintf(p->idp, sizeof(p->idp), "%s", idp_name);
    strbuf_init(&job->url, 8192);
    job->idp = idp;
    if (api_offload(r, r->server->remote, &job->super, err) < 0) {
        OPENSSL_cleanse(p, sizeof(*p));
        return -1;
    }
    TAKE_PTR(idp); /* the job's now */
    TAKE_PTR(job);
    return 0;
}

/* ---- GET /v1/auth/oidc/callback ---- */

/* A user name made from the local part of EMAIL: lower-case letters,
 * digits and '-', at most RESOURCE_NAME_MAX. False when nothing is left. */
static bool name_from_email(const char *email, char out[RESOURCE_NAME_MAX + 1])
{
    size_t o = 0;
    for (const char *c = email; *c && *c != '@' && o < RESOURCE_NAME_MAX; c++) {
        char ch = *c >= 'A' && *c <= 'Z' ? (char)(*c + 32) : *c;
        if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))
            out[o++] = ch;
        else if (o && out[o - 1] != '-')
            out[o++] = '-';
    }
    while (o && out[o - 1] == '-')
        o--;
    out[o] = 0;
    return resource_name_valid(out);
}

/* The User that CLAIMS of an ID token from IDP map to (new reference in
 * *RET): the one whose email is the email claim, or one created on first
 * login when the provider allows it, with the groups claim as its groups. */
static int map_user(api_server *srv, const json_t *idp, const json_t *claims, json_t **ret, api_error *err)
{
    json_t *mapping = json_object_get(json_object_get(idp, "spec"), "claims");
    const char *email_claim = json_string_value(json_object_get(mapping, "email")) ?: "email";
    const char *groups_claim = json_string_value(json_object_get(mapping, "groups")) ?: "groups";
    const char *email = json_string_value(json_object_get(claims, email_claim));
    if (!email || !strchr(email, '@') || strlen(email) > 254)
        return api_fail(err, 403, "forbidden", "the ID token has no usable %s claim", email_claim);
    if (json_is_false(json_object_get(claims, "email_verified")))
        return api_fail(err, 403, "forbidden", "the identity provider has not verified %s", email);

    json_auto_t *users = NULL;
    int64_t rev;
    int e = store_list(srv->cfg->store, "User", &users, &rev);
    if (e < 0)
        return api_fail_store(err, e, "User", "*");
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u)
    {
        const char *ue = json_string_value(json_object_get(json_object_get(u, "spec"), "email"));
        if (ue && strcasecmp(ue, email) == 0) {
            *ret = json_incref(u);
            return 0;
        }
    }
    if (!json_is_true(json_object_get(json_object_get(idp, "spec"), "createUsers")))
        return api_fail(err, 403, "forbidden", "no user has the email %s (and identity provider %s does not create users)",
                        email, doc_name(idp));
    char name[RESOURCE_NAME_MAX + 1];
    if (!name_from_email(email, name))
        return api_fail(err, 403, "forbidden", "cannot make a user name from %s", email);
    json_auto_t *groups = json_array();
    json_array_foreach(json_object_get(claims, groups_claim), i, u) if (json_is_string(u) &&
                                                                        resource_name_valid(json_string_value(u)) &&
                                                                        json_array_size(groups) < 64)
        json_array_append(groups, u);
    json_auto_t *doc = json_pack("{s:s, s:s, s:{s:s, s:{s:s}}, s:{s:s, s:s, s:O}}", "apiVersion", RESOURCE_API_VERSION,
                                 "kind", "User", "metadata", "name", name, "labels", "cloister.dev/identity-provider",
                                 doc_name(idp), "spec", "type", "human", "email", email, "groups", groups);
    if (!doc)
        return api_fail(err, 500, "internal", "out of memory");
    store_op op = {.type = STORE_CREATE, .kind = "User", .name = name, .doc = doc};
    store_txn txn = {.ops = &op, .n_ops = 1};
    e = store_write(srv->cfg->store, &txn);
    json_t *created = e == 0 ? json_incref(op.result) : NULL;
    store_txn_clear(&txn);
    if (e == -EEXIST)
        return api_fail(err, 403, "forbidden", "user %s exists with another email than %s", name, email);
    if (e < 0)
        return api_fail_store(err, e, "User", name);
    *ret = created;
    return 0;
}

/* Trades CODE for the provider's tokens and validates the ID token of
 * login P at provider IDP. Returns 0 with its claims (new reference in *RET). */
static int redeem_code(const pending *p, const char *code, json_t *idp, json_t **ret, api_error *err)
{
    char *secret = NULL;
    if (client_secret(idp, &secret, err) < 0)
        return -1;
    const char *ca = idp_string(idp, "ca"), *client_id = idp_string(idp, "clientId");
    _cleanup_strbuf_ strbuf form;
    strbuf_init(&form, 8192);
    int e = add_param(&form, "grant_type", "authorization_code");
    if (e == 0)
        e = add_param(&form, "code", code);
    if (e == 0)
        e = add_param(&form, "redirect_uri", p->redirect_uri);
    if (e == 0)
        e = add_param(&form, "code_verifier", p->verifier);
    if (e < 0) {
        OPENSSL_cleanse(secret, strlen(secret));
        free(secret);
        return api_fail(err, 500, "internal", "out of memory");
    }

    pthread_mutex_lock(&providers_lock);
    provider *prov = provider_get_locked(idp, err);
    json_auto_t *answer = NULL;
    long status = 0;
    int r = prov ? oidc_http_json(prov->meta.token_endpoint, ca, form.data, client_id, secret, &answer, &status) : -1;
    OPENSSL_cleanse(secret, strlen(secret));
    free(secret);
    OPENSSL_cleanse(form.data, form.len); /* the code and the PKCE verifier */
    json_t *claims = NULL;
    const char *id_token = json_string_value(json_object_get(answer, "id_token"));
    if (prov && (r < 0 || status != 200 || !id_token)) {
        const char *why = json_string_value(json_object_get(answer, "error"));
        bool plain = why && why[0] && strspn(why, "abcdefghijklmnopqrstuvwxyz_") == strlen(why); /* an RFC 6749 code */
        r = api_fail(err, 401, "unauthenticated", "identity provider %s refused the authorization code%s%s", p->idp,
                     plain ? ": " : "", plain ? why : "");
    } else if (prov) {
        oidc_expect ex = {.issuer = idp_string(idp, "issuer"), .client_id = client_id, .nonce = p->nonce, .now = now_s()};
        r = oidc_id_token_verify(id_token, strlen(id_token), prov->keys, prov->n_keys, &ex, &claims);
        if (r == -ENOKEY && ex.now - prov->keys_fetched >= JWKS_REFETCH_MIN_S &&
            provider_fetch_keys(prov, ca, ex.now) == 0) /* the provider rotated its keys */
            r = oidc_id_token_verify(id_token, strlen(id_token), prov->keys, prov->n_keys, &ex, &claims);
        if (r < 0)
            r = api_fail(err, 401, "unauthenticated", "ID token refused: %s", oidc_strerror(r));
    }
    pthread_mutex_unlock(&providers_lock);
    if (answer) {
        const char *k;
        json_t *v;
        json_object_foreach(answer, k, v) if (json_is_string(v))
            OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    }
    if (!prov || r < 0)
        return -1;
    *ret = claims;
    return 0;
}

/* The cloister_session cookie holding ACCESS: HttpOnly, Secure, SameSite=Lax,
 * scoped to the cluster domain when it is a real one. */
static void set_session_cookie(api_request *r, const char *access)
{
    const char *domain = r->server->cfg->domain;
    char *cookie;
    bool scoped = domain && strchr(domain, '.');
    if (asprintf(&cookie, "cloister_session=%s; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=Lax%s%s", access,
                 AUTH_ACCESS_TTL_S, scoped ? "; Domain=" : "", scoped ? domain : "") < 0)
        return;
    h2o_iovec_t v = h2o_strdup(&r->req->pool, cookie, SIZE_MAX);
    OPENSSL_cleanse(cookie, strlen(cookie));
    free(cookie);
    h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, v.base, v.len);
}

/* Wipes the strings of TOKENS (a token answer) and releases it. */
static void tokens_wipe_decref(json_t *tokens)
{
    const char *k;
    json_t *v;
    json_object_foreach(tokens, k, v) if (json_is_string(v))
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    json_decref(tokens);
}

int api_handoff_take(api_server *srv, const char *handoff)
{
    json_t *content = NULL;
    int e = api_ticket_take(srv, &handoff_kind, 'h', handoff, &content);
    api_ticket_content_free(content);
    return e;
}

/* Sends the browser of a login with a return URL (END->rd) back to its
 * service host: to <scheme>://<authority>/.cloister/callback?handoff=H,
 * where H seals the access token of TOKENS for the proxy, that authority,
 * the URL's path and END->bind, for HANDOFF_TTL_S seconds (a 302, or 200
 * {"redirect": URL} when END->json). The API host gets no cookie: only the
 * service host sets one. Audited as auth.handoff (without the token).
 * Returns 0, or -1 with ERR. */
static int send_handoff(api_request *r, const api_login_end *end, const json_t *user, const char *sid,
                        const json_t *tokens, api_error *err)
{
    login_rd rd;
    char service[RESOURCE_NAME_MAX + 1];
    if (login_rd_parse(end->rd, strlen(end->rd), &rd, NULL) < 0) /* it was parsed when the login started */
        return api_fail(err, 500, "internal", "the login's return URL is unusable");
    if (rd_service(r->server, &rd, service, err) < 0) /* the Service may be gone since */
        return -1;
    const uint8_t *key = r->server->cfg->handoff_key;
    const char *access = json_string_value(json_object_get(tokens, "access_token"));
    char *h = NULL, *loc = NULL;
    int e = key && access ? handoff_seal(key, access, rd.authority, rd.path, end->bind, now_s() + HANDOFF_TTL_S, &h)
                          : -EINVAL;
    if (e == 0 && asprintf(&loc, "%s://%s/.cloister/callback?handoff=%s", rd.scheme, rd.authority, h) < 0) {
        loc = NULL;
        e = -ENOMEM;
    }
    if (e == 0) { /* kept until a proxy takes it: once across every proxy */
        json_t *content = json_pack("{s:s}", "host", rd.authority);
        e = content ? api_ticket_put(r->server, &handoff_kind, 'h', h, now_s(), content) : -ENOMEM;
        json_decref(content);
    }
    free(h);
    if (e < 0)
        return api_fail(err, 500, "internal", "cannot seal the login handoff for %s (%s)", rd.host, strerror(-e));
    if (!end->json) {
        h2o_iovec_t v = h2o_strdup(&r->req->pool, loc, SIZE_MAX);
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_LOCATION, NULL, v.base, v.len);
    }

    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    json_t *details = json_pack("{s:s, s:s?, s:s, s:s, s:s}", "method", end->method, "identityProvider", end->idp,
                                "service", service, "scheme", rd.scheme, "host", rd.authority);
    audit_event_emit(&(audit_event){.action = "auth.handoff", .user = doc_name(user), .session = sid, .ip = ip,
                                    .kind = "Session", .name = sid, .outcome = "success", .details = details});
    json_decref(details);
    json_t *body = json_pack("{s:s, s:s, s:s}", "user", doc_name(user), "session", sid, "service", service);
    if (body && end->json)
        json_object_set_new(body, "redirect", json_string(loc));
    free(loc);
    api_respond_json(r->req, r->route, r->started, end->json ? 200 : 302, body);
    json_decref(body);
    return 0;
}

int api_login_open(api_request *r, const json_t *user, const api_login_end *end, json_t **ret_tokens, api_error *err)
{
    if (json_is_true(json_object_get(json_object_get(user, "spec"), "disabled"))) {
        report(r, "auth.login", end->method, doc_name(user), end->idp, NULL, "denied", "user disabled");
        return api_fail(err, 403, "forbidden", "user %s is disabled", doc_name(user));
    }
    json_t *tokens;
    if (api_auth_open_session(r, user, NULL, end->idp, now_s() + AUTH_SESSION_TTL_S, &tokens, err) < 0)
        return -1;
    report(r, "auth.login", end->method, doc_name(user), end->idp, json_string_value(json_object_get(tokens, "session")),
           "success", NULL);
    *ret_tokens = tokens;
    return 0;
}

int api_login_send(api_request *r, const json_t *user, const api_login_end *end, json_t *tokens, api_error *err)
{
    const char *sid = json_string_value(json_object_get(tokens, "session"));
    int ret = 0;
    if (end->rd && end->rd[0]) /* back to the service host the browser came from */
        ret = send_handoff(r, end, user, sid, tokens, err);
    else {
        set_session_cookie(r, json_string_value(json_object_get(tokens, "access_token")));
        json_t *body = json_pack("{s:s, s:s, s:i}", "user", doc_name(user), "session", sid, "expires_in",
                                 AUTH_ACCESS_TTL_S);
        api_respond_json(r->req, r->route, r->started, 200, body);
        json_decref(body);
    }
    tokens_wipe_decref(tokens);
    return ret;
}

/* A login back from its provider with CLAIMS of IDP: the user mapped, a
 * Session opened, and the browser or CLI of login P sent on. Returns 0 (R
 * answered), or -1 with ERR (reported). */
static int callback_finish(api_request *r, const pending *p, const json_t *idp, const json_t *claims, api_error *err)
{
    json_auto_t *user = NULL;
    if (map_user(r->server, idp, claims, &user, err) < 0) {
        report(r, "auth.login", "oidc", NULL, p->idp, NULL, "denied", err->message);
        return -1;
    }
    const api_login_end end = {.method = "oidc", .idp = p->idp, .rd = p->rd, .bind = p->bind};
    json_t *tokens;
    if (api_login_open(r, user, &end, &tokens, err) < 0)
        return -1;
    if (p->cli_redirect[0]) {
        /* hand the tokens to the CLI that started this login, through its loopback */
        pending handoff = {.created = now_s(), .tokens = tokens};
        memcpy(handoff.cli_challenge, p->cli_challenge, sizeof(handoff.cli_challenge));
        char *loc = NULL;
        if (oidc_random(handoff.code) < 0 || asprintf(&loc, "%s?code=%s", p->cli_redirect, handoff.code) < 0) {
            pending_clear(&handoff);
            return api_fail(err, 500, "internal", "no randomness or memory for the CLI's code");
        }
        int e = pending_put(r->server, &handoff);
        pending_clear(&handoff); /* the session's tokens: kept sealed in the store for the CLI */
        if (e < 0) {
            free(loc);
            return api_fail(err, 503, "unavailable", "cannot keep the CLI's login in the store; log in again");
        }
        h2o_iovec_t v = h2o_strdup(&r->req->pool, loc, SIZE_MAX);
        free(loc);
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_LOCATION, NULL, v.base, v.len);
        json_t *body = json_pack("{s:s}", "status", "logged in; back to the command line");
        api_respond_json(r->req, ROUTE_AUTH_OIDC, r->started, 302, body);
        json_decref(body);
        return 0;
    }
    return api_login_send(r, user, &end, tokens, err);
}

/* The provider half of a callback, off the loop: the code traded for
 * tokens (with the client secret from the KMS) and the ID token checked.
 * Owns IDP and CLAIMS; P and CODE are wiped when freed. */
typedef struct callback_job {
    offload_job super;
    api_server *server;
    uint64_t started;
    pending p;
    char code[2048];
    json_t *idp, *claims;
    int rc;
    api_error err;
} callback_job;

static void callback_work(offload_job *j)
{
    callback_job *job = (callback_job *)j;
    job->rc = redeem_code(&job->p, job->code, job->idp, &job->claims, &job->err);
}

/* Finishes the login on the loop; a login whose browser went away is
 * dropped (its code is spent, no session is opened). */
static void callback_done(offload_job *j, h2o_req_t *req)
{
    callback_job *job = (callback_job *)j;
    static const caller nobody;
    api_request r = {.server = job->server, .req = req, .route = ROUTE_AUTH_OIDC, .started = job->started,
                     .caller = &nobody};
    if (req && job->rc < 0)
        report(&r, "auth.login", "oidc", NULL, job->p.idp, NULL, "failure", job->err.message);
    if (req && (job->rc < 0 || callback_finish(&r, &job->p, job->idp, job->claims, &job->err) < 0))
        api_respond_error(req, ROUTE_AUTH_OIDC, job->started, &job->err);
    OPENSSL_cleanse(job->code, sizeof(job->code));
    pending_clear(&job->p);
    json_decref(job->idp);
    json_decref(job->claims);
    free(job);
}

static int handle_callback(api_request *r, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    char state[OIDC_RANDOM_LEN + 8], error[128];
    callback_job *job = calloc(1, sizeof(*job));
    if (!job)
        return api_fail(err, 500, "internal", "out of memory");
    *job = (callback_job){.super = {.work = callback_work, .done = callback_done}, .server = r->server,
                          .started = r->started};
    if (!query_token(r->req, "state", state, sizeof(state)) || !pending_take(r->server, state, false, &job->p)) {
        free(job);
        report(r, "auth.login", "oidc", NULL, NULL, NULL, "failure", "unknown, used or expired state");
        return api_fail(err, 400, "invalid", "unknown, already used or expired login state; start the login again");
    }
    int ret = -1;
    if (query_token(r->req, "error", error, sizeof(error))) {
        report(r, "auth.login", "oidc", NULL, job->p.idp, NULL, "failure", "the identity provider refused the login");
        api_fail(err, 401, "unauthenticated", "identity provider %s refused the login: %s", job->p.idp, error);
    } else if (!query_token(r->req, "code", job->code, sizeof(job->code)))
        api_fail(err, 400, "invalid", "the callback has no authorization code");
    else if (load_idp(r->server, job->p.idp, &job->idp, err) == 0)
        ret = api_offload(r, r->server->remote, &job->super, err);
    if (ret < 0) {
        OPENSSL_cleanse(job->code, sizeof(job->code));
        pending_clear(&job->p);
        json_decref(job->idp);
        free(job);
    }
    return ret;
}

/* ---- POST /v1/auth/oidc/exchange ---- */

static int handle_exchange(api_request *r, api_error *err)
{
    if (api_auth_rate_check_ip(r, err) < 0)
        return -1;
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    if (!body)
        return -1;
    const char *code = json_string_value(json_object_get(body, "code"));
    const char *verifier = json_string_value(json_object_get(body, "code_verifier"));
    if (!code || !verifier || strlen(verifier) != OIDC_RANDOM_LEN)
        return api_fail(err, 400, "invalid", "the body must be {\"code\": ..., \"code_verifier\": ...}");
    pending p;
    if (!pending_take(r->server, code, true, &p))
        return api_fail(err, 401, "unauthenticated", "unknown, already used or expired login code");
    char challenge[OIDC_RANDOM_LEN + 1];
    oidc_pkce_challenge(verifier, challenge);
    if (!memeq_consttime(challenge, p.cli_challenge, OIDC_RANDOM_LEN)) {
        /* the code leaked to someone without the verifier: the session goes too */
        json_t *tokens = p.tokens;
        const char *sid = json_string_value(json_object_get(tokens, "session"));
        char path[64];
        snprintf(path, sizeof(path), "%s", sid ? sid : "");
        pending_clear(&p);
        store_op op = {.type = STORE_DELETE, .kind = "Session", .name = path};
        store_txn txn = {.ops = &op, .n_ops = 1};
        if (path[0])
            store_write(r->server->cfg->store, &txn);
        store_txn_clear(&txn);
        return api_fail(err, 401, "unauthenticated", "wrong code_verifier");
    }
    json_t *tokens = TAKE_PTR(p.tokens);
    pending_clear(&p);
    api_auth_respond_tokens(r, ROUTE_AUTH_OIDC, tokens);
    return 0;
}

int api_oidc_end_session_url(api_server *srv, const char *idp_name, char **ret)
{
    json_auto_t *idp = NULL;
    if (!resource_name_valid(idp_name) || store_get(srv->cfg->store, "IdentityProvider", idp_name, &idp) < 0)
        return -ENOENT;
    _cleanup_strbuf_ strbuf url;
    strbuf_init(&url, 4096);
    int r = -ENOENT;
    pthread_mutex_lock(&end_sessions_lock);
    for (size_t i = 0; i < PROVIDERS_MAX && r == -ENOENT; i++)
        if (strcmp(end_sessions[i].name, idp_name) == 0 && end_sessions[i].url[0])
            r = strbuf_puts(&url, end_sessions[i].url);
    pthread_mutex_unlock(&end_sessions_lock);
    _cleanup_strbuf_ strbuf q;
    strbuf_init(&q, 1024);
    if (r == 0)
        r = add_param(&q, "client_id", idp_string(idp, "clientId"));
    if (r == 0)
        r = strbuf_printf(&url, "%c%s", strchr(url.data, '?') ? '&' : '?', q.data);
    if (r < 0)
        return r;
    *ret = strbuf_steal(&url);
    return 0;
}

int api_oidc_handle(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    bool get = api_method_is(r->req, "GET") || api_method_is(r->req, "HEAD");
    if (h2o_memis(rest, rest_len, H2O_STRLIT("callback"))) {
        if (!get) {
            api_method_not_allowed(r->req, ROUTE_AUTH_OIDC, r->started, "GET");
            return 0;
        }
        return handle_callback(r, err);
    }
    if (h2o_memis(rest, rest_len, H2O_STRLIT("exchange"))) {
        if (!api_method_is(r->req, "POST")) {
            api_method_not_allowed(r->req, ROUTE_AUTH_OIDC, r->started, "POST");
            return 0;
        }
        return handle_exchange(r, err);
    }
    const char *slash = memchr(rest, '/', rest_len);
    char idp[RESOURCE_NAME_MAX + 1];
    if (slash && (size_t)(slash - rest) <= RESOURCE_NAME_MAX &&
        h2o_memis(slash, rest_len - (size_t)(slash - rest), H2O_STRLIT("/login"))) {
        memcpy(idp, rest, (size_t)(slash - rest));
        idp[slash - rest] = 0;
        if (!get) {
            api_method_not_allowed(r->req, ROUTE_AUTH_OIDC, r->started, "GET");
            return 0;
        }
        login_link link;
        bool has_rd;
        if (api_login_link_from_query(r, &link, &has_rd, err) < 0)
            return -1;
        return handle_login(r, idp, has_rd ? &link : NULL, err);
    }
    return api_fail(err, 404, "not_found", "no such endpoint: /v1/auth/oidc/%.*s", (int)MIN(rest_len, (size_t)100), rest);
}

/* Appends S to B with the characters HTML gives a meaning escaped. */
static int html_escape(strbuf *b, const char *s)
{
    int e = 0;
    for (; *s && e == 0; s++) {
        switch (*s) {
        case '&': e = strbuf_puts(b, "&amp;"); break;
        case '<': e = strbuf_puts(b, "&lt;"); break;
        case '>': e = strbuf_puts(b, "&gt;"); break;
        case '"': e = strbuf_puts(b, "&quot;"); break;
        case '\'': e = strbuf_puts(b, "&#39;"); break;
        default: e = strbuf_putc(b, *s);
        }
    }
    return e;
}

/* Appends to PAGE a list item linking to HREF (the login at an identity
 * provider, or with a passkey) with LINK's parameters as the proxy issued
 * them (LINK NULL: none, RD_ENC its percent-encoded return URL), showing
 * LABEL. */
static int chooser_item(strbuf *page, const char *href, const login_link *link, const char *rd_enc, const char *label)
{
    int e = strbuf_puts(page, "<li><a href=\"");
    if (e == 0)
        e = html_escape(page, href);
    if (e == 0 && link)
        e = strbuf_puts(page, "?rd=");
    if (e == 0 && link)
        e = html_escape(page, rd_enc);
    if (e == 0 && link) /* hex and digits: nothing to escape */
        e = strbuf_printf(page, "&amp;bind=%s&amp;exp=%s&amp;mac=%s", link->bind, link->exp, link->mac);
    if (e == 0)
        e = strbuf_puts(page, "\">");
    if (e == 0)
        e = html_escape(page, label);
    if (e == 0)
        e = strbuf_puts(page, "</a></li>\n");
    return e;
}

/* Answers 200 with an HTML page linking to the login at each of IDPS (at
 * most CHOOSER_IDPS_MAX), and to the passkey sign-in when PASSKEYS, each
 * carrying LINK as the proxy issued it (LINK NULL: none). Returns 0, or -1
 * with ERR. */
static int send_chooser(api_request *r, const json_t *idps, bool passkeys, const login_link *link, api_error *err)
{
    const login_rd *rd = link ? &link->rd : NULL;
    _cleanup_strbuf_ strbuf page;
    strbuf_init(&page, CHOOSER_PAGE_MAX);
    char *rd_enc = rd ? curl_easy_escape(NULL, rd->url, 0) : NULL;
    if (rd && !rd_enc)
        return api_fail(err, 500, "internal", "out of memory");
    int e = strbuf_puts(&page, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                               "<title>Log in</title></head>\n<body>\n<h1>Log in</h1>\n");
    if (e == 0 && rd) {
        e = strbuf_puts(&page, "<p>to continue to ");
        if (e == 0)
            e = html_escape(&page, rd->host);
        if (e == 0)
            e = strbuf_puts(&page, "</p>\n");
    }
    if (e == 0)
        e = strbuf_puts(&page, "<p>Choose how to sign in:</p>\n<ul>\n");
    size_t i;
    json_t *idp;
    json_array_foreach(idps, i, idp)
    {
        const char *name = doc_name(idp);
        if (e < 0 || i >= CHOOSER_IDPS_MAX)
            break;
        if (!name || !resource_name_valid(name))
            continue;
        char href[RESOURCE_NAME_MAX + 64];
        snprintf(href, sizeof(href), "/v1/auth/oidc/%s/login", name);
        e = chooser_item(&page, href, link, rd_enc, name);
    }
    if (e == 0 && passkeys) {
        char rp[PASSKEY_ORIGIN_MAX], origin[PASSKEY_ORIGIN_MAX + 32];
        api_passkey_relying_party(r->server, rp, origin);
        strcat(origin, "/v1/auth/passkey/login"); /* at the RP's origin: WebAuthn works only there */
        e = chooser_item(&page, origin, link, rd_enc, "Sign in with a passkey");
    }
    if (e == 0)
        e = strbuf_puts(&page, "</ul>\n</body>\n</html>\n");
    curl_free(rd_enc);
    if (e < 0)
        return api_fail(err, 500, "internal", "cannot build the login page");
    h2o_req_t *req = r->req;
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = page.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/html; charset=utf-8"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                          H2O_STRLIT("default-src 'none'; frame-ancestors 'none'"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-frame-options"), 0, NULL, H2O_STRLIT("DENY"));
    h2o_iovec_t body = h2o_strdup(&req->pool, page.data, page.len);
    h2o_send_inline(req, body.base, body.len);
    api_finish(ROUTE_AUTH_LOGIN, r->started, 200);
    return 0;
}

int api_auth_login_handle(api_request *r, const char *rest, size_t rest_len, api_error *err)
{
    if (rest_len != 0)
        return api_fail(err, 404, "not_found", "no such endpoint: /v1/auth/login%.*s", (int)MIN(rest_len, (size_t)100),
                        rest);
    if (!r->server->cfg->keyring)
        return api_fail(err, 503, "unavailable", "the auth server has no signing keys");
    if (!api_method_is(r->req, "GET") && !api_method_is(r->req, "HEAD")) {
        api_method_not_allowed(r->req, ROUTE_AUTH_LOGIN, r->started, "GET");
        return 0;
    }
    /* the return URL first: nothing, not even an error page, leads to a foreign host */
    login_link link;
    bool has_rd;
    if (api_login_link_from_query(r, &link, &has_rd, err) < 0)
        return -1;
    json_auto_t *idps = NULL;
    int e = store_list(r->server->cfg->store, "IdentityProvider", &idps, NULL);
    if (e < 0)
        return api_fail_store(err, e, "IdentityProvider", "*");
    size_t n = json_array_size(idps);
    bool passkeys = api_passkeys_registered(r->server);
    if (n == 0 && !passkeys)
        return api_fail(err, 404, "not_found", "no identity provider is configured; API clients send a bearer token");
    if (n == 0) { /* passkeys only: their sign-in page at the RP's origin, with the proxy's link as it came */
        char rp[PASSKEY_ORIGIN_MAX], origin[PASSKEY_ORIGIN_MAX];
        api_passkey_relying_party(r->server, rp, origin);
        h2o_iovec_t q = r->req->query_at == SIZE_MAX ? h2o_iovec_init(H2O_STRLIT(""))
                                                     : h2o_iovec_init(r->req->path.base + r->req->query_at,
                                                                      r->req->path.len - r->req->query_at);
        h2o_iovec_t loc = h2o_concat(&r->req->pool, h2o_iovec_init(origin, strlen(origin)),
                                     h2o_iovec_init(H2O_STRLIT("/v1/auth/passkey/login")), q);
        h2o_add_header(&r->req->pool, &r->req->res.headers, H2O_TOKEN_LOCATION, NULL, loc.base, loc.len);
        json_auto_t *body = json_pack("{s:s}", "location", "/v1/auth/passkey/login");
        api_respond_json(r->req, ROUTE_AUTH_LOGIN, r->started, 302, body);
        return 0;
    }
    if (n == 1 && !passkeys) {
        const char *name = doc_name(json_array_get(idps, 0));
        return handle_login(r, name ? name : "", has_rd ? &link : NULL, err);
    }
    return send_chooser(r, idps, passkeys, has_rd ? &link : NULL, err);
}
