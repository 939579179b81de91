/* The identity-aware proxy's request path (see proxy.h). */
#include "proxy/proxy.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "audit/event.h"
#include "auth/session.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "httpd/framing.h"
#include "httpd/httpd.h"
#include "attest/atls.h"
#include "auth/handoff.h"
#include "proxy/bridge.h"
#include "proxy/certs.h"
#include "proxy/config.h"
#include "proxy/cookie.h"
#include "proxy/path.h"

#define TOKEN_SLOTS 1024       /* resolved access tokens per thread */
#define ASSERTION_SLOTS 1024   /* signed assertions per thread */
#define VALUES_ARENA_MAX (256u * 1024u)
#define REQUEST_ID_LEN 32
#define COOKIE_NAME "cloister_session"
#define LOGIN_COOKIE "cloister_login"  /* ties a login's handoff to the browser that started it */
#define LOGIN_COOKIE_TTL_S LOGIN_LINK_TTL_S
#define AUDIT_PATH_MAX 1024
#define ACCESS_BATCH_BYTES (12 * 1024) /* record text per audit entry (entries are capped at 16 KiB) */
#define ACCESS_RECORD_MAX 2600         /* the longest record: path, policy, rule and names at their caps */
#define ACCESS_FLUSH_MS 200            /* a batch waits at most this long */
#define HANDOFF_WAIT_MS 50             /* a handoff whose session is not here yet is tried again this often */
#define HANDOFF_WAIT_TRIES 60          /* ... this many times (3 s) */
/* two refusals of auth/session.c a login handoff waits out (the session or
 * user may not have reached this proxy yet): the same texts */
#define WHY_NO_SESSION "the session of this access token was revoked or has expired"
#define WHY_NO_USER "the user of this session no longer exists"

typedef struct proxy_thread proxy_thread;

/* An access token resolved to its session, user and credential, valid
 * while the configuration generation is unchanged and the token and the
 * session have not expired. */
typedef struct resolved_token {
    uint8_t hash[SHA256_DIGEST_LENGTH];
    uint64_t generation;
    int64_t exp;
    json_t *user, *credential, *session; /* references */
    int64_t session_created, session_expires;
} resolved_token;

/* A signed x-cloister-assertion for a session and a service. */
typedef struct assertion_slot {
    uint8_t key[SHA256_DIGEST_LENGTH]; /* SHA-256(session id, service) */
    uint64_t generation;
    int64_t exp;
    char *jwt;
} assertion_slot;

struct proxy_thread {
    h2o_context_t *ctx;
    const proxy_settings *settings;
    proxy_config *config;
    uint64_t generation;
    jwt_cache *jwt;
    cel_arena *values, *scratch;
    h2o_http1client_ctx_t client_ctx;
    h2o_timeout_t io_timeout, websocket_timeout;
    resolved_token tokens[TOKEN_SLOTS];
    auth_verdict refused; /* why resolve() last refused a token */
    assertion_slot assertions[ASSERTION_SLOTS];
    uint8_t id_prefix[8];
    uint64_t id_seq;
    unsigned next_replica; /* round robin over an enclave's replicas */
    /* /.cloister/attestation: certificates fetched by helper threads come
     * back to this loop as messages */
    h2o_multithread_queue_t *attest_queue;
    h2o_multithread_receiver_t attest_done;
    unsigned attest_jobs; /* in flight; the drain waits for them */
    /* the access log: records of this thread's requests, sent as one audit
     * entry per batch (by size or after ACCESS_FLUSH_MS) */
    strbuf access;
    unsigned access_count;
    h2o_timeout_t access_timeout;
    h2o_timeout_entry_t access_flush;
    h2o_timeout_t handoff_timeout; /* login handoffs waiting for their session */
};

/* What the access log records of one request; emitted when h2o releases
 * the request's memory, once status and bytes are known. */
typedef struct access_record {
    h2o_req_t *req;
    struct proxy_thread *thread; /* the thread serving it, whose batch it joins */
    _Atomic int64_t *in_flight;  /* the Enclave load it counts in, until it ends; or NULL */
    proxy_config *config; /* kept alive while the request uses its Service */
    uint64_t started;
    char id[REQUEST_ID_LEN + 1];
    char ip[64], method[16]; /* copied: the connection may be gone when the record is emitted */
    const char *service;
    const char *user, *session;
    proxy_decision decision;
    char policy[128], rule[128];
    char path[AUDIT_PATH_MAX + 1];
} access_record;

static const proxy_settings *settings_of(h2o_req_t *req)
{
    return ((proxy_thread *)httpd_thread_state(req))->settings;
}

static void access_flush(proxy_thread *t);
static void on_access_timeout(h2o_timeout_entry_t *entry);
static void on_attest_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages);

/* ---- per-thread state ---- */

void *proxy_thread_init(h2o_context_t *ctx, void *userdata)
{
    const proxy_settings *s = userdata;
    proxy_thread *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ctx = ctx;
    t->settings = s;
    t->jwt = jwt_cache_new(4096);
    t->values = cel_arena_new(VALUES_ARENA_MAX);
    t->scratch = cel_arena_new(POLICY_ARENA_MAX);
    random_bytes(t->id_prefix, sizeof(t->id_prefix));
    h2o_timeout_init(ctx->loop, &t->io_timeout, s->upstream_timeout_ms ? s->upstream_timeout_ms : 30000);
    h2o_timeout_init(ctx->loop, &t->websocket_timeout, s->websocket_timeout_ms ? s->websocket_timeout_ms : 300000);
    strbuf_init(&t->access, ACCESS_BATCH_BYTES + ACCESS_RECORD_MAX + 64);
    h2o_timeout_init(ctx->loop, &t->access_timeout, ACCESS_FLUSH_MS);
    h2o_timeout_init(ctx->loop, &t->handoff_timeout, HANDOFF_WAIT_MS);
    t->access_flush.cb = on_access_timeout;
    t->attest_queue = h2o_multithread_create_queue(ctx->loop);
    h2o_multithread_register_receiver(t->attest_queue, &t->attest_done, on_attest_done);
    t->client_ctx = (h2o_http1client_ctx_t){.loop = ctx->loop, .getaddr_receiver = &ctx->receivers.hostinfo_getaddr,
                                            .io_timeout = &t->io_timeout, .websocket_timeout = &t->websocket_timeout,
                                            .ssl_ctx = s->upstream_tls};
    return t;
}

static void resolved_clear(resolved_token *r)
{
    json_decref(r->user);
    json_decref(r->credential);
    json_decref(r->session);
    *r = (resolved_token){0};
}

static void assertion_clear(assertion_slot *a)
{
    free(a->jwt);
    *a = (assertion_slot){0};
}

bool proxy_thread_busy(void *state)
{
    proxy_thread *t = state;
    return t && t->attest_jobs > 0;
}

void proxy_thread_dispose(void *state)
{
    proxy_thread *t = state;
    if (!t)
        return;
    for (size_t i = 0; i < TOKEN_SLOTS; i++)
        resolved_clear(&t->tokens[i]);
    for (size_t i = 0; i < ASSERTION_SLOTS; i++)
        assertion_clear(&t->assertions[i]);
    access_flush(t);
    if (h2o_timeout_is_linked(&t->access_flush))
        h2o_timeout_unlink(&t->access_flush);
    h2o_timeout_dispose(t->ctx->loop, &t->access_timeout);
    while (!h2o_linklist_is_empty(&t->handoff_timeout._entries)) /* of connections that did not close */
        h2o_timeout_unlink(H2O_STRUCT_FROM_MEMBER(h2o_timeout_entry_t, _link, t->handoff_timeout._entries.next));
    h2o_timeout_dispose(t->ctx->loop, &t->handoff_timeout);
    strbuf_free(&t->access);
    h2o_multithread_unregister_receiver(t->attest_queue, &t->attest_done);
    h2o_multithread_destroy_queue(t->attest_queue);
    h2o_timeout_dispose(t->ctx->loop, &t->io_timeout);
    h2o_timeout_dispose(t->ctx->loop, &t->websocket_timeout);
    jwt_cache_free(t->jwt);
    cel_arena_free(t->values);
    cel_arena_free(t->scratch);
    proxy_config_unref(t->config);
    free(t);
}

/* Picks up a newly published configuration before a request. */
static void refresh_config(proxy_thread *t)
{
    uint64_t g = proxy_config_generation();
    if (g == t->generation)
        return;
    proxy_config *fresh = proxy_config_current();
    proxy_config_unref(t->config);
    t->config = fresh;
    t->generation = fresh ? fresh->generation : 0;
    if (fresh)
        proxy_metrics_config(t->settings->metrics, fresh->generation, fresh->revision);
}

/* ---- responses ---- */

static void make_request_id(proxy_thread *t, char out[REQUEST_ID_LEN + 1])
{
    uint8_t raw[16];
    memcpy(raw, t->id_prefix, 8);
    uint64_t seq = ++t->id_seq;
    memcpy(raw + 8, &seq, 8);
    hex_encode(raw, sizeof(raw), out);
}

/* Sends BODY as the whole response with its length, so the connection
 * stays open (h2o's send_inline leaves the length unknown). */
static void send_body(h2o_req_t *req, h2o_iovec_t body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.content_length = body.len;
    h2o_start_response(req, &generator);
    bool head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    h2o_send(req, head ? NULL : &body, head ? 0 : 1, H2O_SEND_STATE_FINAL);
}

/* Answers 302 to LOCATION (copied), not to be cached. */
static void redirect(h2o_req_t *req, const char *location)
{
    h2o_iovec_t loc = h2o_strdup(&req->pool, location, SIZE_MAX);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, loc.base, loc.len);
    req->res.status = 302;
    req->res.reason = "Found";
    send_body(req, h2o_iovec_init(NULL, 0));
}

/* Answers STATUS with {"error":{"code","message"},"requestId"}; the
 * request id also goes in x-cloister-request-id. Returns 0 (handled). */
static int respond_error(h2o_req_t *req, access_record *rec, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int respond_error(h2o_req_t *req, access_record *rec, int status, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    json_t *body = json_pack("{s:{s:s, s:s}, s:s}", "error", "code", code, "message", message, "requestId", rec->id);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    req->res.status = status;
    req->res.reason = status == 401 ? "Unauthorized" : status == 403 ? "Forbidden" : status == 404 ? "Not Found"
                      : status == 421                  ? "Misdirected Request"
                      : status >= 500                  ? "Error"
                                                       : "Bad Request";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-cloister-request-id"), 0, NULL, rec->id,
                          REQUEST_ID_LEN);
    h2o_iovec_t v = text ? h2o_strdup(&req->pool, text, SIZE_MAX) : h2o_iovec_init(H2O_STRLIT("{}"));
    free(text);
    send_body(req, v);
    return 0;
}

/* ---- access log ---- */

/* The members of an access record, in the order of its array. */
#define ACCESS_FIELDS                                                                                              \
    "[\"time\",\"requestId\",\"user\",\"session\",\"ip\",\"service\",\"method\",\"path\",\"decision\",\"policy\",\"rule\","  \
    "\"status\",\"bytes\",\"latencyUs\"]"

/* Sends the thread's pending records as one audit entry: {action:
 * proxy.access, details: {fields: [names], requests: [[values]...], count}}
 * (arrays rather than objects: a third of the bytes and no key sorting). */
static void access_flush(proxy_thread *t)
{
    if (h2o_timeout_is_linked(&t->access_flush))
        h2o_timeout_unlink(&t->access_flush);
    if (!t->access_count)
        return;
    int r = strbuf_putc(&t->access, ']');
    json_error_t err;
    json_t *requests = r == 0 ? json_loadb(t->access.data, t->access.len, 0, &err) : NULL;
    json_t *details = requests ? json_pack("{s:o, s:o, s:i}", "fields", json_loads(ACCESS_FIELDS, 0, NULL), "requests",
                                           requests, "count", (int)t->access_count)
                               : NULL;
    if (details)
        audit_event_emit(&(audit_event){.action = "proxy.access", .kind = "Service", .outcome = "success",
                                        .details = details});
    else
        log_fields(LOG_LEVEL_ERROR, "access records could not be batched; they are logged here instead", "records",
                   t->access.data, NULL);
    json_decref(details);
    strbuf_reset(&t->access);
    t->access_count = 0;
}

static void on_access_timeout(h2o_timeout_entry_t *entry)
{
    access_flush(H2O_STRUCT_FROM_MEMBER(proxy_thread, access_flush, entry));
}

/* Appends the JSON string S (or null) as the next array element. */
static void put_member(strbuf *b, const char *s)
{
    strbuf_putc(b, ',');
    if (s)
        strbuf_put_json_string(b, s);
    else
        strbuf_puts(b, "null");
}

/* Records the request of REC in its thread's batch once it is answered. */
static void access_emit(void *p)
{
    access_record *rec = p;
    h2o_req_t *req = rec->req;
    proxy_thread *t = rec->thread;
    uint64_t latency_ns = time_mono_ns() - rec->started;
    int status = req->res.status;
    if (t->access.len + ACCESS_RECORD_MAX > ACCESS_BATCH_BYTES)
        access_flush(t);
    strbuf *b = &t->access;
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    strbuf_printf(b, "%c[\"%s\",\"%s\"", t->access_count ? ',' : '[', now, rec->id);
    put_member(b, rec->user);
    put_member(b, rec->session);
    put_member(b, rec->ip[0] ? rec->ip : NULL);
    put_member(b, rec->service);
    put_member(b, rec->method);
    put_member(b, rec->path);
    put_member(b, proxy_decision_name(rec->decision));
    put_member(b, rec->policy[0] ? rec->policy : NULL);
    put_member(b, rec->rule[0] ? rec->rule : NULL);
    strbuf_printf(b, ",%d,%llu,%llu]", status,
                  (unsigned long long)req->bytes_sent, (unsigned long long)(latency_ns / 1000));
    if (t->access_count++ == 0)
        h2o_timeout_link(t->ctx->loop, &t->access_timeout, &t->access_flush);
    const proxy_settings *s = t->settings;
    if (rec->in_flight)
        atomic_fetch_sub(rec->in_flight, 1);
    proxy_metrics_observe(s->metrics, rec->service, rec->decision, status, latency_ns);
    if (s->metrics)
        atomic_store_explicit(&s->metrics->audit_dropped, audit_event_dropped(), memory_order_relaxed);
    proxy_config_unref(rec->config);
}

/* Copies the LEN bytes at S into OUT (SIZE) for the log: printable ASCII
 * kept, anything else as '?', cut at SIZE - 1. */
static void copy_printable(char *out, size_t size, const char *s, size_t len)
{
    size_t n = MIN(len, size - 1);
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    out[n] = 0;
}

/* ---- authentication ---- */

/* The value of cookie NAME in REQ's Cookie headers, or a NULL base. */
static h2o_iovec_t find_cookie(h2o_req_t *req, const char *name)
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

/* The access token of REQ: "Authorization: Bearer …", else our cookie.
 * Sets *RET_FROM_COOKIE. A NULL base when there is none. */
static h2o_iovec_t find_token(h2o_req_t *req, bool *ret_from_cookie)
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
    return find_cookie(req, COOKIE_NAME);
}

static const char *spec_string(const json_t *doc, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, "spec"), field));
}

/* Resolves the access token TOKEN against configuration C: signature,
 * expiry, issuer and audience, then its session, user and credential by the
 * rule of auth/session.h (the API's own). Returns the resolution (owned by
 * T's cache) or NULL with a reason in *RET_WHY (valid until T's next
 * resolve) and the status to answer in *RET_STATUS: 401, or 403 for a
 * disabled user. */
static const resolved_token *resolve(proxy_thread *t, const proxy_config *c, h2o_iovec_t token, int64_t now,
                                     const char **ret_why, int *ret_status)
{
    *ret_status = 401;
    if (token.len > JWT_MAX_LEN) {
        *ret_why = "the access token is too long";
        return NULL;
    }
    uint8_t hash[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)token.base, token.len, hash);
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    resolved_token *slot = &t->tokens[h % TOKEN_SLOTS];
    if (slot->user && slot->generation == c->generation && now < slot->exp &&
        memeq_consttime(slot->hash, hash, sizeof(hash)))
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
    memcpy(slot->hash, hash, sizeof(hash));
    slot->generation = c->generation;
    slot->exp = MIN((int64_t)exp, expires);
    slot->user = json_incref(user);
    slot->credential = json_incref(cred);
    slot->session = json_incref(session);
    slot->session_created = created;
    slot->session_expires = expires;
    return slot;
}

/* Whether REQ comes from a browser navigating (GET/HEAD asking for HTML). */
static bool wants_html(h2o_req_t *req)
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
    h2o_iovec_t v = find_cookie(req, LOGIN_COOKIE);
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

/* Builds the login link for a browser at REQ's URL (TARGET, the normalised
 * path with its query) bound to BIND: the login URL with rd, bind, exp and
 * the mac the API checks (auth/handoff.h), into *RET (heap, the caller
 * frees it). Returns 0, -ENOKEY when C holds no handoff key yet, -ENOMEM
 * or -EIO. */
static int login_link(h2o_req_t *req, const proxy_config *c, const char *target, const char *bind, char **ret)
{
    if (!c->has_handoff_key)
        return -ENOKEY;
    const proxy_settings *s = settings_of(req);
    char url[PROXY_PATH_MAX + 600], escaped[3 * sizeof(url) + 1], mac[LOGIN_MAC_LEN + 1];
    snprintf(url, sizeof(url), "%s://%.*s%s", req->scheme->name.base, (int)MIN(req->authority.len, 300u),
             req->authority.base, target);
    query_escape(url, strlen(url), escaped);
    int64_t exp = (int64_t)(time_now_ns() / NSEC_PER_SEC) + LOGIN_LINK_TTL_S;
    /* the mac covers the rd as the API will read it back (login_rd.url);
     * an rd that does not parse is refused there, mac or not */
    login_rd *rd = h2o_mem_alloc_pool(&req->pool, sizeof(*rd));
    const char *signed_url = login_rd_parse(url, strlen(url), rd, NULL) == 0 ? rd->url : url;
    int e = login_link_mac(c->handoff_key, signed_url, bind, exp, mac);
    if (e < 0)
        return e;
    if (asprintf(ret, "%s?rd=%s&bind=%s&exp=%lld&mac=%s", s->login_url, escaped, bind, (long long)exp, mac) < 0)
        return -ENOMEM;
    return 0;
}

/* 401: a browser is redirected to log in (and back to its URL: TARGET, the
 * normalised path with its query), an API client gets JSON and a
 * WWW-Authenticate challenge. */
static int refuse_unauthenticated(h2o_req_t *req, access_record *rec, const char *target, const char *why,
                                  bool had_token)
{
    const proxy_settings *s = settings_of(req);
    rec->decision = PROXY_DECISION_UNAUTHENTICATED;
    if (wants_html(req) && s->login_url) {
        if (!authority_port_is_ours(req))
            return respond_error(req, rec, 421, "misdirected",
                                 "this proxy does not serve %.*s on that port: open the service at its own address "
                                 "to log in",
                                 (int)MIN(req->authority.len, 300u), req->authority.base);
        /* a random secret in a cookie of this browser; the login carries
         * only its hash (bind), and the handoff it ends with is accepted
         * only with the cookie: a login cannot be finished in another
         * browser (login CSRF). The link is the proxy's: the API starts a
         * login only with its mac. */
        char state[33], bind[LOGIN_BIND_LEN + 1];
        if (login_bind(state, bind) < 0)
            return respond_error(req, rec, 500, "internal", "no randomness");
        char *location = NULL;
        int e = login_link(req, rec->config, target, bind, &location);
        if (e == -ENOKEY)
            return respond_error(req, rec, 503, "unavailable",
                                 "the proxy cannot start a login yet (no handoff key from the API); retry shortly");
        if (e < 0)
            return respond_error(req, rec, 500, "internal", "the login link could not be made (%s)", strerror(-e));
        char *cookie;
        bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
        if (asprintf(&cookie, LOGIN_COOKIE "=%s; Path=" PROXY_RESERVED_PREFIX "; Max-Age=%d; HttpOnly; SameSite=Lax%s",
                     state, LOGIN_COOKIE_TTL_S, tls ? "; Secure" : "") < 0) {
            free(location);
            return respond_error(req, rec, 500, "internal", "out of memory");
        }
        h2o_iovec_t cv = h2o_strdup(&req->pool, cookie, SIZE_MAX);
        free(cookie);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, cv.base, cv.len);
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-cloister-request-id"), 0, NULL, rec->id,
                              REQUEST_ID_LEN);
        redirect(req, location);
        free(location);
        return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                   had_token ? "Bearer realm=\"cloister\", error=\"invalid_token\"" : "Bearer realm=\"cloister\"",
                   had_token ? strlen("Bearer realm=\"cloister\", error=\"invalid_token\"")
                             : strlen("Bearer realm=\"cloister\""));
    return respond_error(req, rec, 401, "unauthenticated", "%s", why);
}

/* ---- decision ---- */

/* ctx.session.authMethod of SESSION: its spec.authMethod as the API wrote
 * it when it opened the session ("token" for a credential's token, "oidc"
 * for a login at an identity provider); "" for anything else. */
static const char *session_auth_method(const json_t *session)
{
    const char *m = spec_string(session, "authMethod");
    return m && (strcmp(m, "token") == 0 || strcmp(m, "oidc") == 0) ? m : "";
}

static void set_text(policy_request *pr, policy_var v, const char *s, size_t len)
{
    pr->vars[v] = policy_text_valid(s, len) ? cel_string(s, len) : cel_string("", 0);
}

/* Decides REQ from IP for the resolved caller R on service SVC with the
 * decided PATH (PATH_LEN bytes) and QUERY (values borrowed). Returns 0 with *RET, or a negative errno
 * (the request is then denied). */
static int decide(proxy_thread *t, h2o_req_t *req, const proxy_config *c, const proxy_service *svc,
                  const resolved_token *r, const char *ip, const char *path, size_t path_len, const char *query,
                  bool from_cookie, policy_decision *ret)
{
    cel_arena_reset(t->values);
    policy_request pr;
    policy_request_init(&pr);
    if (policy_request_set_user(&pr, r->user, t->values) < 0 || policy_request_set_service(&pr, svc->doc, t->values) < 0)
        return -ENOMEM;
    pr.credential = r->credential ? json_string_value(json_object_get(json_object_get(r->credential, "metadata"), "name")) : NULL;
    const char *sid = json_string_value(json_object_get(json_object_get(r->session, "metadata"), "name"));
    policy_request_set_string(&pr, POLICY_VAR_SESSION_ID, sid ? sid : "");
    policy_request_set_string(&pr, POLICY_VAR_SESSION_TYPE, from_cookie ? "browser" : "client");
    policy_request_set_string(&pr, POLICY_VAR_SESSION_AUTH_METHOD, session_auth_method(r->session));
    pr.vars[POLICY_VAR_SESSION_CREATED_AT] = cel_timestamp(r->session_created, 0);
    pr.vars[POLICY_VAR_SESSION_EXPIRES_AT] = cel_timestamp(r->session_expires, 0);
    pr.vars[POLICY_VAR_SESSION_IS_BROWSER] = cel_bool(from_cookie);
    policy_request_set_string(&pr, POLICY_VAR_REQUEST_IP, ip);
    set_text(&pr, POLICY_VAR_HTTP_METHOD, req->method.base, req->method.len);
    pr.vars[POLICY_VAR_HTTP_PATH] = cel_string(path, path_len);
    if (query)
        set_text(&pr, POLICY_VAR_HTTP_QUERY, query, strlen(query));
    set_text(&pr, POLICY_VAR_HTTP_HOST, req->authority.base, req->authority.len);
    policy_request_set_string(&pr, POLICY_VAR_HTTP_SCHEME, req->scheme == &H2O_URL_SCHEME_HTTPS ? "https" : "http");
    policy_header h[H2O_MAX_HEADERS];
    size_t n = MIN(req->headers.size, (size_t)H2O_MAX_HEADERS);
    for (size_t i = 0; i < n; i++)
        h[i] = (policy_header){req->headers.entries[i].name->base, req->headers.entries[i].name->len,
                               req->headers.entries[i].value.base, req->headers.entries[i].value.len};
    if (policy_request_set_headers(&pr, h, n, t->values) < 0)
        return -ENOMEM;
    return policy_decide(c->policies, &pr, t->scratch, ret);
}

/* ---- forwarding ---- */

/* The x-cloister-assertion for session R on SVC: a short-lived ES256 JWT
 * (aud = the service), reused while it has more than half its life left.
 * Returns a string owned by T's cache, or NULL. */
static const char *assertion_for(proxy_thread *t, const proxy_config *c, const proxy_service *svc,
                                 const resolved_token *r, int64_t now)
{
    const char *sid = json_string_value(json_object_get(json_object_get(r->session, "metadata"), "name"));
    const char *user = json_string_value(json_object_get(json_object_get(r->user, "metadata"), "name"));
    if (!sid || !user || !t->settings->assertion_keys)
        return NULL;
    uint8_t key[SHA256_DIGEST_LENGTH];
    char both[2 * 256 + 2];
    int n = snprintf(both, sizeof(both), "%s%c%s", sid, 0, svc->name);
    SHA256((const uint8_t *)both, (size_t)MIN(n, (int)sizeof(both) - 1), key);
    uint64_t h;
    memcpy(&h, key, sizeof(h));
    assertion_slot *a = &t->assertions[h % ASSERTION_SLOTS];
    if (a->jwt && a->generation == c->generation && now + PROXY_ASSERTION_TTL_S / 2 < a->exp &&
        memcmp(a->key, key, sizeof(key)) == 0)
        return a->jwt;
    const json_t *spec = json_object_get(r->user, "spec");
    json_t *groups = json_object_get(spec, "groups");
    const char *email = json_string_value(json_object_get(spec, "email"));
    int64_t exp = MIN(now + PROXY_ASSERTION_TTL_S, r->exp);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:s, s:s*, s:O*, s:I, s:I, s:I}", "iss",
                               t->settings->assertion_issuer, "aud", svc->name, "sub", user, "sid", sid, "email",
                               email, "groups", groups, "iat", (json_int_t)now, "nbf", (json_int_t)now, "exp",
                               (json_int_t)exp);
    char *jwt = NULL;
    int e = claims ? auth_keyring_sign(t->settings->assertion_keys, claims, &jwt) : -ENOMEM;
    json_decref(claims);
    if (e < 0)
        return NULL;
    assertion_clear(a);
    memcpy(a->key, key, sizeof(key));
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
 * identity headers, forwarding headers the proxy sets itself, proxy
 * credentials, and the header a Service injects. */
static bool header_dropped(const h2o_iovec_t *name, const proxy_service *svc)
{
    if (name->len >= 11 && strncasecmp(name->base, "x-cloister-", 11) == 0)
        return true;
    if (name->len >= 12 && strncasecmp(name->base, "x-forwarded-", 12) == 0)
        return true;
    if (name_is(name, H2O_STRLIT("forwarded")) || name_is(name, H2O_STRLIT("x-real-ip")) ||
        name_is(name, H2O_STRLIT("proxy-authorization")))
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
    size_t n = proxy_cookie_strip(v.base, v.len, COOKIE_NAME, strlen(COOKIE_NAME), out);
    return n ? h2o_iovec_init(out, n) : h2o_iovec_init(NULL, 0);
}

/* Rewrites REQ's headers for the upstream (see header_dropped) and adds the
 * identity headers. Returns 0 or -ENOMEM. */
static int rewrite_headers(proxy_thread *t, h2o_req_t *req, const proxy_config *c, const proxy_service *svc,
                           const resolved_token *r, const char *request_id, int64_t now)
{
    h2o_headers_t out = {NULL};
    for (size_t i = 0; i < req->headers.size; i++) {
        h2o_header_t *h = &req->headers.entries[i];
        if (header_dropped(h->name, svc))
            continue;
        if (h->name == &H2O_TOKEN_COOKIE->buf) {
            h2o_iovec_t v = cookie_without_ours(&req->pool, h->value);
            if (v.base)
                h2o_add_header(&req->pool, &out, H2O_TOKEN_COOKIE, NULL, v.base, v.len);
            continue;
        }
        h2o_vector_reserve(&req->pool, &out, out.size + 1);
        out.entries[out.size++] = *h;
    }
    const json_t *spec = json_object_get(r->user, "spec");
    const char *user = json_string_value(json_object_get(json_object_get(r->user, "metadata"), "name"));
    const char *email = json_string_value(json_object_get(spec, "email"));
    char groups[2048];
    size_t g = 0, i;
    json_t *v;
    groups[0] = 0;
    json_array_foreach(json_object_get(spec, "groups"), i, v)
    {
        const char *name = json_string_value(v);
        if (name && g + strlen(name) + 2 < sizeof(groups))
            g += (size_t)snprintf(groups + g, sizeof(groups) - g, "%s%s", g ? "," : "", name);
    }
#define ADD(name, value, len) h2o_add_header_by_str(&req->pool, &out, H2O_STRLIT(name), 0, NULL, value, len)
    ADD("x-cloister-user", h2o_strdup(&req->pool, user ? user : "", SIZE_MAX).base, user ? strlen(user) : 0);
    if (email)
        ADD("x-cloister-email", h2o_strdup(&req->pool, email, SIZE_MAX).base, strlen(email));
    ADD("x-cloister-groups", h2o_strdup(&req->pool, groups, SIZE_MAX).base, g);
    ADD("x-cloister-request-id", request_id, REQUEST_ID_LEN);
    const char *assertion = assertion_for(t, c, svc, r, now);
    if (!assertion)
        return -ENOMEM;
    ADD("x-cloister-assertion", h2o_strdup(&req->pool, assertion, SIZE_MAX).base, strlen(assertion));
#undef ADD
    if (svc->inject)
        h2o_add_header_by_str(&req->pool, &out, svc->inject_name.base, svc->inject_name.len, 0, NULL,
                              svc->inject_value.base, svc->inject_value.len);
    req->headers = out;
    return 0;
}

/* Watches the upstream's response to a forwarded request. */
typedef struct upstream_filter {
    h2o_req_prefilter_t super; /* first: the prefilter is the filter */
    const char *service;
} upstream_filter;

/* Drops the upstream's Set-Cookie of the proxy's own cookies from the
 * response REQ is about to send: an upstream must not put a session of its
 * choice (its own login, or a sibling service's) in the browser. */
static void on_upstream_response(h2o_req_prefilter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    static const char *const ours[] = {COOKIE_NAME, LOGIN_COOKIE, NULL};
    h2o_headers_t *h = &req->res.headers;
    size_t kept = 0;
    for (size_t i = 0; i < h->size; i++) {
        h2o_header_t *e = &h->entries[i];
        if (name_is(e->name, H2O_STRLIT("set-cookie")) && proxy_set_cookie_is_ours(e->value.base, e->value.len, ours)) {
            log_fields(LOG_LEVEL_WARN, "dropped an upstream's Set-Cookie of the proxy's own cookie", "service",
                       ((upstream_filter *)self)->service, NULL);
            continue;
        }
        h->entries[kept++] = *e;
    }
    h->size = kept;
    h2o_setup_next_prefilter(self, req, slot);
}

/* Sends REQ to SVC's upstream with the decided TARGET: its URL's pool, or
 * for an enclave the bridge of one of its running replicas in turn. */
static void forward(proxy_thread *t, h2o_req_t *req, const proxy_service *svc, const char *target, size_t len)
{
    upstream_filter *f = (upstream_filter *)h2o_add_prefilter(req, sizeof(*f));
    f->super.on_setup_ostream = on_upstream_response;
    f->service = svc->name; /* the request keeps its configuration alive */
    h2o_socketpool_t *pool = svc->is_enclave ? svc->replicas[t->next_replica++ % svc->n_replicas] : svc->pool;
    if (!pool->_interval_cb.loop)
        proxy_pool_attach(pool, t->ctx->loop);
    h2o_req_overrides_t *ov = h2o_mem_alloc_pool(&req->pool, sizeof(*ov));
    *ov = (h2o_req_overrides_t){.client_ctx = &t->client_ctx, .socketpool = pool};
    ov->location_rewrite.match = (h2o_url_t *)&svc->upstream;
    ov->location_rewrite.path_prefix = h2o_iovec_init(H2O_STRLIT("/"));
    /* an upstream URL with a path prefixes the decided path */
    h2o_iovec_t base = svc->upstream.path;
    if (base.len && base.base[base.len - 1] == '/')
        base.len--;
    h2o_iovec_t path = h2o_concat(&req->pool, base, h2o_iovec_init(target, len));
    h2o_reprocess_request(req, req->method, svc->upstream.scheme, svc->upstream.authority, path, ov, 0);
}

/* ---- the handler ---- */

/* ---- browser login handoff ---- */

#define HANDOFF_SEEN_MAX 4096   /* handoffs remembered as used */

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
    proxy_thread *t;
    h2o_req_t *req;
    access_record *rec;
    const char *query; /* in the request's pool */
    unsigned tries;
} handoff_wait;

static int serve_callback_try(proxy_thread *t, h2o_req_t *req, access_record *rec, const proxy_config *c,
                              const char *query, unsigned tries);

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
    refresh_config(w->t);
    serve_callback_try(w->t, w->req, w->rec, w->t->config, w->query, w->tries);
}

/* GET /.cloister/callback?handoff=…: the API sends a browser here after
 * its login with the session's access token sealed for this proxy, this
 * host and a path. A valid, unexpired, unused handoff for this host sets
 * the session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS) and
 * redirects to the path; anything else is a 400 and sets nothing. A
 * session (or user) not known yet is waited for, up to
 * HANDOFF_WAIT_TRIES * HANDOFF_WAIT_MS, before it is refused. */
static int serve_callback(proxy_thread *t, h2o_req_t *req, access_record *rec, const proxy_config *c,
                          const char *query)
{
    return serve_callback_try(t, req, rec, c, query, 0);
}

/* One attempt of serve_callback (TRIES made before). */
static int serve_callback_try(proxy_thread *t, h2o_req_t *req, access_record *rec, const proxy_config *c,
                              const char *query, unsigned tries)
{
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
    if (!why && !(r = resolve(t, c, h2o_iovec_init(h.token, strlen(h.token)), now, &reason, &status)))
        why = reason;
    if (why == reason && why && (strcmp(why, WHY_NO_SESSION) == 0 || strcmp(why, WHY_NO_USER) == 0) &&
        tries < HANDOFF_WAIT_TRIES) {
        /* opened a moment ago: wait for its change to arrive */
        handoff_claims_done(&h);
        handoff_wait *w = h2o_mem_alloc_shared(&req->pool, sizeof(*w), handoff_wait_dispose);
        *w = (handoff_wait){.entry = {.cb = on_handoff_wait}, .t = t, .req = req, .rec = rec, .query = query,
                            .tries = tries + 1};
        h2o_timeout_link(t->ctx->loop, &t->handoff_timeout, &w->entry);
        return 0;
    }
    if (!why && !handoff_first_use(h.nonce, h.exp, now))
        why = "the login handoff was already used; log in again";
    if (why) {
        handoff_claims_done(&h);
        return respond_error(req, rec, 400, "invalid", "%s", why);
    }
    rec->decision = PROXY_DECISION_ALLOW;
    const char *user = json_string_value(json_object_get(json_object_get(r->user, "metadata"), "name"));
    rec->user = user ? h2o_strdup(&req->pool, user, SIZE_MAX).base : NULL; /* C may be newer than rec->config */
    char *cookie;
    bool tls = req->scheme == &H2O_URL_SCHEME_HTTPS;
    int a = asprintf(&cookie, COOKIE_NAME "=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Lax%s", h.token,
                     (long long)MAX(r->exp - now, (int64_t)1), tls ? "; Secure" : "");
    if (a < 0) {
        handoff_claims_done(&h);
        return respond_error(req, rec, 500, "internal", "out of memory");
    }
    h2o_iovec_t v = h2o_strdup(&req->pool, cookie, SIZE_MAX);
    OPENSSL_cleanse(cookie, strlen(cookie));
    free(cookie);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, v.base, v.len);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL,
                   H2O_STRLIT(LOGIN_COOKIE "=; Path=" PROXY_RESERVED_PREFIX "; Max-Age=0; HttpOnly; SameSite=Lax"));
    redirect(req, h.path);
    handoff_claims_done(&h);
    return 0;
}

/* Serves the reserved /.cloister/ paths: the JWKS of the assertions and
 * the login callback. PATH is the normalised path, QUERY its query or NULL. */
static int serve_reserved(proxy_thread *t, h2o_req_t *req, access_record *rec, const proxy_config *c,
                          const char *path, const char *query)
{
    const proxy_settings *s = settings_of(req);
    if (strcmp(path, PROXY_RESERVED_PREFIX "callback") == 0)
        return serve_callback(t, req, rec, c, query);
    rec->decision = PROXY_DECISION_ALLOW;
    if (strcmp(path, PROXY_RESERVED_PREFIX "jwks.json") != 0)
        return respond_error(req, rec, 404, "not_found", "no such path under " PROXY_RESERVED_PREFIX);
    json_t *jwks = auth_keyring_jwks(s->assertion_keys);
    char *text = jwks ? json_dumps(jwks, JSON_COMPACT) : NULL;
    json_decref(jwks);
    if (!text)
        return respond_error(req, rec, 500, "internal", "out of memory");
    h2o_iovec_t body = h2o_strdup(&req->pool, text, SIZE_MAX);
    free(text);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("max-age=60"));
    send_body(req, body);
    return 0;
}

/* ---- /.cloister/attestation: a client verifies an enclave itself ---- */

/* A certificate fetch for one request, done by a helper thread. */
typedef struct attest_job {
    h2o_multithread_message_t msg; /* first: the message is the job */
    proxy_thread *t;
    h2o_req_t *req; /* NULL once the request is gone */
    access_record *rec;
    struct attest_guard *guard;
    char enclave[254], replica[72];
    json_t *policy; /* a copy */
    uint8_t nonce[ATLS_NONCE_LEN];
    int result;
    char *pem;
} attest_job;

/* Lives in the request's pool: tells the job when the request is gone. */
typedef struct attest_guard {
    attest_job *job;
} attest_guard;

static void attest_guard_dispose(void *p)
{
    attest_guard *g = p;
    if (g->job)
        g->job->req = NULL;
}

static void *attest_main(void *arg)
{
    attest_job *j = arg;
    j->result = proxy_bridge_certificate(j->replica, j->nonce, &j->pem);
    h2o_multithread_send_message(&j->t->attest_done, &j->msg);
    return NULL;
}

/* Back on the loop: answers the request (when it is still there) with the
 * replica's certificate and the Enclave's policy, and frees the job. */
static void on_attest_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        attest_job *j = H2O_STRUCT_FROM_MEMBER(attest_job, msg.link, messages->next);
        h2o_linklist_unlink(&j->msg.link);
        j->t->attest_jobs--;
        if (j->req) {
            j->guard->job = NULL;
            if (j->result < 0) {
                respond_error(j->req, j->rec, 502, "bad_gateway", "replica %s of enclave %s cannot be reached: %s",
                              j->replica, j->enclave, strerror(-j->result));
            } else {
                json_t *body = json_pack("{s:s, s:s, s:s, s:O?}", "enclave", j->enclave, "replica", j->replica,
                                         "certificate", j->pem, "attestationPolicy", j->policy);
                char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
                json_decref(body);
                if (!text) {
                    respond_error(j->req, j->rec, 500, "internal", "out of memory");
                } else {
                    h2o_req_t *req = j->req;
                    h2o_iovec_t v = h2o_strdup(&req->pool, text, SIZE_MAX);
                    free(text);
                    req->res.status = 200;
                    req->res.reason = "OK";
                    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                                   H2O_STRLIT("application/json"));
                    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
                    send_body(req, v);
                }
            }
        }
        json_decref(j->policy);
        free(j->pem);
        free(j);
    }
}

/* GET /.cloister/attestation?nonce=<64 hex>, decided by policy like any
 * request to SVC: the certificate one of SVC's enclave replicas makes for
 * the caller's nonce (its evidence carries it), and the Enclave's
 * AttestationPolicy, for the caller to verify with its own roots and
 * expectations (`cloister attest service`). The handshake is done by a
 * helper thread: the loop never waits on a replica. */
static int serve_attestation(proxy_thread *t, h2o_req_t *req, access_record *rec, const proxy_service *svc,
                             const char *query)
{
    if (!svc->is_enclave)
        return respond_error(req, rec, 404, "not_found", "service %s does not run in an enclave", svc->name);
    if (!svc->n_replicas)
        return respond_error(req, rec, 503, "unavailable", "service %s cannot be reached: %s", svc->name,
                             svc->unreachable ? svc->unreachable : "no replica");
    const char *p = query ? strstr(query, "nonce=") : NULL;
    if (p && p != query && p[-1] != '&')
        p = NULL;
    attest_job *j = calloc(1, sizeof(*j));
    if (!j)
        return respond_error(req, rec, 500, "internal", "out of memory");
    if (!p || strcspn(p + 6, "&") != 2 * ATLS_NONCE_LEN ||
        hex_decode(p + 6, 2 * ATLS_NONCE_LEN, j->nonce, sizeof(j->nonce)) < 0) {
        free(j);
        return respond_error(req, rec, 400, "invalid", "nonce must be %d hex digits (%d random bytes of yours)",
                             2 * ATLS_NONCE_LEN, ATLS_NONCE_LEN);
    }
    size_t i = t->next_replica++ % svc->n_replicas;
    *j = (attest_job){.t = t, .req = req, .rec = rec, .policy = json_deep_copy(svc->attestation_policy)};
    hex_decode(p + 6, 2 * ATLS_NONCE_LEN, j->nonce, sizeof(j->nonce));
    snprintf(j->enclave, sizeof(j->enclave), "%s", svc->enclave);
    snprintf(j->replica, sizeof(j->replica), "%s", svc->replica_names[i]);
    attest_guard *g = h2o_mem_alloc_shared(&req->pool, sizeof(*g), attest_guard_dispose);
    g->job = j;
    j->guard = g;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&thread, &attr, attest_main, j);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        g->job = NULL;
        json_decref(j->policy);
        free(j);
        return respond_error(req, rec, 503, "unavailable", "too busy to reach the enclave; retry");
    }
    t->attest_jobs++;
    return 0;
}

/* Refuses framing a front end and a back end could read differently
 * (httpd/framing.h: repeated, obfuscated or aliased Content-Length and
 * Transfer-Encoding, both at once, a second Host, an HTTP/2 host other than
 * :authority), before anything is routed. Returns a reason, or NULL. */
static const char *ambiguous_request(h2o_req_t *req)
{
    const char *why;
    return httpd_framing_check(req, &why) < 0 ? why : NULL;
}

/* Refuses path parameters ("/;x/admin", "/a;b/c") unless SVC opts in: the
 * proxy decides on the path as written while Tomcat-like upstreams drop the
 * parameters first. Returns a reason, or NULL. */
static const char *ambiguous_target(h2o_req_t *req, const proxy_service *svc)
{
    if (svc->allow_path_parameters || !framing_path_has_parameters(req->path.base, req->path.len))
        return NULL;
    return "a path parameter (';' in the path), which servers split off differently; a Service that needs them "
           "sets spec.allowPathParameters";
}

static const char *misdirected(h2o_req_t *req, const proxy_config *c, const proxy_service *svc);

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    proxy_thread *t = httpd_thread_state(req);
    if (!t) { /* the thread's state could not be allocated at start */
        h2o_send_error_503(req, "Service Unavailable", "the proxy is out of memory", 0);
        return 0;
    }
    refresh_config(t);
    access_record *rec = h2o_mem_alloc_shared(&req->pool, sizeof(*rec), access_emit);
    *rec = (access_record){.req = req, .thread = t, .config = proxy_config_ref(t->config), .started = time_mono_ns(),
                           .decision = PROXY_DECISION_INVALID};
    make_request_id(t, rec->id);
    if (t->settings->metrics)
        atomic_store_explicit(&t->settings->metrics->connections, httpd_connections(req), memory_order_relaxed);
    httpd_peer_ip(req, rec->ip, sizeof(rec->ip));
    copy_printable(rec->method, sizeof(rec->method), req->method.base, req->method.len);
    copy_printable(rec->path, sizeof(rec->path), req->path.base, req->path.len);
    const proxy_config *c = rec->config;
    if (!c) {
        rec->decision = PROXY_DECISION_ERROR;
        return respond_error(req, rec, 503, "unavailable",
                             "the proxy has not received its configuration from the API yet; retry shortly");
    }

    const char *why = ambiguous_request(req);
    if (why)
        return respond_error(req, rec, 400, "invalid", "ambiguous request refused: %s", why);
    const proxy_service *svc = proxy_config_route(c, req->authority.base, req->authority.len);
    if (!svc)
        return respond_error(req, rec, 404, "not_found", "no service is served at host %.*s",
                             (int)MIN(req->authority.len, 253u), req->authority.base);
    rec->service = svc->name;
    if ((why = misdirected(req, c, svc)))
        return respond_error(req, rec, 421, "misdirected", "%s", why);
    if ((why = ambiguous_target(req, svc)))
        return respond_error(req, rec, 400, "invalid", "ambiguous request refused: %s", why);

    /* one normalisation: decided and forwarded */
    char *target = h2o_mem_alloc_pool(&req->pool, req->path.len + 1);
    size_t path_len;
    int e = req->path.len > PROXY_PATH_MAX ? -E2BIG
                                           : proxy_path_normalize(req->path.base, req->path.len, target,
                                                                  req->path.len + 1, &path_len);
    if (e == -E2BIG)
        return respond_error(req, rec, 414, "too_large", "the request target is longer than %d bytes", PROXY_PATH_MAX);
    if (e < 0)
        return respond_error(req, rec, 400, "invalid",
                             "the request target is not a valid origin-form path (absolute-form, encoded '/', "
                             "control bytes and malformed escapes are refused)");
    copy_printable(rec->path, sizeof(rec->path), target, path_len);
    bool attestation = path_len == strlen(PROXY_ATTESTATION_PATH) &&
                       memcmp(target, PROXY_ATTESTATION_PATH, path_len) == 0; /* decided like any path */
    if (!attestation && path_len >= strlen(PROXY_RESERVED_PREFIX) &&
        memcmp(target, PROXY_RESERVED_PREFIX, strlen(PROXY_RESERVED_PREFIX)) == 0) {
        char *query = target[path_len] == '?' ? target + path_len + 1 : NULL;
        target[path_len] = 0;
        return serve_reserved(t, req, rec, c, target, query);
    }

    /* limits of the service */
    if (req->entity.base && req->entity.len > svc->max_body)
        return respond_error(req, rec, 413, "too_large", "the request body exceeds %llu bytes for service %s",
                             (unsigned long long)svc->max_body, svc->name);
    uint64_t header_bytes = 0;
    for (size_t i = 0; i < req->headers.size; i++)
        header_bytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len;
    if (header_bytes > svc->max_header_bytes)
        return respond_error(req, rec, 431, "too_large", "the request headers exceed %llu bytes for service %s",
                             (unsigned long long)svc->max_header_bytes, svc->name);

    /* authenticate */
    int64_t now = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    bool from_cookie;
    h2o_iovec_t token = find_token(req, &from_cookie);
    if (!token.base || token.len == 0)
        return refuse_unauthenticated(req, rec, target,
                                      token.base ? "the Authorization header must be \"Bearer <access token>\""
                                                 : "no access token: send \"Authorization: Bearer <access token>\" "
                                                   "(POST /v1/auth/token on the API) or log in",
                                      token.base != NULL);
    const char *reason;
    int status;
    const resolved_token *r = resolve(t, c, token, now, &reason, &status);
    if (!r && status == 403) { /* a disabled user: the API's answer too */
        rec->decision = PROXY_DECISION_DENY;
        return respond_error(req, rec, 403, "forbidden", "%s", reason);
    }
    if (!r)
        return refuse_unauthenticated(req, rec, target, reason, true);
    rec->user = json_string_value(json_object_get(json_object_get(r->user, "metadata"), "name"));
    rec->session = json_string_value(json_object_get(json_object_get(r->session, "metadata"), "name"));

    /* decide on the normalised path */
    char *query = target[path_len] == '?' ? target + path_len + 1 : NULL;
    char saved = target[path_len];
    target[path_len] = 0;
    policy_decision d;
    e = decide(t, req, c, svc, r, rec->ip, target, path_len, query, from_cookie, &d);
    target[path_len] = saved;
    if (e < 0) {
        rec->decision = PROXY_DECISION_ERROR;
        return respond_error(req, rec, 403, "forbidden", "the request could not be decided (%s); it is denied",
                             strerror(-e));
    }
    snprintf(rec->policy, sizeof(rec->policy), "%s", d.policy);
    snprintf(rec->rule, sizeof(rec->rule), "%s", d.rule);
    if (!d.allow) {
        rec->decision = PROXY_DECISION_DENY;
        return respond_error(req, rec, 403, "forbidden", "denied: %s", d.reason);
    }
    rec->decision = PROXY_DECISION_ALLOW;
    if (svc->fail_closed && !audit_event_deliverable()) {
        rec->decision = PROXY_DECISION_ERROR;
        return respond_error(req, rec, 503, "unavailable",
                             "service %s requires its access to be audited and the audit log is unavailable", svc->name);
    }
    if (svc->is_enclave && !svc->n_replicas)
        return respond_error(req, rec, 503, "unavailable", "service %s cannot be reached: %s", svc->name,
                             svc->unreachable ? svc->unreachable : "no replica");
    if (!svc->is_enclave && !svc->pool)
        return respond_error(req, rec, 502, "bad_gateway", "service %s has no upstream this proxy can reach", svc->name);
    if (svc->inject && svc->inject_missing)
        return respond_error(req, rec, 502, "bad_gateway", "the secret service %s injects is not available", svc->name);
    if (attestation)
        return serve_attestation(t, req, rec, svc, target[path_len] == '?' ? target + path_len + 1 : NULL);
    if (rewrite_headers(t, req, c, svc, r, rec->id, now) < 0)
        return respond_error(req, rec, 500, "internal", "the identity assertion could not be signed");
    if (svc->is_enclave && (rec->in_flight = proxy_metrics_enclave(t->settings->metrics, svc->enclave)))
        atomic_fetch_add(rec->in_flight, 1); /* the load its controller scales on */
    forward(t, req, svc, target, strlen(target));
    return 0;
}

void proxy_register(h2o_pathconf_t *pathconf, void *userdata)
{
    h2o_handler_t *h = h2o_create_handler(pathconf, sizeof(*h));
    h->on_req = on_req;
    (void)userdata;
}

/* ---- TLS: a service host's own certificate by SNI ---- */

/* The listener's TLS context (proxy_configure_tls), by which the SSL of a
 * connection is recognised (ssl_of). */
static SSL_CTX *listener_tls;

/* The prefix of h2o 2.2's private struct st_h2o_socket_ssl_t (socket.c):
 * the context a connection was accepted with, then its SSL. h2o offers no
 * accessor for the SSL (nor its SNI); ssl_of() trusts this layout only
 * when the context found there is the listener's. */
struct h2o_socket_ssl_prefix {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

/* The SSL of REQ's TLS connection, or NULL (with *RET_UNKNOWN set when
 * the connection is TLS but its SSL cannot be found). */
static SSL *ssl_of(h2o_req_t *req, bool *ret_unknown)
{
    *ret_unknown = false;
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (!sock || !sock->ssl)
        return NULL;
    const struct h2o_socket_ssl_prefix *p = (const void *)sock->ssl;
    if (!listener_tls || p->ssl_ctx != listener_tls || !p->ossl) {
        *ret_unknown = true;
        return NULL;
    }
    return p->ossl;
}

/* Whether the TLS connection of REQ was opened (SNI) for another service
 * than SVC, the one its Host routes to in C: then the answer is 421
 * Misdirected Request (RFC 9110, 15.5.20), as a browser that reused a
 * connection for another host expects. A connection without SNI (a client
 * that dialled an address) names no service. Returns the reason, or NULL. */
static const char *misdirected(h2o_req_t *req, const proxy_config *c, const proxy_service *svc)
{
    if (req->scheme != &H2O_URL_SCHEME_HTTPS)
        return NULL;
    bool unknown;
    SSL *ssl = ssl_of(req, &unknown);
    if (unknown)
        return "the proxy cannot tell which host this TLS connection was opened for";
    const char *sni = ssl ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
    if (!sni)
        return NULL;
    if (proxy_config_route(c, sni, strlen(sni)) != svc)
        return "this TLS connection was opened (SNI) for another host than the request's Host: open a new "
               "connection to that host";
    return NULL;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const proxy_settings *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    size_t len = name ? strlen(name) : 0, dlen = strlen(s->domain);
    if (!s->certs || len <= dlen + 1 || len > 253 || name[len - dlen - 1] != '.' ||
        strcasecmp(name + len - dlen, s->domain) != 0)
        return SSL_TLSEXT_ERR_OK; /* not under the domain: the default certificate */
    char lower[254];
    for (size_t i = 0; i <= len; i++)
        lower[i] = (char)tolower((unsigned char)name[i]);
    proxy_config *c = proxy_config_current();
    const proxy_service *svc = proxy_config_route(c, lower, len);
    SSL_CTX *ctx = svc ? proxy_certs_context(s->certs, lower) : NULL;
    proxy_config_unref(c);
    if (ctx)
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

int proxy_configure_tls(SSL_CTX *ctx, void *userdata)
{
    listener_tls = ctx;
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, userdata);
    return 0;
}
