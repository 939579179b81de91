/* A small declarative schema language for resource specs. A schema is a tree
 * of static const nodes (see the table in resource.c); schema_validate()
 * walks a JSON value against it and reports the first violation with the
 * field path, schema_apply_defaults() fills declared defaults in. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "resource/path.h"
#include "resource/resource.h"

typedef enum schema_type {
    SCHEMA_STRING,
    SCHEMA_BOOL,
    SCHEMA_INT,
    SCHEMA_OBJECT, /* fixed set of named fields */
    SCHEMA_ARRAY,
    SCHEMA_MAP,    /* free keys checked by `format`, values by `items` */
    SCHEMA_ANY,    /* any JSON value within the generic caps (attrs, status) */
} schema_type;

/* What a string (or a map key) must look like. */
typedef enum schema_format {
    FORMAT_TEXT,        /* any string (no NUL) */
    FORMAT_NAME,        /* a resource name: DNS-1123 label, at most 63 */
    FORMAT_HOSTNAME,    /* lower-case DNS-1123 subdomain, at most 253 */
    FORMAT_HTTP_URL,    /* http:// or https:// URL without credentials or fragment */
    FORMAT_HTTPS_URL,   /* the same, https:// only */
    FORMAT_RFC3339,     /* a timestamp basic/timeutil parses */
    FORMAT_EMAIL,       /* local@domain, no spaces */
    FORMAT_HEADER_NAME, /* an RFC 9110 token, not a framing or x-cloister-* header */
    FORMAT_TOKEN,       /* printable ASCII without spaces (OAuth scopes, claim names) */
    FORMAT_DATA_KEY,    /* [A-Za-z0-9._-]{1,253}, not "." or ".." */
    FORMAT_LABEL_KEY,   /* [A-Za-z0-9] ([A-Za-z0-9._/-]* [A-Za-z0-9])?, at most 253 */
    FORMAT_HEX,         /* lower-case hex digits, an even number of them */
    FORMAT_MEASUREMENT, /* a measured claim of TEE evidence: pcr0..pcr31, measurement, host_data,
                           chip_id, mr_td, mr_config_id, rtmr0..rtmr3 */
    FORMAT_ABSOLUTE_PATH, /* /name[/name...]: no empty, "." or ".." components, no control characters */
} schema_format;

typedef struct schema schema;

typedef struct schema_field {
    const char *name;
    const schema *schema;     /* NULL: accepted as is (checked elsewhere, or ignored) */
    bool required;
    const char *default_json; /* JSON text of the value filled in when absent */
} schema_field;

struct schema {
    schema_type type;
    schema_format format;       /* strings; map keys */
    size_t max_len;             /* strings and map keys; 0 = RESOURCE_STRING_MAX */
    bool allow_empty;           /* strings: "" is accepted */
    const char *const *values;  /* strings: the allowed values, NULL-terminated */
    long long min, max;         /* integers: inclusive range */
    bool must_be_true;          /* booleans: only `true` has a meaning (matchAny) */
    const schema *items;        /* arrays: elements; maps: values */
    size_t min_items, max_items; /* arrays: elements; maps: keys; max 0 = SCHEMA_MAX_ITEMS */
    const schema_field *fields; /* objects: ended by {NULL} */
    bool exactly_one;           /* objects: exactly one of the fields is set */
    /* objects: a rule across fields, run once the fields are valid; returns
     * 0 or resource_fail()'s -EINVAL. */
    int (*check)(const json_t *v, resource_path *path, resource_error *err);
};

/* Default cap on array elements and map keys. */
#define SCHEMA_MAX_ITEMS 256

/* Validates V against S; PATH names V and is restored before returning.
 * Returns 0 or -EINVAL with ERR (may be NULL) filled. V's nesting depth must
 * already be bounded (resource_validate checks it first). */
int schema_validate(const schema *s, const json_t *v, resource_path *path, resource_error *err);
/* Sets the declared defaults of absent fields in V (assumed valid), at every
 * level. Returns 0 or -ENOMEM. */
int schema_apply_defaults(const schema *s, json_t *v);
/* Checks that V nests at most MAX containers deep; DEPTH is V's own depth. */
int schema_check_depth(const json_t *v, unsigned depth, unsigned max, resource_path *path,
                       resource_error *err);
/* Whether the N bytes at S are a string of format F. */
bool schema_string_matches(schema_format f, const char *s, size_t n);

/* Fills ERR (if not NULL) with PATH and the formatted message; returns -EINVAL. */
int resource_fail(resource_error *err, const resource_path *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes S, JSON-quoted and cut to a sane length, into OUT: for echoing
 * user input inside an error message. Returns OUT. */
char *quote_for_message(const char *s, char *out, size_t size);
