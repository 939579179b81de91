/* Bump allocator for evaluations: a list of blocks with a hard cap on their
 * total size, reset between evaluations (keeping the largest block so that a
 * steady workload stops calling malloc). */
#include <errno.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cel/cel-internal.h"

#define ARENA_ALIGN 16u
#define ARENA_FIRST_BLOCK 4096u
#define ARENA_DEFAULT_MAX (16u * 1024u * 1024u)

typedef struct block {
    struct block *next;
    size_t size; /* usable bytes in data */
    size_t used;
    alignas(ARENA_ALIGN) unsigned char data[];
} block;

struct cel_arena {
    block *head;     /* current block; older ones follow */
    size_t total;    /* bytes of all blocks */
    size_t max;
    bool exhausted;
    pcre2_general_context *re_ctx;
    void *re_ctx_block; /* the context itself, which must outlive resets */
};

cel_arena *cel_arena_new(size_t max_bytes)
{
    cel_arena *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->max = max_bytes ? max_bytes : ARENA_DEFAULT_MAX;
    return a;
}

static void free_blocks(block *b)
{
    while (b) {
        block *next = b->next;
        free(b);
        b = next;
    }
}

void cel_arena_reset(cel_arena *a)
{
    if (!a)
        return;
    /* keep the largest block, which is the newest one */
    if (a->head) {
        free_blocks(a->head->next);
        a->head->next = NULL;
        a->head->used = 0;
        a->total = a->head->size;
    }
    a->exhausted = false;
}

void cel_arena_free(cel_arena *a)
{
    if (!a)
        return;
    free_blocks(a->head);
    pcre2_general_context_free(a->re_ctx);
    free(a);
}

void *cel_arena_alloc(cel_arena *a, size_t n)
{
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (n == 0)
        n = ARENA_ALIGN;
    block *b = a->head;
    if (b && b->size - b->used >= n) {
        void *p = b->data + b->used;
        b->used += n;
        return p;
    }
    size_t size = b ? b->size * 2 : ARENA_FIRST_BLOCK;
    if (size > 1024u * 1024u)
        size = 1024u * 1024u;
    if (size < n)
        size = n;
    if (n > a->max || a->total > a->max - n) {
        a->exhausted = true;
        return NULL;
    }
    if (size > a->max - a->total)
        size = a->max - a->total;
    block *nb = malloc(sizeof(block) + size);
    if (!nb) {
        a->exhausted = true;
        return NULL;
    }
    nb->size = size;
    nb->used = n;
    nb->next = b;
    a->head = nb;
    a->total += size;
    return nb->data;
}

bool cel_arena_exhausted(const cel_arena *a)
{
    return a->exhausted;
}

char *cel_arena_strndup(cel_arena *a, const char *s, size_t n)
{
    char *p = cel_arena_alloc(a, n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *cel_arena_vprintf(cel_arena *a, const char *fmt, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (n < 0)
        return NULL;
    char *p = cel_arena_alloc(a, (size_t)n + 1);
    if (!p)
        return NULL;
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

/* PCRE2 obtains the general context itself through these functions: that
 * first block comes from malloc, everything later from the arena. */
static void *re_malloc(PCRE2_SIZE n, void *data)
{
    cel_arena *a = data;
    if (!a->re_ctx) {
        a->re_ctx_block = malloc(n);
        return a->re_ctx_block;
    }
    return cel_arena_alloc(a, n);
}

/* Arena memory is released by reset, never piecemeal. */
static void re_free(void *p, void *data)
{
    cel_arena *a = data;
    if (p && p == a->re_ctx_block) {
        free(p);
        a->re_ctx_block = NULL;
    }
}

void *cel_arena_regex_context(cel_arena *a)
{
    if (!a->re_ctx)
        a->re_ctx = pcre2_general_context_create(re_malloc, re_free, a);
    return a->re_ctx;
}

cel_list *cel_list_new(cel_arena *a, size_t n, cel_value **ret_items)
{
    if (n > SIZE_MAX / sizeof(cel_value) - 1)
        return NULL;
    cel_list *l = cel_arena_alloc(a, sizeof(cel_list) + n * sizeof(cel_value));
    if (!l)
        return NULL;
    cel_value *items = (cel_value *)(l + 1);
    memset(items, 0, n * sizeof(cel_value));
    l->len = n;
    l->items = items;
    *ret_items = items;
    return l;
}

cel_map *cel_map_new(cel_arena *a, size_t n, cel_map_entry **ret_entries)
{
    if (n > SIZE_MAX / sizeof(cel_map_entry) - 1)
        return NULL;
    cel_map *m = cel_arena_alloc(a, sizeof(cel_map) + n * sizeof(cel_map_entry));
    if (!m)
        return NULL;
    cel_map_entry *entries = (cel_map_entry *)(m + 1);
    memset(entries, 0, n * sizeof(cel_map_entry));
    m->len = n;
    m->entries = entries;
    *ret_entries = entries;
    return m;
}

void cel_buf_init(cel_buf *b, cel_arena *a, size_t max)
{
    *b = (cel_buf){.arena = a, .data = (char *)"", .max = max};
}

int cel_buf_append(cel_buf *b, const void *p, size_t n)
{
    if (n > b->max - b->len)
        return -E2BIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap * 2;
        if (cap < b->len + n + 1)
            cap = b->len + n + 1;
        if (cap < 64)
            cap = 64;
        if (cap > b->max + 1)
            cap = b->max + 1;
        char *d = cel_arena_alloc(b->arena, cap);
        if (!d)
            return -ENOMEM;
        memcpy(d, b->data, b->len);
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int cel_out_append(cel_out *o, const void *p, size_t n)
{
    return o->sb ? strbuf_append(o->sb, p, n) : cel_buf_append(o->ab, p, n);
}

int cel_out_puts(cel_out *o, const char *s)
{
    return cel_out_append(o, s, strlen(s));
}

int cel_out_putc(cel_out *o, char c)
{
    return cel_out_append(o, &c, 1);
}

int cel_out_printf(cel_out *o, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return -E2BIG;
    return cel_out_append(o, buf, (size_t)n);
}
