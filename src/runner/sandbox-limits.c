/* Resource limits of the runner's sandboxes: see sandbox-limits.h. */
#include "runner/sandbox-limits.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"

#define CGROUP_FILE_MAX 4096
#define TREE_PROCESSES_MAX 4096
#define SANDBOXES_DIR "cloister-sandboxes"

struct runner_limits {
    limits_mechanism mechanism;
    char base[4096]; /* cgroup2: the directory the sandboxes' cgroups are made in */
};

const char *runner_limits_mechanism_name(limits_mechanism m)
{
    return m == LIMITS_CGROUP2 ? "cgroup2" : "rlimit";
}

limits_mechanism runner_limits_mechanism(const runner_limits *l)
{
    return l->mechanism;
}

/* Writes TEXT to DIR/FILE. Returns 0 or a negative errno. */
static int write_at(const char *dir, const char *file, const char *text)
{
    char path[4200];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return negative_errno();
    ssize_t n = write(fd, text, strlen(text));
    int e = n == (ssize_t)strlen(text) ? 0 : n < 0 ? negative_errno() : -EIO;
    close(fd);
    return e;
}

/* Reads DIR/FILE (small) into a heap string *RET. Returns 0 or a negative errno. */
static int read_at(const char *dir, const char *file, char **ret)
{
    char path[4200];
    size_t len;
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    return read_file(path, CGROUP_FILE_MAX, ret, &len);
}

/* Whether the whitespace-separated LIST names WORD. */
static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)); p += n)
        if ((p == list || p[-1] == ' ' || p[-1] == '\n') && (p[n] == ' ' || p[n] == '\n' || p[n] == 0))
            return true;
    return false;
}

/* The cgroup2 directory of this process: the cgroup2 mount (from
 * /proc/self/mountinfo) joined with its "0::" line of /proc/self/cgroup. */
static int own_cgroup(char *out, size_t size)
{
    _cleanup_free_ char *cg = NULL, *mi = NULL;
    size_t len;
    int r = read_file("/proc/self/cgroup", 64 * 1024, &cg, &len);
    if (r < 0)
        return r;
    const char *line = strncmp(cg, "0::", 3) == 0 ? cg : strstr(cg, "\n0::");
    if (!line)
        return -ENOENT;
    line += line == cg ? 3 : 4;
    size_t path_len = strcspn(line, "\n");
    r = read_file("/proc/self/mountinfo", 1024 * 1024, &mi, &len);
    if (r < 0)
        return r;
    /* "<id> <parent> <dev> <root> <mount point> <options> ... - cgroup2 <source> <super options>" */
    for (char *save = NULL, *l = strtok_r(mi, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char root[256], point[4096];
        const char *dash = strstr(l, " - cgroup2 ");
        if (!dash || sscanf(l, "%*s %*s %*s %255s %4095s", root, point) != 2 || strcmp(root, "/") != 0)
            continue;
        if ((size_t)snprintf(out, size, "%s%.*s", point, (int)path_len, line) >= size)
            return -ENAMETOOLONG;
        return 0;
    }
    return -ENOENT;
}

/* Whether sandboxes' cgroups can be made under BASE: the memory and pids
 * controllers are given to its children, and a probe child has them. On
 * failure WHY says what was missing. */
static int probe(const char *base, char *why, size_t size)
{
    _cleanup_free_ char *controllers = NULL;
    int r = read_at(base, "cgroup.controllers", &controllers);
    if (r < 0 || !has_word(controllers, "memory") || !has_word(controllers, "pids")) {
        snprintf(why, size, "%s lacks the memory and pids controllers (%s)", base,
                 r < 0 ? strerror(-r) : "its parent does not delegate them");
        return r < 0 ? r : -EOPNOTSUPP;
    }
    r = write_at(base, "cgroup.subtree_control", "+memory +pids");
    if (r < 0) {
        snprintf(why, size, "cannot enable memory and pids for the children of %s: %s", base, strerror(-r));
        return r;
    }
    char probe[4200];
    snprintf(probe, sizeof(probe), "%s/probe-%d", base, (int)getpid());
    if (mkdir(probe, 0755) < 0 && errno != EEXIST) {
        r = negative_errno();
        snprintf(why, size, "cannot make a cgroup under %s: %s", base, strerror(-r));
        return r;
    }
    r = write_at(probe, "memory.max", "max");
    if (r == 0)
        r = write_at(probe, "pids.max", "max");
    rmdir(probe);
    if (r < 0)
        snprintf(why, size, "cannot set the limits of a cgroup under %s: %s", base, strerror(-r));
    return r;
}

/* probe() on BASE, made when missing (and removed again when it was made
 * for nothing). */
static int probe_cgroup2(const char *base, char *why, size_t size)
{
    bool made = mkdir(base, 0755) == 0;
    if (!made && errno != EEXIST) {
        int e = negative_errno();
        snprintf(why, size, "cannot make %s: %s", base, strerror(-e));
        return e;
    }
    int r = probe(base, why, size);
    if (r < 0 && made)
        rmdir(base);
    return r;
}

int runner_limits_new(const char *configured, runner_limits **ret)
{
    runner_limits *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    char why[8400] = "", own[4096]; /* why names up to two cgroup paths */
    int r = 0;
    if (configured && configured[0])
        snprintf(l->base, sizeof(l->base), "%s", configured);
    else if ((r = own_cgroup(own, sizeof(own))) < 0)
        snprintf(why, sizeof(why), "no cgroup v2 hierarchy holds this process (%s)", strerror(-r));
    else {
        /* beside the runner's own leaf: a cgroup with processes cannot give controllers to children */
        char *slash = strrchr(own, '/');
        if (slash)
            *slash = 0;
        if ((size_t)snprintf(l->base, sizeof(l->base), "%s/" SANDBOXES_DIR, own) >= sizeof(l->base))
            r = -ENAMETOOLONG;
    }
    if (r == 0 && probe_cgroup2(l->base, why, sizeof(why)) == 0) {
        l->mechanism = LIMITS_CGROUP2;
        log_fields(LOG_LEVEL_INFO, "sandbox limits: cgroup v2", "cgroup", l->base, NULL);
    } else {
        l->mechanism = LIMITS_RLIMIT;
        l->base[0] = 0;
        log_fields(LOG_LEVEL_INFO, "sandbox limits: rlimits (RLIMIT_AS, RLIMIT_NPROC) and the runner's watch of "
                   "resident memory; set runner.cgroup to a delegated cgroup v2 directory for cgroup limits",
                   "reason", why, NULL);
    }
    *ret = l;
    return 0;
}

void runner_limits_free(runner_limits *l)
{
    free(l);
}

/* The cgroup directory of sandbox NAME. */
static int sandbox_cgroup(const runner_limits *l, const char *name, char *out, size_t size)
{
    return (size_t)snprintf(out, size, "%s/%s", l->base, name) >= size ? -ENAMETOOLONG : 0;
}

int runner_limits_prepare(runner_limits *l, const char *name, uint64_t memory_bytes, uint64_t pids, char *path,
                          size_t size)
{
    char dir[4200], value[32];
    if (l->mechanism != LIMITS_CGROUP2) {
        if (size)
            path[0] = 0;
        return 0;
    }
    int r = sandbox_cgroup(l, name, dir, sizeof(dir));
    if (r < 0)
        return r;
    if (strlen(dir) >= size)
        return -ENAMETOOLONG;
    /* a sandbox of that name may have left it behind, its last processes
     * still exiting: it is used again (runner_limits_oom_kills() counts on) */
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return negative_errno();
    if (memory_bytes)
        snprintf(value, sizeof(value), "%" PRIu64, memory_bytes);
    r = write_at(dir, "memory.max", memory_bytes ? value : "max");
    if (r == 0)
        (void)write_at(dir, "memory.swap.max", "0"); /* absent without swap accounting */
    if (r == 0)
        r = write_at(dir, "memory.oom.group", "1");
    if (r == 0) {
        if (pids)
            snprintf(value, sizeof(value), "%" PRIu64, pids);
        r = write_at(dir, "pids.max", pids ? value : "max");
    }
    if (r < 0) {
        rmdir(dir);
        return r;
    }
    strcpy(path, dir);
    return 0;
}

/* The value of KEY in a flat-keyed cgroup file TEXT ("key value" lines). */
static uint64_t keyed_value(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == ' ')
            return strtoull(p + n + 1, NULL, 10);
    return 0;
}

int process_tree_rss(pid_t pid, uint64_t *ret_bytes)
{
    _cleanup_free_ pid_t *todo = malloc(TREE_PROCESSES_MAX * sizeof(pid_t));
    if (!todo)
        return -ENOMEM;
    size_t n = 0, done = 0;
    uint64_t pages = 0;
    long page_size = sysconf(_SC_PAGESIZE);
    todo[n++] = pid;
    while (done < n) {
        pid_t p = todo[done++];
        char path[96];
        unsigned long long size, resident;
        snprintf(path, sizeof(path), "/proc/%d/statm", (int)p);
        FILE *f = fopen(path, "re");
        bool read = f && fscanf(f, "%llu %llu", &size, &resident) == 2;
        if (f)
            fclose(f);
        if (!read) {
            if (p == pid)
                return -ESRCH;
            continue; /* exited meanwhile */
        }
        pages += resident;
        /* its children, through every thread's list */
        snprintf(path, sizeof(path), "/proc/%d/task", (int)p);
        DIR *d = opendir(path);
        for (struct dirent *de; d && (de = readdir(d));) {
            if (de->d_name[0] == '.')
                continue;
            char children[128];
            snprintf(children, sizeof(children), "/proc/%d/task/%.16s/children", (int)p, de->d_name);
            FILE *c = fopen(children, "re");
            int child;
            while (c && n < TREE_PROCESSES_MAX && fscanf(c, "%d", &child) == 1)
                todo[n++] = child;
            if (c)
                fclose(c);
        }
        if (d)
            closedir(d);
    }
    *ret_bytes = pages * (uint64_t)page_size;
    return 0;
}

int runner_limits_usage(const runner_limits *l, const char *name, pid_t pid, uint64_t *ret_bytes)
{
    if (l->mechanism != LIMITS_CGROUP2)
        return process_tree_rss(pid, ret_bytes);
    char dir[4200];
    _cleanup_free_ char *text = NULL;
    int r = sandbox_cgroup(l, name, dir, sizeof(dir));
    if (r == 0)
        r = read_at(dir, "memory.current", &text);
    if (r < 0)
        return r;
    *ret_bytes = strtoull(text, NULL, 10);
    return 0;
}

uint64_t runner_limits_oom_kills(const runner_limits *l, const char *name)
{
    char dir[4200];
    _cleanup_free_ char *text = NULL;
    if (l->mechanism != LIMITS_CGROUP2 || sandbox_cgroup(l, name, dir, sizeof(dir)) < 0 ||
        read_at(dir, "memory.events", &text) < 0)
        return 0;
    return keyed_value(text, "oom_kill");
}

void runner_limits_remove(const runner_limits *l, const char *name)
{
    char dir[4200];
    if (l->mechanism == LIMITS_CGROUP2 && sandbox_cgroup(l, name, dir, sizeof(dir)) == 0 && rmdir(dir) < 0 &&
        errno != ENOENT)
        log_fields(LOG_LEVEL_WARN, "cannot remove a sandbox's cgroup", "cgroup", dir, "error", strerror(errno), NULL);
}
