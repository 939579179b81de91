/* Field paths as shown in error messages: "spec.rules[0].condition.match".
 * Keys made of [A-Za-z0-9_-] are joined with dots; any other key is written
 * as ["..."] with JSON escaping, so the path stays readable and unambiguous.
 * The validator and manifest_locate() build paths with the same functions,
 * which is what lets an error path be mapped back to a line of YAML. */
#pragma once

#include <stddef.h>

typedef struct resource_path {
    char buf[256];
    size_t len;
} resource_path;

void resource_path_init(resource_path *p);
/* Appends a key segment (N bytes at KEY) and returns the previous length, to
 * be handed to resource_path_pop(). A path too long for the buffer ends in
 * "..." instead of failing: paths are for humans. */
size_t resource_path_push_key(resource_path *p, const char *key, size_t n);
/* Appends "[I]" and returns the previous length. */
size_t resource_path_push_index(resource_path *p, size_t i);
/* Restores the path to a length returned by a push. */
void resource_path_pop(resource_path *p, size_t saved);
