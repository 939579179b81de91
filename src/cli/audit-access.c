/* The proxy's access-log segments for `audit show` and `audit verify`
 * (audit-access.h). The server's copy is untrusted: every record is
 * checked against its stored chain value and every committed head. */
#include "cli/audit-access.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/segment.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "cli/client.h"

/* One record as walked. */
typedef struct walked_record {
    const char *text;
    size_t len;
    bool follows;
    uint8_t chain[SEGMENT_DIGEST_LEN];
} walked_record;

/* A fetched segment: its bytes and records, or why there are none. */
typedef struct segment_copy {
    char id[SEGMENT_ID_MAX + 1];
    int error;       /* 0, -ENOENT (the audit role does not have it), -EBADMSG (a malformed line) */
    bool pruned;     /* with -ENOENT: removed past its retention (counted once) */
    uint64_t bad_at; /* with -EBADMSG: the malformed line's index */
    uint64_t shown;  /* records handed out by access_segments_records() so far */
    char *data;
    walked_record *recs;
    size_t n, cap;
} segment_copy;

/* A head committed in the log. */
typedef struct committed_head {
    uint64_t index; /* the entry's */
    char segment[SEGMENT_ID_MAX + 1];
    uint64_t records; /* the segment's records the head covers */
    bool closed;
    uint8_t head[SEGMENT_DIGEST_LEN];
} committed_head;

/* A segment the audit role removed past its retention, named by its
 * audit.access.prune entry. */
typedef struct pruned_segment {
    uint64_t index; /* the prune entry's */
    char segment[SEGMENT_ID_MAX + 1];
} pruned_segment;

struct access_segments {
    cli_ctx *ctx;
    segment_copy **segs;
    size_t n_segs;
    committed_head *heads;
    size_t n_heads, cap_heads;
    pruned_segment *pruned;
    size_t n_pruned, cap_pruned;
};

access_segments *access_segments_new(cli_ctx *ctx)
{
    access_segments *a = calloc(1, sizeof(*a));
    if (a)
        a->ctx = ctx;
    return a;
}

void access_segments_free(access_segments *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_segs; i++) {
        free(a->segs[i]->data);
        free(a->segs[i]->recs);
        free(a->segs[i]);
    }
    free(a->segs);
    free(a->heads);
    free(a->pruned);
    free(a);
}

static int add_record(void *userdata, const segment_record *rec)
{
    segment_copy *s = userdata;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        walked_record *grown = realloc(s->recs, cap * sizeof(*grown));
        if (!grown)
            return -ENOMEM;
        s->recs = grown;
        s->cap = cap;
    }
    walked_record *w = &s->recs[s->n++];
    *w = (walked_record){.text = rec->text, .len = rec->len, .follows = rec->follows};
    memcpy(w->chain, rec->chain, sizeof(w->chain));
    return 0;
}

/* The segment ID, fetched and walked on first use into *RET (owned by A).
 * Returns CLI_EXIT_OK (the segment may carry an error of its own) or an
 * exit status, printed. */
static int segment_get(access_segments *a, const char *id, segment_copy **ret)
{
    for (size_t i = 0; i < a->n_segs; i++)
        if (strcmp(a->segs[i]->id, id) == 0) {
            *ret = a->segs[i];
            return CLI_EXIT_OK;
        }
    if (!segment_id_valid(id, strlen(id)))
        return cli_error("the log names an access-log segment with an invalid id");
    segment_copy **grown = realloc(a->segs, (a->n_segs + 1) * sizeof(*grown));
    segment_copy *s = calloc(1, sizeof(*s));
    if (grown)
        a->segs = grown;
    if (!grown || !s) {
        free(s);
        return cli_error("out of memory");
    }
    snprintf(s->id, sizeof(s->id), "%s", id);
    a->segs[a->n_segs++] = s;
    char path[128];
    snprintf(path, sizeof(path), "/audit/segments/%s", id);
    json_auto_t *j = NULL;
    api_error err;
    if (api_request(a->ctx, a->ctx->token, "GET", path, NULL, &j, &err) < 0) {
        if (err.status != 404)
            return api_error_print(&err);
        s->error = -ENOENT;
        *ret = s;
        return CLI_EXIT_OK;
    }
    const char *b64 = json_string_value(json_object_get(j, "data"));
    size_t b64_len = b64 ? strlen(b64) : 0;
    s->data = malloc(b64_len / 4 * 3 + 3);
    long len = b64 && s->data ? base64_decode(b64, b64_len, (uint8_t *)s->data, b64_len / 4 * 3 + 3, false) : -1;
    if (len < 0)
        return cli_error("the server's copy of access-log segment %s is not base64", id);
    int r = segment_walk(id, s->data, (size_t)len, add_record, s, &s->bad_at);
    if (r == -ENOMEM)
        return cli_error("out of memory");
    s->error = r == -EBADMSG ? r : 0;
    *ret = s;
    return CLI_EXIT_OK;
}

int access_segments_records(access_segments *a, const json_t *details, int (*cb)(void *userdata, json_t *values),
                            void *userdata)
{
    const char *id = json_string_value(json_object_get(details, "segment"));
    json_int_t first = json_integer_value(json_object_get(details, "first"));
    json_int_t count = json_integer_value(json_object_get(details, "count"));
    segment_copy *s;
    int r = id ? segment_get(a, id, &s) : CLI_EXIT_OK;
    if (!id || r != CLI_EXIT_OK || first < 0 || count < 0)
        return r;
    /* a head recovered from an earlier run's spool names the whole segment:
     * records an earlier head committed are not handed out twice */
    uint64_t from = MAX((uint64_t)first, s->shown), to = (uint64_t)first + (uint64_t)count;
    s->shown = MAX(s->shown, to);
    for (uint64_t i = from; i < to && i < s->n; i++) {
        json_auto_t *values = json_loadb(s->recs[i].text, s->recs[i].len, 0, NULL);
        if (json_is_array(values) && (r = cb(userdata, values)) != 0)
            return r;
    }
    return CLI_EXIT_OK;
}

/* Notes the segments an audit.access.prune entry (INDEX, parsed E) names,
 * when the audit role itself appended it (an entry of that action from
 * another appender proves nothing and is ignored). Returns 0 or -ENOMEM. */
static int note_pruned(access_segments *a, uint64_t index, const json_t *e)
{
    const char *appender = json_string_value(json_object_get(e, "appender"));
    if (!appender || strcmp(appender, "audit") != 0)
        return 0;
    size_t i;
    const json_t *id;
    json_array_foreach(json_object_get(json_object_get(e, "details"), "segments"), i, id)
    {
        const char *s = json_string_value(id);
        if (!s || !segment_id_valid(s, strlen(s)))
            continue;
        if (a->n_pruned == a->cap_pruned) {
            size_t cap = a->cap_pruned ? 2 * a->cap_pruned : 64;
            pruned_segment *grown = realloc(a->pruned, cap * sizeof(*grown));
            if (!grown)
                return -ENOMEM;
            a->pruned = grown;
            a->cap_pruned = cap;
        }
        pruned_segment *p = &a->pruned[a->n_pruned++];
        p->index = index;
        snprintf(p->segment, sizeof(p->segment), "%s", s);
    }
    return 0;
}

/* Whether the audit role removed SEGMENT past its retention after the
 * entry at INDEX committed a head of it. */
static bool pruned_after(const access_segments *a, const char *segment, uint64_t index)
{
    for (size_t i = 0; i < a->n_pruned; i++)
        if (a->pruned[i].index > index && strcmp(a->pruned[i].segment, segment) == 0)
            return true;
    return false;
}

int access_segments_note(access_segments *a, uint64_t index, const char *text, size_t len)
{
    static const char marker[] = "\"action\":\"proxy.access\"";
    static const char prune_marker[] = "\"action\":\"audit.access.prune\"";
    if (memmem(text, len, prune_marker, sizeof(prune_marker) - 1)) {
        json_auto_t *e = json_loadb(text, len, 0, NULL);
        return note_pruned(a, index, e);
    }
    if (!memmem(text, len, marker, sizeof(marker) - 1))
        return 0;
    json_auto_t *e = json_loadb(text, len, 0, NULL);
    json_t *d = json_object_get(e, "details");
    const char *id = json_string_value(json_object_get(d, "segment"));
    const char *head = json_string_value(json_object_get(d, "head"));
    json_int_t records = json_integer_value(json_object_get(d, "records"));
    if (!id) /* a batch of the earlier format, verified with the log itself */
        return 0;
    if (a->n_heads == a->cap_heads) {
        size_t cap = a->cap_heads ? 2 * a->cap_heads : 64;
        committed_head *grown = realloc(a->heads, cap * sizeof(*grown));
        if (!grown)
            return -ENOMEM;
        a->heads = grown;
        a->cap_heads = cap;
    }
    committed_head *h = &a->heads[a->n_heads++];
    *h = (committed_head){.index = index, .records = records > 0 ? (uint64_t)records : 0,
                          .closed = json_is_true(json_object_get(d, "closed"))};
    snprintf(h->segment, sizeof(h->segment), "%s", id);
    if (!head || strlen(head) != SEGMENT_HEX_LEN || hex_decode(head, SEGMENT_HEX_LEN, h->head, sizeof(h->head)) < 0)
        memset(h->head, 0, sizeof(h->head)); /* matches no chain: reported as a changed record */
    return 0;
}

/* The requestId of record TEXT (LEN bytes) into OUT, or "?" when it has none. */
static const char *request_id(const char *text, size_t len, char *out, size_t size)
{
    json_auto_t *v = json_loadb(text, len, 0, NULL);
    const char *id = json_string_value(json_array_get(v, 1));
    snprintf(out, size, "%s", id ? id : "?");
    return out;
}

/* Prints the failure of record I of segment S (why), committed by entry
 * ENTRY; returns CLI_EXIT_FAILED. */
static int record_failed(const segment_copy *s, uint64_t i, uint64_t entry, const char *why)
{
    char rid[64] = "-";
    if (i < s->n)
        request_id(s->recs[i].text, s->recs[i].len, rid, sizeof(rid));
    return cli_error("access log verification failed: segment %s, record %llu (requestId %s): %s (its head is in "
                     "entry %llu)",
                     s->id, (unsigned long long)i, rid, why, (unsigned long long)entry);
}

int access_segments_verify(access_segments *a, uint64_t *ret_records, size_t *ret_segments, size_t *ret_pruned)
{
    uint64_t records = 0;
    size_t pruned = 0;
    for (size_t k = 0; k < a->n_heads; k++) {
        const committed_head *h = &a->heads[k];
        segment_copy *s;
        int r = segment_get(a, h->segment, &s);
        if (r != CLI_EXIT_OK)
            return r;
        if (s->error == -ENOENT && pruned_after(a, h->segment, h->index)) {
            pruned += !s->pruned;
            s->pruned = true;
            continue;
        }
        /* the records this head adds to the ones an earlier head covered */
        uint64_t from = 0;
        for (size_t p = 0; p < k; p++)
            if (strcmp(a->heads[p].segment, h->segment) == 0)
                from = MAX(from, a->heads[p].records);
        if (s->error == -ENOENT)
            return cli_error("access log verification failed: segment %s, committed in entry %llu, is missing from "
                             "the audit role (removed)",
                             h->segment, (unsigned long long)h->index);
        for (uint64_t i = from; i < h->records && i < s->n; i++)
            if (!s->recs[i].follows)
                return record_failed(s, i, h->index,
                                     "it does not follow the record before it (changed, removed or reordered)");
        if (s->error == -EBADMSG && s->bad_at < h->records)
            return record_failed(s, s->bad_at, h->index, "the line is malformed (changed)");
        if (s->n < h->records)
            return record_failed(s, s->n, h->index, "the record is missing (removed or truncated)");
        if (h->records > 0 && memcmp(s->recs[h->records - 1].chain, h->head, SEGMENT_DIGEST_LEN) != 0)
            return record_failed(s, from, h->index,
                                 "the records from this one on do not recompute to the committed head (changed, "
                                 "and the stored chain rewritten to match)");
        if (h->closed && s->n > h->records)
            return record_failed(s, h->records, h->index, "the record was added after the segment was closed");
        records += h->records - MIN(from, h->records);
    }
    *ret_records = records;
    *ret_segments = a->n_segs - pruned;
    *ret_pruned = pruned;
    return CLI_EXIT_OK;
}
