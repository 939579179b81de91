/* Access-log segments: the proxy's access records, one per line, each line
 * "<chain value, 64 hex> <record>\n" where the record is the compact JSON
 * array of proxy_access_fields (src/proxy/access-log.c writes it once and
 * never reads it back). The chain: c(-1) = SHA-256(segment id), c(i) =
 * SHA-256(c(i-1) || record i's bytes). A segment's head (its id, record
 * count and last chain value) is committed to the Merkle audit log, so a
 * record changed, removed or reordered after its head was committed no
 * longer recomputes to that head; the stored chain value beside each record
 * names the first record that does not follow its predecessor. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SEGMENT_ID_MAX 48                     /* [0-9a-z-], checked by segment_id_valid() */
#define SEGMENT_DIGEST_LEN 32
#define SEGMENT_RECORD_MAX 4096               /* one record's bytes, its line without chain and newline */
#define SEGMENT_BYTES_MAX (2 * 1024 * 1024)   /* a segment is rotated before it grows past this */
#define SEGMENT_HEX_LEN (2 * SEGMENT_DIGEST_LEN)

typedef struct segment_chain {
    struct evp_md_ctx_st *ctx;
    uint8_t value[SEGMENT_DIGEST_LEN]; /* the chain value after the last record */
    uint64_t count;                    /* records chained */
} segment_chain;

/* Whether ID names a segment: 1 to SEGMENT_ID_MAX characters of [0-9a-z-],
 * not starting with '-' (it is a file name in the proxy's and the audit
 * role's subtrees). */
bool segment_id_valid(const char *id, size_t len);

/* Parses the parameters naming a segment's bytes, QUERY (LEN bytes, not
 * percent-decoded): "id=<id>", then "&offset=<decimal>" exactly when OFFSET
 * is not NULL, then "&length=<decimal>" exactly when LENGTH is not NULL
 * (audit_parse_index() numbers). The same text in a POST /v1/segment query
 * and in a message of the spool channel. Returns true and fills ID and the
 * numbers; false when QUERY is anything else. */
bool segment_params_parse(const char *query, size_t len, char id[SEGMENT_ID_MAX + 1], uint64_t *offset,
                          uint64_t *length);

/* The spool channel: a SOCK_SEQPACKET Unix socket beside the audit role's
 * HTTP socket, on which the proxy hands over segment bytes as a read-only
 * descriptor of its spool file instead of sending them. One message
 * "id=<id>&offset=<n>&length=<n>" carrying one descriptor (SCM_RIGHTS),
 * whose bytes at OFFSET are the segment's at OFFSET; one answer "<status>
 * <text>": 200 and the stored size, or an HTTP status of POST /v1/segment
 * and what was wrong. */
#define SEGMENT_CHANNEL_NAME "segments.sock"
#define SEGMENT_CHANNEL_MESSAGE_MAX 256

/* The channel's path beside the audit role's socket AUDIT_SOCKET into OUT
 * (SIZE bytes). Returns false when the role is reached over TCP (an
 * https:// address: no descriptor crosses machines) or the path is too
 * long. */
bool segment_channel_path(const char *audit_socket, char *out, size_t size);

/* Starts the chain of segment ID: c(-1). SHA-256 is fetched once per
 * process (EVP_MD_fetch), not per record. Returns 0, -EINVAL for a bad id,
 * or -ENOMEM. */
int segment_chain_init(segment_chain *c, const char *id);
/* Chains the record REC (LEN bytes): C->value becomes c(count), count grows
 * by one. Returns 0 or -EIO. */
int segment_chain_next(segment_chain *c, const char *rec, size_t len);
/* Releases C's digest context; accepts a zeroed chain. */
void segment_chain_dispose(segment_chain *c);

/* Appends record REC (LEN bytes, no newline) to OUT (room for
 * SEGMENT_HEX_LEN + LEN + 2 bytes) as its line after chaining it in C;
 * returns the line's length, or a negative errno. */
int segment_format_line(segment_chain *c, const char *rec, size_t len, char *out);
/* segment_format_line() in place: the record (LEN bytes) is already at
 * LINE + SEGMENT_HEX_LEN + 1; its chain value and the newline are added. */
int segment_chain_line(segment_chain *c, char *line, size_t len);
/* segment_chain_line() for each line of DATA (LEN bytes, whole lines): each
 * holds its record after SEGMENT_HEX_LEN + 1 bytes left for its chain value
 * and ends with a newline. Returns the number of lines chained, or a
 * negative errno (-EINVAL: a line is not one record; the chain is then
 * past the lines before it). */
ssize_t segment_chain_lines(segment_chain *c, char *data, size_t len);

/* What segment_walk() reports of one record. */
typedef struct segment_record {
    uint64_t index;
    const char *text; /* the record's bytes in the walked data (not NUL-terminated) */
    size_t len;
    bool follows;                          /* its stored chain value equals the recomputed one */
    uint8_t chain[SEGMENT_DIGEST_LEN];     /* the recomputed chain value after it */
} segment_record;

/* Walks the segment ID whose file is DATA (LEN bytes, untrusted): calls CB
 * for each well-formed line in order with the recomputed chain. Stops at
 * CB's non-zero return (returned). Returns 0; -EBADMSG when a line is
 * malformed (no newline, a bad chain value, an empty or too long record),
 * with its index in *BAD_AT; -EINVAL for a bad id; -ENOMEM, -EIO. */
int segment_walk(const char *id, const char *data, size_t len,
                 int (*cb)(void *userdata, const segment_record *rec), void *userdata, uint64_t *bad_at);
