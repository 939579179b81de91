/* Who is at the other end of a role's local socket. Every role runs under
 * the daemon's uid today, so a peer is identified by its process: the pid
 * SO_PEERCRED reports must be the current pid of a role the supervisor
 * started (published in the shared role table), and its uid the daemon's.
 * When roles get their own uids, the uid check becomes per role here, and
 * only here. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

#include "basic/role.h"

#define PEER_ALLOWED_MAX 8

/* What the pid proves today: the table is writable by the roles (they set
 * their readiness) and at one uid any role can ptrace another, so it tells
 * the roles from every other process of that uid, not one role from a
 * compromised other. When roles get their own uids, the uid check is what
 * holds, and the table can be made read-only for them. */

typedef struct peer_policy {
    const char *socket;       /* in logs: "kms.sock" */
    const role_health *roles; /* the supervisor's table, shared memory */
    size_t n_roles;
    uid_t uid; /* the uid every role runs as */
    /* names of the roles that may connect, NULL-terminated */
    const char *allowed[PEER_ALLOWED_MAX];
} peer_policy;

/* Decides on a peer with PID and UID under P. Returns 0 and the peer's
 * index in the role table in *RET_ROLE when it is a running role that P
 * allows and runs as P's uid; -ESRCH when PID is no running role's,
 * -EACCES when it is a role P does not allow, -EPERM when its uid is not
 * the roles' uid. Reads the table's pids atomically; never blocks. */
int peer_check(const peer_policy *p, pid_t pid, uid_t uid, int *ret_role);

/* peer_check() in the shape of httpd_config's check_peer hook, DATA being
 * a peer_policy; logs each refusal ("refused a local peer", with the
 * socket, the peer's pid and uid, and why). */
int peer_check_hook(const void *data, pid_t pid, uid_t uid, int *ret_peer);
