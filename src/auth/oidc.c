#include "auth/oidc.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "basic/strbuf.h"

#define CONNECT_TIMEOUT_S 5L
#define TOTAL_TIMEOUT_S 15L

void oidc_metadata_done(oidc_metadata *m)
{
    free(m->issuer);
    free(m->authorization_endpoint);
    free(m->token_endpoint);
    free(m->jwks_uri);
    free(m->end_session_endpoint);
    *m = (oidc_metadata){0};
}

/* A copy of the https URL member NAME of DOC into *RET; NULL when absent and
 * OPTIONAL. Returns 0, -EBADMSG or -ENOMEM. */
static int take_url(const json_t *doc, const char *name, bool optional, char **ret)
{
    const json_t *v = json_object_get(doc, name);
    if (!v && optional) {
        *ret = NULL;
        return 0;
    }
    const char *s = json_string_value(v);
    if (!s || strncmp(s, "https://", 8) != 0 || strlen(s) != json_string_length(v) || strlen(s) > 2048 ||
        strpbrk(s, " \t\r\n\"<>\\^`{|}"))
        return -EBADMSG;
    *ret = strdup(s);
    return *ret ? 0 : -ENOMEM;
}

int oidc_metadata_parse(const json_t *doc, const char *issuer, oidc_metadata *ret)
{
    const char *iss = json_string_value(json_object_get(doc, "issuer"));
    if (!iss || strcmp(iss, issuer) != 0)
        return -EBADMSG; /* OpenID Connect Discovery 1.0, 4.3 */
    oidc_metadata m = {0};
    int r = take_url(doc, "issuer", false, &m.issuer);
    if (r == 0)
        r = take_url(doc, "authorization_endpoint", false, &m.authorization_endpoint);
    if (r == 0)
        r = take_url(doc, "token_endpoint", false, &m.token_endpoint);
    if (r == 0)
        r = take_url(doc, "jwks_uri", false, &m.jwks_uri);
    if (r == 0)
        r = take_url(doc, "end_session_endpoint", true, &m.end_session_endpoint);
    if (r < 0) {
        oidc_metadata_done(&m);
        return r;
    }
    *ret = m;
    return 0;
}

/* libcurl write callback into a capped buffer. */
static size_t on_body(char *data, size_t size, size_t n, void *userdata)
{
    return strbuf_append(userdata, data, size * n) == 0 ? size * n : 0;
}

/* The form-urlencoding of S (heap), as RFC 6749 2.3.1 wants for Basic. */
static char *form_encode(CURL *c, const char *s)
{
    char *e = curl_easy_escape(c, s, 0);
    char *copy = e ? strdup(e) : NULL;
    curl_free(e);
    return copy;
}

int oidc_http_json(const char *url, const char *ca_pem, const char *form, const char *client_id,
                   const char *client_secret, json_t **ret_doc, long *ret_status)
{
    CURL *c = curl_easy_init();
    if (!c)
        return -ENOMEM;
    _cleanup_strbuf_ strbuf body;
    strbuf_init(&body, OIDC_HTTP_MAX);
    struct curl_slist *headers = curl_slist_append(NULL, "Accept: application/json");
    _cleanup_free_ char *user = client_id ? form_encode(c, client_id) : NULL;
    char *pass = client_secret ? form_encode(c, client_secret) : NULL;
    CURLcode rc = headers && (!client_id || (user && pass)) ? CURLE_OK : CURLE_OUT_OF_MEMORY;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    SET(CURLOPT_TIMEOUT, TOTAL_TIMEOUT_S);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, &body);
    if (ca_pem) {
        struct curl_blob blob = {.data = (void *)ca_pem, .len = strlen(ca_pem), .flags = CURL_BLOB_COPY};
        SET(CURLOPT_CAINFO_BLOB, &blob);
    }
    if (form) {
        SET(CURLOPT_POSTFIELDS, form);
    }
    if (client_id) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, user);
        SET(CURLOPT_PASSWORD, pass);
    }
#undef SET
    long status = 0;
    if (rc == CURLE_OK)
        rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    if (pass) {
        OPENSSL_cleanse(pass, strlen(pass));
        free(pass);
    }
    if (rc == CURLE_WRITE_ERROR)
        return -E2BIG;
    if (rc != CURLE_OK)
        return -EIO;
    json_t *doc = json_loadb(body.data ? body.data : "", body.len, JSON_REJECT_DUPLICATES, NULL);
    if (body.data)
        OPENSSL_cleanse(body.data, body.len); /* token answers hold secrets */
    if (!doc)
        return -EBADMSG;
    *ret_doc = doc;
    *ret_status = status;
    return 0;
}

int oidc_jwks_parse(const json_t *jwks, jwt_key **keys)
{
    size_t i, n = 0;
    const json_t *k;
    json_array_foreach(json_object_get(jwks, "keys"), i, k)
    {
        if (n == OIDC_MAX_KEYS)
            break;
        if (!json_is_string(json_object_get(k, "kid")))
            continue; /* keys are selected by kid */
        if (jwt_key_from_json(k, JWT_ALG_RS256, &keys[n]) == 0)
            n++;
    }
    return n ? (int)n : -EBADMSG;
}

int oidc_random(char out[OIDC_RANDOM_LEN + 1])
{
    uint8_t rnd[32];
    int r = random_bytes(rnd, sizeof(rnd));
    if (r < 0)
        return r;
    base64_encode(rnd, sizeof(rnd), out, true);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    return 0;
}

void oidc_pkce_challenge(const char *verifier, char out[OIDC_RANDOM_LEN + 1])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)verifier, strlen(verifier), d);
    base64_encode(d, sizeof(d), out, true);
}

int oidc_id_token_verify(const char *token, size_t len, jwt_key *const *keys, size_t n_keys,
                         const oidc_expect *expect, json_t **ret_claims)
{
    jwt_expect ex = {.issuer = expect->issuer, .audience = expect->client_id, .now = expect->now,
                     .leeway = JWT_DEFAULT_LEEWAY_S};
    json_auto_t *claims = NULL;
    int r = jwt_verify(token, len, keys, n_keys, &ex, &claims);
    if (r < 0)
        return r;
    if (!json_is_string(json_object_get(claims, "sub")) || !json_is_integer(json_object_get(claims, "iat")))
        return -EBADMSG;
    const json_t *aud = json_object_get(claims, "aud"), *azp = json_object_get(claims, "azp");
    if ((json_is_array(aud) && json_array_size(aud) > 1 && !azp) ||
        (azp && (!json_is_string(azp) || strcmp(json_string_value(azp), expect->client_id) != 0)))
        return -EPERM;
    const json_t *nonce = json_object_get(claims, "nonce");
    if (!json_is_string(nonce) || json_string_length(nonce) != strlen(expect->nonce) ||
        !memeq_consttime(json_string_value(nonce), expect->nonce, strlen(expect->nonce)))
        return -EPROTO;
    *ret_claims = TAKE_PTR(claims);
    return 0;
}

const char *oidc_strerror(int r)
{
    switch (r) {
    case -EPERM:
        return "ID token for another client (aud/azp)";
    case -EPROTO:
        return "ID token nonce does not match the login";
    case -EBADMSG:
        return "malformed ID token";
    default:
        return jwt_strerror(r);
    }
}
