/* Process titles, as `ps -o args` shows them: relayd's and sshd's
 * "cloisterd: proxy". The title is written over the memory of the
 * command line (and of the environment strings that follow it, which are
 * copied to the heap first), so /proc/PID/cmdline reads it. The short name
 * in /proc/PID/comm is prctl(PR_SET_NAME)'s business, not this. */
#pragma once

/* Takes over the command line ARGV (ARGC strings, as main() got them) as the
 * space for titles. Call once, first thing in main(), before anything
 * permutes ARGV or keeps pointers into the environment strings: it moves
 * `environ` to copies on the heap. Returns 0, or -ENOMEM (the environment
 * is then untouched and titles use the command line's space only), or
 * -EINVAL without ARGV[0]. */
int proctitle_init(int argc, char **argv);

/* Sets the title to the printf-style FMT, cut to the space
 * proctitle_init() found; the rest of that space is zeroed. A no-op before
 * proctitle_init(). */
void proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
