/* RFC 6962 / RFC 9162 Merkle trees: leaf and node hashing, the compact
 * "frontier" of an append-only tree, O(log n) inclusion and consistency
 * proofs computed from stored perfect-subtree hashes, and their verification.
 * No I/O: stored hashes are reached through a callback. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MERKLE_HASH_LEN 32
#define MERKLE_MAX_LEVELS 64
/* A proof for a tree of at most 2^63 leaves has fewer than 2 * 64 hashes. */
#define MERKLE_PROOF_MAX 128

typedef uint8_t merkle_hash[MERKLE_HASH_LEN];

/* SHA-256(0x00 || DATA). */
void merkle_leaf_hash(const void *data, size_t len, merkle_hash out);
/* SHA-256(0x01 || L || R). */
void merkle_node_hash(const merkle_hash l, const merkle_hash r, merkle_hash out);
/* SHA-256("") : the root of the empty tree. */
void merkle_empty_root(merkle_hash out);

/* The hash of the perfect subtree at LEVEL (0: a leaf) covering leaves
 * [INDEX << LEVEL, (INDEX + 1) << LEVEL). Returns 0 or a negative errno. */
typedef int (*merkle_get_node)(void *userdata, unsigned level, uint64_t index, merkle_hash out);

/* The right edge of a tree of SIZE leaves: one perfect-subtree hash per set
 * bit of SIZE, largest (leftmost) first. Enough to append and to compute the
 * root without reading anything else. */
typedef struct merkle_frontier {
    uint64_t size;
    unsigned n;
    merkle_hash hashes[MERKLE_MAX_LEVELS];
} merkle_frontier;

/* Called for each perfect subtree an append completes, level >= 1. */
typedef int (*merkle_emit_node)(void *userdata, unsigned level, uint64_t index, const merkle_hash hash);

/* Appends leaf hash LEAF to F, reporting every newly completed node through
 * EMIT (may be NULL). Returns 0, -EOVERFLOW when the tree is full, or EMIT's
 * error (F is then unchanged). */
int merkle_frontier_append(merkle_frontier *f, const merkle_hash leaf, merkle_emit_node emit, void *userdata);
/* The root of the tree F describes into OUT. */
void merkle_frontier_root(const merkle_frontier *f, merkle_hash out);
/* Rebuilds the frontier of a tree of SIZE leaves from stored nodes. Returns
 * 0 or GET's error; *RET is written only on success. */
int merkle_frontier_load(uint64_t size, merkle_get_node get, void *userdata, merkle_frontier *ret);

/* The root of the first SIZE leaves of a stored tree (SIZE may be smaller
 * than the tree), with O(log SIZE) lookups. */
int merkle_root(uint64_t size, merkle_get_node get, void *userdata, merkle_hash ret);

/* The inclusion proof of leaf INDEX in the tree of the first SIZE leaves:
 * *RET_N hashes into PROOF (MERKLE_PROOF_MAX entries). -EINVAL unless
 * INDEX < SIZE. */
int merkle_inclusion_proof(uint64_t index, uint64_t size, merkle_get_node get, void *userdata,
                           merkle_hash proof[MERKLE_PROOF_MAX], size_t *ret_n);
/* The consistency proof between the trees of the first FROM and TO leaves.
 * -EINVAL unless 0 < FROM <= TO (an empty proof when FROM == TO). */
int merkle_consistency_proof(uint64_t from, uint64_t to, merkle_get_node get, void *userdata,
                             merkle_hash proof[MERKLE_PROOF_MAX], size_t *ret_n);

/* RFC 9162 2.1.3.2: true when PROOF shows LEAF at INDEX in the tree of SIZE
 * leaves with ROOT. */
bool merkle_verify_inclusion(uint64_t index, uint64_t size, const merkle_hash leaf, const merkle_hash *proof,
                             size_t n, const merkle_hash root);
/* RFC 9162 2.1.4.2: true when PROOF shows the tree of SIZE1 leaves with ROOT1
 * is a prefix of the tree of SIZE2 leaves with ROOT2. */
bool merkle_verify_consistency(uint64_t size1, uint64_t size2, const merkle_hash root1, const merkle_hash root2,
                               const merkle_hash *proof, size_t n);

/* Every perfect-subtree hash of a tree held in memory (a verifier's copy):
 * level L holds size >> L hashes. */
typedef struct merkle_mem_tree {
    uint64_t size, cap;
    merkle_hash *levels[MERKLE_MAX_LEVELS];
} merkle_mem_tree;

/* Appends a leaf hash; returns 0 or -ENOMEM. */
int merkle_mem_tree_append(merkle_mem_tree *t, const merkle_hash leaf);
/* A merkle_get_node over a merkle_mem_tree (USERDATA). */
int merkle_mem_tree_get(void *userdata, unsigned level, uint64_t index, merkle_hash out);
/* Frees the levels; accepts a zeroed tree. */
void merkle_mem_tree_free(merkle_mem_tree *t);
