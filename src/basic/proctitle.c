#include "basic/proctitle.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static char *title;      /* argv[0]: the start of the space */
static size_t title_max; /* bytes of it, with the NUL */
static char **moved;     /* environ_move()'s array: setenv() may give `environ` another */

/* Copies of the environment strings; the array and the strings stay
 * reachable (through `environ`, and the array through `moved` once a
 * setenv() replaced it) for the life of the process. */
static int environ_move(void)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **copy = calloc(n + 1, sizeof(*copy));
    if (!copy)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        copy[i] = strdup(environ[i]);
        if (!copy[i]) {
            while (i-- > 0)
                free(copy[i]);
            free(copy);
            return -ENOMEM;
        }
    }
    environ = moved = copy;
    return 0;
}

int proctitle_init(int argc, char **argv)
{
    if (argc < 1 || !argv[0])
        return -EINVAL;
    /* the kernel lays argv's strings out one after another, then environ's */
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc && argv[i] == end; i++)
        end += strlen(argv[i]) + 1;
    char *env_end = end;
    for (size_t i = 0; environ[i] && environ[i] == env_end; i++)
        env_end += strlen(environ[i]) + 1;
    if (env_end != end && environ_move() == 0)
        end = env_end;
    title = argv[0];
    title_max = (size_t)(end - argv[0]);
    return 0;
}

void proctitle_set(const char *fmt, ...)
{
    if (!title)
        return;
    memset(title, 0, title_max);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(title, title_max, fmt, ap);
    va_end(ap);
}
