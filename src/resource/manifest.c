#include "resource/manifest.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "basic/macro.h"
#include "resource/path.h"
#include "resource/schema.h"

#define YAML_STR_TAG "tag:yaml.org,2002:str"
#define YAML_MAP_TAG "tag:yaml.org,2002:map"
#define YAML_SEQ_TAG "tag:yaml.org,2002:seq"

/* Deepest container nesting yaml_emit_json() accepts. */
#define EMIT_MAX_DEPTH 64

/* ---- documents ---------------------------------------------------------- */

void manifest_free(manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_docs; i++)
        json_decref(m->docs[i].value);
    free(m->docs);
    *m = (manifest){};
}

/* Fills ERR with a location ("document N line L column C"; parts that are 0
 * are left out) and the message; returns CODE. */
static int fail_at(resource_error *err, int code, size_t doc, unsigned line, unsigned column,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail_at(resource_error *err, int code, size_t doc, unsigned line, unsigned column,
                   const char *fmt, ...)
{
    if (!err)
        return code;
    strbuf b;
    strbuf_init_static(&b, err->path, sizeof(err->path));
    if (doc)
        strbuf_printf(&b, "document %zu", doc);
    if (line)
        strbuf_printf(&b, "%sline %u", doc ? " " : "", line);
    if (column)
        strbuf_printf(&b, " column %u", column);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

/* Appends a document to M, taking over the reference to VALUE. */
static int push_document(manifest *m, json_t *value, unsigned line, size_t source, size_t item,
                         resource_error *err)
{
    if (m->n_docs >= MANIFEST_MAX_DOCUMENTS) {
        json_decref(value);
        return fail_at(err, -E2BIG, source + 1, line, 0, "more than %d documents",
                       MANIFEST_MAX_DOCUMENTS);
    }
    manifest_document *docs = realloc(m->docs, (m->n_docs + 1) * sizeof(*docs));
    if (!docs) {
        json_decref(value);
        return fail_at(err, -ENOMEM, 0, 0, 0, "out of memory");
    }
    m->docs = docs;
    m->docs[m->n_docs++] = (manifest_document){value, line, source, item};
    return 0;
}

/* Adds DOC (an object; the reference is taken over) to M: the items of a
 * List, or DOC itself. ITEM_LINES holds the start lines of the first
 * N_ITEM_LINES items, when known. */
static int add_document(manifest *m, json_t *doc, unsigned line, const unsigned *item_lines,
                        size_t n_item_lines, size_t source, resource_error *err)
{
    json_auto_t *list = doc;
    const char *kind = json_string_value(json_object_get(list, "kind"));
    if (!kind || strcmp(kind, "List") != 0)
        return push_document(m, TAKE_PTR(list), line, source, SIZE_MAX, err);

    static const char *const list_fields[] = {"apiVersion", "kind", "metadata", "items"};
    const char *key;
    json_t *value;
    json_object_foreach(list, key, value) {
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(list_fields); i++)
            known = known || strcmp(key, list_fields[i]) == 0;
        if (!known) {
            char q[80];
            return fail_at(err, -EINVAL, source + 1, line, 0,
                           "%s: unknown field of a List; known fields are: apiVersion, kind, "
                           "metadata, items",
                           quote_for_message(key, q, sizeof(q)));
        }
    }
    json_t *items = json_object_get(list, "items");
    if (!json_is_array(items))
        return fail_at(err, -EINVAL, source + 1, line, 0, "items: a List needs an items array");
    size_t i;
    json_array_foreach(items, i, value) {
        unsigned item_line = i < n_item_lines ? item_lines[i] : line;
        const char *item_kind = json_string_value(json_object_get(value, "kind"));
        if (!json_is_object(value))
            return fail_at(err, -EINVAL, source + 1, item_line, 0,
                           "items[%zu]: each item must be a mapping", i);
        if (item_kind && strcmp(item_kind, "List") == 0)
            return fail_at(err, -EINVAL, source + 1, item_line, 0,
                           "items[%zu]: a List cannot contain a List", i);
        int r = push_document(m, json_incref(value), item_line, source, i, err);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- YAML 1.2 core schema ----------------------------------------------- */

typedef enum plain_type {
    PLAIN_STRING,
    PLAIN_NULL,
    PLAIN_BOOL,
    PLAIN_INT,
    PLAIN_FLOAT,
    PLAIN_NONFINITE, /* .inf, .nan: no JSON equivalent */
} plain_type;

static bool all_of(const char *s, size_t n, const char *set)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr(set, s[i]) || s[i] == 0)
            return false;
    return true;
}

static bool one_of(const char *s, size_t n, const char *const *words)
{
    for (size_t i = 0; words[i]; i++)
        if (strlen(words[i]) == n && memcmp(s, words[i], n) == 0)
            return true;
    return false;
}

#define DIGITS "0123456789"

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_core_float(const char *s, size_t n)
{
    size_t i = 0, mantissa = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, mantissa++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, mantissa++;
    }
    if (mantissa == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t exp = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, exp++;
        if (exp == 0)
            return false;
    }
    return i == n;
}

/* What the plain scalar S (N bytes) means in the YAML 1.2 core schema. */
static plain_type plain_type_of(const char *s, size_t n)
{
    static const char *const nulls[] = {"null", "Null", "NULL", "~", NULL};
    static const char *const bools[] = {"true", "True", "TRUE", "false", "False", "FALSE", NULL};
    static const char *const nonfinite[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
                                            "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN",
                                            NULL};
    if (n == 0 || one_of(s, n, nulls))
        return PLAIN_NULL;
    if (one_of(s, n, bools))
        return PLAIN_BOOL;
    size_t sign = s[0] == '-' || s[0] == '+';
    if (all_of(s + sign, n - sign, DIGITS))
        return PLAIN_INT;
    if (n > 2 && s[0] == '0' && s[1] == 'o' && all_of(s + 2, n - 2, "01234567"))
        return PLAIN_INT;
    if (n > 2 && s[0] == '0' && s[1] == 'x' && all_of(s + 2, n - 2, DIGITS "abcdefABCDEF"))
        return PLAIN_INT;
    if (is_core_float(s, n))
        return PLAIN_FLOAT;
    if (one_of(s, n, nonfinite))
        return PLAIN_NONFINITE;
    return PLAIN_STRING;
}

/* The value of the plain integer S (NUL-terminated), or -ERANGE. */
static int parse_core_int(const char *s, long long *ret)
{
    errno = 0;
    if (s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) {
        unsigned long long v = strtoull(s + 2, NULL, s[1] == 'o' ? 8 : 16);
        if (errno == ERANGE || v > (unsigned long long)LLONG_MAX)
            return -ERANGE;
        *ret = (long long)v;
        return 0;
    }
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE)
        return -ERANGE;
    *ret = v;
    return 0;
}

/* ---- YAML to JSON ------------------------------------------------------- */

typedef struct frame {
    json_t *node;   /* object or array; owned by its parent or by the builder's root */
    char *key;      /* objects: the key waiting for its value (owned), or NULL */
    size_t key_len;
    bool is_items;  /* the root's "items" array: item lines are recorded */
} frame;

typedef struct builder {
    manifest *out;
    resource_error *err;
    frame stack[MANIFEST_MAX_DEPTH];
    size_t depth;
    json_t *root;        /* the current document (owned) */
    unsigned root_line;
    bool root_empty;     /* the document is an empty plain scalar: skipped */
    size_t docs;         /* documents started so far */
    unsigned item_lines[MANIFEST_MAX_DOCUMENTS];
    size_t n_item_lines;
} builder;

/* Drops the document being built (after it was handed over, or on error). */
static void builder_reset_document(builder *b)
{
    for (size_t i = 0; i < b->depth; i++)
        free(b->stack[i].key);
    b->depth = 0;
    json_decref(b->root);
    b->root = NULL;
    b->root_empty = false;
    b->n_item_lines = 0;
}

/* fail_at() for the document being built, at MARK. */
static int fail_mark(builder *b, int code, yaml_mark_t mark, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_mark(builder *b, int code, yaml_mark_t mark, const char *fmt, ...)
{
    char msg[sizeof(b->err->message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return fail_at(b->err, code, b->docs, (unsigned)mark.line + 1, (unsigned)mark.column + 1, "%s",
                   msg);
}

/* Refuses anchors (and so aliases) and any tag but the standard ones. */
static int check_node(builder *b, yaml_mark_t mark, const yaml_char_t *anchor,
                      const yaml_char_t *tag, const char *allowed_tag)
{
    if (anchor)
        return fail_mark(b, -EINVAL, mark, "anchors and aliases are not allowed");
    if (tag && strcmp((const char *)tag, allowed_tag) != 0 && strcmp((const char *)tag, "!") != 0) {
        char q[80];
        return fail_mark(b, -EINVAL, mark, "unsupported tag %s",
                         quote_for_message((const char *)tag, q, sizeof(q)));
    }
    return 0;
}

/* Places VALUE (a new reference, taken over) where the parser is: as the
 * document root, the next array element or the value of the pending key. */
static int attach(builder *b, json_t *value, yaml_mark_t mark)
{
    if (!value)
        return fail_mark(b, -ENOMEM, mark, "out of memory");
    if (b->depth == 0) {
        b->root = value;
        b->root_line = (unsigned)mark.line + 1;
        return 0;
    }
    frame *f = &b->stack[b->depth - 1];
    if (json_is_array(f->node)) {
        if (f->is_items && b->n_item_lines < ELEMENTSOF(b->item_lines))
            b->item_lines[b->n_item_lines++] = (unsigned)mark.line + 1;
        if (json_array_append_new(f->node, value) < 0)
            return fail_mark(b, -ENOMEM, mark, "out of memory");
        return 0;
    }
    int r = json_object_setn_new(f->node, f->key, f->key_len, value);
    free(f->key);
    f->key = NULL;
    return r < 0 ? fail_mark(b, -ENOMEM, mark, "out of memory") : 0;
}

/* Whether the next node is a key of the innermost mapping. */
static bool expecting_key(const builder *b)
{
    return b->depth > 0 && json_is_object(b->stack[b->depth - 1].node) && !b->stack[b->depth - 1].key;
}

/* A mapping or sequence starts: creates it, attaches it and enters it. */
static int on_container_start(builder *b, const yaml_event_t *ev)
{
    bool is_map = ev->type == YAML_MAPPING_START_EVENT;
    const yaml_char_t *anchor = is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
    const yaml_char_t *tag = is_map ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    int r = check_node(b, ev->start_mark, anchor, tag, is_map ? YAML_MAP_TAG : YAML_SEQ_TAG);
    if (r < 0)
        return r;
    if (expecting_key(b))
        return fail_mark(b, -EINVAL, ev->start_mark, "mapping keys must be strings");
    if (b->depth == MANIFEST_MAX_DEPTH)
        return fail_mark(b, -EINVAL, ev->start_mark, "nested too deeply (more than %d levels)",
                         MANIFEST_MAX_DEPTH);
    /* The root's "items" sequence: remember where each item starts, in case
     * the document is a List. */
    bool is_items = !is_map && b->depth == 1 && b->stack[0].key_len == STRLEN("items") &&
                    memcmp(b->stack[0].key, "items", STRLEN("items")) == 0;
    json_t *node = is_map ? json_object() : json_array();
    r = attach(b, node, ev->start_mark);
    if (r < 0)
        return r;
    b->stack[b->depth++] = (frame){.node = node, .is_items = is_items};
    return 0;
}

/* A scalar: the pending key of a mapping, or a value typed by the core
 * schema (plain scalars) or a string (quoted ones and !!str). */
static int on_scalar(builder *b, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int r = check_node(b, ev->start_mark, ev->data.scalar.anchor, ev->data.scalar.tag, YAML_STR_TAG);
    if (r < 0)
        return r;
    if (memchr(s, 0, n))
        return fail_mark(b, -EINVAL, ev->start_mark, "NUL characters are not allowed");
    plain_type t = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !tag ? plain_type_of(s, n)
                                                                            : PLAIN_STRING;
    if (expecting_key(b)) {
        frame *f = &b->stack[b->depth - 1];
        char q[80];
        if (t != PLAIN_STRING)
            return fail_mark(b, -EINVAL, ev->start_mark,
                             "mapping keys must be strings (quote %s to use it as one)",
                             n ? quote_for_message(s, q, sizeof(q)) : "the empty key");
        if (json_object_getn(f->node, s, n))
            return fail_mark(b, -EINVAL, ev->start_mark, "duplicate key %s",
                             quote_for_message(s, q, sizeof(q)));
        f->key = strndup(s, n);
        if (!f->key)
            return fail_mark(b, -ENOMEM, ev->start_mark, "out of memory");
        f->key_len = n;
        return 0;
    }
    json_t *v;
    long long i;
    switch (t) {
    case PLAIN_NULL:
        b->root_empty = b->depth == 0 && n == 0;
        v = json_null();
        break;
    case PLAIN_BOOL:
        v = json_boolean(s[0] == 't' || s[0] == 'T');
        break;
    case PLAIN_INT:
        if (parse_core_int(s, &i) < 0)
            return fail_mark(b, -EINVAL, ev->start_mark, "integer out of range");
        v = json_integer(i);
        break;
    case PLAIN_FLOAT: {
        double d = strtod(s, NULL);
        if (!isfinite(d))
            return fail_mark(b, -EINVAL, ev->start_mark, "number out of range");
        v = json_real(d);
        break;
    }
    case PLAIN_NONFINITE:
        return fail_mark(b, -EINVAL, ev->start_mark, "infinity and NaN are not supported");
    default:
        /* libyaml hands out valid UTF-8 only: a failure is a lack of memory */
        v = json_stringn(s, n);
    }
    return attach(b, v, ev->start_mark);
}

/* Hands the finished document to the manifest: skipped when empty,
 * refused unless a mapping, unwrapped when a List. */
static int on_document_end(builder *b, const yaml_event_t *ev)
{
    json_t *root = TAKE_PTR(b->root);
    int r = 0;
    if (b->root_empty)
        json_decref(root);
    else if (!json_is_object(root)) {
        json_decref(root);
        r = fail_at(b->err, -EINVAL, b->docs, b->root_line, 0, "a document must be a mapping");
    } else
        r = add_document(b->out, root, b->root_line, b->item_lines, b->n_item_lines, b->docs - 1,
                         b->err);
    builder_reset_document(b);
    return r;
}

/* Dispatches one parser event; returns 0 or the first error. */
static int on_event(builder *b, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (b->docs == MANIFEST_MAX_DOCUMENTS)
            return fail_at(b->err, -E2BIG, b->docs + 1, (unsigned)ev->start_mark.line + 1, 0,
                           "more than %d documents", MANIFEST_MAX_DOCUMENTS);
        b->docs++;
        return 0;
    case YAML_DOCUMENT_END_EVENT:
        return on_document_end(b, ev);
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        return on_container_start(b, ev);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        b->depth--;
        free(b->stack[b->depth].key);
        b->stack[b->depth].key = NULL;
        return 0;
    case YAML_SCALAR_EVENT:
        return on_scalar(b, ev);
    case YAML_ALIAS_EVENT:
        return fail_mark(b, -EINVAL, ev->start_mark, "anchors and aliases are not allowed");
    default:
        return 0;
    }
}

/* Parses the YAML stream into OUT (documents appended; the caller frees
 * OUT on failure too). */
static int parse_yaml(const char *data, size_t len, manifest *out, resource_error *err)
{
    _cleanup_free_ builder *b = calloc(1, sizeof(*b));
    yaml_parser_t parser;
    if (!b || !yaml_parser_initialize(&parser))
        return fail_at(err, -ENOMEM, 0, 0, 0, "out of memory");
    b->out = out;
    b->err = err;
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    int r = 0;
    for (bool done = false; !done && r == 0;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            if (parser.error == YAML_MEMORY_ERROR)
                r = fail_at(err, -ENOMEM, 0, 0, 0, "out of memory");
            else
                r = fail_at(err, -EINVAL, b->docs, (unsigned)parser.problem_mark.line + 1,
                            (unsigned)parser.problem_mark.column + 1, "%s%s%s",
                            parser.problem ? parser.problem : "malformed YAML",
                            parser.context ? " " : "", parser.context ? parser.context : "");
            break;
        }
        r = on_event(b, &ev);
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    builder_reset_document(b);
    yaml_parser_delete(&parser);
    return r;
}

/* ---- JSON --------------------------------------------------------------- */

/* Records in LINES (at most MAX) the lines where the documents of a valid
 * JSON text start: the elements of a top-level array, or those of the
 * "items" array of a top-level object. Returns how many were recorded. */
static size_t json_document_lines(const char *p, size_t len, unsigned *lines, size_t max)
{
    unsigned line = 1;
    int depth = 0;
    bool in_string = false, escaped = false, top_object = false, expect_key = false;
    bool key_is_items = false, in_items = false;
    const char *key_start = NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '\n')
            line++;
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"') {
                in_string = false;
                if (key_start) {
                    key_is_items = p + i - key_start == 5 && memcmp(key_start, "items", 5) == 0;
                    key_start = NULL;
                    expect_key = false;
                }
            }
            continue;
        }
        switch (c) {
        case '"':
            in_string = true;
            if (depth == 1 && top_object && expect_key)
                key_start = p + i + 1;
            break;
        case '{':
        case '[':
            if (depth == 0) {
                top_object = c == '{';
                expect_key = top_object;
            } else if ((depth == 1 && !top_object) || (depth == 2 && in_items)) {
                if (n < max)
                    lines[n++] = line;
            } else if (depth == 1 && c == '[' && key_is_items)
                in_items = true;
            depth++;
            break;
        case '}':
        case ']':
            depth--;
            if (depth == 1)
                in_items = false;
            break;
        case ',':
            if (depth == 1 && top_object)
                expect_key = true;
            break;
        default:
            break;
        }
    }
    return n;
}

/* Parses a JSON object, array of objects or List into OUT (the caller
 * frees OUT on failure too). */
static int parse_json(const char *data, size_t len, manifest *out, resource_error *err)
{
    json_error_t jerr;
    json_auto_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    /* jansson describes every syntax error; it says nothing when it could
     * not even allocate its lexer */
    if (!v && (json_error_code(&jerr) == json_error_out_of_memory || !jerr.text[0]))
        return fail_at(err, -ENOMEM, 0, 0, 0, "out of memory");
    if (!v)
        return fail_at(err, -EINVAL, 0, jerr.line > 0 ? (unsigned)jerr.line : 0,
                       jerr.column > 0 ? (unsigned)jerr.column : 0, "%s", jerr.text);
    _cleanup_free_ unsigned *lines = calloc(MANIFEST_MAX_DOCUMENTS, sizeof(*lines));
    if (!lines)
        return fail_at(err, -ENOMEM, 0, 0, 0, "out of memory");
    size_t n_lines = json_document_lines(data, len, lines, MANIFEST_MAX_DOCUMENTS);
    int r;
    if (json_is_object(v)) {
        /* the object starts on the line of its first '{' */
        unsigned line = 1;
        for (const char *p = data; p < data + len && *p != '{'; p++)
            line += *p == '\n';
        r = add_document(out, TAKE_PTR(v), line, lines, n_lines, 0, err);
    } else {
        size_t i;
        json_t *doc;
        r = 0;
        json_array_foreach(v, i, doc) {
            if (!json_is_object(doc))
                return fail_at(err, -EINVAL, i + 1, 0, 0, "a document must be an object");
            const char *kind = json_string_value(json_object_get(doc, "kind"));
            if (kind && strcmp(kind, "List") == 0)
                return fail_at(err, -EINVAL, i + 1, 0, 0, "an array cannot contain a List");
            r = push_document(out, json_incref(doc), i < n_lines ? lines[i] : 1, i, SIZE_MAX, err);
            if (r < 0)
                return r;
        }
    }
    if (r < 0)
        return r;
    for (size_t i = 0; i < out->n_docs; i++) {
        resource_path path;
        resource_path_init(&path);
        resource_error depth_err;
        if (schema_check_depth(out->docs[i].value, 1, MANIFEST_MAX_DEPTH, &path, &depth_err) < 0)
            return fail_at(err, -EINVAL, i + 1, out->docs[i].line, 0, "%s: %s", depth_err.path,
                           depth_err.message);
    }
    return 0;
}

/* ---- entry points ------------------------------------------------------- */

/* JSON when the first significant character opens an object or an array. */
static bool looks_like_json(const char *data, size_t len)
{
    size_t i = 0;
    if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
        i = 3;
    while (i < len && strchr(" \t\r\n", data[i]) && data[i])
        i++;
    return i < len && (data[i] == '{' || data[i] == '[');
}

int manifest_parse(const char *data, size_t len, manifest *ret, resource_error *err)
{
    _cleanup_(manifest_free) manifest m = {};
    if (len > MANIFEST_MAX_SIZE)
        return fail_at(err, -E2BIG, 0, 0, 0, "a manifest must be at most %zu MiB",
                       MANIFEST_MAX_SIZE >> 20);
    int r;
    if (looks_like_json(data, len)) {
        size_t skip = len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
        r = parse_json(data + skip, len - skip, &m, err);
        if (r == -EINVAL) {
            /* Not JSON after all? A YAML flow mapping also starts with '{'. */
            manifest y = {.yaml = true};
            if (parse_yaml(data, len, &y, NULL) == 0) {
                *ret = y;
                return 0;
            }
            manifest_free(&y);
        }
    } else {
        m.yaml = true;
        r = parse_yaml(data, len, &m, err);
    }
    if (r < 0)
        return r;
    *ret = m;
    m = (manifest){};
    return 0;
}

/* ---- locating a field in YAML ------------------------------------------- */

typedef struct locate_frame {
    bool is_map;
    bool want_key;    /* maps: the next node is a key */
    size_t index;     /* sequences: the next element's index */
    size_t saved;     /* path length before this container's own segment */
    size_t key_saved; /* maps: path length before the current key */
} locate_frame;

/* Whether PREFIX (N bytes) is TARGET or one of its parents ("spec" of "spec.x[0]"). */
static bool path_is_prefix(const char *prefix, size_t n, const char *target)
{
    return n == 0 || (strncmp(prefix, target, n) == 0 &&
                      (target[n] == 0 || target[n] == '.' || target[n] == '['));
}

/* Follows the events of the source document to TARGET; returns the line of
 * its key (or element), or of its deepest existing parent, or DEFAULT_LINE. */
static unsigned locate(yaml_parser_t *parser, size_t source, const char *target,
                       unsigned default_line)
{
    locate_frame stack[MANIFEST_MAX_DEPTH];
    size_t depth = 0, docs = 0;
    unsigned best = default_line, key_line = 0;
    resource_path cur;
    resource_path_init(&cur);
    for (bool done = false; !done;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(parser, &ev))
            break;
        if (ev.type == YAML_DOCUMENT_START_EVENT)
            docs++;
        done = ev.type == YAML_STREAM_END_EVENT ||
               (ev.type == YAML_DOCUMENT_END_EVENT && docs == source + 1);
        bool in_doc = docs == source + 1;
        bool is_node = ev.type == YAML_SCALAR_EVENT || ev.type == YAML_MAPPING_START_EVENT ||
                       ev.type == YAML_SEQUENCE_START_EVENT;
        locate_frame *parent = depth ? &stack[depth - 1] : NULL;
        unsigned line = (unsigned)ev.start_mark.line + 1;
        if (!in_doc) {
            /* before the document */
        } else if (is_node && parent && parent->is_map && parent->want_key) {
            if (ev.type != YAML_SCALAR_EVENT)
                done = true; /* manifest_parse() refuses such keys */
            else {
                parent->key_saved = resource_path_push_key(&cur, (const char *)ev.data.scalar.value,
                                                           ev.data.scalar.length);
                parent->want_key = false;
                key_line = line;
            }
        } else if (is_node) {
            size_t saved = cur.len;
            if (parent && parent->is_map) {
                saved = parent->key_saved; /* the key is this value's segment */
                line = key_line;
                parent->want_key = true;
            } else if (parent)
                resource_path_push_index(&cur, parent->index++);
            if (strcmp(cur.buf, target) == 0) {
                best = line;
                done = true;
            } else if (path_is_prefix(cur.buf, cur.len, target))
                best = line;
            if (ev.type == YAML_SCALAR_EVENT)
                resource_path_pop(&cur, saved);
            else if (depth == MANIFEST_MAX_DEPTH)
                done = true; /* manifest_parse() refuses such documents */
            else
                stack[depth++] = (locate_frame){.is_map = ev.type == YAML_MAPPING_START_EVENT,
                                                .want_key = true,
                                                .saved = saved};
        } else if (depth > 0 &&
                   (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT)) {
            depth--;
            resource_path_pop(&cur, stack[depth].saved);
        }
        yaml_event_delete(&ev);
    }
    return best;
}

unsigned manifest_field_line(const char *data, size_t len, const manifest *m, size_t index,
                             const char *path)
{
    const manifest_document *d = &m->docs[index];
    if (!m->yaml)
        return d->line;
    char target[sizeof(((resource_path *)0)->buf) + 32];
    if (d->item != SIZE_MAX)
        snprintf(target, sizeof(target), "items[%zu]%s%s", d->item,
                 path[0] && path[0] != '[' ? "." : "", path);
    else
        snprintf(target, sizeof(target), "%s", path);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return d->line;
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    unsigned line = locate(&parser, d->source, target, d->line);
    yaml_parser_delete(&parser);
    return line;
}

/* ---- JSON to YAML ------------------------------------------------------- */

typedef struct emit_ctx {
    strbuf *out;
    int error;
} emit_ctx;

/* libyaml output handler: appends to the capped buffer; 0 stops the emitter. */
static int emit_write(void *data, unsigned char *buffer, size_t size)
{
    emit_ctx *c = data;
    int r = strbuf_append(c->out, buffer, size);
    if (r < 0) {
        c->error = r;
        return 0;
    }
    return 1;
}

/* Whether the string S must be quoted to read back as a string, in YAML 1.2
 * and in the YAML 1.1 readers many tools still use (yes/no/on/off, dates,
 * sexagesimal and octal numbers), or to keep its exact bytes (control
 * characters, Unicode line breaks). */
static bool needs_quotes(const char *s, size_t n)
{
    static const char *const yaml11[] = {"y", "n", "yes", "no", "on", "off", NULL};
    if (n == 0 || plain_type_of(s, n) != PLAIN_STRING || strchr(DIGITS "+-.", s[0]))
        return true;
    for (size_t i = 0; yaml11[i]; i++)
        if (strlen(yaml11[i]) == n && strncasecmp(s, yaml11[i], n) == 0)
            return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return true;
        if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] == 0x85)
            return true; /* U+0085 */
        if (c == 0xe2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 &&
            ((unsigned char)s[i + 2] == 0xa8 || (unsigned char)s[i + 2] == 0xa9))
            return true; /* U+2028, U+2029 */
        if (c == 0xef && i + 2 < n && (unsigned char)s[i + 1] == 0xbb &&
            (unsigned char)s[i + 2] == 0xbf)
            return true; /* U+FEFF */
    }
    return false;
}

/* The shortest text that reads back as D and reads as a float, not an integer. */
static void format_real(double d, char *buf, size_t size)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strncat(buf, ".0", size - strlen(buf) - 1);
}

/* Emits one scalar, double-quoted when QUOTE, else in the style libyaml
 * finds safe for its characters. */
static int emit_scalar(yaml_emitter_t *e, const char *s, size_t n, bool quote)
{
    yaml_event_t ev;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, 1, 1,
                                      quote ? YAML_DOUBLE_QUOTED_SCALAR_STYLE
                                            : YAML_ANY_SCALAR_STYLE))
        return -ENOMEM;
    return yaml_emitter_emit(e, &ev) ? 0 : -EINVAL;
}

/* Emits a string so it reads back as this very string. */
static int emit_string(yaml_emitter_t *e, const char *s, size_t n)
{
    if (n > INT_MAX)
        return -E2BIG;
    return emit_scalar(e, s, n, needs_quotes(s, n));
}

/* Emits V (block style) as the events of one node; DEPTH bounds recursion. */
static int emit_value(yaml_emitter_t *e, const json_t *v, unsigned depth)
{
    yaml_event_t ev;
    char buf[64];
    int r;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (depth > EMIT_MAX_DEPTH)
            return -EINVAL;
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE))
            return -ENOMEM;
        if (!yaml_emitter_emit(e, &ev))
            return -EINVAL;
        const char *key;
        const json_t *value;
        json_object_foreach((json_t *)v, key, value) {
            r = emit_string(e, key, strlen(key));
            if (r == 0)
                r = emit_value(e, value, depth + 1);
            if (r < 0)
                return r;
        }
        if (!yaml_mapping_end_event_initialize(&ev))
            return -ENOMEM;
        return yaml_emitter_emit(e, &ev) ? 0 : -EINVAL;
    }
    case JSON_ARRAY: {
        if (depth > EMIT_MAX_DEPTH)
            return -EINVAL;
        if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE))
            return -ENOMEM;
        if (!yaml_emitter_emit(e, &ev))
            return -EINVAL;
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            r = emit_value(e, item, depth + 1);
            if (r < 0)
                return r;
        }
        if (!yaml_sequence_end_event_initialize(&ev))
            return -ENOMEM;
        return yaml_emitter_emit(e, &ev) ? 0 : -EINVAL;
    }
    case JSON_STRING:
        return emit_string(e, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return emit_scalar(e, buf, strlen(buf), false);
    case JSON_REAL:
        format_real(json_real_value(v), buf, sizeof(buf));
        return emit_scalar(e, buf, strlen(buf), false);
    case JSON_TRUE:
        return emit_scalar(e, "true", 4, false);
    case JSON_FALSE:
        return emit_scalar(e, "false", 5, false);
    case JSON_NULL:
        return emit_scalar(e, "null", 4, false);
    }
    return -EINVAL;
}

/* Emits the stream holding V as one document (explicit "---" unless FIRST). */
static int emit_document(yaml_emitter_t *e, const json_t *v, bool first)
{
    yaml_event_t ev;
    if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) || !yaml_emitter_emit(e, &ev))
        return -EINVAL;
    if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, first) ||
        !yaml_emitter_emit(e, &ev))
        return -EINVAL;
    int r = emit_value(e, v, 1);
    if (r < 0)
        return r;
    if (!yaml_document_end_event_initialize(&ev, 1) || !yaml_emitter_emit(e, &ev))
        return -EINVAL;
    if (!yaml_stream_end_event_initialize(&ev) || !yaml_emitter_emit(e, &ev))
        return -EINVAL;
    return yaml_emitter_flush(e) ? 0 : -EINVAL;
}

int yaml_emit_json(const json_t *v, strbuf *out)
{
    yaml_emitter_t e;
    if (!yaml_emitter_initialize(&e))
        return -ENOMEM;
    emit_ctx c = {.out = out};
    size_t start = out->len;
    yaml_emitter_set_output(&e, emit_write, &c);
    yaml_emitter_set_unicode(&e, 1);
    yaml_emitter_set_width(&e, -1);
    yaml_emitter_set_indent(&e, 2);
    int r = emit_document(&e, v, start == 0);
    if (r < 0 && c.error < 0)
        r = c.error;
    else if (r < 0 && e.error == YAML_MEMORY_ERROR)
        r = -ENOMEM;
    yaml_emitter_delete(&e);
    if (r < 0 && out->data) {
        out->len = start;
        out->data[start] = 0;
    }
    return r;
}
