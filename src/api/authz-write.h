/* Write-time decisions: no right can be borrowed through a write. Besides
 * create/update/delete on the document itself, a write needs a right of its
 * own for everything it ADDS (present in the new document, absent from the
 * stored one), as Kubernetes RBAC's escalation rule: `bind` on each Policy it
 * attaches and each Group a user joins, `use` on each Secret it names, `bind`
 * on each Service host outside the cluster domain, `impersonate` on the user
 * of a Credential made for someone else, `impersonate` on User "*" for an
 * IdentityProvider that vouches anew (it can log in any user by email). What is already there may be kept.
 * The bootstrap objects are protected whatever policies say, a host belongs
 * to one Service, and a Credential names a user that exists. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "api/request.h"

/* Who may change or delete a bootstrap object through the API. */
typedef enum authz_protection {
    AUTHZ_UNPROTECTED,
    AUTHZ_ADMIN_ONLY, /* the bootstrap user admin and its policy, group and credential */
    AUTHZ_NOBODY,     /* the workload identities cloister-proxy and cloister-runner */
} authz_protection;

/* The protection of KIND/NAME. */
authz_protection authz_write_protection(const char *kind, const char *name);

/* Whether HOST is `<label>.DOMAIN` or deeper under DOMAIN (ASCII case
 * ignored). Nothing is under an empty or NULL DOMAIN. */
bool authz_host_in_domain(const char *host, const char *domain);

/* The hosts Service document DOC claims: `<name>.DOMAIN` (when DOMAIN is
 * set) and each of spec.hosts, as a new object used as a set (host -> true),
 * or NULL when out of memory. */
json_t *authz_service_hosts(const json_t *doc, const char *domain);

/* The name an `impersonate` on User decides for a write that vouches for
 * any user (an IdentityProvider's issuer, client, claims or user creation). */
#define AUTHZ_ANY_USER "*"

/* What writing the validated document DOC over STORED (the stored document,
 * NULL when absent) by user WRITER adds that needs a right of its own: a new
 * array of {verb, kind, name} objects in the order DOC names them, each once.
 * DOMAIN is the cluster domain (hosts under it need no bind). Returns 0 or
 * -ENOMEM; *RET is written only on success. */
int authz_write_additions(const json_t *doc, const json_t *stored, const char *domain, const char *writer,
                          json_t **ret);

/* One document of a write request as it is decided. */
typedef struct api_write {
    const char *verb;     /* "create", "update" or "delete" */
    const char *kind;     /* the exact Kind */
    const char *name;
    const json_t *doc;    /* the new document (validated, defaults filled); NULL for delete */
    const json_t *stored; /* the stored document the write is compared with; NULL when absent */
} api_write;

/* Decides the N writes W of caller C as one request (an apply: each of its
 * documents), before any secret work: for each, the bootstrap protection,
 * VERB on KIND/NAME and every addition (authz_write_additions()); then what
 * no policy permits: a host another Service already claims, or that two
 * documents claim (409 naming the owner; checked again inside the store
 * transaction, authz_check_host_additions()), a Credential for a user that
 * neither exists nor is written alongside (400 naming the user). Returns 0,
 * or -1 with ERR filled and err->document the index of the refused write in
 * W. Every refusal is an audit entry: api_authorize()'s, or
 * api_report_decision() naming the write's own verb, kind and name for a
 * protected object, a claimed host or a missing user. */
int api_decide_writes(api_server *srv, h2o_req_t *req, const caller *c, const api_write *w, size_t n,
                      api_error *err);

/* The hosts the N writes W add to Services, for the check inside the store
 * transaction (authz_check_host_additions()): a new object {service name:
 * {host: true, ...}} of each Service write that adds any (a host its new
 * document claims and the stored one did not). Returns 0 or -ENOMEM; *RET
 * is written only on success. */
int authz_host_additions(const api_write *w, size_t n, const char *domain, json_t **ret);

/* api_decide_writes()'s rule on hosts again, inside the store transaction
 * of the writes whose ADDITIONS (authz_host_additions()) they are:
 * SERVICES is every Service document as the transaction leaves them, so
 * writes decided at once (two requests, two replicas) cannot both add a
 * host. Returns 0, or -1 with ERR: the same 409 naming the Service that
 * claims the host, and *RET_SERVICE the one adding it (borrowed from
 * ADDITIONS); or a 500 when out of memory. */
int authz_check_host_additions(const json_t *services, const json_t *additions, const char *domain,
                               const char **ret_service, api_error *err);
