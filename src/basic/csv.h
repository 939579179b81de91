/* CSV as datasets use it (docs/analytics.md "Datasets"): RFC 4180 fields
 * (quoted fields may hold commas, line breaks and "" for a quote; records
 * end with LF or CRLF; a last record may lack its line end), and the column
 * types of a Dataset schema with the one rule for what a value of each type
 * is. One parser for the CLI's check before an upload and the job engine's
 * load, so that what the one accepts the other loads. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest field (bytes) either accepts. */
#define CSV_FIELD_MAX (1024 * 1024)
/* The most columns a schema has (the Dataset resource's cap). */
#define CSV_COLUMNS_MAX 256

typedef enum csv_type { CSV_INTEGER, CSV_REAL, CSV_TEXT, _CSV_TYPE_MAX } csv_type;

/* "integer", "real" or "text". */
const char *csv_type_name(csv_type t);
/* The type named S, or -EINVAL. */
int csv_type_from_name(const char *s);

/* Whether S (NUL-terminated, not empty) is an integer: a 64-bit decimal
 * (an optional sign, then digits). Stores it in *RET when RET is not NULL. */
bool csv_value_integer(const char *s, int64_t *ret);
/* Whether S is a real: a finite decimal or exponent number (digits, sign,
 * point, e or E; no blanks, hexadecimal, inf or nan) strtod reads whole. Stores it in *RET when RET is not NULL. */
bool csv_value_real(const char *s, double *ret);

/* Called for each field: its bytes (NUL-terminated; the parser's buffer,
 * valid until the call returns), its column (0-based) and record (0 is the
 * first, the header when there is one), and whether it ends its record.
 * Returns 0 to go on, or a negative errno that stops the parse. */
typedef int (*csv_field_fn)(void *userdata, const char *field, size_t len, size_t column, uint64_t record,
                            bool end_of_record);

typedef struct csv_parser {
    csv_field_fn field;
    void *userdata;
    char *buf;     /* the field being read: CSV_FIELD_MAX + 1 bytes, wiped when done */
    size_t len;
    size_t column;
    uint64_t record;
    int state;
    bool secure; /* wipe the field buffer after each field */
} csv_parser;

/* Sets P up to call FIELD. SECURE: the input is confidential, each field is
 * wiped from the buffer once handed over. Returns 0 or -ENOMEM. */
int csv_parser_init(csv_parser *p, csv_field_fn field, void *userdata, bool secure);
/* Parses the N bytes of DATA (any split of the input). Returns 0, -EINVAL
 * for malformed CSV (a quote inside a quoted field not doubled nor closing
 * it, a CR not followed by LF), -E2BIG for a field longer than
 * CSV_FIELD_MAX, or the callback's error. p->record and p->column say where. */
int csv_parser_feed(csv_parser *p, const char *data, size_t n);
/* Ends the input: the last field of a record without a line end is handed
 * over; -EINVAL when a quoted field is still open. */
int csv_parser_finish(csv_parser *p);
/* Wipes and frees the buffer. */
void csv_parser_done(csv_parser *p);
