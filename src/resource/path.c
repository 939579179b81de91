#include "resource/path.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "basic/strbuf.h"

/* Longest key copied into a path; longer keys are cut and marked with "...". */
#define PATH_KEY_MAX 64

void resource_path_init(resource_path *p)
{
    p->len = 0;
    p->buf[0] = 0;
}

/* Keys that can follow a dot unquoted: [A-Za-z0-9_-]{1,64}. */
static bool key_is_simple(const char *key, size_t n)
{
    if (n == 0 || n > PATH_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Appends SEG; when it does not fit, appends as much of "..." as fits. */
static void path_append(resource_path *p, const char *seg)
{
    size_t n = strlen(seg), room = sizeof(p->buf) - 1 - p->len;
    if (n > room) {
        seg = "...";
        n = MIN(room, STRLEN("..."));
    }
    memcpy(p->buf + p->len, seg, n);
    p->len += n;
    p->buf[p->len] = 0;
}

size_t resource_path_push_key(resource_path *p, const char *key, size_t n)
{
    size_t saved = p->len;
    char seg[PATH_KEY_MAX * 6 + 16];
    if (key_is_simple(key, n)) {
        snprintf(seg, sizeof(seg), "%s%.*s", p->len ? "." : "", (int)n, key);
    } else {
        /* Cut long keys on a UTF-8 character boundary before escaping. */
        size_t cut = n;
        if (cut > PATH_KEY_MAX) {
            cut = PATH_KEY_MAX;
            while (cut > 0 && ((unsigned char)key[cut] & 0xc0) == 0x80)
                cut--;
        }
        char raw[PATH_KEY_MAX + 1];
        memcpy(raw, key, cut);
        raw[cut] = 0;
        strbuf b;
        strbuf_init_static(&b, seg, sizeof(seg));
        strbuf_putc(&b, '[');
        strbuf_put_json_string(&b, raw);
        if (cut < n)
            strbuf_puts(&b, "...");
        strbuf_putc(&b, ']');
    }
    path_append(p, seg);
    return saved;
}

size_t resource_path_push_index(resource_path *p, size_t i)
{
    size_t saved = p->len;
    char seg[32];
    snprintf(seg, sizeof(seg), "[%zu]", i);
    path_append(p, seg);
    return saved;
}

void resource_path_pop(resource_path *p, size_t saved)
{
    p->len = saved;
    p->buf[saved] = 0;
}
