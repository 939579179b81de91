/* The exporter: records queued by any thread, one thread per process that
 * batches them and POSTs them to the collector (OTLP/HTTP, JSON, gzip),
 * retrying only what the protocol says may be retried. */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libdeflate.h>

#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "telemetry/otlp.h"

#define SOURCES_MAX 8
#define SHUTDOWN_FLUSH_MS 5000      /* how long telemetry_shutdown() lets the last batches take */
#define METRICS_TEXT_MAX (4u << 20) /* the Prometheus text one source may render */
#define BODY_MAX (64u << 20)        /* one request's JSON text */
#define CHUNK_BYTES (60u << 10)     /* a thread's buffer of records (below malloc's mmap threshold) */
#define CHUNK_RECORDS_MAX 128       /* records per chunk (at most batch_max, so batches stay exact) */
#define SPARE_SPANS_MAX 16          /* ended spans a thread keeps to reuse */

/* Records of one signal as the comma-separated JSON text they are sent as:
 * filled by one thread, then handed whole to the exporter. */
typedef struct chunk {
    struct chunk *next;
    size_t n;        /* records */
    size_t len, cap; /* of data */
    char data[];
} chunk;

/* What a thread that records holds: a chunk per signal being filled (under
 * its own lock, which only the exporter's collection of a half-full chunk
 * contends for) and spans to reuse. Freed when the thread ends. */
typedef struct thread_records {
    pthread_mutex_t lock;
    chunk *open[TELEMETRY_SIGNAL_COUNT_];
    telemetry_span *spare; /* the owner's alone */
    size_t n_spare;
    struct thread_records *next, *prev; /* T.threads */
} thread_records;

/* A signal's queue: records in the threads' chunks, full chunks handed
 * over, and the exporter's own list of them; `pending` counts all of them
 * (at most queue_max: a record that finds it full is dropped). */
typedef struct record_queue {
    _Atomic uint64_t pending;
    _Atomic(chunk *) handed; /* a stack: pushed by any thread, taken whole by the exporter */
    chunk *ready, **ready_tail; /* the exporter's, oldest first */
    _Atomic uint64_t dropped;
    _Atomic bool warned;
} record_queue;

typedef struct metrics_source {
    telemetry_metrics_source render;
    void *userdata;
} metrics_source;

/* The process's one exporter: its queues (under lock), its sources, its
 * thread's curl handle. */
static struct {
    _Atomic bool enabled;
    pthread_mutex_t lock;
    pthread_mutex_t collecting; /* held while sources render */
    pthread_cond_t wake;
    json_t *last_metrics; /* an unregistered source's last metrics, to send */
    _Atomic bool stopping;
    uint64_t stop_deadline_ms; /* monotonic */
    otlp_config cfg;
    char *resource_text; /* cfg.resource as JSON, the head of every request */
    record_queue queue[TELEMETRY_SIGNAL_COUNT_];
    metrics_source sources[SOURCES_MAX];
    size_t n_sources;
    uint64_t start_ns;
    pthread_t thread;
    CURL *curl;
    struct curl_slist *headers[TELEMETRY_SIGNAL_COUNT_];
    struct libdeflate_compressor *deflate; /* the exporter thread's */
    strbuf body;                           /* the exporter thread's: a request's JSON text, reused */
    unsigned char *gz;                     /* and its gzip, reused */
    size_t gz_cap;
    pthread_mutex_t threads_lock; /* guards `threads` */
    thread_records *threads;      /* every thread that recorded, and is alive */
} T = {.lock = PTHREAD_MUTEX_INITIALIZER, .collecting = PTHREAD_MUTEX_INITIALIZER,
       .threads_lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local bool on_exporter_thread;
static _Atomic uint64_t dropped_after_stop[TELEMETRY_SIGNAL_COUNT_];

static const char *const signal_names[] = {"traces", "metrics", "logs"};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Waits on T.wake (T.lock held) until woken or UNTIL (monotonic ms). */
static void wait_until(uint64_t until)
{
    uint64_t now = mono_ms();
    if (until <= now)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* T.wake's clock (telemetry_init) */
    uint64_t wait_ns = MIN(until - now, (uint64_t)3600000) * 1000000 + (uint64_t)ts.tv_nsec;
    ts.tv_sec += (time_t)(wait_ns / 1000000000);
    ts.tv_nsec = (long)(wait_ns % 1000000000);
    pthread_cond_timedwait(&T.wake, &T.lock, &ts);
}

bool telemetry_enabled(void)
{
    return atomic_load_explicit(&T.enabled, memory_order_relaxed);
}

static bool signal_on(telemetry_signal s)
{
    return telemetry_enabled() && T.cfg.signal[s].url;
}

uint64_t telemetry_dropped(telemetry_signal s)
{
    return atomic_load(&T.queue[s].dropped) + atomic_load(&dropped_after_stop[s]);
}

uint64_t telemetry_queued(telemetry_signal s)
{
    return telemetry_enabled() ? atomic_load(&T.queue[s].pending) : 0;
}

int telemetry_metrics_render(strbuf *out)
{
    int r = strbuf_puts(out, "# HELP cloister_telemetry_dropped_total OpenTelemetry records not exported: their queue "
                             "was full, or the collector refused them.\n"
                             "# TYPE cloister_telemetry_dropped_total counter\n");
    for (int s = 0; r == 0 && s < TELEMETRY_SIGNAL_COUNT_; s++)
        r = strbuf_printf(out, "cloister_telemetry_dropped_total{signal=\"%s\"} %" PRIu64 "\n", signal_names[s],
                          telemetry_dropped((telemetry_signal)s));
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_telemetry_queued_records OpenTelemetry records waiting to be exported "
                             "(at most OTEL_BSP_MAX_QUEUE_SIZE; a batch being sent is no longer counted).\n"
                             "# TYPE cloister_telemetry_queued_records gauge\n");
    for (int s = 0; r == 0 && s < TELEMETRY_SIGNAL_COUNT_; s++)
        r = strbuf_printf(out, "cloister_telemetry_queued_records{signal=\"%s\"} %" PRIu64 "\n", signal_names[s],
                          telemetry_queued((telemetry_signal)s));
    return r;
}

static void count_dropped(telemetry_signal s, uint64_t n, const char *why)
{
    record_queue *q = &T.queue[s];
    atomic_fetch_add(&q->dropped, n);
    /* once per process: a log line per dropped record would feed itself
     * (daemon logs are exported too) */
    if (!atomic_exchange(&q->warned, true))
        log_fields(LOG_LEVEL_WARN, "telemetry records dropped (counted in cloister_telemetry_dropped_total); is the "
                   "collector reachable?", "signal", signal_names[s], "why", why, NULL);
}

/* ---- the threads' chunks ---- */

static pthread_key_t thread_key;
static _Thread_local thread_records *my_records_;

/* A new chunk with room for CAP bytes of records; NULL when out of memory. */
static chunk *chunk_new(size_t cap)
{
    chunk *c = malloc(sizeof(*c) + cap);
    if (c)
        *c = (chunk){.cap = cap};
    return c;
}

static void chunks_free(chunk *c)
{
    while (c) {
        chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* Gives full chunk C of signal S to the exporter, waking it when a batch
 * is waiting. Lock-free but for that wake-up. */
static void hand_over(telemetry_signal s, chunk *c)
{
    record_queue *q = &T.queue[s];
    c->next = atomic_load_explicit(&q->handed, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&q->handed, &c->next, c, memory_order_release,
                                                  memory_order_relaxed))
        ;
    if (atomic_load_explicit(&q->pending, memory_order_relaxed) >= T.cfg.batch_max) {
        pthread_mutex_lock(&T.lock);
        pthread_cond_signal(&T.wake);
        pthread_mutex_unlock(&T.lock);
    }
}

/* At the end of a thread: its half-full chunks go to the exporter (counted
 * as dropped when export has stopped), its spare spans are freed. */
static void thread_records_free(void *p)
{
    thread_records *tr = p;
    pthread_mutex_lock(&T.threads_lock);
    if (tr->prev)
        tr->prev->next = tr->next;
    else
        T.threads = tr->next;
    if (tr->next)
        tr->next->prev = tr->prev;
    pthread_mutex_unlock(&T.threads_lock);
    pthread_mutex_lock(&tr->lock);
    for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++) {
        chunk *c = TAKE_PTR(tr->open[s]);
        if (c && telemetry_enabled() && !atomic_load(&T.stopping))
            hand_over((telemetry_signal)s, c);
        else if (c) {
            atomic_fetch_sub(&T.queue[s].pending, c->n);
            atomic_fetch_add(&T.queue[s].dropped, c->n);
            free(c);
        }
    }
    pthread_mutex_unlock(&tr->lock);
    while (tr->spare) {
        telemetry_span *next = tr->spare->next_spare;
        free(tr->spare);
        tr->spare = next;
    }
    pthread_mutex_destroy(&tr->lock);
    free(tr);
    my_records_ = NULL; /* a record made by a later destructor of this thread starts over */
}

static void make_thread_key(void)
{
    pthread_key_create(&thread_key, thread_records_free);
}

/* The calling thread's records, made (and registered) at its first record;
 * NULL when out of memory. */
static thread_records *my_records(void)
{
    if (my_records_)
        return my_records_;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_thread_key);
    thread_records *tr = calloc(1, sizeof(*tr));
    if (!tr)
        return NULL;
    pthread_mutex_init(&tr->lock, NULL);
    pthread_mutex_lock(&T.threads_lock);
    tr->next = T.threads;
    if (T.threads)
        T.threads->prev = tr;
    T.threads = tr;
    pthread_mutex_unlock(&T.threads_lock);
    pthread_setspecific(thread_key, tr);
    return my_records_ = tr;
}

/* Writes a record of signal S (at most BOUND bytes, written by WRITE from
 * WHAT) into the calling thread's chunk, or drops it (counted) when the
 * queue is full or export is stopping. */
static void put_record(telemetry_signal s, size_t bound, char *(*write)(char *out, const void *what),
                       const void *what)
{
    record_queue *q = &T.queue[s];
    thread_records *tr = my_records();
    if (!tr) {
        count_dropped(s, 1, "out of memory");
        return;
    }
    size_t records_max = MIN((size_t)T.cfg.batch_max, (size_t)CHUNK_RECORDS_MAX);
    chunk *full[2] = {NULL, NULL};
    const char *why = NULL;
    pthread_mutex_lock(&tr->lock);
    if (atomic_load(&T.stopping))
        why = "export is stopping";
    else if (atomic_fetch_add(&q->pending, 1) >= T.cfg.queue_max) {
        atomic_fetch_sub(&q->pending, 1);
        why = "the queue is full";
    } else {
        chunk *c = tr->open[s];
        if (c && c->cap - c->len < bound + 2) { /* a comma, the record, its NUL */
            full[0] = c;
            c = tr->open[s] = NULL;
        }
        if (!c)
            c = tr->open[s] = chunk_new(MAX((size_t)CHUNK_BYTES, bound + 2));
        if (c) {
            if (c->n)
                c->data[c->len++] = ',';
            c->len = (size_t)(write(c->data + c->len, what) - c->data);
            c->data[c->len] = '\0';
            if (++c->n >= records_max)
                full[1] = TAKE_PTR(tr->open[s]);
        } else {
            atomic_fetch_sub(&q->pending, 1);
            why = "out of memory";
        }
    }
    pthread_mutex_unlock(&tr->lock);
    for (size_t i = 0; i < ELEMENTSOF(full); i++)
        if (full[i])
            hand_over(s, full[i]);
    if (why)
        count_dropped(s, 1, why);
}

/* ---- spans ---- */

telemetry_span *telemetry_span_start(const char *name, int kind, const trace_context *parent)
{
    if (!signal_on(TELEMETRY_TRACES))
        return NULL;
    thread_records *tr = my_records();
    telemetry_span *s = tr ? tr->spare : NULL;
    if (s) {
        tr->spare = s->next_spare;
        tr->n_spare--;
    } else if (!(s = malloc(sizeof(*s))))
        return NULL;
    otlp_span_init(s, name, kind, parent);
    return s;
}

void telemetry_span_set_attr_str(telemetry_span *s, const char *key, const char *value)
{
    if (s)
        otlp_span_set_str(s, key, value);
}

void telemetry_span_set_attr_int(telemetry_span *s, const char *key, int64_t value)
{
    if (s)
        otlp_span_set_int(s, key, value);
}

void telemetry_span_add_link(telemetry_span *s, const trace_context *link)
{
    if (s && link && s->n_links < OTLP_SPAN_LINKS_MAX)
        s->links[s->n_links++] = *link;
}

void telemetry_span_set_status(telemetry_span *s, int code, const char *message)
{
    if (!s)
        return;
    s->status_code = code;
    snprintf(s->status_message, sizeof(s->status_message), "%s",
             message && code == TELEMETRY_STATUS_ERROR ? message : "");
}

bool telemetry_span_context(const telemetry_span *s, trace_context *ret)
{
    if (!s)
        return false;
    *ret = s->ctx;
    return true;
}

void telemetry_span_set_name(telemetry_span *s, const char *name)
{
    if (s && name)
        snprintf(s->name, sizeof(s->name), "%s", name);
}

static _Thread_local telemetry_span *current_span;
static _Thread_local trace_context current_ctx;
static _Thread_local bool has_current_ctx;

void telemetry_set_current(telemetry_span *s)
{
    current_span = s;
    has_current_ctx = telemetry_span_context(s, &current_ctx);
}

void telemetry_set_current_context(const trace_context *c)
{
    current_span = NULL;
    has_current_ctx = c != NULL;
    if (c)
        current_ctx = *c;
}

telemetry_span *telemetry_current(void)
{
    return current_span;
}

bool telemetry_current_context(trace_context *ret)
{
    if (!has_current_ctx)
        return false;
    *ret = current_ctx;
    return true;
}

bool telemetry_traceparent_header(char out[70])
{
    trace_context c;
    if (!telemetry_current_context(&c))
        return false;
    char tp[56];
    trace_context_format(&c, tp);
    snprintf(out, 70, "traceparent: %s", tp);
    return true;
}

typedef struct span_end {
    const telemetry_span *span;
    uint64_t end_ns;
} span_end;

static char *write_span(char *out, const void *what)
{
    const span_end *e = what;
    return otlp_span_write(out, e->span, e->end_ns);
}

void telemetry_span_end(telemetry_span *s)
{
    if (!s)
        return;
    if (current_span == s)
        telemetry_set_current(NULL);
    const span_end e = {s, otlp_now_ns()};
    put_record(TELEMETRY_TRACES, otlp_span_bound(s), write_span, &e);
    otlp_span_release(s);
    thread_records *tr = my_records_;
    if (tr && tr->n_spare < SPARE_SPANS_MAX) {
        s->next_spare = tr->spare;
        tr->spare = s;
        tr->n_spare++;
    } else
        free(s);
}

/* ---- logs ---- */

static char *write_log(char *out, const void *what)
{
    return otlp_log_write(out, what);
}

void telemetry_log(int severity, const char *body, const trace_context *ctx, const char *const *attrs)
{
    if (!signal_on(TELEMETRY_LOGS) || on_exporter_thread)
        return; /* the exporter's own complaints are not exported: they would feed themselves */
    const otlp_log l = {otlp_now_ns(), severity, body, ctx, attrs};
    put_record(TELEMETRY_LOGS, otlp_log_bound(&l), write_log, &l);
}

/* ---- metrics ---- */

int telemetry_metrics_register(telemetry_metrics_source source, void *userdata)
{
    if (!signal_on(TELEMETRY_METRICS))
        return 0;
    pthread_mutex_lock(&T.lock);
    int r = -ENOSPC;
    if (T.n_sources < SOURCES_MAX) {
        T.sources[T.n_sources++] = (metrics_source){source, userdata};
        r = 0;
    }
    pthread_mutex_unlock(&T.lock);
    return r;
}

static json_t *collect_metrics(const metrics_source *only);

void telemetry_metrics_unregister(telemetry_metrics_source source, void *userdata)
{
    if (!signal_on(TELEMETRY_METRICS))
        return;
    /* the last of it, exported from the caller's thread through the queue */
    metrics_source src = {source, userdata};
    pthread_mutex_lock(&T.collecting);
    json_t *last = collect_metrics(&src);
    pthread_mutex_lock(&T.lock);
    for (size_t i = 0; i < T.n_sources; i++)
        if (T.sources[i].render == source && T.sources[i].userdata == userdata) {
            T.sources[i] = T.sources[--T.n_sources];
            break;
        }
    pthread_mutex_unlock(&T.lock);
    pthread_mutex_unlock(&T.collecting);
    if (last) {
        pthread_mutex_lock(&T.lock);
        json_decref(T.last_metrics);
        T.last_metrics = last;
        pthread_cond_signal(&T.wake);
        pthread_mutex_unlock(&T.lock);
    }
}

/* The metrics of every source now (or only of ONLY, without the exporter's
 * own), as OTLP Metric objects; NULL when there are none. Called with
 * T.collecting held, so that no source is rendered after it went away. */
static json_t *collect_metrics(const metrics_source *only)
{
    json_t *metrics = json_array();
    _cleanup_strbuf_ strbuf text;
    strbuf_init(&text, METRICS_TEXT_MAX);
    pthread_mutex_lock(&T.lock);
    size_t n = only ? 1 : T.n_sources;
    metrics_source sources[SOURCES_MAX];
    memcpy(sources, only ? only : T.sources, n * sizeof(*sources));
    pthread_mutex_unlock(&T.lock);
    int r = only ? 0 : telemetry_metrics_render(&text);
    for (size_t i = 0; r == 0 && i < n; i++)
        r = sources[i].render(&text, sources[i].userdata);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "a metrics source failed; exporting what it rendered", "error", strerror(-r), NULL);
    if (!metrics || otlp_metrics_from_prometheus(text.data ? text.data : "", T.start_ns, otlp_now_ns(), metrics) < 0 ||
        json_array_size(metrics) == 0) {
        json_decref(metrics);
        return NULL;
    }
    return metrics;
}

/* ---- sending ---- */


/* BODY (N bytes) gzip-compressed into *RET (T.gz: valid until the next
 * call), *RET_N bytes. The fastest level: OTLP JSON compresses well at any,
 * and the exporter's CPU is the serving role's. */
static int gzip(const char *body, size_t n, const unsigned char **ret, size_t *ret_n)
{
    size_t bound = libdeflate_gzip_compress_bound(T.deflate, n);
    if (bound > T.gz_cap) {
        unsigned char *gz = realloc(T.gz, bound);
        if (!gz)
            return -ENOMEM;
        T.gz = gz;
        T.gz_cap = bound;
    }
    size_t len = libdeflate_gzip_compress(T.deflate, body, n, T.gz, T.gz_cap);
    if (!len)
        return -ENOMEM;
    *ret = T.gz;
    *ret_n = len;
    return 0;
}

#define ANSWER_MAX 65536 /* of a collector's answer body read; the rest is discarded */

typedef struct answer {
    char retry_after[128];
    strbuf body;
} answer;

static size_t on_header(char *line, size_t size, size_t n, void *userdata)
{
    answer *a = userdata;
    size_t len = size * n;
    if (len > 12 && strncasecmp(line, "retry-after:", 12) == 0) {
        size_t v = MIN(len - 12, sizeof(a->retry_after) - 1);
        memcpy(a->retry_after, line + 12, v);
        a->retry_after[v] = '\0';
        a->retry_after[strcspn(a->retry_after, "\r\n")] = '\0';
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *userdata)
{
    answer *a = userdata;
    strbuf_append(&a->body, p, MIN(size * n, a->body.max - a->body.len));
    return size * n;
}

/* The records of signal S a 2xx answer BODY says were rejected
 * (partialSuccess.rejectedSpans, ...): a count, or a string of one. */
static uint64_t rejected_in(telemetry_signal s, const strbuf *body)
{
    static const char *const fields[] = {"rejectedSpans", "rejectedDataPoints", "rejectedLogRecords"};
    if (!body->len)
        return 0;
    json_t *j = json_loadb(body->data, body->len, 0, NULL);
    json_t *v = json_object_get(json_object_get(j, "partialSuccess"), fields[s]);
    uint64_t n = json_is_integer(v) ? (uint64_t)MAX(json_integer_value(v), (json_int_t)0)
                 : json_is_string(v) ? strtoull(json_string_value(v), NULL, 10)
                                     : 0;
    json_decref(j);
    return n;
}

/* Waits up to MS on the wake condition; returns false when stopping makes
 * the wait pointless (the deadline is nearer than MS). */
static bool backoff_wait(unsigned ms)
{
    uint64_t until = mono_ms() + ms;
    pthread_mutex_lock(&T.lock);
    bool ok = true;
    for (;;) {
        if (T.stopping && until > T.stop_deadline_ms) {
            ok = false;
            break;
        }
        if (mono_ms() >= until)
            break;
        wait_until(until);
    }
    pthread_mutex_unlock(&T.lock);
    return ok;
}

/* POSTs TEXT (LEN bytes: the JSON of N records of signal S; NULL: it
 * could not be made) with retries; counts the records as dropped when they
 * could not be delivered. */
static void export(telemetry_signal s, const char *text, size_t len, size_t n)
{
    const otlp_signal_config *sc = &T.cfg.signal[s];
    const unsigned char *gz = NULL;
    size_t gz_n = 0;
    if (!text || (sc->gzip && gzip(text, len, &gz, &gz_n) < 0)) {
        count_dropped(s, n, "out of memory");
        return;
    }
    const char *payload = sc->gzip ? (const char *)gz : text;
    size_t payload_n = sc->gzip ? gz_n : len;
    curl_easy_setopt(T.curl, CURLOPT_HTTPHEADER, T.headers[s]);
    curl_easy_setopt(T.curl, CURLOPT_CAINFO, sc->ca_file); /* NULL: the system's roots */
    for (unsigned attempt = 1;; attempt++) {
        answer a = {0};
        strbuf_init(&a.body, ANSWER_MAX);
        uint64_t timeout = sc->timeout_ms;
        pthread_mutex_lock(&T.lock);
        if (T.stopping) {
            uint64_t now = mono_ms();
            timeout = T.stop_deadline_ms > now ? MIN(timeout, T.stop_deadline_ms - now) : 1;
        }
        pthread_mutex_unlock(&T.lock);
        curl_easy_setopt(T.curl, CURLOPT_URL, T.cfg.signal[s].url);
        curl_easy_setopt(T.curl, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(T.curl, CURLOPT_POSTFIELDSIZE, (long)payload_n);
        curl_easy_setopt(T.curl, CURLOPT_HEADERDATA, &a);
        curl_easy_setopt(T.curl, CURLOPT_WRITEDATA, &a);
        curl_easy_setopt(T.curl, CURLOPT_TIMEOUT_MS, (long)timeout);
        CURLcode e = curl_easy_perform(T.curl);
        long status = 0;
        if (e == CURLE_OK)
            curl_easy_getinfo(T.curl, CURLINFO_RESPONSE_CODE, &status);
        uint64_t rejected = status >= 200 && status < 300 ? rejected_in(s, &a.body) : 0;
        strbuf_free(&a.body);
        if (rejected)
            count_dropped(s, MIN(rejected, (uint64_t)n), "the collector rejected part of a batch");
        if (status >= 200 && status < 300)
            return;
        unsigned delay;
        if (otlp_retry_delay(status, a.retry_after[0] ? a.retry_after : NULL, attempt, (int64_t)time(NULL), &delay) <
                0 ||
            !backoff_wait(delay)) {
            char code[16], url[512];
            snprintf(code, sizeof(code), "%ld", status);
            log_fields(LOG_LEVEL_WARN, "the OTLP collector did not take a batch; it is dropped", "signal",
                       signal_names[s], "url", otlp_loggable_url(T.cfg.signal[s].url, url, sizeof(url)), "status",
                       status ? code : curl_easy_strerror(e), NULL);
            count_dropped(s, n, status ? "the collector refused them" : "the collector is unreachable");
            return;
        }
    }
}

/* Appends chunk C to Q's ready list. */
static void ready_append(record_queue *q, chunk *c)
{
    c->next = NULL;
    if (!q->ready)
        q->ready_tail = &q->ready;
    *q->ready_tail = c;
    q->ready_tail = &c->next;
}

/* Moves the chunks handed over for Q to its ready list, oldest first. */
static void gather_handed(record_queue *q)
{
    chunk *c = atomic_exchange_explicit(&q->handed, NULL, memory_order_acquire), *oldest = NULL;
    while (c) {
        chunk *next = c->next;
        c->next = oldest;
        oldest = c;
        c = next;
    }
    while (oldest) {
        chunk *next = oldest->next;
        ready_append(q, oldest);
        oldest = next;
    }
}

/* Moves every thread's half-full chunk of signal S to its ready list. */
static void gather_open(telemetry_signal s)
{
    pthread_mutex_lock(&T.threads_lock);
    for (thread_records *tr = T.threads; tr; tr = tr->next) {
        pthread_mutex_lock(&tr->lock);
        chunk *c = TAKE_PTR(tr->open[s]);
        pthread_mutex_unlock(&tr->lock);
        if (c)
            ready_append(&T.queue[s], c);
    }
    pthread_mutex_unlock(&T.threads_lock);
}

/* Takes the records of one request of signal S: whole chunks, oldest
 * first, at most batch_max records (a chunk holds no more), the threads'
 * half-full chunks too when FLUSH or when what was handed over is not a
 * batch. Returns the chunks (NULL: none), *RET_N the records in them. */
static chunk *take_batch(telemetry_signal s, bool flush, size_t *ret_n)
{
    record_queue *q = &T.queue[s];
    gather_handed(q);
    size_t ready = 0;
    for (chunk *c = q->ready; c && ready < T.cfg.batch_max; c = c->next)
        ready += c->n;
    if (ready < T.cfg.batch_max && (flush || atomic_load(&q->pending) >= T.cfg.batch_max))
        gather_open(s);
    chunk *batch = NULL, **tail = &batch;
    size_t n = 0;
    while (q->ready && (n == 0 || n + q->ready->n <= T.cfg.batch_max)) {
        chunk *c = q->ready;
        q->ready = c->next;
        c->next = NULL;
        *tail = c;
        tail = &c->next;
        n += c->n;
    }
    atomic_fetch_sub(&q->pending, n);
    *ret_n = n;
    return batch;
}

/* The request body of the records in the chunks BATCH of signal S (freed)
 * in T.body (NULL when it could not be made). */
static const char *batch_body(telemetry_signal s, chunk *batch)
{
    size_t n = 0;
    for (chunk *c = batch; c; c = c->next)
        n++;
    _cleanup_free_ const char **texts = malloc(n * sizeof(*texts));
    n = 0;
    for (chunk *c = batch; texts && c; c = c->next)
        texts[n++] = c->data;
    strbuf_reset(&T.body);
    int r = texts ? otlp_envelope_text(&T.body, s, T.resource_text, texts, n) : -ENOMEM;
    chunks_free(batch);
    return r == 0 ? T.body.data : NULL;
}

/* Whether Q holds records the exporter could take now (when STOPPING, any
 * record still pending). */
static bool queue_has_more(record_queue *q, bool stopping)
{
    return q->ready || atomic_load(&q->handed) || (stopping && atomic_load(&q->pending));
}

/* Exports METRICS (an array of OTLP Metric objects, stolen). */
static void export_metrics(json_t *metrics)
{
    json_t *body = otlp_envelope(TELEMETRY_METRICS, T.cfg.resource, metrics);
    _cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    export(TELEMETRY_METRICS, text, text ? strlen(text) : 0, 1);
}

static void *exporter_main(void *arg)
{
    (void)arg;
    on_exporter_thread = true;
    uint64_t next_flush = mono_ms() + T.cfg.delay_ms, next_metrics = mono_ms() + T.cfg.metric_interval_ms;
    for (;;) {
        pthread_mutex_lock(&T.lock);
        for (;;) {
            uint64_t now = mono_ms();
            bool full = false;
            for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++)
                full = full || atomic_load(&T.queue[s].pending) >= T.cfg.batch_max;
            if (T.stopping || full || T.last_metrics || now >= next_flush || now >= next_metrics)
                break;
            wait_until(MIN(next_flush, next_metrics));
        }
        bool stopping = T.stopping;
        pthread_mutex_unlock(&T.lock);
        uint64_t now = mono_ms();
        bool flush = stopping || now >= next_flush, more = false;
        for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++) {
            record_queue *q = &T.queue[s];
            if (!atomic_load(&q->pending) || !(flush || atomic_load(&q->pending) >= T.cfg.batch_max))
                continue;
            size_t n;
            chunk *batch = take_batch((telemetry_signal)s, flush, &n);
            if (batch) {
                const char *text = batch_body((telemetry_signal)s, batch);
                export((telemetry_signal)s, text, T.body.len, n);
            }
            more = more || queue_has_more(q, stopping);
        }
        if (flush && !more)
            next_flush = mono_ms() + T.cfg.delay_ms;
        pthread_mutex_lock(&T.lock);
        json_t *last = TAKE_PTR(T.last_metrics);
        pthread_mutex_unlock(&T.lock);
        if (last)
            export_metrics(last);
        if (T.cfg.signal[TELEMETRY_METRICS].url && (stopping || mono_ms() >= next_metrics)) {
            next_metrics = mono_ms() + T.cfg.metric_interval_ms;
            pthread_mutex_lock(&T.collecting);
            json_t *metrics = collect_metrics(NULL);
            pthread_mutex_unlock(&T.collecting);
            if (metrics)
                export_metrics(metrics);
        } else if (!T.cfg.signal[TELEMETRY_METRICS].url)
            next_metrics = UINT64_MAX;
        if (stopping && !more)
            return NULL;
        if (stopping && mono_ms() >= T.stop_deadline_ms) {
            /* what is still queued is dropped (counted by shutdown) */
            return NULL;
        }
    }
}

/* ---- start and stop ---- */

static const char *real_getenv(const char *name, void *userdata)
{
    (void)userdata;
    return getenv(name);
}

/* A random UUID (version 4) for service.instance.id. */
static void uuid4(char out[37])
{
    uint8_t b[16];
    otlp_random_id(b, sizeof(b));
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char h[33];
    hex_encode(b, 16, h);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

/* Appends LINE to *H; on failure frees the list (*H NULL) and returns false. */
static bool append_header(struct curl_slist **h, const char *line)
{
    struct curl_slist *more = line ? curl_slist_append(*h, line) : NULL;
    if (!more)
        curl_slist_free_all(*h);
    *h = more;
    return more != NULL;
}

/* Signal SC's request headers into *RET: the content's type and encoding,
 * ours, the configured ones. Returns 0 or -ENOMEM. */
static int signal_headers(const otlp_signal_config *sc, struct curl_slist **ret)
{
    struct curl_slist *h = NULL;
    bool ok = append_header(&h, "Content-Type: application/json") &&
              (!sc->gzip || append_header(&h, "Content-Encoding: gzip")) &&
              append_header(&h, "User-Agent: cloister/" CLOISTER_VERSION);
    for (size_t i = 0; ok && i < sc->n_headers; i++) {
        _cleanup_free_ char *line = NULL;
        if (asprintf(&line, "%s: %s", sc->headers[i].name, sc->headers[i].value) < 0)
            line = NULL;
        ok = append_header(&h, line);
    }
    if (!ok)
        return -ENOMEM;
    *ret = h;
    return 0;
}

/* Frees the exporter thread's compressor and buffers. */
static void free_buffers(void)
{
    libdeflate_free_compressor(TAKE_PTR(T.deflate));
    strbuf_free(&T.body);
    free(TAKE_PTR(T.gz));
    T.gz_cap = 0;
}

static void free_headers(void)
{
    for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++) {
        curl_slist_free_all(T.headers[s]);
        T.headers[s] = NULL;
    }
}

/* A child forked by an exporting process has no exporter thread, and T.lock
 * may have been held when it was copied: export is off there. */
static void off_in_child(void)
{
    atomic_store(&T.enabled, false);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, off_in_child);
}

int telemetry_init(const char *service_name)
{
    if (telemetry_enabled())
        return -EALREADY;
    const char *why = NULL;
    otlp_config cfg;
    int r = otlp_config_parse(real_getenv, NULL, service_name, &cfg, &why);
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "the OpenTelemetry configuration cannot be used; fix the variable (docs/telemetry.md)",
                   "variable", why, "error", strerror(-r), NULL);
        return r;
    }
    if (!cfg.signal[TELEMETRY_TRACES].url && !cfg.signal[TELEMETRY_METRICS].url && !cfg.signal[TELEMETRY_LOGS].url) {
        otlp_config_free(&cfg);
        return 0;
    }
    char instance[37], pid[16];
    uuid4(instance);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    const char *role = strncmp(service_name, "cloisterd-", 10) == 0 ? service_name + 10 : service_name;
    json_array_append_new(cfg.resource, otlp_attr_str("service.instance.id", instance));
    json_array_append_new(cfg.resource, otlp_attr_int("process.pid", getpid()));
    json_array_append_new(cfg.resource, otlp_attr_str("cloister.role", role));
    json_array_append_new(cfg.resource, otlp_attr_str("telemetry.sdk.name", "cloister"));
    json_array_append_new(cfg.resource, otlp_attr_str("telemetry.sdk.version", CLOISTER_VERSION));

    /* the exporter's waits are timed on the monotonic clock */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&T.wake, &ca);
    pthread_condattr_destroy(&ca);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    T.curl = curl_easy_init();
    T.deflate = libdeflate_alloc_compressor(1);
    strbuf_init(&T.body, BODY_MAX);
    r = T.curl && T.deflate ? 0 : -ENOMEM;
    for (int s = 0; r == 0 && s < TELEMETRY_SIGNAL_COUNT_; s++)
        r = signal_headers(&cfg.signal[s], &T.headers[s]);
    if (r == 0 && !(T.resource_text = json_dumps(cfg.resource, JSON_COMPACT)))
        r = -ENOMEM;
    if (r == 0) {
        curl_easy_setopt(T.curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(T.curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(T.curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(T.curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        curl_easy_setopt(T.curl, CURLOPT_PROTOCOLS_STR, "http,https");
        T.cfg = cfg;
        T.start_ns = otlp_now_ns();
        T.stopping = false;
        atomic_store(&T.enabled, true);
        if ((r = -pthread_create(&T.thread, NULL, exporter_main, NULL)) < 0)
            atomic_store(&T.enabled, false);
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        if (r == 0)
            pthread_once(&once, register_atfork);
    }
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot start the OpenTelemetry exporter", "error", strerror(-r), NULL);
        free_headers();
        free_buffers();
        curl_easy_cleanup(T.curl);
        T.curl = NULL;
        free(TAKE_PTR(T.resource_text));
        T.cfg = (otlp_config){0};
        otlp_config_free(&cfg);
        return r;
    }
    char urls[TELEMETRY_SIGNAL_COUNT_][512];
    log_fields(LOG_LEVEL_INFO, "exporting OpenTelemetry traces, metrics and logs over OTLP/HTTP", "traces",
               otlp_loggable_url(cfg.signal[TELEMETRY_TRACES].url, urls[0], sizeof(urls[0])), "metrics",
               otlp_loggable_url(cfg.signal[TELEMETRY_METRICS].url, urls[1], sizeof(urls[1])), "logs",
               otlp_loggable_url(cfg.signal[TELEMETRY_LOGS].url, urls[2], sizeof(urls[2])), "service", service_name, NULL);
    return 0;
}

void telemetry_shutdown(void)
{
    if (!telemetry_enabled())
        return;
    pthread_mutex_lock(&T.lock);
    T.stopping = true;
    T.stop_deadline_ms = mono_ms() + SHUTDOWN_FLUSH_MS;
    pthread_cond_broadcast(&T.wake);
    pthread_mutex_unlock(&T.lock);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += SHUTDOWN_FLUSH_MS / 1000 + 2;
    if (pthread_timedjoin_np(T.thread, NULL, &ts) != 0) {
        /* stuck in the network past its deadline: left to the process's exit */
        log_fields(LOG_LEVEL_WARN, "the OpenTelemetry exporter did not finish in time; what it held is lost", NULL);
        return;
    }
    atomic_store(&T.enabled, false);
    /* what the exporter did not send, wherever it is, counts as dropped */
    for (int s = 0; s < TELEMETRY_SIGNAL_COUNT_; s++) {
        gather_open((telemetry_signal)s);
        record_queue *q = &T.queue[s];
        gather_handed(q);
        chunks_free(TAKE_PTR(q->ready));
        atomic_fetch_add(&dropped_after_stop[s], atomic_load(&q->dropped) + atomic_load(&q->pending));
        atomic_store(&q->pending, 0);
        atomic_store(&q->dropped, 0);
        atomic_store(&q->warned, false);
    }
    free_headers();
    free_buffers();
    curl_easy_cleanup(T.curl);
    T.curl = NULL;
    T.n_sources = 0;
    json_decref(TAKE_PTR(T.last_metrics));
    free(TAKE_PTR(T.resource_text));
    otlp_config_free(&T.cfg);
}
