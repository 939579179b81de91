/* The out-of-process plugin protocol on a Unix stream socket: frames of a
 * 4-byte little-endian length and that many bytes, the first the type.
 *
 *   INIT   host -> sandbox  u32 timeoutMs, u32 n, config JSON (n bytes)
 *   READY  sandbox -> host  u8 ok, u16 n, error text
 *   CALL   host -> sandbox  u8 phase, u16 n props {u16 k, key, u32 v, value},
 *                           u16 n headers {the same}, u32 n, body
 *   ANSWER sandbox -> host  u8 action, u16 status, u16 n, reason,
 *                           u16 n ops {u8 kind, u16 k, name, u32 v, value},
 *                           u16 n tags {u16 k, key, u32 v, value}
 *
 * Every count and length is capped (call.h); a frame past a cap, with bytes
 * left over or cut short is refused (-EBADMSG): the sandbox answered
 * garbage. Decoded strings point into the frame. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "basic/strbuf.h"
#include "plugin/call.h"

#define PLUGIN_FRAME_MAX (PLUGIN_BODY_MAX + 4u * 1024 * 1024) /* one frame's bytes */
#define PLUGIN_CONFIG_MAX (64u * 1024)

typedef enum plugin_frame_type {
    PLUGIN_FRAME_INIT = 1,
    PLUGIN_FRAME_READY = 2,
    PLUGIN_FRAME_CALL = 3,
    PLUGIN_FRAME_ANSWER = 4,
} plugin_frame_type;

/* Appends a whole frame (length prefix included) to OUT. Return 0 or the
 * strbuf's error (-E2BIG past PLUGIN_FRAME_MAX). */
int plugin_wire_init(strbuf *out, uint32_t timeout_ms, const char *config, size_t len);
int plugin_wire_ready(strbuf *out, bool ok, const char *error);
int plugin_wire_call(strbuf *out, const plugin_call *call);
int plugin_wire_answer(strbuf *out, const plugin_call *call);

/* Decoders of a frame's payload (after the length): 0 or -EBADMSG. */
int plugin_wire_decode_init(const uint8_t *p, size_t n, uint32_t *ret_timeout_ms, cloister_str *ret_config);
int plugin_wire_decode_ready(const uint8_t *p, size_t n, bool *ret_ok, cloister_str *ret_error);
/* Fills CALL's inputs (pointing into P). */
int plugin_wire_decode_call(const uint8_t *p, size_t n, plugin_call *call);
/* Fills CALL's answer (copied into CALL: P may go after). */
int plugin_wire_decode_answer(const uint8_t *p, size_t n, plugin_call *call);
