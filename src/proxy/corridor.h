/* The proxy's request corridor, inside src/proxy (proxy.h is its face to
 * the daemon). Every request walks named stages over one context allocated
 * from its pool (proxy_request), in the order on_req (proxy.c) lists them:
 *
 *   probe         proxy.c        /healthz and /readyz on a Host naming no service
 *   normalise     normalise.c    configuration present, framing, route by Host,
 *                                SNI against Host (tls.c), path parameters,
 *                                the one path normalisation
 *   trace         trace.c        the client's traceparent/tracestate: the
 *                                SERVER span, continued (a trusting Service)
 *                                or a new trace linking the client's
 *   reserved      proxy.c        /.cloister/ paths: the login callback
 *                                (login.c), sign-out (logout.c), the JWKS
 *                                (jwks.c)
 *   limit         normalise.c    the Service's body and header caps
 *   authenticate  authenticate.c the access token to its session and user;
 *                                a browser without one is sent to log in
 *                                (login.c)
 *   decide        decide.c       the policy on the normalised request
 *   plugins       plugins.c      the Service's plugins (request headers and
 *                                body; response headers and log hooked)
 *   commit        access-log.c   a failClosed Service: the admission record
 *                                committed to the audit log first
 *   portal        portal.c       a portal Service: its app's files, its /v1/
 *                                calls to the API as the user
 *   reachable     forward.c      an upstream (or enclave replica) to go to
 *   attestation   attestation.c  /.cloister/attestation, decided like any path
 *   rewrite       rewrite.c      headers for the upstream, identity added
 *   trace-upstream trace.c       the CLIENT span of the hop; its traceparent
 *                                (and the kept tracestate) for the upstream
 *   forward       forward.c      to the upstream over this thread's keep-alive
 *                                connections (upstream.c), called directly
 *
 * A stage answers (respond.c: one place turns a refusal into a status and a
 * JSON body, or an HTML page for a browser) and returns PROXY_DONE, or
 * returns PROXY_NEXT. The access log (access-log.c) records every request
 * when its pool is released, and ends its spans (trace.c). */
#pragma once

#include <curl/curl.h>
#include <h2o.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/session.h"
#include "basic/strbuf.h"
#include "cel/cel.h"
#include "httpd/httpd.h"
#include "policy/policy.h"
#include "proxy/config.h"
#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "telemetry/telemetry.h"

#define PROXY_TOKEN_SLOTS 1024     /* resolved access tokens per thread */
#define PROXY_ASSERTION_SLOTS 1024 /* signed assertions per thread */
#define PROXY_RECYCLED_MAX 256     /* a thread's requests (and exchanges) kept for reuse */
#define PROXY_REQUEST_ID_LEN 32
#define PROXY_SESSION_COOKIE "cloister_session"
#define PROXY_LOGIN_COOKIE "cloister_login" /* ties a login's handoff to the browser that started it */
#define PROXY_AUDIT_PATH_MAX 1024

/* What the corridor reads of a resolved caller on every request, taken
 * from its documents once per resolution: the strings are borrowed from
 * them (NULL when absent), but GROUPS, which it owns. */
typedef struct proxy_identity {
    const char *user, *session, *credential, *email;
    char *groups; /* the user's groups, comma separated (heap) */
    size_t groups_len;
} proxy_identity;

/* An access token resolved to its session, user and credential, valid
 * while the configuration generation is unchanged and the token and the
 * session have not expired. */
typedef struct resolved_token {
    uint8_t hash[SHA256_DIGEST_LENGTH]; /* of the token's signature */
    char *signed_part;                  /* the rest of the token, which the signature signs (heap) */
    size_t signed_len;
    uint64_t generation;
    int64_t exp;
    json_t *user, *credential, *session; /* references */
    int64_t session_created, session_expires;
    proxy_identity who; /* of the documents above */
    policy_request caller; /* ctx.user and ctx.session (a client's) for the policy, values in VALUES */
    cel_arena *values;     /* kept by the slot from one resolution to the next */
} resolved_token;

/* A signed x-cloister-assertion for a session and a service. */
typedef struct assertion_slot {
    char *key; /* "<session id>\0<service>" (owned), KEY_LEN bytes */
    size_t key_len;
    uint64_t generation;
    int64_t exp;
    char *jwt;
} assertion_slot;

/* One event loop's state (httpd's per-thread hook). */
typedef struct proxy_thread {
    h2o_context_t *ctx;
    const proxy_settings *settings;
    proxy_config *config;
    uint64_t generation;
    jwt_cache *jwt;
    cel_arena *values, *scratch;
    struct proxy_upstreams *upstreams; /* keep-alive connections to the upstreams (upstream.c) */
    h2o_timeout_t io_timeout, websocket_timeout;
    resolved_token tokens[PROXY_TOKEN_SLOTS];
    auth_verdict refused; /* why proxy_resolve() last refused a token */
    assertion_slot assertions[PROXY_ASSERTION_SLOTS];
    uint8_t id_prefix[8];
    uint64_t id_seq;
    uint64_t trace_seed;   /* trace.c's id generator (random at start) */
    unsigned next_replica; /* round robin over an enclave's replicas */
    /* /.cloister/attestation: certificates fetched on settings->attest_pool
     * come back to this loop; the drain waits for them */
    struct offload_loop *offload;
    struct access_log *access; /* this thread's access-log segment (access-log.c) */
    h2o_timeout_t handoff_timeout; /* login handoffs waiting for their session */
    httpd_recycler requests; /* the proxy_request of each request, reused */
    /* the last authority routed (normalise.c): the same bytes go to the same
     * Service of the same snapshot (a generation is never reused) */
    struct {
        uint64_t generation;
        const proxy_service *svc; /* NULL: none yet */
        size_t len;
        char authority[64];
    } last_route;
} proxy_thread;

/* What the access log records of one request, once status and bytes are
 * known. Strings the connection owns are copied: it may be gone when the
 * record is written. */
typedef struct access_record {
    _Atomic int64_t *in_flight; /* the Enclave load it counts in, until it ends; or NULL */
    proxy_config *config;       /* kept alive while the request uses its Service */
    uint64_t started;           /* monotonic ns */
    uint64_t received;          /* the same instant, realtime ns (the clock is read once a request) */
    char id[PROXY_REQUEST_ID_LEN + 1];
    char ip[64], method[16];
    const char *service;
    const char *user, *session;
    proxy_decision decision;
    char policy[128], rule[128];
    /* the path as logged (proxy_pool_printable(), at most PROXY_AUDIT_PATH_MAX
     * bytes) in the request's pool, or NULL (""): the record is written when
     * the pool releases the request (its shared entries go before its memory) */
    const char *path;
} access_record;

/* One request in the corridor, allocated from its pool; what a stage
 * learns is here for the stages after it. Released with the request, when
 * its access record is written (access-log.c). */
/* What a browser's error page shows instead of the JSON message, set by the
 * stage that refuses (all NULL: the JSON message alone). Borrowed; they
 * must live as long as the request. */
typedef struct proxy_page_texts {
    const char *message;     /* the human reason, when the JSON one says more than the user may know */
    const char *explanation; /* the deciding Policy's spec.explanation */
    const char *remediation; /* and its spec.remediation */
} proxy_page_texts;

typedef struct proxy_request {
    h2o_req_t *req;
    proxy_thread *t;
    const proxy_config *c; /* rec.config: the snapshot the request is served with, or NULL */
    /* normalise */
    const proxy_service *svc;
    char *target;      /* the normalised target ("/path?query", NUL-terminated, in the pool) */
    size_t path_len;   /* target[0..path_len) is the path */
    const char *query; /* after the '?' (NUL-terminated), or NULL */
    bool attestation;  /* the path is /.cloister/attestation */
    /* authenticate */
    int64_t now; /* seconds */
    bool from_cookie;
    /* owned by the thread's cache, whose slot another token may take while
     * the request waits off the loop: read it through proxy_request_token() */
    const resolved_token *token;
    uint8_t token_hash[SHA256_DIGEST_LENGTH]; /* TOKEN's hash when it was resolved for this request */
    /* reachable: for an enclave, the replica (index into svc->replicas) */
    size_t replica;
    /* trace (trace.c) */
    bool traced;                    /* TRACE is set: the request got past normalise */
    trace_context trace;            /* the SERVER span's context */
    trace_context upstream_trace;   /* the CLIENT span's: the parent-id the upstream gets */
    telemetry_span *server_span, *client_span; /* NULL when export is off, or once ended */
    h2o_iovec_t tracestate;         /* what is passed upstream (pool), or a NULL base */
    h2o_iovec_t user_agent;         /* the client's User-Agent (the request's), or a NULL base */
    proxy_page_texts page;       /* a refusal's page for a browser */
    access_record rec;
} proxy_request;

typedef enum proxy_step {
    PROXY_NEXT = 0, /* go on to the next stage */
    PROXY_DONE = 1, /* answered, or handed to the upstream or a helper */
} proxy_step;

typedef proxy_step (*proxy_stage)(proxy_request *pr);

/* ---- the stages ---- */
proxy_step proxy_stage_normalise(proxy_request *pr);    /* normalise.c */
proxy_step proxy_stage_trace(proxy_request *pr);        /* trace.c */
proxy_step proxy_stage_limit(proxy_request *pr);        /* normalise.c */
proxy_step proxy_stage_authenticate(proxy_request *pr); /* authenticate.c */
proxy_step proxy_stage_decide(proxy_request *pr);       /* decide.c */
proxy_step proxy_stage_plugins(proxy_request *pr);      /* plugins.c */
proxy_step proxy_stage_portal(proxy_request *pr);       /* portal.c */
proxy_step proxy_stage_reachable(proxy_request *pr);    /* forward.c */
proxy_step proxy_stage_attestation(proxy_request *pr);  /* attestation.c */
proxy_step proxy_stage_rewrite(proxy_request *pr);      /* rewrite.c */
proxy_step proxy_stage_trace_upstream(proxy_request *pr); /* trace.c */
proxy_step proxy_stage_forward(proxy_request *pr);      /* forward.c */

/* ---- decide.c ---- */
/* Fills P with the policy context of PR (its values in the thread's values
 * arena, reset first). Returns 0, -ENOMEM, or -ESTALE when PR's caller is no
 * longer known (proxy_request_token()). */
int proxy_policy_request(proxy_request *pr, policy_request *p);

/* ---- proxy.c ---- */
/* Picks up a newly published configuration before a request. */
void proxy_refresh_config(proxy_thread *t);
/* SHA-256 of the LEN bytes at DATA into OUT, without allocating. */
void proxy_sha256(const void *data, size_t len, uint8_t out[SHA256_DIGEST_LENGTH]);
/* Runs PR's stages after DONE (a stage that answered later, off the loop). */
void proxy_continue_after(proxy_request *pr, proxy_stage done);

/* ---- respond.c: answers ---- */
/* A fresh request id of T (hex) into OUT. */
void proxy_request_id(proxy_thread *t, char out[PROXY_REQUEST_ID_LEN + 1]);
/* Sends BODY as the whole response with its length, so the connection
 * stays open (h2o's send_inline leaves the length unknown). */
void proxy_send_body(h2o_req_t *req, h2o_iovec_t body);
/* Answers 200 with VALUE (borrowed) as compact JSON and Cache-Control
 * CACHE_CONTROL (static); 500 when it cannot be written. Returns PROXY_DONE. */
proxy_step proxy_send_json(proxy_request *pr, const json_t *value, const char *cache_control);
/* proxy_send_json() with STATUS: 200 or 503. */
proxy_step proxy_send_json_status(proxy_request *pr, int status, const json_t *value, const char *cache_control);
/* Sets PR's response to the refusal proxy_fail() sends (status, headers,
 * length) without starting it; returns its body (from the request's pool). */
h2o_iovec_t proxy_failure_prepare(proxy_request *pr, int status, const char *code, const char *message);
/* Puts an output stream in REQ's SLOT (a prefilter's) that sends BODY in
 * place of the upstream's body (PR's refusal set up by
 * proxy_failure_prepare()); returns the slot after it. */
h2o_ostream_t **proxy_swap_body(h2o_req_t *req, h2o_ostream_t **slot, h2o_iovec_t body);
/* Answers 302 to LOCATION (copied), not to be cached. */
void proxy_redirect(h2o_req_t *req, const char *location);
/* Answers STATUS with {"error":{"code","message"},"requestId"}, or for a
 * browser (httpd/errorpage.h: Accept asks for text/html first) the HTML
 * page of PR->page (else MESSAGE) with the request id and a sign-out link;
 * the request id also goes in x-cloister-request-id. Returns PROXY_DONE. */
proxy_step proxy_fail(proxy_request *pr, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- access-log.c ---- */
#define PROXY_ACCESS_FIELDS_N 14
/* The names of an access record's members, in the order of its array. */
extern const char *const proxy_access_fields[PROXY_ACCESS_FIELDS_N];
/* Opens the thread's first segment. Returns 0 or a negative errno (logged;
 * records then reach the audit role only). */
int proxy_access_init(proxy_thread *t);
/* Writes and commits what is pending, closes the segment (its head marked
 * closed), then releases it. */
void proxy_access_dispose(proxy_thread *t);
/* The pool destructor of a proxy_request: appends its record to its
 * thread's segment. */
void proxy_access_emit(void *p);
/* The stage after plugins: for a failClosed Service, appends an admission
 * record (status 0) and answers only once its segment's head is committed
 * to the audit log (503 when it cannot be); other requests pass. */
proxy_step proxy_stage_commit(proxy_request *pr);
/* Writes REC, answered with STATUS after BYTES bytes and LATENCY_US µs and
 * stamped NOW (RFC 3339), into OUT (SIZE bytes) as one compact JSON array
 * (no newline, no NUL). Returns its length, or 0 when it does not fit. */
size_t proxy_access_encode(char *out, size_t size, const char *now, const access_record *rec, int status,
                           uint64_t bytes, uint64_t latency_us);
/* Copies the LEN bytes at S into OUT (SIZE) for the log: printable ASCII
 * kept, anything else as '?', cut at SIZE - 1. */
void proxy_copy_printable(char *out, size_t size, const char *s, size_t len);
/* proxy_copy_printable() of the LEN bytes at S, cut at MAX, into a string
 * allocated from POOL. */
char *proxy_pool_printable(h2o_mem_pool_t *pool, const char *s, size_t len, size_t max);

/* ---- trace.c ---- */
/* Ends PR's CLIENT span (if any) when the upstream answered STATUS (or the
 * proxy answered for it: 502, 504). */
void proxy_trace_upstream_answered(proxy_request *pr, int status);
/* When PR's record is written: ends its spans (the SERVER span with the
 * request's attributes and STATUS) and, when exporting, sends the access
 * record (BYTES sent, LATENCY_US) as an OTLP log record in its trace. */
void proxy_trace_finish(proxy_request *pr, int status, uint64_t bytes, uint64_t latency_us);

/* ---- tls.c ---- */
/* Why REQ, routed to SVC in C, came on a TLS connection opened (SNI) for
 * another host, or NULL. */
const char *proxy_misdirected(h2o_req_t *req, const proxy_config *c, const proxy_service *svc);
/* The decision of proxy_misdirected() on the connection's server name SNI
 * (NULL: none sent; an IP address sent as SNI counts as none): the reason
 * when SNI does not route in C to SVC, or NULL. */
const char *proxy_sni_misdirected(const proxy_config *c, const proxy_service *svc, const char *sni);

/* ---- authenticate.c ---- */
/* The access token of REQ: "Authorization: Bearer …", else our cookie.
 * Sets *RET_FROM_COOKIE. A NULL base when there is none; an empty one when
 * Authorization is present but not a bearer token. */
h2o_iovec_t proxy_find_token(h2o_req_t *req, bool *ret_from_cookie);
/* The value of cookie NAME in REQ's Cookie headers, or a NULL base. */
h2o_iovec_t proxy_find_cookie(h2o_req_t *req, const char *name);
/* Resolves the access token TOKEN against configuration C at NOW; see
 * authenticate.c. Returns the resolution (owned by T's cache) or NULL with
 * a reason in *RET_WHY (valid until T's next resolve) and the status to
 * answer in *RET_STATUS: 401, or 403 for a disabled user. */
/* PR's resolved token: NULL for an anonymous request, or when its cache slot
 * was given to another token while PR waited off the loop (a plugin call,
 * the failClosed commit); the slot resolved again for the same token (a
 * newer configuration) is still PR's. */
const resolved_token *proxy_request_token(const proxy_request *pr);
const resolved_token *proxy_resolve(proxy_thread *t, const proxy_config *c, h2o_iovec_t token, int64_t now,
                                    const char **ret_why, int *ret_status);
void proxy_tokens_clear(proxy_thread *t);

/* ---- login.c ---- */
/* Whether REQ comes from a browser navigating (GET/HEAD asking for HTML). */
bool proxy_wants_html(h2o_req_t *req);
/* Sends a browser without a session to log in (302 with a login cookie), or
 * refuses when no login can be started from here. Returns PROXY_DONE. */
proxy_step proxy_login_redirect(proxy_request *pr);
/* GET /.cloister/callback?handoff=…: the end of a login. Returns PROXY_DONE. */
proxy_step proxy_login_callback(proxy_request *pr);
void proxy_login_init(proxy_thread *t);
void proxy_login_dispose(proxy_thread *t);

/* ---- api-post.c ---- */
/* POSTs BODY (NUL-terminated; "" for none) to PATH ("/v1/auth/logout") of
 * the API, its certificate verified against the cluster CA, with HEADERS
 * (the caller's, not NULL) and at most TIMEOUT_MS; blocking: only on an
 * offload worker. The answer's body goes to ANSWER (NULL: discarded).
 * Returns the HTTP status, or 0 with ERROR saying why no answer came. */
long proxy_api_post(const proxy_settings *s, const char *path, struct curl_slist *headers, const char *body,
                    long timeout_ms, strbuf *answer, char error[CURL_ERROR_SIZE]);

/* ---- logout.c ---- */
/* /.cloister/logout: GET a page asking to sign out, POST revokes the
 * session at the API and clears the cookie. Returns PROXY_DONE. */
proxy_step proxy_logout(proxy_request *pr);

/* ---- jwks.c ---- */
/* GET /.cloister/jwks.json: the keys verifying x-cloister-assertion.
 * Returns PROXY_DONE. */
proxy_step proxy_serve_jwks(proxy_request *pr);

/* ---- rewrite.c ---- */
/* Fills WHO from the USER, SESSION and CREDENTIAL documents (borrowed; each
 * may be NULL), which must outlive it. Returns 0 or -ENOMEM. */
int proxy_identity_init(proxy_identity *who, const json_t *user, const json_t *session, const json_t *credential);
void proxy_identity_done(proxy_identity *who);
/* Builds in *RET (from POOL) the headers IN becomes for SVC's upstream:
 * without the client's x-cloister-*, forwarding and proxy credential
 * headers, our session cookie, Authorization unless SVC passes it and the
 * header SVC injects; then x-cloister-user, -email, -groups (of WHO),
 * -request-id (REQUEST_ID), -assertion (ASSERTION) and SVC's injected
 * header. Values are borrowed from IN and SVC or copied to POOL. */
void proxy_upstream_headers(h2o_mem_pool_t *pool, const h2o_headers_t *in, const proxy_service *svc,
                            const proxy_identity *who, const char *request_id, const char *assertion,
                            h2o_headers_t *ret);
void proxy_assertions_clear(proxy_thread *t);
/* Whether an assertion signed to expire at CACHED_EXP is still sent at NOW
 * for a token expiring at TOKEN_EXP: while it has more than half of
 * PROXY_ASSERTION_TTL_S left, or as long as one signed now would expire no
 * later (a token's last minute: an assertion never outlives its token). */
bool proxy_assertion_reusable(int64_t now, int64_t cached_exp, int64_t token_exp);
