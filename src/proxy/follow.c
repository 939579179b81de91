/* Following the API's configuration stream (see follow.h). */
#include "proxy/follow.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "daemon/peer-tls.h"
#include "proxy/config.h"
#include "proxy/metrics.h"

#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define IDLE_TIMEOUT_S 20 /* the API sends a keep-alive at least every 5 s */
#define TOKEN_MAX 4096

struct proxy_follower {
    char *api_url, *ca_file, *token_file, *domain;
    char *api_role_url; /* NULL: the stream is asked of api_url with the token */
    proxy_metrics *metrics; /* shared with the api role, may be NULL */
    pthread_t thread;
    _Atomic bool stop;
    proxy_state state;
    proxy_config *published; /* the last snapshot published (a reference) */
    /* the connection in progress */
    strbuf pending;      /* bytes received and not yet a complete event */
    bool changed;        /* the state changed since the last publish */
    long status;         /* the HTTP status of the current response */
    strbuf error_body;   /* a refusal's body, for the log */
};

static const char *doc_kind(const json_t *doc)
{
    return json_string_value(json_object_get(doc, "kind"));
}

static const char *doc_name(const json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
}

static int apply_handoff_key(proxy_follower *f, json_t *data);

/* Replaces a JSON member of the state with a new reference to V. */
static void replace(json_t **slot, json_t *v)
{
    json_incref(v);
    json_decref(*slot);
    *slot = v;
}

/* A snapshot: everything is replaced. */
static int apply_snapshot(proxy_follower *f, json_t *data)
{
    proxy_state *st = &f->state;
    json_t *objects = json_object_get(data, "objects");
    if (!json_is_object(objects) || !json_is_integer(json_object_get(data, "revision")))
        return -EBADMSG;
    for (size_t k = 0; k < POLICY_DOCS_KINDS; k++) {
        int e = policy_docs_reset(st->docs, policy_docs_kinds[k], json_object_get(objects, policy_docs_kinds[k]));
        if (e < 0)
            return e;
    }
    json_t *sessions = json_object();
    if (!sessions)
        return -ENOMEM;
    size_t i;
    json_t *doc;
    json_array_foreach(json_object_get(objects, "Session"), i, doc)
    {
        if (doc_name(doc))
            json_object_set(sessions, doc_name(doc), doc);
    }
    json_decref(st->sessions);
    st->sessions = sessions;
    static const char *const by_name[] = {"Enclave", "AttestationPolicy"};
    json_t **maps[] = {&st->enclaves, &st->attestation_policies};
    for (size_t k = 0; k < ELEMENTSOF(by_name); k++) {
        json_t *map = json_object();
        if (!map)
            return -ENOMEM;
        json_array_foreach(json_object_get(objects, by_name[k]), i, doc)
        {
            if (doc_name(doc))
                json_object_set(map, doc_name(doc), doc);
        }
        json_decref(*maps[k]);
        *maps[k] = map;
    }
    if (json_is_object(json_object_get(data, "jwks")))
        replace(&st->jwks, json_object_get(data, "jwks"));
    if (json_is_object(json_object_get(data, "secrets")))
        replace(&st->secrets, json_object_get(data, "secrets"));
    snprintf(st->issuer, sizeof(st->issuer), "%s", json_string_value(json_object_get(data, "issuer")) ?: "");
    snprintf(st->audience, sizeof(st->audience), "%s", json_string_value(json_object_get(data, "audience")) ?: "");
    st->revision = json_integer_value(json_object_get(data, "revision"));
    st->epoch = strtoull(json_string_value(json_object_get(data, "epoch")) ?: "0", NULL, 16);
    st->policies_changed = true;
    if (json_is_object(json_object_get(data, "handoff")))
        return apply_handoff_key(f, json_object_get(data, "handoff"));
    return 0;
}

/* One change of one document. */
static int apply_change(proxy_follower *f, json_t *data)
{
    proxy_state *st = &f->state;
    const char *type = json_string_value(json_object_get(data, "type"));
    json_t *doc = json_object_get(data, "object");
    const char *kind = doc_kind(doc), *name = doc_name(doc);
    if (!type || !kind || !name)
        return -EBADMSG;
    bool deleted = strcmp(type, "DELETED") == 0;
    int e = 0;
    json_t *map = strcmp(kind, "Session") == 0             ? st->sessions
                  : strcmp(kind, "Enclave") == 0           ? st->enclaves
                  : strcmp(kind, "AttestationPolicy") == 0 ? st->attestation_policies
                                                           : NULL;
    if (map) {
        if (deleted)
            json_object_del(map, name);
        else
            e = json_object_set(map, name, doc) < 0 ? -ENOMEM : 0;
    } else if (policy_docs_tracks(kind)) {
        e = policy_docs_apply(st->docs, kind, deleted, doc);
        st->policies_changed = true;
    }
    json_int_t rev = json_integer_value(json_object_get(data, "revision"));
    if (rev > st->revision)
        st->revision = rev;
    return e;
}

/* The key browser login handoffs are encrypted with: {"key": base64}. */
static int apply_handoff_key(proxy_follower *f, json_t *data)
{
    const json_t *k = json_object_get(data, "key");
    uint8_t key[48];
    long n = json_is_string(k) ? base64_decode(json_string_value(k), json_string_length(k), key, sizeof(key), false) : -1;
    if (n != 32) {
        OPENSSL_cleanse(key, sizeof(key));
        return -EBADMSG;
    }
    memcpy(f->state.handoff_key, key, 32);
    f->state.has_handoff_key = true;
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

/* Applies the event NAME with DATA (LEN bytes of JSON). */
static void apply_event(proxy_follower *f, const char *name, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j)) {
        log_fields(LOG_LEVEL_WARN, "configuration stream: an event is not a JSON object; ignored", "event", name,
                   "error", jerr.text, NULL);
        json_decref(j);
        return;
    }
    int e = 0;
    if (strcmp(name, "snapshot") == 0)
        e = apply_snapshot(f, j);
    else if (strcmp(name, "change") == 0)
        e = apply_change(f, j);
    else if (strcmp(name, "jwks") == 0)
        replace(&f->state.jwks, j);
    else if (strcmp(name, "secrets") == 0)
        replace(&f->state.secrets, j);
    else if (strcmp(name, "handoff") == 0)
        e = apply_handoff_key(f, j);
    else {
        json_decref(j);
        return; /* an event this proxy does not know: newer API */
    }
    if (strcmp(name, "secrets") == 0 || strcmp(name, "handoff") == 0 || strcmp(name, "snapshot") == 0) {
        /* the text held plaintext secrets */
        OPENSSL_cleanse((void *)data, len);
    }
    json_decref(j);
    if (e < 0)
        log_fields(LOG_LEVEL_WARN, "configuration stream: an event could not be applied", "event", name, "error",
                   strerror(-e), NULL);
    else
        f->changed = true;
}

/* Builds and publishes a snapshot of the state. */
static void publish(proxy_follower *f)
{
    proxy_config *snap;
    int e = proxy_config_build(&f->state, f->published, f->domain, f->api_url, &snap);
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot build the proxy configuration; the previous one stays in use", "error",
                   strerror(-e), NULL);
        return;
    }
    proxy_config_unref(f->published);
    f->published = proxy_config_ref(snap);
    char rev[24];
    snprintf(rev, sizeof(rev), "%lld", (long long)snap->revision);
    log_fields(LOG_LEVEL_DEBUG, "proxy configuration published", "revision", rev, NULL);
    proxy_config_publish(snap);
    f->changed = false;
}

/* Consumes the complete events at the start of PENDING. */
static void parse_events(proxy_follower *f)
{
    char *buf = f->pending.data;
    size_t len = f->pending.len, start = 0;
    for (;;) {
        char *end = memmem(buf + start, len - start, "\n\n", 2);
        if (!end)
            break;
        size_t ev_len = (size_t)(end - (buf + start));
        char event[32] = "message";
        const char *data = NULL;
        size_t data_len = 0;
        for (size_t p = start; p < start + ev_len;) {
            char *nl = memchr(buf + p, '\n', start + ev_len - p);
            size_t line_end = nl ? (size_t)(nl - buf) : start + ev_len;
            const char *line = buf + p;
            size_t line_len = line_end - p;
            if (line_len >= 7 && memcmp(line, "event: ", 7) == 0)
                snprintf(event, sizeof(event), "%.*s", (int)(line_len - 7), line + 7);
            else if (line_len >= 6 && memcmp(line, "data: ", 6) == 0 && !data) {
                data = line + 6;
                data_len = line_len - 6;
            }
            p = line_end + 1;
        }
        if (data)
            apply_event(f, event, data, data_len);
        start += ev_len + 2;
    }
    if (start) {
        proxy_metrics_config_heard(f->metrics); /* an event or a keep-alive: the stream is alive */
        OPENSSL_cleanse(buf, start);
        memmove(buf, buf + start, len - start);
        f->pending.len = len - start;
    }
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    proxy_follower *f = userdata;
    size_t n = size * nmemb;
    if (f->status != 200) {
        strbuf_append(&f->error_body, ptr, MIN(n, (size_t)4096));
        return n;
    }
    if (strbuf_append(&f->pending, ptr, n) < 0) {
        log_fields(LOG_LEVEL_ERROR, "configuration stream: an event is larger than the proxy accepts; reconnecting",
                   NULL);
        return 0; /* aborts the transfer */
    }
    parse_events(f);
    if (f->changed)
        publish(f);
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    proxy_follower *f = userdata;
    size_t n = size * nmemb;
    if (n > 9 && memcmp(ptr, "HTTP/", 5) == 0) {
        const char *sp = memchr(ptr, ' ', n);
        f->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    }
    return n;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    proxy_follower *f = userdata;
    return atomic_load(&f->stop) ? 1 : 0;
}

/* The `Authorization: Bearer` header of the proxy's credential token (read
 * at each connection: a rotated token is picked up), or NULL when it cannot
 * be read (logged when LOUD). The caller wipes and frees it. */
static char *bearer_header(proxy_follower *f, bool loud)
{
    char *token = NULL;
    size_t token_len = 0;
    int e = read_file(f->token_file, TOKEN_MAX, &token, &token_len);
    if (e < 0) {
        if (loud)
            log_fields(LOG_LEVEL_ERROR, "cannot read the proxy's credential token", "path", f->token_file, "error",
                       strerror(-e), NULL);
        return NULL;
    }
    while (token_len && (token[token_len - 1] == '\n' || token[token_len - 1] == '\r' || token[token_len - 1] == ' '))
        token[--token_len] = 0;
    char *auth = NULL;
    if (asprintf(&auth, "Authorization: Bearer %s", token) < 0)
        auth = NULL;
    OPENSSL_cleanse(token, token_len);
    free(token);
    return auth;
}

/* One connection: streams until it ends. Returns 0 when it ended cleanly
 * or the follower is stopping, a negative errno otherwise (logged when
 * LOUD). */
static int stream_once(proxy_follower *f, bool loud)
{
    char *auth = NULL, *path = NULL;
    if (!f->api_role_url && (auth = bearer_header(f, loud), !auth))
        return -EACCES;
    /* resumed only in the same store: the epoch tells a reset one */
    if (f->state.revision >= 0 ? asprintf(&path, "/v1/proxy/config?since=%lld&epoch=%016llx",
                                          (long long)f->state.revision, (unsigned long long)f->state.epoch) < 0
                               : asprintf(&path, "/v1/proxy/config") < 0)
        path = NULL;
    char *url = NULL;
    if (path && !f->api_role_url && asprintf(&url, "%s%s", f->api_url, path) < 0)
        url = NULL;
    if (!path || (!f->api_role_url && !url)) {
        if (auth)
            OPENSSL_cleanse(auth, strlen(auth));
        free(auth);
        free(path);
        return -ENOMEM;
    }
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = auth ? curl_slist_append(NULL, auth) : NULL, *route = NULL;
    if (auth) {
        OPENSSL_cleanse(auth, strlen(auth));
        free(auth);
    }
    headers = curl_slist_append(headers, "Accept: text/event-stream");
    f->status = 0;
    strbuf_reset(&f->pending);
    strbuf_reset(&f->error_body);
    CURLcode rc = CURLE_FAILED_INIT;
    int target = 0;
    if (curl && headers && f->api_role_url) /* the role certificate; the server must name the api role */
        target = peer_curl_target(curl, f->api_role_url, "api", path, &route);
    else if (curl && headers) {
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_CAINFO, f->ca_file);
    }
    if (target < 0 && loud)
        log_fields(LOG_LEVEL_ERROR, "cannot reach the api's listener for roles (peers.apiRoles, api.roleListen)",
                   "address", f->api_role_url, "error", strerror(-target), NULL);
    if (curl && headers && target == 0) {
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, f);
        curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(curl, CURLOPT_XFERINFODATA, f);
        curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, (long)IDLE_TIMEOUT_S);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
        rc = curl_easy_perform(curl);
        if (f->api_role_url)
            peer_tls_count_connections(curl, f->api_role_url, "api");
    }
    for (struct curl_slist *l = headers; l; l = l->next) /* the header list held the token */
        OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(headers);
    curl_slist_free_all(route);
    curl_easy_cleanup(curl);
    free(url);
    free(path);
    OPENSSL_cleanse(f->pending.data, f->pending.len);
    strbuf_reset(&f->pending);
    if (atomic_load(&f->stop))
        return 0;
    if (f->status && f->status != 200) {
        if (loud) {
            char status[8];
            snprintf(status, sizeof(status), "%ld", f->status);
            log_fields(LOG_LEVEL_ERROR, "the API refused the proxy's configuration stream; check the proxy's "
                       "credential (proxy.token, or its role certificate on api.roleListen) and the cloister-proxy "
                       "policy", "status", status, "answer",
                       f->error_body.data ? f->error_body.data : "", NULL);
        }
        return -EACCES;
    }
    if (rc != CURLE_OK && loud && f->api_role_url && peer_curl_tls_refused(rc))
        log_fields(LOG_LEVEL_ERROR, "the mutual TLS handshake with the api's listener for roles failed; check that "
                   "it presents the api role's certificate and takes the proxy's (pki.dir)", "address",
                   f->api_role_url, "error", curl_easy_strerror(rc), NULL);
    else if (rc != CURLE_OK && loud)
        log_fields(LOG_LEVEL_WARN, "configuration stream from the API interrupted; serving the last configuration "
                   "and reconnecting", "error", curl_easy_strerror(rc), NULL);
    return rc == CURLE_OK ? 0 : -EIO;
}

/* Sleeps MS unless stopping. */
static void pause_ms(proxy_follower *f, unsigned ms)
{
    for (unsigned slept = 0; slept < ms && !atomic_load(&f->stop); slept += 50)
        usleep(50 * 1000);
}

static void *follow_main(void *arg)
{
    proxy_follower *f = arg;
    unsigned backoff = BACKOFF_MIN_MS;
    bool loud = true;
    while (!atomic_load(&f->stop)) {
        uint64_t started = time_mono_ns();
        int e = stream_once(f, loud);
        if (atomic_load(&f->stop))
            break;
        /* a stream that lasted resets the backoff; failures are logged once per outage */
        if (time_mono_ns() - started > 10 * NSEC_PER_SEC) {
            backoff = BACKOFF_MIN_MS;
            loud = true;
        } else {
            loud = false;
        }
        if (e == 0)
            loud = true;
        pause_ms(f, backoff);
        backoff = MIN(backoff * 2, (unsigned)BACKOFF_MAX_MS);
    }
    return NULL;
}

/* Frees F once its thread is gone (or was never started). */
static void follower_free(proxy_follower *f)
{
    proxy_config_unref(f->published);
    proxy_state_done(&f->state);
    free(f->api_url);
    free(f->api_role_url);
    free(f->ca_file);
    free(f->token_file);
    free(f->domain);
    strbuf_free_secure(&f->pending);
    strbuf_free(&f->error_body);
    free(f);
}

int proxy_follow_start(const proxy_follow_config *cfg, proxy_follower **ret)
{
    proxy_follower *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    strbuf_init_secure(&f->pending, PROXY_STREAM_MAX);
    strbuf_init(&f->error_body, 8192);
    f->api_url = strdup(cfg->api_url);
    if (cfg->api_role_url && cfg->api_role_url[0] && !(f->api_role_url = strdup(cfg->api_role_url)))
        f->api_url = (free(f->api_url), NULL); /* reported as out of memory below */
    f->ca_file = strdup(cfg->ca_file);
    f->token_file = strdup(cfg->token_file);
    f->domain = strdup(cfg->domain);
    f->metrics = cfg->metrics;
    int e = proxy_state_init(&f->state);
    if (e == 0 && (!f->api_url || !f->ca_file || !f->token_file || !f->domain))
        e = -ENOMEM;
    if (e == 0)
        proxy_metrics_follow_started(f->metrics);
    if (e == 0 && pthread_create(&f->thread, NULL, follow_main, f) != 0)
        e = -EAGAIN;
    if (e < 0) {
        follower_free(f);
        return e;
    }
    *ret = f;
    return 0;
}

void proxy_follow_stop(proxy_follower *f)
{
    if (!f)
        return;
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    follower_free(f);
}
