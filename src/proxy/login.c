/* The browser login, as the proxy sees it (see corridor.h): a browser
 * without a session is sent to the API's login with a link the proxy signs
 * and a cookie tying the login to that browser; the login ends at
 * /.cloister/callback with a handoff (auth/handoff.h) that becomes the
 * session cookie, waited for a moment when its session has not reached this
 * proxy yet. */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/handoff.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/offload.h"
#include "proxy/corridor.h"
#include "proxy/path.h"

#define LOGIN_COOKIE_TTL_S LOGIN_LINK_TTL_S
#define HANDOFF_WAIT_MS 50    /* a handoff whose session is not here yet is tried again this often */
#define HANDOFF_WAIT_TRIES 60 /* ... this many times (3 s) */
#define HANDOFF_SEEN_MAX 4096 /* handoffs remembered as used */
#define HANDOFF_TAKE_TIMEOUT_MS 5000L
#define WHY_USED "the login handoff was already used; log in again"
/* two refusals of auth/session.c a login handoff waits out (the session or
 * user may not have reached this proxy yet): the same texts */
#define WHY_NO_SESSION "the session of this access token was revoked or has expired"
#define WHY_NO_USER "the user of this session no longer exists"

bool proxy_wants_html(h2o_req_t *req)
{
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))
        return false;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT, -1);
    return i >= 0 && h2o_strstr(req->headers.entries[i].value.base, req->headers.entries[i].value.len,
                                H2O_STRLIT("text/html")) != SIZE_MAX;
}

/* Percent-encodes S (LEN bytes) for a query value into OUT (3 * LEN + 1). */
static void query_escape(const char *s, size_t len, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = 0;
}

/* A fresh login secret: 16 random bytes as hex into STATE (the cookie
 * value) and its bind (login_bind_of) into BIND. Returns 0 or -EIO. */
static int login_bind(char state[33], char bind[LOGIN_BIND_LEN + 1])
{
    uint8_t secret[16];
    if (random_bytes(secret, sizeof(secret)) < 0)
        return -EIO;
    hex_encode(secret, sizeof(secret), state);
    OPENSSL_cleanse(secret, sizeof(secret));
    login_bind_of(state, 32, bind);
    return 0;
}

/* Whether REQ carries the login cookie whose bind is BIND. */
static bool login_cookie_matches(h2o_req_t *req, const char *bind)
{
    h2o_iovec_t v = proxy_find_cookie(req, PROXY_LOGIN_COOKIE);
    if (!v.base || v.len != 32 || !login_bind_valid(bind))
        return false;
    char hex[LOGIN_BIND_LEN + 1];
    login_bind_of(v.base, v.len, hex);
    return memeq_consttime(hex, bind, LOGIN_BIND_LEN);
}

/* The port REQ's authority names, 0 when it names none, -1 when it is not
 * a port. */
static long authority_port(h2o_iovec_t a)
{
    const char *colon = a.len && a.base[0] != '[' ? memrchr(a.base, ':', a.len) : NULL;
    if (!colon)
        return 0;
    long port = 0;
    size_t n = a.len - (size_t)(colon + 1 - a.base);
    for (size_t i = 0; i < n; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9' || n > 5)
            return -1;
        port = port * 10 + (colon[1 + i] - '0');
    }
    return n && port <= 65535 ? port : -1;
}

/* Whether the port of REQ's authority reaches this proxy: none, the
 * scheme's default, or the port the connection came in on. A login link
 * names the authority the browser goes back to with its handoff: one on
 * another port (another program on the proxy's address) is not issued. */
static bool authority_port_is_ours(h2o_req_t *req)
{
    long port = authority_port(req->authority);
    bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
    if (port == 0 || port == (tls ? 443 : 80))
        return true;
    struct sockaddr_storage ss;
    if (port < 0 || !req->conn->callbacks->get_sockname ||
        req->conn->callbacks->get_sockname(req->conn, (struct sockaddr *)&ss) == 0)
        return false;
    return h2o_socket_getport((struct sockaddr *)&ss) == port;
}

/* Builds the login link for a browser at PR's URL (its normalised target)
 * bound to BIND: the login URL with rd, bind, exp and the mac the API
 * checks (auth/handoff.h), into *RET (heap, the caller frees it). Returns
 * 0, -ENOKEY when the configuration holds no handoff key yet, -ENOMEM or
 * -EIO. */
static int login_link(proxy_request *pr, const char *bind, char **ret)
{
    h2o_req_t *req = pr->req;
    if (!pr->c->has_handoff_key)
        return -ENOKEY;
    char url[PROXY_PATH_MAX + 600], escaped[3 * sizeof(url) + 1], mac[LOGIN_MAC_LEN + 1];
    snprintf(url, sizeof(url), "%s://%.*s%s", req->scheme->name.base, (int)MIN(req->authority.len, 300u),
             req->authority.base, pr->target);
    query_escape(url, strlen(url), escaped);
    int64_t exp = (int64_t)(time_now_ns() / NSEC_PER_SEC) + LOGIN_LINK_TTL_S;
    /* the mac covers the rd as the API will read it back (login_rd.url);
     * an rd that does not parse is refused there, mac or not */
    login_rd *rd = h2o_mem_alloc_pool(&req->pool, sizeof(*rd));
    const char *signed_url = login_rd_parse(url, strlen(url), rd, NULL) == 0 ? rd->url : url;
    int e = login_link_mac(pr->c->handoff_key, signed_url, bind, exp, mac);
    if (e < 0)
        return e;
    if (asprintf(ret, "%s?rd=%s&bind=%s&exp=%lld&mac=%s", pr->t->settings->login_url, escaped, bind, (long long)exp,
                 mac) < 0)
        return -ENOMEM;
    return 0;
}

proxy_step proxy_login_redirect(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    if (!authority_port_is_ours(req))
        return proxy_fail(pr, 421, "misdirected",
                          "this proxy does not serve %.*s on that port: open the service at its own address to log in",
                          (int)MIN(req->authority.len, 300u), req->authority.base);
    /* a random secret in a cookie of this browser; the login carries only
     * its hash (bind), and the handoff it ends with is accepted only with
     * the cookie: a login cannot be finished in another browser (login
     * CSRF). The link is the proxy's: the API starts a login only with its
     * mac. */
    char state[33], bind[LOGIN_BIND_LEN + 1];
    if (login_bind(state, bind) < 0)
        return proxy_fail(pr, 500, "internal", "no randomness");
    char *location = NULL;
    int e = login_link(pr, bind, &location);
    if (e == -ENOKEY)
        return proxy_fail(pr, 503, "unavailable",
                          "the proxy cannot start a login yet (no handoff key from the API); retry shortly");
    if (e < 0)
        return proxy_fail(pr, 500, "internal", "the login link could not be made (%s)", strerror(-e));
    char *cookie;
    bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
    if (asprintf(&cookie, PROXY_LOGIN_COOKIE "=%s; Path=" PROXY_RESERVED_PREFIX "; Max-Age=%d; HttpOnly; SameSite=Lax%s",
                 state, LOGIN_COOKIE_TTL_S, tls ? "; Secure" : "") < 0) {
        free(location);
        return proxy_fail(pr, 500, "internal", "out of memory");
    }
    h2o_iovec_t cv = h2o_strdup(&req->pool, cookie, SIZE_MAX);
    free(cookie);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, cv.base, cv.len);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-cloister-request-id"), 0, NULL, pr->rec.id,
                          PROXY_REQUEST_ID_LEN);
    proxy_redirect(req, location);
    free(location);
    return PROXY_DONE;
}

/* ---- the handoff ---- */

/* Handoffs already used, by nonce, until they expire: each is good once. */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char nonce[33];
    int64_t exp;
} seen[HANDOFF_SEEN_MAX];

/* Records NONCE (until EXP) as used; false when it already was, or when the
 * table is full of live entries (then the handoff is refused too). */
static bool handoff_first_use(const char *nonce, int64_t exp, int64_t now)
{
    bool ok = true;
    size_t free_slot = HANDOFF_SEEN_MAX;
    pthread_mutex_lock(&seen_lock);
    for (size_t i = 0; i < HANDOFF_SEEN_MAX && ok; i++) {
        if (seen[i].exp <= now) {
            if (free_slot == HANDOFF_SEEN_MAX)
                free_slot = i;
        } else if (strcmp(seen[i].nonce, nonce) == 0) {
            ok = false;
        }
    }
    if (ok && free_slot < HANDOFF_SEEN_MAX) {
        snprintf(seen[free_slot].nonce, sizeof(seen[free_slot].nonce), "%s", nonce);
        seen[free_slot].exp = exp;
    } else {
        ok = false;
    }
    pthread_mutex_unlock(&seen_lock);
    return ok;
}

/* A login handoff whose session (or new user) has not reached this proxy
 * yet: the API opened it a moment before redirecting the browser, and its
 * change is still on the configuration stream. Allocated from the
 * request's pool; released (and unlinked) with the request. */
typedef struct handoff_wait {
    h2o_timeout_entry_t entry; /* on the thread's handoff_timeout */
    proxy_request *pr;
    unsigned tries;
} handoff_wait;

static proxy_step callback_try(proxy_request *pr, const proxy_config *c, unsigned tries, bool taken);

static void handoff_wait_dispose(void *p)
{
    handoff_wait *w = p;
    if (h2o_timeout_is_linked(&w->entry))
        h2o_timeout_unlink(&w->entry);
}

/* Tries a waiting handoff again on the newest configuration. */
static void on_handoff_wait(h2o_timeout_entry_t *entry)
{
    handoff_wait *w = H2O_STRUCT_FROM_MEMBER(handoff_wait, entry, entry);
    proxy_refresh_config(w->pr->t);
    callback_try(w->pr, w->pr->t->config, w->tries, false);
}

/* Taking a handoff at the API (POST /v1/auth/handoff/take), on the sign-out
 * pool (never on the event loop): the API marks it used in the store, so it
 * is taken once across every proxy, not only once in this one. */
typedef struct take_job {
    offload_job super;
    proxy_request *pr;              /* valid in DONE while the request lives */
    const proxy_settings *settings; /* for WORK, which must not touch the request */
    char *body;                     /* {"handoff": ...} (heap, wiped) */
    unsigned tries;
    long status; /* the API's answer, 0 when none came */
    char error[CURL_ERROR_SIZE];
} take_job;

/* On a worker: POST the handoff to the API. */
static void take_work(offload_job *job)
{
    take_job *j = (take_job *)job;
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    j->status = proxy_api_post(j->settings, "/v1/auth/handoff/take", headers, j->body, HANDOFF_TAKE_TIMEOUT_MS, NULL,
                               j->error);
    curl_slist_free_all(headers);
}

static void take_job_free(take_job *j)
{
    OPENSSL_cleanse(j->body, strlen(j->body));
    free(j->body);
    free(j);
}

/* On the loop: taken (200) finishes the login on the newest configuration,
 * taken before (409) is the replay refusal, anything else a 503. */
static void take_done(offload_job *job, h2o_req_t *req)
{
    take_job *j = (take_job *)job;
    if (req) {
        proxy_request *pr = j->pr;
        if (j->status == 200) {
            proxy_refresh_config(pr->t);
            callback_try(pr, pr->t->config, j->tries, true);
        } else if (j->status == 409)
            proxy_fail(pr, 400, "invalid", "%s", WHY_USED);
        else if (j->status)
            proxy_fail(pr, 503, "unavailable",
                       "the API answered HTTP %ld when the login handoff was taken; log in again", j->status);
        else
            proxy_fail(pr, 503, "unavailable", "the API cannot be reached to take the login handoff (%s); log in again",
                       j->error);
    }
    take_job_free(j);
}

/* Submits the take of HANDOFF (LEN bytes, base64url) for PR. */
static proxy_step handoff_take(proxy_request *pr, const char *handoff, size_t len, unsigned tries)
{
    take_job *j = calloc(1, sizeof(*j));
    if (!j || asprintf(&j->body, "{\"handoff\": \"%.*s\"}", (int)len, handoff) < 0) {
        free(j);
        return proxy_fail(pr, 500, "internal", "out of memory");
    }
    j->super = (offload_job){.work = take_work, .done = take_done};
    j->pr = pr;
    j->settings = pr->t->settings;
    j->tries = tries;
    if (offload_submit(pr->t->settings->logout_pool, pr->t->offload, pr->req, &j->super) < 0) {
        take_job_free(j);
        return proxy_fail(pr, 503, "unavailable", "too many logins in progress; try again");
    }
    return PROXY_DONE;
}

void proxy_login_init(proxy_thread *t)
{
    h2o_timeout_init(t->ctx->loop, &t->handoff_timeout, HANDOFF_WAIT_MS);
}

void proxy_login_dispose(proxy_thread *t)
{
    while (!h2o_linklist_is_empty(&t->handoff_timeout._entries)) /* of connections that did not close */
        h2o_timeout_unlink(H2O_STRUCT_FROM_MEMBER(h2o_timeout_entry_t, _link, t->handoff_timeout._entries.next));
    h2o_timeout_dispose(t->ctx->loop, &t->handoff_timeout);
}

/* The API sends a browser here after its login with the session's access
 * token sealed for this proxy, this host and a path. A valid, unexpired,
 * unused handoff for this host sets the session cookie (HttpOnly,
 * SameSite=Lax, Secure over HTTPS) and redirects to the path; anything else
 * is a 400 and sets nothing. A session (or user) not known yet is waited
 * for, up to HANDOFF_WAIT_TRIES * HANDOFF_WAIT_MS, before it is refused. */
proxy_step proxy_login_callback(proxy_request *pr)
{
    return callback_try(pr, pr->c, 0, false);
}

/* One attempt of proxy_login_callback on configuration C (TRIES made
 * before); TAKEN once the API took the handoff for this request. */
static proxy_step callback_try(proxy_request *pr, const proxy_config *c, unsigned tries, bool taken)
{
    h2o_req_t *req = pr->req;
    const char *query = pr->query;
    const char *p = query ? strstr(query, "handoff=") : NULL;
    if (p && p != query && p[-1] != '&')
        p = NULL;
    size_t len = p ? strcspn(p + 8, "&") : 0;
    handoff_claims h = {0};
    const char *why = NULL;
    if (!c || !c->has_handoff_key)
        why = "the proxy has no handoff key from the API yet; log in again shortly";
    else
        handoff_open(c->handoff_key, p ? p + 8 : NULL, len, &h, &why);
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    if (!why && (strlen(h.host) != req->authority.len ||
                 strncasecmp(h.host, req->authority.base, req->authority.len) != 0))
        why = "the login handoff is for another host";
    if (!why && (h.exp < now || h.exp > now + HANDOFF_TTL_MAX_S))
        why = "the login handoff has expired; log in again";
    if (!why && !login_cookie_matches(req, h.bind))
        why = "the login handoff belongs to a login started in another browser (or its login cookie expired); "
              "open the service's address again to log in";
    const resolved_token *r = NULL;
    const char *reason = NULL;
    int status;
    if (!why && !(r = proxy_resolve(pr->t, c, h2o_iovec_init(h.token, strlen(h.token)), now, &reason, &status)))
        why = reason;
    if (why == reason && why && (strcmp(why, WHY_NO_SESSION) == 0 || strcmp(why, WHY_NO_USER) == 0) &&
        tries < HANDOFF_WAIT_TRIES) {
        /* opened a moment ago: wait for its change to arrive */
        handoff_claims_done(&h);
        handoff_wait *w = h2o_mem_alloc_shared(&req->pool, sizeof(*w), handoff_wait_dispose);
        *w = (handoff_wait){.entry = {.cb = on_handoff_wait}, .pr = pr, .tries = tries + 1};
        h2o_timeout_link(pr->t->ctx->loop, &pr->t->handoff_timeout, &w->entry);
        return PROXY_DONE;
    }
    /* the local table first: a replay on this proxy costs the API nothing */
    if (!why && !taken && !handoff_first_use(h.nonce, h.exp, now))
        why = WHY_USED;
    if (why) {
        handoff_claims_done(&h);
        return proxy_fail(pr, 400, "invalid", "%s", why);
    }
    if (!taken) {
        handoff_claims_done(&h);
        return handoff_take(pr, p + 8, len, tries);
    }
    pr->rec.decision = PROXY_DECISION_ALLOW;
    const char *user = json_string_value(json_object_get(json_object_get(r->user, "metadata"), "name"));
    pr->rec.user = user ? h2o_strdup(&req->pool, user, SIZE_MAX).base : NULL; /* C may be newer than rec.config */
    char *cookie;
    bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
    int a = asprintf(&cookie, PROXY_SESSION_COOKIE "=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Lax%s", h.token,
                     (long long)MAX(r->exp - now, (int64_t)1), tls ? "; Secure" : "");
    if (a < 0) {
        handoff_claims_done(&h);
        return proxy_fail(pr, 500, "internal", "out of memory");
    }
    h2o_iovec_t v = h2o_strdup(&req->pool, cookie, SIZE_MAX);
    OPENSSL_cleanse(cookie, strlen(cookie));
    free(cookie);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, v.base, v.len);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL,
                   H2O_STRLIT(PROXY_LOGIN_COOKIE "=; Path=" PROXY_RESERVED_PREFIX "; Max-Age=0; HttpOnly; SameSite=Lax"));
    proxy_redirect(req, h.path);
    handoff_claims_done(&h);
    return PROXY_DONE;
}
