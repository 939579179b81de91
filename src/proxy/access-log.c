/* The access log: one record per request, appended by each proxy thread to
 * its own segment file in the proxy's subtree (<data>/proxy/access/<id>),
 * hash-chained (audit/segment.h). What is pending is written at most
 * ACCESS_FLUSH_MS after its first record, when ACCESS_PENDING_MAX bytes
 * wait, at rotation and at shutdown: one write(2) to the file, then queued
 * for the audit role (ACCESS_DELIVERY_MIN bytes at a time, or sooner with a
 * head) as a read-only descriptor of the file, from which the role copies
 * the bytes into its own subtree (audit/event.h). The segment's
 * chain head (a proxy.access audit entry, which the role appends to the
 * Merkle log after the bytes) goes with a flush at most once per
 * ACCESS_FLUSH_MS, and always at rotation, at shutdown and for a failClosed
 * request's record: a busy thread's flushes of a full buffer between them
 * only store bytes. A loop only encodes its records, leaving room before
 * each for its chain value: the writer chains a batch's lines before it
 * writes them. Nothing is parsed again on the way. The file is a
 * spool in the page cache, not synced: a record is durable once the head
 * that commits it is appended (the role syncs its copy first), or, when the
 * role does not take the bytes, once the delivery thread has synced the
 * file (audit/event.c); a busy thread's segment, removed once the role
 * holds it whole, goes long before the kernel writes its pages back.
 * The write and the queueing are the process's segment writer thread's, in
 * the order the loops hand their batches over, so a loop never waits on
 * the disk: it swaps its pending buffer for the one the writer gave back. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "audit/event.h"
#include "audit/segment.h"
#include "basic/background.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/offload.h"
#include "proxy/corridor.h"

#define ACCESS_FLUSH_MS 1000               /* a record is committed at most this long after it was written (a disk keeping up) */
#define ACCESS_PENDING_MAX (128 * 1024)    /* bytes of records written and stored at once, at most */
#define ACCESS_DELIVERY_MIN (512 * 1024)   /* written bytes handed to the audit role at once, unless a head goes sooner */
#define ACCESS_SEGMENT_AGE_NS (3600 * NSEC_PER_SEC) /* a segment is rotated after an hour */
#define ACCESS_RECORD_MAX 2600             /* the longest record: path, policy, rule and names at their caps */
#define ACCESS_LINE_MAX (SEGMENT_HEX_LEN + ACCESS_RECORD_MAX + 2)
#define ACCESS_COMMIT_TIMEOUT_MS 3000      /* a failClosed request waits this long for its record's commit */
#define ACCESS_DRAIN_TIMEOUT_MS 10000      /* a stopping thread waits this long for the writer to take its last records */

const char *const proxy_access_fields[PROXY_ACCESS_FIELDS_N] = {
    "time", "requestId", "user", "session", "ip", "service", "method",
    "path", "decision", "policy", "rule", "status", "bytes", "latencyUs",
};

/* A thread's segment: the open file, its chain and what is not yet
 * written and committed. */
typedef struct access_log {
    proxy_thread *t;
    char id[SEGMENT_ID_MAX + 1];
    unsigned seq;         /* this thread's segments so far */
    int fd;               /* the segment file, or -1 when it could not be opened */
    int spool_fd;         /* the same file read-only, for the audit role, or -1 */
    uint64_t records;     /* records appended to the segment, pending ones included */
    /* the writer's: the chain over the records of segment CHAIN_ID written
     * so far (no context once chaining failed: its later batches fail too) */
    segment_chain chain;
    char chain_id[SEGMENT_ID_MAX + 1];
    /* the writer's: HELD_LEN bytes of segment HELD_ID from HELD_OFFSET,
     * written to the file and not yet handed to the audit role (through
     * HELD_FD, a read-only descriptor of the file): they go with the next
     * head, at rotation, or once ACCESS_DELIVERY_MIN bytes wait */
    int held_fd;
    uint64_t held_offset;
    size_t held_len;
    char held_id[SEGMENT_ID_MAX + 1];
    uint64_t size;        /* bytes committed (and written) */
    uint64_t opened_ns;   /* monotonic */
    uint64_t unheaded;    /* index of the first record no head has committed yet */
    uint64_t head_ns;     /* monotonic: when the last head was handed over */
    char *pending;        /* lines not yet written: ACCESS_PENDING_MAX + ACCESS_LINE_MAX bytes (heap) */
    size_t pending_len;
    _Atomic(char *) spare; /* the other buffer, while the writer does not hold it */
    _Atomic bool rotate;   /* the writer could not write the file or queue a head: the next record starts a segment */
    uint64_t last_batch;   /* the writer's number of this log's last batch (0: none) */
    unsigned denied, failed; /* unheaded records denied (deny, unauthenticated), failed (invalid, error) */
    bool stopping;           /* the thread ends: a closed segment is not followed by another */
    h2o_timeout_t timeout;
    h2o_timeout_entry_t flush_entry;
} access_log;

/* The field names as a new JSON array, or NULL. */
static json_t *fields_json(void)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < PROXY_ACCESS_FIELDS_N; i++)
        if (json_array_append_new(a, json_string(proxy_access_fields[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* The details of the head entry committing records FIRST to RECORDS - 1 of
 * segment ID, after which its chain value is VALUE (CLOSED: the segment's
 * last head; DENIED of them denied): a new reference, or NULL. */
static json_t *head_details(const char *id, uint64_t first, uint64_t records, const uint8_t value[SEGMENT_DIGEST_LEN],
                            bool closed, unsigned denied)
{
    char hex[SEGMENT_HEX_LEN + 1];
    hex_encode(value, SEGMENT_DIGEST_LEN, hex);
    return json_pack("{s:s, s:I, s:I, s:I, s:s, s:b, s:I, s:o}", "segment", id, "first", (json_int_t)first, "count",
                     (json_int_t)(records - first), "records", (json_int_t)records, "head", hex, "closed", closed,
                     "denied", (json_int_t)denied, "fields", fields_json());
}

/* A head entry's outcome: the worst of the records it commits. */
static const char *head_outcome(unsigned denied, unsigned failed)
{
    return denied ? "denied" : failed ? "failure" : "success";
}

/* The path of L's current segment file into OUT; false without a
 * directory. */
static bool segment_path(const access_log *l, char *out, size_t size)
{
    const char *dir = l->t->settings->access_dir;
    return dir && (size_t)snprintf(out, size, "%s/%s", dir, l->id) < size;
}

/* Starts L's next segment: its file <access_dir>/<id>, the id being the
 * thread's request-id prefix and the segment's number (the writer starts
 * its chain with its first batch). Returns 0 or a negative errno (logged);
 * without a file, records still reach the audit role. */
static int segment_open(access_log *l)
{
    char prefix[17], path[4400];
    hex_encode(l->t->id_prefix, sizeof(l->t->id_prefix), prefix);
    snprintf(l->id, sizeof(l->id), "%s-%06u", prefix, ++l->seq);
    int r = 0;
    l->size = l->unheaded = l->records = 0;
    l->opened_ns = time_mono_ns();
    if (l->fd >= 0)
        close(l->fd);
    if (l->spool_fd >= 0)
        close(l->spool_fd);
    l->fd = l->spool_fd = -1;
    if (segment_path(l, path, sizeof(path))) {
        l->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
        if (l->fd < 0)
            r = -errno;
        else /* without it, the bytes are copied to the audit queue */
            l->spool_fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (r < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot open an access-log segment; records go to the audit role only", "segment",
                   l->id, "error", strerror(-r), NULL);
    return r;
}

/* ---- the segment writer ---- */

/* A loop's flush, handed to the writer: the lines go to the segment file,
 * then with their chain head to the audit queue. */
typedef struct access_batch {
    struct access_batch *next;
    access_log *log;  /* gets DATA back as its spare, and is told when the head could not be queued */
    int fd;           /* a duplicate of the segment file's descriptor (closed after), or -1 */
    int spool_fd;     /* a duplicate of its read-only descriptor (handed to the audit queue), or -1 */
    char *data;       /* the lines: LOG's buffer, lent */
    size_t len;
    uint64_t offset;  /* of DATA in the segment */
    char id[SEGMENT_ID_MAX + 1];
    bool head;        /* the flush commits a head of records FIRST to RECORDS - 1, DENIED of them denied */
    uint64_t first, records;
    unsigned denied;
    json_t *details;  /* the head entry's, made once the lines are chained (taken), or NULL */
    const char *outcome;
    bool closing;     /* the segment's last bytes: once the role holds them, the file goes */
    const char *dir;  /* the proxy's segment directory (the process's settings) */
    bool leftover;    /* not a flush: an earlier run's segment file ID in DIR, to hand over whole */
    uint64_t number;  /* 1, 2, ... in the order handed over */
} access_batch;

/* The process's one writer: batches run in the order handed over, so each
 * segment's bytes reach its file and the audit role in order. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pthread_once_t once;
    bool running;             /* the thread started (else batches run on the loop) */
    bool leftovers_listed;    /* the spool of an earlier run was looked at (before any segment of this run) */
    access_batch *head, **tail;
    uint64_t handed, finished; /* batch numbers */
} writer = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER,
            .once = PTHREAD_ONCE_INIT};

/* The audit role holds the whole of SEGMENT (its last bytes stored, its
 * closing head appended): the proxy's file in DIR, a spool until now, is
 * removed. Runs on the audit delivery thread. */
static void segment_delivered(void *dir, const char *segment)
{
    char path[4400];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", (const char *)dir, segment) < sizeof(path) &&
        unlink(path) < 0 && errno != ENOENT)
        log_fields(LOG_LEVEL_WARN, "cannot remove a delivered access-log segment from the proxy's spool", "path",
                   path, "error", strerror(errno), NULL);
}

/* ---- an earlier run's spool ---- */

/* What walking a leftover segment found: the records that follow their
 * chain, where their lines end, the last chain value, and how many were
 * denied or failed (for the head's outcome). */
typedef struct leftover_walk {
    const char *data;
    size_t decision; /* the index of "decision" in a record */
    uint64_t n;
    size_t end;
    uint8_t head[SEGMENT_DIGEST_LEN];
    unsigned denied, failed;
    bool broken; /* a record does not follow its predecessor */
} leftover_walk;

static int leftover_record(void *userdata, const segment_record *rec)
{
    leftover_walk *w = userdata;
    if (!rec->follows) {
        w->broken = true;
        return 1;
    }
    json_t *values = json_loadb(rec->text, rec->len, 0, NULL);
    const char *d = json_string_value(json_array_get(values, w->decision));
    w->denied += d && (strcmp(d, "deny") == 0 || strcmp(d, "unauthenticated") == 0);
    w->failed += d && (strcmp(d, "invalid") == 0 || strcmp(d, "error") == 0);
    json_decref(values);
    w->n++;
    w->end = (size_t)(rec->text + rec->len + 1 - w->data);
    memcpy(w->head, rec->chain, sizeof(w->head));
    return 0;
}

/* Hands the leftover segment ID in DIR (a spool file of an earlier run:
 * the process stopped, or the audit role was unreachable, before the role
 * held it whole) to the audit queue whole, from offset 0, with a closing
 * head recomputed from its records; the role takes again the bytes it has
 * and appends the rest, and the file goes once it holds them. A torn last
 * line (a write cut short) is cut off first; a file whose records do not
 * follow their chain, or that cannot be read, stays, logged. Runs on the
 * writer thread. */
static void leftover_ship(const char *dir, const char *id)
{
    char path[4400];
    snprintf(path, sizeof(path), "%s/%s", dir, id);
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    uint64_t bad_at = 0;
    int e = read_file(path, SEGMENT_BYTES_MAX, &data, &len);
    leftover_walk w = {.data = data};
    while (w.decision < PROXY_ACCESS_FIELDS_N && strcmp(proxy_access_fields[w.decision], "decision") != 0)
        w.decision++;
    int r = e == 0 ? segment_walk(id, data, len, leftover_record, &w, &bad_at) : e;
    bool torn = r == -EBADMSG && bad_at == w.n && !memchr(data + w.end, '\n', len - w.end);
    if ((r < 0 && !torn) || w.broken) {
        log_fields(LOG_LEVEL_ERROR, "an earlier run's access-log segment cannot be handed to the audit role; it stays "
                                    "in the spool", "path", path, "error",
                   e < 0 ? strerror(-e) : "a record does not follow its chain", NULL);
        return;
    }
    if (w.n == 0) { /* no whole record: nothing to keep */
        unlink(path);
        return;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 && w.end < len && ftruncate(fd, (off_t)w.end) == 0)
        log_fields(LOG_LEVEL_WARN, "cut a torn last record off an earlier run's access-log segment", "path", path,
                   NULL);
    int spool_fd = fd >= 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd >= 0)
        close(fd);
    json_t *details = head_details(id, 0, w.n, w.head, true, w.denied);
    if (details && json_object_set_new(details, "recovered", json_true()) < 0) {
        json_decref(details);
        details = NULL;
    }
    audit_event ev = {.action = "proxy.access", .kind = "Service", .details = details,
                      .outcome = head_outcome(w.denied, w.failed)};
    r = details ? audit_event_emit_segment(id, 0, data, w.end, spool_fd, &ev, segment_delivered, (void *)dir)
                : -ENOMEM;
    if (!details && spool_fd >= 0)
        close(spool_fd);
    json_decref(details);
    if (r == 0)
        log_fields(LOG_LEVEL_INFO, "handing an earlier run's access-log segment to the audit role", "segment", id,
                   NULL);
}

/* Queues each segment file in DIR as a leftover batch, ahead of this
 * run's: called once per process with the writer's lock held, before any
 * segment of this run is opened, so every file there is an earlier run's. */
static void leftovers_queue(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d));) {
        access_batch *b;
        if (!segment_id_valid(de->d_name, strlen(de->d_name)) || !(b = calloc(1, sizeof(*b))))
            continue;
        *b = (access_batch){.leftover = true, .dir = dir, .fd = -1, .spool_fd = -1, .number = ++writer.handed};
        memcpy(b->id, de->d_name, strlen(de->d_name) + 1); /* a valid id fits */
        if (writer.running) {
            *writer.tail = b;
            writer.tail = &b->next;
            pthread_cond_signal(&writer.wake);
        } else { /* no writer: at start, on this thread */
            leftover_ship(dir, b->id);
            writer.finished = b->number;
            free(b);
        }
    }
    closedir(d);
}

/* Hands the written bytes L holds to the audit queue, without a head.
 * Writer thread. */
static void held_deliver(access_log *l)
{
    if (!l->held_len)
        return;
    int r = audit_event_emit_segment(l->held_id, l->held_offset, NULL, l->held_len, l->held_fd, NULL, NULL, NULL);
    l->held_fd = -1;
    l->held_len = 0;
    if (r < 0) /* the role takes a segment's bytes only in order: the next ones go to a new segment */
        atomic_store(&l->rotate, true);
}

/* Chains B's lines (their chain values written in place) with its log's
 * chain of segment B->id, started at the segment's first batch, and makes
 * the details of the head entry B commits. Writer thread. Returns 0 or a
 * negative errno; the segment's later batches then fail too. */
static int batch_chain(access_batch *b)
{
    access_log *l = b->log;
    int r = 0;
    if (strcmp(l->chain_id, b->id) != 0) {
        segment_chain_dispose(&l->chain);
        memcpy(l->chain_id, b->id, sizeof(l->chain_id));
        r = segment_chain_init(&l->chain, b->id);
    }
    ssize_t n = r < 0 ? r : !l->chain.ctx ? -EIO : segment_chain_lines(&l->chain, b->data, b->len);
    if (n >= 0 && b->head && l->chain.count != b->records)
        n = -EIO; /* not expected: the loop counted other records than it wrote */
    if (n >= 0 && b->head &&
        !(b->details = head_details(b->id, b->first, b->records, l->chain.value, b->closing, b->denied)))
        n = -ENOMEM;
    if (n < 0)
        segment_chain_dispose(&l->chain);
    return n < 0 ? (int)n : 0;
}

/* B's lines could not be chained (ERROR): they are logged instead, without
 * chain values, and the next record starts a segment. Gives B's buffer back
 * to its log. Writer thread. */
static void batch_unchained(access_batch *b, int error)
{
    held_deliver(b->log);
    log_fields(LOG_LEVEL_ERROR, "access records could not be chained; they are logged here instead", "segment", b->id,
               "error", strerror(-error), NULL);
    for (char *line = b->data, *end = b->data + b->len, *nl; line < end; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            break;
        *nl = 0;
        log_fields(LOG_LEVEL_ERROR, "an access record could not be chained", "record",
                   line + MIN((size_t)(nl - line), (size_t)SEGMENT_HEX_LEN + 1), NULL);
    }
    atomic_store(&b->log->rotate, true);
    json_decref(b->details);
    if (b->fd >= 0)
        close(b->fd);
    if (b->spool_fd >= 0)
        close(b->spool_fd);
    atomic_store(&b->log->spare, b->data);
}

/* Chains B's lines, writes them to its file (to the page cache) and queues
 * them, and their head, with the file's read-only descriptor, from which
 * the audit role copies them (held until ACCESS_DELIVERY_MIN bytes wait,
 * unless B has a head or closes the segment); the flush's work, off the
 * loop. A
 * file that could not take them all no longer holds the segment's bytes at
 * their offsets: the lines themselves are queued, and the next record
 * starts a segment. Gives B's buffer back to its log. */
static void batch_run(access_batch *b)
{
    if (b->leftover) {
        leftover_ship(b->dir, b->id);
        return;
    }
    int r = batch_chain(b);
    if (r < 0) {
        batch_unchained(b, r);
        return;
    }
    r = b->fd >= 0 ? fd_write_all(b->fd, b->data, b->len) : 0;
    if (r < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot write the access-log segment; its records go to the audit role only",
                   "segment", b->id, "error", strerror(-r), NULL);
        atomic_store(&b->log->rotate, true);
    }
    int spool_fd = b->spool_fd;
    if (r < 0 && spool_fd >= 0)
        close(spool_fd), spool_fd = -1;
    access_log *l = b->log;
    /* the bytes held before these are delivered with them when they follow
     * in the file, else first */
    bool follows = spool_fd >= 0 && l->held_len && strcmp(l->held_id, b->id) == 0 &&
                   l->held_offset + l->held_len == b->offset;
    if (!follows)
        held_deliver(l);
    if (spool_fd >= 0 && !b->head && !b->closing && l->held_len + b->len < ACCESS_DELIVERY_MIN) {
        if (l->held_len) { /* the descriptor held reads these bytes too */
            close(spool_fd);
        } else {
            l->held_fd = spool_fd;
            l->held_offset = b->offset;
            memcpy(l->held_id, b->id, sizeof(l->held_id));
        }
        l->held_len += b->len;
    } else {
        uint64_t offset = b->offset;
        size_t len = b->len;
        if (l->held_len) { /* followed by these: one delivery from the held bytes on */
            close(l->held_fd);
            offset = l->held_offset;
            len += l->held_len;
            l->held_fd = -1;
            l->held_len = 0;
        }
        audit_event head = {.action = "proxy.access", .kind = "Service", .outcome = b->outcome, .details = b->details};
        r = audit_event_emit_segment(b->id, offset, spool_fd >= 0 ? NULL : b->data, len, spool_fd,
                                     b->head ? &head : NULL, b->closing && b->dir ? segment_delivered : NULL,
                                     (void *)b->dir);
        if (r < 0) /* the role takes a segment's bytes only in order: the next ones go to a new segment */
            atomic_store(&l->rotate, true);
    }
    json_decref(b->details);
    if (b->fd >= 0)
        close(b->fd);
    atomic_store(&b->log->spare, b->data);
}

static void *writer_main(void *arg)
{
    (void)arg;
    thread_set_background(); /* the requests first on a busy machine: a whole buffer must fill before a loop waits */
    pthread_mutex_lock(&writer.lock);
    for (;;) {
        while (!writer.head)
            pthread_cond_wait(&writer.wake, &writer.lock);
        access_batch *b = writer.head;
        if (!(writer.head = b->next))
            writer.tail = &writer.head;
        pthread_mutex_unlock(&writer.lock);
        batch_run(b);
        pthread_mutex_lock(&writer.lock);
        writer.finished = b->number;
        pthread_cond_broadcast(&writer.done);
        free(b);
    }
    return NULL;
}

static void writer_start(void)
{
    writer.tail = &writer.head;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&thread, &attr, writer_main, NULL);
    pthread_attr_destroy(&attr);
    if (e == 0) {
        pthread_setname_np(thread, "proxy-accesslog");
        writer.running = true;
    } else {
        log_fields(LOG_LEVEL_WARN, "cannot start the access-log writer; loops write their segments themselves",
                   "error", strerror(e), NULL);
    }
}

/* Hands B over (or runs it here when there is no writer). Returns its
 * number. */
static uint64_t writer_hand(access_batch *b)
{
    pthread_mutex_lock(&writer.lock);
    uint64_t number = b->number = ++writer.handed;
    if (!writer.running) {
        pthread_mutex_unlock(&writer.lock);
        batch_run(b);
        free(b);
        pthread_mutex_lock(&writer.lock);
        writer.finished = number;
        pthread_mutex_unlock(&writer.lock);
        return number;
    }
    *writer.tail = b; /* the writer's from here: B may be gone once the lock is let go */
    writer.tail = &b->next;
    pthread_cond_signal(&writer.wake);
    pthread_mutex_unlock(&writer.lock);
    return number;
}

/* Waits until batch NUMBER (and every one before it) ran, at most
 * TIMEOUT_MS (0: no limit). Returns 0 or -ETIMEDOUT. */
static int writer_wait(uint64_t number, unsigned timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)timeout_ms * NSEC_PER_MSEC;
    until.tv_sec += (time_t)(ns / NSEC_PER_SEC);
    until.tv_nsec = (long)(ns % NSEC_PER_SEC);
    int e = 0;
    pthread_mutex_lock(&writer.lock);
    while (e == 0 && writer.finished < number)
        e = timeout_ms ? pthread_cond_timedwait(&writer.done, &writer.lock, &until)
                       : pthread_cond_wait(&writer.done, &writer.lock);
    pthread_mutex_unlock(&writer.lock);
    return e ? -ETIMEDOUT : 0;
}

/* Hands L's pending records to the writer, with the chain head that
 * commits every record since the last one when HEAD is set, when closing
 * (the segment's last head, sent even with nothing pending) or when the
 * last head is ACCESS_FLUSH_MS old: a flush of a full buffer alone stores
 * the bytes with the audit role, and the flush timer stays set so that a
 * head follows within the interval. Takes the writer's spare buffer in
 * place of the pending one (waiting for it when the writer still holds
 * it); then, when closing, starts the next segment (unless this one has no
 * record yet). Returns the batch's number (0 when nothing was handed
 * over). */
static uint64_t access_flush(access_log *l, bool closing, bool head)
{
    if (h2o_timeout_is_linked(&l->flush_entry))
        h2o_timeout_unlink(&l->flush_entry);
    uint64_t number = 0, now = time_mono_ns();
    head = head || closing || now - l->head_ns >= ACCESS_FLUSH_MS * NSEC_PER_MSEC;
    /* a segment with records is closed by a head even when none is pending:
     * the role then holds all of it, and the proxy's spool file goes */
    if (l->pending_len > 0 || (head && l->records > l->unheaded) || (closing && l->records > 0)) {
        char *spare = atomic_exchange(&l->spare, NULL);
        if (!spare) { /* the writer is a whole buffer behind: wait for it, as a write(2) here would */
            writer_wait(l->last_batch, 0);
            spare = atomic_exchange(&l->spare, NULL); /* given back by then */
        }
        access_batch local, *b = calloc(1, sizeof(*b));
        bool here = !b; /* out of memory: this loop runs the batch itself, after the writer's */
        if (here)
            b = &local;
        *b = (access_batch){.log = l, .fd = l->fd >= 0 ? fcntl(l->fd, F_DUPFD_CLOEXEC, 0) : -1,
                            .spool_fd = l->spool_fd >= 0 ? fcntl(l->spool_fd, F_DUPFD_CLOEXEC, 0) : -1,
                            .data = l->pending, .len = l->pending_len, .offset = l->size, .head = head,
                            .outcome = head_outcome(l->denied, l->failed),
                            .closing = closing, .dir = l->t->settings->access_dir};
        if (l->fd >= 0 && b->fd < 0)
            log_fields(LOG_LEVEL_ERROR, "cannot write the access-log segment; its records go to the audit role only",
                       "segment", l->id, "error", strerror(errno), NULL);
        memcpy(b->id, l->id, sizeof(b->id));
        if (head) {
            b->first = l->unheaded;
            b->records = l->records;
            b->denied = l->denied;
            l->unheaded = l->records;
            l->denied = l->failed = 0;
            l->head_ns = now;
        }
        l->pending = spare;
        if (here) {
            writer_wait(l->last_batch, 0);
            batch_run(b);
        } else {
            number = l->last_batch = writer_hand(b);
        }
        l->size += l->pending_len;
        l->pending_len = 0;
    }
    if (closing && !l->stopping) {
        if (l->records == 0)
            l->opened_ns = time_mono_ns(); /* nothing recorded in it: the segment and its file go on */
        else
            segment_open(l);
    } else if (!head && l->records > l->unheaded) { /* the records' head within the interval */
        h2o_timeout_link(l->t->ctx->loop, &l->timeout, &l->flush_entry);
    }
    return number;
}

/* The flush interval passed: the pending records go to the writer, unless
 * it still holds the log's other buffer (a slow disk): then they wait for
 * the next interval, so the loop waits only once a whole buffer is pending. */
static void on_flush_timeout(h2o_timeout_entry_t *entry)
{
    access_log *l = H2O_STRUCT_FROM_MEMBER(access_log, flush_entry, entry);
    if (!atomic_load(&l->spare)) {
        h2o_timeout_link(l->t->ctx->loop, &l->timeout, &l->flush_entry);
        return;
    }
    access_flush(l, false, true);
}

int proxy_access_init(proxy_thread *t)
{
    access_log *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    *l = (access_log){.t = t, .fd = -1, .spool_fd = -1, .held_fd = -1,
                      .pending = malloc(ACCESS_PENDING_MAX + ACCESS_LINE_MAX)};
    char *spare = malloc(ACCESS_PENDING_MAX + ACCESS_LINE_MAX);
    if (!l->pending || !spare) {
        free(l->pending);
        free(spare);
        free(l);
        return -ENOMEM;
    }
    atomic_store(&l->spare, spare);
    pthread_once(&writer.once, writer_start);
    pthread_mutex_lock(&writer.lock);
    if (!writer.leftovers_listed && t->settings->access_dir)
        leftovers_queue(t->settings->access_dir);
    writer.leftovers_listed = true;
    pthread_mutex_unlock(&writer.lock);
    h2o_timeout_init(t->ctx->loop, &l->timeout, ACCESS_FLUSH_MS);
    l->flush_entry.cb = on_flush_timeout;
    t->access = l;
    return segment_open(l);
}

void proxy_access_dispose(proxy_thread *t)
{
    access_log *l = t->access;
    if (!l)
        return;
    l->stopping = true;
    access_flush(l, true, true);
    h2o_timeout_dispose(t->ctx->loop, &l->timeout);
    t->access = NULL;
    if (writer_wait(l->last_batch, ACCESS_DRAIN_TIMEOUT_MS) < 0) { /* the writer still holds L: left to it */
        log_fields(LOG_LEVEL_ERROR, "the access-log writer did not finish the last records in time; they may be "
                                    "missing from the segment", "segment", l->id, NULL);
        return;
    }
    char path[4400];
    if (l->records == 0 && segment_path(l, path, sizeof(path)))
        unlink(path); /* nothing recorded: no empty file left behind */
    if (l->fd >= 0)
        close(l->fd);
    if (l->spool_fd >= 0)
        close(l->spool_fd);
    segment_chain_dispose(&l->chain);
    free(l->pending);
    free(atomic_load(&l->spare));
    free(l);
}

/* Writes an access record into a buffer sized for the longest one, without
 * printf or strbuf (this runs on every request): P moves on, OVER is set
 * when something did not fit (the record is then dropped and logged). */
typedef struct record_writer {
    char *p, *end;
    bool over;
} record_writer;

static void put_bytes(record_writer *w, const char *s, size_t n)
{
    if ((size_t)(w->end - w->p) < n) {
        w->over = true;
        return;
    }
    memcpy(w->p, s, n);
    w->p += n;
}

/* S as a JSON string (json_escape_some(), as strbuf_put_json_string()). */
static void put_string(record_writer *w, const char *s)
{
    char *p = w->p, *end = w->end;
    if (end - p < 2) {
        w->over = true;
        return;
    }
    *p++ = '"';
    p += json_escape_some(&s, p, (size_t)(end - p) - 1); /* room kept for the closing quote */
    if (*s) {
        w->over = true;
        return;
    }
    *p++ = '"';
    w->p = p;
}

/* ",S" (S a JSON string, or null) as the next array element. */
static void put_member(record_writer *w, const char *s)
{
    put_bytes(w, ",", 1);
    if (s)
        put_string(w, s);
    else
        put_bytes(w, "null", 4);
}

/* ",N" as the next element: N is MAGNITUDE in decimal, with a minus sign
 * when NEGATIVE (what printf's %d and %llu would write). */
static void put_number(record_writer *w, uint64_t magnitude, bool negative)
{
    char digits[24], *p = digits + sizeof(digits);
    do
        *--p = (char)('0' + magnitude % 10);
    while (magnitude /= 10);
    if (negative)
        *--p = '-';
    *--p = ',';
    put_bytes(w, p, (size_t)(digits + sizeof(digits) - p));
}

size_t proxy_access_encode(char *out, size_t size, const char *now, const access_record *rec, int status,
                           uint64_t bytes, uint64_t latency_us)
{
    record_writer w = {.p = out, .end = out + size};
    put_bytes(&w, "[", 1);
    put_string(&w, now);
    put_member(&w, rec->id);
    put_member(&w, rec->user);
    put_member(&w, rec->session);
    put_member(&w, rec->ip[0] ? rec->ip : NULL);
    put_member(&w, rec->service);
    put_member(&w, rec->method);
    put_member(&w, rec->path ? rec->path : "");
    put_member(&w, proxy_decision_name(rec->decision));
    put_member(&w, rec->policy[0] ? rec->policy : NULL);
    put_member(&w, rec->rule[0] ? rec->rule : NULL);
    put_number(&w, status < 0 ? 0u - (uint64_t)status : (uint64_t)status, status < 0);
    put_number(&w, bytes, false);
    put_number(&w, latency_us, false);
    put_bytes(&w, "]", 1);
    return w.over ? 0 : (size_t)(w.p - out);
}

/* Appends REC's record, written at NOW_MONO (monotonic ns; its time is
 * REC's receipt plus the time since, so no clock is read here), to T's
 * segment (flushing first when the pending bytes or the segment would pass
 * their caps, or the segment is too old): encoded in place at the end of
 * the pending lines, after room for the chain value the writer puts there
 * (batch_chain()). Returns 0, or -EIO when the thread has no log or the
 * record does not fit (logged instead). */
static int access_append(proxy_thread *t, const access_record *rec, int status, uint64_t bytes, uint64_t latency_us,
                         uint64_t now_mono)
{
    access_log *l = t->access;
    char now[40];
    time_format_rfc3339_ms(rec->received + (now_mono - rec->started), now, sizeof(now));
    if (l) {
        bool old = now_mono - l->opened_ns > ACCESS_SEGMENT_AGE_NS;
        if (old || atomic_exchange(&l->rotate, false) || l->size + l->pending_len + ACCESS_LINE_MAX > SEGMENT_BYTES_MAX)
            access_flush(l, true, true);
        else if (l->pending_len + ACCESS_LINE_MAX > ACCESS_PENDING_MAX)
            access_flush(l, false, false);
    }
    char *line = l ? l->pending + l->pending_len : NULL;
    size_t len = line ? proxy_access_encode(line + SEGMENT_HEX_LEN + 1, ACCESS_RECORD_MAX, now, rec, status, bytes,
                                            latency_us)
                      : 0;
    if (len == 0) {
        char storage[ACCESS_RECORD_MAX + 1];
        size_t shown = proxy_access_encode(storage, sizeof(storage) - 1, now, rec, status, bytes, latency_us);
        storage[shown] = 0;
        log_fields(LOG_LEVEL_ERROR, "an access record could not be appended to the segment; it is logged here instead",
                   "record", shown ? storage : rec->id, NULL);
        return -EIO;
    }
    line[SEGMENT_HEX_LEN] = ' ';
    line[SEGMENT_HEX_LEN + 1 + len] = '\n';
    l->pending_len += SEGMENT_HEX_LEN + len + 2;
    l->records++;
    l->denied += rec->decision == PROXY_DECISION_DENY || rec->decision == PROXY_DECISION_UNAUTHENTICATED;
    l->failed += rec->decision == PROXY_DECISION_INVALID || rec->decision == PROXY_DECISION_ERROR;
    if (!h2o_timeout_is_linked(&l->flush_entry))
        h2o_timeout_link(t->ctx->loop, &l->timeout, &l->flush_entry);
    return 0;
}

void proxy_access_emit(void *p)
{
    proxy_request *pr = p;
    access_record *rec = &pr->rec;
    h2o_req_t *req = pr->req;
    proxy_thread *t = pr->t;
    uint64_t now_mono = time_mono_ns(), latency_ns = now_mono - rec->started;
    int status = req->res.status;
    access_append(t, rec, status, req->bytes_sent, latency_ns / 1000, now_mono);
    const proxy_settings *s = t->settings;
    if (rec->in_flight)
        atomic_fetch_sub(rec->in_flight, 1);
    proxy_metrics_observe(s->metrics, rec->service, rec->decision, status, latency_ns);
    proxy_trace_finish(pr, status, req->bytes_sent, latency_ns / 1000);
    if (s->metrics)
        atomic_store_explicit(&s->metrics->audit_dropped, audit_event_dropped(), memory_order_relaxed);
    proxy_config_unref(rec->config);
}

/* A failClosed request waiting for its admission record's commit. */
typedef struct commit_job {
    offload_job super;
    proxy_request *pr; /* valid while the request is (DONE's REQ not NULL) */
    uint64_t batch;    /* the writer's batch holding the admission record */
    int error;
} commit_job;

static void commit_work(offload_job *job)
{
    commit_job *j = (commit_job *)job;
    uint64_t started = time_mono_ns();
    j->error = writer_wait(j->batch, ACCESS_COMMIT_TIMEOUT_MS);
    unsigned spent_ms = (unsigned)((time_mono_ns() - started) / NSEC_PER_MSEC);
    if (j->error == 0)
        j->error = audit_event_commit(spent_ms < ACCESS_COMMIT_TIMEOUT_MS ? ACCESS_COMMIT_TIMEOUT_MS - spent_ms : 1);
}

/* Goes on with the corridor once the record is committed; refuses with 503
 * when it could not be. */
static void commit_done(offload_job *job, h2o_req_t *req)
{
    commit_job *j = (commit_job *)job;
    proxy_request *pr = req ? j->pr : NULL;
    int error = j->error;
    free(j);
    if (!pr)
        return;
    if (error < 0) {
        pr->rec.decision = PROXY_DECISION_ERROR;
        proxy_fail(pr, 503, "unavailable",
                   "service %s requires its access to be audited and the audit log did not confirm the record (%s)",
                   pr->svc->name, strerror(-error));
        return;
    }
    proxy_continue_after(pr, proxy_stage_commit);
}

proxy_step proxy_stage_commit(proxy_request *pr)
{
    if (!pr->svc || !pr->svc->fail_closed)
        return PROXY_NEXT;
    proxy_thread *t = pr->t;
    commit_job *j = calloc(1, sizeof(*j));
    int e = j ? access_append(t, &pr->rec, 0, 0, 0, time_mono_ns()) : -ENOMEM;
    if (e == 0) {
        j->batch = access_flush(t->access, false, true);
        j->super = (offload_job){.work = commit_work, .done = commit_done};
        j->pr = pr;
        e = t->settings->commit_pool ? offload_submit(t->settings->commit_pool, t->offload, pr->req, &j->super)
                                     : -ESHUTDOWN;
        if (e == 0)
            return PROXY_DONE;
    }
    free(j);
    pr->rec.decision = PROXY_DECISION_ERROR;
    return proxy_fail(pr, 503, "unavailable",
                      "service %s requires its access to be audited and its record could not be committed (%s)",
                      pr->svc->name, strerror(-e));
}

void proxy_copy_printable(char *out, size_t size, const char *s, size_t len)
{
    size_t n = MIN(len, size - 1);
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    out[n] = 0;
}

char *proxy_pool_printable(h2o_mem_pool_t *pool, const char *s, size_t len, size_t max)
{
    size_t n = MIN(len, max);
    char *out = h2o_mem_alloc_pool(pool, n + 1);
    proxy_copy_printable(out, n + 1, s, n);
    return out;
}
