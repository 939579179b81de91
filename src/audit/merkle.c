#include "audit/merkle.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"

void merkle_leaf_hash(const void *data, size_t len, merkle_hash out)
{
    static const uint8_t prefix = 0x00;
    uint8_t small[1024];
    if (len < sizeof(small)) {
        small[0] = prefix;
        memcpy(small + 1, data, len);
        SHA256(small, len + 1, out);
        return;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(c, &prefix, 1) != 1 ||
        EVP_DigestUpdate(c, data, len) != 1 || EVP_DigestFinal_ex(c, out, NULL) != 1)
        abort(); /* only allocation failure gets here, and a wrong hash is never acceptable */
    EVP_MD_CTX_free(c);
}

void merkle_node_hash(const merkle_hash l, const merkle_hash r, merkle_hash out)
{
    uint8_t buf[1 + 2 * MERKLE_HASH_LEN];
    buf[0] = 0x01;
    memcpy(buf + 1, l, MERKLE_HASH_LEN);
    memcpy(buf + 1 + MERKLE_HASH_LEN, r, MERKLE_HASH_LEN);
    SHA256(buf, sizeof(buf), out);
}

void merkle_empty_root(merkle_hash out)
{
    SHA256((const uint8_t *)"", 0, out);
}

/* The largest power of two strictly smaller than N (N >= 2). */
static uint64_t split_point(uint64_t n)
{
    return UINT64_C(1) << (63 - __builtin_clzll(n - 1));
}

int merkle_frontier_append(merkle_frontier *f, const merkle_hash leaf, merkle_emit_node emit, void *userdata)
{
    if (f->size >= (UINT64_C(1) << 62))
        return -EOVERFLOW;
    merkle_frontier next = *f;
    merkle_hash h;
    memcpy(h, leaf, MERKLE_HASH_LEN);
    uint64_t new_size = f->size + 1;
    /* each trailing one bit of the old size is a subtree the new leaf completes */
    for (unsigned level = 0; f->size & (UINT64_C(1) << level); level++) {
        merkle_node_hash(next.hashes[next.n - 1], h, h);
        next.n--;
        if (emit) {
            int r = emit(userdata, level + 1, (new_size >> (level + 1)) - 1, h);
            if (r < 0)
                return r;
        }
    }
    memcpy(next.hashes[next.n++], h, MERKLE_HASH_LEN);
    next.size = new_size;
    *f = next;
    return 0;
}

void merkle_frontier_root(const merkle_frontier *f, merkle_hash out)
{
    if (f->n == 0) {
        merkle_empty_root(out);
        return;
    }
    merkle_hash acc;
    memcpy(acc, f->hashes[f->n - 1], MERKLE_HASH_LEN);
    for (unsigned i = f->n - 1; i-- > 0;)
        merkle_node_hash(f->hashes[i], acc, acc);
    memcpy(out, acc, MERKLE_HASH_LEN);
}

int merkle_frontier_load(uint64_t size, merkle_get_node get, void *userdata, merkle_frontier *ret)
{
    merkle_frontier f = {.size = size};
    uint64_t offset = 0;
    for (int b = 63; b >= 0; b--) {
        if (!(size & (UINT64_C(1) << b)))
            continue;
        int r = get(userdata, (unsigned)b, offset >> b, f.hashes[f.n]);
        if (r < 0)
            return r;
        f.n++;
        offset += UINT64_C(1) << b;
    }
    *ret = f;
    return 0;
}

/* MTH(D[start:end]) from stored perfect subtrees. Every range the proof
 * algorithms ask for starts on a boundary of its left part, so this makes at
 * most one lookup per level. */
static int subtree_hash(uint64_t start, uint64_t end, merkle_get_node get, void *userdata, merkle_hash out)
{
    uint64_t n = end - start;
    if ((n & (n - 1)) == 0 && start % n == 0)
        return get(userdata, (unsigned)__builtin_ctzll(n), start / n, out);
    uint64_t k = split_point(n);
    merkle_hash l, r;
    int e = subtree_hash(start, start + k, get, userdata, l);
    if (e == 0)
        e = subtree_hash(start + k, end, get, userdata, r);
    if (e < 0)
        return e;
    merkle_node_hash(l, r, out);
    return 0;
}

int merkle_root(uint64_t size, merkle_get_node get, void *userdata, merkle_hash ret)
{
    if (size == 0) {
        merkle_empty_root(ret);
        return 0;
    }
    return subtree_hash(0, size, get, userdata, ret);
}

/* RFC 6962 2.1.1 PATH(m, D[start:end]), appended to PROOF at *N. */
static int path(uint64_t m, uint64_t start, uint64_t end, merkle_get_node get, void *userdata,
                merkle_hash *proof, size_t *n)
{
    uint64_t size = end - start;
    if (size <= 1)
        return 0;
    uint64_t k = split_point(size);
    int r = m < k ? path(m, start, start + k, get, userdata, proof, n)
                  : path(m - k, start + k, end, get, userdata, proof, n);
    if (r < 0)
        return r;
    if (*n >= MERKLE_PROOF_MAX)
        return -E2BIG;
    r = m < k ? subtree_hash(start + k, end, get, userdata, proof[*n])
              : subtree_hash(start, start + k, get, userdata, proof[*n]);
    if (r < 0)
        return r;
    (*n)++;
    return 0;
}

int merkle_inclusion_proof(uint64_t index, uint64_t size, merkle_get_node get, void *userdata,
                           merkle_hash proof[MERKLE_PROOF_MAX], size_t *ret_n)
{
    if (index >= size)
        return -EINVAL;
    size_t n = 0;
    int r = path(index, 0, size, get, userdata, proof, &n);
    if (r < 0)
        return r;
    *ret_n = n;
    return 0;
}

/* RFC 6962 2.1.2 SUBPROOF(m, D[start:end], b), appended to PROOF at *N. */
static int subproof(uint64_t m, uint64_t start, uint64_t end, bool b, merkle_get_node get, void *userdata,
                    merkle_hash *proof, size_t *n)
{
    uint64_t size = end - start;
    int r;
    if (m == size) {
        if (b)
            return 0;
        if (*n >= MERKLE_PROOF_MAX)
            return -E2BIG;
        r = subtree_hash(start, end, get, userdata, proof[*n]);
        if (r == 0)
            (*n)++;
        return r;
    }
    uint64_t k = split_point(size);
    r = m <= k ? subproof(m, start, start + k, b, get, userdata, proof, n)
               : subproof(m - k, start + k, end, false, get, userdata, proof, n);
    if (r < 0)
        return r;
    if (*n >= MERKLE_PROOF_MAX)
        return -E2BIG;
    r = m <= k ? subtree_hash(start + k, end, get, userdata, proof[*n])
               : subtree_hash(start, start + k, get, userdata, proof[*n]);
    if (r < 0)
        return r;
    (*n)++;
    return 0;
}

int merkle_consistency_proof(uint64_t from, uint64_t to, merkle_get_node get, void *userdata,
                             merkle_hash proof[MERKLE_PROOF_MAX], size_t *ret_n)
{
    if (from == 0 || from > to)
        return -EINVAL;
    size_t n = 0;
    int r = subproof(from, 0, to, true, get, userdata, proof, &n);
    if (r < 0)
        return r;
    *ret_n = n;
    return 0;
}

static bool hash_eq(const merkle_hash a, const merkle_hash b)
{
    return memeq_consttime(a, b, MERKLE_HASH_LEN);
}

bool merkle_verify_inclusion(uint64_t index, uint64_t size, const merkle_hash leaf, const merkle_hash *proof,
                             size_t n, const merkle_hash root)
{
    if (index >= size)
        return false;
    uint64_t fn = index, sn = size - 1;
    merkle_hash r;
    memcpy(r, leaf, MERKLE_HASH_LEN);
    for (size_t i = 0; i < n; i++) {
        if (sn == 0)
            return false;
        if ((fn & 1) || fn == sn) {
            merkle_node_hash(proof[i], r, r);
            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else
            merkle_node_hash(r, proof[i], r);
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && hash_eq(r, root);
}

bool merkle_verify_consistency(uint64_t size1, uint64_t size2, const merkle_hash root1, const merkle_hash root2,
                               const merkle_hash *proof, size_t n)
{
    if (size2 < size1)
        return false;
    if (size1 == size2)
        return n == 0 && hash_eq(root1, root2);
    if (size1 == 0)
        return n == 0;
    if (n == 0)
        return false;
    /* when size1 is a power of two its root is the first hash of the path */
    const merkle_hash *path_hashes = proof;
    size_t path_n = n;
    merkle_hash first;
    bool pow2 = (size1 & (size1 - 1)) == 0;
    if (pow2)
        memcpy(first, root1, MERKLE_HASH_LEN);
    else {
        memcpy(first, proof[0], MERKLE_HASH_LEN);
        path_hashes = proof + 1;
        path_n = n - 1;
    }
    uint64_t fn = size1 - 1, sn = size2 - 1;
    while (fn & 1) {
        fn >>= 1;
        sn >>= 1;
    }
    merkle_hash fr, sr;
    memcpy(fr, first, MERKLE_HASH_LEN);
    memcpy(sr, first, MERKLE_HASH_LEN);
    for (size_t i = 0; i < path_n; i++) {
        if (sn == 0)
            return false;
        if ((fn & 1) || fn == sn) {
            merkle_node_hash(path_hashes[i], fr, fr);
            merkle_node_hash(path_hashes[i], sr, sr);
            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else
            merkle_node_hash(sr, path_hashes[i], sr);
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && hash_eq(fr, root1) && hash_eq(sr, root2);
}

int merkle_mem_tree_append(merkle_mem_tree *t, const merkle_hash leaf)
{
    if (t->size == t->cap) {
        uint64_t cap = t->cap ? t->cap * 2 : 1024;
        for (unsigned l = 0; l < MERKLE_MAX_LEVELS && (cap >> l); l++) {
            merkle_hash *p = realloc(t->levels[l], (size_t)(cap >> l) * sizeof(merkle_hash));
            if (!p)
                return -ENOMEM;
            t->levels[l] = p;
        }
        t->cap = cap;
    }
    memcpy(t->levels[0][t->size], leaf, MERKLE_HASH_LEN);
    t->size++;
    /* complete every parent the new leaf finishes */
    for (unsigned l = 0; l + 1 < MERKLE_MAX_LEVELS && ((t->size >> l) & 1) == 0; l++) {
        uint64_t i = (t->size >> (l + 1)) - 1;
        merkle_node_hash(t->levels[l][2 * i], t->levels[l][2 * i + 1], t->levels[l + 1][i]);
    }
    return 0;
}

int merkle_mem_tree_get(void *userdata, unsigned level, uint64_t index, merkle_hash out)
{
    const merkle_mem_tree *t = userdata;
    if (level >= MERKLE_MAX_LEVELS || index >= (t->size >> level))
        return -ENOENT;
    memcpy(out, t->levels[level][index], MERKLE_HASH_LEN);
    return 0;
}

void merkle_mem_tree_free(merkle_mem_tree *t)
{
    if (!t)
        return;
    for (unsigned l = 0; l < MERKLE_MAX_LEVELS; l++)
        free(t->levels[l]);
    *t = (merkle_mem_tree){0};
}
