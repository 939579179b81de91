/* A growable byte buffer with a hard maximum, in the manner of curl's dynbuf:
 * anything a peer sends is accumulated here and can never grow past `max`.
 * The data is always NUL-terminated. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/macro.h"

typedef struct strbuf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;     /* largest len allowed; appends beyond it fail with -E2BIG */
    bool is_static; /* data is caller-owned and fixed in size */
    bool truncated; /* a static buffer dropped bytes */
    bool secure;    /* holds secrets: wiped on reset, growth and free */
} strbuf;

/* Heap buffer that may grow to MAX bytes of content. */
void strbuf_init(strbuf *b, size_t max);
/* The same for a buffer that will hold secrets: no copy is left behind when
 * it grows, and its contents are wiped by strbuf_reset() and strbuf_free(). */
void strbuf_init_secure(strbuf *b, size_t max);
/* Fixed caller-owned storage; appends that do not fit are cut and `truncated` set. */
void strbuf_init_static(strbuf *b, char *storage, size_t size);
void strbuf_free(strbuf *b);
/* Wipes the contents before freeing: for buffers that held secrets. */
void strbuf_free_secure(strbuf *b);
void strbuf_reset(strbuf *b);

/* Each returns 0, -ENOMEM, or -E2BIG when the buffer would pass its maximum. */
int strbuf_append(strbuf *b, const void *p, size_t n);
int strbuf_puts(strbuf *b, const char *s);
int strbuf_putc(strbuf *b, char c);
int strbuf_printf(strbuf *b, const char *fmt, ...) _printf_(2, 3);
/* Appends S as a JSON string literal, quotes included. */
int strbuf_put_json_string(strbuf *b, const char *s);

/* Hands the heap data to the caller (who frees it) and resets the buffer. */
char *strbuf_steal(strbuf *b);

static inline void strbuf_freep(strbuf *b)
{
    strbuf_free(b);
}
#define _cleanup_strbuf_ _cleanup_(strbuf_freep)
