/* Unix-socket set-up: see socket.h. */
#include "basic/socket.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "basic/macro.h"

int unix_listen_at(int dirfd, const char *name, uid_t owner)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dirfd, name) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return negative_errno();
    unlinkat(dirfd, name, 0);
    int e = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0 ? negative_errno() : 0;
    if (e == 0 && (fchmodat(dirfd, name, 0600, 0) < 0 ||
                   (owner != (uid_t)-1 && fchownat(dirfd, name, owner, owner, AT_SYMLINK_NOFOLLOW) < 0)))
        e = negative_errno();
    if (e < 0) {
        close(fd);
        return e;
    }
    return fd;
}

int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return negative_errno();
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = negative_errno();
        close(fd);
        return e;
    }
    return fd;
}
