/* See background.h. */
#include "basic/background.h"

#include <errno.h>
#include <sys/resource.h>
#include <unistd.h>

int thread_set_background(void)
{
    /* PRIO_PROCESS with a thread id: that thread alone */
    return setpriority(PRIO_PROCESS, (id_t)gettid(), BACKGROUND_NICE) < 0 ? -errno : 0;
}
