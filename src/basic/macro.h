/* Ownership helpers in the systemd style: locals are freed by the compiler
 * when they leave scope, TAKE_PTR hands a pointer over and clears the local. */
#pragma once

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))
#define _warn_unused_result_ __attribute__((warn_unused_result))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define STRLEN(s) (sizeof(s) - 1)
/* Each argument is evaluated exactly once. */
#define MIN(a, b)                                                                                  \
    ({                                                                                             \
        __typeof__(a) _a_ = (a);                                                                   \
        __typeof__(b) _b_ = (b);                                                                   \
        _a_ < _b_ ? _a_ : _b_;                                                                     \
    })
#define MAX(a, b)                                                                                  \
    ({                                                                                             \
        __typeof__(a) _a_ = (a);                                                                   \
        __typeof__(b) _b_ = (b);                                                                   \
        _a_ > _b_ ? _a_ : _b_;                                                                     \
    })

/* Returns the pointer and leaves NULL behind, so a cleanup handler does not free it. */
#define TAKE_PTR(p)                                                                                \
    ({                                                                                             \
        __typeof__(p) _p_ = (p);                                                                   \
        (p) = NULL;                                                                                \
        _p_;                                                                                       \
    })

#define TAKE_FD(fd)                                                                                \
    ({                                                                                             \
        int _fd_ = (fd);                                                                           \
        (fd) = -1;                                                                                 \
        _fd_;                                                                                      \
    })

/* Defines NAME##p(T **), a cleanup function calling FUNC on a non-NULL pointer. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                                                    \
    static inline void func##p(type *p)                                                            \
    {                                                                                              \
        if (*p)                                                                                    \
            func(*p);                                                                              \
    }

static inline void freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Negative errno of the last failed libc call, never 0. */
static inline int negative_errno(void)
{
    return errno > 0 ? -errno : -EIO;
}
