#include "basic/fileio.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <stdint.h>
#include <sys/stat.h>

#include "basic/macro.h"
#include "basic/strbuf.h"

int read_fd(int fd, size_t max, char **ret_data, size_t *ret_len)
{
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, max);
    char chunk[16384];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return negative_errno();
        }
        if (n == 0)
            break;
        int r = strbuf_append(&b, chunk, (size_t)n);
        if (r == -E2BIG)
            return -EFBIG;
        if (r < 0)
            return r;
    }
    *ret_len = b.len;
    *ret_data = strbuf_steal(&b);
    return *ret_data ? 0 : -ENOMEM;
}

int read_private_file(const char *path, uid_t owner, size_t max, char **ret_data, size_t *ret_len)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return negative_errno();
    struct stat st;
    if (fstat(fd, &st) < 0)
        return negative_errno();
    if (!S_ISREG(st.st_mode) || st.st_uid != owner || (st.st_mode & 077))
        return -EPERM;
    return read_fd(fd, max, ret_data, ret_len);
}

int read_file(const char *path, size_t max, char **ret_data, size_t *ret_len)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return negative_errno();
    return read_fd(fd, max, ret_data, ret_len);
}

static int fsync_parent_dir(const char *path)
{
    char copy[PATH_MAX];
    if (strlen(path) >= sizeof(copy))
        return -ENAMETOOLONG;
    strcpy(copy, path);
    _cleanup_close_ int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return negative_errno();
    return fsync(dfd) < 0 ? negative_errno() : 0;
}

int fd_write_all(int fd, const void *p, size_t len)
{
    const char *b = p;
    while (len) {
        ssize_t w = write(fd, b, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? negative_errno() : -EIO;
        b += w;
        len -= (size_t)w;
    }
    return 0;
}

int fd_pread_all(int fd, void *buf, size_t len, uint64_t offset)
{
    char *b = buf;
    while (len) {
        ssize_t n = pread(fd, b, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? negative_errno() : -EIO;
        b += n;
        offset += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= sizeof(tmp))
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return negative_errno();
    int r = fd_write_all(fd, data, len);
    if (r == 0 && fchmod(fd, mode) < 0)
        r = negative_errno();
    if (r == 0 && fsync(fd) < 0)
        r = negative_errno();
    close(fd);
    if (r == 0 && rename(tmp, path) < 0)
        r = negative_errno();
    if (r < 0) {
        unlink(tmp);
        return r;
    }
    return fsync_parent_dir(path);
}

int mkdir_p(const char *dir, mode_t mode)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(path))
        return -EINVAL;
    memcpy(path, dir, n + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(path, mode) < 0 && errno != EEXIST)
            return negative_errno();
        *p = '/';
    }
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return negative_errno();
    return 0;
}

int random_bytes(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return negative_errno();
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}
