/* The API's spans (docs/telemetry.md): a SERVER span per request, with the
 * HTTP semantic conventions and what the request was decided as
 * (cloister.verb, cloister.kind, cloister.name, cloister.decision). The span
 * is current on the event loop while the request is handled, so that the
 * calls it makes (the KMS, the runner) carry its trace on. */
#pragma once

#include <h2o.h>
#include <stdbool.h>

#include "api/metrics.h"

/* Starts REQ's span, a child of the request's traceparent when it has a
 * valid one; it ends when REQ is freed, with the status answered. Makes it
 * current; api_span_leave() when the handler returns. */
void api_span_start(h2o_req_t *req);
void api_span_leave(void);
/* Names the current request's span after ROUTE ("GET /v1/{kind}"; REQ,
 * when known, gives the method of a route of several). */
void api_span_route(api_route route, const h2o_req_t *req);
/* Records on the current request's span what USER asked (VERB on KIND/NAME)
 * and whether it was allowed. */
void api_span_decision(const char *user, const char *verb, const char *kind, const char *name, bool allow);
