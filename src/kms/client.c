#include "kms/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/strbuf.h"
#include "daemon/peer-tls.h"

#define POOL_SIZE 16

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static CURL *pool[POOL_SIZE];
static size_t pool_n;
static struct curl_slist *json_headers; /* shared by every handle; freed with the pool */

static size_t on_data(char *p, size_t size, size_t n, void *userdata);

/* A pooled handle (its connection kept alive, its fixed options set) or a
 * new one; NULL when out of memory. */
static CURL *handle_take(void)
{
    CURL *h = NULL;
    pthread_mutex_lock(&pool_lock);
    if (pool_n > 0)
        h = pool[--pool_n];
    if (!h && !json_headers)
        json_headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *headers = json_headers;
    pthread_mutex_unlock(&pool_lock);
    if (h || !headers || !(h = curl_easy_init()))
        return h;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    return h;
}

static void handle_give(CURL *h)
{
    pthread_mutex_lock(&pool_lock);
    if (pool_n < POOL_SIZE) {
        pool[pool_n++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

void kms_client_cleanup(void)
{
    pthread_mutex_lock(&pool_lock);
    while (pool_n > 0)
        curl_easy_cleanup(pool[--pool_n]);
    curl_slist_free_all(json_headers);
    json_headers = NULL;
    pthread_mutex_unlock(&pool_lock);
}

/* libcurl write callback: appends to the capped answer; a short count stops the transfer. */
static size_t on_data(char *p, size_t size, size_t n, void *userdata)
{
    return strbuf_append(userdata, p, size * n) == 0 ? size * n : 0;
}

int kms_call(const char *address, const char *path, const json_t *body, json_t **ret)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text)
        return -ENOMEM;
    CURL *h = handle_take();
    if (!h) {
        free(text);
        return -ENOMEM;
    }
    struct curl_slist *route = NULL;
    int r = peer_curl_target(h, address, "kms", path, &route);
    if (r < 0) {
        handle_give(h);
        free(text);
        return r;
    }
    strbuf out;
    strbuf_init(&out, KMS_RESPONSE_MAX);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, text ? text : "{}");
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    CURLcode c = curl_easy_perform(h);
    peer_tls_count_connections(h, address, "kms");
    curl_easy_setopt(h, CURLOPT_CONNECT_TO, NULL);
    curl_slist_free_all(route);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (text) {
        /* requests carry plaintext and passphrases */
        explicit_bzero(text, strlen(text));
        free(text);
    }
    if (c != CURLE_OK) {
        r = c == CURLE_WRITE_ERROR        ? -E2BIG
            : c == CURLE_COULDNT_CONNECT ? -ECONNREFUSED
            : peer_curl_tls_refused(c)   ? -EACCES
                                         : -EIO;
        curl_easy_cleanup(h);
    } else {
        json_t *doc = json_loadb(out.data ? out.data : "", out.len, 0, NULL);
        r = doc ? (int)status : -EBADMSG;
        if (doc)
            *ret = doc;
        handle_give(h);
    }
    strbuf_free_secure(&out);
    return r;
}

void kms_json_wipe(json_t *v)
{
    const char *k;
    json_t *item;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (v->refcount == 1) /* a shared string is still in use elsewhere */
            OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
        break;
    case JSON_OBJECT:
        json_object_foreach(v, k, item) kms_json_wipe(item);
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, item) kms_json_wipe(item);
        break;
    default:
        break;
    }
}

void kms_json_wipe_decref(json_t *v)
{
    if (v && v->refcount == 1)
        kms_json_wipe(v);
    json_decref(v);
}
