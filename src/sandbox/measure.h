/* The measurement of a workload bundle (its PCR0): SHA-384 over a canonical
 * listing of the bundle directory, one line per entry, sorted by path
 * (bytewise), paths relative to the bundle with '/' separators:
 *
 *     d <mode> 0 - <path>\n                  a directory
 *     f <mode> <size> <sha384 hex> <path>\n  a regular file
 *
 * <mode> is the permission bits as four octal digits (stat -c %04a). The
 * bundle's own directory is not listed. Symbolic links, devices, sockets,
 * FIFOs and paths containing a newline are refused, so a bundle cannot point
 * outside itself. docs/enclaves.md shows how to recompute it with find,
 * stat and sha384sum. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEASURE_MAX_ENTRIES 100000
#define MEASURE_MAX_DEPTH 32

typedef struct measure_error {
    char text[512];
} measure_error;

/* Measures the bundle at DIR into DIGEST. Returns 0, or a negative errno
 * with ERR naming the offending path: -ELOOP (a symlink), -EINVAL (another
 * refused entry), -E2BIG (too many entries or too deep), or an I/O error. */
int bundle_measure(const char *dir, uint8_t digest[48], measure_error *err);

/* SHA-384 of the file PATH (relative to DFD, or AT_FDCWD) into DIGEST and
 * the number of bytes hashed into *RET_SIZE (may be NULL). A symbolic link
 * is refused (-ELOOP) unless FOLLOW. Returns 0 or a negative errno. */
int sha384_file(int dfd, const char *path, bool follow, uint8_t digest[48], long long *ret_size);
