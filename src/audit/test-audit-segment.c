/* Access-log segments: the chain's start and steps against OpenSSL's
 * one-shot SHA-256, lines written by segment_format_line() walked back, and
 * a changed, removed or reordered record, a malformed line and bad ids
 * found by segment_walk(). */
#include <criterion/criterion.h>
#include <errno.h>
#include <openssl/evp.h>
#include <string.h>

#include "audit/segment.h"
#include "basic/encoding.h"

static const char *const records[] = {
    "[\"2026-12-06T21:00:00.000Z\",\"r1\",\"ana\",null,\"127.0.0.1\",\"wiki\",\"GET\",\"/a\",\"allow\",null,null,200,10,5]",
    "[\"2026-12-06T21:00:00.001Z\",\"r2\",null,null,null,\"wiki\",\"GET\",\"/b\",\"unauthenticated\",null,null,401,0,3]",
    "[\"2026-12-06T21:00:00.002Z\",\"r3\",\"bo\",null,\"::1\",\"wiki\",\"POST\",\"/c\",\"deny\",\"p\",\"r\",403,9,4]",
};
#define N_RECORDS (sizeof(records) / sizeof(records[0]))

/* The segment ID holding every record, as segment_format_line() writes it,
 * into OUT; returns its length. */
static size_t write_segment(const char *id, char *out, uint8_t head[SEGMENT_DIGEST_LEN])
{
    segment_chain c = {0};
    cr_assert_eq(segment_chain_init(&c, id), 0);
    size_t len = 0;
    for (size_t i = 0; i < N_RECORDS; i++) {
        int n = segment_format_line(&c, records[i], strlen(records[i]), out + len);
        cr_assert_eq(n, (int)(SEGMENT_HEX_LEN + strlen(records[i]) + 2));
        len += (size_t)n;
    }
    cr_assert_eq(c.count, N_RECORDS);
    memcpy(head, c.value, SEGMENT_DIGEST_LEN);
    segment_chain_dispose(&c);
    return len;
}

typedef struct walk {
    size_t n;
    int64_t first_broken;
    uint8_t last[SEGMENT_DIGEST_LEN];
    char ids[8][8];
} walk;

static int on_record(void *userdata, const segment_record *rec)
{
    walk *w = userdata;
    cr_assert_eq(rec->index, w->n);
    if (!rec->follows && w->first_broken < 0)
        w->first_broken = (int64_t)rec->index;
    memcpy(w->last, rec->chain, SEGMENT_DIGEST_LEN);
    if (w->n < 8)
        memcpy(w->ids[w->n], rec->text + 29, 2); /* "rN", after the time */
    w->n++;
    return 0;
}

static void sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n;
    cr_assert(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, a, alen) &&
              (!blen || EVP_DigestUpdate(ctx, b, blen)) && EVP_DigestFinal_ex(ctx, out, &n));
    EVP_MD_CTX_free(ctx);
}

Test(segment, the_chain_is_sha256_of_the_previous_value_and_the_record)
{
    segment_chain c = {0};
    cr_assert_eq(segment_chain_init(&c, "0a1b-000001"), 0);
    uint8_t want[32];
    sha256("0a1b-000001", 11, NULL, 0, want);
    cr_expect_eq(memcmp(c.value, want, 32), 0, "c(-1) = SHA-256(segment id)");
    for (size_t i = 0; i < N_RECORDS; i++) {
        sha256(want, 32, records[i], strlen(records[i]), want);
        cr_assert_eq(segment_chain_next(&c, records[i], strlen(records[i])), 0);
        cr_expect_eq(memcmp(c.value, want, 32), 0, "c(%zu)", i);
    }
    cr_expect_eq(c.count, N_RECORDS);
    segment_chain_dispose(&c);
    segment_chain_dispose(&c); /* a disposed chain is zeroed */
}

Test(segment, written_lines_walk_back_with_the_same_head)
{
    char data[4096];
    uint8_t head[SEGMENT_DIGEST_LEN];
    size_t len = write_segment("0a1b-000001", data, head);
    walk w = {.first_broken = -1};
    uint64_t bad = 99;
    cr_assert_eq(segment_walk("0a1b-000001", data, len, on_record, &w, &bad), 0);
    cr_expect_eq(w.n, N_RECORDS);
    cr_expect_eq(w.first_broken, -1);
    cr_expect_eq(memcmp(w.last, head, SEGMENT_DIGEST_LEN), 0);
    cr_expect_eq(bad, 99, "untouched on success");
    /* the id is part of the chain: the same bytes under another id follow nothing */
    walk other = {.first_broken = -1};
    cr_assert_eq(segment_walk("0a1b-000002", data, len, on_record, &other, &bad), 0);
    cr_expect_eq(other.first_broken, 0);
    cr_expect_neq(memcmp(other.last, head, SEGMENT_DIGEST_LEN), 0);
}

Test(segment, a_changed_removed_or_reordered_record_is_the_first_that_does_not_follow)
{
    char data[4096], edited[4096];
    uint8_t head[SEGMENT_DIGEST_LEN];
    size_t len = write_segment("0a1b-000001", data, head);
    uint64_t bad;
    /* changed: record 1's status */
    memcpy(edited, data, len);
    char *status = strstr(edited, ",401,");
    cr_assert_not_null(status);
    status[1] = '2';
    walk w = {.first_broken = -1};
    cr_assert_eq(segment_walk("0a1b-000001", edited, len, on_record, &w, &bad), 0);
    cr_expect_eq(w.first_broken, 1);
    cr_expect_neq(memcmp(w.last, head, SEGMENT_DIGEST_LEN), 0);
    /* removed: record 1; record 2 (now at index 1) does not follow */
    size_t line0 = SEGMENT_HEX_LEN + strlen(records[0]) + 2, line1 = SEGMENT_HEX_LEN + strlen(records[1]) + 2;
    memcpy(edited, data, line0);
    memcpy(edited + line0, data + line0 + line1, len - line0 - line1);
    w = (walk){.first_broken = -1};
    cr_assert_eq(segment_walk("0a1b-000001", edited, len - line1, on_record, &w, &bad), 0);
    cr_expect_eq(w.n, N_RECORDS - 1);
    cr_expect_eq(w.first_broken, 1);
    cr_expect_str_eq(w.ids[1], "r3");
    /* reordered: records 0 and 1 swapped */
    memcpy(edited, data + line0, line1);
    memcpy(edited + line1, data, line0);
    memcpy(edited + line0 + line1, data + line0 + line1, len - line0 - line1);
    w = (walk){.first_broken = -1};
    cr_assert_eq(segment_walk("0a1b-000001", edited, len, on_record, &w, &bad), 0);
    cr_expect_eq(w.first_broken, 0);
    cr_expect_str_eq(w.ids[0], "r2");
}

Test(segment, malformed_lines_and_bad_ids_are_refused)
{
    char data[4096];
    uint8_t head[SEGMENT_DIGEST_LEN];
    size_t len = write_segment("0a1b-000001", data, head);
    walk w = {.first_broken = -1};
    uint64_t bad = 99;
    /* the last line cut before its newline */
    cr_expect_eq(segment_walk("0a1b-000001", data, len - 1, on_record, &w, &bad), -EBADMSG);
    cr_expect_eq(bad, N_RECORDS - 1);
    /* a chain value that is not hex */
    data[5] = 'x';
    w = (walk){.first_broken = -1};
    cr_expect_eq(segment_walk("0a1b-000001", data, len, on_record, &w, &bad), -EBADMSG);
    cr_expect_eq(bad, 0);
    cr_expect_eq(w.n, 0);
    /* an empty record */
    char empty[SEGMENT_HEX_LEN + 2];
    memset(empty, 'a', SEGMENT_HEX_LEN);
    empty[SEGMENT_HEX_LEN] = ' ';
    empty[SEGMENT_HEX_LEN + 1] = '\n';
    cr_expect_eq(segment_walk("0a1b-000001", empty, sizeof(empty), on_record, &w, &bad), -EBADMSG);
    cr_expect_eq(segment_walk("0a1b-000001", "", 0, on_record, &w, &bad), 0, "an empty segment has no records");
    /* ids are file names: [0-9a-z-], not starting with '-', at most SEGMENT_ID_MAX */
    segment_chain c = {0};
    cr_expect_eq(segment_chain_init(&c, "../etc"), -EINVAL);
    cr_expect_eq(segment_chain_init(&c, "-a"), -EINVAL);
    cr_expect_eq(segment_chain_init(&c, ""), -EINVAL);
    cr_expect_eq(segment_chain_init(&c, "A1"), -EINVAL);
    char long_id[SEGMENT_ID_MAX + 2];
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = 0;
    cr_expect_eq(segment_chain_init(&c, long_id), -EINVAL);
    long_id[SEGMENT_ID_MAX] = 0;
    cr_expect_eq(segment_chain_init(&c, long_id), 0);
    /* a record holding a newline would split its line */
    char line[256];
    cr_expect_eq(segment_format_line(&c, "[1,\n2]", 6, line), -EINVAL);
    cr_expect_eq(segment_format_line(&c, "", 0, line), -EINVAL);
    cr_expect_eq(c.count, 0);
    segment_chain_dispose(&c);
}

/* The proxy's writer chains a batch of lines whose chain values were left
 * blank: the same bytes as lines formatted one by one. */
Test(segment, lines_left_blank_are_chained_in_place_as_formatted_lines)
{
    char formatted[2048], blank[2048];
    uint8_t head[SEGMENT_DIGEST_LEN];
    size_t len = write_segment("ab-000001", formatted, head);
    size_t at = 0;
    for (size_t i = 0; i < N_RECORDS; i++) {
        size_t n = strlen(records[i]);
        memset(blank + at, 'x', SEGMENT_HEX_LEN);
        blank[at + SEGMENT_HEX_LEN] = ' ';
        memcpy(blank + at + SEGMENT_HEX_LEN + 1, records[i], n);
        blank[at + SEGMENT_HEX_LEN + 1 + n] = '\n';
        at += SEGMENT_HEX_LEN + n + 2;
    }
    cr_assert_eq(at, len);
    segment_chain c = {0};
    cr_assert_eq(segment_chain_init(&c, "ab-000001"), 0);
    /* in two batches, as two flushes */
    size_t first = SEGMENT_HEX_LEN + strlen(records[0]) + 2;
    cr_assert_eq(segment_chain_lines(&c, blank, first), 1);
    cr_assert_eq(segment_chain_lines(&c, blank + first, len - first), (ssize_t)N_RECORDS - 1);
    cr_expect_eq(memcmp(blank, formatted, len), 0);
    cr_expect_eq(memcmp(c.value, head, SEGMENT_DIGEST_LEN), 0);
    cr_expect_eq(c.count, N_RECORDS);
    cr_expect_eq(segment_chain_lines(&c, blank, 0), 0);
    /* a line without its newline, or without the space after its chain value */
    cr_expect_eq(segment_chain_lines(&c, blank, first - 1), -EINVAL);
    blank[SEGMENT_HEX_LEN] = 'x';
    cr_expect_eq(segment_chain_lines(&c, blank, first), -EINVAL);
    cr_expect_eq(segment_chain_lines(&c, blank, 10), -EINVAL);
    segment_chain_dispose(&c);
}

Test(segment, params_name_an_id_then_exactly_the_numbers_asked_for)
{
    char id[SEGMENT_ID_MAX + 1];
    uint64_t offset = 1, length = 1;
    cr_assert(segment_params_parse("id=ab-000001", 12, id, NULL, NULL));
    cr_assert_str_eq(id, "ab-000001");
    const char *q = "id=ab-000001&offset=524288&length=0";
    cr_assert(segment_params_parse(q, strlen(q), id, &offset, &length));
    cr_assert_eq(offset, 524288);
    cr_assert_eq(length, 0);
    cr_assert(segment_params_parse(q, 26, id, &offset, NULL)); /* "...&offset=524288" */
    static const char *const bad[] = {
        "",  "id=",  "id=AB",  "id=-a",  "id=ab&offset=1",  "id=ab&offset=01&length=1",  "id=ab&offset=1&length=",
        "id=ab&length=1&offset=1",  "id=ab&offset=1&length=1&x=1",  "id=ab&offset=1&length=4611686018427387905",
        "id=a/b&offset=1&length=1",  "id=ab&offset=-1&length=1",  "x=ab&offset=1&length=1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect(!segment_params_parse(bad[i], strlen(bad[i]), id, &offset, &length), "accepted %s", bad[i]);
    cr_assert(!segment_params_parse("id=ab&offset=1", 14, id, NULL, NULL), "an offset not asked for");
}

Test(segment, the_spool_channel_sits_beside_a_local_audit_socket_only)
{
    char path[64];
    cr_assert(segment_channel_path("/var/lib/cloister/run/audit/audit.sock", path, sizeof(path)));
    cr_assert_str_eq(path, "/var/lib/cloister/run/audit/segments.sock");
    cr_assert(!segment_channel_path("https://audit.example:7444", path, sizeof(path)));
    cr_assert(!segment_channel_path("/a/very/long/directory/name/that/does/not/fit/in/the/buffer/audit.sock", path,
                                    sizeof(path)));
}
