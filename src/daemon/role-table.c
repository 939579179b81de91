#include "daemon/role-table.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "basic/macro.h"

#define HALF ROLE_PAGE_SIZE

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* A memfd of SIZE bytes named NAME and a read-only descriptor of it (from
 * /proc/self/fd, so no mapping made from it can ever be writable). */
static int memfd_pair(const char *name, size_t size, int *ret_fd, int *ret_ro)
{
    _cleanup_close_ int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
        return negative_errno();
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int ro = open(path, O_RDONLY | O_CLOEXEC);
    if (ro < 0)
        return negative_errno();
    *ret_fd = TAKE_FD(fd);
    *ret_ro = ro;
    return 0;
}

/* Reserves SIZE bytes of address space aligned to HALF (the entries'
 * alignment), inaccessible until mapped over. */
static int reserve_aligned(size_t size, void **ret)
{
    char *raw = mmap(NULL, size + HALF, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return negative_errno();
    char *start = (char *)(((uintptr_t)raw + HALF - 1) & ~(uintptr_t)(HALF - 1));
    if (start > raw)
        munmap(raw, (size_t)(start - raw));
    munmap(start + size, (size_t)(raw + HALF - start));
    *ret = start;
    return 0;
}

static void *map_at(void *at, size_t size, int prot, int fd, off_t off)
{
    return mmap(at, size, prot, MAP_SHARED | MAP_FIXED, fd, off);
}

int role_table_new(size_t n, role_table *ret)
{
    if (n == 0 || n > ROLE_TABLE_MAX || sysconf(_SC_PAGESIZE) > HALF)
        return -EINVAL;
    role_table t = {.n = n, .fd = -1, .ro_fd = -1};
    for (size_t i = 0; i < ROLE_TABLE_MAX; i++)
        t.flag_fd[i] = t.flag_ro_fd[i] = -1;
    int r = memfd_pair("cloister-roles", n * HALF, &t.fd, &t.ro_fd);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = memfd_pair("cloister-role-flags", HALF, &t.flag_fd[i], &t.flag_ro_fd[i]);
    void *region = MAP_FAILED;
    if (r == 0)
        r = reserve_aligned(2 * n * HALF, &region);
    for (size_t i = 0; r == 0 && i < n; i++) {
        char *entry = (char *)region + 2 * i * HALF;
        if (map_at(entry, HALF, PROT_READ | PROT_WRITE, t.fd, (off_t)(i * HALF)) == MAP_FAILED ||
            map_at(entry + HALF, HALF, PROT_READ | PROT_WRITE, t.flag_fd[i], 0) == MAP_FAILED)
            r = negative_errno();
    }
    /* no writable mapping of the supervisor's halves can be made from now on,
     * nor the file resized, whoever holds a descriptor */
    if (r == 0 && fcntl(t.fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
        r = negative_errno();
    t.entries = region == MAP_FAILED ? NULL : region;
    if (r < 0) {
        role_table_free(&t);
        return r;
    }
    *ret = t;
    return 0;
}

int role_table_enter(role_table *t, size_t i)
{
    if (i >= t->n)
        return -EINVAL;
    int r = 0;
    for (size_t k = 0; r == 0 && k < t->n; k++) {
        char *entry = (char *)&t->entries[k];
        if (map_at(entry, HALF, PROT_READ, t->ro_fd, (off_t)(k * HALF)) == MAP_FAILED)
            r = negative_errno();
        else if (k != i && map_at(entry + HALF, HALF, PROT_READ, t->flag_ro_fd[k], 0) == MAP_FAILED)
            r = negative_errno();
    }
    /* the role keeps no descriptor of the table: none to map it writable with */
    for (size_t k = 0; k < t->n; k++) {
        close_fd(&t->flag_fd[k]);
        close_fd(&t->flag_ro_fd[k]);
    }
    close_fd(&t->fd);
    close_fd(&t->ro_fd);
    return r;
}

void role_table_free(role_table *t)
{
    if (t->entries)
        munmap(t->entries, 2 * t->n * HALF);
    for (size_t k = 0; k < t->n; k++) {
        close_fd(&t->flag_fd[k]);
        close_fd(&t->flag_ro_fd[k]);
    }
    close_fd(&t->fd);
    close_fd(&t->ro_fd);
    t->entries = NULL;
}
