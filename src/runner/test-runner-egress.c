/* The pure checks of allow-only egress: the address classifier, hosts and
 * the ClientHello server-name parser (runner/egress-check.h). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "runner/egress-check.h"

/* egress_address_refusal() of the address TEXT (IPv4 or IPv6). */
static const char *refusal(const char *text)
{
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert(egress_host_literal(text, 443, &ss, &len), "%s is an address", text);
    return egress_address_refusal((struct sockaddr *)&ss);
}

Test(egress, addresses_that_may_not_be_reached_through_a_name)
{
    static const struct {
        const char *addr, *why;
    } cases[] = {
        {"127.0.0.1", "loopback"},      {"127.255.0.9", "loopback"},    {"10.1.2.3", "private"},
        {"172.16.0.1", "private"},      {"172.31.255.255", "private"},  {"192.168.1.1", "private"},
        {"169.254.1.1", "link-local"},  {"169.254.169.254", "metadata"}, {"100.64.0.1", "cgnat"},
        {"100.127.255.255", "cgnat"},   {"0.0.0.0", "unspecified"},      {"0.1.2.3", "unspecified"},
        {"224.0.0.1", "multicast"},     {"239.255.255.250", "multicast"}, {"255.255.255.255", "broadcast"},
        {"240.0.0.1", "reserved"},      {"192.0.2.1", "reserved"},      {"::1", "loopback"},
        {"::", "unspecified"},          {"fc00::1", "private"},          {"fd12:3456::1", "private"},
        {"fe80::1", "link-local"},      {"febf::1", "link-local"},       {"ff02::1", "multicast"},
        {"fd00:ec2::254", "metadata"},  {"::ffff:127.0.0.1", "loopback"}, {"::ffff:10.0.0.1", "private"},
        {"::ffff:169.254.169.254", "metadata"}, {"2001:db8::1", "reserved"}, {"2002:a00:1::1", "reserved"},
        {"64:ff9b::a00:1", "reserved"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *why = refusal(cases[i].addr);
        cr_assert(why && strcmp(why, cases[i].why) == 0, "%s: expected %s, got %s", cases[i].addr, cases[i].why,
                  why ? why : "(allowed)");
    }
}

Test(egress, public_addresses_are_allowed)
{
    static const char *const allowed[] = {"1.1.1.1", "8.8.8.8", "172.15.255.255", "172.32.0.1", "100.63.255.255",
                                          "100.128.0.1", "169.253.1.1", "11.0.0.1", "2606:4700::1111",
                                          "2a00:1450:4001::1", "::ffff:8.8.8.8"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        cr_assert_null(refusal(allowed[i]), "%s should be allowed (got %s)", allowed[i], refusal(allowed[i]));
    struct sockaddr sa = {.sa_family = AF_UNIX};
    cr_assert_str_eq(egress_address_refusal(&sa), "unsupported family");
}

Test(egress, hosts)
{
    static const char *const good[] = {"api.example.com", "a", "x-1.example", "127.0.0.1", "::1", "2001:db8::1",
                                       "EXAMPLE.com"};
    static const char *const bad[] = {"", "-a.example", "a-.example", "a..b", "a.", ".a", "a b", "[::1]",
                                      "a_b.example", "host:443", "\xc3\xa9.example"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_assert(egress_host_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert(!egress_host_valid(bad[i]), "%s", bad[i]);
    char label64[80], long_name[300];
    memset(label64, 'a', 64);
    label64[64] = 0;
    cr_assert(!egress_host_valid(label64));
    label64[63] = 0;
    cr_assert(egress_host_valid(label64));
    memset(long_name, 'a', sizeof(long_name));
    for (size_t i = 50; i < 254; i += 51)
        long_name[i] = '.';
    long_name[254] = 0;
    cr_assert(!egress_host_valid(long_name), "254 bytes is over the cap");
    long_name[253] = 0;
    cr_assert(egress_host_valid(long_name));
}

/* Builds a TLS 1.2-framed ClientHello into OUT with the server_name SNI
 * (NULL: no server_name extension); its length. */
static size_t client_hello(uint8_t *out, const char *sni)
{
    uint8_t body[1024];
    size_t n = 0;
    body[n++] = 3, body[n++] = 3;         /* client_version */
    memset(body + n, 0x42, 32), n += 32;  /* random */
    body[n++] = 0;                        /* session id */
    body[n++] = 0, body[n++] = 2, body[n++] = 0x13, body[n++] = 0x01; /* cipher suites */
    body[n++] = 1, body[n++] = 0;         /* compression: null */
    size_t ext_at = n;
    n += 2;
    /* a supported_versions extension first, then server_name */
    body[n++] = 0, body[n++] = 43, body[n++] = 0, body[n++] = 3, body[n++] = 2, body[n++] = 3, body[n++] = 4;
    if (sni) {
        size_t l = strlen(sni);
        body[n++] = 0, body[n++] = 0;                                   /* server_name */
        body[n++] = (uint8_t)((l + 5) >> 8), body[n++] = (uint8_t)(l + 5); /* extension length */
        body[n++] = (uint8_t)((l + 3) >> 8), body[n++] = (uint8_t)(l + 3); /* list length */
        body[n++] = 0;                                                  /* host_name */
        body[n++] = (uint8_t)(l >> 8), body[n++] = (uint8_t)l;
        memcpy(body + n, sni, l), n += l;
    }
    body[ext_at] = (uint8_t)((n - ext_at - 2) >> 8);
    body[ext_at + 1] = (uint8_t)(n - ext_at - 2);
    size_t rec = n + 4;
    out[0] = 0x16, out[1] = 3, out[2] = 1, out[3] = (uint8_t)(rec >> 8), out[4] = (uint8_t)rec;
    out[5] = 1, out[6] = 0, out[7] = (uint8_t)(n >> 8), out[8] = (uint8_t)n;
    memcpy(out + 9, body, n);
    return n + 9;
}

Test(egress, sni_of_a_client_hello)
{
    uint8_t buf[2048];
    char sni[EGRESS_HOST_MAX + 1];
    size_t len = client_hello(buf, "API.Example.com"), need = 0;
    cr_assert_eq(egress_sni_parse(buf, len, sni, NULL), 0);
    cr_assert_str_eq(sni, "api.example.com", "lower-cased");
    for (size_t cut = 0; cut < len; cut++) {
        int r = egress_sni_parse(buf, cut, sni, &need);
        cr_assert_eq(r, -EAGAIN, "a prefix of %zu bytes needs more (got %d)", cut, r);
        cr_assert(need > cut && need <= len);
    }
    len = client_hello(buf, NULL);
    cr_assert_eq(egress_sni_parse(buf, len, sni, NULL), -ENOENT);
}

Test(egress, malformed_client_hellos_are_refused)
{
    uint8_t buf[2048], bad[2048];
    char sni[EGRESS_HOST_MAX + 1];
    size_t len = client_hello(buf, "example.com");
    memcpy(bad, buf, len);
    bad[0] = 0x17; /* application data */
    cr_assert_eq(egress_sni_parse(bad, len, sni, NULL), -EBADMSG);
    memcpy(bad, buf, len);
    bad[5] = 2; /* server_hello */
    cr_assert_eq(egress_sni_parse(bad, len, sni, NULL), -EBADMSG);
    memcpy(bad, buf, len);
    bad[8] += 1; /* the handshake claims more than the record */
    cr_assert_eq(egress_sni_parse(bad, len, sni, NULL), -EBADMSG);
    memcpy(bad, buf, len);
    bad[3] = 0x50; /* a record over 16 KiB */
    cr_assert_eq(egress_sni_parse(bad, len, sni, NULL), -EBADMSG);
    memcpy(bad, buf, len);
    bad[len - 1] = '_'; /* not a DNS name */
    cr_assert_eq(egress_sni_parse(bad, len, sni, NULL), -EBADMSG);
    len = client_hello(buf, "10.0.0.1"); /* an address is not a server name */
    cr_assert_eq(egress_sni_parse(buf, len, sni, NULL), -EBADMSG);
    cr_assert_eq(egress_sni_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, sni, NULL), -EBADMSG);
}
