#include "basic/cbor-scan.h"

#include <errno.h>
#include <stdbool.h>

#define CBOR_SCAN_DEPTH_LIMIT 32

/* What the scan learns from one decoded item. */
typedef struct scan_state {
    size_t avail;   /* input bytes from the current item on */
    uint64_t opens; /* items the current item opens (array, map, tag) */
    bool bad;       /* an indefinite length, float, undefined or oversized count */
} scan_state;

static void scan_bad(void *ctx)
{
    ((scan_state *)ctx)->bad = true;
}
static void scan_bad_float(void *ctx, float v)
{
    (void)v;
    ((scan_state *)ctx)->bad = true;
}
static void scan_bad_double(void *ctx, double v)
{
    (void)v;
    ((scan_state *)ctx)->bad = true;
}
/* Every item takes at least one byte: a count beyond the input is a lie. */
static void scan_array(void *ctx, size_t n)
{
    scan_state *s = ctx;
    if (n > s->avail)
        s->bad = true;
    else
        s->opens = n;
}
static void scan_map(void *ctx, size_t n)
{
    scan_state *s = ctx;
    if (n > s->avail / 2)
        s->bad = true;
    else
        s->opens = 2 * (uint64_t)n;
}
static void scan_tag(void *ctx, uint64_t tag)
{
    (void)tag;
    ((scan_state *)ctx)->opens = 1;
}

/* libcbor's no-op callbacks, with every unsupported item flagged and every
 * container checked. */
static struct cbor_callbacks scan_callbacks(void)
{
    struct cbor_callbacks cb = cbor_empty_callbacks;
    cb.byte_string_start = scan_bad;
    cb.string_start = scan_bad;
    cb.indef_array_start = scan_bad;
    cb.indef_map_start = scan_bad;
    cb.indef_break = scan_bad;
    cb.undefined = scan_bad;
    cb.float2 = scan_bad_float;
    cb.float4 = scan_bad_float;
    cb.float8 = scan_bad_double;
    cb.array_start = scan_array;
    cb.map_start = scan_map;
    cb.tag = scan_tag;
    return cb;
}

int cbor_scan_item(const uint8_t *data, size_t len, unsigned max_depth, size_t *ret_len, cbor_scan_error *ret_error,
                   size_t *ret_pos)
{
    uint64_t pending[CBOR_SCAN_DEPTH_LIMIT + 1] = {1};
    const struct cbor_callbacks cb = scan_callbacks();
    unsigned depth = 0;
    size_t pos = 0;
    cbor_scan_error error = 0;

    if (max_depth > CBOR_SCAN_DEPTH_LIMIT)
        max_depth = CBOR_SCAN_DEPTH_LIMIT;
    while (pos < len && !error) {
        scan_state s = {.avail = len - pos};
        struct cbor_decoder_result r = cbor_stream_decode(data + pos, len - pos, &cb, &s);
        if (r.status != CBOR_DECODER_FINISHED) {
            error = CBOR_SCAN_MALFORMED;
            break;
        }
        if (s.bad) {
            error = CBOR_SCAN_UNSUPPORTED;
            break;
        }
        pos += r.read;
        pending[depth]--;
        if (s.opens > 0) {
            if (depth == max_depth) {
                error = CBOR_SCAN_TOO_DEEP;
                break;
            }
            pending[++depth] = s.opens;
        }
        while (depth > 0 && pending[depth] == 0)
            depth--;
        if (depth == 0 && pending[0] == 0)
            break;
    }
    if (!error && (pending[0] != 0 || depth != 0)) {
        error = CBOR_SCAN_TRUNCATED;
        pos = len;
    }
    if (error) {
        *ret_error = error;
        *ret_pos = pos;
        return -EBADMSG;
    }
    *ret_len = pos;
    return 0;
}

bool cbor_get_bytes(const cbor_item_t *item, const uint8_t **ret_p, size_t *ret_len)
{
    if (!cbor_isa_bytestring(item) || !cbor_bytestring_is_definite(item))
        return false;
    *ret_p = cbor_bytestring_handle(item);
    *ret_len = cbor_bytestring_length(item);
    return true;
}

bool cbor_get_text(const cbor_item_t *item, const char **ret_p, size_t *ret_len)
{
    if (!cbor_isa_string(item) || !cbor_string_is_definite(item))
        return false;
    *ret_p = (const char *)cbor_string_handle(item);
    *ret_len = cbor_string_length(item);
    return true;
}

void cbor_decrefp(cbor_item_t **p)
{
    if (*p)
        cbor_decref(p);
}
