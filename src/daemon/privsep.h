/* Privilege separation of the roles (docs/security.md, "Privileges").
 *
 * Started as root, the supervisor makes one system user per role
 * (cloister-<role>), gives each its own subtree of the data dir, and each
 * forked role becomes its user before its main runs: supplementary groups
 * cleared, every capability dropped (the runner keeps the few its sandboxes
 * need), no_new_privs, a seccomp filter, no core dumps. Started as an
 * ordinary user, a role confines itself to its subtree with Landlock where
 * the kernel offers it. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "daemon/daemon.h"

typedef struct privsep_ids {
    uid_t uid;
    gid_t gid;
} privsep_ids;

/* Root only: ensures the system user of each of the N_ROLES roles NAMES
 * (useradd --system when missing), then gives each role its subtree of
 * CFG's data dir (recursively owned by its user) and its socket directory,
 * with the data dir, tls/ and the certificates traversable and readable by
 * all, and the CA keys and admin token root's alone. Writes the users' ids
 * to RET_IDS (N_ROLES entries). Returns 0 or a negative errno (logged). */
int privsep_prepare(const daemon_config *cfg, const char *const *names, size_t n_roles, privsep_ids *ret_ids);

/* In a freshly forked role NAME: narrows VIEW (a copy of the supervisor's
 * configuration) to the paths this role uses; the others are emptied. */
void privsep_role_view(const char *name, daemon_config *view);

/* In a freshly forked role NAME, before its main: with IDS (a root start),
 * becomes IDS (groups cleared, capabilities dropped but the runner's, no
 * core dumps, not dumpable but the runner, no_new_privs, seccomp); without
 * (an ordinary user's start), confines the role to its rooms of CFG's data
 * dir with Landlock when the kernel offers it (logs which), checks that it
 * holds (the role fails to open ALL's CA key and another role's key, each
 * refusal logged as `landlock self-check: <path> refused (EACCES)`), and
 * sets the rest as with IDS. ALL is the supervisor's whole configuration,
 * read only for that check. Returns 0 or a negative errno (logged); the
 * role must not run on failure. */
int privsep_enter(const char *name, const privsep_ids *ids, const daemon_config *cfg, const daemon_config *all);

/* Whether role NAME's seccomp filter lets it open IP sockets and connect
 * (the api, the proxy, the runner): the roles that may export telemetry. */
bool privsep_may_connect_ip(const char *name);
