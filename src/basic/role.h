/* What every role shares with the supervisor: its entry in the role table.
 * The table lives in shared memory the supervisor maps before forking; the
 * api role reads it for /healthz, and the local sockets' peer checks
 * (daemon/peer.h) read the pids. A leaf header, so that any component may
 * take the table without including the supervisor's or the api's. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

/* Readiness of the roles, shared with the supervisor: /healthz is 200 only
 * when every role that should run is ready (and the KMS unsealed, and the
 * proxy hears from its configuration stream). */
typedef struct role_health {
    const char *name;
    _Atomic bool wanted;
    _Atomic bool ready;  /* serving */
    _Atomic bool sealed; /* kms: serving, but its root key is sealed (key operations refused) */
    /* The role's current process, 0 while it is not running: written by the
     * supervisor (and by the child itself before it runs the role) on every
     * (re)start, read by the local sockets' peer checks (daemon/peer.h). */
    _Atomic pid_t pid;
} role_health;
