/* The network extension (cel-go ext/network.go): ip and cidr values.
 * Addresses are kept in 16 bytes (IPv4 mapped into ::ffff:0:0/96) with their
 * family, so IPv4 and its mapped IPv6 form compare equal. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cel/cel-lib.h"

/* Parses an address without zone; 0, -EINVAL, or -EPROTO when a zone is present. */
static int parse_addr(const char *s, size_t n, cel_ipnet *ret)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (memchr(s, '%', n))
        return -EPROTO;
    if (n == 0 || n >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, s, n);
    buf[n] = 0;
    cel_ipnet ip = {0};
    if (inet_pton(AF_INET, buf, ip.addr + 12) == 1) {
        ip.addr[10] = ip.addr[11] = 0xff;
        ip.family = 4;
        ip.prefix = 32;
    } else if (inet_pton(AF_INET6, buf, ip.addr) == 1) {
        ip.family = 6;
        ip.prefix = 128;
    } else {
        return -EINVAL;
    }
    *ret = ip;
    return 0;
}

/* Parses "addr/prefix"; errors as parse_addr. */
static int parse_cidr(const char *s, size_t n, cel_ipnet *ret)
{
    const char *slash = memchr(s, '/', n);
    if (!slash)
        return memchr(s, '%', n) ? -EPROTO : -EINVAL;
    cel_ipnet ip;
    int r = parse_addr(s, (size_t)(slash - s), &ip);
    if (r < 0)
        return r;
    const char *p = slash + 1, *end = s + n;
    if (p == end || end - p > 3)
        return -EINVAL;
    unsigned prefix = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        prefix = prefix * 10 + (unsigned)(*p - '0');
    }
    if (slash[1] == '0' && n - (size_t)(slash - s) > 2)
        return -EINVAL;
    if (prefix > (ip.family == 4 ? 32u : 128u))
        return -EINVAL;
    ip.prefix = (uint8_t)prefix;
    *ret = ip;
    return 0;
}

static cel_value make_net(ev *e, const cel_ipnet *ip, cel_kind kind)
{
    cel_ipnet *p = cel_ev_alloc(e, sizeof(*p));
    if (!p)
        return cel_err(e, NULL, "out of memory");
    *p = *ip;
    return (cel_value){.kind = kind, .ip = p};
}

static cel_value addr_error(ev *e, const node *n, const cel_value *s, int r)
{
    if (r == -EPROTO)
        return cel_err(e, n, "IP Address with zone value is not allowed");
    return cel_err(e, n, "IP Address '%.*s' parse error during conversion from string", (int)MIN(s->len, 64u),
                   s->str);
}

CEL_FN(cel_fn_ip)
{
    if (a[0].kind == CEL_CIDR) {
        /* cidr.ip(): the address part */
        cel_ipnet ip = *a[0].ip;
        ip.prefix = ip.family == 4 ? 32 : 128;
        return make_net(e, &ip, CEL_IP);
    }
    if (a[0].kind != CEL_STRING || (n->flags & F_RECEIVER))
        return cel_err_no_overload(e, n);
    cel_ipnet ip;
    int r = parse_addr(a[0].str, a[0].len, &ip);
    if (r < 0)
        return addr_error(e, n, &a[0], r);
    return make_net(e, &ip, CEL_IP);
}

CEL_FN(cel_fn_cidr)
{
    if (a[0].kind != CEL_STRING)
        return cel_err_no_overload(e, n);
    cel_ipnet ip;
    int r = parse_cidr(a[0].str, a[0].len, &ip);
    if (r == -EPROTO)
        return cel_err(e, n, "CIDR with zone value is not allowed");
    if (r < 0)
        return cel_err(e, n, "network address parse error during conversion from string");
    return make_net(e, &ip, CEL_CIDR);
}

CEL_FN(cel_fn_is_ip)
{
    if (a[0].kind != CEL_STRING)
        return cel_err(e, n, "found no matching overload for 'isIP' applied to '(%s)'", cel_kind_name(a[0].kind));
    cel_ipnet ip;
    return cel_bool(parse_addr(a[0].str, a[0].len, &ip) == 0);
}

static void addr_string(const cel_ipnet *ip, char *buf, size_t size)
{
    if (ip->family == 4)
        inet_ntop(AF_INET, ip->addr + 12, buf, (socklen_t)size);
    else
        inet_ntop(AF_INET6, ip->addr, buf, (socklen_t)size);
}

cel_value cel_net_to_string(ev *e, const cel_value *v)
{
    char buf[INET6_ADDRSTRLEN + 8];
    addr_string(v->ip, buf, sizeof(buf));
    if (v->kind == CEL_CIDR) {
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof(buf) - l, "/%u", v->ip->prefix);
    }
    return cel_make_string(e, buf, strlen(buf));
}

CEL_FN(cel_fn_ip_is_canonical)
{
    if (a[0].kind != CEL_STRING)
        return cel_err_no_overload(e, n);
    cel_ipnet ip;
    int r = parse_addr(a[0].str, a[0].len, &ip);
    if (r < 0)
        return addr_error(e, n, &a[0], r);
    char buf[INET6_ADDRSTRLEN + 8];
    addr_string(&ip, buf, sizeof(buf));
    return cel_bool(strlen(buf) == a[0].len && !memcmp(buf, a[0].str, a[0].len));
}

CEL_FN(cel_fn_ip_family)
{
    if (a[0].kind != CEL_IP)
        return cel_err_no_overload(e, n);
    return cel_int(a[0].ip->family);
}

/* isUnspecified, isLoopback, isGlobalUnicast, isLinkLocalMulticast,
 * isLinkLocalUnicast with Go's net/netip definitions. */
CEL_FN(cel_fn_ip_predicate)
{
    if (a[0].kind != CEL_IP)
        return cel_err_no_overload(e, n);
    const uint8_t *b = a[0].ip->addr;
    bool v4 = a[0].ip->family == 4;
    const uint8_t *q = b + 12;
    static const uint8_t zero[16];
    bool unspecified = v4 ? !memcmp(q, zero, 4) : !memcmp(b, zero, 16);
    bool loopback = v4 ? q[0] == 127 : (!memcmp(b, zero, 15) && b[15] == 1);
    bool multicast = v4 ? (q[0] & 0xf0) == 0xe0 : b[0] == 0xff;
    bool ll_unicast = v4 ? (q[0] == 169 && q[1] == 254) : (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
    bool ll_multicast = v4 ? (q[0] == 224 && q[1] == 0 && q[2] == 0) : (b[0] == 0xff && (b[1] & 0x0f) == 0x02);
    bool broadcast = v4 && q[0] == 255 && q[1] == 255 && q[2] == 255 && q[3] == 255;
    const char *f = n->name + 2;
    if (!strcmp(f, "Unspecified"))
        return cel_bool(unspecified);
    if (!strcmp(f, "Loopback"))
        return cel_bool(loopback);
    if (!strcmp(f, "LinkLocalMulticast"))
        return cel_bool(ll_multicast);
    if (!strcmp(f, "LinkLocalUnicast"))
        return cel_bool(ll_unicast);
    return cel_bool(!unspecified && !loopback && !multicast && !ll_unicast && !broadcast);
}

/* True when the first BITS bits (of the family's address) of X and Y agree. */
static bool prefix_match(const cel_ipnet *x, const cel_ipnet *y, unsigned bits)
{
    if (x->family != y->family)
        return false;
    unsigned off = x->family == 4 ? 96 : 0, total = off + bits;
    for (unsigned i = 0; i < total / 8; i++)
        if (x->addr[i] != y->addr[i])
            return false;
    if (total % 8) {
        uint8_t mask = (uint8_t)(0xff << (8 - total % 8));
        if ((x->addr[total / 8] & mask) != (y->addr[total / 8] & mask))
            return false;
    }
    return true;
}

CEL_FN(cel_fn_contains_ip)
{
    if (a[0].kind != CEL_CIDR)
        return cel_err_no_overload(e, n);
    cel_ipnet ip;
    if (a[1].kind == CEL_IP) {
        ip = *a[1].ip;
    } else if (a[1].kind == CEL_STRING) {
        int r = parse_addr(a[1].str, a[1].len, &ip);
        if (r < 0)
            return addr_error(e, n, &a[1], r);
    } else {
        return cel_err_no_overload(e, n);
    }
    return cel_bool(prefix_match(a[0].ip, &ip, a[0].ip->prefix));
}

CEL_FN(cel_fn_contains_cidr)
{
    if (a[0].kind != CEL_CIDR)
        return cel_err_no_overload(e, n);
    cel_ipnet net;
    if (a[1].kind == CEL_CIDR) {
        net = *a[1].ip;
    } else if (a[1].kind == CEL_STRING) {
        int r = parse_cidr(a[1].str, a[1].len, &net);
        if (r < 0)
            return cel_err(e, n, "network address parse error during conversion from string");
    } else {
        return cel_err_no_overload(e, n);
    }
    return cel_bool(net.prefix >= a[0].ip->prefix && prefix_match(a[0].ip, &net, a[0].ip->prefix));
}

CEL_FN(cel_fn_cidr_prefix_length)
{
    if (a[0].kind != CEL_CIDR)
        return cel_err_no_overload(e, n);
    return cel_int(a[0].ip->prefix);
}

CEL_FN(cel_fn_cidr_masked)
{
    if (a[0].kind != CEL_CIDR)
        return cel_err_no_overload(e, n);
    cel_ipnet ip = *a[0].ip;
    unsigned total = (ip.family == 4 ? 96u : 0u) + ip.prefix;
    for (unsigned i = 0; i < 16; i++) {
        if (i * 8 >= total)
            ip.addr[i] = 0;
        else if (i * 8 + 8 > total)
            ip.addr[i] &= (uint8_t)(0xff << (8 - (total - i * 8)));
    }
    return make_net(e, &ip, CEL_CIDR);
}
