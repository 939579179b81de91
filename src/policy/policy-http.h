/* One policy request built from an HTTP request, for the proxy and the API
 * alike: ctx.request.http as docs/policies.md describes it. A library of its
 * own (policy-http), so that the policy engine (policy) does not link h2o
 * and the HTTP server does not depend on the policy engine. */
#pragma once

#include <h2o.h>

#include "policy/policy.h"

/* Fills ctx.request.http of PR from REQ: its method, PATH (the normalised
 * path the decision is on), QUERY (raw, without the '?'; a NULL base when
 * the target has none), its authority as host, its scheme, and its headers
 * (policy_request_set_headers: credential headers left out, repeated ones
 * joined). Text that is not UTF-8 is seen as "". Values are borrowed from
 * REQ, PATH and QUERY, which must outlive the decision, or allocated from
 * A. Returns 0 or -ENOMEM. */
int policy_request_set_http(policy_request *pr, h2o_req_t *req, h2o_iovec_t path, h2o_iovec_t query, cel_arena *a);
