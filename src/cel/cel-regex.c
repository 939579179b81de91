/* Regular expressions for matches(): PCRE2 restricted to the RE2 syntax CEL
 * specifies, matched with PCRE2's DFA algorithm (no backtracking, so no
 * exponential blow-up) under match and depth limits. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "cel/cel-internal.h"

#define REGEX_MAX_PATTERN 4096u
#define REGEX_MATCH_LIMIT 1000000u
#define REGEX_DEPTH_LIMIT 1000u
#define REGEX_WORKSPACE 2048u /* ints of DFA workspace, on the stack */

/* Refuses PCRE constructs RE2 does not have: backreferences, lookaround,
 * atomic groups, possessive quantifiers, recursion, conditionals, callouts, \C.
 * Returns NULL when PATTERN is acceptable, else a description. */
static const char *re2_incompatible(const char *p, size_t n)
{
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[++i];
            if (d == 'Q') { /* literal text up to \E */
                const char *end = memmem(p + i, n - i, "\\E", 2);
                i = end ? (size_t)(end - p) + 1 : n;
                continue;
            }
            if (!in_class && ((d >= '1' && d <= '9') || d == 'g' || d == 'k'))
                return "backreferences are not supported";
            if (d == 'C')
                return "\\C is not supported";
            continue;
        }
        if (in_class) {
            if (c == ']')
                in_class = false;
            continue;
        }
        if (c == '[') {
            in_class = true;
            if (i + 1 < n && p[i + 1] == '^')
                i++;
            if (i + 1 < n && p[i + 1] == ']')
                i++;
            continue;
        }
        if (c == '(' && i + 1 < n && p[i + 1] == '?' && i + 2 < n) {
            char d = p[i + 2];
            if (d == '=' || d == '!' || d == '>' || d == '(' || d == 'R' || d == '&' || d == 'C' ||
                d == '|' || (d >= '0' && d <= '9') ||
                ((d == '+' || d == '-') && i + 3 < n && p[i + 3] >= '0' && p[i + 3] <= '9'))
                return "lookaround, atomic groups, recursion and conditionals are not supported";
            if (d == '<' && i + 3 < n && (p[i + 3] == '=' || p[i + 3] == '!'))
                return "lookbehind is not supported";
            if (d == 'P' && i + 3 < n && (p[i + 3] == '>' || p[i + 3] == '='))
                return "named backreferences and recursion are not supported";
        }
        if ((c == '*' || c == '+' || c == '?' || c == '}') && i + 1 < n && p[i + 1] == '+')
            return "possessive quantifiers are not supported";
    }
    return NULL;
}

void *cel_regex_compile(const char *pattern, size_t n, cel_arena *arena, char *errbuf, size_t errsize)
{
    if (n > REGEX_MAX_PATTERN) {
        snprintf(errbuf, errsize, "pattern longer than %u bytes", REGEX_MAX_PATTERN);
        return NULL;
    }
    const char *why = re2_incompatible(pattern, n);
    if (why) {
        snprintf(errbuf, errsize, "%s", why);
        return NULL;
    }
    pcre2_compile_context *cc = NULL;
    if (arena) {
        pcre2_general_context *gc = cel_arena_regex_context(arena);
        if (!gc || !(cc = pcre2_compile_context_create(gc))) {
            snprintf(errbuf, errsize, "out of memory");
            return NULL;
        }
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, n,
                                   PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_NEVER_BACKSLASH_C, &code, &off, cc);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof(msg));
        snprintf(errbuf, errsize, "%s at offset %zu", (const char *)msg, (size_t)off);
    }
    if (cc)
        pcre2_compile_context_free(cc);
    return re;
}

void cel_regex_free(void *re)
{
    pcre2_code_free(re);
}

/* The match limits, shared by every thread (matching only reads the context). */
static pcre2_match_context *limits;
static pthread_once_t limits_once = PTHREAD_ONCE_INIT;

static void init_limits(void)
{
    limits = pcre2_match_context_create(NULL);
    if (limits) {
        pcre2_set_match_limit(limits, REGEX_MATCH_LIMIT);
        pcre2_set_depth_limit(limits, REGEX_DEPTH_LIMIT);
    }
}

int cel_regex_search(void *re, const char *s, size_t n, cel_arena *arena)
{
    pthread_once(&limits_once, init_limits);
    pcre2_general_context *gc = cel_arena_regex_context(arena);
    pcre2_match_data *md = gc ? pcre2_match_data_create(1, gc) : NULL;
    if (!limits || !md)
        return -ENOMEM;
    int ws[REGEX_WORKSPACE];
    int r = pcre2_dfa_match(re, (PCRE2_SPTR)s, n, 0, 0, md, limits, ws, REGEX_WORKSPACE);
    if (r >= 0)
        return 1;
    if (r == PCRE2_ERROR_NOMATCH)
        return 0;
    if (r == PCRE2_ERROR_MATCHLIMIT || r == PCRE2_ERROR_DEPTHLIMIT || r == PCRE2_ERROR_DFA_WSSIZE ||
        r == PCRE2_ERROR_DFA_RECURSE)
        return -E2BIG;
    return -EINVAL;
}
