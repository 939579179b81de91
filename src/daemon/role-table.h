/* The role table's shared memory (basic/role.h): the supervisor writes
 * every entry; a role, after role_table_enter(), writes only its own
 * readiness and reads the rest. */
#pragma once

#include <stddef.h>

#include "basic/role.h"

#define ROLE_TABLE_MAX 16

/* The table is one virtual region of N entries, each two pages: the
 * supervisor's half (name, wanted, pid) from memfd FD at page I, the
 * role's flags from a memfd of its own. A flag page has its own memfd so
 * that a role growing its writable page with mremap reaches nothing but the
 * end of that file. Each memfd also has a read-only descriptor, opened
 * through /proc/self/fd: a mapping made from it can never become writable. */
typedef struct role_table {
    role_health *entries; /* N entries, shared by the supervisor and its children */
    size_t n;
    int fd, ro_fd; /* the supervisor's halves; sealed against new writable mappings */
    int flag_fd[ROLE_TABLE_MAX], flag_ro_fd[ROLE_TABLE_MAX];
} role_table;

/* Maps a table of N (at most ROLE_TABLE_MAX) zeroed entries in a sealed memfd. Returns 0 and fills
 * *RET, or a negative errno. */
int role_table_new(size_t n, role_table *ret);

/* In a freshly forked role I: maps the whole table again read-only from a
 * descriptor that cannot write (so mprotect cannot make it writable), then
 * I's own flags writable, at the same addresses, and closes both
 * descriptors. Returns 0 or a negative errno (the role must not run). */
int role_table_enter(role_table *t, size_t i);

/* Unmaps T and closes its descriptors; accepts a table never made. */
void role_table_free(role_table *t);
