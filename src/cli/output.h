/* Printing results on stdout: indented JSON, YAML documents, and tables of
 * resources for people, with text from the server cleaned for terminals. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resource/resource.h"

/* Widest table cell, in characters; longer values end in "...". */
#define OUTPUT_CELL_MAX 60

/* Copies S into OUT (SIZE bytes, cut on a character boundary) with every
 * control character (C0, DEL, C1) replaced by '?'. Returns OUT. */
char *text_sanitize(const char *s, char *out, size_t size);

/* "45s", "12m", "5h", "3d", "2y": how long ago SECONDS is, kubectl-style. */
char *format_age(int64_t seconds, char *buf, size_t size);

/* Prints V as indented JSON. Returns 0 or -ENOMEM. */
int output_json(const json_t *v);
/* Prints V as one YAML document, or when V is an array each element as a
 * document ("---" between them). Returns 0 or a negative errno. */
int output_yaml(const json_t *v);
/* Prints ITEMS (an array of resources of kind K, as the API returns them) as
 * a table: NAME, the kind's columns, AGE relative to NOW (seconds since the
 * epoch). Returns 0 or -ENOMEM. */
int output_table(const resource_kind *k, const json_t *items, int64_t now);
/* output_table(), with WIDE (-o wide) the kind's wide columns and LABELS
 * added before AGE. */
int output_table_wide(const resource_kind *k, const json_t *items, int64_t now, bool wide);

/* "service/wiki": the lower-case Kind, '/', NAME, into BUF; returns BUF. */
char *output_kind_name(const char *kind, const char *name, char *buf, size_t size);

/* Prints the field-level unified diff of BEFORE and AFTER (JSON values;
 * BEFORE may be NULL or JSON null: everything is added) on stdout: one line
 * per leaf field, "path: value", prefixed "-" (only in BEFORE), "+" (only
 * in AFTER) or " " (the same). LABEL names the object in the header lines.
 * Returns how many lines differ, or -ENOMEM. */
int output_diff(const char *label, const json_t *before, const json_t *after);
