/* Manifests: the YAML or JSON files `cloister apply` reads.
 *
 * YAML may hold several documents separated by "---"; JSON is one object,
 * an array of objects, or {"kind": "List", "items": [...]} (a List is
 * unwrapped in YAML too). Each document becomes a jansson object. YAML
 * scalars are typed as in the YAML 1.2 core schema: plain null, ~ and empty
 * are null; true/false booleans; decimal, 0o octal and 0x hex integers; floats;
 * anything else, and every quoted scalar, a string. Anchors and aliases,
 * duplicate keys, non-string keys, non-mapping documents, nesting deeper
 * than 32, more than 1,000 documents and input over 8 MiB are refused. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "basic/strbuf.h"
#include "resource/resource.h"

#define MANIFEST_MAX_SIZE ((size_t)8 << 20)
#define MANIFEST_MAX_DOCUMENTS 1000
#define MANIFEST_MAX_DEPTH RESOURCE_MAX_DEPTH

typedef struct manifest_document {
    json_t *value;  /* a JSON object, owned by the manifest */
    unsigned line;  /* 1-based line where the document (or List item) starts */
    size_t source;  /* which document of the input it came from, 0-based */
    size_t item;    /* its index in that document's List items, or SIZE_MAX */
} manifest_document;

typedef struct manifest {
    manifest_document *docs;
    size_t n_docs;
    bool yaml; /* parsed as YAML: manifest_field_line() can find fields */
} manifest;

/* Parses the LEN bytes at DATA into *RET, which the caller releases with
 * manifest_free(). Empty YAML documents are skipped. Returns 0, or -EINVAL
 * (malformed), -E2BIG (over a cap) or -ENOMEM, with ERR (may be NULL)
 * naming where ("document 2 line 14 column 3") and why. *RET is written only
 * on success. */
int manifest_parse(const char *data, size_t len, manifest *ret, resource_error *err);
/* Frees the documents and empties M; accepts NULL and an empty manifest. */
void manifest_free(manifest *m);

/* The 1-based line of the field at PATH (as in resource_error.path) in
 * document INDEX of M, parsed from DATA/LEN: the line of the field's key, or
 * of its closest existing parent when the field is missing. JSON manifests
 * give the document's line. */
unsigned manifest_field_line(const char *data, size_t len, const manifest *m, size_t index,
                             const char *path);

/* Appends V to OUT as one YAML document; when OUT already holds text, a
 * "---" line starts the new document. Strings that would read back as
 * another type (or as a YAML 1.1 boolean, number or date) are quoted, so
 * manifest_parse() gives V back. Returns 0, -E2BIG when OUT is full (OUT is
 * then left as it was), -ENOMEM or -EINVAL. */
int yaml_emit_json(const json_t *v, strbuf *out);
