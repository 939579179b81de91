/* The names of the identities cloisterd makes on first start (see
 * daemon/bootstrap.c), shared by the code that writes them and the API that
 * treats them apart. */
#pragma once

#include <stdbool.h>
#include <string.h>

#define BOOTSTRAP_ADMIN_USER "admin"
#define BOOTSTRAP_ADMIN_GROUP "admins"
#define BOOTSTRAP_ADMIN_POLICY "cloister-admins"
#define BOOTSTRAP_ADMIN_CREDENTIAL "admin-bootstrap"

/* workload identities of roles that are API clients; cloisterd alone writes
 * their tokens (proxy.token, runner.token in the data dir) */
#define BOOTSTRAP_PROXY_USER "cloister-proxy"
#define BOOTSTRAP_PROXY_POLICY "cloister-proxy"
#define BOOTSTRAP_PROXY_CREDENTIAL "cloister-proxy"

#define BOOTSTRAP_RUNNER_USER "cloister-runner"
#define BOOTSTRAP_RUNNER_POLICY "cloister-runner"
#define BOOTSTRAP_RUNNER_CREDENTIAL "cloister-runner"

/* Whether NAME is the Credential of a role's workload identity, whose token
 * only cloisterd may write (never minted through the API). */
static inline bool bootstrap_is_workload_credential(const char *name)
{
    return strcmp(name, BOOTSTRAP_PROXY_CREDENTIAL) == 0 || strcmp(name, BOOTSTRAP_RUNNER_CREDENTIAL) == 0;
}
