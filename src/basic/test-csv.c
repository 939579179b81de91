/* basic/csv: the RFC 4180 push parser and the column types' rule. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/csv.h"

typedef struct csv_seen {
    char text[512];
} csv_seen;

/* Records each field as "[record.column]field" and "|" at each record's end. */
static int csv_record(void *userdata, const char *field, size_t len, size_t column, uint64_t record, bool end)
{
    csv_seen *s = userdata;
    size_t n = strlen(s->text);
    snprintf(s->text + n, sizeof(s->text) - n, "[%llu.%zu]%.*s%s", (unsigned long long)record, column, (int)len, field,
             end ? "|" : "");
    return 0;
}

/* Parses IN fed one byte at a time and whole; both must agree. Returns the parse's result. */
static int csv_parse_all(const char *in, char out[512])
{
    csv_seen whole = {0}, bytes = {0};
    csv_parser p;
    cr_assert_eq(csv_parser_init(&p, csv_record, &whole, true), 0);
    int r = csv_parser_feed(&p, in, strlen(in));
    if (r == 0)
        r = csv_parser_finish(&p);
    csv_parser_done(&p);
    cr_assert_eq(csv_parser_init(&p, csv_record, &bytes, false), 0);
    int r2 = 0;
    for (size_t i = 0; in[i] && r2 == 0; i++)
        r2 = csv_parser_feed(&p, in + i, 1);
    if (r2 == 0)
        r2 = csv_parser_finish(&p);
    csv_parser_done(&p);
    cr_assert_eq(r, r2, "%s", in);
    cr_assert_str_eq(whole.text, bytes.text);
    strcpy(out, whole.text);
    return r;
}

Test(csv, rfc4180_fields_and_records)
{
    char out[512];
    cr_assert_eq(csv_parse_all("a,b\n1,\"x,\"\"y\"\"\nz\"\r\n,\n", out), 0);
    cr_assert_str_eq(out, "[0.0]a[0.1]b|[1.0]1[1.1]x,\"y\"\nz|[2.0][2.1]|");
    cr_assert_eq(csv_parse_all("a\n1", out), 0, "a last record without its line end");
    cr_assert_str_eq(out, "[0.0]a|[1.0]1|");
    cr_assert_eq(csv_parse_all("", out), 0);
    cr_assert_str_eq(out, "");
    cr_assert_eq(csv_parse_all("a,\"b\"c\n", out), -EINVAL, "text after a closing quote");
    cr_assert_eq(csv_parse_all("a,\"b\n", out), -EINVAL, "an open quote at the end");
    cr_assert_eq(csv_parse_all("a\rb\n", out), -EINVAL, "a lone CR");
}

Test(csv, field_cap_and_types)
{
    csv_seen seen = {0};
    csv_parser p;
    cr_assert_eq(csv_parser_init(&p, csv_record, &seen, false), 0);
    char *big = malloc(CSV_FIELD_MAX + 1);
    memset(big, 'x', CSV_FIELD_MAX + 1);
    cr_assert_eq(csv_parser_feed(&p, big, CSV_FIELD_MAX), 0);
    cr_assert_eq(csv_parser_feed(&p, big, 1), -E2BIG);
    csv_parser_done(&p);
    free(big);
    int64_t i;
    double d;
    cr_assert(csv_value_integer("-9223372036854775808", &i) && i == INT64_MIN);
    cr_assert(!csv_value_integer("9223372036854775808", NULL));
    cr_assert(!csv_value_integer("1.0", NULL) && !csv_value_integer("", NULL) && !csv_value_integer("1 ", NULL));
    cr_assert(csv_value_real("-2e3", &d) && d == -2000.0);
    cr_assert(!csv_value_real("1e999", NULL) && !csv_value_real("x", NULL));
    cr_assert(!csv_value_integer(" 1", NULL) && !csv_value_real(" 1", NULL) && !csv_value_real("inf", NULL));
    cr_assert(!csv_value_real("nan", NULL) && !csv_value_real("0x10", NULL) && !csv_value_real("1.5 ", NULL));
    cr_assert(csv_value_real("+.5E-3", &d) && d == 0.0005);
    cr_assert(csv_value_integer("+7", &i) && i == 7);
    cr_assert_eq(csv_type_from_name("real"), CSV_REAL);
    cr_assert_eq(csv_type_from_name("blob"), -EINVAL);
    cr_assert_str_eq(csv_type_name(CSV_TEXT), "text");
}
