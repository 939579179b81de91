/* Unix-socket set-up shared by the runner (the agent channel, the egress
 * socket) and the agent (its tunnels to the runner). */
#pragma once

#include <sys/types.h>

/* Listens on the Unix socket NAME in the directory DIRFD, reached through
 * /proc/self/fd so that long data-dir paths fit in sun_path: an old socket
 * of that name is removed first; non-blocking, close-on-exec, backlog 64,
 * mode 0600, owned by OWNER (-1: unchanged). Returns the fd (the caller's)
 * or a negative errno, leaving no fd open. */
int unix_listen_at(int dirfd, const char *name, uid_t owner);

/* Connects a blocking, close-on-exec stream socket to the Unix socket at
 * PATH (at most sun_path's 107 bytes). Returns the fd (the caller's) or a
 * negative errno (-ENAMETOOLONG for a longer PATH). */
int unix_connect(const char *path);
