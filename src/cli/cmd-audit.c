/* audit: checkpoint, verify, export, show. Nothing the server says about the
 * log is trusted: checkpoints are verified against the log's key (given with
 * --key, or pinned in the config dir the first time), the tree is
 * recomputed from the entries, and every new checkpoint must be consistent
 * with the last one saved in $XDG_CONFIG_HOME/cloister/audit-checkpoint. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit/entry.h"
#include "audit/merkle.h"
#include "audit/note.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "cli/audit-access.h"
#include "cli/cli.h"
#include "cli/client.h"
#include "cli/output.h"

#define EXPORT_MAX 10000 /* entries in one bundle */
#define BUNDLE_MAX (256 * 1024 * 1024)

/* A verified checkpoint. */
typedef struct checkpoint {
    char *note; /* the signed note, heap */
    uint64_t size;
    merkle_hash root;
} checkpoint;

static void checkpoint_done(checkpoint *c)
{
    free(c->note);
    *c = (checkpoint){0};
}

/* $CONFIG/cloister/NAME as a heap string in *RET; creates the directory
 * (0700) when CREATE. */
static int config_file(const char *name, bool create, char **ret)
{
    _cleanup_free_ char *session = NULL;
    int r = session_path(&session);
    if (r < 0)
        return r;
    char *dir = dirname(session);
    if (create && (r = mkdir_p(dir, 0700)) < 0)
        return r;
    if (asprintf(ret, "%s/%s", dir, name) < 0)
        return -ENOMEM;
    return 0;
}

/* Verifies NOTE with V and parses its checkpoint into *RET (taking a copy of
 * NOTE). Returns 0 or prints why and returns -EPERM. */
static int checkpoint_open(const char *note, const audit_verifier *v, checkpoint *ret)
{
    size_t text_len;
    char origin[AUDIT_NAME_MAX + 1];
    checkpoint c = {0};
    if (audit_note_verify(note, strlen(note), v, &text_len) < 0) {
        cli_error("the checkpoint's signature does not verify with the log key %s", v->name);
        return -EPERM;
    }
    if (audit_checkpoint_parse(note, text_len, origin, &c.size, c.root) < 0 || strcmp(origin, v->name) != 0) {
        cli_error("the signed note is not a checkpoint of the log %s", v->name);
        return -EPERM;
    }
    c.note = strdup(note);
    if (!c.note)
        return -ENOMEM;
    *ret = c;
    return 0;
}

/* The log's verifier key: --key (a file holding a verifier key string, or
 * the string itself), else the pinned one, else SERVER_KEY, which is then pinned (trust on
 * first use, announced on stderr). Returns 0 or an exit status. */
static int resolve_key(const char *flag, const char *server_key, audit_verifier *ret)
{
    _cleanup_free_ char *pinned_path = NULL, *pinned = NULL, *from_file = NULL;
    const char *text = flag;
    size_t len;
    if (flag && (access(flag, R_OK) == 0 || strchr(flag, '+') == NULL)) {
        if (read_file(flag, 4096, &from_file, &len) < 0)
            return cli_error("cannot read the key file %s", flag);
        text = from_file;
    }
    bool pin = false;
    if (!text) {
        if (config_file("audit.pub", false, &pinned_path) == 0 && read_file(pinned_path, 4096, &pinned, &len) == 0)
            text = pinned;
        else if (server_key) {
            text = server_key;
            pin = true;
        } else
            return cli_error("no log key: pass --key (the contents of audit.pub in the server's data dir)");
    }
    audit_verifier v;
    if (audit_verifier_parse(text, &v) < 0)
        return cli_error("not a verifier key: expected NAME+KEYID+BASE64");
    if (pin) {
        _cleanup_free_ char *path = NULL;
        char line[1024];
        int n = snprintf(line, sizeof(line), "%s\n", text);
        if (config_file("audit.pub", true, &path) < 0 || write_file_atomic(path, line, (size_t)n, 0600) < 0)
            return cli_error("cannot save the log key");
        fprintf(stderr, "pinned the log key %s (trust on first use: compare it with audit.pub in the server's "
                        "data dir)\n", text);
    }
    *ret = v;
    return CLI_EXIT_OK;
}

/* GET PATH (below /v1) into *RET. Returns 0 or an exit status (printed). */
static int get_json(cli_ctx *ctx, const char *path, json_t **ret)
{
    api_error err;
    if (api_request(ctx, ctx->token, "GET", path, NULL, ret, &err) < 0)
        return api_error_print(&err);
    return CLI_EXIT_OK;
}

/* Fetches and verifies the latest checkpoint. Returns an exit status. */
static int fetch_checkpoint(cli_ctx *ctx, const char *key_flag, audit_verifier *ret_v, checkpoint *ret)
{
    json_auto_t *a = NULL;
    int r = get_json(ctx, "/audit/checkpoint", &a);
    if (r != CLI_EXIT_OK)
        return r;
    const char *note = json_string_value(json_object_get(a, "checkpoint"));
    if (!note)
        return cli_error("the server's answer holds no checkpoint");
    r = resolve_key(key_flag, json_string_value(json_object_get(a, "key")), ret_v);
    if (r != CLI_EXIT_OK)
        return r;
    return checkpoint_open(note, ret_v, ret) < 0 ? CLI_EXIT_FAILED : CLI_EXIT_OK;
}

/* The saved checkpoint, verified with V: 1 and *RET when there is one, 0
 * when none, or a negative errno (printed). */
static int load_saved(const audit_verifier *v, checkpoint *ret)
{
    _cleanup_free_ char *path = NULL, *note = NULL;
    size_t len;
    if (config_file("audit-checkpoint", false, &path) < 0)
        return 0;
    int r = read_file(path, AUDIT_NOTE_MAX, &note, &len);
    if (r == -ENOENT)
        return 0;
    if (r < 0) {
        cli_error("cannot read the saved checkpoint %s: %s", path, strerror(-r));
        return r;
    }
    r = checkpoint_open(note, v, ret);
    return r < 0 ? r : 1;
}

/* Saves C as the checkpoint later ones must be consistent with. Returns an
 * exit status. */
static int save_checkpoint(const checkpoint *c)
{
    _cleanup_free_ char *path = NULL;
    int r = config_file("audit-checkpoint", true, &path);
    if (r == 0)
        r = write_file_atomic(path, c->note, strlen(c->note), 0600);
    if (r < 0)
        return cli_error("cannot save the checkpoint: %s", strerror(-r));
    return CLI_EXIT_OK;
}

/* Decodes a JSON array of base64 hashes into PROOF; false when malformed. */
static bool parse_proof(const json_t *a, merkle_hash proof[MERKLE_PROOF_MAX], size_t *ret_n)
{
    if (!json_is_array(a) || json_array_size(a) > MERKLE_PROOF_MAX)
        return false;
    size_t i;
    json_t *x;
    json_array_foreach(a, i, x)
    {
        const char *s = json_string_value(x);
        if (!s || base64_decode(s, strlen(s), proof[i], MERKLE_HASH_LEN, false) != MERKLE_HASH_LEN)
            return false;
    }
    *ret_n = json_array_size(a);
    return true;
}

/* Asks the server for the consistency proof FROM -> TO and checks it with
 * our roots. Returns 1 when it verifies, 0 when not, or an exit status > 1
 * on a transport failure (printed). */
static int server_consistent(cli_ctx *ctx, uint64_t from, uint64_t to, const merkle_hash r1, const merkle_hash r2)
{
    if (from == to)
        return memeq_consttime(r1, r2, MERKLE_HASH_LEN);
    if (from == 0)
        return 1;
    char path[128];
    snprintf(path, sizeof(path), "/audit/proof/consistency?from=%llu&to=%llu", (unsigned long long)from,
             (unsigned long long)to);
    json_auto_t *a = NULL;
    api_error err;
    if (api_request(ctx, ctx->token, "GET", path, NULL, &a, &err) < 0)
        return err.status == 400 ? 0 : api_error_print(&err) + 1;
    merkle_hash proof[MERKLE_PROOF_MAX];
    size_t n;
    return parse_proof(json_object_get(a, "proof"), proof, &n) &&
           merkle_verify_consistency(from, to, r1, r2, proof, n);
}

/* The first entry of T (our recomputed tree) that disagrees with the tree of
 * SIZE leaves and ROOT, found by bisection over prefixes with consistency
 * proofs: the prefix of the first K entries is genuine exactly when K is at
 * most the first bad index. Returns the index, or a negative exit status. */
static int64_t first_bad_index(cli_ctx *ctx, merkle_mem_tree *t, uint64_t size, const merkle_hash root)
{
    uint64_t lo = 0, hi = MIN(size, t->size); /* prefix lo is genuine; prefix hi is not (or is the whole) */
    merkle_hash r;
    if (merkle_root(hi, merkle_mem_tree_get, t, r) < 0)
        return -CLI_EXIT_FAILED;
    int ok = server_consistent(ctx, hi, size, r, root);
    if (ok > 1)
        return -CLI_EXIT_FAILED;
    if (ok == 1)
        return (int64_t)hi; /* every entry we hold is genuine; the next is missing */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (merkle_root(mid, merkle_mem_tree_get, t, r) < 0)
            return -CLI_EXIT_FAILED;
        ok = server_consistent(ctx, mid, size, r, root);
        if (ok > 1)
            return -CLI_EXIT_FAILED;
        if (ok)
            lo = mid;
        else
            hi = mid;
    }
    return (int64_t)lo;
}

typedef int (*entry_cb)(void *userdata, uint64_t index, const char *text, size_t len);

/* Reads entries [START, END) page by page, calling CB for each in order.
 * Returns the index of the first entry the server did not return (END when
 * all came), or a negative exit status. */
static int64_t fetch_entries(cli_ctx *ctx, uint64_t start, uint64_t end, entry_cb cb, void *userdata)
{
    uint64_t next = start;
    while (next < end) {
        uint64_t stop = MIN(end, next + AUDIT_PAGE_MAX);
        char path[128];
        snprintf(path, sizeof(path), "/audit/entries?start=%llu&end=%llu", (unsigned long long)next,
                 (unsigned long long)stop);
        json_auto_t *a = NULL;
        int r = get_json(ctx, path, &a);
        if (r != CLI_EXIT_OK)
            return -r;
        json_t *items = json_object_get(a, "entries");
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
        {
            json_t *idx = json_object_get(it, "index"), *text = json_object_get(it, "entry");
            if (!json_is_integer(idx) || (uint64_t)json_integer_value(idx) != next || !json_is_string(text) ||
                next >= stop)
                return (int64_t)next;
            r = cb(userdata, next, json_string_value(text), json_string_length(text));
            if (r != 0)
                return r < 0 ? r : (int64_t)next;
            next++;
        }
        /* a page cut short by the server's byte cap goes on from NEXT */
        if (next < stop && !(json_is_true(json_object_get(a, "more")) && json_array_size(items) > 0))
            return (int64_t)next;
    }
    return (int64_t)end;
}

typedef struct verify_state {
    merkle_mem_tree tree;
    int64_t bad_canonical; /* first entry whose text is not canonical, or -1 */
    access_segments *segments; /* the access-log heads the entries commit */
} verify_state;

/* An entry_cb adding each entry's leaf to the recomputed tree and noting the
 * first entry that is not in canonical form. */
static int verify_add(void *userdata, uint64_t index, const char *text, size_t len)
{
    verify_state *s = userdata;
    char *canon;
    size_t clen;
    bool canonical = audit_entry_canonicalize(text, len, &canon, &clen) == 0 && clen == len &&
                     memcmp(canon, text, len) == 0;
    if (canonical)
        free(canon);
    else if (s->bad_canonical < 0)
        s->bad_canonical = (int64_t)index;
    merkle_hash leaf;
    merkle_leaf_hash(text, len, leaf);
    if (access_segments_note(s->segments, index, text, len) < 0)
        return -CLI_EXIT_FAILED;
    return merkle_mem_tree_append(&s->tree, leaf) < 0 ? -CLI_EXIT_FAILED : 0;
}

/* Prints the verdict naming INDEX; returns CLI_EXIT_FAILED. */
static int verify_failed(uint64_t index, const char *why)
{
    return cli_error("audit log verification failed at entry %llu: %s", (unsigned long long)index, why);
}

/* An entry_cb that only lets fetch_entries() see whether entries exist. */
static int probe_count(void *userdata, uint64_t index, const char *text, size_t len)
{
    return 0;
}

/* audit verify: the full log against the latest checkpoint and the saved one. */
static int audit_verify(cli_ctx *ctx, const char *key_flag)
{
    audit_verifier v;
    _cleanup_(checkpoint_done) checkpoint c = {0}, saved = {0};
    int r = fetch_checkpoint(ctx, key_flag, &v, &c);
    if (r != CLI_EXIT_OK)
        return r;
    _cleanup_(access_segments_freep) access_segments *segments = access_segments_new(ctx);
    if (!segments)
        return cli_error("out of memory");
    verify_state s = {.bad_canonical = -1, .segments = segments};
    int64_t got = fetch_entries(ctx, 0, c.size, verify_add, &s);
    /* entries beyond the checkpoint must be covered by a newer one */
    for (int round = 0; got == (int64_t)c.size && round < 3; round++) {
        int64_t more = fetch_entries(ctx, c.size, c.size + 1, probe_count, NULL);
        if (more < 0) {
            got = more;
            break;
        }
        if (more == (int64_t)c.size)
            break; /* nothing beyond */
        checkpoint newer = {0};
        r = fetch_checkpoint(ctx, key_flag, &v, &newer);
        if (r != CLI_EXIT_OK) {
            merkle_mem_tree_free(&s.tree);
            return r;
        }
        if (newer.size <= c.size) {
            checkpoint_done(&newer);
            merkle_mem_tree_free(&s.tree);
            return verify_failed(c.size, "the entry is in the log but no signed checkpoint covers it");
        }
        uint64_t from = c.size;
        checkpoint_done(&c);
        c = newer;
        got = fetch_entries(ctx, from, c.size, verify_add, &s);
    }
    if (got < 0) {
        merkle_mem_tree_free(&s.tree);
        return (int)-got;
    }
    merkle_hash root;
    merkle_root(s.tree.size, merkle_mem_tree_get, &s.tree, root);
    if (got < (int64_t)c.size || !memeq_consttime(root, c.root, MERKLE_HASH_LEN)) {
        int64_t bad = first_bad_index(ctx, &s.tree, c.size, c.root);
        merkle_mem_tree_free(&s.tree);
        if (bad < 0)
            return (int)-bad;
        if (bad >= got)
            return verify_failed((uint64_t)bad, "the entry is missing (deleted or truncated)");
        return verify_failed((uint64_t)bad, "the entry does not match the signed checkpoint (changed, reordered or replaced)");
    }
    if (s.bad_canonical >= 0) {
        merkle_mem_tree_free(&s.tree);
        return verify_failed((uint64_t)s.bad_canonical, "the entry is not a canonical audit entry");
    }
    r = load_saved(&v, &saved);
    if (r < 0) {
        merkle_mem_tree_free(&s.tree);
        return CLI_EXIT_FAILED;
    }
    if (r == 1) {
        if (saved.size > c.size) {
            merkle_mem_tree_free(&s.tree);
            return verify_failed(c.size, "the log is shorter than the checkpoint saved earlier (history rewritten)");
        }
        merkle_hash prefix;
        merkle_root(saved.size, merkle_mem_tree_get, &s.tree, prefix);
        int ok = memeq_consttime(prefix, saved.root, MERKLE_HASH_LEN)
                     ? server_consistent(ctx, saved.size, c.size, saved.root, c.root)
                     : 0;
        if (ok != 1) {
            int64_t bad = ok > 1 ? -1 : first_bad_index(ctx, &s.tree, saved.size, saved.root);
            merkle_mem_tree_free(&s.tree);
            if (ok > 1)
                return CLI_EXIT_FAILED;
            return verify_failed(bad < 0 ? 0 : (uint64_t)bad,
                                 "the log is not consistent with the checkpoint saved earlier (history rewritten)");
        }
    }
    merkle_mem_tree_free(&s.tree);
    /* the log is intact: now the access records its heads commit */
    uint64_t records;
    size_t n_segments, n_pruned;
    r = access_segments_verify(segments, &records, &n_segments, &n_pruned);
    if (r != CLI_EXIT_OK)
        return r;
    r = save_checkpoint(&c);
    if (r != CLI_EXIT_OK)
        return r;
    char b64[64];
    base64_encode(c.root, MERKLE_HASH_LEN, b64, false);
    if (ctx->output == CLI_OUTPUT_TEXT) {
        char pruned[80] = "";
        if (n_pruned)
            snprintf(pruned, sizeof(pruned), " (and %zu removed past their retention)", n_pruned);
        printf("verified %llu entries of %s; root %s%s; %llu access records in %zu segments%s\n",
               (unsigned long long)c.size, v.name, b64, saved.note ? "; consistent with the saved checkpoint" : "",
               (unsigned long long)records, n_segments, pruned);
    } else {
        json_auto_t *o = json_pack("{s:b, s:I, s:s, s:s, s:I, s:I, s:I, s:I}", "verified", 1, "size",
                                   (json_int_t)c.size, "root", b64, "origin", v.name, "savedSize",
                                   (json_int_t)(saved.note ? saved.size : 0), "accessRecords", (json_int_t)records,
                                   "segments", (json_int_t)n_segments, "segmentsPastRetention",
                                   (json_int_t)n_pruned);
        output_json(o);
    }
    return CLI_EXIT_OK;
}

/* audit checkpoint: fetch, verify, check consistency with the saved one, save. */
static int audit_checkpoint(cli_ctx *ctx, const char *key_flag)
{
    audit_verifier v;
    _cleanup_(checkpoint_done) checkpoint c = {0}, saved = {0};
    int r = fetch_checkpoint(ctx, key_flag, &v, &c);
    if (r != CLI_EXIT_OK)
        return r;
    r = load_saved(&v, &saved);
    if (r < 0)
        return CLI_EXIT_FAILED;
    if (r == 1) {
        int ok = saved.size <= c.size ? server_consistent(ctx, saved.size, c.size, saved.root, c.root) : 0;
        if (ok > 1)
            return CLI_EXIT_FAILED;
        if (!ok)
            return cli_error("the new checkpoint (size %llu) is not consistent with the saved one (size %llu): "
                             "the log's history was rewritten",
                             (unsigned long long)c.size, (unsigned long long)saved.size);
    }
    r = save_checkpoint(&c);
    if (r != CLI_EXIT_OK)
        return r;
    if (ctx->output == CLI_OUTPUT_TEXT)
        fputs(c.note, stdout);
    else {
        char b64[64];
        base64_encode(c.root, MERKLE_HASH_LEN, b64, false);
        json_auto_t *o = json_pack("{s:s, s:I, s:s, s:s}", "checkpoint", c.note, "size", (json_int_t)c.size, "root",
                                   b64, "origin", v.name);
        output_json(o);
    }
    return CLI_EXIT_OK;
}

typedef struct export_state {
    cli_ctx *ctx;
    uint64_t size;
    json_t *items;
} export_state;

/* An entry_cb adding each entry with its inclusion proof (fetched for the
 * bundle's checkpoint size) to the bundle. */
static int export_add(void *userdata, uint64_t index, const char *text, size_t len)
{
    export_state *s = userdata;
    char path[128];
    snprintf(path, sizeof(path), "/audit/proof/inclusion?index=%llu&size=%llu", (unsigned long long)index,
             (unsigned long long)s->size);
    json_auto_t *a = NULL;
    int r = get_json(s->ctx, path, &a);
    if (r != CLI_EXIT_OK)
        return -r;
    json_t *proof = json_object_get(a, "proof");
    if (!json_is_array(proof))
        return -cli_error("the server's inclusion proof is malformed");
    return json_array_append_new(s->items, json_pack("{s:I, s:s%, s:O}", "index", (json_int_t)index, "entry", text,
                                                     len, "proof", proof)) == 0
               ? 0
               : -CLI_EXIT_FAILED;
}

/* Verifies an export bundle offline with V. Returns an exit status. */
static int verify_bundle(const json_t *b, const audit_verifier *v, bool quiet)
{
    const char *note = json_string_value(json_object_get(b, "checkpoint"));
    _cleanup_(checkpoint_done) checkpoint c = {0};
    if (!note || checkpoint_open(note, v, &c) < 0)
        return CLI_EXIT_FAILED;
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(b, "entries"), i, it)
    {
        json_t *idx = json_object_get(it, "index");
        const char *text = json_string_value(json_object_get(it, "entry"));
        merkle_hash proof[MERKLE_PROOF_MAX], leaf;
        size_t n;
        if (!json_is_integer(idx) || json_integer_value(idx) < 0 || !text ||
            !parse_proof(json_object_get(it, "proof"), proof, &n))
            return cli_error("bundle entry %zu is malformed", i);
        merkle_leaf_hash(text, json_string_length(json_object_get(it, "entry")), leaf);
        if (!merkle_verify_inclusion((uint64_t)json_integer_value(idx), c.size, leaf, proof, n, c.root))
            return verify_failed((uint64_t)json_integer_value(idx), "its inclusion proof does not verify");
    }
    if (!quiet)
        printf("bundle verified: %zu entries included in the checkpoint of size %llu signed by %s\n",
               json_array_size(json_object_get(b, "entries")), (unsigned long long)c.size, v->name);
    return CLI_EXIT_OK;
}

/* audit export: entries FROM..TO-1 with inclusion proofs and the signed
 * checkpoint in one bundle, verified before it is written to OUT_PATH
 * (stdout when NULL). */
static int audit_export(cli_ctx *ctx, const char *key_flag, uint64_t from, uint64_t to, const char *out_path)
{
    audit_verifier v;
    _cleanup_(checkpoint_done) checkpoint c = {0};
    int r = fetch_checkpoint(ctx, key_flag, &v, &c);
    if (r != CLI_EXIT_OK)
        return r;
    if (to > c.size)
        return cli_error("--to %llu is past the log's size %llu", (unsigned long long)to, (unsigned long long)c.size);
    json_auto_t *items = json_array();
    export_state s = {.ctx = ctx, .size = c.size, .items = items};
    int64_t got = fetch_entries(ctx, from, to, export_add, &s);
    if (got < 0)
        return (int)-got;
    if (got < (int64_t)to)
        return verify_failed((uint64_t)got, "the entry is missing");
    char vkey[512];
    _cleanup_free_ char *vk = NULL;
    if (audit_verifier_format(v.name, v.pub, &vk) < 0)
        return CLI_EXIT_FAILED;
    snprintf(vkey, sizeof(vkey), "%s", vk);
    json_auto_t *bundle = json_pack("{s:s, s:s, s:s, s:I, s:I, s:O}", "format", "cloister-audit-bundle/v1", "key", vkey,
                                    "checkpoint", c.note, "from", (json_int_t)from, "to", (json_int_t)to, "entries",
                                    items);
    r = verify_bundle(bundle, &v, true);
    if (r != CLI_EXIT_OK)
        return r;
    char *text = json_dumps(bundle, JSON_INDENT(1) | JSON_SORT_KEYS);
    if (!text)
        return CLI_EXIT_FAILED;
    if (out_path)
        r = write_file_atomic(out_path, text, strlen(text), 0644) < 0 ? cli_error("cannot write %s", out_path)
                                                                      : CLI_EXIT_OK;
    else
        printf("%s\n", text);
    free(text);
    return r;
}

typedef struct show_state {
    const char *action, *user, *service, *decision;
    json_t *matches;
    cli_output output;
    access_segments *segments; /* the segments proxy.access entries commit, fetched once each */
} show_state;

/* The decisions a proxy access record can hold (src/proxy/metrics.c). */
static const char *const access_decisions[] = {"allow", "deny", "unauthenticated", "invalid", "error"};

/* Whether the string S (NULL: absent) equals WANT; true when no WANT. */
static bool filter_match(const char *want, const char *s)
{
    return !want || (s && strcmp(want, s) == 0);
}

/* Prints (or collects, for -o json|yaml) one proxy access record, the
 * VALUES named by FIELDS, committed by the entry at INDEX, when it matches
 * the filters: as an object of its fields. */
static void show_record(show_state *s, uint64_t index, const json_t *fields, const json_t *values)
{
    if (!json_is_array(values) || json_array_size(values) != json_array_size(fields))
        return;
    json_auto_t *rec = json_object();
    size_t k;
    json_t *f;
    json_array_foreach(fields, k, f)
        if (json_is_string(f))
            json_object_set(rec, json_string_value(f), json_array_get(values, k));
#define REC(name) json_string_value(json_object_get(rec, name))
    if (!filter_match(s->user, REC("user")) || !filter_match(s->service, REC("service")) ||
        !filter_match(s->decision, REC("decision")))
        return;
    if (s->output != CLI_OUTPUT_TEXT) {
        json_object_set_new(rec, "index", json_integer((json_int_t)index));
        json_object_set_new(rec, "action", json_string("proxy.access"));
        json_array_append(s->matches, rec);
        return;
    }
    char line[4096], clean[4096];
    snprintf(line, sizeof(line), "%-6llu %s  %-12s %-22s %s %s %s  %lld %s  policy=%s rule=%s  id=%s",
             (unsigned long long)index, REC("time") ?: "", REC("user") ?: "-", "proxy.access", REC("service") ?: "-",
             REC("method") ?: "-", REC("path") ?: "-", (long long)json_integer_value(json_object_get(rec, "status")),
             REC("decision") ?: "-", REC("policy") ?: "-", REC("rule") ?: "-", REC("requestId") ?: "-");
#undef REC
    puts(text_sanitize(line, clean, sizeof(clean)));
}

/* The entry a segment's records are shown for (access_segments_records()'s
 * callback). */
typedef struct show_segment {
    show_state *s;
    uint64_t index;
    const json_t *fields;
} show_segment;

static int show_segment_record(void *userdata, json_t *values)
{
    show_segment *ss = userdata;
    show_record(ss->s, ss->index, ss->fields, values);
    return 0;
}

/* Shows the records of the proxy.access entry E at INDEX: those of the
 * segment it commits (fetched from the server), or, in a log written before
 * segments, those it carries (details.requests). Returns an exit status. */
static int show_access_records(show_state *s, uint64_t index, json_t *e)
{
    json_t *details = json_object_get(e, "details"), *fields = json_object_get(details, "fields");
    if (json_object_get(details, "segment"))
        return access_segments_records(s->segments, details, show_segment_record,
                                       &(show_segment){.s = s, .index = index, .fields = fields});
    size_t i;
    json_t *values;
    json_array_foreach(json_object_get(details, "requests"), i, values)
        show_record(s, index, fields, values);
    return CLI_EXIT_OK;
}

/* An entry_cb printing (or collecting, for -o json|yaml) the entries that
 * match the filters. A proxy.access entry is a batch of requests: its
 * records are filtered and shown one by one. Another entry matches
 * --service when its resource is that Service, and --decision deny|allow
 * when its outcome is denied|success. */
static int show_add(void *userdata, uint64_t index, const char *text, size_t len)
{
    show_state *s = userdata;
    json_auto_t *e = json_loadb(text, len, 0, NULL);
    if (!e)
        return 0;
    const char *action = json_string_value(json_object_get(e, "action"));
    if (!filter_match(s->action, action))
        return 0;
    if (action && strcmp(action, "proxy.access") == 0) {
        int r = show_access_records(s, index, e);
        return r == CLI_EXIT_OK ? 0 : -r;
    }
    const char *user = json_string_value(json_object_get(json_object_get(e, "actor"), "user"));
    json_t *res = json_object_get(e, "resource");
    const char *kind = json_string_value(json_object_get(res, "kind"));
    const char *name = json_string_value(json_object_get(res, "name"));
    const char *outcome = json_string_value(json_object_get(e, "outcome"));
    bool service_ok = !s->service || (filter_match("Service", kind) && filter_match(s->service, name));
    if (!filter_match(s->user, user) || !service_ok)
        return 0;
    if (s->decision) { /* the other decisions are the proxy's alone */
        const char *want = strcmp(s->decision, "deny") == 0    ? "denied"
                           : strcmp(s->decision, "allow") == 0 ? "success"
                                                               : NULL;
        if (!want || !filter_match(want, outcome))
            return 0;
    }
    if (s->output != CLI_OUTPUT_TEXT) {
        json_object_set_new(e, "index", json_integer((json_int_t)index));
        json_array_append(s->matches, e);
        return 0;
    }
    char line[1024], clean[1024];
    snprintf(line, sizeof(line), "%-6llu %s  %-12s %-22s %s%s%s  %s", (unsigned long long)index,
             json_string_value(json_object_get(e, "time")) ?: "", user ?: "-", action ?: "", kind ?: "",
             name ? "/" : "", name ?: "", outcome ?: "");
    puts(text_sanitize(line, clean, sizeof(clean)));
    return 0;
}

/* audit show: reads the whole log and prints the entries matching S's
 * filters (each may be NULL). Reading only: nothing here is verified. */
static int audit_show(cli_ctx *ctx, show_state *s)
{
    json_auto_t *a = NULL;
    int r = get_json(ctx, "/audit/checkpoint", &a);
    if (r != CLI_EXIT_OK)
        return r;
    json_int_t size = json_integer_value(json_object_get(a, "size"));
    json_auto_t *matches = json_array();
    s->matches = matches;
    s->output = ctx->output;
    s->segments = access_segments_new(ctx);
    if (!s->segments)
        return cli_error("out of memory");
    int64_t got = fetch_entries(ctx, 0, size > 0 ? (uint64_t)size : 0, show_add, s);
    access_segments_free(s->segments);
    if (got < 0)
        return (int)-got;
    if (ctx->output == CLI_OUTPUT_JSON)
        output_json(matches);
    else if (ctx->output == CLI_OUTPUT_YAML)
        output_yaml(matches);
    return CLI_EXIT_OK;
}

/* Parses an index option value; false when malformed. */
static bool parse_u64(const char *s, uint64_t *ret)
{
    return audit_parse_index(s, strlen(s), ret) == 0;
}

/* `cloister audit SUBCOMMAND [OPTIONS]`; returns the exit status. */
int cmd_audit(cli_ctx *ctx, const cli_command *cmd, int argc, char **argv)
{
    enum { OPT_KEY = 0x200, OPT_FROM, OPT_TO, OPT_ACTION, OPT_USER, OPT_SERVICE, OPT_DECISION, OPT_BUNDLE, OPT_OUT };
    static const struct option options[] = {
        CLI_COMMON_LONG_OPTIONS,
        {"key", required_argument, NULL, OPT_KEY},
        {"from", required_argument, NULL, OPT_FROM},
        {"to", required_argument, NULL, OPT_TO},
        {"action", required_argument, NULL, OPT_ACTION},
        {"user", required_argument, NULL, OPT_USER},
        {"service", required_argument, NULL, OPT_SERVICE},
        {"decision", required_argument, NULL, OPT_DECISION},
        {"bundle", required_argument, NULL, OPT_BUNDLE},
        {"out", required_argument, NULL, OPT_OUT},
        {},
    };
    const char *key = NULL, *bundle = NULL, *out = NULL;
    show_state show = {0};
    uint64_t from = 0, to = 0;
    bool have_from = false, have_to = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, CLI_COMMON_SHORT_OPTIONS, options, NULL)) >= 0) {
        switch (c) {
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_FROM:
        case OPT_TO:
            if (!parse_u64(optarg, c == OPT_FROM ? &from : &to))
                return cli_usage_error(cmd, "%s takes an entry index", c == OPT_FROM ? "--from" : "--to");
            *(c == OPT_FROM ? &have_from : &have_to) = true;
            break;
        case OPT_ACTION:
            show.action = optarg;
            break;
        case OPT_USER:
            show.user = optarg;
            break;
        case OPT_SERVICE:
            show.service = optarg;
            break;
        case OPT_DECISION:
            show.decision = NULL;
            for (size_t i = 0; i < ELEMENTSOF(access_decisions); i++)
                if (strcmp(optarg, access_decisions[i]) == 0)
                    show.decision = access_decisions[i];
            if (!show.decision)
                return cli_usage_error(cmd, "--decision takes allow, deny, unauthenticated, invalid or error");
            break;
        case OPT_BUNDLE:
            bundle = optarg;
            break;
        case OPT_OUT:
            out = optarg;
            break;
        default:
            if ((c = cli_common_option(ctx, cmd, c, optarg)) >= 0)
                return c;
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cmd, optind >= argc ? "missing checkpoint, verify, export or show" : "unexpected argument");
    const char *sub = argv[optind];
    if (strcmp(sub, "verify") == 0 && bundle) {
        audit_verifier v;
        _cleanup_free_ char *text = NULL;
        size_t len;
        if (read_file(bundle, BUNDLE_MAX, &text, &len) < 0)
            return cli_error("cannot read the bundle %s", bundle);
        json_auto_t *b = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(b))
            return cli_error("%s is not an audit bundle", bundle);
        if (!key)
            return cli_usage_error(cmd, "verifying a bundle needs --key (the log's verifier key or audit.pub)");
        int r = resolve_key(key, NULL, &v);
        return r != CLI_EXIT_OK ? r : verify_bundle(b, &v, false);
    }
    int r = cli_connect(ctx, true);
    if (r != CLI_EXIT_OK)
        return r;
    if (strcmp(sub, "checkpoint") == 0)
        return audit_checkpoint(ctx, key);
    if (strcmp(sub, "verify") == 0)
        return audit_verify(ctx, key);
    if (strcmp(sub, "show") == 0)
        return audit_show(ctx, &show);
    if (strcmp(sub, "export") == 0) {
        if (!have_from || !have_to || from >= to || to - from > EXPORT_MAX)
            return cli_usage_error(cmd, "export needs --from N --to M with N < M, at most %d entries", EXPORT_MAX);
        return audit_export(ctx, key, from, to, out);
    }
    return cli_usage_error(cmd, "unknown audit command \"%s\"", sub);
}
