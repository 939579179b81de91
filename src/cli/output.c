#include "cli/output.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "resource/manifest.h"

#define TABLE_GAP "   "

char *text_sanitize(const char *s, char *out, size_t size)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 1 < size;) {
        size_t n = 1;
        if (*p >= 0xc0)
            while (p[n] && (p[n] & 0xc0) == 0x80 && n < 4)
                n++;
        if (o + n >= size)
            break;
        bool control = *p < 0x20 || *p == 0x7f || (*p == 0xc2 && n == 2 && p[1] >= 0x80 && p[1] <= 0x9f);
        if (control)
            out[o++] = '?';
        else {
            memcpy(out + o, p, n);
            o += n;
        }
        p += n;
    }
    out[o] = 0;
    return out;
}

char *format_age(int64_t seconds, char *buf, size_t size)
{
    if (seconds < 0)
        seconds = 0;
    if (seconds < 120)
        snprintf(buf, size, "%llds", (long long)seconds);
    else if (seconds < 120 * 60)
        snprintf(buf, size, "%lldm", (long long)(seconds / 60));
    else if (seconds < 48 * 3600)
        snprintf(buf, size, "%lldh", (long long)(seconds / 3600));
    else if (seconds < 2 * 365 * 86400LL)
        snprintf(buf, size, "%lldd", (long long)(seconds / 86400));
    else
        snprintf(buf, size, "%lldy", (long long)(seconds / (365 * 86400LL)));
    return buf;
}

int output_json(const json_t *v)
{
    char *text = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (!text)
        return -ENOMEM;
    puts(text);
    free(text);
    return 0;
}

int output_yaml(const json_t *v)
{
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, (size_t)256 << 20);
    int r = 0;
    if (json_is_array(v)) {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            r = yaml_emit_json(item, &out);
            if (r < 0)
                return r;
        }
    } else
        r = yaml_emit_json(v, &out);
    if (r < 0)
        return r;
    fwrite(out.data ? out.data : "", 1, out.len, stdout);
    return 0;
}

/* The value at the dotted PATH of V, or NULL. */
static const json_t *lookup(const json_t *v, const char *path)
{
    char copy[128], *save = NULL;
    snprintf(copy, sizeof(copy), "%s", path);
    for (char *seg = strtok_r(copy, ".", &save); seg && v; seg = strtok_r(NULL, ".", &save))
        v = json_object_get(v, seg);
    return v;
}

/* Appends V as table text: strings as they are, arrays joined with ",". */
static void put_value(strbuf *b, const json_t *v)
{
    char *dump;
    switch (json_typeof(v)) {
    case JSON_STRING:
        strbuf_puts(b, json_string_value(v));
        break;
    case JSON_ARRAY: {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            if (i)
                strbuf_putc(b, ',');
            put_value(b, item);
        }
        break;
    }
    case JSON_OBJECT: { /* labels: k=v,k2=v2 */
        const char *key;
        const json_t *item;
        bool first = true;
        json_object_foreach((json_t *)v, key, item) {
            strbuf_printf(b, "%s%s=", first ? "" : ",", key);
            put_value(b, item);
            first = false;
        }
        break;
    }
    default:
        dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (dump)
            strbuf_puts(b, dump);
        free(dump);
    }
}

/* The text of column C for ITEM, as a heap string (NULL on ENOMEM). */
static char *cell_text(const resource_column *c, const json_t *item)
{
    const json_t *v = NULL;
    for (size_t i = 0; i < ELEMENTSOF(c->paths) && c->paths[i] && !v; i++) {
        v = lookup(item, c->paths[i]);
        if (json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0 && !c->count))
            v = NULL;
    }
    char buf[32];
    if (c->count) {
        snprintf(buf, sizeof(buf), "%zu", json_array_size(v));
        return strdup(buf);
    }
    if (!v)
        return strdup(c->fallback ? c->fallback : "<none>");
    strbuf b;
    strbuf_init(&b, 4096);
    put_value(&b, v);
    return strbuf_steal(&b);
}

/* Number of characters (not bytes) of the UTF-8 string S. */
static size_t text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80;
    return w;
}

/* Cleans TEXT for the terminal and cuts it to OUTPUT_CELL_MAX characters;
 * takes TEXT over and returns a heap string, or NULL on ENOMEM. */
static char *cell_finish(char *text)
{
    if (!text)
        return NULL;
    size_t size = strlen(text) + 1;
    _cleanup_free_ char *clean = malloc(size);
    if (clean)
        text_sanitize(text, clean, size);
    free(text);
    if (!clean)
        return NULL;
    if (text_width(clean) > OUTPUT_CELL_MAX) {
        size_t chars = 0, i = 0;
        for (; clean[i]; i++) {
            if (((unsigned char)clean[i] & 0xc0) != 0x80 && chars++ == OUTPUT_CELL_MAX - 3)
                break;
        }
        memcpy(clean + i, "...", 4);
    }
    return TAKE_PTR(clean);
}

/* Frees the N cells of a table and the array. */
static void free_cells(char **cells, size_t n)
{
    for (size_t i = 0; cells && i < n; i++)
        free(cells[i]);
    free(cells);
}

/* -o wide: after the kind's own extra columns, the labels of every kind */
static const resource_column labels_column = {"LABELS", {"metadata.labels"}, false, NULL};

int output_table(const resource_kind *k, const json_t *items, int64_t now)
{
    return output_table_wide(k, items, now, false);
}

int output_table_wide(const resource_kind *k, const json_t *items, int64_t now, bool wide)
{
    /* the columns between NAME and AGE */
    const resource_column *column[32];
    size_t n_columns = 0;
    for (const resource_column *c = k->columns; c->header && n_columns < ELEMENTSOF(column) - 1; c++)
        column[n_columns++] = c;
    for (const resource_column *c = wide ? k->wide_columns : NULL; c && c->header && n_columns < ELEMENTSOF(column) - 1;
         c++)
        column[n_columns++] = c;
    if (wide)
        column[n_columns++] = &labels_column;
    size_t ncols = n_columns + 2, nrows = json_array_size(items) + 1;
    if (nrows > SIZE_MAX / ncols / sizeof(char *))
        return -ENOMEM;
    char **cells = calloc(nrows * ncols, sizeof(char *));
    size_t *width = calloc(ncols, sizeof(size_t));
    int r = cells && width ? 0 : -ENOMEM;

    for (size_t col = 0; r == 0 && col < ncols; col++) {
        const char *h = col == 0 ? "NAME" : col == ncols - 1 ? "AGE" : column[col - 1]->header;
        if (!(cells[col] = strdup(h)))
            r = -ENOMEM;
    }
    for (size_t row = 1; r == 0 && row < nrows; row++) {
        const json_t *item = json_array_get(items, row - 1);
        const json_t *meta = json_object_get(item, "metadata");
        const char *name = json_string_value(json_object_get(meta, "name"));
        const char *created = json_string_value(json_object_get(meta, "createdAt"));
        int64_t t;
        char age[32] = "<unknown>";
        if (created && time_parse_rfc3339(created, &t) == 0)
            format_age(now - t, age, sizeof(age));
        char **line = cells + row * ncols;
        line[0] = cell_finish(strdup(name ? name : "<none>"));
        for (size_t col = 1; col + 1 < ncols; col++)
            line[col] = cell_finish(cell_text(column[col - 1], item));
        line[ncols - 1] = strdup(age);
        for (size_t col = 0; col < ncols; col++)
            if (!line[col])
                r = -ENOMEM;
    }
    for (size_t i = 0; r == 0 && i < nrows * ncols; i++)
        width[i % ncols] = MAX(width[i % ncols], text_width(cells[i]));
    for (size_t row = 0; r == 0 && row < nrows; row++) {
        for (size_t col = 0; col < ncols; col++) {
            const char *cell = cells[row * ncols + col];
            if (col + 1 == ncols)
                printf("%s\n", cell);
            else
                printf("%s%*s" TABLE_GAP, cell, (int)(width[col] - text_width(cell)), "");
        }
    }
    free_cells(cells, nrows * ncols);
    free(width);
    return r;
}

char *output_kind_name(const char *kind, const char *name, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", kind, name);
    for (char *p = buf; *p && *p != '/'; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    return buf;
}

/* The largest diff computed line by line (its table is n*m cells); past
 * it every old line is shown removed and every new one added. */
#define DIFF_CELLS_MAX ((size_t)4 << 20)

static int compare_keys(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Appends one line "PATH: VALUE" per leaf of V (keys sorted, arrays by
 * index; an empty object or array is a leaf) to LINES. Returns 0 or -ENOMEM. */
static int flatten(const json_t *v, const char *path, json_t *lines)
{
    char sub[1024];
    if (json_is_object(v) && json_object_size(v) > 0) {
        size_t n = json_object_size(v), i = 0;
        _cleanup_free_ const char **keys = calloc(n, sizeof(*keys));
        if (!keys)
            return -ENOMEM;
        const char *key;
        const json_t *item;
        json_object_foreach((json_t *)v, key, item) keys[i++] = key;
        qsort(keys, n, sizeof(*keys), compare_keys);
        for (i = 0; i < n; i++) {
            snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", keys[i]);
            int r = flatten(json_object_get(v, keys[i]), sub, lines);
            if (r < 0)
                return r;
        }
        return 0;
    }
    if (json_is_array(v) && json_array_size(v) > 0) {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            int r = flatten(item, sub, lines);
            if (r < 0)
                return r;
        }
        return 0;
    }
    _cleanup_free_ char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text || json_array_append_new(lines, json_sprintf("%s: %s", path, text)) < 0)
        return -ENOMEM;
    return 0;
}

static void diff_line(char mark, const json_t *line)
{
    char clean[4096];
    printf("%c%s\n", mark, text_sanitize(json_string_value(line), clean, sizeof(clean)));
}

int output_diff(const char *label, const json_t *before, const json_t *after)
{
    json_auto_t *a = json_array(), *b = json_array();
    if (!a || !b || (before && !json_is_null(before) && flatten(before, "", a) < 0) || flatten(after, "", b) < 0)
        return -ENOMEM;
    size_t n = json_array_size(a), m = json_array_size(b);
    char clean[512];
    printf("--- %s (%s)\n+++ %s (manifest)\n", text_sanitize(label, clean, sizeof(clean)),
           n ? "stored" : "absent", clean);
    int changed = 0;
    if ((n + 1) * (m + 1) > DIFF_CELLS_MAX) {
        for (size_t i = 0; i < n; i++)
            diff_line('-', json_array_get(a, i));
        for (size_t j = 0; j < m; j++)
            diff_line('+', json_array_get(b, j));
        return (int)MIN(n + m, (size_t)INT32_MAX);
    }
    /* lcs[i][j]: the longest common subsequence of a[i..] and b[j..] */
    _cleanup_free_ uint32_t *lcs = calloc((n + 1) * (m + 1), sizeof(uint32_t));
    if (!lcs)
        return -ENOMEM;
#define LCS(i, j) lcs[(i) * (m + 1) + (j)]
    for (size_t i = n; i-- > 0;)
        for (size_t j = m; j-- > 0;)
            LCS(i, j) = json_equal(json_array_get(a, i), json_array_get(b, j)) ? LCS(i + 1, j + 1) + 1
                                                                                : MAX(LCS(i + 1, j), LCS(i, j + 1));
    size_t i = 0, j = 0;
    while (i < n || j < m) {
        if (i < n && j < m && json_equal(json_array_get(a, i), json_array_get(b, j))) {
            diff_line(' ', json_array_get(a, i));
            i++, j++;
        } else if (i < n && (j == m || LCS(i + 1, j) >= LCS(i, j + 1))) {
            diff_line('-', json_array_get(a, i++)); /* removals first, as diff -u */
            changed++;
        } else {
            diff_line('+', json_array_get(b, j++));
            changed++;
        }
    }
#undef LCS
    return changed;
}
