/* The out-of-process plugin protocol (see wire.h). */
#include "plugin/wire.h"

#include <errno.h>
#include <string.h>

/* ---- encoding ---- */

/* A frame being written: the first error sticks. */
typedef struct writer {
    strbuf *b;
    int err;
} writer;

static void w_put(writer *w, const char *p, size_t n)
{
    if (w->err == 0 && n)
        w->err = strbuf_append(w->b, p, n);
}

static void put_u8(writer *b, uint8_t v)
{
    w_put(b, (const char *)&v, 1);
}

static void put_u16(writer *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    w_put(b, (const char *)x, 2);
}

static void put_u32(writer *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    w_put(b, (const char *)x, 4);
}

static void put_kv(writer *b, cloister_str k, cloister_str v)
{
    put_u16(b, (uint16_t)k.len);
    w_put(b, k.ptr, k.len);
    put_u32(b, (uint32_t)v.len);
    w_put(b, v.ptr, v.len);
}

/* Opens a frame of TYPE in OUT; returns where its length goes. */
static size_t frame_open(writer *out, plugin_frame_type type)
{
    size_t at = out->b->len;
    put_u32(out, 0);
    put_u8(out, (uint8_t)type);
    return at;
}

/* Writes the length of the frame opened at AT. */
static int frame_close(writer *out, size_t at)
{
    if (out->err < 0)
        return out->err;
    size_t n = out->b->len - at - 4;
    if (n > PLUGIN_FRAME_MAX)
        return -E2BIG;
    uint8_t *p = (uint8_t *)out->b->data + at;
    p[0] = (uint8_t)n, p[1] = (uint8_t)(n >> 8), p[2] = (uint8_t)(n >> 16), p[3] = (uint8_t)(n >> 24);
    return 0;
}

int plugin_wire_init(strbuf *sb, uint32_t timeout_ms, const char *config, size_t len)
{
    writer w = {sb, 0}, *out = &w;
    if (len > PLUGIN_CONFIG_MAX)
        return -E2BIG;
    size_t at = frame_open(out, PLUGIN_FRAME_INIT);
    put_u32(out, timeout_ms);
    put_u32(out, (uint32_t)len);
    w_put(out, config, len);
    return frame_close(out, at);
}

int plugin_wire_ready(strbuf *sb, bool ok, const char *error)
{
    writer w = {sb, 0}, *out = &w;
    size_t n = error ? strnlen(error, PLUGIN_REASON_MAX) : 0;
    size_t at = frame_open(out, PLUGIN_FRAME_READY);
    put_u8(out, ok);
    put_u16(out, (uint16_t)n);
    w_put(out, error ? error : "", n);
    return frame_close(out, at);
}

int plugin_wire_call(strbuf *sb, const plugin_call *call)
{
    writer w = {sb, 0}, *out = &w;
    size_t at = frame_open(out, PLUGIN_FRAME_CALL);
    put_u8(out, (uint8_t)call->phase);
    put_u16(out, (uint16_t)call->n_props);
    for (size_t i = 0; i < call->n_props; i++)
        put_kv(out, call->props[i].key, call->props[i].value);
    put_u16(out, (uint16_t)call->n_headers);
    for (size_t i = 0; i < call->n_headers; i++)
        put_kv(out, call->headers[i].key, call->headers[i].value);
    size_t body = call->body.len > PLUGIN_BODY_MAX ? PLUGIN_BODY_MAX : call->body.len;
    put_u32(out, (uint32_t)body);
    w_put(out, call->body.ptr, body);
    return frame_close(out, at);
}

int plugin_wire_answer(strbuf *sb, const plugin_call *call)
{
    writer w = {sb, 0}, *out = &w;
    size_t at = frame_open(out, PLUGIN_FRAME_ANSWER);
    size_t reason = strlen(call->reason);
    put_u8(out, (uint8_t)call->action);
    put_u16(out, (uint16_t)call->status);
    put_u16(out, (uint16_t)reason);
    w_put(out, call->reason, reason);
    put_u16(out, (uint16_t)call->n_ops);
    for (size_t i = 0; i < call->n_ops; i++) {
        put_u8(out, (uint8_t)call->ops[i].kind);
        put_kv(out, call->ops[i].name, call->ops[i].value);
    }
    put_u16(out, (uint16_t)call->n_tags);
    for (size_t i = 0; i < call->n_tags; i++)
        put_kv(out, call->tags[i].key, call->tags[i].value);
    return frame_close(out, at);
}

/* ---- decoding ---- */

typedef struct reader {
    const uint8_t *p;
    size_t n;
    bool bad;
} reader;

static uint32_t get_uint(reader *r, size_t size)
{
    if (r->bad || r->n < size) {
        r->bad = true;
        return 0;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < size; i++)
        v |= (uint32_t)r->p[i] << (8 * i);
    r->p += size;
    r->n -= size;
    return v;
}

/* LEN bytes (at most MAX) as a string pointing into the frame. */
static cloister_str get_bytes(reader *r, size_t len, size_t max)
{
    if (r->bad || len > max || r->n < len) {
        r->bad = true;
        return (cloister_str){"", 0};
    }
    cloister_str s = {(const char *)r->p, len};
    r->p += len;
    r->n -= len;
    return s;
}

static void get_kv(reader *r, plugin_kv *kv, size_t key_max, size_t value_max)
{
    kv->key = get_bytes(r, get_uint(r, 2), key_max);
    kv->value = get_bytes(r, get_uint(r, 4), value_max);
}

/* Starts reading a payload of TYPE. */
static reader open_payload(const uint8_t *p, size_t n, plugin_frame_type type)
{
    reader r = {p, n, n > PLUGIN_FRAME_MAX};
    if (get_uint(&r, 1) != (uint32_t)type)
        r.bad = true;
    return r;
}

static int done(const reader *r)
{
    return r->bad || r->n != 0 ? -EBADMSG : 0;
}

int plugin_wire_decode_init(const uint8_t *p, size_t n, uint32_t *ret_timeout_ms, cloister_str *ret_config)
{
    reader r = open_payload(p, n, PLUGIN_FRAME_INIT);
    uint32_t timeout = get_uint(&r, 4);
    cloister_str config = get_bytes(&r, get_uint(&r, 4), PLUGIN_CONFIG_MAX);
    if (done(&r) < 0)
        return -EBADMSG;
    *ret_timeout_ms = timeout;
    *ret_config = config;
    return 0;
}

int plugin_wire_decode_ready(const uint8_t *p, size_t n, bool *ret_ok, cloister_str *ret_error)
{
    reader r = open_payload(p, n, PLUGIN_FRAME_READY);
    uint32_t ok = get_uint(&r, 1);
    cloister_str error = get_bytes(&r, get_uint(&r, 2), PLUGIN_REASON_MAX);
    if (ok > 1 || done(&r) < 0)
        return -EBADMSG;
    *ret_ok = ok == 1;
    *ret_error = error;
    return 0;
}

int plugin_wire_decode_call(const uint8_t *p, size_t n, plugin_call *call)
{
    reader r = open_payload(p, n, PLUGIN_FRAME_CALL);
    uint32_t phase = get_uint(&r, 1);
    if (phase >= CLOISTER_PHASE_COUNT_)
        return -EBADMSG;
    plugin_call_init(call, (cloister_phase)phase);
    size_t np = get_uint(&r, 2);
    if (np > PLUGIN_PROPS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < np; i++)
        get_kv(&r, &call->props[i], PLUGIN_NAME_MAX, PLUGIN_VALUE_MAX);
    call->n_props = np;
    size_t nh = get_uint(&r, 2);
    if (nh > PLUGIN_HEADERS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < nh; i++)
        get_kv(&r, &call->headers[i], PLUGIN_NAME_MAX, PLUGIN_VALUE_MAX);
    call->n_headers = nh;
    call->body = get_bytes(&r, get_uint(&r, 4), PLUGIN_BODY_MAX);
    return done(&r);
}

/* Copies KV (pointing into a frame) into CALL's answer buffer. */
static int keep_kv(plugin_call *call, const plugin_kv *in, plugin_kv *out)
{
    return plugin_call_keep(call, in->key.ptr, in->key.len, &out->key) < 0 ||
                   plugin_call_keep(call, in->value.ptr, in->value.len, &out->value) < 0
               ? -EBADMSG
               : 0;
}

int plugin_wire_decode_answer(const uint8_t *p, size_t n, plugin_call *call)
{
    plugin_call_clear_answer(call);
    reader r = open_payload(p, n, PLUGIN_FRAME_ANSWER);
    uint32_t action = get_uint(&r, 1), status = get_uint(&r, 2);
    cloister_str reason = get_bytes(&r, get_uint(&r, 2), PLUGIN_REASON_MAX);
    if (action > CLOISTER_DENY || (status != 0 && (status < 400 || status > 599)))
        return -EBADMSG;
    size_t nops = get_uint(&r, 2);
    if (nops > PLUGIN_OPS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < nops && !r.bad; i++) {
        uint32_t kind = get_uint(&r, 1);
        plugin_kv kv;
        get_kv(&r, &kv, PLUGIN_NAME_MAX, PLUGIN_VALUE_MAX);
        /* the sandbox's host checked them; a plugin writing frames of its own did not */
        if (r.bad || (kind != PLUGIN_OP_SET && kind != PLUGIN_OP_REMOVE) || !plugin_header_settable(kv.key) ||
            !plugin_value_valid(kv.value))
            return -EBADMSG;
        plugin_kv kept;
        if (keep_kv(call, &kv, &kept) < 0)
            return -EBADMSG;
        call->ops[i] = (plugin_op){(plugin_op_kind)kind, kept.key, kept.value};
    }
    size_t ntags = get_uint(&r, 2);
    if (ntags > PLUGIN_TAGS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < ntags && !r.bad; i++) {
        plugin_kv kv;
        get_kv(&r, &kv, PLUGIN_NAME_MAX, PLUGIN_VALUE_MAX);
        if (r.bad || kv.key.len == 0 || !plugin_value_valid(kv.value) || keep_kv(call, &kv, &call->tags[i]) < 0)
            return -EBADMSG;
    }
    if (done(&r) < 0)
        return -EBADMSG;
    call->action = (cloister_action)action;
    call->status = (int)status;
    for (size_t i = 0; i < reason.len; i++)
        call->reason[i] = (unsigned char)reason.ptr[i] < 0x20 || reason.ptr[i] == 0x7f ? '?' : reason.ptr[i];
    call->reason[reason.len] = 0;
    call->n_ops = nops;
    call->n_tags = ntags;
    return 0;
}
