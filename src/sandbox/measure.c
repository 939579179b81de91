#include "sandbox/measure.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/encoding.h"
#include "basic/macro.h"

typedef struct entry {
    char *path; /* relative, '/'-separated */
    mode_t mode;
    bool dir;
} entry;

typedef struct listing {
    entry *entries;
    size_t n, cap;
} listing;

static int fail(measure_error *err, int e, const char *fmt, ...) _printf_(3, 4);
static int fail(measure_error *err, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    return e;
}

static void listing_free(listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->entries[i].path);
    free(l->entries);
}

static int listing_add(listing *l, char *path, const struct stat *st)
{
    if (l->n == MEASURE_MAX_ENTRIES)
        return -E2BIG;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        entry *p = realloc(l->entries, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        l->entries = p;
        l->cap = cap;
    }
    l->entries[l->n++] = (entry){path, st->st_mode & 07777, S_ISDIR(st->st_mode)};
    return 0;
}

/* Lists directory DFD (PREFIX is its relative path, "" for the top) into L,
 * without following any link. */
static int walk(int dfd, const char *prefix, unsigned depth, listing *l, measure_error *err)
{
    if (depth > MEASURE_MAX_DEPTH)
        return fail(err, -E2BIG, "%s: deeper than %d levels", prefix, MEASURE_MAX_DEPTH);
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return fail(err, negative_errno(), "%s: %s", *prefix ? prefix : ".", strerror(errno));
    }
    int r = 0;
    struct dirent *de;
    while (r == 0 && (errno = 0, de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *path = NULL;
        if (asprintf(&path, "%s%s%s", prefix, *prefix ? "/" : "", de->d_name) < 0)
            return closedir(d), -ENOMEM;
        struct stat st;
        if (strchr(de->d_name, '\n'))
            r = fail(err, -EINVAL, "%s: a path with a newline cannot be measured", path);
        else if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            r = fail(err, negative_errno(), "%s: %s", path, strerror(errno));
        else if (S_ISLNK(st.st_mode))
            r = fail(err, -ELOOP, "%s: symbolic links are not allowed in a bundle", path);
        else if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
            r = fail(err, -EINVAL, "%s: only regular files and directories are allowed in a bundle", path);
        else if ((r = listing_add(l, path, &st)) == -E2BIG)
            r = fail(err, r, "more than %d entries", MEASURE_MAX_ENTRIES);
        if (r < 0) {
            if (l->n == 0 || l->entries[l->n - 1].path != path)
                free(path);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            r = sub < 0 ? fail(err, negative_errno(), "%s: %s", path, strerror(errno)) : walk(sub, path, depth + 1, l, err);
        }
    }
    if (r == 0 && errno)
        r = fail(err, negative_errno(), "%s: %s", *prefix ? prefix : ".", strerror(errno));
    closedir(d);
    return r;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->path, ((const entry *)b)->path);
}

int sha384_file(int dfd, const char *path, bool follow, uint8_t digest[48], long long *ret_size)
{
    _cleanup_close_ int fd = openat(dfd, path, O_RDONLY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0)
        return negative_errno();
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return -ENOMEM;
    }
    uint8_t buf[65536];
    ssize_t n;
    long long total = 0;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        EVP_DigestUpdate(md, buf, (size_t)n);
        total += n;
    }
    EVP_DigestFinal_ex(md, digest, NULL);
    EVP_MD_CTX_free(md);
    if (n < 0)
        return negative_errno();
    if (ret_size)
        *ret_size = total;
    return 0;
}

int bundle_measure(const char *dir, uint8_t digest[48], measure_error *err)
{
    int top = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (top < 0)
        return fail(err, negative_errno(), "%s: %s", dir, strerror(errno));
    _cleanup_close_ int top_again = dup(top); /* walk() takes ownership of TOP */
    listing l = {0};
    int r = top_again < 0 ? -EMFILE : walk(top, "", 0, &l, err);
    if (top_again < 0)
        close(top);
    EVP_MD_CTX *md = r == 0 ? EVP_MD_CTX_new() : NULL;
    if (r == 0 && (!md || EVP_DigestInit_ex(md, EVP_sha384(), NULL) != 1))
        r = -ENOMEM;
    if (r == 0)
        qsort(l.entries, l.n, sizeof(entry), by_path);
    for (size_t i = 0; r == 0 && i < l.n; i++) {
        const entry *e = &l.entries[i];
        char line[4096 + 200], hash[97];
        uint8_t digest_bytes[48];
        long long size;
        int len;
        if (e->dir)
            len = snprintf(line, sizeof(line), "d %04o 0 - %s\n", (unsigned)e->mode, e->path);
        else if ((r = sha384_file(top_again, e->path, false, digest_bytes, &size)) < 0) {
            r = fail(err, r, "%s: %s", e->path, strerror(-r));
            break;
        } else {
            hex_encode(digest_bytes, sizeof(digest_bytes), hash);
            len = snprintf(line, sizeof(line), "f %04o %lld %s %s\n", (unsigned)e->mode, size, hash, e->path);
        }
        if (len < 0 || (size_t)len >= sizeof(line)) {
            r = fail(err, -E2BIG, "%s: path too long", e->path);
            break;
        }
        EVP_DigestUpdate(md, line, (size_t)len);
    }
    if (r == 0)
        EVP_DigestFinal_ex(md, digest, NULL);
    EVP_MD_CTX_free(md);
    listing_free(&l);
    return r;
}
