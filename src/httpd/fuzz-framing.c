/* libFuzzer target: the HTTP/1 request-head checker. The input is copied to
 * a heap buffer of exactly its size so ASan sees any read past it. An
 * accepted head must have at most one of Content-Length / Transfer-Encoding
 * and one Host, checked here by a naive scan of its own. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "httpd/framing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Header lines of HEAD (after its request line, up to its empty line)
 * starting with NAME followed by ':'. */
static size_t count_lines(const char *head, size_t len, const char *name)
{
    size_t n = 0, nlen = strlen(name);
    const char *first = memchr(head, '\n', len);
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
    free(head);
    return 0;
}
