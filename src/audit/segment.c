/* Access-log segments: the chain and the line format (segment.h). */
#include "audit/segment.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "audit/entry.h"
#include "basic/encoding.h"

static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

bool segment_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > SEGMENT_ID_MAX || id[0] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') || id[i] == '-'))
            return false;
    return true;
}

/* Parses "&NAME=<decimal>" at the start of *P (before END) into *RET,
 * moving *P past it. */
static bool param_parse(const char **p, const char *end, const char *name, uint64_t *ret)
{
    size_t n = strlen(name), left = (size_t)(end - *p);
    if (left < n + 3 || (*p)[0] != '&' || memcmp(*p + 1, name, n) != 0 || (*p)[n + 1] != '=')
        return false;
    const char *v = *p + n + 2, *stop = memchr(v, '&', (size_t)(end - v));
    if (!stop)
        stop = end;
    if (audit_parse_index(v, (size_t)(stop - v), ret) < 0)
        return false;
    *p = stop;
    return true;
}

bool segment_params_parse(const char *query, size_t len, char id[SEGMENT_ID_MAX + 1], uint64_t *offset,
                          uint64_t *length)
{
    const char *end = query + len;
    if (len < 3 || memcmp(query, "id=", 3) != 0)
        return false;
    const char *amp = memchr(query, '&', len), *p = amp ? amp : end;
    size_t id_len = (size_t)(p - query) - 3;
    if (!segment_id_valid(query + 3, id_len) || (offset && !param_parse(&p, end, "offset", offset)) ||
        (length && !param_parse(&p, end, "length", length)) || p != end)
        return false;
    memcpy(id, query + 3, id_len);
    id[id_len] = 0;
    return true;
}

bool segment_channel_path(const char *audit_socket, char *out, size_t size)
{
    if (strncmp(audit_socket, "https://", 8) == 0)
        return false;
    const char *slash = strrchr(audit_socket, '/');
    int dir_len = slash ? (int)(slash - audit_socket) : 1;
    int n = snprintf(out, size, "%.*s/" SEGMENT_CHANNEL_NAME, dir_len, slash ? audit_socket : ".");
    return n > 0 && (size_t)n < size;
}

/* OUT = SHA-256(A (ALEN bytes) || B (BLEN bytes)) with C's context.
 * Returns 0 or -EIO. */
static int digest2(segment_chain *c, const void *a, size_t alen, const void *b, size_t blen,
                   uint8_t out[SEGMENT_DIGEST_LEN])
{
    unsigned n = 0;
    if (EVP_DigestInit_ex2(c->ctx, sha256, NULL) != 1 || EVP_DigestUpdate(c->ctx, a, alen) != 1 ||
        (blen && EVP_DigestUpdate(c->ctx, b, blen) != 1) || EVP_DigestFinal_ex(c->ctx, out, &n) != 1 ||
        n != SEGMENT_DIGEST_LEN)
        return -EIO;
    return 0;
}

int segment_chain_init(segment_chain *c, const char *id)
{
    size_t len = strlen(id);
    if (!segment_id_valid(id, len))
        return -EINVAL;
    pthread_once(&sha256_once, sha256_fetch);
    if (!sha256)
        return -ENOMEM;
    segment_chain fresh = {.ctx = EVP_MD_CTX_new()};
    if (!fresh.ctx)
        return -ENOMEM;
    if (digest2(&fresh, id, len, NULL, 0, fresh.value) < 0) {
        EVP_MD_CTX_free(fresh.ctx);
        return -EIO;
    }
    *c = fresh;
    return 0;
}

int segment_chain_next(segment_chain *c, const char *rec, size_t len)
{
    uint8_t next[SEGMENT_DIGEST_LEN];
    if (digest2(c, c->value, SEGMENT_DIGEST_LEN, rec, len, next) < 0)
        return -EIO;
    memcpy(c->value, next, sizeof(next));
    c->count++;
    return 0;
}

void segment_chain_dispose(segment_chain *c)
{
    EVP_MD_CTX_free(c->ctx);
    *c = (segment_chain){0};
}

int segment_chain_line(segment_chain *c, char *line, size_t len)
{
    const char *rec = line + SEGMENT_HEX_LEN + 1;
    if (len == 0 || len > SEGMENT_RECORD_MAX || memchr(rec, '\n', len))
        return -EINVAL;
    int r = segment_chain_next(c, rec, len);
    if (r < 0)
        return r;
    hex_encode(c->value, SEGMENT_DIGEST_LEN, line);
    line[SEGMENT_HEX_LEN] = ' ';
    line[SEGMENT_HEX_LEN + 1 + len] = '\n';
    return (int)(SEGMENT_HEX_LEN + len + 2);
}

ssize_t segment_chain_lines(segment_chain *c, char *data, size_t len)
{
    ssize_t n = 0;
    for (char *line = data, *end = data + len; line < end; n++) {
        char *rec = line + SEGMENT_HEX_LEN + 1, *nl = rec < end ? memchr(rec, '\n', (size_t)(end - rec)) : NULL;
        if (!nl || line[SEGMENT_HEX_LEN] != ' ')
            return -EINVAL;
        int r = segment_chain_line(c, line, (size_t)(nl - rec));
        if (r < 0)
            return r;
        line = nl + 1;
    }
    return n;
}

int segment_format_line(segment_chain *c, const char *rec, size_t len, char *out)
{
    if (len > SEGMENT_RECORD_MAX)
        return -EINVAL;
    memcpy(out + SEGMENT_HEX_LEN + 1, rec, len);
    return segment_chain_line(c, out, len);
}

int segment_walk(const char *id, const char *data, size_t len,
                 int (*cb)(void *userdata, const segment_record *rec), void *userdata, uint64_t *bad_at)
{
    segment_chain c;
    int r = segment_chain_init(&c, id);
    if (r < 0)
        return r;
    size_t at = 0;
    while (at < len && r == 0) {
        const char *line = data + at;
        const char *nl = memchr(line, '\n', len - at);
        size_t line_len = nl ? (size_t)(nl - line) : len - at;
        uint8_t stored[SEGMENT_DIGEST_LEN];
        if (!nl || line_len < SEGMENT_HEX_LEN + 2 || line_len - SEGMENT_HEX_LEN - 1 > SEGMENT_RECORD_MAX ||
            line[SEGMENT_HEX_LEN] != ' ' || hex_decode(line, SEGMENT_HEX_LEN, stored, sizeof(stored)) < 0) {
            *bad_at = c.count;
            r = -EBADMSG;
            break;
        }
        segment_record rec = {.index = c.count, .text = line + SEGMENT_HEX_LEN + 1,
                              .len = line_len - SEGMENT_HEX_LEN - 1};
        if ((r = segment_chain_next(&c, rec.text, rec.len)) < 0)
            break;
        memcpy(rec.chain, c.value, sizeof(rec.chain));
        rec.follows = memcmp(stored, c.value, sizeof(stored)) == 0;
        r = cb(userdata, &rec);
        at += line_len + 1;
    }
    segment_chain_dispose(&c);
    return r;
}
