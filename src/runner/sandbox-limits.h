/* Resource limits of the runner's sandboxes (docs/enclaves.md "Limits"):
 * cgroup v2 where the host has it, rlimits otherwise.
 *
 *   cgroup2: the runner makes one cgroup per sandbox, <base>/<name>, under
 *            a delegated subtree: the configured directory (the daemon's
 *            runner.cgroup), else "cloister-sandboxes" beside the runner's
 *            own cgroup's leaf. It needs the memory and pids controllers
 *            and the right to write there; memory.max, memory.swap.max = 0,
 *            memory.oom.group = 1 (the kernel's OOM killer ends the whole
 *            sandbox) and pids.max. Its use is memory.current; an OOM kill
 *            is memory.events' oom_kill.
 *   rlimit:  RLIMIT_AS per process (the agent gives it to the workload) and
 *            RLIMIT_NPROC; its use is the resident memory (RSS) summed over
 *            the sandbox's processes, and the runner kills a sandbox whose
 *            sum is above its limit (the address-space limit holds per
 *            process only: a workload's children would escape it).
 *
 * Which one applies is decided once, when the runner starts, and listed
 * with every sandbox. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum limits_mechanism {
    LIMITS_RLIMIT,
    LIMITS_CGROUP2,
} limits_mechanism;

typedef struct runner_limits runner_limits;

/* Decides the mechanism: cgroup2 under CONFIGURED (a cgroup directory the
 * runner may write, or NULL/"": found from /proc/self/cgroup) when it has
 * the memory and pids controllers and a test cgroup can be made there,
 * rlimit otherwise (the reason is logged). Returns 0 with *RET, or
 * -ENOMEM. */
int runner_limits_new(const char *configured, runner_limits **ret);
void runner_limits_free(runner_limits *l);

limits_mechanism runner_limits_mechanism(const runner_limits *l);
const char *runner_limits_mechanism_name(limits_mechanism m); /* "cgroup2" or "rlimit" */

/* cgroup2: makes the cgroup of sandbox NAME with MEMORY_BYTES and PIDS (0:
 * no limit) and writes its directory to PATH (SIZE bytes), for
 * sandbox_spec.cgroup. rlimit: writes "" (the launcher's rlimits apply).
 * Returns 0 or a negative errno. */
int runner_limits_prepare(runner_limits *l, const char *name, uint64_t memory_bytes, uint64_t pids, char *path,
                          size_t size);

/* The memory sandbox NAME (its first process PID) uses now, in bytes:
 * memory.current, or the RSS summed over its processes. Returns 0 or a
 * negative errno. */
int runner_limits_usage(const runner_limits *l, const char *name, pid_t pid, uint64_t *ret_bytes);

/* cgroup2: how many processes of sandbox NAME's cgroup the kernel's OOM
 * killer killed so far (memory.events' oom_kill; compare with the count at
 * launch); 0 under rlimit. */
uint64_t runner_limits_oom_kills(const runner_limits *l, const char *name);

/* cgroup2: removes the (empty) cgroup of sandbox NAME; nothing under rlimit. */
void runner_limits_remove(const runner_limits *l, const char *name);

/* The resident memory summed over PID and its descendants (at most 4096
 * processes), in bytes, from /proc. Returns 0 or a negative errno (-ESRCH
 * when PID is gone). */
int process_tree_rss(pid_t pid, uint64_t *ret_bytes);
