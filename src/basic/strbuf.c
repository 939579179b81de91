#include "basic/strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "basic/encoding.h"



void strbuf_init(strbuf *b, size_t max)
{
    *b = (strbuf){.max = max};
}

void strbuf_init_secure(strbuf *b, size_t max)
{
    *b = (strbuf){.max = max, .secure = true};
}

void strbuf_init_static(strbuf *b, char *storage, size_t size)
{
    *b = (strbuf){.data = storage, .cap = size, .max = size - 1, .is_static = true};
    storage[0] = 0;
}

void strbuf_free(strbuf *b)
{
    if (b->secure && b->data)
        explicit_bzero(b->data, b->cap);
    if (!b->is_static)
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void strbuf_free_secure(strbuf *b)
{
    if (b->data)
        explicit_bzero(b->data, b->cap);
    strbuf_free(b);
}

void strbuf_reset(strbuf *b)
{
    if (b->secure && b->data)
        explicit_bzero(b->data, b->len);
    b->len = 0;
    b->truncated = false;
    if (b->data)
        b->data[0] = 0;
}

/* Makes room for N more bytes plus the terminator. */
static int strbuf_reserve(strbuf *b, size_t n)
{
    if (n > b->max - b->len) {
        if (b->is_static)
            b->truncated = true;
        return -E2BIG;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p;
    if (b->secure) {
        /* realloc() may move the data and leave the old copy in freed memory */
        p = malloc(cap);
        if (!p)
            return -ENOMEM;
        if (b->data) {
            memcpy(p, b->data, b->len + 1);
            explicit_bzero(b->data, b->cap);
            free(b->data);
        }
    } else
        p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int strbuf_append(strbuf *b, const void *p, size_t n)
{
    int r = strbuf_reserve(b, n);
    if (r < 0) {
        if (b->is_static && b->len < b->max) {
            size_t room = b->max - b->len;
            memcpy(b->data + b->len, p, room);
            b->len += room;
            b->data[b->len] = 0;
        }
        return r;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int strbuf_puts(strbuf *b, const char *s)
{
    return strbuf_append(b, s, strlen(s));
}

int strbuf_putc(strbuf *b, char c)
{
    return strbuf_append(b, &c, 1);
}

int strbuf_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    /* most calls fit the room already there: formatted once */
    if (b->data && b->cap > b->len) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int fitted = vsnprintf(b->data + b->len, room, fmt, ap);
        va_end(ap);
        if (fitted >= 0 && (size_t)fitted < room && (size_t)fitted <= b->max - b->len) {
            b->len += (size_t)fitted;
            return 0;
        }
        b->data[b->len] = 0; /* did not fit: undone, and grown below */
    }
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    int r = strbuf_reserve(b, (size_t)n);
    if (r < 0) {
        if (!b->is_static)
            return r;
        /* static: keep what fits */
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        b->len = b->max;
        b->data[b->len] = 0;
        b->truncated = true;
        return r;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int strbuf_put_json_string(strbuf *b, const char *s)
{
    int r = strbuf_putc(b, '"');
    while (r == 0 && *s) {
        char chunk[512];
        size_t n = json_escape_some(&s, chunk, sizeof(chunk));
        r = strbuf_append(b, chunk, n);
    }
    if (r == 0)
        r = strbuf_putc(b, '"');
    return r;
}

char *strbuf_steal(strbuf *b)
{
    if (b->is_static)
        return NULL;
    char *p = b->data;
    if (!p)
        p = calloc(1, 1);
    *b = (strbuf){.max = b->max, .secure = b->secure};
    return p;
}
