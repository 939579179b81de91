/* The pure checks of allow-only egress (docs/enclaves.md "Egress"): which
 * addresses a tunnel may never reach unless its entry names them literally,
 * what a host of an egress entry may be, and the server name (SNI) of a TLS
 * ClientHello. No I/O: the runner's tunnels (runner/egress.h), the unit
 * tests and the fuzzer call them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The longest DNS name (RFC 1035) and so the longest host and SNI. */
#define EGRESS_HOST_MAX 253
/* A TLS record's header and its largest plaintext fragment (RFC 8446 5.1):
 * the ClientHello must fit in the first record. */
#define EGRESS_TLS_RECORD_MAX (5 + 16384)

/* Why the address SA (AF_INET or AF_INET6; IPv4-mapped IPv6 is judged as its
 * IPv4 address) may not be reached through a name: "loopback", "private"
 * (RFC 1918, ULA fc00::/7), "link-local" (169.254/16, fe80::/10), "cgnat"
 * (100.64/10), "unspecified" (0/8, ::), "multicast", "broadcast",
 * "metadata" (169.254.169.254, fd00:ec2::254), "reserved" (240/4,
 * other non-global IPv6 such as documentation and site-local), or
 * "unsupported family". NULL when it is a public address. */
const char *egress_address_refusal(const struct sockaddr *sa);

/* Whether HOST is a DNS name (labels of [A-Za-z0-9-], not starting or ending
 * with '-', 1-63 bytes each, at most EGRESS_HOST_MAX in all, no trailing dot)
 * or an IPv4/IPv6 literal (IPv6 without brackets). */
bool egress_host_valid(const char *host);
/* Whether HOST is an IP literal; its address into *RET (sockaddr_in or
 * sockaddr_in6, port PORT) when RET is not NULL. */
bool egress_host_literal(const char *host, uint16_t port, struct sockaddr_storage *ret, socklen_t *ret_len);

/* Parses the server name of the TLS ClientHello at the start of BUF (LEN
 * bytes as read so far from the client). Returns 0 with the host name
 * (lower-cased, NUL-terminated) in OUT (at least EGRESS_HOST_MAX + 1
 * bytes); -EAGAIN when more bytes are needed (*RET_NEED, when not NULL, is
 * the total the first record needs); -ENOENT when the ClientHello has no
 * host_name; -EBADMSG when it is not a well-formed TLS ClientHello in one
 * record, or the name is not a valid DNS name. */
int egress_sni_parse(const uint8_t *buf, size_t len, char *out, size_t *ret_need);
