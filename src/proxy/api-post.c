/* The proxy's blocking calls to the API's public listener on behalf of a
 * browser (sign-out, taking a login handoff): one place for how they are
 * made. The configuration stream has its own client (follow.c). */
#include <curl/curl.h>
#include <stdio.h>

#include "proxy/corridor.h"

/* Keeps the answer's body in the strbuf USERDATA (up to its cap). */
static size_t keep_answer(char *data, size_t size, size_t n, void *userdata)
{
    return strbuf_append(userdata, data, size * n) == 0 ? size * n : 0;
}

/* Discards the answer's body. */
static size_t ignore_answer(char *data, size_t size, size_t n, void *userdata)
{
    (void)data, (void)userdata;
    return size * n;
}

long proxy_api_post(const proxy_settings *s, const char *path, struct curl_slist *headers, const char *body,
                    long timeout_ms, strbuf *answer, char error[CURL_ERROR_SIZE])
{
    char url[512];
    long status = 0;
    error[0] = '\0';
    if (snprintf(url, sizeof(url), "%s%s", s->api_url, path) >= (int)sizeof(url)) {
        snprintf(error, CURL_ERROR_SIZE, "the API's URL is too long");
        return 0;
    }
    CURL *c = curl_easy_init();
    CURLcode rc = CURLE_FAILED_INIT;
    if (c && headers) {
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CAINFO, s->api_ca_file);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, answer ? keep_answer : ignore_answer);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, answer);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
        rc = curl_easy_perform(c);
        if (rc == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    if (rc != CURLE_OK && !error[0])
        snprintf(error, CURL_ERROR_SIZE, "%s", curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    return status;
}
