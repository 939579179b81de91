/* The /v1/audit/ endpoint group: the audit log's checkpoint, entries and
 * proofs, fetched from the audit role over its Unix socket. */
#pragma once

#include "api/request.h"

/* GET /v1/audit/checkpoint, /entries?start=&end=, /proof/inclusion?index=&size=,
 * /proof/consistency?from=&to=, /segments/{id} (an access-log segment, base64). */
int api_handle_audit(api_request *r, const char *rest, size_t rest_len, api_error *err);
