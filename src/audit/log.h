/* The audit log's durable storage: entries, the leaf hashes and every
 * perfect-subtree hash of the Merkle tree in one SQLite database (WAL,
 * synchronous=FULL). A batch of entries and every node it completes are
 * committed in one transaction, so after a crash the tree is exactly the
 * committed entries: an acknowledged append is never lost, and a checkpoint
 * signed over a committed size always matches. Proofs read only the stored
 * hashes (O(log n) lookups), never the entries' text, so a verifier can
 * locate tampered entries with them. Not thread-safe: callers serialise. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "audit/merkle.h"

typedef struct audit_log audit_log;

/* Opens (creating) the log at PATH into *RET. Returns 0 or a negative errno
 * (-EBADMSG when the stored tree is inconsistent with its size). */
int audit_log_open(const char *path, audit_log **ret);
void audit_log_free(audit_log *l);

/* The number of entries in the tree. */
uint64_t audit_log_size(const audit_log *l);
/* The current root. */
void audit_log_root(const audit_log *l, merkle_hash out);

/* Appends N canonical entries (ENTRIES[i], LENS[i] bytes) durably in one
 * transaction. On success *RET_FIRST is the index of the first. On failure
 * nothing was appended. Returns 0 or a negative errno. */
int audit_log_append(audit_log *l, const char *const *entries, const size_t *lens, size_t n, uint64_t *ret_first);

/* Calls CB for each stored entry with START <= index < END, in order, with
 * its text (valid during the call), whether or not the tree covers it (so a
 * verifier sees rows added behind the log's back). Stops at the first
 * missing index. Returns
 * 0, CB's negative return, or a negative errno. */
int audit_log_read(audit_log *l, uint64_t start, uint64_t end,
                   int (*cb)(void *userdata, uint64_t index, const char *text, size_t len), void *userdata);

/* A merkle_get_node over the stored tree (USERDATA is the audit_log);
 * -ENOENT for a node the tree does not have. */
int audit_log_get_node(void *userdata, unsigned level, uint64_t index, merkle_hash out);
