/* libFuzzer target: the segment reader (segment_walk()) on untrusted bytes.
 * Every record it reports lies inside the input, indexes count up from 0,
 * and a segment rewritten from the records it read walks back with every
 * record following and the same records. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audit/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct seen {
    const char *base;
    size_t size, n;
    char *rewritten;
    size_t len;
    segment_chain chain;
} seen;

static int on_record(void *userdata, const segment_record *rec)
{
    seen *s = userdata;
    if (rec->index != s->n || rec->text < s->base || rec->text + rec->len > s->base + s->size || rec->len == 0)
        abort();
    int n = segment_format_line(&s->chain, rec->text, rec->len, s->rewritten + s->len);
    if (n > 0)
        s->len += (size_t)n;
    s->n++;
    return 0;
}

static int all_follow(void *userdata, const segment_record *rec)
{
    if (!rec->follows)
        abort();
    (*(size_t *)userdata)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char id[] = "fuzz-000001";
    seen s = {.base = (const char *)data, .size = size, .rewritten = malloc(2 * size + SEGMENT_HEX_LEN + 2)};
    if (!s.rewritten || segment_chain_init(&s.chain, id) < 0) {
        free(s.rewritten);
        return 0;
    }
    uint64_t bad;
    segment_walk(id, (const char *)data, size, on_record, &s, &bad);
    size_t again = 0;
    if (segment_walk(id, s.rewritten, s.len, all_follow, &again, &bad) != 0 || again != s.chain.count)
        abort();
    segment_chain_dispose(&s.chain);
    free(s.rewritten);
    return 0;
}
