/* The `audit` role: the only process holding the audit log's Ed25519
 * signing key. It serves the log over HTTP/JSON on a Unix socket in
 * <data-dir>/run/ with one h2o event loop:
 *   POST /v1/append                          {"entries": [entry, ...]} -> {"first", "count"}
 *   GET  /v1/checkpoint                      the latest signed checkpoint (signed now if the tree grew)
 *   GET  /v1/entries?start=&end=             stored entries, at most AUDIT_PAGE_MAX and
 *                                            AUDIT_PAGE_BYTES ("more" when cut short)
 *   GET  /v1/proof/inclusion?index=&size=    RFC 6962 inclusion proof
 *   GET  /v1/proof/consistency?from=&to=     RFC 6962 consistency proof
 *   POST /v1/segment?id=&offset=             the proxy's access-log segment bytes at OFFSET (raw)
 *   GET  /v1/segment?id=                     a stored segment: {"id", "size", "data": base64}
 * and takes the same segment bytes from the proxy as a descriptor of its
 * spool file on the spool channel beside it (segments.sock, segment.h),
 * which a thread of its own serves: the kernel copies them, no process
 * reads them.
 * Only the roles that emit events connect (api, proxy, kms: SO_PEERCRED
 * checked at accept, daemon/peer.h); only the api reads. Each appended
 * entry is stamped with the appending role and this role's receive time
 * (audit/entry.h), and a batch holding an entry its role may not append
 * (audit_appender_may()) is refused whole with a 403.
 * Appends are handed to a writer thread that commits everything queued while
 * its previous commit was syncing in one transaction (group commit); each is
 * acknowledged on the event loop only after its commit. The loop keeps
 * parsing and validating while the writer syncs. A checkpoint is signed at
 * least every second while the tree grows. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <h2o.h>
#include <openssl/pem.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "audit/entry.h"
#include "audit/event.h"
#include "audit/log.h"
#include "audit/note.h"
#include "audit/segment.h"
#include "audit/server.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "daemon/peer-tls.h"
#include "daemon/peer.h"
#include "httpd/httpd.h"
#include "httpd/json.h"

#define APPEND_BODY_MAX (8 * 1024 * 1024)
#define APPEND_ENTRIES_MAX 10000
#define CHECKPOINT_INTERVAL_MS 1000
#define KEY_FILE_MAX (16 * 1024)
#define PRUNE_EVERY_NS (3600 * NSEC_PER_SEC) /* how often segments past their retention are looked for */
#define PRUNE_BATCH_MAX 1000                 /* segments one audit.access.prune entry names */
#define CHANNEL_PEERS_MAX 8                  /* spool channel connections at once (one per proxy process) */

typedef struct audit_role {
    audit_log *log;
    EVP_PKEY *key;
    char origin[AUDIT_NAME_MAX + 1];
    char segments[4200]; /* <the log's directory>/access: the proxy's access-log segments as it shipped them */
    char *vkey;       /* verifier key string */
    char *checkpoint; /* the latest signed note */
    uint64_t checkpoint_size;
    h2o_context_t *ctx; /* the one serving thread's (httpd) */
    h2o_timeout_t tick_timeout;
    h2o_timeout_entry_t tick_entry;
    pthread_mutex_t log_lock; /* the log: the writer appends, the loop reads */
    pthread_mutex_t queue_lock;
    pthread_cond_t queue_wake;
    h2o_linklist_t queue; /* pending_append for the writer, in arrival order */
    bool writer_stop;     /* under queue_lock */
    pthread_t writer;
    h2o_multithread_queue_t *mq;
    h2o_multithread_receiver_t done; /* committed appends come back here */
    size_t in_flight;                /* appends not answered yet (loop thread) */
    const role_health *roles;        /* the supervisor's table: peers' names */
    role_health *health;             /* the role's entry: its counters for /metrics */
    size_t n_roles;
    unsigned retention_days; /* of access-log segments; 0: kept for good (no retention thread) */
    pthread_t retention;
    pthread_mutex_t retention_lock;
    pthread_cond_t retention_wake;
    bool retention_stop; /* under retention_lock */
    pthread_mutex_t segments_lock; /* segment_store() */
    int channel_fd;                /* the spool channel's listening socket, or -1 */
    int channel_stop[2];           /* a pipe: written to stop the channel's thread */
    pthread_t channel;
    peer_policy channel_peers; /* the proxy alone */
} audit_role;

typedef struct role_handler {
    h2o_handler_t super;
    audit_role *role;
} role_handler;

typedef struct append_anchor append_anchor;

/* An append request waiting for its group commit. Owned by the writer's
 * queue, then by the writer, then by the event loop, which answers and frees
 * it. REQ and ANCHOR are only touched on the loop (the anchor clears REQ if
 * the client goes away). */
typedef struct pending_append {
    h2o_linklist_t link;
    h2o_multithread_message_t msg;
    h2o_req_t *req;
    append_anchor *anchor;
    size_t n;
    char **texts;
    size_t *lens;
    int error;      /* set by the writer */
    uint64_t first; /* index of the first entry once committed */
    /* the access-log segments whose heads are among the entries: each is
     * synced before the entries are committed (heap, or NULL) */
    char (*segments)[SEGMENT_ID_MAX + 1];
    size_t n_segments;
} pending_append;

struct append_anchor {
    pending_append *pa;
};

static void anchor_dispose(void *p)
{
    append_anchor *a = p;
    if (a->pa)
        a->pa->req = NULL;
}

static void pending_append_free(pending_append *pa)
{
    for (size_t i = 0; i < pa->n; i++)
        free(pa->texts[i]);
    free(pa->texts);
    free(pa->lens);
    free(pa->segments);
    free(pa);
}

/* Notes in PA (room for N) the segment ENTRY commits when it is an
 * access-log head (proxy.access), unless it is the one noted last.
 * Returns 0 or -ENOMEM. */
static int note_head_segment(pending_append *pa, size_t n, const json_t *entry)
{
    const char *action = json_string_value(json_object_get(entry, "action"));
    const char *id = json_string_value(json_object_get(json_object_get(entry, "details"), "segment"));
    if (!action || strcmp(action, "proxy.access") != 0 || !id || !segment_id_valid(id, strlen(id)))
        return 0;
    if (pa->n_segments > 0 && strcmp(pa->segments[pa->n_segments - 1], id) == 0)
        return 0;
    if (!pa->segments && !(pa->segments = calloc(n, sizeof(*pa->segments))))
        return -ENOMEM;
    snprintf(pa->segments[pa->n_segments++], sizeof(*pa->segments), "%s", id);
    return 0;
}

/* Makes R's copy of segment ID durable, and drops its pages from the page
 * cache (read back rarely). Returns 0 (also when the role holds no copy:
 * a head of a segment that had no bytes) or a negative errno. */
static int segment_sync(audit_role *r, const char *id)
{
    char path[4300];
    snprintf(path, sizeof(path), "%s/%s", r->segments, id);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    int e = fdatasync(fd) < 0 ? -errno : 0;
    if (e == 0)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if (e < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot sync an access-log segment before appending its head", "path", path,
                   "error", strerror(-e), NULL);
    return e;
}

/* Signs a checkpoint of the current tree unless the latest already covers
 * it. Returns 0 or a negative errno (the previous checkpoint stays). */
static int sign_checkpoint(audit_role *r)
{
    merkle_hash root;
    pthread_mutex_lock(&r->log_lock);
    uint64_t size = audit_log_size(r->log);
    audit_log_root(r->log, root);
    pthread_mutex_unlock(&r->log_lock);
    if (r->checkpoint && size == r->checkpoint_size)
        return 0;
    char *body, *note;
    int e = audit_checkpoint_format(r->origin, size, root, &body);
    if (e < 0)
        return e;
    e = audit_note_sign(r->key, r->origin, body, &note);
    free(body);
    if (e < 0)
        return e;
    free(r->checkpoint);
    r->checkpoint = note;
    r->checkpoint_size = size;
    return 0;
}

static void send_error(h2o_req_t *req, int status, const char *code, const char *msg)
{
    api_error err;
    api_fail(&err, status, code, "%s", msg);
    api_send_error(req, &err);
}

/* Appends every request of BATCH (a list of pending_append) in one
 * transaction and records the result in each. Writer thread. */
static void commit_batch(audit_role *r, h2o_linklist_t *batch)
{
    size_t total = 0;
    for (h2o_linklist_t *n = batch->next; n != batch; n = n->next)
        total += H2O_STRUCT_FROM_MEMBER(pending_append, link, n)->n;
    const char **texts = calloc(total, sizeof(*texts));
    size_t *lens = calloc(total, sizeof(*lens));
    int e = texts && lens ? 0 : -ENOMEM;
    size_t k = 0;
    for (h2o_linklist_t *n = batch->next; e == 0 && n != batch; n = n->next) {
        pending_append *pa = H2O_STRUCT_FROM_MEMBER(pending_append, link, n);
        for (size_t i = 0; i < pa->n; i++, k++) {
            texts[k] = pa->texts[i];
            lens[k] = pa->lens[i];
        }
    }
    /* a head is appended only once the bytes it commits are durable */
    for (h2o_linklist_t *n = batch->next; e == 0 && n != batch; n = n->next) {
        pending_append *pa = H2O_STRUCT_FROM_MEMBER(pending_append, link, n);
        for (size_t i = 0; e == 0 && i < pa->n_segments; i++)
            e = segment_sync(r, pa->segments[i]);
    }
    uint64_t first = 0;
    if (e == 0) {
        pthread_mutex_lock(&r->log_lock);
        e = audit_log_append(r->log, texts, lens, total, &first);
        if (e == 0)
            atomic_store(&r->health->audit_entries, audit_log_size(r->log));
        pthread_mutex_unlock(&r->log_lock);
    }
    free(texts);
    free(lens);
    if (e < 0) {
        atomic_fetch_add(&r->health->audit_append_errors, 1);
        log_fields(LOG_LEVEL_ERROR, "cannot append to the audit log; refusing the batch", "error", strerror(-e),
                   NULL);
    }
    for (h2o_linklist_t *n = batch->next; n != batch; n = n->next) {
        pending_append *pa = H2O_STRUCT_FROM_MEMBER(pending_append, link, n);
        pa->error = e;
        pa->first = first;
        first += pa->n;
    }
}

/* The ids of R's access-log segments not written since BEFORE_NS
 * (realtime), at most PRUNE_BATCH_MAX, as a new JSON array (NULL when out
 * of memory or the directory cannot be read: logged); *MORE when the cap
 * left some for another pass. */
static json_t *segments_past_retention(const audit_role *r, uint64_t before_ns, bool *more)
{
    DIR *d = opendir(r->segments);
    if (!d) {
        log_fields(LOG_LEVEL_ERROR, "cannot read the access-log segments to apply their retention", "path",
                   r->segments, "error", strerror(errno), NULL);
        return NULL;
    }
    json_t *ids = json_array();
    struct dirent *de;
    *more = false;
    while (ids && (de = readdir(d))) {
        struct stat st;
        if (!segment_id_valid(de->d_name, strlen(de->d_name)) ||
            fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        uint64_t written = (uint64_t)st.st_mtim.tv_sec * NSEC_PER_SEC + (uint64_t)st.st_mtim.tv_nsec;
        if (written >= before_ns)
            continue;
        if (json_array_size(ids) == PRUNE_BATCH_MAX) {
            *more = true;
            break;
        }
        if (json_array_append_new(ids, json_string(de->d_name)) < 0)
            json_decref(TAKE_PTR(ids));
    }
    closedir(d);
    return ids;
}

/* Applies the retention of access-log segments: those not written for
 * R->retention_days are named in an audit.access.prune entry this role
 * appends (durable first, so that verify tells them from segments removed
 * by anyone else), then removed; their heads stay in the log. Returns
 * whether the cap left segments for another pass at once. Retention
 * thread: the directory scan never holds up the writer's commits. */
static bool prune_access(audit_role *r)
{
    uint64_t now = time_now_ns(), before_ns = now - (uint64_t)r->retention_days * 86400 * NSEC_PER_SEC;
    bool more;
    json_auto_t *ids = segments_past_retention(r, before_ns, &more);
    if (!ids || json_array_size(ids) == 0)
        return false;
    char before[40];
    time_format_rfc3339_ms(before_ns, before, sizeof(before));
    json_auto_t *details = json_pack("{s:O, s:I, s:s}", "segments", ids, "retentionDays",
                                     (json_int_t)r->retention_days, "notWrittenSince", before);
    json_auto_t *e = details ? audit_event_entry(&(audit_event){.action = "audit.access.prune", .kind = "AuditLog",
                                                                .outcome = "success", .details = details})
                             : NULL;
    char *text = NULL;
    size_t len = 0;
    uint64_t first = 0;
    int err = e ? audit_entry_stamp(e, "audit", now, &text, &len) : -ENOMEM;
    if (err == 0) {
        pthread_mutex_lock(&r->log_lock);
        err = audit_log_append(r->log, (const char *const *)&text, &len, 1, &first);
        if (err == 0)
            atomic_store(&r->health->audit_entries, audit_log_size(r->log));
        pthread_mutex_unlock(&r->log_lock);
    }
    free(text);
    if (err < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot append the entry naming the access-log segments past their retention; "
                                    "none is removed", "error", strerror(-err), NULL);
        return false;
    }
    size_t i, removed = 0;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        char path[4300];
        snprintf(path, sizeof(path), "%s/%s", r->segments, json_string_value(id));
        if (unlink(path) == 0 || errno == ENOENT)
            removed++;
        else
            log_fields(LOG_LEVEL_ERROR, "cannot remove an access-log segment past its retention", "path", path,
                       "error", strerror(errno), NULL);
    }
    char n[24], index[24], days[16];
    snprintf(n, sizeof(n), "%zu", removed);
    snprintf(index, sizeof(index), "%llu", (unsigned long long)first);
    snprintf(days, sizeof(days), "%u", r->retention_days);
    log_fields(LOG_LEVEL_INFO, "removed access-log segments past their retention", "segments", n, "retentionDays",
               days, "entry", index, NULL);
    return more;
}

/* The retention thread (when a retention is set): a pass at start, then
 * hourly (at once again while a pass leaves segments for the next), until
 * told to stop. */
static void *retention_main(void *arg)
{
    audit_role *r = arg;
    pthread_setname_np(pthread_self(), "audit-retention");
    pthread_mutex_lock(&r->retention_lock);
    while (!r->retention_stop) {
        pthread_mutex_unlock(&r->retention_lock);
        bool more = prune_access(r);
        pthread_mutex_lock(&r->retention_lock);
        if (more)
            continue;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += PRUNE_EVERY_NS / NSEC_PER_SEC;
        while (!r->retention_stop && pthread_cond_timedwait(&r->retention_wake, &r->retention_lock, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&r->retention_lock);
    return NULL;
}

/* Stops the retention thread, if it runs (a pass under way ends first). */
static void retention_stop(audit_role *r)
{
    if (!r->retention_days)
        return;
    pthread_mutex_lock(&r->retention_lock);
    r->retention_stop = true;
    pthread_cond_signal(&r->retention_wake);
    pthread_mutex_unlock(&r->retention_lock);
    pthread_join(r->retention, NULL);
}

/* The writer thread: commits what is queued, hands the results to the loop,
 * and after a stop request drains the queue before returning. */
static void *writer_main(void *arg)
{
    audit_role *r = arg;
    pthread_mutex_lock(&r->queue_lock);
    for (;;) {
        while (h2o_linklist_is_empty(&r->queue) && !r->writer_stop)
            pthread_cond_wait(&r->queue_wake, &r->queue_lock);
        if (h2o_linklist_is_empty(&r->queue))
            break;
        h2o_linklist_t batch;
        h2o_linklist_init_anchor(&batch);
        h2o_linklist_insert_list(&batch, &r->queue);
        pthread_mutex_unlock(&r->queue_lock);
        commit_batch(r, &batch);
        while (!h2o_linklist_is_empty(&batch)) {
            pending_append *pa = H2O_STRUCT_FROM_MEMBER(pending_append, link, batch.next);
            h2o_linklist_unlink(&pa->link);
            h2o_multithread_send_message(&r->done, &pa->msg);
        }
        pthread_mutex_lock(&r->queue_lock);
    }
    pthread_mutex_unlock(&r->queue_lock);
    return NULL;
}

/* Answers committed appends on the event loop. */
static void on_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    audit_role *r = H2O_STRUCT_FROM_MEMBER(audit_role, done, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        pending_append *pa = H2O_STRUCT_FROM_MEMBER(pending_append, msg.link, messages->next);
        h2o_linklist_unlink(&pa->msg.link);
        r->in_flight--;
        if (pa->req) {
            pa->anchor->pa = NULL;
            if (pa->error < 0)
                send_error(pa->req, 503, "unavailable", "the audit log cannot be written");
            else {
                json_t *body = json_pack("{s:I, s:I}", "first", (json_int_t)pa->first, "count", (json_int_t)pa->n);
                api_send_json(pa->req, 200, body);
                json_decref(body);
            }
        }
        pending_append_free(pa);
    }
}

/* Signs a checkpoint when the tree grew since the last one. */
static void on_tick(h2o_timeout_entry_t *entry)
{
    audit_role *r = H2O_STRUCT_FROM_MEMBER(audit_role, tick_entry, entry);
    int e = sign_checkpoint(r);
    if (e < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot sign a checkpoint", "error", strerror(-e), NULL);
    h2o_timeout_link(r->ctx->loop, &r->tick_timeout, &r->tick_entry);
}

/* The name of the role at the other end of REQ's connection ("" when not
 * known, which the peer check does not let happen). */
static const char *peer_role(const audit_role *r, h2o_req_t *req)
{
    int i = httpd_conn_peer(req);
    return i >= 0 && (size_t)i < r->n_roles ? r->roles[i].name : "";
}

/* Refuses the append batch of REQ because its entry I has ACTION, which the
 * peer ROLE may not append: logged, and a 403 naming both. */
static void refuse_entry(h2o_req_t *req, const char *role, size_t i, const char *action)
{
    char index[24];
    snprintf(index, sizeof(index), "%zu", i);
    log_fields(LOG_LEVEL_WARN, "refused an audit entry its role may not append; the batch is refused", "role", role,
               "action", action, "entry", index, NULL);
    api_error err;
    api_fail(&err, 403, "forbidden", "the %s role may not append %s entries (entry %zu); the batch is refused", role,
             action, i);
    api_send_error(req, &err);
}

/* Validates every entry of an append body, stamps each with the peer's role
 * and the receive time, and queues them for the next group commit; answers
 * 400 for the whole batch if any entry is bad, 403 if the role may not
 * append one of them. */
static void handle_append(audit_role *r, h2o_req_t *req)
{
    if (httpd_stopping(req)) {
        send_error(req, 503, "unavailable", "the audit role is stopping");
        return;
    }
    if (req->entity.len > APPEND_BODY_MAX) {
        send_error(req, 413, "too_large", "append body too large");
        return;
    }
    json_error_t jerr;
    json_t *body = json_loadb(req->entity.base, req->entity.len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *entries = json_object_get(body, "entries");
    size_t n = json_array_size(entries);
    if (!json_is_array(entries) || n == 0 || n > APPEND_ENTRIES_MAX || json_object_size(body) != 1) {
        json_decref(body);
        send_error(req, 400, "invalid", "expected {\"entries\": [entry, ...]} with 1 to 10000 entries");
        return;
    }
    pending_append *pa = calloc(1, sizeof(*pa));
    if (pa) {
        pa->texts = calloc(n, sizeof(*pa->texts));
        pa->lens = calloc(n, sizeof(*pa->lens));
    }
    if (!pa || !pa->texts || !pa->lens) {
        if (pa)
            pending_append_free(pa);
        json_decref(body);
        send_error(req, 503, "unavailable", "out of memory");
        return;
    }
    const char *role = peer_role(r, req);
    uint64_t now = time_now_ns();
    for (size_t i = 0; i < n; i++) {
        const json_t *entry = json_array_get(entries, i);
        const char *action = json_string_value(json_object_get(entry, "action"));
        if (action && !audit_appender_may(role, action)) {
            pending_append_free(pa);
            refuse_entry(req, role, i, action);
            json_decref(body);
            return;
        }
        int e = audit_entry_stamp(entry, role, now, &pa->texts[i], &pa->lens[i]);
        if (e == 0 && note_head_segment(pa, n, entry) < 0) {
            pa->n = i + 1;
            pending_append_free(pa);
            json_decref(body);
            send_error(req, 503, "unavailable", "out of memory");
            return;
        }
        if (e < 0) {
            pending_append_free(pa);
            json_decref(body);
            char msg[128];
            snprintf(msg, sizeof(msg), "entry %zu is not a valid audit entry", i);
            send_error(req, 400, "invalid", msg);
            return;
        }
        pa->n = i + 1;
    }
    json_decref(body);
    pa->req = req;
    append_anchor *a = h2o_mem_alloc_shared(&req->pool, sizeof(*a), anchor_dispose);
    a->pa = pa;
    pa->anchor = a;
    r->in_flight++;
    pthread_mutex_lock(&r->queue_lock);
    h2o_linklist_insert(&r->queue, &pa->link);
    pthread_cond_signal(&r->queue_wake);
    pthread_mutex_unlock(&r->queue_lock);
}

/* Answers the latest checkpoint, signing a new one first if the tree grew. */
static void handle_checkpoint(audit_role *r, h2o_req_t *req)
{
    int e = sign_checkpoint(r);
    if (e < 0) {
        send_error(req, 503, "unavailable", "cannot sign a checkpoint");
        return;
    }
    json_t *body = json_pack("{s:s, s:I, s:s, s:s}", "checkpoint", r->checkpoint, "size",
                             (json_int_t)r->checkpoint_size, "origin", r->origin, "key", r->vkey);
    api_send_json(req, 200, body);
    json_decref(body);
}

/* The query of REQ parsed into two indexes named NAMES; false (after a 400)
 * when malformed. */
static bool query_pair(h2o_req_t *req, const char *const names[2], uint64_t v[2])
{
    const char *q = req->query_at == SIZE_MAX ? "" : req->path.base + req->query_at + 1;
    size_t len = req->query_at == SIZE_MAX ? 0 : req->path.len - req->query_at - 1;
    if (audit_parse_query(q, len, names, v) == 0)
        return true;
    char msg[160];
    snprintf(msg, sizeof(msg), "expected ?%s=N&%s=N with decimal numbers and nothing else", names[0], names[1]);
    send_error(req, 400, "invalid", msg);
    return false;
}

/* A page of entries being read: bounded in count by the request and in
 * bytes by AUDIT_PAGE_BYTES, so the answer stays well under what clients
 * accept even when every character needs escaping. */
typedef struct page {
    json_t *items;
    size_t bytes;
    bool more; /* cut short by the byte cap */
} page;

static int add_entry(void *userdata, uint64_t index, const char *text, size_t len)
{
    page *p = userdata;
    if (p->bytes > 0 && p->bytes + len > AUDIT_PAGE_BYTES) {
        p->more = true;
        return -E2BIG;
    }
    json_t *item = json_pack("{s:I, s:s%}", "index", (json_int_t)index, "entry", text, len);
    if (!item || json_array_append_new(p->items, item) < 0)
        return -ENOMEM;
    p->bytes += len;
    return 0;
}

/* Answers stored entries [start, end) as their exact canonical text. */
static void handle_entries(audit_role *r, h2o_req_t *req)
{
    static const char *const names[2] = {"start", "end"};
    uint64_t v[2];
    if (!query_pair(req, names, v))
        return;
    if (v[0] >= v[1] || v[1] - v[0] > AUDIT_PAGE_MAX) {
        char msg[100];
        snprintf(msg, sizeof(msg), "need start < end and at most %d entries", AUDIT_PAGE_MAX);
        send_error(req, 400, "invalid", msg);
        return;
    }
    page p = {.items = json_array()};
    pthread_mutex_lock(&r->log_lock);
    int e = p.items ? audit_log_read(r->log, v[0], v[1], add_entry, &p) : -ENOMEM;
    uint64_t size = audit_log_size(r->log);
    pthread_mutex_unlock(&r->log_lock);
    if (e < 0 && !p.more) {
        json_decref(p.items);
        send_error(req, 503, "unavailable", "cannot read the audit log");
        return;
    }
    json_t *body = json_pack("{s:I, s:b, s:o}", "size", (json_int_t)size, "more", p.more, "entries", p.items);
    api_send_json(req, 200, body);
    json_decref(body);
}

/* PROOF as a new JSON array of base64 strings (NULL on allocation failure,
 * which json_pack then reports). */
static json_t *proof_json(const merkle_hash *proof, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        char b64[64];
        base64_encode(proof[i], MERKLE_HASH_LEN, b64, false);
        json_array_append_new(a, json_string(b64));
    }
    return a;
}

/* Answers an inclusion (?index=&size=) or consistency (?from=&to=) proof
 * computed from the stored tree, for sizes up to the current one. */
static void handle_proof(audit_role *r, h2o_req_t *req, bool inclusion)
{
    static const char *const inc_names[2] = {"index", "size"}, *const con_names[2] = {"from", "to"};
    uint64_t v[2];
    if (!query_pair(req, inclusion ? inc_names : con_names, v))
        return;
    pthread_mutex_lock(&r->log_lock);
    uint64_t size = audit_log_size(r->log);
    pthread_mutex_unlock(&r->log_lock);
    bool ok = inclusion ? v[0] < v[1] && v[1] <= size : v[0] >= 1 && v[0] <= v[1] && v[1] <= size;
    if (!ok) {
        char msg[200];
        snprintf(msg, sizeof(msg), inclusion ? "need index < size <= %llu (the tree size)"
                                              : "need 1 <= from <= to <= %llu (the tree size)",
                 (unsigned long long)size);
        send_error(req, 400, "invalid", msg);
        return;
    }
    merkle_hash proof[MERKLE_PROOF_MAX];
    size_t n;
    pthread_mutex_lock(&r->log_lock);
    int e = inclusion ? merkle_inclusion_proof(v[0], v[1], audit_log_get_node, r->log, proof, &n)
                      : merkle_consistency_proof(v[0], v[1], audit_log_get_node, r->log, proof, &n);
    pthread_mutex_unlock(&r->log_lock);
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot compute a proof from the stored tree", "error", strerror(-e), NULL);
        send_error(req, 503, "unavailable", "cannot compute the proof");
        return;
    }
    json_t *body = inclusion ? json_pack("{s:I, s:I, s:o}", "index", (json_int_t)v[0], "size", (json_int_t)v[1],
                                         "proof", proof_json(proof, n))
                             : json_pack("{s:I, s:I, s:o}", "from", (json_int_t)v[0], "to", (json_int_t)v[1],
                                         "proof", proof_json(proof, n));
    api_send_json(req, 200, body);
    json_decref(body);
}

/* The parameters of REQ's query (segment_params_parse()); false without
 * a query or when they are anything else. */
static bool segment_query(h2o_req_t *req, char id[SEGMENT_ID_MAX + 1], uint64_t *offset)
{
    if (req->query_at == SIZE_MAX)
        return false;
    return segment_params_parse(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, id, offset,
                                NULL);
}

/* Where bytes to store come from: DATA in memory, else the read-only
 * descriptor FD of the proxy's spool file, which holds them at the same
 * offset as the segment; OFFSET is the segment offset of their first
 * byte. */
typedef struct segment_source {
    const char *data;
    int fd;
    uint64_t offset;
} segment_source;

/* Reads N bytes of SRC at segment offset AT (at least SRC's offset) into
 * BUF. Returns 0, -EIO when the spool file ends before them, or another
 * negative errno. */
static int source_read(const segment_source *src, uint64_t at, char *buf, size_t n)
{
    if (!src->data)
        return fd_pread_all(src->fd, buf, n, at);
    memcpy(buf, src->data + (at - src->offset), n);
    return 0;
}

/* Whether the LEN bytes stored in FD at SRC's offset are SRC's: 1 when
 * they are, 0 when not, a negative errno when either cannot be read. */
static int stored_bytes_match(int fd, const segment_source *src, uint64_t len)
{
    char stored[16384], sent[sizeof(stored)];
    for (uint64_t at = src->offset; len > 0;) {
        size_t n = MIN(len, sizeof(stored));
        int e = fd_pread_all(fd, stored, n, at);
        if (e == 0)
            e = source_read(src, at, sent, n);
        if (e < 0)
            return e;
        if (memcmp(stored, sent, n) != 0)
            return 0;
        at += n, len -= n;
    }
    return 1;
}

/* Writes SRC's LEN bytes at segment offset AT to FD at AT: from the spool
 * file with copy_file_range() (no copy through this process), through a
 * buffer from memory or where the kernel cannot copy. Returns 0 or a
 * negative errno (-EIO: the spool file ends before them). */
static int store_from(int fd, uint64_t at, const segment_source *src, uint64_t len)
{
    bool copy = !src->data;
    char buf[65536];
    while (len > 0) {
        ssize_t n;
        if (copy) {
            loff_t in = (loff_t)at, out = (loff_t)at;
            n = copy_file_range(src->fd, &in, fd, &out, len, 0);
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                copy = false;
                continue;
            }
            if (n == 0)
                return -EIO;
        } else {
            size_t chunk = MIN(len, sizeof(buf));
            int e = source_read(src, at, buf, chunk);
            if (e < 0)
                return e;
            n = pwrite(fd, buf, chunk, (off_t)at);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        at += (uint64_t)n, len -= (uint64_t)n;
    }
    return 0;
}

/* Stores LEN bytes of SRC at its offset in the role's copy of segment ID.
 * Bytes it already has are acknowledged again when they are the same and
 * the copy ends with them (a retried delivery); so success means the copy
 * ends with exactly these bytes, as the proxy's file does. Returns 0 and
 * the copy's size in *RET_SIZE once the bytes are in the page cache (the
 * copy is synced before a head naming them is appended, commit_batch());
 * 1 and why in *WHY for a gap or other bytes (a
 * conflict); a negative errno when the bytes cannot be read or stored.
 * Serialised: the HTTP loop and the spool channel's thread both store. */
static int segment_store(audit_role *r, const char *id, const segment_source *src, uint64_t len, uint64_t *ret_size,
                         const char **why)
{
    char path[4300];
    uint64_t offset = src->offset;
    snprintf(path, sizeof(path), "%s/%s", r->segments, id);
    pthread_mutex_lock(&r->segments_lock);
    /* a segment starts at offset 0: anything else of an unknown one is a gap */
    int fd = open(path, O_RDWR | O_CLOEXEC | (offset == 0 ? O_CREAT : 0), 0600);
    struct stat st = {0};
    int e = fd < 0 && errno != ENOENT ? -errno : fd >= 0 && fstat(fd, &st) < 0 ? -errno : 0;
    uint64_t size = e == 0 ? (uint64_t)st.st_size : 0, end = offset + len;
    int ret = 1;
    if (e == 0 && offset > size) {
        *why = "the segment's bytes must arrive in order (a gap before this offset)";
        goto out;
    }
    /* a retried delivery ends where the copy ends: bytes past END, or other
     * bytes before it, are not what the proxy sent */
    int same = e == 0 && size > end     ? 0
               : e == 0 && offset < size ? stored_bytes_match(fd, src, size - offset)
                                         : 1;
    if (same == 0) {
        *why = "the segment already holds other bytes at this offset (only a retried delivery may repeat stored "
               "bytes)";
        goto out;
    }
    if (same < 0)
        e = same;
    /* left dirty: the sync before the head writes a segment's batches out
     * together, in a few large I/Os instead of one per batch */
    if (e == 0 && end > size)
        e = store_from(fd, size, src, end - size);
    ret = e;
    *ret_size = MAX(end, size);
    if (e < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot store an access-log segment", "path", path, "error", strerror(-e), NULL);
out:
    if (fd >= 0)
        close(fd);
    pthread_mutex_unlock(&r->segments_lock);
    return ret;
}

/* Stores the proxy's segment bytes, the request's body, at their offset in
 * the role's own copy (segment_store()). */
static void handle_segment_put(audit_role *r, h2o_req_t *req)
{
    char id[SEGMENT_ID_MAX + 1];
    uint64_t offset;
    if (strcmp(peer_role(r, req), "proxy") != 0) {
        send_error(req, 403, "forbidden", "only the proxy role writes access-log segments");
        return;
    }
    if (!segment_query(req, id, &offset)) {
        send_error(req, 400, "invalid", "expected ?id=<segment id>&offset=N");
        return;
    }
    if (offset > SEGMENT_BYTES_MAX || req->entity.len > SEGMENT_BYTES_MAX - offset) {
        send_error(req, 413, "too_large", "a segment holds at most 2 MiB");
        return;
    }
    const char *why = NULL;
    uint64_t size;
    int e = segment_store(r, id, &(segment_source){.data = req->entity.base, .fd = -1, .offset = offset},
                          req->entity.len, &size, &why);
    if (e < 0) {
        send_error(req, 503, "unavailable", "cannot store the segment");
        return;
    }
    if (e > 0) {
        send_error(req, 409, "conflict", why);
        return;
    }
    json_t *body = json_pack("{s:s, s:I}", "id", id, "size", (json_int_t)size);
    api_send_json(req, 200, body);
    json_decref(body);
}

/* Answers one message on the spool channel's connection CONN: stores the
 * segment bytes that the descriptor it carries holds (segment_store()) and
 * answers "<status> <text>" (segment.h). Returns 0, or -1 when the
 * connection is to be closed (by the peer, or broken). */
static int channel_serve(audit_role *r, int conn)
{
    char msg[SEGMENT_CHANNEL_MESSAGE_MAX];
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {msg, sizeof(msg)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = sizeof(control.buf)};
    ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    int src = -1; /* the first descriptor passed; any other is closed */
    for (struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
                if (src < 0)
                    src = fd;
                else
                    close(fd);
            }
    if (n <= 0) {
        if (src >= 0)
            close(src);
        return -1;
    }
    char id[SEGMENT_ID_MAX + 1], text[320];
    uint64_t offset = 0, length = 0, size = 0;
    struct stat st;
    const char *why = NULL;
    int status = 400, e = 0;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || !segment_params_parse(msg, (size_t)n, id, &offset, &length))
        why = "expected id=<segment id>&offset=N&length=N and one descriptor";
    else if (src < 0 || fstat(src, &st) < 0 || !S_ISREG(st.st_mode))
        why = "expected the descriptor of a regular file (the proxy's spool file) with the message";
    else if (offset > SEGMENT_BYTES_MAX || length > SEGMENT_BYTES_MAX - offset)
        status = 413, why = "a segment holds at most 2 MiB";
    else if ((uint64_t)st.st_size < offset + length)
        why = "the spool file ends before the bytes named";
    else if ((e = segment_store(r, id, &(segment_source){.fd = src, .offset = offset}, length, &size, &why)) < 0)
        status = 503, why = "cannot store the segment";
    else
        status = e > 0 ? 409 : 200;
    int len = status == 200 ? snprintf(text, sizeof(text), "200 %llu", (unsigned long long)size)
                            : snprintf(text, sizeof(text), "%d %s", status, why);
    bool sent = send(conn, text, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL) == len;
    if (src >= 0)
        close(src);
    return sent ? 0 : -1;
}

/* Whether the peer of the channel connection CONN is the proxy role
 * (SO_PEERCRED under R's channel policy; a refusal is logged). */
static bool channel_peer_ok(audit_role *r, int conn)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int role;
    return getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
           peer_check_hook(&r->channel_peers, cred.pid, cred.uid, &role) == 0;
}

/* The spool channel's thread: accepts the proxy's connections and answers
 * their messages one at a time, until the stop pipe is written. */
static void *channel_main(void *arg)
{
    audit_role *r = arg;
    struct pollfd p[2 + CHANNEL_PEERS_MAX];
    size_t n = 2;
    p[0] = (struct pollfd){.fd = r->channel_stop[0], .events = POLLIN};
    p[1] = (struct pollfd){.fd = r->channel_fd, .events = POLLIN};
    while (poll(p, n, -1) >= 0 || errno == EINTR) {
        if (p[0].revents)
            break;
        for (size_t i = 2; i < n;)
            if (p[i].revents && channel_serve(r, p[i].fd) < 0) {
                close(p[i].fd);
                p[i] = p[--n]; /* its revents are this poll's: looked at next */
            } else {
                i++;
            }
        int c = p[1].revents & POLLIN ? accept4(r->channel_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK) : -1;
        if (c >= 0 && n == 2 + CHANNEL_PEERS_MAX)
            log_fields(LOG_LEVEL_WARN, "refused a spool channel connection: too many at once", "socket",
                       SEGMENT_CHANNEL_NAME, NULL);
        if (c >= 0 && n < 2 + CHANNEL_PEERS_MAX && channel_peer_ok(r, c))
            p[n++] = (struct pollfd){.fd = c, .events = POLLIN};
        else if (c >= 0)
            close(c);
    }
    for (size_t i = 2; i < n; i++)
        close(p[i].fd);
    return NULL;
}

/* Opens the spool channel beside the role's socket SOCKET and starts its
 * thread. Without it the proxy sends segment bytes over HTTP: a failure is
 * logged, not fatal. */
static void channel_start(audit_role *r, const char *socket)
{
    char path[4300];
    r->channel_fd = r->channel_stop[0] = r->channel_stop[1] = -1;
    int e = segment_channel_path(socket, path, sizeof(path)) ? 0 : -ENAMETOOLONG;
    if (e == 0)
        e = httpd_listen_unix(path, SOCK_SEQPACKET, &r->channel_fd);
    if (e == 0 && chmod(path, 0666) < 0) /* who may send is the peer check's */
        e = -errno;
    if (e == 0 && pipe2(r->channel_stop, O_CLOEXEC) < 0)
        e = -errno;
    if (e == 0)
        e = -pthread_create(&r->channel, NULL, channel_main, r);
    if (e == 0)
        return;
    log_fields(LOG_LEVEL_WARN, "cannot open the spool channel; the proxy sends access-log bytes over HTTP", "path",
               path, "error", strerror(-e), NULL);
    if (r->channel_fd >= 0)
        close(r->channel_fd);
    if (r->channel_stop[0] >= 0)
        close(r->channel_stop[0]), close(r->channel_stop[1]);
    r->channel_fd = -1;
}

/* Stops the spool channel's thread (the proxy has stopped: the role stops
 * last). */
static void channel_stop(audit_role *r)
{
    if (r->channel_fd < 0)
        return;
    if (write(r->channel_stop[1], "x", 1) == 1)
        pthread_join(r->channel, NULL);
    close(r->channel_fd);
    close(r->channel_stop[0]);
    close(r->channel_stop[1]);
    r->channel_fd = -1;
}

/* Answers a stored segment as base64 (its bytes are untrusted: the reader
 * verifies them against the heads in the log). */
static void handle_segment_get(audit_role *r, h2o_req_t *req)
{
    char id[SEGMENT_ID_MAX + 1], path[4300];
    if (!segment_query(req, id, NULL)) {
        send_error(req, 400, "invalid", "expected ?id=<segment id>");
        return;
    }
    snprintf(path, sizeof(path), "%s/%s", r->segments, id);
    _cleanup_free_ char *data = NULL, *b64 = NULL;
    size_t len = 0;
    int e = read_file(path, SEGMENT_BYTES_MAX, &data, &len);
    if (e == -ENOENT) {
        send_error(req, 404, "not_found", "no such access-log segment");
        return;
    }
    if (e == 0 && !(b64 = malloc(base64_encoded_size(len))))
        e = -ENOMEM;
    if (e < 0) {
        send_error(req, 503, "unavailable", "cannot read the segment");
        return;
    }
    base64_encode((const uint8_t *)data, len, b64, false);
    json_t *body = json_pack("{s:s, s:I, s:s}", "id", id, "size", (json_int_t)len, "data", b64);
    api_send_json(req, 200, body);
    json_decref(body);
}

/* Routes a request of a local role; anything else is a 404. */
static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    audit_role *r = ((role_handler *)self)->role;
    h2o_iovec_t p = req->path_normalized;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    bool post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    if (post && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/append")))
        handle_append(r, req);
    else if (post && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/segment")))
        handle_segment_put(r, req);
    else if (strcmp(peer_role(r, req), "api") != 0) /* reading the log is the API's, for GET /v1/audit/... */
        send_error(req, 403, "forbidden", "only the api role reads the audit log");
    else if (get && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/checkpoint")))
        handle_checkpoint(r, req);
    else if (get && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/entries")))
        handle_entries(r, req);
    else if (get && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/proof/inclusion")))
        handle_proof(r, req, true);
    else if (get && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/proof/consistency")))
        handle_proof(r, req, false);
    else if (get && h2o_memis(p.base, p.len, H2O_STRLIT("/v1/segment")))
        handle_segment_get(r, req);
    else
        send_error(req, 404, "not_found", "no such endpoint");
    return 0;
}


/* Loads the signing key from PATH, or creates it (0600) on first start.
 * The PEM text is wiped after use. Returns 0 or a negative errno. */
static int load_or_create_key(const char *path, EVP_PKEY **ret)
{
    char *pem = NULL;
    size_t len = 0;
    int e = read_file(path, KEY_FILE_MAX, &pem, &len);
    if (e == 0) {
        BIO *bio = BIO_new_mem_buf(pem, (int)len);
        EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        OPENSSL_cleanse(pem, len);
        free(pem);
        if (!key || EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
            EVP_PKEY_free(key);
            return -EBADMSG;
        }
        *ret = key;
        return 0;
    }
    if (e != -ENOENT)
        return e;
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *bio = BIO_new(BIO_s_mem());
    if (!key || !bio || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1) {
        BIO_free(bio);
        EVP_PKEY_free(key);
        return -ENOMEM;
    }
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    e = write_file_atomic(path, data, (size_t)n, 0600);
    OPENSSL_cleanse(data, (size_t)n);
    BIO_free(bio);
    if (e < 0) {
        EVP_PKEY_free(key);
        return e;
    }
    log_fields(LOG_LEVEL_INFO, "created the audit log signing key", "path", path, NULL);
    *ret = key;
    return 0;
}

static void register_handlers(h2o_pathconf_t *pathconf, void *userdata)
{
    role_handler *h = (role_handler *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->role = userdata;
}

/* httpd hooks: the role serves from one thread, whose loop receives the
 * writer's committed appends and signs a checkpoint every second. */
static void *thread_init(h2o_context_t *ctx, void *userdata)
{
    audit_role *r = userdata;
    r->ctx = ctx;
    r->mq = h2o_multithread_create_queue(ctx->loop);
    h2o_multithread_register_receiver(r->mq, &r->done, on_done);
    h2o_timeout_init(ctx->loop, &r->tick_timeout, CHECKPOINT_INTERVAL_MS);
    r->tick_entry.cb = on_tick;
    h2o_timeout_link(ctx->loop, &r->tick_timeout, &r->tick_entry);
    return r;
}

/* Stops the retention thread, then the writer once it has committed what
 * is queued; its answers then arrive while httpd waits for thread_busy to
 * clear. */
static void thread_drain(void *state)
{
    audit_role *r = state;
    retention_stop(r);
    channel_stop(r);
    pthread_mutex_lock(&r->queue_lock);
    r->writer_stop = true;
    pthread_cond_signal(&r->queue_wake);
    pthread_mutex_unlock(&r->queue_lock);
    pthread_join(r->writer, NULL);
}

static bool thread_busy(void *state)
{
    return ((audit_role *)state)->in_flight > 0;
}

static void thread_dispose(void *state)
{
    audit_role *r = state;
    if (h2o_timeout_is_linked(&r->tick_entry))
        h2o_timeout_unlink(&r->tick_entry);
    h2o_timeout_dispose(r->ctx->loop, &r->tick_timeout);
    if (r->in_flight == 0) {
        h2o_multithread_unregister_receiver(r->mq, &r->done);
        h2o_multithread_destroy_queue(r->mq);
    }
}

/* Opens the log and the key, publishes the verifier key. Returns 0 or a
 * negative errno, logged. */
static int role_setup(const audit_server_config *cfg, audit_role *r)
{
    const char *slash = strrchr(cfg->db, '/');
    int dir_len = snprintf(r->segments, sizeof(r->segments), "%.*s/access", slash ? (int)(slash - cfg->db) : 1,
                           slash ? cfg->db : ".");
    int e = dir_len > 0 && (size_t)dir_len < sizeof(r->segments) ? mkdir_p(r->segments, 0700) : -ENAMETOOLONG;
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot create the directory of access-log segments", "path", r->segments,
                   "error", strerror(-e), NULL);
        return e;
    }
    e = audit_log_open(cfg->db, &r->log);
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot open the audit log", "path", cfg->db, "error", strerror(-e), NULL);
        return e;
    }
    e = load_or_create_key(cfg->key, &r->key);
    if (e < 0) {
        log_fields(LOG_LEVEL_ERROR, "cannot load the audit signing key", "path", cfg->key, "error",
                   strerror(-e), NULL);
        return e;
    }
    uint8_t pub[32];
    if ((size_t)snprintf(r->origin, sizeof(r->origin), "%s/cloister/audit", cfg->domain) >= sizeof(r->origin))
        e = -ENAMETOOLONG;
    else
        e = audit_ed25519_public(r->key, pub);
    if (e == 0)
        e = audit_verifier_format(r->origin, pub, &r->vkey);
    if (e == 0) {
        char line[1024];
        int n = snprintf(line, sizeof(line), "%s\n", r->vkey);
        e = write_file_atomic(cfg->pub, line, (size_t)n, 0644);
    }
    if (e == 0)
        e = sign_checkpoint(r);
    if (e < 0)
        log_fields(LOG_LEVEL_ERROR, "cannot publish the audit verifier key or sign a checkpoint", "origin", r->origin,
                   "error", strerror(-e), NULL);
    return e;
}

int audit_serve(const audit_server_config *cfg)
{
    audit_role r = {.log_lock = PTHREAD_MUTEX_INITIALIZER, .queue_lock = PTHREAD_MUTEX_INITIALIZER,
                    .queue_wake = PTHREAD_COND_INITIALIZER, .retention_lock = PTHREAD_MUTEX_INITIALIZER,
                    .retention_wake = PTHREAD_COND_INITIALIZER, .segments_lock = PTHREAD_MUTEX_INITIALIZER,
                    .channel_fd = -1};
    h2o_linklist_init_anchor(&r.queue);
    r.health = cfg->health;
    int e = role_setup(cfg, &r);
    if (e == 0) {
        atomic_store(&r.health->audit_entries, audit_log_size(r.log));
        pthread_create(&r.writer, NULL, writer_main, &r);
        r.retention_days = cfg->access_retention_days; /* read by the thread: set first */
        if (r.retention_days && pthread_create(&r.retention, NULL, retention_main, &r) != 0) {
            r.retention_days = 0;
            log_error("cannot start the retention thread; the access-log segments are kept");
        }
        log_fields(LOG_LEVEL_INFO, "audit log serving", "socket", cfg->socket, "key", r.vkey, NULL);
        char listen[4300];
        snprintf(listen, sizeof(listen), "unix:%s", cfg->socket);
        /* the roles that emit events; which entries each may append is audit_appender_may()'s */
        const peer_policy peers = {.socket = "audit.sock", .roles = cfg->roles, .n_roles = cfg->n_roles, .uid = geteuid(),
                                   .allowed = {"api", "proxy", "kms", "runner"}};
        r.roles = cfg->roles;
        r.n_roles = cfg->n_roles;
        r.channel_peers = (peer_policy){.socket = SEGMENT_CHANNEL_NAME, .roles = cfg->roles, .n_roles = cfg->n_roles,
                                        .uid = geteuid(), .allowed = {"proxy"}};
        channel_start(&r, cfg->socket);
        httpd_config h = {
            .name = "audit",
            .listen = listen,
            .threads = 1,
            .max_request_body = APPEND_BODY_MAX,
            .hooks = {register_handlers, thread_init, thread_drain, thread_busy, thread_dispose},
            .userdata = &r,
            .ready_flag = &cfg->health->ready,
            .check_peer = peer_check_hook,
            .peer_data = &peers,
            .mtls = cfg->mtls,
            .check_cert = peer_tls_check_hook,
        };
        e = httpd_run(&h);
        if (e < 0) /* never served: the writer was not stopped by a drain */
            thread_drain(&r);
    }
    free(r.vkey);
    free(r.checkpoint);
    EVP_PKEY_free(r.key);
    audit_log_free(r.log);
    if (e == 0)
        log_info("audit log stopped");
    return e < 0 ? 1 : 0;
}
