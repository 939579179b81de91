#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/proctitle.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"

Test(strbuf, grows_until_its_maximum)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 10);
    cr_assert_eq(strbuf_puts(&b, "hello"), 0);
    cr_assert_eq(strbuf_puts(&b, "world"), 0);
    cr_assert_eq(strbuf_putc(&b, '!'), -E2BIG);
    cr_assert_str_eq(b.data, "helloworld");
    cr_assert_eq(b.len, 10);
}

Test(strbuf, static_buffer_truncates_and_flags)
{
    char storage[8];
    strbuf b;
    strbuf_init_static(&b, storage, sizeof(storage));
    cr_assert_eq(strbuf_puts(&b, "abcdefghij"), -E2BIG);
    cr_assert(b.truncated);
    cr_assert_str_eq(storage, "abcdefg");
}

Test(strbuf, json_string_escapes_controls_and_quotes)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 100);
    strbuf_put_json_string(&b, "a\"b\\c\n\x01");
    cr_assert_str_eq(b.data, "\"a\\\"b\\\\c\\n\\u0001\"");
}

Test(strbuf, printf_appends)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 100);
    strbuf_printf(&b, "%d-%s", 42, "x");
    strbuf_printf(&b, "%c", '!');
    cr_assert_str_eq(b.data, "42-x!");
}

Test(strbuf, printf_grows_past_its_room_and_truncates_a_static_buffer)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 200);
    strbuf_puts(&b, "x"); /* 64 bytes of room: the next one does not fit */
    cr_assert_eq(strbuf_printf(&b, "%0100d", 7), 0);
    cr_assert_eq(b.len, 101);
    cr_assert_eq(b.data[100], '7');
    cr_assert_eq(strbuf_printf(&b, "%0100d", 7), -E2BIG);
    cr_assert_eq(b.len, 101);
    cr_assert_eq(b.data[101], 0);

    char storage[8];
    strbuf s;
    strbuf_init_static(&s, storage, sizeof(storage));
    cr_assert_eq(strbuf_printf(&s, "%s", "abc"), 0);
    cr_assert_eq(strbuf_printf(&s, "%d", 123456), -E2BIG);
    cr_assert(s.truncated);
    cr_assert_str_eq(storage, "abc1234");
}

Test(strbuf, json_string_keeps_plain_runs_and_bytes_above_ascii)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 100);
    strbuf_put_json_string(&b, "ab\tc\x7f\xc3\xa9" "d\t");
    cr_assert_str_eq(b.data, "\"ab\\tc\\u007f\xc3\xa9" "d\\t\"");
}

Test(encoding, hex_round_trip_and_rejects_bad_digits)
{
    uint8_t in[] = {0x00, 0xab, 0xff, 0x10}, out[4];
    char hex[9];
    hex_encode(in, 4, hex);
    cr_assert_str_eq(hex, "00abff10");
    cr_assert_eq(hex_decode(hex, 8, out, 4), 0);
    cr_assert_eq(memcmp(in, out, 4), 0);
    cr_assert_eq(hex_decode("00abfg10", 8, out, 4), -EINVAL);
    cr_assert_eq(hex_decode("00ab", 4, out, 4), -EINVAL);
}

/* The JSON escapes, and output buffers of every size: only whole escapes
 * are written, and the input moves past exactly what they encode. */
Test(encoding, json_escape_some_whole_escapes)
{
    const char *in = "a\"b\\c\n\r\t\x01\x1f\x7f \xc3\xa9/";
    const char *want = "a\\\"b\\\\c\\n\\r\\t\\u0001\\u001f\\u007f \xc3\xa9/";
    char out[64];
    const char *s = in;
    size_t n = json_escape_some(&s, out, sizeof(out));
    cr_assert_eq(*s, 0);
    cr_assert_eq(n, strlen(want));
    cr_assert_eq(memcmp(out, want, n), 0);
    for (size_t size = 0; size < strlen(want); size++) {
        s = in;
        n = json_escape_some(&s, out, size);
        cr_assert(n <= size && memcmp(out, want, n) == 0, "size %zu", size);
        const char *rest = s;
        char tail[64];
        size_t m = json_escape_some(&rest, tail, sizeof(tail)); /* the rest completes it */
        cr_assert_eq(n + m, strlen(want), "size %zu", size);
        cr_assert_eq(memcmp(tail, want + n, m), 0, "size %zu", size);
        cr_assert(s > in || size < 1, "size %zu: no progress", size);
    }
}

/* Every byte value: as it is exactly when JSON allows it in a string
 * (not '"', '\\', a control byte or DEL), else escaped. */
Test(encoding, json_escape_some_every_byte)
{
    for (unsigned b = 1; b < 256; b++) {
        char in[2] = {(char)b, 0}, out[8];
        const char *s = in;
        size_t n = json_escape_some(&s, out, sizeof(out));
        bool plain = b >= 0x20 && b != 0x7f && b != '"' && b != '\\';
        cr_assert_eq(*s, 0, "byte %#x", b);
        if (plain)
            cr_assert(n == 1 && (unsigned char)out[0] == b, "byte %#x", b);
        else
            cr_assert(n >= 2 && out[0] == '\\', "byte %#x", b);
    }
}

/* RFC 4648 section 10 test vectors. */
Test(encoding, base64_rfc4648_vectors)
{
    const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *std[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    const char *url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char enc[16];
        uint8_t dec[16];
        base64_encode((const uint8_t *)plain[i], strlen(plain[i]), enc, false);
        cr_assert_str_eq(enc, std[i]);
        base64_encode((const uint8_t *)plain[i], strlen(plain[i]), enc, true);
        cr_assert_str_eq(enc, url[i]);
        long n = base64_decode(std[i], strlen(std[i]), dec, sizeof(dec), false);
        cr_assert_eq(n, (long)strlen(plain[i]));
        cr_assert_eq(memcmp(dec, plain[i], (size_t)n), 0);
        n = base64_decode(url[i], strlen(url[i]), dec, sizeof(dec), true);
        cr_assert_eq(n, (long)strlen(plain[i]));
    }
}

Test(encoding, base64_rejects_malformed)
{
    uint8_t dec[16];
    cr_assert_lt(base64_decode("Zg=", 3, dec, sizeof(dec), false), 0);
    cr_assert_lt(base64_decode("Z===", 4, dec, sizeof(dec), false), 0);
    cr_assert_lt(base64_decode("Zh==", 4, dec, sizeof(dec), false), 0); /* non-zero pad bits */
    cr_assert_lt(base64_decode("Zm9v!", 5, dec, sizeof(dec), true), 0);
    cr_assert_lt(base64_decode("Zm+v", 4, dec, sizeof(dec), true), 0);
    cr_assert_eq(base64_decode("Zm9vYmFy", 8, dec, 3, false), -E2BIG);
}

Test(encoding, consttime_compare)
{
    cr_assert(memeq_consttime("abcd", "abcd", 4));
    cr_assert_not(memeq_consttime("abcd", "abce", 4));
}

Test(timeutil, rfc3339_parse_and_format)
{
    int64_t t;
    char buf[40];
    cr_assert_eq(time_parse_rfc3339("2024-09-07T14:37:39.545Z", &t), 0);
    cr_assert_eq(t, 1725719859);
    cr_assert_str_eq(time_format_rfc3339(t, buf, sizeof(buf)), "2024-09-07T14:37:39Z");
    cr_assert_eq(time_parse_rfc3339("2024-09-07T16:37:39+02:00", &t), 0);
    cr_assert_eq(t, 1725719859);
    cr_assert_eq(time_parse_rfc3339("2023-02-29T00:00:00Z", &t), -EINVAL);
    cr_assert_eq(time_parse_rfc3339("2024-09-07 14:37", &t), -EINVAL);
    cr_assert_eq(time_parse_rfc3339("2024-09-07T14:37:39Zjunk", &t), -EINVAL);
    cr_assert_eq(time_parse_rfc3339("2024-13-07T14:37:39Z", &t), -EINVAL);
}

Test(timeutil, rfc3339_ms_follows_the_seconds_it_caches)
{
    char buf[32], small[12];
    uint64_t ns = 1725719859ull * 1000000000ull + 5000000ull;
    cr_assert_str_eq(time_format_rfc3339_ms(ns, buf, sizeof(buf)), "2024-09-07T14:37:39.005Z");
    cr_assert_str_eq(time_format_rfc3339_ms(ns + 990000000ull, buf, sizeof(buf)), "2024-09-07T14:37:39.995Z");
    cr_assert_str_eq(time_format_rfc3339_ms(ns + 1000000000ull, buf, sizeof(buf)), "2024-09-07T14:37:40.005Z");
    cr_assert_str_eq(time_format_rfc3339_ms(0, buf, sizeof(buf)), "1970-01-01T00:00:00.000Z");
    cr_assert_str_eq(time_format_rfc3339_ms(ns, small, sizeof(small)), "2024-09-07T");
}

Test(fileio, atomic_write_sets_mode_and_read_is_capped)
{
    char dir[] = "/tmp/cloister-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/a/b/file", dir);
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/a/b", dir);
    cr_assert_eq(mkdir_p(sub, 0700), 0);
    cr_assert_eq(write_file_atomic(path, "secret", 6, 0600), 0);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    char *data;
    size_t len;
    cr_assert_eq(read_file(path, 100, &data, &len), 0);
    cr_assert_eq(len, 6);
    cr_assert_str_eq(data, "secret");
    free(data);
    cr_assert_eq(read_file(path, 3, &data, &len), -EFBIG);
    unlink(path);
    rmdir(sub);
    snprintf(sub, sizeof(sub), "%s/a", dir);
    rmdir(sub);
    rmdir(dir);
}

Test(fileio, pread_all_reads_exactly_the_bytes_at_an_offset_or_fails_short)
{
    char path[] = "/tmp/cloister-test-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    unlink(path);
    cr_assert_eq(fd_write_all(fd, "0123456789", 10), 0);
    char buf[8] = {0};
    cr_assert_eq(fd_pread_all(fd, buf, 4, 3), 0);
    cr_assert_eq(memcmp(buf, "3456", 4), 0);
    cr_assert_eq(fd_pread_all(fd, buf, 0, 10), 0);
    cr_assert_eq(fd_pread_all(fd, buf, 4, 8), -EIO, "the file ends after 2 of the 4 bytes");
    cr_assert_eq(fd_pread_all(-1, buf, 1, 0), -EBADF);
    close(fd);
}

/* A command line laid out as the kernel does: strings one after another. */
Test(proctitle, writes_over_the_command_line_and_zeroes_the_rest)
{
    char area[] = "/usr/sbin/cloisterd\0--dev\0--data-dir\0/var/lib/cloister";
    char *argv[] = {area, area + 20, area + 26, area + 37, NULL};
    cr_assert_eq(proctitle_init(4, argv), 0);
    proctitle_set("cloisterd: %s", "runner");
    cr_assert_str_eq(area, "cloisterd: runner");
    for (size_t i = strlen("cloisterd: runner"); i < sizeof(area); i++)
        cr_assert_eq(area[i], 0, "byte %zu left over", i);
    /* cut to the space the command line had, NUL included */
    proctitle_set("%0100d", 7);
    cr_assert_eq(strlen(area), sizeof(area) - 1);
}

Test(proctitle, a_short_command_line_cuts_the_title)
{
    char area[] = "cl\0x";
    char *argv[] = {area, area + 3, NULL};
    cr_assert_eq(proctitle_init(2, argv), 0);
    proctitle_set("cloisterd: %s", "kms");
    cr_assert_str_eq(area, "cloi"); /* 5 bytes, the NUL included */
    cr_assert_eq(proctitle_init(0, argv), -EINVAL);
}

/* ---- log sink ---- */

static int sunk;
static char sunk_msg[64], sunk_fields[128];

/* Records what it gets, and logs itself: that line must not come back. */
static void recording_sink(log_level level, const char *msg, const char *const *fields)
{
    sunk++;
    snprintf(sunk_msg, sizeof(sunk_msg), "%d %s", (int)level, msg);
    size_t n = 0;
    sunk_fields[0] = 0;
    for (size_t i = 0; fields[i]; i += 2)
        n += (size_t)snprintf(sunk_fields + n, sizeof(sunk_fields) - n, "%s=%s;", fields[i], fields[i + 1]);
    log_fields(LOG_LEVEL_ERROR, "the sink complains", NULL);
}

Test(log, the_sink_gets_every_line_with_its_fields_and_never_its_own)
{
    log_set_sink(recording_sink);
    log_fields(LOG_LEVEL_WARN, "disk full", "path", "/var", "empty", NULL, NULL);
    cr_expect_eq(sunk, 1, "the sink's own line did not reach it again");
    cr_expect_str_eq(sunk_msg, "2 disk full");
    cr_expect_str_eq(sunk_fields, "path=/var;empty=;");
    log_fields(LOG_LEVEL_DEBUG, "below the level", NULL);
    cr_expect_eq(sunk, 1, "lines below the level are not handed over");
    log_msg(LOG_LEVEL_INFO, "n=%d", 3);
    cr_expect_eq(sunk, 2);
    cr_expect_str_eq(sunk_msg, "1 n=3");
    log_set_sink(NULL);
    log_fields(LOG_LEVEL_ERROR, "after", NULL);
    cr_expect_eq(sunk, 2);
}
