/* File helpers: capped reads and durable atomic writes. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Reads the whole file at PATH, at most MAX bytes, into a NUL-terminated heap
 * buffer the caller frees. -EFBIG when larger, negative errno otherwise. */
int read_file(const char *path, size_t max, char **ret_data, size_t *ret_len);
/* Reads a private file as read_file() does, refusing with -EPERM one that is
 * not a regular file (symbolic links are not followed) owned by OWNER with
 * no permission for group or others. */
int read_private_file(const char *path, uid_t owner, size_t max, char **ret_data, size_t *ret_len);
/* Reads all of FD (at most MAX bytes); same ownership as read_file. */
int read_fd(int fd, size_t max, char **ret_data, size_t *ret_len);
/* Writes all LEN bytes at P to FD, again after EINTR. Returns 0 or a
 * negative errno (-EIO when the file takes nothing). */
int fd_write_all(int fd, const void *p, size_t len);
/* Reads exactly LEN bytes of FD at OFFSET into BUF, again after EINTR and
 * short reads. Returns 0 or a negative errno (-EIO when the file ends
 * before them). */
int fd_pread_all(int fd, void *buf, size_t len, uint64_t offset);
/* Writes DATA to PATH through a temporary file, fsync and rename, with MODE,
 * then fsyncs the directory: the file is either old or new after a crash. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* Creates DIR and its parents with MODE; existing directories are fine. */
int mkdir_p(const char *dir, mode_t mode);
/* Fills BUF with N bytes from the kernel CSPRNG. */
int random_bytes(void *buf, size_t n);
