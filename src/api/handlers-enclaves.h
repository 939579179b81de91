/* Enclaves' sub-resources served by the API (see handlers-enclaves.c). */
#pragma once

#include "api/request.h"

/* GET /v1/enclaves/{name}/logs[?replica=R][&tail=N][&after=CURSOR][&follow=1]:
 * the recent output of the Enclave's replicas, as JSON {"lines", "cursor"}
 * or, with follow=1, as Server-Sent Events. Decided as `logs` on
 * Enclave/{name}. */
int api_handle_enclave_logs(api_request *r, const char *name, api_error *err);
