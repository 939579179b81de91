#include "blob/blob.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/macro.h"

#define HASH_BUFFER (1024 * 1024)

struct blob_store {
    char *dir;
};

/* DIR/SUB, or DIR/SUB/NAME when NAME is set, into OUT (PATH_MAX). */
static int path_of(const blob_store *bs, const char *sub, const char *name, char out[static PATH_MAX])
{
    int n = name ? snprintf(out, PATH_MAX, "%s/%s/%s", bs->dir, sub, name) : snprintf(out, PATH_MAX, "%s/%s", bs->dir, sub);
    return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* DIR/SUB/NAME into OUT for an object of SUB: an upload id under
 * "uploads", a hex SHA-256 under "sha256". -EINVAL for a NAME that is not one. */
static int object_path(const blob_store *bs, const char *sub, const char *name, char out[static PATH_MAX])
{
    bool valid = strcmp(sub, "uploads") == 0 ? blob_id_valid(name) : blob_hex_valid(name);
    return valid ? path_of(bs, sub, name, out) : -EINVAL;
}

/* fsyncs directory DIR/SUB so that a rename or unlink in it is durable. */
static int sync_dir(const blob_store *bs, const char *sub)
{
    char path[PATH_MAX];
    int r = path_of(bs, sub, NULL, path);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 || fsync(fd) < 0 ? negative_errno() : 0;
}

int blob_store_open(const char *dir, blob_store **ret)
{
    _cleanup_free_ blob_store *bs = calloc(1, sizeof(*bs));
    if (!bs || !(bs->dir = strdup(dir)))
        return -ENOMEM;
    char path[PATH_MAX];
    static const char *const subs[] = {"sha256", "uploads"};
    for (size_t i = 0; i < ELEMENTSOF(subs); i++) {
        int r = path_of(bs, subs[i], NULL, path);
        if (r < 0 || (r = mkdir_p(path, 0700)) < 0) {
            free(bs->dir);
            return r;
        }
    }
    *ret = TAKE_PTR(bs);
    return 0;
}

void blob_store_free(blob_store *bs)
{
    if (!bs)
        return;
    free(bs->dir);
    free(bs);
}

bool blob_hex_valid(const char *hex)
{
    size_t n = 0;
    for (; hex[n]; n++)
        if (!((hex[n] >= '0' && hex[n] <= '9') || (hex[n] >= 'a' && hex[n] <= 'f')))
            return false;
    return n == BLOB_HEX_LEN;
}

bool blob_id_valid(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++) {
        char c = id[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_'))
            return false;
    }
    return n > 0 && n <= BLOB_ID_MAX;
}

int blob_upload_size(blob_store *bs, const char *id, uint64_t *ret)
{
    char path[PATH_MAX];
    struct stat st;
    int r = object_path(bs, "uploads", id, path);
    if (r < 0)
        return r;
    if (stat(path, &st) < 0) {
        if (errno != ENOENT)
            return negative_errno();
        st.st_size = 0;
    }
    *ret = (uint64_t)st.st_size;
    return 0;
}

/* Opens upload ID (FLAGS: O_CREAT or 0) locked for this caller alone. */
static int open_upload(blob_store *bs, const char *id, int flags, int *ret_fd)
{
    char path[PATH_MAX];
    int r = object_path(bs, "uploads", id, path);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | flags, 0600);
    if (fd < 0)
        return negative_errno();
    if (flock(fd, LOCK_EX | LOCK_NB) < 0)
        return errno == EWOULDBLOCK ? -EBUSY : negative_errno();
    *ret_fd = TAKE_FD(fd);
    return 0;
}

int blob_upload_write(blob_store *bs, const char *id, uint64_t offset, const void *data, size_t n,
                      uint64_t *ret_size)
{
    if (offset > BLOB_SIZE_MAX || n > BLOB_SIZE_MAX - offset)
        return -EFBIG;
    _cleanup_close_ int fd = -1;
    int r = open_upload(bs, id, O_CREAT, &fd);
    if (r < 0)
        return r;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return negative_errno();
    if (offset > (uint64_t)st.st_size)
        return -ERANGE;
    if (ftruncate(fd, (off_t)offset) < 0)
        return negative_errno();
    const uint8_t *p = data;
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(fd, p + done, n - done, (off_t)(offset + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? negative_errno() : -EIO;
        done += (size_t)w;
    }
    if (fdatasync(fd) < 0)
        return negative_errno();
    if (offset == 0 && (r = sync_dir(bs, "uploads")) < 0)
        return r;
    *ret_size = offset + n;
    return 0;
}

/* The SHA-256 of what FD holds from its start, as hex into HEX, its size into *RET_SIZE. */
static int hash_fd(int fd, char hex[static BLOB_HEX_LEN + 1], uint64_t *ret_size)
{
    _cleanup_free_ uint8_t *buf = malloc(HASH_BUFFER);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint64_t size = 0;
    int r = buf && md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
    while (r == 0) {
        ssize_t n = pread(fd, buf, HASH_BUFFER, (off_t)size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            r = negative_errno();
        else if (n == 0)
            break;
        else if (EVP_DigestUpdate(md, buf, (size_t)n) != 1)
            r = -EIO;
        else
            size += (uint64_t)n;
    }
    uint8_t digest[32];
    if (r == 0 && EVP_DigestFinal_ex(md, digest, NULL) != 1)
        r = -EIO;
    EVP_MD_CTX_free(md);
    if (r < 0)
        return r;
    for (size_t i = 0; i < sizeof(digest); i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    *ret_size = size;
    return 0;
}

int blob_upload_commit(blob_store *bs, const char *id, const char *hex, uint64_t size)
{
    if (!blob_hex_valid(hex))
        return -EINVAL;
    _cleanup_close_ int fd = -1;
    int r = open_upload(bs, id, 0, &fd);
    if (r < 0)
        return r;
    char got[BLOB_HEX_LEN + 1], from[PATH_MAX], to[PATH_MAX];
    uint64_t got_size;
    if ((r = hash_fd(fd, got, &got_size)) < 0 || (r = path_of(bs, "uploads", id, from)) < 0 ||
        (r = path_of(bs, "sha256", hex, to)) < 0)
        return r;
    if (got_size != size || strcmp(got, hex) != 0) {
        unlink(from);
        return -EBADMSG;
    }
    if (fsync(fd) < 0 || fchmod(fd, 0400) < 0 || rename(from, to) < 0)
        return negative_errno();
    if ((r = sync_dir(bs, "sha256")) < 0)
        return r;
    return sync_dir(bs, "uploads");
}

int blob_upload_abort(blob_store *bs, const char *id)
{
    char path[PATH_MAX];
    int r = object_path(bs, "uploads", id, path);
    if (r < 0)
        return r;
    return unlink(path) < 0 && errno != ENOENT ? negative_errno() : 0;
}

int blob_open(blob_store *bs, const char *hex, int *ret_fd, uint64_t *ret_size)
{
    char path[PATH_MAX];
    int r = object_path(bs, "sha256", hex, path);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return negative_errno();
    *ret_size = (uint64_t)st.st_size;
    *ret_fd = TAKE_FD(fd);
    return 0;
}

int blob_delete(blob_store *bs, const char *hex)
{
    char path[PATH_MAX];
    int r = object_path(bs, "sha256", hex, path);
    if (r < 0)
        return r;
    if (unlink(path) < 0)
        return errno == ENOENT ? 0 : negative_errno();
    return sync_dir(bs, "sha256");
}
