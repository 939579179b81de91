/* The CEL parser: source text to the raw syntax tree. */
#pragma once

#include "cel/cel-internal.h"

/* Parses SRC into a tree allocated from MEM. Returns 0 and the root, or a
 * negative errno (-EINVAL syntax, -E2BIG cap exceeded, -ENOMEM) with a message
 * in MSG and the 1-based position of the offending token. */
int cel_parse(const char *src, size_t len, cel_arena *mem, node **ret_root, char *msg, size_t msg_size,
              uint32_t *ret_line, uint32_t *ret_col);
