#include "daemon/peer.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

int peer_check(const peer_policy *p, pid_t pid, uid_t uid, int *ret_role)
{
    if (pid <= 0) /* unknown, or in a pid namespace that hides it */
        return -ESRCH;
    size_t i = 0;
    while (i < p->n_roles && atomic_load(&p->roles[i].pid) != pid)
        i++;
    if (i == p->n_roles)
        return -ESRCH;
    bool allowed = false;
    for (size_t k = 0; k < PEER_ALLOWED_MAX && p->allowed[k] && !allowed; k++)
        allowed = strcmp(p->allowed[k], p->roles[i].name) == 0;
    if (!allowed)
        return -EACCES;
    if (uid != p->uid)
        return -EPERM;
    *ret_role = (int)i;
    return 0;
}

int peer_check_hook(const void *data, pid_t pid, uid_t uid, int *ret_peer)
{
    return peer_check(data, pid, uid, ret_peer);
}
