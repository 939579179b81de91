#include "daemon/peer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "basic/log.h"

/* the roles' uids, per table index, when each has its own (0 entries: shared) */
static uid_t role_uids[PEER_ROLES_MAX];
static size_t n_role_uids;

int peer_set_role_uids(const uid_t *uids, size_t n)
{
    if (n > PEER_ROLES_MAX)
        return -E2BIG;
    memcpy(role_uids, uids, n * sizeof(*uids));
    n_role_uids = n;
    return 0;
}

/* Whether P's allow-list names role NAME. */
static bool allows(const peer_policy *p, const char *name)
{
    for (size_t k = 0; k < PEER_ALLOWED_MAX && p->allowed[k]; k++)
        if (strcmp(p->allowed[k], name) == 0)
            return true;
    return false;
}

int peer_check(const peer_policy *p, pid_t pid, uid_t uid, int *ret_role)
{
    if (pid <= 0) /* unknown, or in a pid namespace that hides it */
        return -ESRCH;
    size_t i = 0;
    while (i < p->n_roles && atomic_load(&p->roles[i].pid) != pid)
        i++;
    if (i == p->n_roles)
        return -ESRCH;
    if (!allows(p, p->roles[i].name))
        return -EACCES;
    if (n_role_uids ? i >= n_role_uids || uid != role_uids[i] : uid != p->uid)
        return -EPERM;
    *ret_role = (int)i;
    return 0;
}

int peer_check_name(const peer_policy *p, const char *name, int *ret_role)
{
    size_t i = 0;
    while (i < p->n_roles && !(p->roles[i].name && strcmp(p->roles[i].name, name) == 0))
        i++;
    if (i == p->n_roles)
        return -ESRCH;
    if (!allows(p, name))
        return -EACCES;
    *ret_role = (int)i;
    return 0;
}

int peer_check_hook(const void *data, pid_t pid, uid_t uid, int *ret_peer)
{
    const peer_policy *p = data;
    int e = peer_check(p, pid, uid, ret_peer);
    if (e < 0) {
        char pid_s[24], uid_s[24];
        snprintf(pid_s, sizeof(pid_s), "%ld", (long)pid);
        snprintf(uid_s, sizeof(uid_s), "%lu", (unsigned long)uid);
        log_fields(LOG_LEVEL_WARN, "refused a local peer", "socket", p->socket, "pid", pid_s, "uid", uid_s, "reason",
                   e == -ESRCH    ? "not a process of this daemon's roles"
                   : e == -EACCES ? "a role that may not use this socket"
                                  : "not the uid of the role its pid is",
                   NULL);
    }
    return e;
}
