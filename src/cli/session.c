#include "cli/session.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/macro.h"

/* The configuration directory: $XDG_CONFIG_HOME when absolute, else
 * $HOME/.config, else the password database's home. */
static int config_home(char **ret)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    char *p;
    if (xdg && xdg[0] == '/')
        p = strdup(xdg);
    else {
        const char *home = getenv("HOME");
        if (!home || home[0] != '/') {
            struct passwd *pw = getpwuid(getuid());
            home = pw ? pw->pw_dir : NULL;
        }
        if (!home || home[0] != '/')
            return -ENOENT;
        if (asprintf(&p, "%s/.config", home) < 0)
            p = NULL;
    }
    if (!p)
        return -ENOMEM;
    *ret = p;
    return 0;
}

/* The session directory, $CONFIG/cloister, as a heap string. */
int session_dir(char **ret)
{
    _cleanup_free_ char *home = NULL;
    int r = config_home(&home);
    if (r < 0)
        return r;
    char *p;
    if (asprintf(&p, "%s/cloister", home) < 0)
        return -ENOMEM;
    *ret = p;
    return 0;
}

int session_path(char **ret_path)
{
    _cleanup_free_ char *dir = NULL;
    int r = session_dir(&dir);
    if (r < 0)
        return r;
    char *p;
    if (asprintf(&p, "%s/session.json", dir) < 0)
        return -ENOMEM;
    *ret_path = p;
    return 0;
}

/* Wipes and frees the heap string *P; accepts NULL. */
static void free_secret(char **p)
{
    if (*p) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

void session_done(cli_session *s)
{
    free_secret(&s->token);
    free_secret(&s->access_token);
    free_secret(&s->refresh_token);
    free(s->session_id);
    free(s->server);
    free(s->ca);
    *s = (cli_session){};
}

/* A copy of the string member KEY of O; NULL members give NULL when
 * OPTIONAL. Returns 0, -EINVAL or -ENOMEM. */
static int take_string(const json_t *o, const char *key, bool optional, char **ret)
{
    const json_t *v = json_object_get(o, key);
    if ((!v || json_is_null(v)) && optional) {
        *ret = NULL;
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v))
        return -EINVAL;
    char *copy = strdup(json_string_value(v));
    if (!copy)
        return -ENOMEM;
    *ret = copy;
    return 0;
}

int session_load(cli_session *ret)
{
    _cleanup_free_ char *path = NULL;
    int r = session_path(&path);
    if (r < 0)
        return r;
    char *data = NULL;
    size_t len;
    r = read_private_file(path, getuid(), SESSION_MAX_SIZE, &data, &len);
    if (r < 0)
        return r == -EFBIG ? -EINVAL : r;
    json_auto_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    explicit_bzero(data, len);
    free(data);
    if (!json_is_object(v))
        return -EINVAL;
    _cleanup_(session_done) cli_session s = {};
    r = take_string(v, "server", false, &s.server);
    if (r == 0)
        r = take_string(v, "ca", true, &s.ca);
    if (r == 0)
        r = take_string(v, "token", true, &s.token);
    if (r == 0)
        r = take_string(v, "access_token", true, &s.access_token);
    if (r == 0)
        r = take_string(v, "refresh_token", true, &s.refresh_token);
    if (r == 0)
        r = take_string(v, "session", true, &s.session_id);
    if (r == 0 && !s.token && !s.access_token)
        r = -EINVAL;
    if (r < 0)
        return r;
    *ret = s;
    s = (cli_session){};
    return 0;
}

int session_save(const cli_session *s)
{
    _cleanup_free_ char *home = NULL, *dir = NULL, *path = NULL;
    int r = config_home(&home);
    if (r == 0)
        r = session_dir(&dir);
    if (r == 0)
        r = session_path(&path);
    if (r < 0)
        return r;
    r = mkdir_p(home, 0700);
    if (r < 0)
        return r;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return negative_errno();
    /* The directory is ours alone, even if it existed with a wider mode. */
    struct stat st;
    if (lstat(dir, &st) < 0)
        return negative_errno();
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid())
        return -EPERM;
    if ((st.st_mode & 07777) != 0700 && chmod(dir, 0700) < 0)
        return negative_errno();

    json_auto_t *v = json_pack("{s:s,s:s?}", "server", s->server, "ca", s->ca);
    if (!v)
        return -ENOMEM;
    const char *const fields[][2] = {{"token", s->token},
                                     {"access_token", s->access_token},
                                     {"refresh_token", s->refresh_token},
                                     {"session", s->session_id}};
    for (size_t i = 0; i < ELEMENTSOF(fields); i++)
        if (fields[i][1] && json_object_set_new(v, fields[i][0], json_string(fields[i][1])) < 0)
            return -ENOMEM;
    char *text = json_dumps(v, JSON_INDENT(2));
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    r = write_file_atomic(path, text, n, 0600);
    explicit_bzero(text, n);
    free(text);
    return r;
}

int session_lock(void)
{
    _cleanup_free_ char *home = NULL, *dir = NULL, *path = NULL;
    int r = config_home(&home);
    if (r == 0)
        r = session_dir(&dir);
    if (r < 0)
        return r;
    if (asprintf(&path, "%s/session.lock", dir) < 0)
        return -ENOMEM;
    if ((r = mkdir_p(home, 0700)) < 0)
        return r;
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return negative_errno();
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return negative_errno();
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            r = negative_errno();
            close(fd);
            return r;
        }
    }
    return fd;
}

int session_remove(void)
{
    _cleanup_free_ char *path = NULL;
    int r = session_path(&path);
    if (r < 0)
        return r;
    return unlink(path) < 0 ? negative_errno() : 0;
}
