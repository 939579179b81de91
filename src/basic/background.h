/* Work that may wait: the threads that deliver what a request left behind
 * (the proxy's access-log writer, audit delivery, the audit role) run
 * behind the request paths on a busy machine. On Linux a nice value is a
 * thread's; threads inherit their creator's. */
#pragma once

#define BACKGROUND_NICE 10 /* the one value the roles' seccomp filters let them set */

/* Lowers the calling thread's priority to BACKGROUND_NICE (threads it then
 * creates inherit it). Returns 0 or a negative errno (then it runs as
 * before: a priority is a preference, not a guarantee). */
int thread_set_background(void);
