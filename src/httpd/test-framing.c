#include <criterion/criterion.h>
#include <string.h>

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
