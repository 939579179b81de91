/* libFuzzer target: the out-of-process protocol's decoders (wire.h) on
 * any bytes, as a frame from a sandbox (ANSWER, READY) and from the proxy
 * (CALL, INIT); what decodes is encoded again and must decode the same. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "plugin/wire.h"

static plugin_call call, again;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool ok;
    cloister_str s;
    uint32_t timeout;
    (void)plugin_wire_decode_ready(data, size, &ok, &s);
    (void)plugin_wire_decode_init(data, size, &timeout, &s);
    if (plugin_wire_decode_answer(data, size, &call) == 0) {
        strbuf b;
        strbuf_init(&b, PLUGIN_FRAME_MAX + 4);
        if (plugin_wire_answer(&b, &call) != 0 ||
            plugin_wire_decode_answer((const uint8_t *)b.data + 4, b.len - 4, &again) != 0 ||
            again.n_ops != call.n_ops || again.n_tags != call.n_tags || strcmp(again.reason, call.reason) != 0)
            __builtin_trap();
        strbuf_free(&b);
    }
    if (plugin_wire_decode_call(data, size, &call) == 0) {
        strbuf b;
        strbuf_init(&b, PLUGIN_FRAME_MAX + 4);
        if (plugin_wire_call(&b, &call) != 0 ||
            plugin_wire_decode_call((const uint8_t *)b.data + 4, b.len - 4, &again) != 0 ||
            again.n_headers != call.n_headers || again.body.len != call.body.len)
            __builtin_trap();
        strbuf_free(&b);
    }
    return 0;
}
