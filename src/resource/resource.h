/* Resource kinds, their schemas and document validation.
 *
 * Every kind is one entry of a table in resource.c: its Kind, its REST path
 * segment, whether the API hides its spec, its spec schema and the columns
 * `cloister get` prints. Adding a kind is one table entry plus its spec schema.
 *
 * A document is {apiVersion, kind, metadata, spec, status}: see DESIGN.md,
 * "Manifests". Validation is strict: unknown fields anywhere are refused and
 * every string, array and nesting level has a cap. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define RESOURCE_API_VERSION "cloister.dev/v1"
#define RESOURCE_MAX_DEPTH 32      /* nesting of objects and arrays in a document */
#define RESOURCE_NAME_MAX 63       /* metadata.name: a DNS-1123 label */
#define RESOURCE_STRING_MAX 4096   /* default cap of a string field */
#define RESOURCE_LABELS_MAX 64
#define RESOURCE_ENCLAVE_REPLICAS_MAX 16 /* Enclave spec.replicas.max */
#define RESOURCE_SCALING_IN_FLIGHT_MAX 100000 /* Enclave spec.scaling.inFlightPerReplica */
#define RESOURCE_SCALING_AFTER_MAX 86400     /* Enclave spec.scaling.upAfterSeconds, downAfterSeconds */

typedef struct schema schema; /* see schema.h */

/* The first problem found in a document: PATH names the field
 * ("spec.upstream.url"; empty for the document itself), MESSAGE says why. */
typedef struct resource_error {
    char path[256];
    char message[512];
} resource_error;

/* A column of `cloister get`: the first of PATHS set in the document is
 * printed (arrays joined with ","), or its element count when COUNT, or
 * FALLBACK when none is set. */
typedef struct resource_column {
    const char *header;
    const char *paths[3]; /* dotted paths into the public view: "spec.upstream.url" */
    bool count;
    const char *fallback;
} resource_column;

typedef struct resource_kind {
    const char *kind;               /* "Service": as written in manifests */
    const char *plural;             /* "services": the REST path segment */
    bool write_only_spec;           /* the API never returns the spec (Secret) */
    const schema *spec;             /* the spec's schema */
    const resource_column *columns; /* ended by {NULL} */
    bool server_managed;            /* written by the server only (Session): the generic API refuses it */
    const resource_column *wide_columns; /* added by `cloister get -o wide`, ended by {NULL}; may be NULL */
} resource_kind;

/* The kind named NAME: its Kind, lower-case singular or plural, compared
 * case-insensitively ("Service", "service", "SERVICES"). NULL if unknown. */
const resource_kind *resource_kind_find(const char *name);
/* The I-th kind in table order, NULL past the last: for iterating them all. */
const resource_kind *resource_kind_get(size_t i);

/* Whether NAME is a valid metadata.name: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63. */
bool resource_name_valid(const char *name);
/* Whether KEY is a valid key of a Secret's spec.data: 1-253 of [A-Za-z0-9._-], not "." or "..". */
bool resource_data_key_valid(const char *key);

/* Validates a whole document. Returns 0, or -EINVAL with ERR (may be NULL)
 * naming the first offending field and the reason. */
int resource_validate(const json_t *doc, resource_error *err);

/* Fills the declared defaults of absent spec fields (User type human, rule
 * priority 0, ...) into DOC, which must have passed resource_validate().
 * Returns 0, -EINVAL if DOC's kind is unknown, or -ENOMEM. */
int resource_apply_defaults(json_t *doc);

/* The document as the API may return it, as a new reference the caller
 * owns (NULL on allocation failure or if DOC is not an object). For kinds
 * with a write-only spec, spec becomes {} and status.keys lists the names of
 * spec.data, sorted; other documents are copied unchanged. */
json_t *resource_public_view(const json_t *doc);
