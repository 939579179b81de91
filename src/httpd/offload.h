/* Blocking work off an h2o event loop, answered on the loop: the one way
 * Cloister does "do this on a thread, answer on the loop".
 *
 * A pool is a small fixed set of worker threads with a bounded queue; a
 * loop (one per event loop thread) is where finished jobs come back, through
 * an h2o multithread message. A job is two functions: WORK, run on a
 * worker (it must not touch the request or anything of the loop), then
 * DONE, run on the loop that submitted it, which owns the job from then on.
 * A job is anchored in its request's pool: when the request goes away
 * before the job is done, DONE sees a NULL request (and WORK is skipped when
 * it had not started). Pools and loops are independent: a loop takes jobs
 * back from any pool, so slow remote calls can have a pool of their own and
 * never hold the workers of fast local ones.
 *
 * Thread safety: offload_submit(), offload_loop_in_flight() and
 * offload_loop_free() on the loop's thread (or, for free, once that loop no
 * longer runs); pools from any thread. */
#pragma once

#include <h2o.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "telemetry/telemetry.h"

typedef struct offload_pool offload_pool;
typedef struct offload_loop offload_loop;
typedef struct offload_job offload_job;
typedef struct offload_anchor offload_anchor;

/* Runs on a worker thread. */
typedef void (*offload_work_cb)(offload_job *job);
/* Runs on the submitting loop's thread once the work ended (or was skipped):
 * REQ is the request, or NULL when it went away (or the loop is being
 * freed) and must not be answered. Owns JOB: frees it. */
typedef void (*offload_done_cb)(offload_job *job, h2o_req_t *req);

/* Embed first in the caller's job structure (h2o's `super` style); set
 * WORK and DONE, leave the rest zero. */
struct offload_job {
    offload_work_cb work;
    offload_done_cb done;
    /* the pool's and the loop's; not for callers */
    h2o_linklist_t _link;
    h2o_multithread_message_t _msg;
    offload_loop *_loop;
    h2o_req_t *_req;         /* loop thread only: NULL once the request went away */
    offload_anchor *_anchor; /* in the request's pool while the job runs */
    _Atomic bool _abandoned; /* the request went away: skip WORK if not started */
    telemetry_span *_span;   /* the submitter's current span (loop thread only) */
    trace_context _trace;    /* and its context, current on the worker during WORK */
    bool _has_trace;
};

/* A pool of THREADS workers taking at most MAX_JOBS jobs at once (queued or
 * running; more are refused), named NAME in logs and thread names (at most
 * 15 bytes). Returns 0 with *RET, or a negative errno (-EINVAL for 0 threads
 * or jobs, -ENOMEM, or pthread_create()'s). */
int offload_pool_new(const char *name, unsigned threads, size_t max_jobs, offload_pool **ret);
/* Stops the workers once the jobs already queued are done (with no loop
 * left, those are only skipped ones) and frees the pool; accepts NULL. Every
 * loop that submitted to it must have been freed first. */
void offload_pool_free(offload_pool *p);

/* The receiving side on the event loop LOOP (from that loop's thread).
 * Returns 0 with *RET, or -ENOMEM. */
int offload_loop_new(h2o_loop_t *loop, offload_loop **ret);
/* Jobs submitted through L whose DONE has not run yet: an httpd component
 * reports itself busy while this is not 0, so a drain waits for them. */
size_t offload_loop_in_flight(const offload_loop *l);
/* Frees L once its loop no longer runs (httpd's thread_dispose): jobs not
 * started are skipped, running ones waited for (their work is bounded by
 * its own timeouts), and every DONE called with a NULL request; accepts
 * NULL. */
void offload_loop_free(offload_loop *l);

/* Queues JOB on pool P for request REQ, answering on loop L; a NULL REQ
 * queues a detached job, which nothing abandons and whose DONE sees NULL
 * (work whose answer no request waits for). Returns 0 (JOB
 * now belongs to the offload until DONE), -EAGAIN when P has MAX_JOBS
 * already (answer 503 and let the client retry), or -ESHUTDOWN when P is
 * stopping; on failure JOB is untouched and still the caller's. */
int offload_submit(offload_pool *p, offload_loop *l, h2o_req_t *req, offload_job *job);
