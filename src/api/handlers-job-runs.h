/* A Job's runs (DESIGN.md "Confidential analytics", docs/analytics.md "The
 * run"): starting one, the calls its sandbox makes through the runner, the
 * run receipt, and the result.
 *
 *   GET  /v1/jobs/engine                  {pcr0}: the engine every digest names   `get` on JobEngine
 *   POST /v1/jobs/{name}/runs             the author starts a run                  `run` on Job NAME
 *   GET  /v1/jobs/{name}/result[?run=N]   the encrypted result (age, to the recipients)  `get` on Job NAME
 *
 * and, for the runner's workload identity only (whatever policies say), the
 * calls a job-mode sandbox makes through its channel, each for its own job
 * and run (runner/agent.h):
 *
 *   POST /v1/job-runs/{job}/{run}/release          {type, evidence, publicKey}
 *   GET  /v1/job-runs/{job}/{run}/inputs/{dataset}?offset=N
 *   PUT  /v1/job-runs/{job}/{run}/result?offset=N  a part of the encrypted result
 *   POST /v1/job-runs/{job}/{run}/finish           {sha256, size, rows, resultSha256} | {error}
 */
#pragma once

#include <stddef.h>

#include "api/request.h"

/* Largest input chunk or result part (the runner's RUNNER_JOB_PART_MAX). */
#define API_JOB_PART_MAX (1024 * 1024)
/* Largest encrypted result (the runner's RUNNER_JOB_RESULT_MAX). */
#define API_JOB_RESULT_MAX (256ull << 20)

/* Remembers the runner's socket and the runner's copy of the engine bundle
 * (NULL: none, no run can start). Returns 0 or -ENOMEM. */
int api_job_runs_init(const char *runner_socket, const char *engine_bundle);
void api_job_runs_done(void);
/* Starts (0, or a negative errno) and stops the thread that ends, within
 * seconds, the runs whose sandbox died before ending them. */
int api_job_runs_sweeper_start(api_server *srv);
void api_job_runs_sweeper_stop(void);

/* GET /v1/jobs/engine (routed before the resource routes: no Job is called "engine"). */
void api_handle_job_engine(api_server *srv, h2o_req_t *req, uint64_t started);
/* POST /v1/jobs/{name}/runs. Returns 0 once answered, or -1 with ERR. */
int api_handle_job_runs(api_request *r, const char *name, api_error *err);
/* GET /v1/jobs/{name}/result. */
int api_handle_job_result(api_request *r, const char *name, api_error *err);
/* /v1/job-runs/…: REST follows the prefix. */
int api_handle_job_run_io(api_request *r, const char *rest, size_t len, api_error *err);
