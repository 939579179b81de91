#include "audit/client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "basic/strbuf.h"
#include "daemon/peer-tls.h"
#include "telemetry/telemetry.h"

struct audit_client {
    CURL *curl;
    char role[PEER_TLS_ROLE_MAX];
    char address[600]; /* a socket's path (at most sun_path's size) or an https:// URL */
};

int audit_client_new(const char *role, const char *address, audit_client **ret)
{
    audit_client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    size_t max = peer_address_is_url(address) ? sizeof(c->address) : sizeof(((struct sockaddr_un *)0)->sun_path);
    if (strlen(address) >= max || strlen(role) >= sizeof(c->role)) {
        free(c);
        return -ENAMETOOLONG;
    }
    strcpy(c->address, address);
    strcpy(c->role, role);
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        return -ENOMEM;
    }
    *ret = c;
    return 0;
}

void audit_client_free(audit_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

static size_t on_data(char *p, size_t size, size_t n, void *userdata)
{
    strbuf *b = userdata;
    return strbuf_append(b, p, size * n) == 0 ? size * n : 0;
}

int audit_client_request(audit_client *c, const char *method, const char *path, const char *body, size_t len,
                         long timeout_ms, long *ret_status, char **ret_body, size_t *ret_len)
{
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, AUDIT_CLIENT_RESPONSE_MAX);
    CURL *h = c->curl;
    curl_easy_reset(h);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    char traceparent[70]; /* the caller's trace goes on to the role it asks (docs/telemetry.md) */
    if (headers && telemetry_traceparent_header(traceparent))
        headers = curl_slist_append(headers, traceparent);
    if (!headers)
        return -ENOMEM;
    struct curl_slist *route = NULL;
    int r = peer_curl_target(h, c->address, c->role, path, &route);
    if (r < 0) {
        curl_slist_free_all(headers);
        return r;
    }
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method); /* DELETE */
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    CURLcode rc = curl_easy_perform(h);
    peer_tls_count_connections(h, c->address, c->role);
    curl_easy_setopt(h, CURLOPT_CONNECT_TO, NULL);
    curl_slist_free_all(route);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK)
        return rc == CURLE_WRITE_ERROR       ? -E2BIG
               : rc == CURLE_OUT_OF_MEMORY   ? -ENOMEM
               : rc == CURLE_COULDNT_CONNECT ? -ECONNREFUSED
               : peer_curl_tls_refused(rc)   ? -EACCES
                                             : -EIO;
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (strbuf_putc(&out, 0) < 0) /* an empty body still gets a heap buffer */
        return -ENOMEM;
    size_t n = out.len - 1;
    *ret_status = status;
    *ret_len = n;
    *ret_body = strbuf_steal(&out);
    return 0;
}
