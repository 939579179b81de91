#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob/blob.h"

/* SHA-256("hello world") */
#define HELLO_HEX "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"

static char dir[64];
static blob_store *bs;

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test-blob-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(blob_store_open(dir, &bs), 0);
}

static void teardown(void)
{
    blob_store_free(bs);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(blob, .init = setup, .fini = teardown);

Test(blob, parts_commit_and_read_back)
{
    uint64_t size;
    cr_assert_eq(blob_upload_write(bs, "u1", 0, "hello", 5, &size), 0);
    cr_assert_eq(size, 5);
    cr_assert_eq(blob_upload_write(bs, "u1", 5, " world", 6, &size), 0);
    cr_assert_eq(size, 11);
    cr_assert_eq(blob_upload_size(bs, "u1", &size), 0);
    cr_assert_eq(size, 11);
    cr_assert_eq(blob_upload_commit(bs, "u1", HELLO_HEX, 11), 0);
    cr_assert_eq(blob_upload_size(bs, "u1", &size), 0);
    cr_assert_eq(size, 0, "the upload is gone once published");
    int fd;
    cr_assert_eq(blob_open(bs, HELLO_HEX, &fd, &size), 0);
    char buf[16] = "";
    cr_assert_eq(read(fd, buf, sizeof(buf)), 11);
    cr_assert_str_eq(buf, "hello world");
    close(fd);
    cr_assert_eq(blob_delete(bs, HELLO_HEX), 0);
    cr_assert_eq(blob_open(bs, HELLO_HEX, &fd, &size), -ENOENT);
    cr_assert_eq(blob_delete(bs, HELLO_HEX), 0, "deleting an absent blob is no error");
}

Test(blob, restart_from_an_acknowledged_offset)
{
    uint64_t size;
    cr_assert_eq(blob_upload_write(bs, "u2", 0, "hello XXXXX", 11, &size), 0);
    /* the second part is sent again from offset 5: what followed is replaced */
    cr_assert_eq(blob_upload_write(bs, "u2", 5, " world", 6, &size), 0);
    cr_assert_eq(blob_upload_commit(bs, "u2", HELLO_HEX, 11), 0);
    /* a gap is refused, nothing written */
    cr_assert_eq(blob_upload_write(bs, "u3", 4, "x", 1, &size), -ERANGE);
    cr_assert_eq(blob_upload_size(bs, "u3", &size), 0);
    cr_assert_eq(size, 0);
}

Test(blob, a_wrong_hash_or_size_publishes_nothing)
{
    uint64_t size;
    int fd;
    cr_assert_eq(blob_upload_write(bs, "u4", 0, "hello world", 11, &size), 0);
    cr_assert_eq(blob_upload_commit(bs, "u4", HELLO_HEX, 12), -EBADMSG);
    cr_assert_eq(blob_open(bs, HELLO_HEX, &fd, &size), -ENOENT);
    cr_assert_eq(blob_upload_commit(bs, "u4", HELLO_HEX, 11), -ENOENT, "a refused upload starts again");
    cr_assert_eq(blob_upload_write(bs, "u5", 0, "hello world!", 12, &size), 0);
    cr_assert_eq(blob_upload_commit(bs, "u5", HELLO_HEX, 12), -EBADMSG);
    cr_assert_eq(blob_open(bs, HELLO_HEX, &fd, &size), -ENOENT);
}

Test(blob, names_are_checked)
{
    uint64_t size;
    int fd;
    cr_assert_eq(blob_upload_write(bs, "../x", 0, "a", 1, &size), -EINVAL);
    cr_assert_eq(blob_upload_write(bs, "", 0, "a", 1, &size), -EINVAL);
    cr_assert_eq(blob_open(bs, "../sha256", &fd, &size), -EINVAL);
    cr_assert_eq(blob_open(bs, "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9", &fd, &size), -EINVAL);
    cr_assert_eq(blob_upload_write(bs, "u6", BLOB_SIZE_MAX, "a", 1, &size), -EFBIG);
}
