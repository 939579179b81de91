/* libFuzzer target: the front end's request head parser (h1front.h). The
 * input, copied to a heap buffer of exactly its size so ASan sees any read
 * past it, is parsed whole and again in two parts (the second parse resuming
 * where the first stopped, as a head arriving in pieces is parsed); both must
 * agree on a complete head. A parsed head lies within the input, carries a body only when its
 * framing is unambiguous (no verdict), and one that is refused stands in as
 * a head that parses with no body. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "httpd/framing.h"
#include "httpd/h1front.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_within(const h1front_head *h, const char *buf, size_t len)
{
    if (h->len > len || h->method.base < buf || h->method.base + h->method.len > buf + h->len ||
        h->target.base < buf || h->target.base + h->target.len > buf + h->len)
        abort();
    for (size_t i = 0; i < h->n_fields; i++)
        if (h->fields[i].value < buf || h->fields[i].value + h->fields[i].value_len > buf + h->len)
            abort();
    if (h->verdict && (h->body != H1FRONT_BODY_NONE || h->keep_alive))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    h1front_head whole, part;
    int r = h1front_parse_head(buf, size, 0, &whole);
    if (r > 0)
        check_within(&whole, buf, size);
    size_t cut = size ? (size_t)data[0] % size : 0;
    if (h1front_parse_head(buf, cut, 0, &part) == -EAGAIN) {
        /* picohttpparser resuming first looks for the head's end only: of
         * bytes that are not one complete head, one parse may call them
         * incomplete and the other unparsable (both are never served) */
        int again = h1front_parse_head(buf, size, cut, &part);
        if (((r > 0 || again > 0) && again != r) ||
            (r > 0 && (part.body != whole.body || part.content_length != whole.content_length ||
                       part.keep_alive != whole.keep_alive || part.verdict != whole.verdict)))
            abort();
    }
    if (r == -EBADMSG || (r == -EAGAIN && size >= H2O_MAX_REQLEN)) {
        size_t room = FRAMING_STAND_IN_LINE_MAX + 64;
        char *stand_in = malloc(room);
        size_t n = stand_in ? framing_stand_in_head(buf, size, 0, stand_in, room) : 0;
        if (n && h1front_parse_head(stand_in, n, 0, &part) <= 0)
            abort(); /* what the front end serves in its place parses */
        if (n && (part.body != H1FRONT_BODY_NONE || part.keep_alive))
            abort();
        free(stand_in);
    }
    free(buf);
    return 0;
}
