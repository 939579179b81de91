#include <criterion/criterion.h>
#include <string.h>

#include <h2o.h>
#include <h2o/http2.h>
#include <h2o/http2_internal.h>

#include "basic/macro.h"
#include "httpd/framing.h"

/* The request head "POST / HTTP/1.1\r\nHost: a\r\n" + FIELDS + "\r\n". */
static const char *check(const char *fields)
{
    static char head[4096];
    snprintf(head, sizeof(head), "POST / HTTP/1.1\r\nHost: a\r\n%s\r\n", fields);
    return framing_check_head(head, strlen(head));
}

static void expect_refused(const char *fields, const char *word)
{
    const char *why = check(fields);
    cr_assert_not_null(why, "accepted: %s", fields);
    cr_assert_not_null(strstr(why, word), "%s: \"%s\" does not name %s", fields, why, word);
}

Test(framing, unambiguous_heads_pass)
{
    cr_assert_null(check(""));
    cr_assert_null(check("Content-Length: 5\r\n"));
    cr_assert_null(check("Transfer-Encoding: chunked\r\n"));
    cr_assert_null(check("Transfer-Encoding: Chunked\r\n"));
    cr_assert_null(check("transfer-encoding:chunked\r\n"));
    cr_assert_null(check("X-Content-Length-Hint: 5\r\nContent-Type: a/b\r\n"));
    const char *bare_lf = "GET / HTTP/1.1\nHost: a\n\n";
    cr_assert_null(framing_check_head(bare_lf, strlen(bare_lf)));
    /* what follows the head (a body, a pipelined request) is not read */
    const char *pipelined = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    cr_assert_null(framing_check_head(pipelined, strlen(pipelined)));
}

Test(framing, transfer_encoding_is_exactly_one_chunked)
{
    expect_refused("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "more than one Transfer-Encoding");
    expect_refused("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", "more than one Transfer-Encoding");
    expect_refused("Transfer-Encoding: xchunked\r\n", "exactly \"chunked\"");
    expect_refused("Transfer-Encoding: chunked \r\n", "exactly \"chunked\"");
    expect_refused("Transfer-Encoding: chunked\t\r\n", "exactly \"chunked\"");
    expect_refused("Transfer-Encoding: gzip, chunked\r\n", "exactly \"chunked\"");
    expect_refused("Transfer-Encoding: chunked, identity\r\n", "exactly \"chunked\"");
    expect_refused("Transfer-Encoding: \"chunked\"\r\n", "exactly \"chunked\"");
    cr_assert_not_null(check("Transfer-Encoding:\x0b" "chunked\r\n")); /* h2o's parser refuses it too */
    expect_refused("Transfer-Encoding:\r\n", "exactly \"chunked\"");
}

Test(framing, content_length_is_one_number_alone)
{
    expect_refused("Content-Length: 5\r\nContent-Length: 5\r\n", "more than one Content-Length");
    expect_refused("Content-Length: 5\r\nContent-Length: 6\r\n", "more than one Content-Length");
    expect_refused("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "both Content-Length and Transfer-Encoding");
    expect_refused("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "both Content-Length and Transfer-Encoding");
    expect_refused("Content-Length: 5, 5\r\n", "not one decimal number");
    expect_refused("Content-Length: +5\r\n", "not one decimal number");
    expect_refused("Content-Length: 5 \r\n", "not one decimal number");
    expect_refused("Content-Length: 99999999999999999999\r\n", "not one decimal number");
}

Test(framing, names_aliasing_framing_headers_are_refused)
{
    expect_refused("Content_Length: 5\r\n", "aliases Content-Length");
    expect_refused("content.length: 5\r\n", "aliases Content-Length");
    expect_refused("ContentLength: 5\r\n", "aliases Content-Length");
    expect_refused("Transfer_Encoding: chunked\r\n", "aliases Transfer-Encoding");
    expect_refused("TRANSFER.ENCODING: chunked\r\n", "aliases Transfer-Encoding");
}

Test(framing, host_is_one_header)
{
    expect_refused("Host: b\r\n", "more than one Host");
}

Test(framing, folded_and_unparsable_heads_are_refused)
{
    expect_refused("X-A: 1\r\n chunked\r\n", "folded");
    cr_assert_not_null(framing_check_head("GET / HTTP/1.1\r\nHost: a\r\n", 25)); /* incomplete */
    cr_assert_not_null(framing_check_head("", 0));
}

Test(framing, path_parameters)
{
    cr_assert(framing_path_has_parameters(H2O_STRLIT("/;x/admin")));
    cr_assert(framing_path_has_parameters(H2O_STRLIT("/a;b/c")));
    cr_assert(framing_path_has_parameters(H2O_STRLIT("/a%3Bb/c")));
    cr_assert(framing_path_has_parameters(H2O_STRLIT("/a%3bb")));
    cr_assert_not(framing_path_has_parameters(H2O_STRLIT("/a/b?x=1;y=2")));
    cr_assert_not(framing_path_has_parameters(H2O_STRLIT("/a/b%3")));
    cr_assert_not(framing_path_has_parameters(H2O_STRLIT("/a/b")));
}

Test(framing, http2_fields)
{
    framing_field te[] = {{"transfer-encoding", 17, "chunked", 7, false}};
    cr_assert_not_null(framing_check_fields(te, 1, true));
    cr_assert_null(framing_check_fields(te, 1, false));
    framing_field hosts[] = {{"host", 4, "a", 1, false}, {"host", 4, "a", 1, false}};
    cr_assert_not_null(framing_check_fields(hosts, 2, true));
    framing_field alias[] = {{"content_length", 14, "1", 1, false}};
    cr_assert_not_null(framing_check_fields(alias, 1, true));
}

Test(framing, unparsable_heads_are_named)
{
    static const struct {
        const char *head, *words;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "before its colon"},
        {"GET / HTTP/1.1\r\nContent Length: 1\r\n\r\n", "before its colon"},
        {"GET / HTTP/1.1\r\nX(: 1\r\n\r\n", "not allowed in a header name"},
        {"GET / HTTP/1.1\r\nX-A: a\x01z\r\n\r\n", "control character"},
        {"GET / HTTP/1.1\r\nX-A: a\x7fz\r\n\r\n", "control character"},
        {"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", "bare CR"},
        {"GET / HTTP/1.1\r\nX-A\r\n\r\n", "without a colon"},
        {"GET / HTTP/1.1\r\n: a\r\n\r\n", "empty name"},
        {"GET / HTTX/1.1\r\n\r\n", "invalid request line"},
        {"GET  / HTTP/1.1\r\n\r\n", "invalid request line"},
        {"GET / HTTP/1.1\r\nHost : a", "before its colon"}, /* refused before the head is complete */
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        const char *why = framing_head_unparsable(cases[i].head, strlen(cases[i].head), 0, NULL);
        cr_assert_not_null(why, "accepted: %s", cases[i].head);
        cr_assert_not_null(strstr(why, cases[i].words), "%s: \"%s\"", cases[i].head, why);
    }
    char many[8192] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i <= H2O_MAX_HEADERS; i++)
        strcat(many, "X: 1\r\n");
    strcat(many, "\r\n");
    cr_assert_not_null(strstr(framing_head_unparsable(many, strlen(many), 0, NULL), "more header fields"));
    /* parses, or may yet: h2o's to read */
    cr_assert_null(framing_head_unparsable(H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0, NULL));
    cr_assert_null(framing_head_unparsable(H2O_STRLIT("GET / HTTP/1.1\r\nHost: a\r\n"), 0, NULL));
    cr_assert_null(framing_head_unparsable(H2O_STRLIT("GET / HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n"), 0, NULL));
    cr_assert_null(framing_head_unparsable(H2O_STRLIT(""), 0, NULL));
    size_t big = H2O_MAX_REQLEN + 10;
    char *longer = malloc(big);
    memcpy(longer, "GET / HTTP/1.1\r\nX: ", 19);
    memset(longer + 19, 'a', big - 19);
    cr_assert_not_null(strstr(framing_head_unparsable(longer, big, 0, NULL), "longer than"));
    free(longer);
}

Test(framing, stand_in_heads_parse_and_close)
{
    char out[4096];
    const char *bad = "POST /x?y=1 HTTP/1.1\r\nHost : a\r\n\r\n";
    size_t n = framing_stand_in_head(bad, strlen(bad), 0, out, sizeof(out));
    cr_assert_eq(n, strlen("POST /x?y=1 HTTP/1.1\r\nConnection: close\r\n\r\n"));
    cr_assert(memcmp(out, "POST /x?y=1 HTTP/1.1\r\nConnection: close\r\n\r\n", n) == 0);
    /* a request line that does not parse is replaced */
    n = framing_stand_in_head(H2O_STRLIT("GET / HTTX\r\n\r\n"), 0, out, sizeof(out));
    cr_assert(memcmp(out, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", n) == 0);
    /* padded to MIN_LEN, in place, and still one head that parses */
    char buf[256] = "GET /p HTTP/1.1\r\nX-A: \x01";
    n = framing_stand_in_head(buf, strlen(buf), 200, buf, sizeof(buf));
    cr_assert_eq(n, 200);
    cr_assert_null(framing_head_unparsable(buf, n, 200, NULL)); /* h2o resumes where it stopped */
    cr_assert_null(framing_check_head(buf, n));
    cr_assert(memcmp(buf, "GET /p HTTP/1.1\r\nConnection: close ", 35) == 0);
    cr_assert_eq(framing_stand_in_head(bad, strlen(bad), 0, out, 10), 0); /* no room */
}

/* Decodes BLOCK with h2o's decoder into TABLE, as h2o does for a request. */
static void h2o_decodes(h2o_hpack_header_table_t *table, const uint8_t *block, size_t len)
{
    h2o_req_t req;
    memset(&req, 0, sizeof(req));
    h2o_mem_init_pool(&req.pool);
    int pseudo = 0;
    size_t cl;
    const char *err = NULL;
    cr_assert_eq(h2o_hpack_parse_headers(&req, table, block, len, &pseudo, &cl, NULL, &err), 0);
    h2o_mem_clear_pool(&req.pool);
}

#define BLOCK(...) (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})

Test(framing, http2_header_blocks_show_every_content_length)
{
    h2o_hpack_header_table_t table = {.hpack_capacity = 4096, .hpack_max_capacity = 4096};
    /* :method GET, :path /, :scheme https, :authority "a" (indexed) */
#define BASE 0x82, 0x84, 0x87, 0x41, 1, 'a'
#define CL5 0x0f, 0x0d, 1, '5' /* content-length (static name 28) "5", not indexed */
    cr_assert_null(framing_check_h2_block(&table, BLOCK(BASE, CL5)));
    cr_assert_str_eq(framing_check_h2_block(&table, BLOCK(BASE, CL5, CL5)), "more than one Content-Length header");
    /* the second one from the dynamic table the first one entered */
    cr_assert_not_null(framing_check_h2_block(&table, BLOCK(BASE, 0x5c, 1, '5', 0xbe)));
    cr_assert_eq(table.num_entries, 0, "the connection's table is left as it was");
    /* literal names */
#define CL_NAME 14, 'c', 'o', 'n', 't', 'e', 'n', 't', '-', 'l', 'e', 'n', 'g', 't', 'h'
#define TE_CHUNKED 0x00, 17, 't', 'r', 'a', 'n', 's', 'f', 'e', 'r', '-', 'e', 'n', 'c', 'o', 'd', 'i', 'n', 'g', 7, \
                   'c', 'h', 'u', 'n', 'k', 'e', 'd'
    cr_assert_not_null(framing_check_h2_block(&table, BLOCK(BASE, CL5, 0x00, CL_NAME, 1, '5')));
    uint8_t huff[64] = {BASE, CL5, 0x00};
    size_t n = 11;
    n += h2o_hpack_encode_string(huff + n, H2O_STRLIT("content-length"));
    cr_assert(huff[11] & 0x80, "Huffman-coded");
    n += h2o_hpack_encode_string(huff + n, H2O_STRLIT("7"));
    cr_assert_not_null(framing_check_h2_block(&table, huff, n));
    /* h2o refuses the stream for a transfer-encoding itself, unless
     * framing_configure() hands it over, as in the servers */
    cr_assert_null(framing_check_h2_block(&table, BLOCK(BASE, TE_CHUNKED)));
    H2O_TOKEN_TRANSFER_ENCODING->http2_should_reject = 0;
    cr_assert_not_null(framing_check_h2_block(&table, BLOCK(BASE, TE_CHUNKED)));

    /* a connection whose table h2o filled: [62] content-length: 5, [63] :authority: a */
    h2o_decodes(&table, BLOCK(BASE, 0x5c, 1, '5'));
    cr_assert_eq(table.num_entries, 2);
    cr_assert_null(framing_check_h2_block(&table, BLOCK(0x82, 0x84, 0x87, 0xbf, 0xbe)));
    cr_assert_not_null(framing_check_h2_block(&table, BLOCK(0x82, 0x84, 0x87, 0xbf, 0xbe, 0xbe)));
    cr_assert_not_null(framing_check_h2_block(&table, BLOCK(0x82, 0x84, 0x87, 0xbf, 0xbe, CL5)));
    /* a table size update empties the copy only; h2o refuses what follows */
    cr_assert_null(framing_check_h2_block(&table, BLOCK(0x20, 0x82, 0x84, 0x87, 0xbf, 0xbe, 0xbe)));
    cr_assert_eq(table.num_entries, 2);
    /* malformed: h2o's to refuse */
    cr_assert_null(framing_check_h2_block(&table, BLOCK(0x82, 0x00, 0x7f)));
    h2o_hpack_dispose_header_table(&table);
}
