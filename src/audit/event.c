/* Delivery of audit events to the audit role: producers format a canonical
 * entry and put it in a bounded queue; one background thread sends the
 * queue's head in batches over the role's Unix socket and removes the
 * entries once the role acknowledged them as durable. An event that cannot
 * be queued or delivered is written to the log, never silently lost. */
#include "audit/event.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "audit/client.h"
#include "audit/entry.h"
#include "audit/segment.h"
#include "basic/background.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"

#define QUEUE_MAX 65536                    /* entries waiting for the role */
#define BATCH_ENTRIES_MAX 4096             /* entries per append request */
#define BATCH_BYTES_MAX (4 * 1024 * 1024)  /* bytes per append request */
#define SEND_TIMEOUT_MS 10000
#define RETRY_MIN_MS 50
#define RETRY_MAX_MS 2000

/* An entry, and for an access-log segment's head the segment's bytes the
 * role stores before it appends the entry (audit_event_emit_segment()); or
 * a segment's bytes alone (TEXT NULL). */
typedef struct queued_entry {
    char *text;
    size_t len;
    char *chunk;   /* NULL, or a copy of the segment's bytes at OFFSET */
    int spool_fd;  /* -1, or the spool file holding them at OFFSET (read-only; CHUNK is then NULL) */
    size_t chunk_len;
    uint64_t offset;
    bool chunk_stored;  /* the role has them (a retried batch does not send them again) */
    bool chunk_refused; /* the role refused them for good: not durable, as if logged */
    bool spool_synced;  /* the spool file was synced because the bytes did not reach the role */
    char segment[SEGMENT_ID_MAX + 1];
    void (*delivered)(void *userdata, const char *segment); /* NULL, or told once chunk and entry are stored */
    void *userdata;
} queued_entry;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;    /* new entries, or stop */
    pthread_cond_t settled; /* entries left the queue (delivered or logged) */
    uint64_t queued_total, settled_total;
    uint64_t logged_through; /* the highest entry number (1-based) logged instead of delivered */
    pthread_t thread;
    bool started, stopping;
    uint64_t deadline_ns; /* monotonic; set when stopping */
    queued_entry ring[QUEUE_MAX];
    size_t head, count;
    char channel[4300]; /* the audit role's spool channel (segment.h), or "" when it runs elsewhere */
} q = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .settled = PTHREAD_COND_INITIALIZER};

static int channel_conn = -1; /* the sender's connection to the spool channel */
static _Atomic uint64_t dropped;
static _Atomic bool failing; /* the last delivery attempt failed */

bool audit_event_deliverable(void)
{
    pthread_mutex_lock(&q.lock);
    bool ok = q.started && !q.stopping && q.count < QUEUE_MAX;
    pthread_mutex_unlock(&q.lock);
    return ok && !atomic_load(&failing);
}

uint64_t audit_event_dropped(void)
{
    return atomic_load(&dropped);
}

/* Writes an entry that will not reach the audit role to the log; for
 * segment bytes alone, that they stay in the proxy's spool. */
static void log_undelivered(const queued_entry *e, const char *why)
{
    if (e->text)
        log_fields(LOG_LEVEL_WARN, "audit event not delivered to the audit role; logged here instead", "reason", why,
                   "entry", e->text, NULL);
    else
        log_fields(LOG_LEVEL_WARN, "access-log bytes not delivered to the audit role; they stay in the proxy's "
                                   "segment file", "reason", why, "segment", e->segment, NULL);
}

/* E's segment bytes, or the head that commits them, did not reach the role
 * (yet): the spool file they stay in is synced, once, as the role would
 * have synced its copy before appending the head. */
static void spool_keep(queued_entry *e)
{
    if (e->spool_fd < 0 || e->spool_synced)
        return;
    e->spool_synced = true;
    if (fdatasync(e->spool_fd) < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot sync the proxy's access-log segment file holding undelivered records",
                   "segment", e->segment, "error", strerror(errno), NULL);
}

json_t *audit_event_entry(const audit_event *ev)
{
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    json_t *details = ev->details ? json_incref(ev->details) : json_object();
    return json_pack("{s:s, s:{s:s?, s:s?, s:s?}, s:s, s:{s:s?, s:s?}, s:s, s:o}", "time", now, "actor", "user",
                     ev->user, "session", ev->session, "ip", ev->ip && *ev->ip ? ev->ip : NULL, "action", ev->action,
                     "resource", "kind", ev->kind, "name", ev->name, "outcome", ev->outcome, "details", details);
}

/* The event as a canonical entry (heap, caller frees) or NULL. */
static char *entry_text(const audit_event *ev, size_t *ret_len)
{
    json_t *e = audit_event_entry(ev);
    if (!e)
        return NULL;
    char *text = NULL;
    size_t len = 0;
    int r = audit_entry_submission_canonicalize(e, &text, &len);
    json_decref(e);
    if (r < 0)
        return NULL;
    *ret_len = len;
    return text;
}

/* Queues E (taking its text and chunk), or logs it when delivery is not
 * started or the queue is full. Returns 0 when queued, else -ENOBUFS. */
static int enqueue(queued_entry *e)
{
    pthread_mutex_lock(&q.lock);
    bool started = q.started && !q.stopping, full = q.count == QUEUE_MAX;
    if (started && !full) {
        q.ring[(q.head + q.count) % QUEUE_MAX] = *e;
        q.count++;
        q.queued_total++;
        pthread_cond_signal(&q.wake);
    }
    pthread_mutex_unlock(&q.lock);
    if (started && !full)
        return 0;
    if (!started && e->text)
        log_fields(LOG_LEVEL_INFO, "audit event", "entry", e->text, NULL);
    else if (!started)
        log_undelivered(e, "audit delivery is not running");
    else {
        atomic_fetch_add(&dropped, 1);
        log_undelivered(e, "the queue is full (the audit role is unavailable or slow)");
    }
    free(e->text);
    free(e->chunk);
    spool_keep(e);
    if (e->spool_fd >= 0)
        close(e->spool_fd);
    return -ENOBUFS;
}

void audit_event_emit(const audit_event *ev)
{
    size_t len;
    char *text = entry_text(ev, &len);
    if (!text) {
        char *details = ev->details ? json_dumps(ev->details, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        atomic_fetch_add(&dropped, 1);
        log_fields(LOG_LEVEL_WARN, "audit event is not a valid entry; logged here instead", "action", ev->action,
                   "user", ev->user ? ev->user : "", "kind", ev->kind ? ev->kind : "", "name",
                   ev->name ? ev->name : "", "outcome", ev->outcome, "details", details ? details : "{}", NULL);
        free(details);
        return;
    }
    enqueue(&(queued_entry){.text = text, .len = len, .spool_fd = -1});
}

int audit_event_emit_segment(const char *segment, uint64_t offset, const char *chunk, size_t len, int spool_fd,
                             const audit_event *head, void (*delivered)(void *userdata, const char *segment),
                             void *userdata)
{
    queued_entry e = {.chunk = spool_fd < 0 ? malloc(len ? len : 1) : NULL, .spool_fd = spool_fd, .chunk_len = len,
                      .offset = offset, .delivered = delivered, .userdata = userdata};
    if ((spool_fd < 0 && !e.chunk) || !segment_id_valid(segment, strlen(segment)) ||
        (head && !(e.text = entry_text(head, &e.len)))) {
        free(e.chunk);
        if (spool_fd >= 0)
            close(spool_fd);
        atomic_fetch_add(&dropped, 1);
        log_fields(LOG_LEVEL_WARN, "an access-log segment head could not be queued; its records stay in the proxy's "
                                   "segment file", "segment", segment, NULL);
        return -ENOBUFS;
    }
    if (e.chunk)
        memcpy(e.chunk, chunk, len);
    snprintf(e.segment, sizeof(e.segment), "%s", segment);
    return enqueue(&e);
}

/* Frees the N entries at the head of the queue; logs them first when
 * UNDELIVERED is set. Called with the lock held. */
static void pop_head(size_t n, const char *undelivered)
{
    for (size_t i = 0; i < n; i++) {
        queued_entry *e = &q.ring[q.head];
        if (undelivered) {
            atomic_fetch_add(&dropped, 1);
            log_undelivered(e, undelivered);
        }
        if (undelivered || e->chunk_refused) {
            q.logged_through = q.settled_total + i + 1;
            spool_keep(e);
        }
        free(e->text);
        free(e->chunk);
        if (e->spool_fd >= 0)
            close(e->spool_fd);
        *e = (queued_entry){0};
        q.head = (q.head + 1) % QUEUE_MAX;
        q.count--;
    }
    q.settled_total += n;
    pthread_cond_broadcast(&q.settled);
}

/* Hands E's bytes to the role as their spool file's descriptor on the
 * spool channel, and reads its answer: the status into *RET_STATUS, the
 * text after it into ANSWER (SIZE bytes). Returns 0, or a negative errno
 * when the channel cannot be used (the connection is then closed). */
static int send_chunk_fd(const queued_entry *e, long *ret_status, char *answer, size_t size)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (channel_conn < 0 && strlen(q.channel) < sizeof(sa.sun_path)) {
        strcpy(sa.sun_path, q.channel);
        channel_conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (channel_conn >= 0 && connect(channel_conn, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(channel_conn);
            channel_conn = -1;
        }
    }
    if (channel_conn < 0)
        return -ENOTCONN;
    char msg[SEGMENT_CHANNEL_MESSAGE_MAX];
    int len = snprintf(msg, sizeof(msg), "id=%s&offset=%llu&length=%zu", e->segment, (unsigned long long)e->offset,
                       e->chunk_len);
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control = {0};
    struct iovec iov = {msg, (size_t)len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    *c = (struct cmsghdr){.cmsg_len = CMSG_LEN(sizeof(int)), .cmsg_level = SOL_SOCKET, .cmsg_type = SCM_RIGHTS};
    memcpy(CMSG_DATA(c), &e->spool_fd, sizeof(int));
    struct pollfd p = {.fd = channel_conn, .events = POLLIN};
    ssize_t got = -1;
    if (sendmsg(channel_conn, &mh, MSG_NOSIGNAL) == len && poll(&p, 1, SEND_TIMEOUT_MS) == 1)
        got = recv(channel_conn, answer, size - 1, MSG_DONTWAIT);
    char *rest = NULL;
    if (got > 0) {
        answer[got] = 0;
        *ret_status = strtol(answer, &rest, 10);
    }
    if (!rest || *rest != ' ') {
        close(channel_conn);
        channel_conn = -1;
        return -EPIPE;
    }
    memmove(answer, rest + 1, strlen(rest + 1) + 1);
    return 0;
}

/* E's bytes read back from its spool file, for the role reached over HTTP:
 * heap (caller frees), or NULL (logged) when the file does not hold them. */
static char *spool_read(const queued_entry *e)
{
    char *data = malloc(e->chunk_len ? e->chunk_len : 1);
    if (data && fd_pread_all(e->spool_fd, data, e->chunk_len, e->offset) == 0)
        return data;
    free(data);
    log_fields(LOG_LEVEL_ERROR, "cannot read access-log bytes back from the proxy's spool file; the audit role does "
                                "not get them", "segment", e->segment, NULL);
    return NULL;
}

/* Stores the segment bytes of queued entry E with the role (stable while
 * the lock is released, as in send_batch()): as its spool file's
 * descriptor on the spool channel when the role runs here, else (or when
 * the channel cannot be used) the bytes themselves in POST
 * /v1/segment?id=&offset=. Returns 0 when stored or refused for good
 * (logged: they stay in the proxy's own segment file, synced, and verify
 * reports the records missing), a negative errno when it should be
 * retried. */
static int send_chunk(audit_client *c, queued_entry *e)
{
    long status = 0;
    char answer[512];
    _cleanup_free_ char *resp = NULL, *bytes = NULL;
    const char *said = answer;
    int r = e->spool_fd >= 0 && q.channel[0] ? send_chunk_fd(e, &status, answer, sizeof(answer)) : -ENOTCONN;
    if (r < 0) {
        const char *data = e->chunk ? e->chunk : (bytes = spool_read(e));
        char path[128];
        size_t resp_len;
        snprintf(path, sizeof(path), "/v1/segment?id=%s&offset=%llu", e->segment, (unsigned long long)e->offset);
        r = data ? audit_client_request(c, "POST", path, data, e->chunk_len, SEND_TIMEOUT_MS, &status, &resp,
                                        &resp_len)
                 : 0;
        said = resp ? resp : "";
    }
    if (r < 0)
        return r;
    if (status >= 500)
        return -EPROTO;
    e->chunk_stored = true;
    e->chunk_refused = status != 200;
    if (e->chunk_refused)
        spool_keep(e);
    if (status != 200 && status != 0)
        log_fields(LOG_LEVEL_WARN, "the audit role refused an access-log segment's bytes; they stay in the proxy's "
                                   "segment file", "segment", e->segment, "answer", said, NULL);
    return 0;
}

/* Sends the first N queued entries (stable while the lock is released: only
 * this thread removes entries), each segment's bytes before the entries.
 * Returns 1 when acknowledged, 0 when the role refused them for good, a
 * negative errno when it should be retried. */
static int send_batch(audit_client *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        queued_entry *e = &q.ring[(q.head + i) % QUEUE_MAX];
        int r = (e->chunk || e->spool_fd >= 0) && !e->chunk_stored ? send_chunk(c, e) : 0;
        if (r < 0)
            return r;
    }
    _cleanup_strbuf_ strbuf body;
    strbuf_init(&body, BATCH_BYTES_MAX + 64);
    int r = strbuf_puts(&body, "{\"entries\":[");
    size_t texts = 0; /* segment bytes alone have no entry */
    for (size_t i = 0; i < n && r == 0; i++) {
        const queued_entry *e = &q.ring[(q.head + i) % QUEUE_MAX];
        if (e->text && texts++ > 0)
            r = strbuf_putc(&body, ',');
        if (e->text && r == 0)
            r = strbuf_append(&body, e->text, e->len);
    }
    if (r == 0 && texts == 0)
        return 1;
    if (r == 0)
        r = strbuf_puts(&body, "]}");
    if (r < 0)
        return r;
    long status;
    char *resp;
    size_t resp_len;
    r = audit_client_request(c, "POST", "/v1/append", body.data, body.len, SEND_TIMEOUT_MS, &status, &resp,
                             &resp_len);
    if (r < 0)
        return r;
    json_t *j = json_loadb(resp, resp_len, 0, NULL);
    free(resp);
    json_int_t count = json_integer_value(json_object_get(j, "count"));
    json_decref(j);
    if (status == 200 && count == (json_int_t)texts)
        return 1;
    return status >= 400 && status < 500 ? 0 : -EPROTO;
}

/* Tells the producers of the first N queued entries, just acknowledged,
 * that their segment bytes and heads are stored (the entries are stable
 * until this thread pops them, so without the lock). */
static void tell_delivered(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const queued_entry *e = &q.ring[(q.head + i) % QUEUE_MAX];
        if (e->delivered && e->chunk_stored && !e->chunk_refused)
            e->delivered(e->userdata, e->segment);
    }
}

/* How many head entries fit one batch. Called with the lock held. */
static size_t batch_size(void)
{
    size_t n = 0, bytes = 0;
    while (n < q.count && n < BATCH_ENTRIES_MAX) {
        size_t len = q.ring[(q.head + n) % QUEUE_MAX].len + 1;
        if (n > 0 && bytes + len > BATCH_BYTES_MAX)
            break;
        bytes += len;
        n++;
    }
    return n;
}

/* CLOCK_REALTIME deadline TIMEOUT_MS from now, for pthread_cond_timedwait. */
static struct timespec deadline_in(unsigned timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* The delivery thread (owns the client C): sends the queue's head in
 * batches, backs off while the role is unreachable, and when stopping logs
 * whatever it could not deliver before the deadline. */
static void *sender_main(void *arg)
{
    thread_set_background(); /* delivery waits behind the requests that made the events */
    audit_client *c = arg;
    unsigned retry_ms = RETRY_MIN_MS;
    bool warned = false;
    pthread_mutex_lock(&q.lock);
    for (;;) {
        while (q.count == 0 && !q.stopping)
            pthread_cond_wait(&q.wake, &q.lock);
        if (q.count == 0 || (q.stopping && time_mono_ns() > q.deadline_ns))
            break;
        size_t n = batch_size();
        pthread_mutex_unlock(&q.lock);
        int r = send_batch(c, n);
        if (r == 1)
            tell_delivered(n);
        else /* not committed: the bytes stay in the spool until they are */
            for (size_t i = 0; i < n; i++)
                spool_keep(&q.ring[(q.head + i) % QUEUE_MAX]);
        pthread_mutex_lock(&q.lock);
        atomic_store(&failing, r < 0);
        if (r >= 0) {
            pop_head(n, r == 0 ? "the audit role refused the batch" : NULL);
            retry_ms = RETRY_MIN_MS;
            if (warned)
                log_info("audit role reachable again; delivering queued events");
            warned = false;
            continue;
        }
        if (!warned)
            log_fields(LOG_LEVEL_WARN, "cannot deliver audit events; retrying", "error", strerror(-r), NULL);
        warned = true;
        /* wait before retrying, unless stopping */
        uint64_t until = time_mono_ns() + retry_ms * NSEC_PER_MSEC;
        if (q.stopping && until > q.deadline_ns)
            break;
        struct timespec ts = deadline_in(retry_ms);
        pthread_cond_timedwait(&q.wake, &q.lock, &ts);
        retry_ms = retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2;
    }
    pop_head(q.count, "stopping before the audit role acknowledged it");
    pthread_mutex_unlock(&q.lock);
    audit_client_free(c);
    if (channel_conn >= 0)
        close(channel_conn);
    channel_conn = -1;
    return NULL;
}

int audit_event_start(const char *socket_path)
{
    audit_client *c;
    int r = audit_client_new("audit", socket_path, &c);
    if (r < 0)
        return r;
    pthread_mutex_lock(&q.lock);
    if (q.started) {
        pthread_mutex_unlock(&q.lock);
        audit_client_free(c);
        return -EALREADY;
    }
    if (!segment_channel_path(socket_path, q.channel, sizeof(q.channel)))
        q.channel[0] = 0;
    r = -pthread_create(&q.thread, NULL, sender_main, c);
    if (r == 0)
        q.started = true;
    pthread_mutex_unlock(&q.lock);
    if (r < 0)
        audit_client_free(c);
    return r;
}

int audit_event_flush(unsigned timeout_ms)
{
    struct timespec ts = deadline_in(timeout_ms);
    int r = 0;
    pthread_mutex_lock(&q.lock);
    uint64_t target = q.queued_total;
    while (q.started && q.settled_total < target && r == 0)
        r = -pthread_cond_timedwait(&q.settled, &q.lock, &ts);
    pthread_mutex_unlock(&q.lock);
    return r;
}

int audit_event_commit(unsigned timeout_ms)
{
    struct timespec ts = deadline_in(timeout_ms);
    int r = 0;
    pthread_mutex_lock(&q.lock);
    uint64_t start = q.settled_total, target = q.queued_total;
    if (!q.started)
        r = -ENOTCONN;
    while (r == 0 && q.settled_total < target)
        r = q.started ? -pthread_cond_timedwait(&q.settled, &q.lock, &ts) : -ENOTCONN;
    if (r == 0 && q.logged_through > start)
        r = -EIO;
    pthread_mutex_unlock(&q.lock);
    return r;
}

void audit_event_stop(unsigned timeout_ms)
{
    pthread_mutex_lock(&q.lock);
    if (!q.started || q.stopping) {
        pthread_mutex_unlock(&q.lock);
        return;
    }
    q.stopping = true;
    q.deadline_ns = time_mono_ns() + timeout_ms * NSEC_PER_MSEC;
    pthread_cond_broadcast(&q.wake);
    pthread_mutex_unlock(&q.lock);
    pthread_join(q.thread, NULL);
    pthread_mutex_lock(&q.lock);
    q.started = false;
    q.stopping = false;
    pthread_mutex_unlock(&q.lock);
}

int audit_event_append(const audit_event *ev, const char *socket_path, unsigned timeout_ms, uint64_t *ret_index)
{
    size_t len;
    _cleanup_free_ char *text = entry_text(ev, &len);
    if (!text)
        return -EINVAL;
    /* what was emitted before goes first: the log keeps the order of events */
    int r = audit_event_flush(timeout_ms);
    if (r < 0)
        return r;
    audit_client *c;
    if ((r = audit_client_new("audit", socket_path, &c)) < 0)
        return r;
    _cleanup_free_ char *body = NULL, *resp = NULL;
    size_t resp_len;
    long status = 0;
    if (asprintf(&body, "{\"entries\":[%s]}", text) < 0)
        r = -ENOMEM;
    else
        r = audit_client_request(c, "POST", "/v1/append", body, strlen(body), (long)timeout_ms, &status, &resp,
                                 &resp_len);
    audit_client_free(c);
    if (r < 0)
        return r;
    json_t *j = json_loadb(resp, resp_len, 0, NULL);
    json_t *first = json_object_get(j, "first");
    r = status == 200 && json_is_integer(first) && json_integer_value(first) >= 0 ? 0 : -EPROTO;
    if (r == 0)
        *ret_index = (uint64_t)json_integer_value(first);
    json_decref(j);
    return r;
}
