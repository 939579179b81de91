#include "cli/ageio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "age/age.h"
#include "basic/macro.h"
#include "cli/cli.h"

int ageio_open_in(const char *path)
{
    if (!path || strcmp(path, "-") == 0)
        return STDIN_FILENO;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? negative_errno() : fd;
}

int ageio_out_open(ageio_out *out, const char *path)
{
    *out = (ageio_out){.fd = STDOUT_FILENO};
    if (!path || strcmp(path, "-") == 0)
        return 0;
    /* an existing non-regular file (/dev/null, a pipe) is written in place:
     * a temporary renamed over a device would replace it */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
            return negative_errno();
        out->fd = fd;
        out->direct = true;
        return 0;
    }
    char *tmp;
    if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0)
        return -ENOMEM;
    int fd = mkostemp(tmp, O_CLOEXEC); /* 0600 */
    if (fd < 0) {
        int r = negative_errno();
        free(tmp);
        return r;
    }
    char *p = strdup(path);
    if (!p) {
        unlink(tmp);
        free(tmp);
        close(fd);
        return -ENOMEM;
    }
    *out = (ageio_out){.fd = fd, .path = p, .tmp_path = tmp};
    return 0;
}

int ageio_out_finish(ageio_out *out, bool success)
{
    int r = 0;
    if (out->direct) {
        if (close(out->fd) < 0)
            r = negative_errno();
        *out = (ageio_out){.fd = -1};
        return r;
    }
    if (!out->path)
        return 0;
    if (success && fsync(out->fd) < 0)
        r = negative_errno();
    if (close(out->fd) < 0 && r == 0)
        r = negative_errno();
    if (success && r == 0 && rename(out->tmp_path, out->path) < 0)
        r = negative_errno();
    if (!success || r < 0)
        unlink(out->tmp_path);
    if (success && r == 0) {
        /* the rename itself durable */
        _cleanup_free_ char *copy = strdup(out->path);
        int dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    free(out->path);
    free(out->tmp_path);
    *out = (ageio_out){.fd = -1};
    return r;
}

int ageio_run(const char *in_path, const char *out_path, const ageio_keys *k)
{
    const char *verb = k->recipients ? "encrypt" : "decrypt";
    int in = ageio_open_in(in_path);
    if (in < 0)
        return cli_error("cannot open %s: %s", in_path, strerror(-in));
    ageio_out out;
    int r = ageio_out_open(&out, out_path);
    if (r < 0) {
        if (in != STDIN_FILENO)
            close(in);
        return cli_error("cannot create a temporary beside %s: %s", out_path, strerror(-r));
    }
    r = k->recipients ? age_encrypt(k->recipients, k->n, age_fd_read, &in, age_fd_write, &out.fd)
                      : age_decrypt(k->identities, k->n, age_fd_read, &in, age_fd_write, &out.fd);
    if (in != STDIN_FILENO)
        close(in);
    bool direct = out.direct;
    int f = ageio_out_finish(&out, r == 0);
    if (r < 0)
        return cli_error("cannot %s %s: %s%s", verb, in_path ? in_path : "stdin", age_strerror(r),
                         out_path && !direct ? "; nothing was written" : "");
    if (f < 0)
        return cli_error("cannot write %s: %s", out_path, strerror(-f));
    return CLI_EXIT_OK;
}
