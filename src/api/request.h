/* What API handlers share: the authenticated caller, the request being
 * answered, response helpers that also record metrics, and the table of
 * endpoint groups that components (audit, kms, ...) serve from their own
 * files. */
#pragma once

#include <h2o.h>
#include <jansson.h>
#include <stdbool.h>

#include "httpd/httpd.h"

#include "httpd/json.h"
#include "api/metrics.h"
#include "api/server.h"

/* The authenticated caller (references owned). */
typedef struct caller {
    json_t *user;
    json_t *credential;
    json_t *session; /* the Session of an access token; NULL for a credential token */
} caller;

void caller_clear(caller *c);
/* The caller's user name, "" before authentication. */
const char *caller_name(const caller *c);
/* metadata.name of a stored document. */
const char *doc_name(const json_t *doc);

/* One request on its way through a handler. */
typedef struct api_request {
    api_server *server;
    h2o_req_t *req;
    api_route route;
    uint64_t started; /* monotonic ns, for the latency histogram */
    const caller *caller;
} api_request;

/* Runs JOB for R off the event loop: its work on a worker of POOL (the
 * server's local or remote one), then its done on this loop (offload.h).
 * Returns 0, or -1 with ERR (503: too many such calls in progress, or the
 * server is stopping), JOB then still the caller's. */
int api_offload(api_request *r, offload_pool *pool, offload_job *job, api_error *err);

/* Send VALUE (borrowed) or ERR as the answer and record the metrics. */
void api_respond_json(h2o_req_t *req, api_route route, uint64_t started, int status, const json_t *value);
void api_respond_error(h2o_req_t *req, api_route route, uint64_t started, const api_error *err);
/* Records the metrics of an answer sent by other means (streams). */
void api_finish(api_route route, uint64_t started, int status);
/* Answers 405 naming the ALLOWED methods. */
void api_method_not_allowed(h2o_req_t *req, api_route route, uint64_t started, const char *allowed);

bool api_method_is(const h2o_req_t *req, const char *method);
/* Reports a request refused before any decision (authentication failed) as
 * an audit event. */
void api_report_refusal(h2o_req_t *req, const caller *c, const api_error *err);
/* Where a request came from and what it asked, copied out of it (for an
 * audit event after the client went away). */
typedef struct api_origin {
    char ip[INET6_ADDRSTRLEN];
    char method[16];
    char path[1025]; /* normalised, cut at 1024 bytes */
} api_origin;
void api_origin_of(h2o_req_t *req, api_origin *o);
/* Reports a refused decision of VERB on KIND/NAME as an audit event
 * (action api.access, outcome denied, details.api {verb, kind, name}).
 * api_authorize() calls it for every refusal: callers do not. */
void api_report_decision(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
                         const api_error *err);
/* The same for the request O describes. */
void api_report_decision_at(const api_origin *o, const caller *c, const char *verb, const char *kind,
                            const char *name, const api_error *err);
/* Refuses VERB on KIND/NAME by caller C whatever the policies say (a rule
 * no policy can lift): fills ERR with the 403 api_authorize() gives,
 * "<verb> <Kind>/<name> by user <u> is denied: REASON", reports it as
 * api_report_decision() does, and returns -1. */
int api_refuse(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
               const char *reason, api_error *err);
/* Refuses as api_refuse() does, with REASON in the audit entry and the log,
 * but answers the caller the default deny any forbidden object gets, so that
 * REASON (that an object does not exist, or whose it is) is not told.
 * Returns -1. */
int api_refuse_quietly(h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name,
                       const char *reason, api_error *err);

/* Who an endpoint group's handler sees. No group is decided as a whole:
 * each handler decides every call on the exact object it touches (verb,
 * kind, name: api_authorize()) once it knows which one, and may answer
 * before that only with 404/405 or a client error that names no object. */
typedef enum api_group_access {
    /* the handler authenticates itself, or needs no caller (token
     * exchange, login, JWKS); it gets a caller with no user */
    API_GROUP_PUBLIC,
    /* the caller is authenticated before the handler runs, before any body
     * is parsed; a failure is answered 401 without calling it */
    API_GROUP_AUTHENTICATED,
} api_group_access;

/* Endpoints under PREFIX ("/v1/audit/") served by one component. REST is
 * the path after the prefix. HANDLE answers (now or later) and returns 0,
 * or fills ERR and returns -1 to have the error sent. */
typedef struct api_endpoint_group {
    const char *prefix;
    api_route route;
    api_group_access access;
    int (*handle)(api_request *r, const char *rest, size_t rest_len, api_error *err);
} api_endpoint_group;

extern const api_endpoint_group api_endpoint_groups[];
extern const size_t api_n_endpoint_groups;

/* /v1/PLURAL/{name}/SUB, served by one component on the named object. The
 * caller is authenticated before HANDLE runs (a failure is answered 401);
 * HANDLE decides on the object itself and returns as a group's handler. */
typedef struct api_subresource {
    const char *plural;
    const char *sub;
    api_route route;
    int (*handle)(api_request *r, const char *name, api_error *err);
} api_subresource;

extern const api_subresource api_subresources[];
extern const size_t api_n_subresources;
