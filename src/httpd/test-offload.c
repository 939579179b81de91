#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "httpd/offload.h"

/* h2o 2.2's h2o_multithread_destroy_queue() never frees the queue of an
 * evloop build (fixed in later h2o): not ours to report. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:h2o_multithread_create_queue\n";
}

/* A gate the test holds shut while work must stay running, and opens when
 * it decides; jobs say on it when their work started. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    unsigned started;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, true, 0};

static void gate_set(bool open)
{
    pthread_mutex_lock(&gate.lock);
    gate.open = open;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
}

static void gate_wait_started(unsigned n)
{
    pthread_mutex_lock(&gate.lock);
    while (gate.started < n)
        pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
}

typedef struct test_job {
    offload_job super;
    pthread_t loop_thread;
    bool worked, done, had_req, done_on_loop, worked_off_loop;
    unsigned *n_done;
} test_job;

static void work(offload_job *j)
{
    test_job *t = (test_job *)j;
    t->worked_off_loop = !pthread_equal(pthread_self(), t->loop_thread);
    pthread_mutex_lock(&gate.lock);
    gate.started++;
    pthread_cond_broadcast(&gate.cond);
    while (!gate.open)
        pthread_cond_wait(&gate.cond, &gate.lock);
    pthread_mutex_unlock(&gate.lock);
    t->worked = true;
}

static void done(offload_job *j, h2o_req_t *req)
{
    test_job *t = (test_job *)j;
    t->done = true;
    t->had_req = req != NULL;
    t->done_on_loop = pthread_equal(pthread_self(), t->loop_thread);
    (*t->n_done)++;
}

typedef struct fixture {
    h2o_loop_t *loop;
    offload_loop *ol;
    offload_pool *pool;
    h2o_req_t req; /* only its memory pool is used */
    unsigned n_done;
} fixture;

static void setup(fixture *f, unsigned threads, size_t max_jobs)
{
    memset(f, 0, sizeof(*f));
    gate.open = true;
    gate.started = 0;
    f->loop = h2o_evloop_create();
    cr_assert_eq(offload_loop_new(f->loop, &f->ol), 0);
    cr_assert_eq(offload_pool_new("test-offload", threads, max_jobs, &f->pool), 0);
    h2o_mem_init_pool(&f->req.pool);
}

static void submit(fixture *f, test_job *j)
{
    *j = (test_job){.super = {.work = work, .done = done}, .loop_thread = pthread_self(), .n_done = &f->n_done};
    cr_assert_eq(offload_submit(f->pool, f->ol, &f->req, &j->super), 0);
}

/* Runs the loop until N jobs are done. */
static void run_until(fixture *f, unsigned n)
{
    while (f->n_done < n)
        h2o_evloop_run(f->loop, 1000);
}

static void teardown(fixture *f)
{
    offload_loop_free(f->ol);
    offload_pool_free(f->pool);
    h2o_mem_clear_pool(&f->req.pool);
    h2o_evloop_run(f->loop, 0); /* closes the queue's socket */
    h2o_evloop_destroy(f->loop);
}

Test(offload, jobs_work_on_workers_and_finish_on_the_loop)
{
    fixture f;
    setup(&f, 3, 64);
    test_job jobs[32];
    for (size_t i = 0; i < 32; i++)
        submit(&f, &jobs[i]);
    cr_assert_eq(offload_loop_in_flight(f.ol), 32);
    run_until(&f, 32);
    cr_assert_eq(offload_loop_in_flight(f.ol), 0);
    for (size_t i = 0; i < 32; i++) {
        cr_assert(jobs[i].worked && jobs[i].worked_off_loop, "job %zu did not work on a worker", i);
        cr_assert(jobs[i].done && jobs[i].done_on_loop && jobs[i].had_req, "job %zu not answered on the loop", i);
    }
    teardown(&f);
}

Test(offload, a_full_queue_refuses_until_a_job_ends)
{
    fixture f;
    setup(&f, 1, 2);
    gate_set(false);
    test_job a, b, c;
    submit(&f, &a);
    submit(&f, &b);
    c = (test_job){.super = {.work = work, .done = done}, .loop_thread = pthread_self(), .n_done = &f.n_done};
    cr_assert_eq(offload_submit(f.pool, f.ol, &f.req, &c.super), -EAGAIN);
    cr_assert_eq(offload_loop_in_flight(f.ol), 2, "a refused job is not in flight");
    gate_set(true);
    run_until(&f, 2);
    submit(&f, &c); /* room again */
    run_until(&f, 3);
    cr_assert(a.had_req && b.had_req && c.had_req);
    teardown(&f);
}

Test(offload, done_sees_a_request_gone_before_the_work_ended)
{
    fixture f;
    setup(&f, 1, 8);
    gate_set(false);
    test_job running, queued;
    submit(&f, &running);
    submit(&f, &queued);
    gate_wait_started(1);
    h2o_mem_clear_pool(&f.req.pool); /* the request goes away */
    gate_set(true);
    run_until(&f, 2);
    cr_assert(running.worked, "work already running finishes");
    cr_assert_not(running.had_req, "done must see that the request is gone");
    cr_assert_not(queued.worked, "work not started for a request gone is skipped");
    cr_assert(queued.done && !queued.had_req);
    teardown(&f);
}

Test(offload, a_detached_job_works_and_is_done_without_a_request)
{
    fixture f;
    setup(&f, 1, 8);
    test_job j = {.super = {.work = work, .done = done}, .loop_thread = pthread_self(), .n_done = &f.n_done};
    cr_assert_eq(offload_submit(f.pool, f.ol, NULL, &j.super), 0);
    cr_assert_eq(offload_loop_in_flight(f.ol), 1, "a loop's drain waits for its detached jobs too");
    run_until(&f, 1);
    cr_assert(j.worked && j.worked_off_loop, "the work runs on a worker");
    cr_assert(j.done && j.done_on_loop && !j.had_req, "done runs on the loop, with no request");
    teardown(&f);
}

/* Opens the gate from another thread, while the test thread waits in
 * offload_loop_free(). */
static void *open_gate(void *arg)
{
    gate_set(true);
    return NULL;
}

Test(offload, freeing_a_loop_hands_back_every_job_in_flight)
{
    fixture f;
    setup(&f, 1, 8);
    gate_set(false);
    test_job running, queued[3];
    submit(&f, &running);
    for (size_t i = 0; i < 3; i++)
        submit(&f, &queued[i]);
    gate_wait_started(1);
    pthread_t opener;
    pthread_create(&opener, NULL, open_gate, NULL);
    offload_loop_free(f.ol); /* the loop stopped: waits for the running job */
    f.ol = NULL;
    pthread_join(opener, NULL);
    cr_assert_eq(f.n_done, 4);
    cr_assert(running.worked && running.done && !running.had_req, "the loop is gone: no request to answer");
    /* queued jobs are skipped once the loop is closing (those the worker
     * took before are worked): answered with no request either way */
    for (size_t i = 0; i < 3; i++)
        cr_assert(queued[i].done && !queued[i].had_req, "queued job %zu not handed back", i);
    teardown(&f);
}
