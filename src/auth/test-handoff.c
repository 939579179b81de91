/* Unit tests of the browser login, both halves: the rd parser's accepts and
 * refusals, the login links' mac, and sealed handoffs opened as the proxy
 * opens them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "auth/handoff.h"

#define BIND "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

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
    handoff_claims c, d, x = {0};
    const char *why = NULL;
    cr_assert(handoff_open(key, a, strlen(a), &c, &why) == 0, "%s", why);
    cr_assert(handoff_open(key, b, strlen(b), &d, NULL) == 0);
    cr_expect_str_eq(c.token, "tok.en.x");
    cr_expect_str_eq(c.host, "wiki.localhost:8080");
    cr_expect_str_eq(c.path, "/p?q=1");
    cr_expect_str_eq(c.bind, BIND);
    cr_expect(c.exp == 1700000060);
    cr_expect(strlen(c.nonce) == 32 && strspn(c.nonce, "0123456789abcdef") == 32);
    cr_expect_str_neq(c.nonce, d.nonce);
    handoff_claims_done(&c);
    handoff_claims_done(&d);
    cr_expect(c.doc == NULL && c.token == NULL);
    cr_expect(handoff_open(other, a, strlen(a), &x, &why) == -EBADMSG, "another key does not open it");
    cr_expect(strstr(why, "not for this proxy") && x.doc == NULL);
    cr_expect(handoff_open(key, a, strlen(a) - 1, &x, NULL) == -EBADMSG, "a cut one does not open");
    cr_expect(handoff_open(key, "", 0, &x, NULL) == -EBADMSG);
    cr_expect(handoff_open(key, "!!!!", 4, &x, NULL) == -EBADMSG);
    a[20] = a[20] == 'A' ? 'B' : 'A';
    cr_expect(handoff_open(key, a, strlen(a), &x, NULL) == -EBADMSG, "a flipped byte does not open");
    free(a);
    free(b);
}

Test(handoff, refuses_claims_that_could_not_go_in_a_header)
{
    uint8_t key[HANDOFF_KEY_LEN] = {1};
    static const struct {
        const char *token, *path;
    } bad[] = {{"a;b", "/"}, {"a b", "/"}, {"t", "//evil.example/"}, {"t", "/\\evil"}, {"t", "x"}, {"t", "/a\r\nb"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *h = NULL;
        cr_assert(handoff_seal(key, bad[i].token, "w", bad[i].path, BIND, 1, &h) == 0);
        handoff_claims c = {0};
        const char *why = NULL;
        cr_expect(handoff_open(key, h, strlen(h), &c, &why) == -EINVAL, "%zu", i);
        cr_expect(why && strstr(why, "incomplete") && c.doc == NULL, "%zu", i);
        free(h);
    }
}

Test(login_link, mac_binds_rd_bind_and_exp)
{
    uint8_t key[HANDOFF_KEY_LEN];
    memset(key, 7, sizeof(key));
    const char *url = "http://wiki.localhost:8080/p?q=1";
    char mac[LOGIN_MAC_LEN + 1], again[LOGIN_MAC_LEN + 1];
    cr_assert(login_link_mac(key, url, BIND, 1700000600, mac) == 0);
    cr_assert(login_link_mac(key, url, BIND, 1700000600, again) == 0);
    cr_expect_str_eq(mac, again, "deterministic");
    cr_expect(strlen(mac) == LOGIN_MAC_LEN && strspn(mac, "0123456789abcdef") == LOGIN_MAC_LEN);
    const char *why = NULL;
    cr_expect(login_link_check(key, url, BIND, "1700000600", mac, 1700000000, &why) == 0, "%s", why);
    /* any part changed */
    cr_expect(login_link_check(key, "http://evil.localhost:8080/p?q=1", BIND, "1700000600", mac, 1700000000, &why) ==
              -EKEYREJECTED);
    cr_expect(strstr(why, "not issued by the proxy"));
    char other_bind[] = BIND;
    other_bind[0] = '1';
    cr_expect(login_link_check(key, url, other_bind, "1700000600", mac, 1700000000, NULL) == -EKEYREJECTED);
    cr_expect(login_link_check(key, url, BIND, "1700000601", mac, 1700000000, NULL) == -EKEYREJECTED);
    char flipped[LOGIN_MAC_LEN + 1];
    memcpy(flipped, mac, sizeof(flipped));
    flipped[10] = flipped[10] == '0' ? '1' : '0';
    cr_expect(login_link_check(key, url, BIND, "1700000600", flipped, 1700000000, NULL) == -EKEYREJECTED);
    /* the MAC key is derived: the sealing key itself does not make the mac */
    uint8_t other[HANDOFF_KEY_LEN];
    memset(other, 8, sizeof(other));
    cr_expect(login_link_check(other, url, BIND, "1700000600", mac, 1700000000, NULL) == -EKEYREJECTED);
    /* expired, or further ahead than the proxy issues */
    cr_expect(login_link_check(key, url, BIND, "1700000600", mac, 1700000601, &why) == -ETIMEDOUT);
    cr_expect(strstr(why, "expired"));
    cr_expect(login_link_check(key, url, BIND, "1700000600", mac, 1700000600 - LOGIN_LINK_TTL_S - 61, NULL) ==
              -ETIMEDOUT);
    /* missing or malformed parts */
    cr_expect(login_link_check(key, url, BIND, NULL, mac, 1700000000, &why) == -EINVAL);
    cr_expect(strstr(why, "mac"));
    cr_expect(login_link_check(key, url, BIND, "1700000600", NULL, 1700000000, NULL) == -EINVAL);
    cr_expect(login_link_check(key, url, BIND, "-1", mac, 1700000000, NULL) == -EINVAL);
    cr_expect(login_link_check(key, url, BIND, "17000006001700000600", mac, 1700000000, NULL) == -EINVAL);
    cr_expect(login_link_check(key, url, "nothex", "1700000600", mac, 1700000000, NULL) == -EINVAL);
    cr_expect(login_link_mac(key, url, "nothex", 1, mac) == -EINVAL);
}

Test(login_link, bind_is_the_hex_sha256_of_the_cookie)
{
    char bind[LOGIN_BIND_LEN + 1];
    login_bind_of("abc", 3, bind);
    cr_expect_str_eq(bind, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_expect(login_bind_valid(bind));
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
