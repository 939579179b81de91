/* The pure checks of allow-only egress (see egress-check.h). */
#include "runner/egress-check.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

/* Whether the IPv4 address A (host order) is in NET/BITS. */
static bool in4(uint32_t a, uint32_t net, unsigned bits)
{
    uint32_t mask = bits ? ~0u << (32 - bits) : 0;
    return (a & mask) == (net & mask);
}

static const char *refusal4(uint32_t a)
{
    if (a == 0xa9fea9feu) /* 169.254.169.254 */
        return "metadata";
    if (in4(a, 0x7f000000u, 8))
        return "loopback";
    if (in4(a, 0x0a000000u, 8) || in4(a, 0xac100000u, 12) || in4(a, 0xc0a80000u, 16))
        return "private";
    if (in4(a, 0xa9fe0000u, 16))
        return "link-local";
    if (in4(a, 0x64400000u, 10))
        return "cgnat";
    if (in4(a, 0x00000000u, 8))
        return "unspecified";
    if (a == 0xffffffffu)
        return "broadcast";
    if (in4(a, 0xe0000000u, 4))
        return "multicast";
    if (in4(a, 0xf0000000u, 4) || in4(a, 0xc0000000u, 24) || in4(a, 0xc0000200u, 24) ||
        in4(a, 0xc6120000u, 15) || in4(a, 0xc6336400u, 24) || in4(a, 0xcb007100u, 24))
        return "reserved"; /* 240/4, IETF 192.0.0/24, documentation, benchmarking */
    return NULL;
}

const char *egress_address_refusal(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return refusal4(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6)
        return "unsupported family";
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
    static const uint8_t zero[16] = {0};
    if (memcmp(b, mapped, sizeof(mapped)) == 0)
        return refusal4((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15]);
    if (memcmp(b, metadata, sizeof(metadata)) == 0)
        return "metadata";
    if (memcmp(b, zero, 15) == 0)
        return b[15] == 1 ? "loopback" : b[15] == 0 ? "unspecified" : "reserved"; /* ::1, ::, IPv4-compatible */
    if ((b[0] & 0xfe) == 0xfc)
        return "private"; /* ULA fc00::/7 */
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return "link-local";
    if (b[0] == 0xff)
        return "multicast";
    /* only global unicast 2000::/3 goes out, but documentation 2001:db8::/32,
     * ORCHID and NAT64/6to4 forms that can point inside (64:ff9b::/96 is
     * not in 2000::/3; 2002::/16 embeds any IPv4 address) */
    if ((b[0] & 0xe0) != 0x20 || (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) ||
        (b[0] == 0x20 && b[1] == 0x02))
        return "reserved";
    return NULL;
}

bool egress_host_literal(const char *host, uint16_t port, struct sockaddr_storage *ret, socklen_t *ret_len)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) {
        if (ret) {
            struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = a4};
            memset(ret, 0, sizeof(*ret));
            memcpy(ret, &sin, sizeof(sin));
            *ret_len = sizeof(sin);
        }
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (ret) {
            struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = a6};
            memset(ret, 0, sizeof(*ret));
            memcpy(ret, &sin6, sizeof(sin6));
            *ret_len = sizeof(sin6);
        }
        return true;
    }
    return false;
}

/* Whether the LEN bytes of NAME are a DNS name as egress_host_valid() says. */
static bool dns_name_valid(const char *name, size_t len)
{
    if (len == 0 || len > EGRESS_HOST_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? name[i] : '.';
        if (c == '.') {
            if (label == 0 || label > 63 || name[i - 1] == '-' || name[i - label] == '-')
                return false;
            label = 0;
        } else if (isalnum((unsigned char)c) || c == '-')
            label++;
        else
            return false;
    }
    return true;
}

bool egress_host_valid(const char *host)
{
    return egress_host_literal(host, 0, NULL, NULL) || dns_name_valid(host, strlen(host));
}

/* A cursor over the ClientHello: reads fail (return false) past its end. */
typedef struct cursor {
    const uint8_t *p;
    size_t left;
} cursor;

static bool take(cursor *c, size_t n, const uint8_t **ret)
{
    if (c->left < n)
        return false;
    if (ret)
        *ret = c->p;
    c->p += n;
    c->left -= n;
    return true;
}

static bool take_u8(cursor *c, size_t *ret)
{
    const uint8_t *p;
    if (!take(c, 1, &p))
        return false;
    *ret = p[0];
    return true;
}

static bool take_u16(cursor *c, size_t *ret)
{
    const uint8_t *p;
    if (!take(c, 2, &p))
        return false;
    *ret = (size_t)p[0] << 8 | p[1];
    return true;
}

/* A sub-cursor of the next N bytes of C. */
static bool take_sub(cursor *c, size_t n, cursor *ret)
{
    const uint8_t *p;
    if (!take(c, n, &p))
        return false;
    *ret = (cursor){p, n};
    return true;
}

/* The host_name of a server_name extension's data EXT (RFC 6066 3) into OUT. */
static int server_name(cursor ext, char *out)
{
    size_t list_len, type, name_len;
    cursor list;
    const uint8_t *name;
    if (!take_u16(&ext, &list_len) || !take_sub(&ext, list_len, &list) || ext.left != 0)
        return -EBADMSG;
    while (list.left) {
        if (!take_u8(&list, &type) || !take_u16(&list, &name_len) || !take(&list, name_len, &name))
            return -EBADMSG;
        if (type != 0)
            continue;
        if (name_len > EGRESS_HOST_MAX || !dns_name_valid((const char *)name, name_len))
            return -EBADMSG;
        for (size_t i = 0; i < name_len; i++)
            out[i] = (char)tolower(name[i]);
        out[name_len] = 0;
        /* a name, never an address (RFC 6066 3) */
        return egress_host_literal(out, 0, NULL, NULL) ? -EBADMSG : 0;
    }
    return -ENOENT;
}

int egress_sni_parse(const uint8_t *buf, size_t len, char *out, size_t *ret_need)
{
    if (len >= 1 && buf[0] != 0x16) /* not a handshake record */
        return -EBADMSG;
    if (len >= 2 && buf[1] != 3)
        return -EBADMSG;
    if (len < 5) {
        if (ret_need)
            *ret_need = 5;
        return -EAGAIN;
    }
    size_t record_len = (size_t)buf[3] << 8 | buf[4];
    if (record_len < 4 || record_len > EGRESS_TLS_RECORD_MAX - 5)
        return -EBADMSG;
    if (len < 5 + record_len) {
        if (ret_need)
            *ret_need = 5 + record_len;
        return -EAGAIN;
    }
    cursor rec = {buf + 5, record_len}, hello, session, suites, compression, exts;
    const uint8_t *hs;
    size_t session_len, suites_len, compression_len, exts_len;
    if (!take(&rec, 4, &hs) || hs[0] != 1) /* client_hello */
        return -EBADMSG;
    size_t hello_len = (size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3];
    if (!take_sub(&rec, hello_len, &hello)) /* the whole ClientHello in this record */
        return -EBADMSG;
    if (!take(&hello, 2 + 32, NULL) || !take_u8(&hello, &session_len) || session_len > 32 ||
        !take_sub(&hello, session_len, &session) || !take_u16(&hello, &suites_len) || suites_len < 2 ||
        suites_len % 2 || !take_sub(&hello, suites_len, &suites) || !take_u8(&hello, &compression_len) ||
        compression_len < 1 || !take_sub(&hello, compression_len, &compression))
        return -EBADMSG;
    if (hello.left == 0)
        return -ENOENT; /* no extensions at all */
    if (!take_u16(&hello, &exts_len) || !take_sub(&hello, exts_len, &exts) || hello.left != 0)
        return -EBADMSG;
    int found = -ENOENT;
    while (exts.left) {
        size_t type, ext_len;
        cursor ext;
        if (!take_u16(&exts, &type) || !take_u16(&exts, &ext_len) || !take_sub(&exts, ext_len, &ext))
            return -EBADMSG;
        if (type != 0)
            continue;
        if (found != -ENOENT) /* a second server_name: ambiguous */
            return -EBADMSG;
        found = server_name(ext, out);
        if (found == -EBADMSG)
            return found;
    }
    return found;
}
