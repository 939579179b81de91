/* The rewrite stage: the headers the upstream gets, with the identity the
 * proxy vouches for and a signed assertion of it (see corridor.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/macro.h"
#include "proxy/cookie.h"
#include "proxy/corridor.h"

static void assertion_clear(assertion_slot *a)
{
    free(a->key);
    free(a->jwt);
    *a = (assertion_slot){0};
}

void proxy_assertions_clear(proxy_thread *t)
{
    for (size_t i = 0; i < PROXY_ASSERTION_SLOTS; i++)
        assertion_clear(&t->assertions[i]);
}

bool proxy_assertion_reusable(int64_t now, int64_t cached_exp, int64_t token_exp)
{
    int64_t fresh_exp = MIN(now + PROXY_ASSERTION_TTL_S, token_exp);
    return now < cached_exp && (now + PROXY_ASSERTION_TTL_S / 2 < cached_exp || cached_exp >= fresh_exp);
}

/* The x-cloister-assertion for session R on SVC: a short-lived ES256 JWT
 * (aud = the service, expiring with the token at the latest), reused while
 * proxy_assertion_reusable(). Returns a string owned by T's cache, or NULL. */
static const char *assertion_for(proxy_thread *t, const proxy_config *c, const proxy_service *svc,
                                 const resolved_token *r, int64_t now)
{
    const char *sid = r->who.session, *user = r->who.user;
    if (!sid || !user || !t->settings->assertion_keys)
        return NULL;
    char both[2 * 256 + 2];
    size_t sid_len = strlen(sid), name_len = strlen(svc->name), key_len = sid_len + 1 + name_len;
    if (key_len > sizeof(both))
        return NULL;
    memcpy(both, sid, sid_len);
    both[sid_len] = 0;
    memcpy(both + sid_len + 1, svc->name, name_len);
    /* the slot by FNV-1a (neither name is a secret; the whole key is
     * compared), not a digest: this runs on every request */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < key_len; i++)
        h = (h ^ (uint8_t)both[i]) * 0x100000001b3ull;
    assertion_slot *a = &t->assertions[h % PROXY_ASSERTION_SLOTS];
    if (a->jwt && a->generation == c->generation && proxy_assertion_reusable(now, a->exp, r->exp) &&
        a->key_len == key_len && memcmp(a->key, both, key_len) == 0)
        return a->jwt;
    json_t *groups = json_object_get(json_object_get(r->user, "spec"), "groups");
    const char *email = r->who.email;
    int64_t exp = MIN(now + PROXY_ASSERTION_TTL_S, r->exp);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:s, s:s*, s:O*, s:I, s:I, s:I}", "iss",
                               t->settings->assertion_issuer, "aud", svc->name, "sub", user, "sid", sid, "email",
                               email, "groups", groups, "iat", (json_int_t)now, "nbf", (json_int_t)now, "exp",
                               (json_int_t)exp);
    char *jwt = NULL;
    int e = claims ? auth_keyring_sign(t->settings->assertion_keys, claims, &jwt) : -ENOMEM;
    json_decref(claims);
    char *key = e < 0 ? NULL : malloc(key_len);
    if (!key) {
        free(jwt);
        return NULL;
    }
    memcpy(key, both, key_len);
    assertion_clear(a);
    a->key = key;
    a->key_len = key_len;
    a->generation = c->generation;
    a->exp = exp;
    a->jwt = jwt;
    return jwt;
}

static bool name_is(const h2o_iovec_t *name, const char *s, size_t len)
{
    return name->len == len && strncasecmp(name->base, s, len) == 0;
}

/* Whether a client-sent header NAME must not reach the upstream: our
 * identity headers, forwarding and trace context headers the proxy sets
 * itself (trace.c), proxy credentials, and the header a Service injects. */
static bool header_dropped(const h2o_iovec_t *name, const proxy_service *svc)
{
    if (name->len >= 11 && strncasecmp(name->base, "x-cloister-", 11) == 0)
        return true;
    if (name->len >= 12 && strncasecmp(name->base, "x-forwarded-", 12) == 0)
        return true;
    if (name_is(name, H2O_STRLIT("forwarded")) || name_is(name, H2O_STRLIT("x-real-ip")) ||
        name_is(name, H2O_STRLIT("proxy-authorization")) || name_is(name, H2O_STRLIT("traceparent")) ||
        name_is(name, H2O_STRLIT("tracestate")))
        return true;
    if (name_is(name, H2O_STRLIT("authorization")) && (!svc->pass_authorization || svc->inject))
        return true;
    return svc->inject && name_is(name, svc->inject_name.base, svc->inject_name.len);
}

/* The Cookie header value V without our cookie (allocated from POOL), or a
 * NULL base when nothing else is left. */
static h2o_iovec_t cookie_without_ours(h2o_mem_pool_t *pool, h2o_iovec_t v)
{
    char *out = h2o_mem_alloc_pool(pool, 2 * v.len + 1);
    size_t n = proxy_cookie_strip(v.base, v.len, PROXY_SESSION_COOKIE, strlen(PROXY_SESSION_COOKIE), out);
    return n ? h2o_iovec_init(out, n) : h2o_iovec_init(NULL, 0);
}

static const char *name_of(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
}

int proxy_identity_init(proxy_identity *who, const json_t *user, const json_t *session, const json_t *credential)
{
    const json_t *spec = json_object_get(user, "spec");
    char groups[2048];
    size_t g = 0, i;
    json_t *v;
    groups[0] = 0;
    json_array_foreach(json_object_get(spec, "groups"), i, v)
    {
        const char *group = json_string_value(v);
        if (group && g + strlen(group) + 2 < sizeof(groups))
            g += (size_t)snprintf(groups + g, sizeof(groups) - g, "%s%s", g ? "," : "", group);
    }
    char *copy = strdup(groups);
    if (!copy)
        return -ENOMEM;
    *who = (proxy_identity){.user = name_of(user), .session = name_of(session), .credential = name_of(credential),
                            .email = json_string_value(json_object_get(spec, "email")), .groups = copy,
                            .groups_len = g};
    return 0;
}

void proxy_identity_done(proxy_identity *who)
{
    free(who->groups);
    *who = (proxy_identity){0};
}

void proxy_upstream_headers(h2o_mem_pool_t *pool, const h2o_headers_t *in, const proxy_service *svc,
                            const proxy_identity *who, const char *request_id, const char *assertion,
                            h2o_headers_t *ret)
{
    h2o_headers_t out = {NULL};
    for (size_t i = 0; i < in->size; i++) {
        const h2o_header_t *h = &in->entries[i];
        if (header_dropped(h->name, svc))
            continue;
        if (h->name == &H2O_TOKEN_COOKIE->buf) {
            h2o_iovec_t v = cookie_without_ours(pool, h->value);
            if (v.base)
                h2o_add_header(pool, &out, H2O_TOKEN_COOKIE, NULL, v.base, v.len);
            continue;
        }
        h2o_vector_reserve(pool, &out, out.size + 1);
        out.entries[out.size++] = *h;
    }
    const char *name = who->user, *email = who->email;
#define ADD(name, value, len) h2o_add_header_by_str(pool, &out, H2O_STRLIT(name), 0, NULL, value, len)
    ADD("x-cloister-user", h2o_strdup(pool, name ? name : "", SIZE_MAX).base, name ? strlen(name) : 0);
    if (email)
        ADD("x-cloister-email", h2o_strdup(pool, email, SIZE_MAX).base, strlen(email));
    ADD("x-cloister-groups", h2o_strdup(pool, who->groups ? who->groups : "", who->groups_len).base, who->groups_len);
    ADD("x-cloister-request-id", request_id, PROXY_REQUEST_ID_LEN);
    ADD("x-cloister-assertion", h2o_strdup(pool, assertion, SIZE_MAX).base, strlen(assertion));
#undef ADD
    if (svc->inject)
        h2o_add_header_by_str(pool, &out, svc->inject_name.base, svc->inject_name.len, 0, NULL, svc->inject_value.base,
                              svc->inject_value.len);
    *ret = out;
}

/* Replaces the request's headers with the upstream's (proxy_upstream_headers);
 * 500 when the assertion cannot be signed. */
proxy_step proxy_stage_rewrite(proxy_request *pr)
{
    const resolved_token *token = proxy_request_token(pr);
    if (!token) /* another caller's token took its cache slot while this request waited */
        return proxy_fail(pr, 503, "unavailable", "the proxy lost track of who sent this request while it waited; "
                                                  "send it again");
    const char *assertion = assertion_for(pr->t, pr->c, pr->svc, token, pr->now);
    if (!assertion)
        return proxy_fail(pr, 500, "internal", "the identity assertion could not be signed");
    proxy_upstream_headers(&pr->req->pool, &pr->req->headers, pr->svc, &token->who, pr->rec.id, assertion,
                           &pr->req->headers);
    return PROXY_NEXT;
}
