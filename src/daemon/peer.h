/* Who is at the other end of a role's local socket: the pid SO_PEERCRED
 * reports must be the current pid of a role the supervisor started
 * (published in the shared role table), and its uid that role's own uid
 * when the roles run as their own users (started as root: daemon/privsep.h),
 * or the daemon's uid when they all share it (an ordinary user's start). */
#pragma once

#include <stddef.h>
#include <sys/types.h>

#include "basic/role.h"

#define PEER_ALLOWED_MAX 8

/* What the pid proves: no role can write the table's pids (they are mapped
 * read-only in every role, daemon/role-table.h), so a pid tells a role from
 * other processes. With a uid per role the uid holds too: it comes from
 * SO_PEERCRED and is compared with a copy of the roles' uids in the
 * checking role's own memory (peer_set_role_uids). */

typedef struct peer_policy {
    const char *socket;       /* in logs: "kms.sock" */
    const role_health *roles; /* the supervisor's table, shared memory */
    size_t n_roles;
    uid_t uid; /* the uid every role runs as when they share one */
    /* names of the roles that may connect, NULL-terminated */
    const char *allowed[PEER_ALLOWED_MAX];
} peer_policy;

/* Decides on a peer with PID and UID under P. Returns 0 and the peer's
 * index in the role table in *RET_ROLE when it is a running role that P
 * allows and runs as its role's uid (or P's, when the roles share one);
 * -ESRCH when PID is no running role's, -EACCES when it is a role P does
 * not allow, -EPERM when its uid is not the role's. Reads the table's pids atomically; never blocks. */
int peer_check(const peer_policy *p, pid_t pid, uid_t uid, int *ret_role);

/* Decides on a peer known by its role's NAME (a role certificate's, over
 * mutual TLS: daemon/peer-tls.h) under P's allow-list. Returns 0 and the
 * role's index in the table in *RET_ROLE; -ESRCH when NAME is no role of the
 * table, -EACCES when P does not allow it. */
int peer_check_name(const peer_policy *p, const char *name, int *ret_role);

/* Records in this process that role I of the table runs as UIDS[I] (N
 * entries, at most PEER_ROLES_MAX): from then on peer_check() requires a
 * peer's uid to be its role's, not the policy's shared uid. Called by the
 * supervisor's fork path before the role runs. Returns 0, or -E2BIG. */
#define PEER_ROLES_MAX 16
int peer_set_role_uids(const uid_t *uids, size_t n);

/* peer_check() in the shape of httpd_config's check_peer hook, DATA being
 * a peer_policy; logs each refusal ("refused a local peer", with the
 * socket, the peer's pid and uid, and why). */
int peer_check_hook(const void *data, pid_t pid, uid_t uid, int *ret_peer);
