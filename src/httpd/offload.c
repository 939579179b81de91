/* Blocking work off the event loops (see offload.h). A job goes from the
 * submitting loop to its pool's queue, to one worker, and back to the loop
 * as an h2o multithread message; the loop counts what it still waits for,
 * so that freeing it can wait for the workers and hand every job back. */
#include "httpd/offload.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"

struct offload_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a job was queued, or the pool is stopping */
    h2o_linklist_t queue;
    size_t jobs; /* queued or running */
    size_t max_jobs;
    bool stopping;
    char name[16];
    unsigned n_threads;
    pthread_t threads[];
};

struct offload_loop {
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
    size_t in_flight; /* loop thread only: submitted, DONE not run */
    pthread_mutex_t lock;
    pthread_cond_t settled; /* a job was posted back while closing */
    _Atomic size_t outstanding; /* submitted, not posted back yet (lowered under LOCK) */
    _Atomic bool closing;   /* offload_loop_free() runs: skip work not started */
};

/* Lives in the request's pool; tells the job when the request goes away. */
struct offload_anchor {
    offload_job *job;
};

/* Posts a finished (or skipped) JOB back to its loop. JOB is the loop's
 * once posted: not touched after. */
static void post_back(offload_job *job)
{
    offload_loop *l = job->_loop;
    pthread_mutex_lock(&l->lock);
    h2o_multithread_send_message(&l->receiver, &job->_msg);
    l->outstanding--;
    if (l->closing)
        pthread_cond_broadcast(&l->settled);
    pthread_mutex_unlock(&l->lock);
}

static void *worker_main(void *arg)
{
    offload_pool *p = arg;
    pthread_setname_np(pthread_self(), p->name);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (h2o_linklist_is_empty(&p->queue) && !p->stopping)
            pthread_cond_wait(&p->wake, &p->lock);
        if (h2o_linklist_is_empty(&p->queue))
            break; /* stopping, and nothing left */
        offload_job *job = H2O_STRUCT_FROM_MEMBER(offload_job, _link, p->queue.next);
        h2o_linklist_unlink(&job->_link);
        pthread_mutex_unlock(&p->lock);
        if (!atomic_load(&job->_abandoned) && !atomic_load(&job->_loop->closing)) {
            /* the worker works in the submitter's trace (what it calls carries it on) */
            telemetry_set_current_context(job->_has_trace ? &job->_trace : NULL);
            job->work(job);
            telemetry_set_current_context(NULL);
        }
        post_back(job);
        pthread_mutex_lock(&p->lock);
        p->jobs--;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int offload_pool_new(const char *name, unsigned threads, size_t max_jobs, offload_pool **ret)
{
    if (threads == 0 || max_jobs == 0)
        return -EINVAL;
    offload_pool *p = calloc(1, sizeof(*p) + threads * sizeof(pthread_t));
    if (!p)
        return -ENOMEM;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    h2o_linklist_init_anchor(&p->queue);
    p->max_jobs = max_jobs;
    snprintf(p->name, sizeof(p->name), "%s", name);
    for (; p->n_threads < threads; p->n_threads++) {
        int e = pthread_create(&p->threads[p->n_threads], NULL, worker_main, p);
        if (e != 0) {
            offload_pool_free(p);
            return -e;
        }
    }
    *ret = p;
    return 0;
}

void offload_pool_free(offload_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Hands JOB back to its caller's DONE with REQ (NULL: not to be answered). */
static void finish(offload_loop *l, offload_job *job, h2o_req_t *req)
{
    if (job->_anchor)
        job->_anchor->job = NULL;
    l->in_flight--;
    /* back on the loop: the request's span is current again while DONE
     * answers it (alive as long as its request is) */
    telemetry_span *was = telemetry_current();
    telemetry_set_current(req ? job->_span : NULL);
    job->done(job, req);
    telemetry_set_current(was);
}

static void on_posted(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    offload_loop *l = H2O_STRUCT_FROM_MEMBER(offload_loop, receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        offload_job *job = H2O_STRUCT_FROM_MEMBER(offload_job, _msg.link, messages->next);
        h2o_linklist_unlink(&job->_msg.link);
        finish(l, job, job->_req);
    }
}

int offload_loop_new(h2o_loop_t *loop, offload_loop **ret)
{
    offload_loop *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->queue = h2o_multithread_create_queue(loop);
    h2o_multithread_register_receiver(l->queue, &l->receiver, on_posted);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->settled, NULL);
    *ret = l;
    return 0;
}

size_t offload_loop_in_flight(const offload_loop *l)
{
    return l->in_flight;
}

void offload_loop_free(offload_loop *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    atomic_store(&l->closing, true);
    while (l->outstanding > 0)
        pthread_cond_wait(&l->settled, &l->lock);
    pthread_mutex_unlock(&l->lock);
    /* every job is posted now, and no worker sends here again: what the
     * loop did not take in before it stopped is handed back here, with no
     * request (the loop will not write to its connections again) */
    while (!h2o_linklist_is_empty(&l->receiver._messages)) {
        offload_job *job = H2O_STRUCT_FROM_MEMBER(offload_job, _msg.link, l->receiver._messages.next);
        h2o_linklist_unlink(&job->_msg.link);
        finish(l, job, NULL);
    }
    h2o_multithread_unregister_receiver(l->queue, &l->receiver);
    h2o_multithread_destroy_queue(l->queue);
    pthread_cond_destroy(&l->settled);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

static void anchor_dispose(void *p)
{
    offload_anchor *a = p;
    if (!a->job)
        return;
    a->job->_req = NULL;
    a->job->_anchor = NULL;
    atomic_store(&a->job->_abandoned, true);
}

int offload_submit(offload_pool *p, offload_loop *l, h2o_req_t *req, offload_job *job)
{
    /* anchored first: a refused job leaves an anchor to nothing in the pool */
    offload_anchor *a = req ? h2o_mem_alloc_shared(&req->pool, sizeof(*a), anchor_dispose) : NULL;
    if (a)
        *a = (offload_anchor){0};
    pthread_mutex_lock(&p->lock);
    int r = p->stopping ? -ESHUTDOWN : p->jobs >= p->max_jobs ? -EAGAIN : 0;
    if (r == 0) {
        if (a)
            a->job = job;
        job->_link = (h2o_linklist_t){0};
        job->_msg = (h2o_multithread_message_t){{0}};
        job->_loop = l;
        job->_req = req;
        job->_span = req ? telemetry_current() : NULL; /* a detached job outlives any span */
        job->_has_trace = telemetry_current_context(&job->_trace);
        job->_anchor = a;
        atomic_init(&job->_abandoned, false);
        l->in_flight++;
        atomic_fetch_add(&l->outstanding, 1);
        p->jobs++;
        h2o_linklist_insert(&p->queue, &job->_link);
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
    return r;
}
