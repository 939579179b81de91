/* The audit library: RFC 6962 proofs against every file of
 * $CLOISTER_VECTORS/merkle (folders listed, not named), tree roots, proofs
 * generated from stored nodes for every (index, size) of small trees, the
 * SQLite log across reopen, signed notes (including a note signed by Go's
 * sumdb/note example key) and entry canonicalization. */
#include <criterion/criterion.h>
#include <errno.h>
#include <glob.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit/entry.h"
#include "audit/log.h"
#include "audit/merkle.h"
#include "audit/note.h"
#include "basic/encoding.h"
#include "basic/fileio.h"

static json_t *load_json(const char *path)
{
    json_error_t e;
    /* some vectors hold 2^64 - 1, beyond jansson's integers: those load as
     * reals, which field_u64() refuses, as a verifier must */
    json_t *j = json_load_file(path, JSON_DECODE_INT_AS_REAL, &e);
    cr_assert(j, "%s: %s", path, e.text);
    return j;
}

/* A non-negative integer field into *RET; false when absent or out of range. */
static bool field_u64(const json_t *obj, const char *name, uint64_t *ret)
{
    double d = json_number_value(json_object_get(obj, name));
    if (!json_is_number(json_object_get(obj, name)) || d < 0 || d >= 9007199254740992.0 || d != (double)(uint64_t)d)
        return false;
    *ret = (uint64_t)d;
    return true;
}

/* Decodes a base64 hash field; false when it is not 32 bytes. */
static bool b64_hash(const json_t *v, merkle_hash out)
{
    const char *s = json_string_value(v);
    return s && base64_decode(s, strlen(s), out, MERKLE_HASH_LEN, false) == MERKLE_HASH_LEN;
}

/* Decodes a proof array (null: empty) into PROOF; false when malformed. */
static bool b64_proof(const json_t *v, merkle_hash *proof, size_t *n)
{
    *n = 0;
    if (json_is_null(v))
        return true;
    if (!json_is_array(v) || json_array_size(v) > MERKLE_PROOF_MAX)
        return false;
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (!b64_hash(x, proof[(*n)++])) return false;
    return true;
}

static size_t run_vectors(const char *pattern, bool inclusion)
{
    const char *root = getenv("CLOISTER_VECTORS");
    cr_assert(root, "CLOISTER_VECTORS is not set");
    char pat[4096];
    snprintf(pat, sizeof(pat), "%s/merkle/%s", root, pattern);
    glob_t g;
    cr_assert_eq(glob(pat, 0, NULL, &g), 0, "no vectors at %s", pat);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        json_t *j = load_json(g.gl_pathv[i]);
        bool want_err = json_is_true(json_object_get(j, "wantErr"));
        merkle_hash proof[MERKLE_PROOF_MAX];
        size_t n;
        bool ok = b64_proof(json_object_get(j, "proof"), proof, &n);
        if (inclusion) {
            merkle_hash leaf, rt;
            uint64_t idx, size;
            ok = ok && field_u64(j, "leafIdx", &idx) && field_u64(j, "treeSize", &size) && b64_hash(json_object_get(j, "leafHash"), leaf) &&
                 b64_hash(json_object_get(j, "root"), rt) &&
                 merkle_verify_inclusion(idx, size, leaf, proof, n, rt);
        } else {
            merkle_hash r1, r2;
            uint64_t s1, s2;
            ok = ok && field_u64(j, "size1", &s1) && field_u64(j, "size2", &s2) && b64_hash(json_object_get(j, "root1"), r1) &&
                 b64_hash(json_object_get(j, "root2"), r2) &&
                 merkle_verify_consistency(s1, s2, r1, r2, proof, n);
        }
        cr_expect_eq(ok, !want_err, "%s: verified=%d, wantErr=%d", g.gl_pathv[i], ok, want_err);
        json_decref(j);
    }
    size_t count = g.gl_pathc;
    globfree(&g);
    return count;
}

Test(merkle, inclusion_vectors)
{
    cr_assert_gt(run_vectors("inclusion/*/*.json", true), 20);
}

Test(merkle, consistency_vectors)
{
    cr_assert_gt(run_vectors("consistency/*/*.json", false), 20);
}

/* The reference leaves of tree_roots.json in a memory tree. */
static json_t *reference_tree(merkle_mem_tree *t)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/merkle/tree_roots.json", getenv("CLOISTER_VECTORS"));
    json_t *j = load_json(path);
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(j, "leaf_inputs_hex"), i, x)
    {
        const char *h = json_string_value(x);
        uint8_t buf[64];
        cr_assert_eq(hex_decode(h, strlen(h), buf, strlen(h) / 2), 0);
        merkle_hash leaf;
        merkle_leaf_hash(buf, strlen(h) / 2, leaf);
        cr_assert_eq(merkle_mem_tree_append(t, leaf), 0);
    }
    return j;
}

Test(merkle, tree_roots)
{
    merkle_mem_tree t = {0};
    json_t *j = reference_tree(&t);
    json_t *roots = json_object_get(j, "root_by_tree_size_hex");
    cr_assert_eq(json_array_size(roots), t.size + 1);
    merkle_frontier f = {0};
    for (uint64_t size = 0; size <= t.size; size++) {
        merkle_hash want, got, fr;
        cr_assert_eq(hex_decode(json_string_value(json_array_get(roots, size)), 64, want, 32), 0);
        cr_assert_eq(merkle_root(size, merkle_mem_tree_get, &t, got), 0);
        cr_expect_eq(memcmp(got, want, 32), 0, "root of size %llu", (unsigned long long)size);
        merkle_frontier_root(&f, fr);
        cr_expect_eq(memcmp(fr, want, 32), 0, "frontier root of size %llu", (unsigned long long)size);
        if (size < t.size)
            cr_assert_eq(merkle_frontier_append(&f, t.levels[0][size], NULL, NULL), 0);
    }
    json_decref(j);
    merkle_mem_tree_free(&t);
}

/* Every inclusion and consistency proof of trees up to 40 leaves verifies,
 * and fails with a flipped bit or a wrong index. */
Test(merkle, generated_proofs)
{
    merkle_mem_tree t = {0};
    for (uint32_t i = 0; i < 40; i++) {
        merkle_hash leaf;
        merkle_leaf_hash(&i, sizeof(i), leaf);
        cr_assert_eq(merkle_mem_tree_append(&t, leaf), 0);
    }
    merkle_hash roots[41];
    for (uint64_t s = 0; s <= 40; s++)
        cr_assert_eq(merkle_root(s, merkle_mem_tree_get, &t, roots[s]), 0);
    merkle_hash proof[MERKLE_PROOF_MAX];
    size_t n;
    for (uint64_t size = 1; size <= 40; size++) {
        for (uint64_t i = 0; i < size; i++) {
            cr_assert_eq(merkle_inclusion_proof(i, size, merkle_mem_tree_get, &t, proof, &n), 0);
            cr_expect(merkle_verify_inclusion(i, size, t.levels[0][i], proof, n, roots[size]), "%llu/%llu",
                      (unsigned long long)i, (unsigned long long)size);
            if (size > 1)
                cr_expect(!merkle_verify_inclusion((i + 1) % size, size, t.levels[0][i], proof, n, roots[size]));
            if (n > 0) {
                proof[n - 1][3] ^= 1;
                cr_expect(!merkle_verify_inclusion(i, size, t.levels[0][i], proof, n, roots[size]));
            }
        }
        for (uint64_t from = 1; from <= size; from++) {
            cr_assert_eq(merkle_consistency_proof(from, size, merkle_mem_tree_get, &t, proof, &n), 0);
            cr_expect(merkle_verify_consistency(from, size, roots[from], roots[size], proof, n), "%llu->%llu",
                      (unsigned long long)from, (unsigned long long)size);
            if (from < size)
                cr_expect(!merkle_verify_consistency(from, size, roots[from - 1], roots[size], proof, n));
        }
    }
    cr_expect_eq(merkle_inclusion_proof(3, 3, merkle_mem_tree_get, &t, proof, &n), -EINVAL);
    cr_expect_eq(merkle_consistency_proof(0, 3, merkle_mem_tree_get, &t, proof, &n), -EINVAL);
    merkle_mem_tree_free(&t);
}

/* The stored log: appends in batches, reopens with the same root, proofs
 * from stored nodes match those of a memory tree. */
Test(log, append_reopen_proofs)
{
    char dir[] = "/tmp/test-audit-XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/audit.db", dir);
    audit_log *l;
    cr_assert_eq(audit_log_open(path, &l), 0);
    merkle_mem_tree t = {0};
    char texts[100][32];
    const char *ptrs[100];
    size_t lens[100];
    for (int batch = 0; batch < 3; batch++) {
        size_t n = batch == 0 ? 1 : batch == 1 ? 36 : 63;
        for (size_t i = 0; i < n; i++) {
            snprintf(texts[i], sizeof(texts[i]), "entry %llu", (unsigned long long)t.size + i);
            ptrs[i] = texts[i];
            lens[i] = strlen(texts[i]);
        }
        uint64_t first;
        cr_assert_eq(audit_log_append(l, ptrs, lens, n, &first), 0);
        cr_assert_eq(first, t.size);
        for (size_t i = 0; i < n; i++) {
            merkle_hash leaf;
            merkle_leaf_hash(texts[i], lens[i], leaf);
            merkle_mem_tree_append(&t, leaf);
        }
    }
    merkle_hash r1, r2;
    audit_log_root(l, r1);
    audit_log_free(l);
    cr_assert_eq(audit_log_open(path, &l), 0);
    cr_assert_eq(audit_log_size(l), 100);
    audit_log_root(l, r2);
    cr_assert_eq(memcmp(r1, r2, 32), 0);
    merkle_hash want;
    cr_assert_eq(merkle_root(100, merkle_mem_tree_get, &t, want), 0);
    cr_assert_eq(memcmp(r1, want, 32), 0);
    merkle_hash p1[MERKLE_PROOF_MAX], p2[MERKLE_PROOF_MAX];
    size_t n1, n2;
    for (uint64_t i = 0; i < 100; i += 7) {
        cr_assert_eq(merkle_inclusion_proof(i, 100, audit_log_get_node, l, p1, &n1), 0);
        cr_assert_eq(merkle_inclusion_proof(i, 100, merkle_mem_tree_get, &t, p2, &n2), 0);
        cr_assert_eq(n1, n2);
        cr_assert_eq(memcmp(p1, p2, n1 * 32), 0);
        cr_assert_eq(merkle_consistency_proof(i + 1, 100, audit_log_get_node, l, p1, &n1), 0);
        cr_assert_eq(merkle_consistency_proof(i + 1, 100, merkle_mem_tree_get, &t, p2, &n2), 0);
        cr_assert_eq(n1, n2);
        cr_assert_eq(memcmp(p1, p2, n1 * 32), 0);
    }
    audit_log_free(l);
    merkle_mem_tree_free(&t);
    unlink(path);
    char aux[80];
    snprintf(aux, sizeof(aux), "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof(aux), "%s-shm", path);
    unlink(aux);
    rmdir(dir);
}

/* The example of golang.org/x/mod/sumdb/note. */
Test(note, verifies_go_example)
{
    const char *vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const char *msg = "If you think cryptography is the answer to your problem,\n"
                      "then you don't know what your problem is.\n"
                      "\n"
                      "\xE2\x80\x94 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    audit_verifier v;
    cr_assert_eq(audit_verifier_parse(vkey, &v), 0);
    size_t text_len;
    cr_assert_eq(audit_note_verify(msg, strlen(msg), &v, &text_len), 0);
    cr_assert_eq(text_len, strlen(msg) - strlen(strstr(msg, "\n\n")) + 1);
    char *bad = strdup(msg);
    bad[3] ^= 1;
    cr_assert_eq(audit_note_verify(bad, strlen(bad), &v, &text_len), -EPERM);
    free(bad);
}

Test(note, sign_verify_checkpoint)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    cr_assert(key);
    uint8_t pub[32];
    cr_assert_eq(audit_ed25519_public(key, pub), 0);
    char *vkey;
    cr_assert_eq(audit_verifier_format("example.com/cloister/audit", pub, &vkey), 0);
    audit_verifier v;
    cr_assert_eq(audit_verifier_parse(vkey, &v), 0);
    merkle_hash root;
    memset(root, 0xab, sizeof(root));
    char *body, *note;
    cr_assert_eq(audit_checkpoint_format("example.com/cloister/audit", 1234, root, &body), 0);
    cr_assert_eq(audit_note_sign(key, "example.com/cloister/audit", body, &note), 0);
    size_t text_len;
    cr_assert_eq(audit_note_verify(note, strlen(note), &v, &text_len), 0);
    cr_assert_eq(text_len, strlen(body));
    char origin[AUDIT_NAME_MAX + 1];
    uint64_t size;
    merkle_hash got;
    cr_assert_eq(audit_checkpoint_parse(note, text_len, origin, &size, got), 0);
    cr_assert_str_eq(origin, "example.com/cloister/audit");
    cr_assert_eq(size, 1234);
    cr_assert_eq(memcmp(got, root, 32), 0);
    /* another key with the same name is refused */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    uint8_t pub2[32];
    audit_ed25519_public(other, pub2);
    char *vkey2;
    cr_assert_eq(audit_verifier_format("example.com/cloister/audit", pub2, &vkey2), 0);
    audit_verifier v2;
    cr_assert_eq(audit_verifier_parse(vkey2, &v2), 0);
    cr_assert_eq(audit_note_verify(note, strlen(note), &v2, &text_len), -EPERM);
    cr_assert_eq(audit_note_sign(key, "bad name", body, &note), -EINVAL);
    cr_assert_eq(audit_verifier_parse("a+00000000+AAAA", &v2), -EINVAL);
    free(vkey);
    free(vkey2);
    free(body);
    free(note);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

Test(entry, canonical)
{
    const char *in = "{ \"time\": \"2026-11-21T10:00:00.000Z\", \"action\": \"resource.create\",\n"
                     "  \"actor\": {\"user\": \"admin\", \"ip\": \"127.0.0.1\", \"session\": null},\n"
                     "  \"resource\": {\"name\": \"wiki\", \"kind\": \"Service\"}, \"outcome\": \"success\",\n"
                     "  \"details\": {\"z\": 1, \"a\": [true, \"x\"]} }";
    char *out;
    size_t len;
    cr_assert_eq(audit_entry_canonicalize(in, strlen(in), &out, &len), 0);
    cr_assert_str_eq(out, "{\"action\":\"resource.create\",\"actor\":{\"ip\":\"127.0.0.1\",\"session\":null,"
                          "\"user\":\"admin\"},\"details\":{\"a\":[true,\"x\"],\"z\":1},\"outcome\":\"success\","
                          "\"resource\":{\"kind\":\"Service\",\"name\":\"wiki\"},\"time\":\"2026-11-21T10:00:00.000Z\"}");
    char *again;
    size_t len2;
    cr_assert_eq(audit_entry_canonicalize(out, len, &again, &len2), 0);
    cr_assert_str_eq(again, out);
    free(again);
    free(out);
    static const char *const bad[] = {
        "{}",
        "[]",
        "{\"time\":\"x\",\"action\":\"a\",\"actor\":{\"user\":null,\"session\":null,\"ip\":null},"
        "\"resource\":{\"kind\":null,\"name\":null},\"outcome\":\"success\",\"details\":{}}",
        "{\"time\":\"2026-11-21T10:00:00Z\",\"action\":\"a\",\"actor\":{\"user\":null,\"session\":null,\"ip\":null},"
        "\"resource\":{\"kind\":null,\"name\":null},\"outcome\":\"success\",\"details\":{\"f\":1.5}}",
        "{\"time\":\"2026-11-21T10:00:00Z\",\"action\":\"a\",\"actor\":{\"user\":null,\"session\":null,\"ip\":null},"
        "\"resource\":{\"kind\":null,\"name\":null},\"outcome\":\"success\",\"details\":{},\"extra\":1}",
        "{\"time\":\"2026-11-21T10:00:00Z\",\"time\":\"2026-11-21T10:00:00Z\",\"action\":\"a\",\"actor\":{\"user\":"
        "null,\"session\":null,\"ip\":null},\"resource\":{\"kind\":null,\"name\":null},\"outcome\":\"s\",\"details\":{}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(audit_entry_canonicalize(bad[i], strlen(bad[i]), &out, &len), -EINVAL, "bad[%zu]", i);
}

#define SUBMITTED                                                                                                  \
    "{\"time\":\"2020-01-01T00:00:00.000Z\",\"action\":\"proxy.access\",\"actor\":{\"user\":null,"              \
    "\"session\":null,\"ip\":null},\"resource\":{\"kind\":\"Service\",\"name\":\"wiki\"},"                 \
    "\"outcome\":\"success\",\"details\":{}}"

Test(entry, stamped_by_the_audit_role)
{
    json_t *e = json_loads(SUBMITTED, 0, NULL);
    cr_assert(e);
    char *out, *again;
    size_t len, len2;
    /* 2026-12-06T12:00:00.250Z */
    uint64_t now = UINT64_C(1796558400) * 1000000000 + 250000000;
    cr_assert_eq(audit_entry_stamp(e, "proxy", now, &out, &len), 0);
    cr_assert_str_eq(out, "{\"action\":\"proxy.access\",\"actor\":{\"ip\":null,\"session\":null,\"user\":null},"
                          "\"appender\":\"proxy\",\"client_time\":\"2020-01-01T00:00:00.000Z\",\"details\":{},"
                          "\"outcome\":\"success\",\"resource\":{\"kind\":\"Service\",\"name\":\"wiki\"},"
                          "\"time\":\"2026-12-06T12:00:00.250Z\"}");
    /* the stored form is canonical, and not a submission: a client cannot send stamps */
    cr_assert_eq(audit_entry_canonicalize(out, len, &again, &len2), 0);
    cr_assert_str_eq(again, out);
    free(again);
    json_t *stored = json_loads(out, 0, NULL);
    cr_assert_eq(audit_entry_submission_canonicalize(stored, &again, &len2), -EINVAL);
    cr_assert_eq(audit_entry_stamp(stored, "api", now, &again, &len2), -EINVAL);
    /* client_time only beside an appender; an appender is a non-empty string */
    json_t *bad = json_copy(stored);
    json_object_del(bad, "appender");
    cr_assert_eq(audit_entry_canonicalize_json(bad, &again, &len2), -EINVAL);
    json_object_set_new(bad, "appender", json_string(""));
    cr_assert_eq(audit_entry_canonicalize_json(bad, &again, &len2), -EINVAL);
    json_object_set_new(bad, "appender", json_integer(1));
    cr_assert_eq(audit_entry_canonicalize_json(bad, &again, &len2), -EINVAL);
    json_object_set_new(bad, "appender", json_string("api"));
    json_object_set_new(bad, "client_time", json_string("yesterday"));
    cr_assert_eq(audit_entry_canonicalize_json(bad, &again, &len2), -EINVAL);
    json_decref(bad);
    json_decref(stored);
    cr_assert_eq(audit_entry_stamp(e, "", now, &again, &len2), -EINVAL);
    cr_assert_eq(audit_entry_stamp(e, NULL, now, &again, &len2), -EINVAL);
    /* the caps hold for submissions (the audit role answers 400): 16 KiB an
     * entry, 1 KiB a string */
    char pad[1026];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = 0;
    json_t *big = json_deep_copy(e), *details = json_object_get(big, "details");
    json_object_set_new(details, "pad", json_string(pad));
    cr_assert_eq(audit_entry_stamp(big, "api", now, &again, &len2), -EINVAL);
    pad[1000] = 0;
    json_object_del(details, "pad");
    for (int k = 0; k < 17; k++) {
        char key[8];
        snprintf(key, sizeof(key), "p%d", k);
        json_object_set_new(details, key, json_string(pad));
    }
    cr_assert_eq(audit_entry_stamp(big, "api", now, &again, &len2), -E2BIG);
    json_decref(big);
    /* the submission itself is what the event queue holds */
    cr_assert_eq(audit_entry_submission_canonicalize(e, &again, &len2), 0);
    free(again);
    free(out);
    json_decref(e);
}

Test(entry, what_each_role_may_append)
{
    static const struct {
        const char *role, *action;
        bool may;
    } cases[] = {
        {"api", "resource.create", true}, {"api", "kms.decrypt", true}, {"api", "proxy.access", true},
        {"api", "enclave.replica.launched", true}, {"api", "audit.access.prune", false},
        {"api", "auditx", true},
        {"proxy", "proxy.access", true}, {"proxy", "proxy.enclave.refused", true},
        {"proxy", "api.access", false}, {"proxy", "resource.delete", false}, {"proxy", "proxy", false},
        {"proxy", "proxyx.access", false}, {"proxy", "kms.unseal", false},
        {"kms", "kms.unseal", true}, {"kms", "kms.decrypt", true}, {"kms", "auth.login", false},
        {"kms", "kmsx", false},
        {"runner", "enclave.replica.launched", false}, {"runner", "enclave.egress", true},
        {"runner", "enclave.egressx", false}, {"runner", "enclave.egress.x", false}, {"audit", "resource.create", false},
        {"", "resource.create", false}, {"API", "resource.create", false}, {NULL, "x", false}, {"api", NULL, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_expect_eq(audit_appender_may(cases[i].role, cases[i].action), cases[i].may, "%s may append %s: %d",
                     cases[i].role ? cases[i].role : "(null)", cases[i].action ? cases[i].action : "(null)",
                     cases[i].may);
}

Test(params, strict)
{
    static const char *const names[2] = {"start", "end"};
    uint64_t v[2];
    cr_assert_eq(audit_parse_query("start=0&end=10", 14, names, v), 0);
    cr_assert_eq(v[0], 0);
    cr_assert_eq(v[1], 10);
    cr_assert_eq(audit_parse_query("end=10&start=3", 14, names, v), 0);
    cr_assert_eq(v[0], 3);
    static const char *const bad[] = {"", "start=0", "start=0&end=1&x=2", "start=01&end=2", "start=-1&end=2",
                                      "start=0&end=2&", "start=0&start=1", "start=&end=1", "start=1&end=1e3",
                                      "start=0&end=99999999999999999999", "start=0&end=+1", "start&end=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(audit_parse_query(bad[i], strlen(bad[i]), names, v), -EINVAL, "%s", bad[i]);
}
