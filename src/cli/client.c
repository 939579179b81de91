#include "cli/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/strbuf.h"

#define CONNECT_TIMEOUT_S 10L
#define STALL_TIMEOUT_S 60L /* abort when under 1 byte/s for this long */
#define TOTAL_TIMEOUT_S 600L

typedef struct response {
    strbuf body;
    bool too_large;
    CURL *handle;
    int out_fd;      /* a 2xx body goes here when >= 0 (a download) */
    bool write_failed;
} response;

/* libcurl write callback: appends to the capped body, or writes a
 * download's 2xx body to its fd; a short count makes libcurl abort the
 * transfer. */
static size_t on_body(char *data, size_t size, size_t n, void *userdata)
{
    response *resp = userdata;
    long status = 0;
    if (resp->out_fd >= 0 && curl_easy_getinfo(resp->handle, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
        status >= 200 && status < 300) {
        for (size_t done = 0; done < size * n;) {
            ssize_t w = write(resp->out_fd, data + done, size * n - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                resp->write_failed = true;
                return 0;
            }
            done += (size_t)w;
        }
        return size * n;
    }
    int r = strbuf_append(&resp->body, data, size * n);
    resp->too_large = r == -E2BIG;
    return r == 0 ? size * n : 0;
}

/* Copies V into DST when it is a string (cut to SIZE). */
static void copy_field(char *dst, size_t size, const json_t *v)
{
    if (json_is_string(v))
        snprintf(dst, size, "%s", json_string_value(v));
}

/* Fills ERR from an error answer of STATUS with body BODY (may be NULL). */
static void parse_error(long status, const json_t *body, api_error *err)
{
    const json_t *e = json_object_get(body, "error");
    *err = (api_error){.status = status, .document = -1};
    copy_field(err->code, sizeof(err->code), json_object_get(e, "code"));
    copy_field(err->message, sizeof(err->message), json_object_get(e, "message"));
    copy_field(err->field, sizeof(err->field), json_object_get(e, "field"));
    const json_t *doc = json_object_get(e, "document");
    if (json_is_integer(doc) && json_integer_value(doc) >= 0)
        err->document = (long)json_integer_value(doc);
    if (!err->message[0])
        snprintf(err->message, sizeof(err->message), "the server answered HTTP %ld", status);
}

/* Fills ERR for a request that got no usable answer; returns CODE. */
static int transport_error(api_error *err, int code, const char *fmt, ...) _printf_(3, 4);
static int transport_error(api_error *err, int code, const char *fmt, ...)
{
    *err = (api_error){.document = -1};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

/* Frees request headers, wiping them first: one holds the token. */
static void slist_free_wiped(struct curl_slist *l)
{
    for (struct curl_slist *p = l; p; p = p->next)
        explicit_bzero(p->data, strlen(p->data));
    curl_slist_free_all(l);
}

/* Sets up the handle for an HTTPS-only, verified, bounded exchange. */
static int setup(CURL *c, const cli_ctx *ctx, const char *url, const char *method,
                 const char *body, size_t body_len, struct curl_slist *headers, long total_timeout_s, response *resp,
                 char *errbuf)
{
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (ctx->ca)
        SET(CURLOPT_CAINFO, ctx->ca);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, STALL_TIMEOUT_S);
    SET(CURLOPT_TIMEOUT, total_timeout_s);
    SET(CURLOPT_USERAGENT, "cloister/" CLOISTER_VERSION);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        SET(CURLOPT_POSTFIELDS, body);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, resp);
    SET(CURLOPT_ERRORBUFFER, errbuf);
#undef SET
    return rc == CURLE_OK ? 0 : -ENOMEM;
}

/* What one exchange sends besides its method and URL: a body of LEN bytes
 * of CONTENT_TYPE (none when DATA is NULL), and where a 2xx answer's body
 * goes (OUT_FD, or parsed as JSON when -1). */
typedef struct exchange {
    const char *data;
    size_t len;
    const char *content_type;
    int out_fd;
    bool stream; /* a stream that lasts (Server-Sent Events): no total timeout, only the stall one */
    long *ret_status; /* when set: a JSON answer of any status is returned, its status here (health) */
} exchange;

/* One exchange with URL (an https:// URL): api_request() without the refresh. */
static int exchange_url(const cli_ctx *ctx, const char *token, const char *method, const char *url,
                        const exchange *x, json_t **ret, api_error *err)
{
    const char *payload = x->data;
    char content_type[128] = "";
    if (payload)
        snprintf(content_type, sizeof(content_type), "Content-Type: %s", x->content_type);

    char auth[8300];
    struct curl_slist *headers = NULL, *l;
    if (token)
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    const char *lines[] = {token ? auth : NULL, "Accept: application/json", payload ? content_type : NULL};
    for (size_t i = 0; i < ELEMENTSOF(lines); i++) {
        if (!lines[i])
            continue;
        if (!(l = curl_slist_append(headers, lines[i]))) {
            explicit_bzero(auth, sizeof(auth));
            slist_free_wiped(headers);
            return transport_error(err, -ENOMEM, "out of memory");
        }
        headers = l;
    }
    explicit_bzero(auth, sizeof(auth));

    response resp = {.out_fd = x->out_fd};
    strbuf_init(&resp.body, CLIENT_MAX_RESPONSE);
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *c = curl_easy_init();
    resp.handle = c;
    int r = c ? setup(c, ctx, url, method, payload, x->len, headers, x->stream ? 0L : TOTAL_TIMEOUT_S, &resp, errbuf) : -ENOMEM;
    CURLcode rc = CURLE_FAILED_INIT;
    long status = 0;
    if (r == 0) {
        rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_easy_cleanup(c);
    slist_free_wiped(headers);
    _cleanup_strbuf_ strbuf answer = resp.body;
    if (r < 0)
        return transport_error(err, r, "cannot set up the HTTP client");
    if (resp.too_large)
        return transport_error(err, -E2BIG, "the answer of %s is larger than %zu MiB", ctx->server,
                               CLIENT_MAX_RESPONSE >> 20);
    if (resp.write_failed)
        return transport_error(err, -EIO, "cannot write what %s sent: %s", ctx->server, strerror(errno));
    if (rc != CURLE_OK)
        return transport_error(err, -EIO, "cannot reach %s: %s", ctx->server,
                               errbuf[0] ? errbuf : curl_easy_strerror(rc));

    json_auto_t *v = NULL;
    if (answer.len > 0) {
        json_error_t jerr;
        v = json_loadb(answer.data, answer.len, 0, &jerr);
        if (!v && status >= 200 && status < 300)
            return transport_error(err, -EBADMSG, "the server's answer is not JSON: %s", jerr.text);
    }
    if ((status < 200 || status >= 300) && !(x->ret_status && json_is_object(v))) {
        parse_error(status, v, err);
        return -EPROTO;
    }
    if (x->ret_status)
        *x->ret_status = status;
    *ret = v ? TAKE_PTR(v) : json_null();
    return 0;
}

/* exchange_url() of the JSON BODY (may be NULL). */
static int request_url(const cli_ctx *ctx, const char *token, const char *method, const char *url,
                       const json_t *body, json_t **ret, api_error *err)
{
    _cleanup_free_ char *payload = NULL;
    if (body && !(payload = json_dumps(body, JSON_COMPACT)))
        return transport_error(err, -ENOMEM, "out of memory");
    exchange x = {.data = payload, .len = payload ? strlen(payload) : 0, .content_type = "application/json",
                  .out_fd = -1};
    return exchange_url(ctx, token, method, url, &x, ret, err);
}

/* request_url() of PATH below the server's /v1. */
static int request_once(const cli_ctx *ctx, const char *token, const char *method, const char *path,
                        const json_t *body, json_t **ret, api_error *err)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/v1%s", ctx->server, path) < 0)
        return transport_error(err, -ENOMEM, "out of memory");
    return request_url(ctx, token, method, url, body, ret, err);
}

/* Replaces the heap string *DST with a copy of the string member NAME of
 * V, wiping the old one. Returns 0, -EBADMSG or -ENOMEM. */
static int replace_secret(char **dst, const json_t *v, const char *name)
{
    const char *s = json_string_value(json_object_get(v, name));
    if (!s || !*s)
        return -EBADMSG;
    char *copy = strdup(s);
    if (!copy)
        return -ENOMEM;
    if (*dst) {
        explicit_bzero(*dst, strlen(*dst));
        free(*dst);
    }
    *dst = copy;
    return 0;
}

int cli_token_expiry(const char *token, int64_t *ret_exp)
{
    const char *dot1 = strchr(token, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot2 || (size_t)(dot2 - dot1 - 1) > 4096)
        return -EINVAL;
    uint8_t payload[3200];
    long n = base64_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), payload, sizeof(payload), true);
    if (n < 0)
        return -EINVAL;
    json_auto_t *claims = json_loadb((const char *)payload, (size_t)n, 0, NULL);
    const json_t *exp = json_object_get(claims, "exp");
    if (!json_is_integer(exp))
        return -EINVAL;
    *ret_exp = json_integer_value(exp);
    return 0;
}

/* Makes the saved session SAVED's tokens CTX's (another process refreshed
 * it). Returns 0 or -ENOMEM. */
static int adopt_saved(cli_ctx *ctx, const cli_session *saved)
{
    json_auto_t *v = json_pack("{s:s, s:s}", "access_token", saved->access_token, "refresh_token",
                               saved->refresh_token);
    int r = v ? replace_secret(&ctx->session.access_token, v, "access_token") : -ENOMEM;
    if (r == 0)
        r = replace_secret(&ctx->session.refresh_token, v, "refresh_token");
    if (r == 0)
        r = replace_secret(&ctx->token, v, "access_token");
    if (v) {
        explicit_bzero((char *)json_string_value(json_object_get(v, "access_token")), strlen(saved->access_token));
        explicit_bzero((char *)json_string_value(json_object_get(v, "refresh_token")), strlen(saved->refresh_token));
    }
    return r < 0 ? -ENOMEM : 0;
}

/* Trades CTX's refresh token for new tokens and saves them (the session
 * lock is held). */
static int refresh_locked(cli_ctx *ctx, api_error *err)
{
    json_auto_t *body = json_pack("{s:s}", "refresh_token", ctx->session.refresh_token);
    json_auto_t *answer = NULL;
    if (!body)
        return transport_error(err, -ENOMEM, "out of memory");
    int r = request_once(ctx, NULL, "POST", "/auth/refresh", body, &answer, err);
    explicit_bzero((char *)json_string_value(json_object_get(body, "refresh_token")),
                   strlen(ctx->session.refresh_token));
    if (r < 0)
        return r;
    r = replace_secret(&ctx->session.access_token, answer, "access_token");
    if (r == 0)
        r = replace_secret(&ctx->session.refresh_token, answer, "refresh_token");
    if (r == 0)
        r = replace_secret(&ctx->token, answer, "access_token");
    const char *k;
    json_t *v;
    json_object_foreach(answer, k, v) if (json_is_string(v))
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
    if (r < 0)
        return transport_error(err, r, "the server's answer to the refresh holds no tokens");
    r = session_save(&ctx->session);
    if (r < 0)
        return transport_error(err, r, "cannot save the refreshed session: %s", strerror(-r));
    return 0;
}

/* cli_session_fresh() with a refresh forced unless another process already
 * made one (FORCE), or only when the token expires within MIN_VALID_S. */
static int session_fresh(cli_ctx *ctx, int64_t min_valid_s, bool force, api_error *err)
{
    if (!ctx->session.refresh_token)
        return transport_error(err, -ENOKEY, "the session has no refresh token; log in again");
    int64_t exp, now = (int64_t)time(NULL);
    if (!force && ctx->token && cli_token_expiry(ctx->token, &exp) == 0 && exp - now > min_valid_s)
        return 0;
    _cleanup_close_ int lock = session_lock();
    if (lock < 0)
        return transport_error(err, lock, "cannot lock the session: %s", strerror(-lock));
    /* another cloister of this user may have refreshed the session since we
     * read it: its refresh token is then the live one (ours is retired, and
     * presenting a retired one revokes the session) */
    _cleanup_(session_done) cli_session saved = {};
    if (session_load(&saved) == 0 && saved.session_id && ctx->session.session_id &&
        strcmp(saved.session_id, ctx->session.session_id) == 0 && saved.refresh_token && saved.access_token &&
        strcmp(saved.refresh_token, ctx->session.refresh_token) != 0) {
        if (adopt_saved(ctx, &saved) < 0)
            return transport_error(err, -ENOMEM, "out of memory");
        if (cli_token_expiry(ctx->token, &exp) == 0 && exp - now > min_valid_s)
            return 0;
    }
    return refresh_locked(ctx, err);
}

int cli_session_fresh(cli_ctx *ctx, int64_t min_valid_s, api_error *err)
{
    return session_fresh(ctx, min_valid_s, false, err);
}

int cli_session_refresh(cli_ctx *ctx, api_error *err)
{
    return session_fresh(ctx, 0, true, err);
}

int api_request_url(cli_ctx *ctx, const char *token, const char *method, const char *url, const json_t *body,
                    json_t **ret, api_error *err)
{
    int r = request_url(ctx, token, method, url, body, ret, err);
    bool from_session = token && token == ctx->token && ctx->session.access_token &&
                        strcmp(token, ctx->session.access_token) == 0 && ctx->session.refresh_token;
    if (r != -EPROTO || err->status != 401 || !from_session)
        return r;
    api_error refresh_err;
    if (cli_session_refresh(ctx, &refresh_err) < 0)
        return r; /* the original refusal says more than the refresh's */
    return request_url(ctx, ctx->token, method, url, body, ret, err);
}

int api_health(cli_ctx *ctx, const char *path, long *ret_status, json_t **ret, api_error *err)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s%s", ctx->server, path) < 0)
        return transport_error(err, -ENOMEM, "out of memory");
    exchange x = {.out_fd = -1, .ret_status = ret_status};
    return exchange_url(ctx, NULL, "GET", url, &x, ret, err);
}

int api_request(cli_ctx *ctx, const char *token, const char *method, const char *path, const json_t *body,
                json_t **ret, api_error *err)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/v1%s", ctx->server, path) < 0)
        return transport_error(err, -ENOMEM, "out of memory");
    return api_request_url(ctx, token, method, url, body, ret, err);
}

const char *api_error_message(const api_error *err, char *buf, size_t size)
{
    size_t n = strlen(err->field);
    if (n == 0 || (strncmp(err->message, err->field, n) == 0 && err->message[n] == ':'))
        snprintf(buf, size, "%s", err->message);
    else
        snprintf(buf, size, "%s: %s", err->field, err->message);
    return buf;
}

int api_error_print(const api_error *err)
{
    char msg[sizeof(err->field) + sizeof(err->message) + 2];
    const char *hint = err->status == 401 ? " (log in again: cloister login --token TOKEN)" : "";
    return cli_error("%s%s", api_error_message(err, msg, sizeof(msg)), hint);
}

/* exchange_url() of PATH below /v1 with CTX's token, refreshing the
 * session once as api_request_url() does. */
static int exchange_path(cli_ctx *ctx, const char *method, const char *path, const exchange *x, json_t **ret,
                         api_error *err)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/v1%s", ctx->server, path) < 0)
        return transport_error(err, -ENOMEM, "out of memory");
    const char *token = ctx->token;
    int r = exchange_url(ctx, token, method, url, x, ret, err);
    bool from_session = token && ctx->session.access_token && strcmp(token, ctx->session.access_token) == 0 &&
                        ctx->session.refresh_token;
    if (r != -EPROTO || err->status != 401 || !from_session)
        return r;
    api_error refresh_err;
    if (cli_session_refresh(ctx, &refresh_err) < 0)
        return r;
    return exchange_url(ctx, ctx->token, method, url, x, ret, err);
}

int api_request_bytes(cli_ctx *ctx, const char *method, const char *path, const void *data, size_t n, json_t **ret,
                      api_error *err)
{
    exchange x = {.data = data, .len = n, .content_type = "application/octet-stream", .out_fd = -1};
    return exchange_path(ctx, method, path, &x, ret, err);
}

int api_download(cli_ctx *ctx, const char *path, int fd, api_error *err)
{
    json_auto_t *ignored = NULL;
    exchange x = {.out_fd = fd};
    return exchange_path(ctx, "GET", path, &x, &ignored, err);
}

int api_stream(cli_ctx *ctx, const char *path, int fd, api_error *err)
{
    json_auto_t *ignored = NULL;
    exchange x = {.out_fd = fd, .stream = true};
    return exchange_path(ctx, "GET", path, &x, &ignored, err);
}


/* The stream of api_watch(), read on a thread into a pipe. */
typedef struct watch_reader {
    cli_ctx *ctx;
    const char *path;
    int fd;
    int rc;
    api_error err;
} watch_reader;

static void *watch_reader_main(void *arg)
{
    watch_reader *j = arg;
    j->rc = api_stream(j->ctx, j->path, j->fd, &j->err);
    close(j->fd);
    return NULL;
}

int api_watch(cli_ctx *ctx, const char *path, int (*on_event)(const char *type, const json_t *data, void *userdata),
              void *userdata, api_error *err)
{
    int fds[2];
    if (pipe(fds) < 0)
        return transport_error(err, -errno, "cannot make a pipe: %m");
    watch_reader job = {.ctx = ctx, .path = path, .fd = fds[1]};
    pthread_t t;
    int e = pthread_create(&t, NULL, watch_reader_main, &job);
    if (e != 0) {
        close(fds[0]);
        close(fds[1]);
        return transport_error(err, -e, "cannot start the stream: %s", strerror(e));
    }
    FILE *in = fdopen(fds[0], "r");
    _cleanup_free_ char *line = NULL;
    size_t size = 0;
    char event[32] = "";
    int r = 0;
    ssize_t n;
    while (in && (n = getline(&line, &size, in)) >= 0) {
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, "event: ", 7) == 0)
            snprintf(event, sizeof(event), "%s", line + 7);
        else if (strncmp(line, "data: ", 6) == 0 && r == 0) {
            json_auto_t *v = json_loads(line + 6, 0, NULL);
            if (strcmp(event, "ERROR") == 0) {
                const char *why = json_string_value(json_object_get(json_object_get(v, "error"), "message"));
                r = transport_error(err, -EPROTO, "the stream ended: %s", why ? why : "(no reason given)");
            } else if (v)
                r = on_event(event, v, userdata);
            /* the handler stopped: the thread ends once the pipe is closed */
            if (r != 0)
                break;
        }
    }
    if (in)
        fclose(in);
    else
        close(fds[0]);
    pthread_join(t, NULL);
    if (r == 0 && job.rc < 0) {
        *err = job.err;
        return job.rc;
    }
    return r;
}
