/* What every role shares with the supervisor: its entry in the role table.
 * The table lives in shared memory the supervisor maps before forking
 * (daemon/role-table.h); the api role reads it for /healthz and /readyz, and the local
 * sockets' peer checks (daemon/peer.h) read the pids. A leaf header, so
 * that any component may take the table without including the
 * supervisor's or the api's. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* An entry's two halves each fill a page of their own (the largest page
 * size Linux uses), so that a role may map its own flags writable and
 * everything else read-only. */
#define ROLE_PAGE_SIZE 65536

/* The KMS operations the kms role counts (kms/server.c's table, in its
 * order) and the outcomes it tells apart: answered, refused (a 4xx: not
 * found, invalid, decryption failed...), refused because sealed, failed. */
#define ROLE_KMS_OPS 13
#define ROLE_KMS_OP_NAMES                                                                                            \
    {"encrypt", "decrypt", "datakey", "rewrap", "sign", "verify", "rotate", "describe", "version", "public",      \
     "job-release", "secret-release", "destroy-key"}
#define ROLE_KMS_OUTCOMES 4
#define ROLE_KMS_OUTCOME_NAMES {"success", "refused", "sealed", "error"}

/* One role's entry. The first half is the supervisor's: every role maps it
 * read-only, so no role can blank another's pid or name. The second is the
 * role's own readiness: writable in that role only. /readyz is 200 only
 * when every role that should run is ready (and the KMS unsealed, and the
 * proxy hears from its configuration stream). */
typedef struct role_health {
    /* the supervisor's */
    const char *name;
    _Atomic bool wanted;
    /* The role's current process, 0 while it is not running: written by the
     * supervisor (and by the child itself before it confines itself) on
     * every (re)start, read by the local sockets' peer checks. */
    _Atomic pid_t pid;
    _Atomic uint64_t restarts; /* times the supervisor restarted the role after it died */
    /* the role's own */
    _Alignas(ROLE_PAGE_SIZE) _Atomic bool ready; /* serving */
    _Atomic bool sealed; /* kms: serving, but its root key is sealed (key operations refused) */
    /* what the role counts for GET /metrics (api/metrics.c renders it) */
    _Atomic uint64_t audit_entries;       /* audit: entries in the log, after every commit */
    _Atomic uint64_t audit_append_errors; /* audit: append batches refused because the log could not be written */
    _Atomic uint64_t kms_ops[ROLE_KMS_OPS][ROLE_KMS_OUTCOMES]; /* kms: operations answered, by outcome */
} __attribute__((aligned(ROLE_PAGE_SIZE))) role_health;
