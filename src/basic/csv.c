/* CSV fields and column types (see csv.h). */
#include "basic/csv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


enum {
    FIELD_START, /* nothing of the field read yet */
    UNQUOTED,
    QUOTED,
    QUOTE_SEEN, /* a quote inside a quoted field: closing it, or the first of "" */
    CR_SEEN,    /* a CR ending a field: LF must follow */
};

static const char *const type_names[] = {"integer", "real", "text"};

const char *csv_type_name(csv_type t)
{
    return t < _CSV_TYPE_MAX ? type_names[t] : "unknown";
}

int csv_type_from_name(const char *s)
{
    for (int t = 0; t < _CSV_TYPE_MAX; t++)
        if (strcmp(s, type_names[t]) == 0)
            return t;
    return -EINVAL;
}

bool csv_value_integer(const char *s, int64_t *ret)
{
    /* strtoll would also take leading blanks */
    if (!(*s >= '0' && *s <= '9') && *s != '-' && *s != '+')
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno != 0)
        return false;
    if (ret)
        *ret = v;
    return true;
}

bool csv_value_real(const char *s, double *ret)
{
    /* decimal digits, sign, point and exponent only: strtod would also take
     * blanks, hexadecimal, "inf" and "nan" */
    if (!*s || s[strspn(s, "0123456789+-.eE")] != '\0')
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v))
        return false;
    if (ret)
        *ret = v;
    return true;
}

int csv_parser_init(csv_parser *p, csv_field_fn field, void *userdata, bool secure)
{
    *p = (csv_parser){.field = field, .userdata = userdata, .secure = secure, .state = FIELD_START};
    p->buf = malloc(CSV_FIELD_MAX + 1);
    return p->buf ? 0 : -ENOMEM;
}

void csv_parser_done(csv_parser *p)
{
    /* a secure parser wiped each field it handed over: what is left is the one being read */
    if (p->buf)
        explicit_bzero(p->buf, p->len);
    free(p->buf);
    p->buf = NULL;
}

/* Hands the field read over and starts the next one. */
static int emit(csv_parser *p, bool end_of_record)
{
    p->buf[p->len] = '\0';
    int r = p->field(p->userdata, p->buf, p->len, p->column, p->record, end_of_record);
    if (r < 0)
        return r;
    if (p->secure)
        explicit_bzero(p->buf, p->len);
    p->len = 0;
    p->state = FIELD_START;
    if (end_of_record) {
        p->column = 0;
        p->record++;
    } else
        p->column++;
    return 0;
}

static int append(csv_parser *p, const char *s, size_t n)
{
    if (p->len + n > CSV_FIELD_MAX)
        return -E2BIG;
    memcpy(p->buf + p->len, s, n);
    p->len += n;
    return 0;
}

int csv_parser_feed(csv_parser *p, const char *data, size_t n)
{
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        char c = data[i];
        switch (p->state) {
        case FIELD_START:
        case UNQUOTED: {
            if (p->state == FIELD_START && c == '"') {
                p->state = QUOTED;
                break;
            }
            /* the plain bytes up to the next separator at once */
            size_t j = i;
            while (j < n && data[j] != ',' && data[j] != '\n' && data[j] != '\r')
                j++;
            if (j > i) {
                r = append(p, data + i, j - i);
                p->state = UNQUOTED;
                i = j - 1;
                break;
            }
            if (c == ',')
                r = emit(p, false);
            else if (c == '\n')
                r = emit(p, true);
            else
                p->state = CR_SEEN;
            break;
        }
        case QUOTED: {
            const char *q = memchr(data + i, '"', n - i);
            size_t j = q ? (size_t)(q - data) : n;
            r = append(p, data + i, j - i);
            if (q)
                p->state = QUOTE_SEEN;
            i = j;
            break;
        }
        case QUOTE_SEEN:
            if (c == '"') {
                r = append(p, "\"", 1);
                p->state = QUOTED;
            } else if (c == ',')
                r = emit(p, false);
            else if (c == '\n')
                r = emit(p, true);
            else if (c == '\r')
                p->state = CR_SEEN;
            else
                r = -EINVAL;
            break;
        case CR_SEEN:
            r = c == '\n' ? emit(p, true) : -EINVAL;
            break;
        }
    }
    return r;
}

int csv_parser_finish(csv_parser *p)
{
    switch (p->state) {
    case QUOTED:
        return -EINVAL;
    case FIELD_START:
        if (p->column == 0)
            return 0; /* the input ended with its last record's line end, or was empty */
        return emit(p, true);
    default:
        return emit(p, true);
    }
}
