/* Sign-out on any service host (/.cloister/logout, see corridor.h): GET
 * shows a page with a sign-out button, POST revokes the session of the
 * request's access token at the API (POST /v1/auth/logout as the user
 * itself, on the logout pool: never on the event loop), clears the session
 * cookie and answers the signed-out page (JSON for API clients). A sign-out
 * is a POST from the service's own pages: a link or form elsewhere cannot
 * sign anyone out (the cookie is SameSite=Lax, and a foreign Origin or
 * Sec-Fetch-Site is refused). */
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/jwt.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "httpd/errorpage.h"
#include "httpd/offload.h"
#include "proxy/corridor.h"

#define LOGOUT_TIMEOUT_MS 5000L
#define LOGOUT_ANSWER_MAX 8192

typedef struct logout_job {
    offload_job super;
    proxy_request *pr; /* valid in DONE while the request lives */
    const proxy_settings *settings; /* for WORK, which must not touch the request */
    char *token;       /* the access token (heap, wiped) */
    long status;       /* the API's answer, 0 when none came */
    char end_session_url[1024]; /* the identity provider's sign-out, or "" */
    char error[CURL_ERROR_SIZE];
} logout_job;

/* On a worker: POST /v1/auth/logout with the token as bearer. */
static void logout_work(offload_job *job)
{
    logout_job *j = (logout_job *)job;
    char auth[JWT_MAX_LEN + 32];
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", j->token);
    struct curl_slist *headers = curl_slist_append(NULL, auth);
    OPENSSL_cleanse(auth, sizeof(auth));
    strbuf answer;
    strbuf_init(&answer, LOGOUT_ANSWER_MAX);
    j->status = proxy_api_post(j->settings, "/v1/auth/logout", headers, "", LOGOUT_TIMEOUT_MS, &answer, j->error);
    for (struct curl_slist *l = headers; l; l = l->next)
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(headers);
    json_t *v = j->status == 200 && answer.len ? json_loadb(answer.data, answer.len, 0, NULL) : NULL;
    const char *end = json_string_value(json_object_get(v, "end_session_url"));
    if (end && strlen(end) < sizeof(j->end_session_url))
        memcpy(j->end_session_url, end, strlen(end) + 1);
    json_decref(v);
    strbuf_free(&answer);
}

/* Adds the Set-Cookie headers that remove the session cookie of REQ's host. */
static void clear_cookie(h2o_req_t *req)
{
    bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
    h2o_iovec_t v = tls ? h2o_iovec_init(H2O_STRLIT(PROXY_SESSION_COOKIE "=; Path=/; Max-Age=0; HttpOnly; "
                                                                          "SameSite=Lax; Secure"))
                        : h2o_iovec_init(H2O_STRLIT(PROXY_SESSION_COOKIE "=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, v.base, v.len);
}

/* Answers PR's sign-out: REVOKED (the session ended here), or not (none
 * was there: no token, or one the API no longer knows), or FAILED with WHY
 * (the API could not be asked: 502, the cookie is cleared all the same). */
static void answer(proxy_request *pr, bool revoked, const char *failed_why, const char *end_session_url)
{
    h2o_req_t *req = pr->req;
    clear_cookie(req);
    if (failed_why) {
        pr->page.message = "You are signed out of this browser, but the server could not be told to end the "
                           "session; it ends when it expires. Try again to end it now.";
        proxy_fail(pr, 502, "bad_gateway", "the session could not be revoked at the API: %s", failed_why);
        return;
    }
    if (!error_page_wanted(req)) {
        json_auto_t *v = json_pack("{s:b, s:s}", "revoked", revoked, "requestId", pr->rec.id);
        if (v && end_session_url && *end_session_url)
            json_object_set_new(v, "end_session_url", json_string(end_session_url));
        if (v)
            proxy_send_json(pr, v, "no-store");
        else
            proxy_fail(pr, 500, "internal", "out of memory");
        return;
    }
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("clear-site-data"), 0, NULL,
                          H2O_STRLIT("\"cookies\""));
    error_page_send(req, &(error_page){.status = 200,
                                       .title = "Signed out",
                                       .message = revoked ? "You are signed out: your session has ended."
                                                          : "You are signed out (there was no session to end).",
                                       .request_id = pr->rec.id,
                                       .link_url = end_session_url && *end_session_url ? end_session_url : NULL,
                                       .link_label = "Sign out at your identity provider too"});
}

/* On the loop: the API's answer. */
static void logout_done(offload_job *job, h2o_req_t *req)
{
    logout_job *j = (logout_job *)job;
    if (req) {
        if (j->status == 200)
            answer(j->pr, true, NULL, j->end_session_url);
        else if (j->status == 401)
            answer(j->pr, false, NULL, NULL); /* expired or already revoked */
        else {
            char why[CURL_ERROR_SIZE + 40];
            if (j->status)
                snprintf(why, sizeof(why), "the API answered HTTP %ld", j->status);
            else
                snprintf(why, sizeof(why), "%s", j->error);
            answer(j->pr, false, why, NULL);
        }
    }
    OPENSSL_cleanse(j->token, strlen(j->token));
    free(j->token);
    free(j);
}

/* Whether a POST of REQ comes from a page of its own host: an Origin, when
 * sent, must be this scheme and authority, and Sec-Fetch-Site, when sent,
 * same-origin (or none: typed by the user). */
static bool same_origin(h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("sec-fetch-site"), -1);
    if (i >= 0) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (!h2o_memis(v.base, v.len, H2O_STRLIT("same-origin")) && !h2o_memis(v.base, v.len, H2O_STRLIT("none")))
            return false;
    }
    i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("origin"), -1);
    if (i < 0)
        return true;
    h2o_iovec_t v = req->headers.entries[i].value;
    h2o_iovec_t expected = h2o_concat(&req->pool, req->scheme->name, h2o_iovec_init(H2O_STRLIT("://")), req->authority);
    return v.len == expected.len && strncasecmp(v.base, expected.base, v.len) == 0;
}

proxy_step proxy_logout(proxy_request *pr)
{
    h2o_req_t *req = pr->req;
    pr->rec.decision = PROXY_DECISION_ALLOW;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
               h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    if (get) {
        if (!error_page_wanted(req))
            return proxy_fail(pr, 405, "method_not_allowed", "sign out with POST " PROXY_LOGOUT_PATH);
        error_page_send(req, &(error_page){.status = 200,
                                           .title = "Sign out",
                                           .message = "Sign out of Cloister in this browser and end your session?",
                                           .request_id = pr->rec.id,
                                           .form_action = PROXY_LOGOUT_PATH,
                                           .form_label = "Sign out"});
        return PROXY_DONE;
    }
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")))
        return proxy_fail(pr, 405, "method_not_allowed", "sign out with POST " PROXY_LOGOUT_PATH);
    if (!same_origin(req)) {
        pr->rec.decision = PROXY_DECISION_DENY;
        return proxy_fail(pr, 403, "forbidden", "a sign-out must come from this service's own pages");
    }
    bool from_cookie;
    h2o_iovec_t token = proxy_find_token(req, &from_cookie);
    if (!token.base || token.len == 0 || token.len > JWT_MAX_LEN) {
        answer(pr, false, NULL, NULL);
        return PROXY_DONE;
    }
    logout_job *j = calloc(1, sizeof(*j));
    if (!j || !(j->token = strndup(token.base, token.len))) {
        free(j);
        return proxy_fail(pr, 500, "internal", "out of memory");
    }
    j->super = (offload_job){.work = logout_work, .done = logout_done};
    j->pr = pr;
    j->settings = pr->t->settings;
    int e = offload_submit(pr->t->settings->logout_pool, pr->t->offload, req, &j->super);
    if (e < 0) {
        OPENSSL_cleanse(j->token, strlen(j->token));
        free(j->token);
        free(j);
        return proxy_fail(pr, 503, "unavailable", "too many sign-outs in progress; try again");
    }
    return PROXY_DONE;
}
