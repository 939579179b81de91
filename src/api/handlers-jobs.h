/* Jobs (DESIGN.md, "Confidential analytics"): the server-owned status of a
 * Job (its digest and what it covers, who must approve, the approvals,
 * rejections and vetoes, its state) and the calls that sign it off:
 *   POST   /v1/jobs/{name}/approvals  {signature[, digest]}  verb `approve`
 *   DELETE /v1/jobs/{name}/approvals  (the caller's own)     verb `approve`
 *   POST   /v1/jobs/{name}/rejections {reason}               verb `reject`
 *   POST   /v1/jobs/{name}/vetoes     {reason}               verb `veto`
 * The server stores signatures; it never makes one: an approval counts only
 * when it verifies against the approver's own registered approval key over
 * the job's current digest. Those involved (the author and the required
 * approvers) are notified (notify.h) of each approval request, approval,
 * rejection and veto. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "api/request.h"
#include "store/store.h"

/* Lower-case hex of the job engine's PCR0 (SHA-384). */
#define API_JOB_PCR0_HEX_LEN 96

/* The PCR0 of the job engine bundle, the one place every digest takes it
 * from, into RET. Returns 0, or -1 with ERR (503) when the server found no
 * engine bundle. */
int api_job_engine_pcr0(api_server *srv, char ret[API_JOB_PCR0_HEX_LEN + 1], api_error *err);

/* For OP, a Job create or replace decided for caller C over STORED (NULL
 * for a create): resolves what its digest covers (the inputs' sha256, the
 * recipients' age keys, the engine's PCR0), fills spec.recipients when
 * absent (every member), and makes OP write the status: a new digest
 * clears the approvals, rejections and vetoes; the same digest keeps them.
 * Other ops are left alone. A refusal (400 naming the input, recipient or
 * field; 409 while the job runs; 503 without an engine) is an audit entry.
 * Returns 0, or -1 with ERR. */
int api_job_prepare(api_server *srv, h2o_req_t *req, const caller *c, store_op *op, const json_t *stored,
                    api_error *err);

/* Once OP is durable: a Job created or given a new digest (pending, nothing
 * signed yet) asks each missing approver for their approval (a
 * notification, job.approval-requested). Other ops are left alone. */
void api_job_written(api_server *srv, const store_op *op);

/* Adjusts VIEW, a Job as a client sees it: "expired" once spec.notAfter
 * passed while it waited for approvals or a run. */
void api_job_view(json_t *view);

/* POST, DELETE /v1/jobs/{name}/approvals. Returns 0 once answered, or -1 with ERR. */
int api_handle_job_approvals(api_request *r, const char *name, api_error *err);
/* POST /v1/jobs/{name}/rejections. */
int api_handle_job_rejections(api_request *r, const char *name, api_error *err);
/* POST /v1/jobs/{name}/vetoes. */
int api_handle_job_vetoes(api_request *r, const char *name, api_error *err);
