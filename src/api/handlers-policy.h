/* The API and the policy engine: authorization of every API call by policy,
 * validation of policy CEL in documents, and the what-if endpoint. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "api/request.h"

/* Decides whether caller C may do VERB on KIND/NAME (NAME may be "") with the
 * store's current policies: ctx.user from C's user, C's credential, and
 * ctx.request from REQ. Returns 0 when allowed, or -1 with ERR filled: 403
 * naming the deciding rule (or the default deny), 500 when no decision could
 * be made (which denies too). Every refusal is an audit entry naming VERB,
 * KIND and NAME (api_report_decision()): callers do not report it again. */
int api_authorize(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind,
                  const char *name, api_error *err);
/* The same decision as a question, for filtering what a caller sees (which
 * sessions to list): true when allowed. A "no" is not audited, since it
 * refuses nothing by itself. */
bool api_may(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind, const char *name);
/* Answers that KIND/NAME, on which caller C was allowed VERB, does not
 * exist: 404 when C may `get` it, otherwise the 403 a forbidden object gets
 * (the default deny), so that no refusal tells an object's existence to a
 * caller who may not see it. The refusal is reported with its real reason.
 * Returns -1 with ERR filled. */
int api_fail_absent(api_server *srv, h2o_req_t *req, const caller *c, const char *verb, const char *kind,
                    const char *name, api_error *err);
/* Refuses, with 400 naming the field and the CEL line:column, a Policy or
 * Service document whose conditions do not compile. Returns 0 or -1 with ERR. */
int api_check_policies(const json_t *doc, api_error *err);
/* The /v1/policy/ endpoint group: POST /v1/policy/check. */
int api_handle_policy(api_request *r, const char *rest, size_t rest_len, api_error *err);
/* The Services caller C may reach: each one whose policies allow C a GET
 * of "/" on its host (the decision the proxy makes on C's first request
 * there), as a new array of {name, host, url, hosts?, portal, connect: {cli,
 * curl}} in *RET,
 * with the store revision it reflects in *RET_REVISION (may be NULL).
 * Returns 0, or -1 with ERR. Decided without audit entries: it is a view. */
int api_reachable_services(api_server *srv, const caller *c, json_t **ret, int64_t *ret_revision, api_error *err);
