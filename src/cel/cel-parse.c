/* Lexer and recursive-descent parser for the CEL grammar
 * (github.com/google/cel-spec/blob/master/doc/langdef.md). Produces the raw
 * syntax tree (N_LITERAL ... N_OR) in the program's arena; cel-compile.c then
 * expands macros and resolves names. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "cel/cel-parse.h"

typedef enum tok_kind {
    T_EOF,
    T_IDENT,
    T_QIDENT, /* `quoted` field name */
    T_INT,    /* magnitude in u (a following '-' may make it INT64_MIN) */
    T_UINT,
    T_DOUBLE,
    T_STRING,
    T_BYTES,
    T_TRUE,
    T_FALSE,
    T_NULL,
    T_IN,
    T_LPAREN,
    T_RPAREN,
    T_LBRACKET,
    T_RBRACKET,
    T_LBRACE,
    T_RBRACE,
    T_DOT,
    T_COMMA,
    T_COLON,
    T_QUESTION,
    T_NOT,
    T_MINUS,
    T_PLUS,
    T_STAR,
    T_SLASH,
    T_PERCENT,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_EQ,
    T_NE,
    T_AND,
    T_OR,
} tok_kind;

typedef struct token {
    tok_kind kind;
    uint32_t line, col;
    const char *text; /* identifier or decoded literal */
    size_t len;
    uint64_t u;
    double d;
} token;

typedef struct parser {
    const char *src;
    size_t len;
    size_t pos;
    uint32_t line;
    size_t line_start;
    size_t col_pos;   /* cur_col() memo: the column at byte col_pos of the line */
    uint32_t col;
    cel_arena *mem;
    token tok;   /* current token */
    unsigned nesting;
    int error;   /* 0 or negative errno */
    char *msg;   /* caller-provided buffer */
    size_t msg_size;
    uint32_t err_line, err_col;
} parser;

static const char *const reserved_words[] = {
    "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
};

/* Records the first error at LINE:COL; later ones are ignored. */
static void _printf_(5, 6) fail(parser *p, int error, uint32_t line, uint32_t col, const char *fmt, ...)
{
    if (p->error)
        return;
    p->error = error;
    p->err_line = line;
    p->err_col = col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, p->msg_size, fmt, ap);
    va_end(ap);
}

/* The 1-based column of p->pos. Columns count code points, as editors do;
 * the count continues from the previous call so a long line costs O(n). */
static uint32_t cur_col(parser *p)
{
    if (p->col_pos < p->line_start || p->col_pos > p->pos) {
        p->col_pos = p->line_start;
        p->col = 1;
    }
    p->col += (uint32_t)cel_utf8_count(p->src + p->col_pos, p->pos - p->col_pos);
    p->col_pos = p->pos;
    return p->col;
}

static bool is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Skips white space and // comments, counting lines. */
static void skip_space(parser *p)
{
    while (p->pos < p->len) {
        char c = p->src[p->pos];
        if (c == '\n') {
            p->pos++;
            p->line++;
            p->line_start = p->pos;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f') {
            p->pos++;
        } else if (c == '/' && p->pos + 1 < p->len && p->src[p->pos + 1] == '/') {
            while (p->pos < p->len && p->src[p->pos] != '\n')
                p->pos++;
        } else {
            break;
        }
    }
}

/* Lexes a number starting at p->pos into T. */
static void lex_number(parser *p, token *t)
{
    const char *s = p->src;
    size_t start = p->pos, i = p->pos;
    bool is_double = false;

    if (s[i] == '0' && i + 1 < p->len && (s[i + 1] == 'x' || s[i + 1] == 'X')) {
        i += 2;
        uint64_t v = 0;
        size_t digits = 0;
        bool overflow = false;
        for (; i < p->len && hex_digit_value(s[i]) >= 0; i++, digits++) {
            if (v >> 60)
                overflow = true;
            v = v << 4 | (uint64_t)hex_digit_value(s[i]);
        }
        if (digits == 0) {
            fail(p, -EINVAL, t->line, t->col, "invalid hexadecimal literal");
            return;
        }
        if (overflow) {
            fail(p, -EINVAL, t->line, t->col, "integer literal out of range");
            return;
        }
        t->u = v;
        t->kind = T_INT;
        if (i < p->len && (s[i] == 'u' || s[i] == 'U')) {
            t->kind = T_UINT;
            i++;
        }
        p->pos = i;
        return;
    }
    while (i < p->len && is_digit(s[i]))
        i++;
    if (i + 1 < p->len && s[i] == '.' && is_digit(s[i + 1])) {
        is_double = true;
        i++;
        while (i < p->len && is_digit(s[i]))
            i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < p->len && (s[j] == '+' || s[j] == '-'))
            j++;
        if (j < p->len && is_digit(s[j])) {
            is_double = true;
            i = j;
            while (i < p->len && is_digit(s[i]))
                i++;
        }
    }
    size_t n = i - start;
    if (n > 400) {
        fail(p, -E2BIG, t->line, t->col, "numeric literal too long");
        return;
    }
    char buf[401];
    memcpy(buf, s + start, n);
    buf[n] = 0;
    if (is_double) {
        errno = 0;
        double d = strtod(buf, NULL);
        if (isinf(d)) {
            fail(p, -EINVAL, t->line, t->col, "double literal out of range");
            return;
        }
        t->kind = T_DOUBLE;
        t->d = d;
    } else {
        uint64_t v = 0;
        for (size_t k = 0; k < n; k++) {
            unsigned dgt = (unsigned)(buf[k] - '0');
            if (v > (UINT64_MAX - dgt) / 10) {
                fail(p, -EINVAL, t->line, t->col, "integer literal out of range");
                return;
            }
            v = v * 10 + dgt;
        }
        t->u = v;
        t->kind = T_INT;
        if (i < p->len && (s[i] == 'u' || s[i] == 'U')) {
            t->kind = T_UINT;
            i++;
        }
    }
    if (i < p->len && (is_ident_start(s[i]) || is_digit(s[i]))) {
        fail(p, -EINVAL, t->line, t->col, "invalid numeric literal");
        return;
    }
    p->pos = i;
}

/* Lexes a string or bytes literal whose opening quote is at p->pos. */
static void lex_string(parser *p, token *t, bool raw, bool bytes)
{
    const char *s = p->src;
    char q = s[p->pos];
    bool triple = p->pos + 2 < p->len && s[p->pos + 1] == q && s[p->pos + 2] == q;
    size_t i = p->pos + (triple ? 3 : 1);
    /* the decoded form is never longer than the source */
    char *out = cel_arena_alloc(p->mem, p->len - p->pos + 1);
    size_t o = 0;
    if (!out) {
        fail(p, -ENOMEM, t->line, t->col, "out of memory");
        return;
    }
    for (;;) {
        if (i >= p->len) {
            fail(p, -EINVAL, t->line, t->col, "unterminated string literal");
            return;
        }
        char c = s[i];
        if (c == q && (!triple || (i + 2 < p->len && s[i + 1] == q && s[i + 2] == q))) {
            i += triple ? 3 : 1;
            break;
        }
        if (c == '\n' || c == '\r') {
            if (!triple) {
                fail(p, -EINVAL, t->line, t->col, "newline in string literal");
                return;
            }
            if (c == '\n') {
                p->line++;
                p->line_start = i + 1;
            }
        }
        if (c != '\\' || raw) {
            out[o++] = c;
            i++;
            continue;
        }
        /* escape sequence */
        if (i + 1 >= p->len) {
            fail(p, -EINVAL, t->line, t->col, "unterminated escape sequence");
            return;
        }
        char e = s[i + 1];
        i += 2;
        uint32_t cp;
        bool is_cp = false; /* cp is a code point (UTF-8 encoded in strings) */
        switch (e) {
        case 'a': out[o++] = '\a'; continue;
        case 'b': out[o++] = '\b'; continue;
        case 'f': out[o++] = '\f'; continue;
        case 'n': out[o++] = '\n'; continue;
        case 'r': out[o++] = '\r'; continue;
        case 't': out[o++] = '\t'; continue;
        case 'v': out[o++] = '\v'; continue;
        case '\\': case '\'': case '"': case '`': case '?':
            out[o++] = e;
            continue;
        case 'x': case 'X': {
            int h1 = i < p->len ? hex_digit_value(s[i]) : -1, h2 = i + 1 < p->len ? hex_digit_value(s[i + 1]) : -1;
            if (h1 < 0 || h2 < 0) {
                fail(p, -EINVAL, t->line, t->col, "invalid \\x escape");
                return;
            }
            cp = (uint32_t)(h1 << 4 | h2);
            i += 2;
            break;
        }
        case 'u': case 'U': {
            size_t nd = e == 'u' ? 4 : 8;
            if (bytes) {
                fail(p, -EINVAL, t->line, t->col, "unicode escape in bytes literal");
                return;
            }
            cp = 0;
            for (size_t k = 0; k < nd; k++) {
                int h = i + k < p->len ? hex_digit_value(s[i + k]) : -1;
                if (h < 0) {
                    fail(p, -EINVAL, t->line, t->col, "invalid \\%c escape", e);
                    return;
                }
                cp = cp << 4 | (uint32_t)h;
            }
            i += nd;
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                fail(p, -EINVAL, t->line, t->col, "invalid code point in \\%c escape", e);
                return;
            }
            is_cp = true;
            break;
        }
        case '0': case '1': case '2': case '3': {
            if (i + 1 >= p->len || s[i] < '0' || s[i] > '7' || s[i + 1] < '0' || s[i + 1] > '7') {
                fail(p, -EINVAL, t->line, t->col, "invalid octal escape");
                return;
            }
            cp = (uint32_t)((e - '0') << 6 | (s[i] - '0') << 3 | (s[i + 1] - '0'));
            i += 2;
            break;
        }
        default:
            fail(p, -EINVAL, t->line, t->col, "invalid escape sequence \\%c", e);
            return;
        }
        if (bytes && !is_cp)
            out[o++] = (char)cp;
        else
            o += cel_utf8_encode(cp, out + o);
    }
    out[o] = 0;
    p->pos = i;
    t->text = out;
    t->len = o;
    t->kind = bytes ? T_BYTES : T_STRING;
}

/* Reads the next token into p->tok. */
static void next(parser *p)
{
    token *t = &p->tok;
    skip_space(p);
    *t = (token){.line = p->line, .col = cur_col(p)};
    if (p->error)
        return;
    if (p->pos >= p->len) {
        t->kind = T_EOF;
        return;
    }
    const char *s = p->src;
    char c = s[p->pos];
    char c1 = p->pos + 1 < p->len ? s[p->pos + 1] : 0;

    if (is_digit(c) || (c == '.' && is_digit(c1))) {
        lex_number(p, t);
        return;
    }
    if (c == '"' || c == '\'') {
        lex_string(p, t, false, false);
        return;
    }
    if (is_ident_start(c)) {
        size_t i = p->pos;
        while (i < p->len && (is_ident_start(s[i]) || is_digit(s[i])))
            i++;
        size_t n = i - p->pos;
        /* string prefixes: r, b, and both in either order */
        if (n <= 2 && i < p->len && (s[i] == '"' || s[i] == '\'')) {
            bool raw = false, bytes = false, ok = true;
            for (size_t k = p->pos; k < i; k++) {
                char pc = s[k];
                if ((pc == 'r' || pc == 'R') && !raw)
                    raw = true;
                else if ((pc == 'b' || pc == 'B') && !bytes)
                    bytes = true;
                else
                    ok = false;
            }
            if (ok) {
                p->pos = i;
                lex_string(p, t, raw, bytes);
                return;
            }
        }
        t->text = s + p->pos;
        t->len = n;
        p->pos = i;
        if (n == 4 && !memcmp(t->text, "true", 4))
            t->kind = T_TRUE;
        else if (n == 5 && !memcmp(t->text, "false", 5))
            t->kind = T_FALSE;
        else if (n == 4 && !memcmp(t->text, "null", 4))
            t->kind = T_NULL;
        else if (n == 2 && !memcmp(t->text, "in", 2))
            t->kind = T_IN;
        else
            t->kind = T_IDENT;
        return;
    }
    if (c == '`') {
        size_t i = p->pos + 1;
        while (i < p->len && s[i] != '`' && s[i] != '\n')
            i++;
        if (i >= p->len || s[i] != '`' || i == p->pos + 1) {
            fail(p, -EINVAL, t->line, t->col, "invalid quoted identifier");
            return;
        }
        t->kind = T_QIDENT;
        t->text = s + p->pos + 1;
        t->len = i - p->pos - 1;
        p->pos = i + 1;
        return;
    }
    static const struct {
        char text[3];
        tok_kind kind;
    } ops[] = {
        {"&&", T_AND}, {"||", T_OR}, {"<=", T_LE}, {">=", T_GE}, {"==", T_EQ}, {"!=", T_NE},
        {"(", T_LPAREN}, {")", T_RPAREN}, {"[", T_LBRACKET}, {"]", T_RBRACKET}, {"{", T_LBRACE},
        {"}", T_RBRACE}, {".", T_DOT}, {",", T_COMMA}, {":", T_COLON}, {"?", T_QUESTION},
        {"!", T_NOT}, {"-", T_MINUS}, {"+", T_PLUS}, {"*", T_STAR}, {"/", T_SLASH},
        {"%", T_PERCENT}, {"<", T_LT}, {">", T_GT},
    };
    for (size_t k = 0; k < ELEMENTSOF(ops); k++) {
        size_t n = strlen(ops[k].text);
        if (p->pos + n <= p->len && !memcmp(s + p->pos, ops[k].text, n)) {
            t->kind = ops[k].kind;
            p->pos += n;
            return;
        }
    }
    fail(p, -EINVAL, t->line, t->col, "unexpected character '%.*s'",
         (int)cel_utf8_decode(s + p->pos, p->len - p->pos, &(uint32_t){0}), s + p->pos);
}

/* How T is named in syntax error messages. */
static const char *tok_desc(const token *t)
{
    switch (t->kind) {
    case T_EOF: return "end of input";
    case T_IDENT: case T_QIDENT: return "identifier";
    case T_INT: case T_UINT: case T_DOUBLE: return "number";
    case T_STRING: return "string";
    case T_BYTES: return "bytes";
    case T_TRUE: return "'true'";
    case T_FALSE: return "'false'";
    case T_NULL: return "'null'";
    case T_IN: return "'in'";
    case T_LPAREN: return "'('";
    case T_RPAREN: return "')'";
    case T_LBRACKET: return "'['";
    case T_RBRACKET: return "']'";
    case T_LBRACE: return "'{'";
    case T_RBRACE: return "'}'";
    case T_DOT: return "'.'";
    case T_COMMA: return "','";
    case T_COLON: return "':'";
    case T_QUESTION: return "'?'";
    case T_NOT: return "'!'";
    case T_MINUS: return "'-'";
    case T_PLUS: return "'+'";
    case T_STAR: return "'*'";
    case T_SLASH: return "'/'";
    case T_PERCENT: return "'%'";
    case T_LT: return "'<'";
    case T_LE: return "'<='";
    case T_GT: return "'>'";
    case T_GE: return "'>='";
    case T_EQ: return "'=='";
    case T_NE: return "'!='";
    case T_AND: return "'&&'";
    case T_OR: return "'||'";
    }
    return "token";
}

/* Consumes a token of kind K or records "expected WHAT"; false on error. */
static bool expect(parser *p, tok_kind k, const char *what)
{
    if (p->error)
        return false;
    if (p->tok.kind != k) {
        fail(p, -EINVAL, p->tok.line, p->tok.col, "syntax error: expected %s, found %s", what,
             tok_desc(&p->tok));
        return false;
    }
    next(p);
    return true;
}

/* A new node at LINE:COL with N argument slots; NULL (and an error) when out of memory. */
static node *mk(parser *p, node_kind kind, uint32_t line, uint32_t col, size_t n)
{
    node *x = cel_arena_alloc(p->mem, sizeof(node) + n * sizeof(node *));
    if (!x) {
        fail(p, -ENOMEM, line, col, "out of memory");
        return NULL;
    }
    *x = (node){.kind = kind, .line = line, .col = col, .nargs = (uint32_t)n, .slot = -1, .slot2 = -1};
    x->args = (node **)(x + 1);
    return x;
}

/* A binary node of KIND at AT; NULL when either operand failed. */
static node *mk2(parser *p, node_kind kind, const token *at, const char *name, node *a, node *b)
{
    if (!a || !b)
        return NULL;
    node *x = mk(p, kind, at->line, at->col, 2);
    if (!x)
        return NULL;
    x->args[0] = a;
    x->args[1] = b;
    x->name = name;
    x->name_len = name ? (uint32_t)strlen(name) : 0;
    return x;
}

static const char *intern(parser *p, const char *s, size_t n)
{
    char *r = cel_arena_strndup(p->mem, s, n);
    if (!r)
        fail(p, -ENOMEM, p->tok.line, p->tok.col, "out of memory");
    return r;
}

/* A growable list of nodes, copied into the arena when complete. */
typedef struct nodevec {
    node **v;
    uint8_t *opt;
    size_t n, cap;
} nodevec;

/* Appends X; LIMIT caps the number of nodes (map literals hold two per entry). */
static bool vec_push(parser *p, nodevec *v, node *x, bool opt, size_t limit)
{
    if (!x)
        return false;
    if (v->n >= limit) {
        fail(p, -E2BIG, x->line, x->col, "too many elements (the limit is %u)", CEL_MAX_ARGS);
        return false;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        node **nv = realloc(v->v, cap * sizeof(node *));
        if (!nv) {
            fail(p, -ENOMEM, x->line, x->col, "out of memory");
            return false;
        }
        v->v = nv;
        uint8_t *no = realloc(v->opt, cap);
        if (!no) {
            fail(p, -ENOMEM, x->line, x->col, "out of memory");
            return false;
        }
        v->opt = no;
        v->cap = cap;
    }
    v->opt[v->n] = opt;
    v->v[v->n++] = x;
    return true;
}

static void vec_free(nodevec *v)
{
    free(v->v);
    free(v->opt);
}

/* Moves the collected nodes into a new node of KIND. */
static node *vec_node(parser *p, nodevec *v, node_kind kind, uint32_t line, uint32_t col, bool want_opt)
{
    node *x = mk(p, kind, line, col, v->n);
    if (!x)
        return NULL;
    if (v->n)
        memcpy(x->args, v->v, v->n * sizeof(node *));
    if (want_opt) {
        bool any = false;
        for (size_t i = 0; i < v->n; i++)
            any |= v->opt[i];
        if (any) {
            x->optmask = cel_arena_alloc(p->mem, v->n);
            if (!x->optmask) {
                fail(p, -ENOMEM, line, col, "out of memory");
                return NULL;
            }
            memcpy(x->optmask, v->opt, v->n);
        }
    }
    return x;
}

static node *parse_expr(parser *p);

/* Parses "expr, expr, ..." up to CLOSE (not consumed) into V, which may hold
 * LIMIT nodes in all; OPTIONAL allows ?expr entries. */
static bool parse_list_items(parser *p, nodevec *v, tok_kind close, bool optional, size_t limit)
{
    while (!p->error && p->tok.kind != close) {
        bool opt = false;
        if (optional && p->tok.kind == T_QUESTION) {
            opt = true;
            next(p);
        }
        if (!vec_push(p, v, parse_expr(p), opt, limit))
            return false;
        if (p->tok.kind != T_COMMA)
            break;
        next(p);
        if (close == T_RPAREN && p->tok.kind == close) {
            fail(p, -EINVAL, p->tok.line, p->tok.col, "syntax error: unexpected ')'");
            return false;
        }
    }
    return !p->error;
}

/* Primary = literal | ident | ident(args) | .ident | (expr) | [list] | {map}.
 * NEGATE folds a preceding minus into a number literal. */
static node *parse_primary(parser *p, bool negate)
{
    token t = p->tok;
    node *x;
    switch (t.kind) {
    case T_INT:
    case T_DOUBLE:
    case T_UINT:
    case T_STRING:
    case T_BYTES:
    case T_TRUE:
    case T_FALSE:
    case T_NULL:
        next(p);
        x = mk(p, N_LITERAL, t.line, t.col, 0);
        if (!x)
            return NULL;
        switch (t.kind) {
        case T_INT:
            if (negate ? t.u > (uint64_t)INT64_MAX + 1 : t.u > (uint64_t)INT64_MAX) {
                fail(p, -EINVAL, t.line, t.col, "integer literal out of range");
                return NULL;
            }
            x->val = cel_int(negate ? (int64_t)(0 - t.u) : (int64_t)t.u);
            break;
        case T_DOUBLE: x->val = cel_double(negate ? -t.d : t.d); break;
        case T_UINT: x->val = cel_uint(t.u); break;
        case T_STRING: x->val = cel_string(t.text, t.len); break;
        case T_BYTES: x->val = cel_bytes(t.text, t.len); break;
        case T_TRUE: x->val = cel_bool(true); break;
        case T_FALSE: x->val = cel_bool(false); break;
        default: x->val = cel_null(); break;
        }
        return x;
    case T_LPAREN:
        next(p);
        x = parse_expr(p);
        if (!expect(p, T_RPAREN, "')'"))
            return NULL;
        return x;
    case T_LBRACKET: {
        next(p);
        _cleanup_(vec_free) nodevec v = {};
        if (!parse_list_items(p, &v, T_RBRACKET, true, CEL_MAX_ARGS) || !expect(p, T_RBRACKET, "']'"))
            return NULL;
        return vec_node(p, &v, N_LIST, t.line, t.col, true);
    }
    case T_LBRACE: {
        next(p);
        _cleanup_(vec_free) nodevec v = {};
        while (!p->error && p->tok.kind != T_RBRACE) {
            bool opt = false;
            if (p->tok.kind == T_QUESTION) {
                opt = true;
                next(p);
            }
            if (!vec_push(p, &v, parse_expr(p), opt, 2 * CEL_MAX_ARGS) || !expect(p, T_COLON, "':'") ||
                !vec_push(p, &v, parse_expr(p), false, 2 * CEL_MAX_ARGS))
                return NULL;
            if (p->tok.kind != T_COMMA)
                break;
            next(p);
        }
        if (!expect(p, T_RBRACE, "'}'"))
            return NULL;
        return vec_node(p, &v, N_MAP, t.line, t.col, true);
    }
    case T_DOT:
    case T_IDENT: {
        bool leading_dot = t.kind == T_DOT;
        if (leading_dot) {
            next(p);
            t = p->tok;
            if (t.kind != T_IDENT) {
                fail(p, -EINVAL, t.line, t.col, "syntax error: expected identifier after '.'");
                return NULL;
            }
        }
        for (size_t k = 0; k < ELEMENTSOF(reserved_words); k++)
            if (strlen(reserved_words[k]) == t.len && !memcmp(reserved_words[k], t.text, t.len)) {
                fail(p, -EINVAL, t.line, t.col, "reserved identifier '%.*s'", (int)t.len, t.text);
                return NULL;
            }
        next(p);
        const char *name = leading_dot ? NULL : intern(p, t.text, t.len);
        if (leading_dot) {
            /* ".name" means the root namespace: keep the dot in the name */
            char *nm = cel_arena_alloc(p->mem, t.len + 2);
            if (!nm) {
                fail(p, -ENOMEM, t.line, t.col, "out of memory");
                return NULL;
            }
            nm[0] = '.';
            memcpy(nm + 1, t.text, t.len);
            nm[t.len + 1] = 0;
            name = nm;
        }
        if (!name)
            return NULL;
        if (p->tok.kind == T_LPAREN) {
            next(p);
            _cleanup_(vec_free) nodevec v = {};
            if (!parse_list_items(p, &v, T_RPAREN, false, CEL_MAX_ARGS) || !expect(p, T_RPAREN, "')'"))
                return NULL;
            x = vec_node(p, &v, N_CALL, t.line, t.col, false);
        } else {
            x = mk(p, N_IDENT, t.line, t.col, 0);
        }
        if (!x)
            return NULL;
        x->name = name;
        x->name_len = (uint32_t)strlen(name);
        return x;
    }
    default:
        fail(p, -EINVAL, t.line, t.col, "syntax error: unexpected %s", tok_desc(&t));
        return NULL;
    }
}

/* Member = Primary { "." ["?"] IDENT ["(" args ")"] | "[" ["?"] Expr "]" } */
static node *parse_member(parser *p, bool negate)
{
    node *x = parse_primary(p, negate);
    while (x && !p->error) {
        token t = p->tok;
        if (t.kind == T_DOT) {
            next(p);
            bool opt = false;
            if (p->tok.kind == T_QUESTION) {
                opt = true;
                next(p);
            }
            token f = p->tok;
            if (f.kind != T_IDENT && f.kind != T_QIDENT && f.kind != T_TRUE && f.kind != T_FALSE &&
                f.kind != T_NULL && f.kind != T_IN) {
                fail(p, -EINVAL, f.line, f.col, "syntax error: expected field name, found %s", tok_desc(&f));
                return NULL;
            }
            next(p);
            const char *name = intern(p, f.text, f.len);
            if (!name)
                return NULL;
            if (!opt && f.kind != T_QIDENT && p->tok.kind == T_LPAREN) {
                next(p);
                _cleanup_(vec_free) nodevec v = {};
                if (!vec_push(p, &v, x, false, 1) || !parse_list_items(p, &v, T_RPAREN, false, CEL_MAX_ARGS + 1) ||
                    !expect(p, T_RPAREN, "')'"))
                    return NULL;
                x = vec_node(p, &v, N_CALL, f.line, f.col, false);
                if (!x)
                    return NULL;
                x->flags |= F_RECEIVER;
            } else {
                node *s = mk(p, N_SELECT, f.line, f.col, 1);
                if (!s)
                    return NULL;
                s->args[0] = x;
                s->flags = (opt ? F_OPTIONAL : 0) | (f.kind == T_QIDENT ? F_QUOTED : 0);
                x = s;
            }
            x->name = name;
            x->name_len = (uint32_t)f.len;
        } else if (t.kind == T_LBRACKET) {
            next(p);
            bool opt = false;
            if (p->tok.kind == T_QUESTION) {
                opt = true;
                next(p);
            }
            node *idx = parse_expr(p);
            if (!expect(p, T_RBRACKET, "']'"))
                return NULL;
            x = mk2(p, N_INDEX, &t, NULL, x, idx);
            if (x && opt)
                x->flags |= F_OPTIONAL;
        } else {
            break;
        }
    }
    return x;
}

/* Unary = Member | "!" {"!"} Member | "-" {"-"} Member. A minus sign directly
 * before a number literal belongs to the literal, so -9223372036854775808 is valid. */
static node *parse_unary(parser *p)
{
    token t = p->tok;
    if (t.kind != T_NOT && t.kind != T_MINUS)
        return parse_member(p, false);
    size_t count = 0;
    while (p->tok.kind == t.kind && !p->error) {
        if (++count > CEL_MAX_NESTING) {
            fail(p, -E2BIG, t.line, t.col, "too many unary operators");
            return NULL;
        }
        next(p);
    }
    bool fold = t.kind == T_MINUS && (p->tok.kind == T_INT || p->tok.kind == T_DOUBLE);
    node *x = parse_member(p, fold);
    if (fold)
        count--;
    for (size_t i = 0; i < count && x; i++) {
        node *u = mk(p, N_CALL, t.line, t.col, 1);
        if (!u)
            return NULL;
        u->args[0] = x;
        u->name = t.kind == T_NOT ? "!_" : "-_";
        u->name_len = 2;
        x = u;
    }
    return x;
}

/* Multiplication = Unary {("*" | "/" | "%") Unary}, left-associative. */
static node *parse_multiplication(parser *p)
{
    node *x = parse_unary(p);
    while (x && !p->error) {
        token t = p->tok;
        const char *op = t.kind == T_STAR ? "_*_" : t.kind == T_SLASH ? "_/_" : t.kind == T_PERCENT ? "_%_" : NULL;
        if (!op)
            break;
        next(p);
        x = mk2(p, N_CALL, &t, op, x, parse_unary(p));
    }
    return x;
}

/* Addition = Multiplication {("+" | "-") Multiplication}. */
static node *parse_addition(parser *p)
{
    node *x = parse_multiplication(p);
    while (x && !p->error) {
        token t = p->tok;
        const char *op = t.kind == T_PLUS ? "_+_" : t.kind == T_MINUS ? "_-_" : NULL;
        if (!op)
            break;
        next(p);
        x = mk2(p, N_CALL, &t, op, x, parse_multiplication(p));
    }
    return x;
}

/* Relation = Addition {("<" | "<=" | ">" | ">=" | "==" | "!=" | "in") Addition}. */
static node *parse_relation(parser *p)
{
    node *x = parse_addition(p);
    while (x && !p->error) {
        token t = p->tok;
        const char *op;
        switch (t.kind) {
        case T_LT: op = "_<_"; break;
        case T_LE: op = "_<=_"; break;
        case T_GT: op = "_>_"; break;
        case T_GE: op = "_>=_"; break;
        case T_EQ: op = "_==_"; break;
        case T_NE: op = "_!=_"; break;
        case T_IN: op = "@in"; break;
        default: op = NULL; break;
        }
        if (!op)
            break;
        next(p);
        x = mk2(p, N_CALL, &t, op, x, parse_addition(p));
    }
    return x;
}

/* ConditionalAnd = Relation {"&&" Relation}. */
static node *parse_and(parser *p)
{
    node *x = parse_relation(p);
    while (x && !p->error && p->tok.kind == T_AND) {
        token t = p->tok;
        next(p);
        x = mk2(p, N_AND, &t, NULL, x, parse_relation(p));
    }
    return x;
}

/* ConditionalOr = ConditionalAnd {"||" ConditionalAnd}. */
static node *parse_or(parser *p)
{
    node *x = parse_and(p);
    while (x && !p->error && p->tok.kind == T_OR) {
        token t = p->tok;
        next(p);
        x = mk2(p, N_OR, &t, NULL, x, parse_and(p));
    }
    return x;
}

/* Expr = ConditionalOr ["?" ConditionalOr ":" Expr] */
static node *parse_expr(parser *p)
{
    if (++p->nesting > CEL_MAX_NESTING) {
        fail(p, -E2BIG, p->tok.line, p->tok.col, "expression nested too deeply (the limit is %u)",
             CEL_MAX_NESTING);
        return NULL;
    }
    node *x = parse_or(p);
    if (x && !p->error && p->tok.kind == T_QUESTION) {
        token t = p->tok;
        next(p);
        node *a = parse_or(p);
        node *b = expect(p, T_COLON, "':'") ? parse_expr(p) : NULL;
        if (!a || !b) {
            p->nesting--;
            return NULL;
        }
        node *c = mk(p, N_COND, t.line, t.col, 3);
        if (c) {
            c->args[0] = x;
            c->args[1] = a;
            c->args[2] = b;
        }
        x = c;
    }
    p->nesting--;
    return p->error ? NULL : x;
}

int cel_parse(const char *src, size_t len, cel_arena *mem, node **ret_root, char *msg, size_t msg_size,
              uint32_t *ret_line, uint32_t *ret_col)
{
    parser p = {.src = src, .len = len, .line = 1, .col = 1, .mem = mem, .msg = msg, .msg_size = msg_size};
    node *root = NULL;

    if (len > CEL_MAX_SOURCE_LEN)
        fail(&p, -E2BIG, 1, 1, "expression longer than %u bytes", CEL_MAX_SOURCE_LEN);
    else if (!cel_utf8_valid(src, len))
        fail(&p, -EINVAL, 1, 1, "expression is not valid UTF-8");
    else {
        next(&p);
        root = parse_expr(&p);
        if (!p.error && p.tok.kind != T_EOF)
            fail(&p, -EINVAL, p.tok.line, p.tok.col, "syntax error: unexpected %s", tok_desc(&p.tok));
    }
    if (p.error) {
        *ret_line = p.err_line;
        *ret_col = p.err_col;
        return p.error;
    }
    *ret_root = root;
    return 0;
}
