#include "agent/channel.h"

#include <curl/curl.h>
#include <errno.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/strbuf.h"

/* The answer being read, and why the write callback stopped it. */
typedef struct sink {
    strbuf *buf;
    int error; /* strbuf_append()'s: -E2BIG past CHANNEL_RESPONSE_MAX, -ENOMEM */
} sink;

static size_t on_data(char *p, size_t size, size_t n, void *userdata)
{
    sink *s = userdata;
    s->error = strbuf_append(s->buf, p, size * n);
    return s->error == 0 ? size * n : 0; /* 0 aborts the transfer */
}

/* Maps a failed transfer to a negative errno. */
static int curl_errno(CURLcode c, const sink *s)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_WRITE_ERROR:
        return s->error < 0 ? s->error : -EIO;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

int channel_call(const char *socket, const char *path, const void *body, size_t len, const char *content_type,
                 strbuf *answer)
{
    char url[256], type_header[96];
    if ((size_t)snprintf(url, sizeof(url), "http://channel%s", path) >= sizeof(url))
        return -ENAMETOOLONG;
    snprintf(type_header, sizeof(type_header), "Content-Type: %s", content_type);
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, type_header);
    if (!curl || !headers) {
        curl_easy_cleanup(curl);
        curl_slist_free_all(headers);
        return -ENOMEM;
    }
    sink to = {.buf = answer};
    curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, socket);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &to);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)CHANNEL_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    CURLcode c = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    if (c != CURLE_OK)
        return curl_errno(c, &to);
    return status >= 100 && status <= 599 ? (int)status : -EBADMSG;
}

int channel_post(const char *socket, const char *path, const json_t *body, json_t **ret)
{
    _cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
    if (!text)
        return -ENOMEM;
    _cleanup_strbuf_ strbuf answer;
    strbuf_init(&answer, CHANNEL_RESPONSE_MAX);
    int status = channel_call(socket, path, text, strlen(text), "application/json", &answer);
    if (status < 0)
        return status;
    json_t *j = json_loadb(answer.data ? answer.data : "", answer.len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return -EBADMSG;
    }
    *ret = j;
    return status;
}

const char *channel_error_message(const json_t *answer, const char *fallback)
{
    const char *m = json_string_value(json_object_get(json_object_get(answer, "error"), "message"));
    return m ? m : fallback;
}
