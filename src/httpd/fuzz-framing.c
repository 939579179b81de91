/* libFuzzer target: the request-head checkers. The input is copied to a
 * heap buffer of exactly its size so ASan sees any read past it.
 * - HTTP/1: an accepted head must have at most one of Content-Length /
 *   Transfer-Encoding and one Host, checked here by a naive scan of its own;
 *   a head that will never parse gets a stand-in that parses and passes.
 * - HTTP/2: the same bytes as an HPACK header block, checked against an
 *   empty dynamic table and against one h2o filled from a first block. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <h2o.h>
#include <h2o/http2.h>
#include <h2o/http2_internal.h>

#include "httpd/framing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Header lines of HEAD (after its request line, up to its empty line)
 * starting with NAME followed by ':'. */
static size_t count_lines(const char *head, size_t len, const char *name)
{
    size_t n = 0, nlen = strlen(name), skip = 0;
    /* picohttpparser skips one empty line before the request line */
    if (len >= 2 && head[0] == '\r' && head[1] == '\n')
        skip = 2;
    else if (len >= 1 && head[0] == '\n')
        skip = 1;
    const char *first = memchr(head + skip, '\n', len - skip);
    for (size_t i = first ? (size_t)(first - head) + 1 : len; i < len;) {
        const char *eol = memchr(head + i, '\n', len - i);
        size_t line = eol ? (size_t)(eol - (head + i)) : len - i;
        if (line == 0 || (line == 1 && head[i] == '\r'))
            break;
        if (line > nlen && strncasecmp(head + i, name, nlen) == 0 && head[i + nlen] == ':')
            n++;
        i += line + 1;
    }
    return n;
}

/* BLOCK as an HTTP/2 request's header block: checked against an empty
 * dynamic table and one holding what a first request entered (the decoder
 * must not read past BLOCK, nor change the table it is given). */
static void check_as_hpack(const uint8_t *block, size_t size)
{
    static h2o_hpack_header_table_t filled = {.hpack_capacity = 4096, .hpack_max_capacity = 4096};
    if (filled.num_entries == 0) {
        static const uint8_t first[] = {0x82, 0x84, 0x87, 0x41, 1, 'a', 0x5c, 1, '5', 0x40, 3, 'x', '-', 'a', 1, 'b'};
        h2o_req_t req;
        memset(&req, 0, sizeof(req));
        h2o_mem_init_pool(&req.pool);
        int pseudo = 0;
        size_t cl;
        const char *err = NULL;
        H2O_TOKEN_HOST->http2_should_reject = 0; /* as framing_configure() sets them */
        H2O_TOKEN_TRANSFER_ENCODING->http2_should_reject = 0;
        if (h2o_hpack_parse_headers(&req, &filled, first, sizeof(first), &pseudo, &cl, NULL, &err) != 0)
            abort();
        h2o_mem_clear_pool(&req.pool);
    }
    h2o_hpack_header_table_t empty = {.hpack_capacity = 4096, .hpack_max_capacity = 4096};
    size_t entries = filled.num_entries, hpack_size = filled.hpack_size;
    (void)framing_check_h2_block(&empty, block, size);
    (void)framing_check_h2_block(&filled, block, size);
    if (empty.num_entries || filled.num_entries != entries || filled.hpack_size != hpack_size)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *head = malloc(size ? size : 1);
    if (!head)
        return 0;
    memcpy(head, data, size);
    const char *why = framing_check_head(head, size);
    if (!why && memchr(head, 0, size) == NULL) {
        size_t cl = count_lines(head, size, "content-length"), te = count_lines(head, size, "transfer-encoding");
        if (cl + te > 1 || count_lines(head, size, "host") > 1)
            abort();
    }
    (void)framing_path_has_parameters(head, size);
    const char *unparsable = framing_head_unparsable(head, size, 0, NULL);
    if (!why && unparsable)
        abort(); /* a head that passes is one h2o parses */
    if (unparsable) {
        size_t room = size + FRAMING_STAND_IN_LINE_MAX + 64;
        char *stand_in = malloc(room);
        size_t n = stand_in ? framing_stand_in_head(head, size, size, stand_in, room) : 0;
        if (stand_in &&
            (n < size || framing_check_head(stand_in, n) || framing_head_unparsable(stand_in, n, size, NULL)))
            abort(); /* the stand-in is one complete head h2o serves as is */
        free(stand_in);
    }
    check_as_hpack((const uint8_t *)head, size);
    free(head);
    return 0;
}
