/* Unit tests of the browser login handoff: the rd parser's accepts and
 * refusals, and sealed handoffs opened the way the proxy opens them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <string.h>

#include "api/handoff.h"

#define BIND "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#include "basic/encoding.h"

static void expect_ok(const char *text, const char *authority, const char *host, const char *path, const char *url)
{
    login_rd rd;
    const char *why = NULL;
    int r = login_rd_parse(text, strlen(text), &rd, &why);
    cr_assert(r == 0, "%s: refused (%s)", text, why ? why : "?");
    cr_expect_str_eq(rd.authority, authority, "%s", text);
    cr_expect_str_eq(rd.host, host, "%s", text);
    cr_expect_str_eq(rd.path, path, "%s", text);
    cr_expect_str_eq(rd.url, url, "%s", text);
}

static void expect_refused(const char *text, const char *word)
{
    login_rd rd;
    const char *why = NULL;
    cr_expect(login_rd_parse(text, strlen(text), &rd, &why) == -EINVAL, "%s: accepted", text);
    cr_expect(why && strstr(why, word), "%s: reason '%s' lacks '%s'", text, why ? why : "", word);
}

Test(login_rd, accepts_service_urls)
{
    expect_ok("http://wiki.localhost:8080/a/b?c=d&e", "wiki.localhost:8080", "wiki.localhost", "/a/b?c=d&e",
              "http://wiki.localhost:8080/a/b?c=d&e");
    expect_ok("HTTPS://Wiki.Example.COM./x#frag", "Wiki.Example.COM.", "wiki.example.com", "/x",
              "https://Wiki.Example.COM./x");
    expect_ok("https://wiki.localhost", "wiki.localhost", "wiki.localhost", "/", "https://wiki.localhost/");
    expect_ok("https://wiki.localhost?q=1", "wiki.localhost", "wiki.localhost", "/?q=1", "https://wiki.localhost/?q=1");
    expect_ok("http://w:65535/%E2%82%AC", "w:65535", "w", "/%E2%82%AC", "http://w:65535/%E2%82%AC");
}

Test(login_rd, refuses_what_could_lead_elsewhere)
{
    expect_refused("", "absolute");
    expect_refused("/relative", "absolute");
    expect_refused("javascript:alert(1)", "absolute");
    expect_refused("ftp://wiki.localhost/", "absolute");
    expect_refused("//evil.example/", "absolute");
    expect_refused("https://wiki.localhost@evil.example/", "user");
    expect_refused("https://evil.example\\@wiki.localhost/", "backslash");
    expect_refused("https:///x", "no host");
    expect_refused("https://:443/x", "no host");
    expect_refused("https://[::1]/x", "DNS name");
    expect_refused("https://-x.example/", "DNS name");
    expect_refused("https://a..b/", "DNS name");
    expect_refused("https://wiki.localhost:0/", "port");
    expect_refused("https://wiki.localhost:65536/", "port");
    expect_refused("https://wiki.localhost:/", "port");
    expect_refused("https://wiki.localhost:12a/", "port");
    expect_refused("https://wiki.localhost//evil.example/", "//");
    expect_refused("https://wiki.localhost/\\evil.example/", "//");
    expect_refused("https://wiki.localhost/a b", "printable");
    expect_refused("https://wiki.localhost/a\r\nSet-Cookie:x", "printable");
    expect_refused("https://wiki.localhost/a\\b", "backslash");
    char longer[LOGIN_RD_MAX + 40];
    memset(longer, 'a', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = 0;
    memcpy(longer, "https://w/", 10);
    expect_refused(longer, "2048");
    login_rd rd;
    cr_expect(login_rd_parse("https://w/\0x", 12, &rd, NULL) == -EINVAL);
}

/* Opens ENC as the proxy does; the claims or NULL. */
static json_t *open_handoff(const uint8_t key[32], const char *enc)
{
    uint8_t raw[HANDOFF_ENCODED_MAX], plain[HANDOFF_ENCODED_MAX];
    long n = base64_decode(enc, strlen(enc), raw, sizeof(raw), true);
    if (n < 12 + 16 + 2)
        return NULL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int out = 0, fin = 0;
    const char *aad = "cloister-handoff-v1";
    bool ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, raw) == 1 &&
              EVP_DecryptUpdate(ctx, NULL, &out, (const uint8_t *)aad, (int)strlen(aad)) == 1 &&
              EVP_DecryptUpdate(ctx, plain, &out, raw + 12, (int)(n - 12 - 16)) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, raw + n - 16) == 1 &&
              EVP_DecryptFinal_ex(ctx, plain + out, &fin) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? json_loadb((const char *)plain, (size_t)(out + fin), JSON_REJECT_DUPLICATES, NULL) : NULL;
}

Test(handoff, seals_what_the_proxy_opens)
{
    uint8_t key[32], other[32];
    memset(key, 7, sizeof(key));
    memset(other, 8, sizeof(other));
    char *a = NULL, *b = NULL;
    cr_assert(handoff_seal(key, "tok.en.x", "wiki.localhost:8080", "/p?q=1", BIND, 1700000060, &a) == 0);
    cr_assert(handoff_seal(key, "tok.en.x", "wiki.localhost:8080", "/p?q=1", BIND, 1700000060, &b) == 0);
    cr_expect(strcmp(a, b) != 0, "a fresh IV and nonce each time");
    cr_expect(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == strlen(a));
    json_t *c = open_handoff(key, a), *d = open_handoff(key, b);
    cr_assert(c && d);
    cr_expect_str_eq(json_string_value(json_object_get(c, "token")), "tok.en.x");
    cr_expect_str_eq(json_string_value(json_object_get(c, "host")), "wiki.localhost:8080");
    cr_expect_str_eq(json_string_value(json_object_get(c, "path")), "/p?q=1");
    cr_expect(json_integer_value(json_object_get(c, "exp")) == 1700000060);
    const char *nonce = json_string_value(json_object_get(c, "nonce"));
    cr_expect(nonce && strlen(nonce) == 32 && strspn(nonce, "0123456789abcdef") == 32);
    cr_expect_str_neq(nonce, json_string_value(json_object_get(d, "nonce")));
    json_decref(c);
    json_decref(d);
    cr_expect(open_handoff(other, a) == NULL, "another key does not open it");
    a[20] = a[20] == 'A' ? 'B' : 'A';
    cr_expect(open_handoff(key, a) == NULL, "a flipped byte does not open");
    free(a);
    free(b);
}

Test(handoff, refuses_what_the_proxy_would_not_take)
{
    uint8_t key[32] = {0};
    static char token[8000];
    memset(token, 'a', sizeof(token) - 1);
    char *out = NULL;
    cr_expect(handoff_seal(key, token, "w", "/", BIND, 1, &out) == -E2BIG);
    cr_expect(out == NULL);
}

Test(handoff, bind_must_be_64_lower_case_hex)
{
    uint8_t key[HANDOFF_KEY_LEN] = {0};
    char *out = NULL;
    cr_expect(login_bind_valid(BIND));
    cr_expect(!login_bind_valid("0123"));
    cr_expect(!login_bind_valid("0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"));
    cr_expect(!login_bind_valid(NULL));
    cr_expect(handoff_seal(key, "t.o.k", "w", "/", "nothex", 1, &out) == -EINVAL && out == NULL);
}
