/* The Enclave controller: see controller.h for what it promises.
 *
 * One thread owns every enclave entry; the lock only guards the table's
 * membership, the autoscaler's requests and the stop flag, so
 * controller_set_desired() can be called from API threads. A pass is:
 * follow the change feed, list the runner's sandboxes, delete the sandboxes
 * of Enclaves that are gone, reconcile each Enclave, write the statuses
 * that changed. Status writes are REPLACEs of the document last seen with
 * a new status and its resourceVersion as precondition, so a concurrent
 * change of the spec wins and the status is written again on the next
 * pass; the MODIFIED events of our own writes carry the same spec and are
 * recognised as such (spec compared, not resourceVersion). */
#include "controller/controller.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "controller/decide.h"
#include "controller/runner-client.h"
#include "proxy/metrics.h"
#include "resource/resource.h"
#include "telemetry/telemetry.h"

#define OWNER_PREFIX "enclave/"
#define SPEC_TAG_LEN 16                 /* hex digits of the launch spec's digest in the owner tag */
#define UID_MAX 37                      /* the store's uids have 36; with it the owner tag fits RUNNER_OWNER_MAX */
#define ACTOR "system:controller"       /* not a valid User name: no one can pose as it */
#define EVENT_MAX 512
#define CHANGES_BATCH 256
#define RUNNER_WAIT_REPORT_NS (10 * NSEC_PER_SEC) /* a runner not ready for longer shows in the statuses */
/* `<enclave>-16` must be a name the runner takes (at most 63 bytes) */
#define ENCLAVE_NAME_MAX (RESOURCE_NAME_MAX - 3)

/* The state a replica shows in the status: `running` only once ready (the
 * proxy sends requests to those alone), `crashLoop` while it keeps
 * exiting (controller_crash_looping()). */
static const char *state_name(const replica *r, uint64_t now)
{
    if (controller_crash_looping(r, now))
        return "crashLoop";
    switch (r->state) {
    case REPLICA_RUNNING:
        return r->drain_since ? "stopping" : r->ready ? "running" : "starting";
    case REPLICA_CRASHED:
        return "crashed";
    case REPLICA_STOPPED:
        return "stopped";
    case REPLICA_STARTING:
        break;
    }
    return "starting";
}

typedef struct enclave {
    char name[RESOURCE_NAME_MAX + 1];
    char uid[UID_MAX + 1]; /* metadata.uid: a recreated Enclave is a new one */
    char owner[RUNNER_OWNER_MAX - SPEC_TAG_LEN]; /* "enclave/<name>/<uid>/": its sandboxes' owner tags start so */
    char spec_tag[SPEC_TAG_LEN + 1]; /* and end with this digest of launch_spec */
    json_t *doc;           /* the stored document last seen */
    int64_t rv;
    json_t *launch_spec;   /* the spec without replicas: what a replica is launched with */
    uint64_t generation;   /* bumped when launch_spec changes */
    unsigned min, max, desired;
    unsigned requested;    /* controller_set_desired(), 0 when none; under the lock */
    controller_load_clock load;
    controller_scaling scaling; /* spec.scaling, its defaults filled in */
    unsigned restarts;
    char pcr0[RUNNER_PCR_HEX_LEN + 1];
    char last_event[EVENT_MAX];
    char last_event_at[40];
    json_t *written;       /* the status as stored */
    replica replicas[RESOURCE_ENCLAVE_REPLICAS_MAX];
} enclave;

/* What GET /metrics shows of an Enclave, published after every pass. */
typedef struct enclave_stats {
    char name[RESOURCE_NAME_MAX + 1];
    unsigned desired, ready, restarts;
    unsigned crash_looping; /* replicas in crashLoop (controller_crash_looping()) */
    uint64_t memory_limit_bytes; /* spec.limits.memoryMiB, 0 when none */
} enclave_stats;

struct controller {
    store *store;
    unsigned interval_ms;
    const _Atomic bool *runner_ready;
    const proxy_metrics *load;
    uint64_t runner_waiting_since; /* time_mono_ns() since the runner is not ready, 0 while it is */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;   /* on CLOCK_MONOTONIC */
    bool stop, wake;
    enclave *enclaves[CONTROLLER_ENCLAVES_MAX];
    size_t n_enclaves;
    int64_t revision;      /* the change feed's, once listed */
    uint64_t epoch;        /* the store's when it listed (its revisions belong to it) */
    bool listed;
    bool overflow_logged;
    bool runner_down;      /* an outage is logged once */
    runner_client *runner;
    /* the lease that makes this the one controller of the store (api
     * replicas share one): its fencing token while held, else 0 */
    char holder[96];
    int64_t lease_token;
    uint64_t lease_renewed; /* time_mono_ns() of the last acquire or renew */
    enclave_stats stats[CONTROLLER_ENCLAVES_MAX]; /* under the lock */
    size_t n_stats;
};

/* ---- enclave entries ----------------------------------------------------- */

static void enclave_free(enclave *e)
{
    if (!e)
        return;
    json_decref(e->doc);
    json_decref(e->launch_spec);
    json_decref(e->written);
    free(e);
}

/* The entry of NAME, or NULL. Controller thread, or under the lock. */
static enclave *enclave_find(controller *c, const char *name)
{
    for (size_t i = 0; i < c->n_enclaves; i++)
        if (strcmp(c->enclaves[i]->name, name) == 0)
            return c->enclaves[i];
    return NULL;
}

/* Removes entry I from the table and frees it. */
static void enclave_remove(controller *c, size_t i)
{
    pthread_mutex_lock(&c->lock);
    enclave *e = c->enclaves[i];
    c->enclaves[i] = c->enclaves[--c->n_enclaves];
    pthread_mutex_unlock(&c->lock);
    enclave_free(e);
}

/* NAME-<I+1> into BUF: a resource name (at most 63 bytes) and an index
 * always fit the callers' buffers. */
static void replica_name(const char *enclave_name, size_t i, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s-%zu", enclave_name, i + 1);
    assert(n > 0 && (size_t)n < size);
}

/* Sets lastEvent when its text changes (and its time with it), so a
 * condition that lasts does not rewrite the status every pass. */
static void set_event(enclave *e, const char *fmt, ...) _printf_(2, 3);
static void set_event(enclave *e, const char *fmt, ...)
{
    char text[EVENT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (strcmp(text, e->last_event) == 0)
        return;
    memcpy(e->last_event, text, sizeof(text));
    time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), e->last_event_at, sizeof(e->last_event_at));
}

/* Emits the audit event ACTION about sandbox REPLICA_ID of the Enclave
 * ENCLAVE_NAME with OUTCOME; DETAILS (borrowed, may be NULL) gets the
 * replica's name and PID (when > 0) added. */
static void emit(const char *enclave_name, const char *replica_id, const char *action, const char *outcome,
                 pid_t pid, json_t *details)
{
    json_t *d = details ? json_incref(details) : json_object();
    if (d) {
        json_object_set_new(d, "replica", json_string(replica_id));
        if (pid > 0)
            json_object_set_new(d, "pid", json_integer(pid));
    }
    audit_event_emit(&(audit_event){.action = action, .user = ACTOR, .kind = "Enclave", .name = enclave_name,
                                    .outcome = outcome, .details = d});
    json_decref(d);
}

/* Reads min and max of SPEC.replicas (validated: 1 <= min <= max <= 16;
 * clamped again all the same). */
static void read_bounds(const json_t *spec, unsigned *ret_min, unsigned *ret_max)
{
    const json_t *r = json_object_get(spec, "replicas");
    json_int_t min = json_integer_value(json_object_get(r, "min")), max = json_integer_value(json_object_get(r, "max"));
    min = min < 1 ? 1 : MIN(min, (json_int_t)RESOURCE_ENCLAVE_REPLICAS_MAX);
    max = max < min ? min : MIN(max, (json_int_t)RESOURCE_ENCLAVE_REPLICAS_MAX);
    *ret_min = (unsigned)min;
    *ret_max = (unsigned)max;
}

/* Reads SPEC.scaling (validated) into *RET, with the defaults of what it
 * leaves out. */
static void read_scaling(const json_t *spec, controller_scaling *ret)
{
    const json_t *s = json_object_get(spec, "scaling");
    json_int_t in_flight = json_integer_value(json_object_get(s, "inFlightPerReplica"));
    json_int_t memory = json_integer_value(json_object_get(s, "memoryPercent"));
    json_int_t up = json_integer_value(json_object_get(s, "upAfterSeconds"));
    json_int_t down = json_integer_value(json_object_get(s, "downAfterSeconds"));
    *ret = CONTROLLER_SCALING_DEFAULTS;
    if (in_flight > 0 && in_flight <= RESOURCE_SCALING_IN_FLIGHT_MAX)
        ret->in_flight_per_replica = (unsigned)in_flight;
    if (memory > 0 && memory <= 100)
        ret->memory_percent = (unsigned)memory;
    if (up > 0 && up <= RESOURCE_SCALING_AFTER_MAX)
        ret->up_after_ms = (uint64_t)up * 1000;
    if (down > 0 && down <= RESOURCE_SCALING_AFTER_MAX)
        ret->down_after_ms = (uint64_t)down * 1000;
}

static int64_t doc_rv(const json_t *doc)
{
    const char *rv = json_string_value(json_object_get(json_object_get(doc, "metadata"), "resourceVersion"));
    return rv ? strtoll(rv, NULL, 10) : 0;
}

/* Takes in DOC, a stored version of E's document (older ones than the last
 * seen are ignored). A change of anything in the spec but replicas bumps
 * the generation: running replicas are then replaced, and waiting ones are
 * tried at once, without their backoff (the change may be the fix). New
 * bounds re-clamp desired. DOC's status becomes what is known to be
 * stored. A document whose only news is its status (our own write, back
 * through the feed) changes nothing else. Returns 0 or -ENOMEM. */
static int enclave_take_doc(controller *c, enclave *e, json_t *doc)
{
    int64_t rv = doc_rv(doc);
    if (rv < e->rv)
        return 0;
    json_t *spec = json_object_get(doc, "spec");
    json_auto_t *launch = json_is_object(spec) ? json_deep_copy(spec) : json_object();
    if (!launch)
        return -ENOMEM;
    json_object_del(launch, "replicas");
    json_object_del(launch, "scaling"); /* like replicas: changing them replaces no replica */
    if (!e->launch_spec || !json_equal(launch, e->launch_spec)) {
        _cleanup_free_ char *text = json_dumps(launch, JSON_COMPACT | JSON_SORT_KEYS);
        uint8_t digest[32];
        char hex[65];
        if (!text || !EVP_Digest(text, strlen(text), digest, NULL, EVP_sha256(), NULL))
            return -ENOMEM;
        hex_encode(digest, sizeof(digest), hex);
        memcpy(e->spec_tag, hex, SPEC_TAG_LEN);
        e->spec_tag[SPEC_TAG_LEN] = 0;
        json_decref(e->launch_spec);
        e->launch_spec = TAKE_PTR(launch);
        e->generation++;
        for (size_t i = 0; i < RESOURCE_ENCLAVE_REPLICAS_MAX; i++)
            if (e->replicas[i].state != REPLICA_RUNNING) {
                e->replicas[i].retry_at = 0;
                e->replicas[i].backoff_ms = 0;
            }
    }
    pthread_mutex_lock(&c->lock); /* controller_set_desired() reads the bounds */
    read_bounds(spec, &e->min, &e->max);
    pthread_mutex_unlock(&c->lock);
    read_scaling(spec, &e->scaling);
    e->desired = controller_desired(e->desired, e->min, e->max);
    json_decref(e->written);
    e->written = json_incref(json_object_get(doc, "status"));
    json_decref(e->doc);
    e->doc = json_incref(doc);
    e->rv = rv;
    return 0;
}

/* Takes R's lastExit, lastError and limits from ITEM, its entry in a
 * stored status, so they outlive a restart of the api role until newer
 * ones replace them (the limits, at the runner's next listing). */
static void restore_replica(replica *r, const json_t *item)
{
    const json_t *lim = json_object_get(item, "limits");
    const char *mechanism = json_string_value(json_object_get(lim, "mechanism"));
    json_int_t mib = json_integer_value(json_object_get(lim, "memoryMiB"));
    json_int_t pids = json_integer_value(json_object_get(lim, "pids"));
    if (mechanism && (strcmp(mechanism, "cgroup2") == 0 || strcmp(mechanism, "rlimit") == 0)) {
        snprintf(r->limits.mechanism, sizeof(r->limits.mechanism), "%s", mechanism);
        r->limits.memory_mib = mib > 0 && mib <= UINT32_MAX ? (unsigned)mib : 0;
        r->limits.pids = pids > 0 && pids <= UINT32_MAX ? (unsigned)pids : 0;
    }
    const json_t *x = json_object_get(item, "lastExit");
    const char *how = json_string_value(json_object_get(x, "how"));
    const char *error = json_string_value(json_object_get(item, "lastError"));
    if (error)
        snprintf(r->last_error, sizeof(r->last_error), "%s", error);
    if (!how || (strcmp(how, "exited") != 0 && strcmp(how, "signal") != 0))
        return;
    json_int_t code = json_integer_value(json_object_get(x, strcmp(how, "signal") == 0 ? "signal" : "code"));
    snprintf(r->last_exit.how, sizeof(r->last_exit.how), "%s", how);
    r->last_exit.code = code >= 0 && code <= 255 ? (int)code : 0;
    snprintf(r->last_exit.at, sizeof(r->last_exit.at), "%s", json_string_value(json_object_get(x, "at")) ?: "");
    snprintf(r->last_exit.reason, sizeof(r->last_exit.reason), "%s",
             json_string_value(json_object_get(x, "reason")) ?: "");
}

/* A new entry for DOC. The counters, desired and lastEvent come from its
 * stored status, so a restart of the api role continues them; its replicas
 * are found again on the runner by their owner tag. NULL when out of
 * memory or when the document lacks a name or uid. */
static enclave *enclave_new(controller *c, json_t *doc)
{
    const json_t *meta = json_object_get(doc, "metadata");
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *uid = json_string_value(json_object_get(meta, "uid"));
    if (!name || !uid || strlen(name) > RESOURCE_NAME_MAX || strlen(uid) > UID_MAX)
        return NULL;
    enclave *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    snprintf(e->name, sizeof(e->name), "%s", name);
    snprintf(e->uid, sizeof(e->uid), "%s", uid);
    snprintf(e->owner, sizeof(e->owner), OWNER_PREFIX "%s/%s/", e->name, e->uid); /* 8 + 63 + 1 + 37 + 1 < 112 */
    const json_t *st = json_object_get(doc, "status");
    json_int_t desired = json_integer_value(json_object_get(st, "desired"));
    json_int_t restarts = json_integer_value(json_object_get(st, "restarts"));
    e->desired = desired > 0 && desired <= RESOURCE_ENCLAVE_REPLICAS_MAX ? (unsigned)desired : 0;
    e->restarts = restarts > 0 && restarts < INT_MAX ? (unsigned)restarts : 0;
    snprintf(e->last_event, sizeof(e->last_event), "%s", json_string_value(json_object_get(st, "lastEvent")) ?: "");
    snprintf(e->last_event_at, sizeof(e->last_event_at), "%s",
             json_string_value(json_object_get(st, "lastEventAt")) ?: "");
    snprintf(e->pcr0, sizeof(e->pcr0), "%s", json_string_value(json_object_get(st, "pcr0")) ?: "");
    size_t i;
    const json_t *item;
    json_array_foreach(json_object_get(st, "replicas"), i, item) {
        char want[RESOURCE_NAME_MAX + 8];
        const char *rname = json_string_value(json_object_get(item, "name"));
        const char *dash = rname ? strrchr(rname, '-') : NULL;
        long n = dash ? strtol(dash + 1, NULL, 10) : 0;
        if (n < 1 || n > RESOURCE_ENCLAVE_REPLICAS_MAX)
            continue;
        replica_name(e->name, (size_t)n - 1, want, sizeof(want));
        if (strcmp(want, rname) != 0)
            continue;
        replica *r = &e->replicas[n - 1];
        json_int_t rs = json_integer_value(json_object_get(item, "restarts"));
        json_int_t pid = json_integer_value(json_object_get(item, "pid"));
        r->restarts = rs > 0 && rs < INT_MAX ? (unsigned)rs : 0;
        r->stored_pid = pid > 0 && pid < INT_MAX ? (pid_t)pid : 0;
        snprintf(r->started_at, sizeof(r->started_at), "%s",
                 json_string_value(json_object_get(item, "startedAt")) ?: "");
        restore_replica(r, item);
    }
    if (enclave_take_doc(c, e, doc) < 0) {
        enclave_free(e);
        return NULL;
    }
    for (i = 0; i < RESOURCE_ENCLAVE_REPLICAS_MAX; i++)
        e->replicas[i].generation = e->generation;
    return e;
}

/* Adds or updates the entry of the stored document DOC. The same name with
 * another uid is a new Enclave: the old entry goes, and the old sandboxes
 * are swept as those of a deleted Enclave. */
static void upsert(controller *c, json_t *doc)
{
    const json_t *meta = json_object_get(doc, "metadata");
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *uid = json_string_value(json_object_get(meta, "uid"));
    if (!name || !uid)
        return;
    for (size_t i = 0; i < c->n_enclaves; i++) {
        enclave *e = c->enclaves[i];
        if (strcmp(e->name, name) != 0)
            continue;
        if (strcmp(e->uid, uid) != 0) {
            enclave_remove(c, i);
            break;
        }
        if (enclave_take_doc(c, e, doc) < 0)
            log_fields(LOG_LEVEL_WARN, "controller: out of memory; the Enclave's change waits for the next listing",
                       "enclave", name, NULL);
        return;
    }
    if (c->n_enclaves >= CONTROLLER_ENCLAVES_MAX) {
        if (!c->overflow_logged) {
            char cap[16];
            snprintf(cap, sizeof(cap), "%d", CONTROLLER_ENCLAVES_MAX);
            log_fields(LOG_LEVEL_WARN, "controller: too many Enclaves; those over the cap are not reconciled", "cap",
                       cap, "enclave", name, NULL);
        }
        c->overflow_logged = true;
        return;
    }
    enclave *e = enclave_new(c, doc);
    if (!e) {
        log_fields(LOG_LEVEL_WARN, "controller: cannot track an Enclave (out of memory, or no uid)", "enclave", name,
                   NULL);
        return;
    }
    pthread_mutex_lock(&c->lock);
    c->enclaves[c->n_enclaves++] = e;
    pthread_mutex_unlock(&c->lock);
}

/* ---- the change feed ----------------------------------------------------- */

/* Reads every Enclave anew: at start, and when the feed's history no longer
 * reaches back to our revision. Entries of Enclaves gone meanwhile are
 * dropped (their sandboxes are swept). Returns 0 or a negative errno. */
static int relist(controller *c)
{
    json_auto_t *items = NULL;
    int64_t rev = 0;
    uint64_t epoch = store_epoch(c->store); /* before the list: a reset meanwhile lists again */
    int r = store_list(c->store, "Enclave", &items, &rev);
    if (r < 0)
        return r;
    for (size_t i = 0; i < c->n_enclaves;) {
        bool found = false;
        size_t j;
        json_t *doc;
        json_array_foreach(items, j, doc) {
            const json_t *meta = json_object_get(doc, "metadata");
            const char *name = json_string_value(json_object_get(meta, "name"));
            const char *uid = json_string_value(json_object_get(meta, "uid"));
            if (name && uid && strcmp(name, c->enclaves[i]->name) == 0 && strcmp(uid, c->enclaves[i]->uid) == 0)
                found = true;
        }
        if (found)
            i++;
        else
            enclave_remove(c, i);
    }
    size_t j;
    json_t *doc;
    json_array_foreach(items, j, doc)
        upsert(c, doc);
    c->revision = rev;
    c->epoch = epoch;
    c->listed = true;
    return 0;
}

/* Applies the Enclave changes since the last pass (at most 64 batches per
 * pass; the rest waits for the next). */
static void follow(controller *c)
{
    if (!c->listed) {
        int r = relist(c);
        if (r < 0)
            log_fields(LOG_LEVEL_WARN, "controller: cannot list the Enclaves; retrying", "error", strerror(-r), NULL);
        return;
    }
    for (int round = 0; round < 64; round++) {
        json_auto_t *events = NULL;
        int r = store_changes_since_epoch(c->store, c->epoch, (const char *const[]){"Enclave"}, 1, c->revision,
                                          CHANGES_BATCH, &events);
        if (r == -ESTALE) { /* too old, or the store was reset (a new epoch): list again */
            c->listed = false;
            follow(c);
            return;
        }
        if (r < 0) {
            log_fields(LOG_LEVEL_WARN, "controller: cannot read the change feed; retrying", "error", strerror(-r),
                       NULL);
            return;
        }
        size_t i;
        json_t *ev;
        json_array_foreach(events, i, ev) {
            const char *type = json_string_value(json_object_get(ev, "type"));
            json_t *doc = json_object_get(ev, "object");
            const json_t *meta = json_object_get(doc, "metadata");
            const char *name = json_string_value(json_object_get(meta, "name"));
            const char *uid = json_string_value(json_object_get(meta, "uid"));
            if (type && strcmp(type, "DELETED") == 0) {
                for (size_t k = 0; name && uid && k < c->n_enclaves; k++)
                    if (strcmp(c->enclaves[k]->name, name) == 0 && strcmp(c->enclaves[k]->uid, uid) == 0) {
                        enclave_remove(c, k);
                        break;
                    }
            } else if (json_is_object(doc))
                upsert(c, doc);
            c->revision = MAX(c->revision, (int64_t)json_integer_value(json_object_get(ev, "revision")));
        }
        if (json_array_size(events) < CHANGES_BATCH)
            return;
    }
}

/* ---- reconciling ---------------------------------------------------------- */

/* The spec digest of OWNER, a sandbox's owner tag, when the tag is E's
 * (enclave/<name>/<uid>/<digest>); NULL when it is not. */
static const char *owned_by(const char *owner, const enclave *e)
{
    size_t n = strlen(e->owner);
    if (!owner || strncmp(owner, e->owner, n) != 0 || strlen(owner + n) != SPEC_TAG_LEN)
        return NULL;
    return owner + n;
}

/* Stops replica I of E (running as PID) because of REASON, audited. Returns
 * 0, or a negative errno with lastEvent saying why it could not. */
static int stop_replica(controller *c, enclave *e, size_t i, pid_t pid, const char *reason)
{
    char rname[RESOURCE_NAME_MAX + 8], why[RUNNER_WHY_MAX];
    replica_name(e->name, i, rname, sizeof(rname));
    int r = runner_client_delete(c->runner, rname, why, sizeof(why));
    json_auto_t *details = json_pack("{s:s}", "reason", reason);
    if (r < 0) {
        set_event(e, "cannot stop replica %s: %s", rname, why);
        if (details)
            json_object_set_new(details, "error", json_string(why));
        emit(e->name, rname, "enclave.replica.stopped", "failure", pid, details);
        return r;
    }
    replica *rp = &e->replicas[i];
    rp->state = REPLICA_STOPPED;
    rp->pid = 0;
    rp->ready = false;
    rp->drain_since = 0;
    set_event(e, "replica %s stopped: %s", rname, reason);
    emit(e->name, rname, "enclave.replica.stopped", "success", pid, details);
    log_fields(LOG_LEVEL_INFO, "enclave replica stopped", "replica", rname, "reason", reason, NULL);
    return 0;
}

/* Launches replica I of E. On success it runs (a restart when it had
 * crashed: counted); on failure its next attempt waits for its backoff and
 * lastEvent says why. Audited either way, a failure once per streak. */
static void launch_replica(controller *c, enclave *e, size_t i, uint64_t now)
{
    replica *r = &e->replicas[i];
    char rname[RESOURCE_NAME_MAX + 8], why[RUNNER_WHY_MAX];
    replica_name(e->name, i, rname, sizeof(rname));
    bool restart = r->state == REPLICA_CRASHED;
    const char *action = restart ? "enclave.replica.restarted" : "enclave.replica.launched";
    const json_t *spec = json_object_get(e->doc, "spec");
    const char *bundle = json_string_value(json_object_get(spec, "bundle"));
    char owner[RUNNER_OWNER_MAX];
    snprintf(owner, sizeof(owner), "%s%s", e->owner, e->spec_tag);
    const runner_launch launch = {.name = rname, .bundle = bundle ? bundle : "", .owner = owner,
                                  .limits = json_object_get(spec, "limits"),
                                  .secrets = json_object_get(spec, "secrets"),
                                  .egress = json_object_get(spec, "egress"),
                                  .plugins = json_object_get(spec, "plugins")};
    pid_t pid;
    char pcr0[RUNNER_PCR_HEX_LEN + 1];
    /* the launch is a trace of its own: the runner's span of it, and the
     * key release its agent asks for later, are its children */
    telemetry_span *span = telemetry_span_start(restart ? "enclave restart" : "enclave launch",
                                                TELEMETRY_SPAN_INTERNAL, NULL);
    telemetry_span_set_attr_str(span, "cloister.kind", "Enclave");
    telemetry_span_set_attr_str(span, "cloister.name", e->name);
    telemetry_span_set_attr_str(span, "cloister.replica", rname);
    telemetry_set_current(span);
    int launched = runner_client_launch(c->runner, &launch, &pid, pcr0, why, sizeof(why));
    if (launched == 0) {
        telemetry_span_set_attr_str(span, "cloister.pcr0", pcr0);
        telemetry_span_set_attr_int(span, "process.pid", pid);
    } else
        telemetry_span_set_status(span, TELEMETRY_STATUS_ERROR, why);
    telemetry_span_end(span); /* no longer current either */
    if (launched == 0) {
        r->state = REPLICA_RUNNING;
        r->ready = false; /* until its agent reports the workload answering */
        r->pid = pid;
        r->started_mono = now;
        time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), r->started_at, sizeof(r->started_at));
        r->generation = e->generation;
        r->failing = false;
        memcpy(e->pcr0, pcr0, RUNNER_PCR_HEX_LEN + 1);
        if (restart) {
            r->restarts++;
            e->restarts++;
        }
        json_auto_t *details = json_pack("{s:s, s:i}", "pcr0", pcr0, "restarts", (int)r->restarts);
        emit(e->name, rname, action, "success", pid, details);
        set_event(e, "replica %s %s (pid %d)", rname, restart ? "restarted" : "launched", (int)pid);
        char pid_s[16];
        snprintf(pid_s, sizeof(pid_s), "%d", (int)pid);
        log_fields(LOG_LEVEL_INFO, restart ? "enclave replica restarted" : "enclave replica launched", "replica",
                   rname, "pid", pid_s, NULL);
        return;
    }
    r->backoff_ms = controller_backoff_ms(r->backoff_ms, 0);
    r->retry_at = now + r->backoff_ms * NSEC_PER_MSEC;
    set_event(e, "cannot launch replica %s: %s; retrying in %" PRIu64 " ms", rname, why, r->backoff_ms);
    if (!r->failing) {
        json_auto_t *details = json_pack("{s:s}", "error", why);
        emit(e->name, rname, action, "failure", 0, details);
        log_fields(LOG_LEVEL_WARN, "cannot launch an enclave replica; retrying with backoff", "replica", rname,
                   "error", why, NULL);
    }
    r->failing = true;
}

/* Scales E on the proxy's requests in flight to it (none counted without
 * the proxy's metrics) and on its ready replicas' memory use, as
 * controller_autoscale() decides with E's spec.scaling; each step is
 * audited. */
static void autoscale(controller *c, enclave *e, uint64_t now)
{
    int64_t in_flight = c->load ? proxy_metrics_enclave_in_flight(c->load, e->name) : 0;
    unsigned ready = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < e->desired; i++)
        if (e->replicas[i].state == REPLICA_RUNNING && e->replicas[i].ready) {
            ready++;
            used += e->replicas[i].memory_bytes;
        }
    json_int_t mib = json_integer_value(json_object_get(json_object_get(e->launch_spec, "limits"), "memoryMiB"));
    int memory = controller_memory_percent(used, mib > 0 ? (uint64_t)mib << 20 : 0, ready);
    unsigned from = e->desired,
             to = controller_autoscale(&e->load, &e->scaling, from, e->min, e->max, ready, in_flight, memory, now);
    if (to == from)
        return;
    e->desired = to;
    char memory_text[48] = "";
    if (memory >= 0)
        snprintf(memory_text, sizeof(memory_text), ", memory at %d%% of the limit", memory);
    set_event(e, "scaled %s from %u to %u replicas (%lld requests in flight%s)", to > from ? "up" : "down", from, to,
              (long long)in_flight, memory_text);
    log_fields(LOG_LEVEL_INFO, "enclave scaled", "enclave", e->name, "event", e->last_event, NULL);
    json_t *details = json_pack("{s:i, s:i, s:I}", "from", (int)from, "to", (int)to, "inFlight", (json_int_t)in_flight);
    if (details && memory >= 0)
        json_object_set_new(details, "memoryPercent", json_integer(memory));
    audit_event_emit(&(audit_event){.action = "enclave.scaled", .user = "system:controller", .kind = "Enclave",
                                    .name = e->name, .outcome = "success", .details = details});
    json_decref(details);
}

/* Brings E's replicas in line with desired and with what the runner lists
 * in V, as controller_plan_replica() decides for each: observe (adopt,
 * notice exits), then act (stop above desired, launch or restart what is
 * due), then replace the replica controller_pick_replacement() names. */
static void reconcile(controller *c, enclave *e, runner_view *v, uint64_t now)
{
    pthread_mutex_lock(&c->lock);
    if (e->requested) {
        e->desired = e->requested;
        e->requested = 0;
    }
    pthread_mutex_unlock(&c->lock);
    e->desired = controller_desired(e->desired, e->min, e->max);
    if (strlen(e->name) > ENCLAVE_NAME_MAX) {
        set_event(e, "the name is too long: replicas are named <name>-<n>, so an Enclave's name has at most %d "
                     "characters",
                  ENCLAVE_NAME_MAX);
        return;
    }
    /* an update starts a replica above desired (the surge) before it stops an old one */
    bool surge = controller_surge_wanted(e->replicas, e->desired, RESOURCE_ENCLAVE_REPLICAS_MAX, e->generation);
    for (size_t i = 0; i < RESOURCE_ENCLAVE_REPLICAS_MAX; i++) {
        replica *r = &e->replicas[i];
        char rname[RESOURCE_NAME_MAX + 8];
        replica_name(e->name, i, rname, sizeof(rname));
        bool wanted = i < e->desired || (surge && i == e->desired);
        runner_sandbox *sb = runner_view_find(v, rname);
        const char *tag = sb ? owned_by(sb->owner, e) : NULL;
        const runner_exit *gone = !sb && r->state == REPLICA_RUNNING ? runner_view_exit(v, rname, r->pid) : NULL;
        const char *how = gone ? gone->how : NULL;
        const replica_observation seen = {.seen = !sb ? SEEN_NONE : tag ? SEEN_OURS : SEEN_FOREIGN,
                                          .pid = sb ? sb->pid : 0, .ready = sb && sb->ready, .exited = gone != NULL};
        const replica_plan plan = controller_plan_replica(r, wanted, &seen, now);
        pid_t pid = r->pid;
        if (plan.ready && !r->ready && plan.change == CHANGE_NONE)
            set_event(e, "replica %s is ready (its workload answers)", rname);
        r->ready = plan.ready;
        if (sb && sb->error && sb->error[0])
            snprintf(r->last_error, sizeof(r->last_error), "%s", sb->error);
        r->memory_bytes = sb && tag ? sb->memory_bytes : 0;
        if (sb && tag && sb->mechanism) {
            snprintf(r->limits.mechanism, sizeof(r->limits.mechanism), "%s", sb->mechanism);
            r->limits.memory_mib = sb->memory_mib;
            r->limits.pids = sb->pids;
        }
        switch (plan.change) {
        case CHANGE_FOREIGN:
            if (wanted)
                set_event(e, "replica %s cannot start: a sandbox of that name that the controller did not launch "
                             "runs on the runner",
                          rname);
            r->present = wanted;
            r->state = REPLICA_STARTING;
            r->pid = 0;
            continue;
        case CHANGE_ADOPTED: /* found again after a restart */
            if (sb->pid != r->stored_pid || !r->started_at[0])
                time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), r->started_at, sizeof(r->started_at));
            r->state = REPLICA_RUNNING;
            r->pid = sb->pid;
            r->started_mono = now;
            r->failing = false;
            /* launched with another spec (changed while we were away): replaced in turn */
            r->generation = strcmp(tag, e->spec_tag) == 0 ? e->generation : e->generation - 1;
            break;
        case CHANGE_CRASHED: {
            controller_note_exit(r, now);
            snprintf(r->last_exit.how, sizeof(r->last_exit.how), "%s", gone->signal ? "signal" : "exited");
            r->last_exit.code = gone->signal ? gone->signal : gone->code;
            snprintf(r->last_exit.at, sizeof(r->last_exit.at), "%s", gone->at);
            snprintf(r->last_exit.reason, sizeof(r->last_exit.reason), "%s", gone->reason);
            if (gone->error[0])
                snprintf(r->last_error, sizeof(r->last_error), "%s", gone->error);
            r->pid = 0;
            r->backoff_ms = plan.backoff_ms;
            r->retry_at = now + plan.backoff_ms * NSEC_PER_MSEC;
            r->state = REPLICA_CRASHED;
            set_event(e, "replica %s exited (%s%s%s); restarting in %" PRIu64 " ms", rname, how,
                      gone->reason[0] ? ", " : "", gone->reason, r->backoff_ms);
            json_auto_t *details = json_pack("{s:s, s:I, s:I}", "how", how, "ranMs", (json_int_t)plan.ran_ms,
                                             "restartInMs", (json_int_t)r->backoff_ms);
            if (details && gone->reason[0])
                json_object_set_new(details, "reason", json_string(gone->reason));
            emit(e->name, rname, "enclave.replica.crashed", "success", pid, details);
            log_fields(LOG_LEVEL_WARN, "enclave replica exited; restarting with backoff", "replica", rname, "how", how,
                       NULL);
            break;
        }
        case CHANGE_VANISHED: {
            /* deleted behind our back, or the runner restarted: not a crash of the workload */
            r->pid = 0;
            r->state = REPLICA_STARTING;
            r->retry_at = 0;
            set_event(e, "replica %s is no longer on the runner (stopped outside the controller, or the runner "
                         "restarted); launching it again",
                      rname);
            json_auto_t *details = json_pack("{s:s}", "reason", "no longer on the runner");
            emit(e->name, rname, "enclave.replica.stopped", "success", pid, details);
            break;
        }
        case CHANGE_NONE:
            break;
        }
        if (sb && sb->pcr0 && !e->pcr0[0])
            memcpy(e->pcr0, sb->pcr0, RUNNER_PCR_HEX_LEN + 1);
        switch (plan.act) {
        case ACT_STOP:
            if (!controller_drained(r, now)) {
                /* shown stopping first: the proxy stops sending it requests */
                if (!r->drain_since) {
                    r->drain_since = now;
                    set_event(e, "replica %s drains before it stops", rname);
                }
                r->present = true;
                continue;
            }
            r->drain_since = 0;
            r->present = stop_replica(c, e, i, sb->pid,
                                      r->surge ? "the update is done (the surge replica)" : "above the desired replicas")
                             == 0 ||
                         r->present;
            r->surge = false;
            continue;
        case ACT_FORGET:
            *r = (replica){0}; /* gone: a later scale-up starts it afresh */
            continue;
        case ACT_NONE:
        case ACT_WAIT:
        case ACT_LAUNCH:
            break;
        }
        r->present = true;
        r->surge = i >= e->desired;
        if (r->state == REPLICA_STOPPED)
            r->state = REPLICA_STARTING;
        if (plan.act == ACT_LAUNCH)
            launch_replica(c, e, i, now);
    }
    /* a changed spec: one replica at a time, the others and the surge ready */
    int outdated =
        controller_pick_replacement(e->replicas, e->desired, RESOURCE_ENCLAVE_REPLICAS_MAX, e->generation, now);
    for (size_t i = 0; i < e->desired; i++)
        if ((int)i != outdated)
            e->replicas[i].drain_since = 0; /* a replacement called off (the surge failed) */
    if (outdated < 0)
        return;
    replica *old = &e->replicas[outdated];
    char rname[RESOURCE_NAME_MAX + 8];
    replica_name(e->name, (size_t)outdated, rname, sizeof(rname));
    if (!old->drain_since) { /* shown stopping first: the proxy stops sending it requests */
        old->drain_since = now;
        set_event(e, "replica %s drains before its replacement on the new spec", rname);
    } else if (controller_drained(old, now) && stop_replica(c, e, (size_t)outdated, old->pid, "the spec changed") == 0) {
        old->drain_since = 0;
        old->state = REPLICA_STARTING;
        old->retry_at = 0;
        launch_replica(c, e, (size_t)outdated, now);
    }
}

/* Deletes the sandboxes tagged by the controller that no live Enclave owns
 * (deleted, or recreated under a new uid) or that are not one of its
 * replica names, and hides them from V. */
static void sweep(controller *c, runner_view *v)
{
    for (size_t i = 0; i < v->n_items; i++) {
        runner_sandbox *sb = &v->items[i];
        if (!sb->owner || strncmp(sb->owner, OWNER_PREFIX, STRLEN(OWNER_PREFIX)) != 0)
            continue;
        const char *reason = "its Enclave was deleted";
        for (size_t k = 0; k < c->n_enclaves; k++) {
            const enclave *e = c->enclaves[k];
            if (!owned_by(sb->owner, e))
                continue;
            size_t n = strlen(e->name);
            char *end = NULL;
            long idx = strncmp(sb->name, e->name, n) == 0 && sb->name[n] == '-' ? strtol(sb->name + n + 1, &end, 10) : 0;
            if (idx >= 1 && idx <= RESOURCE_ENCLAVE_REPLICAS_MAX && end && !*end)
                reason = NULL;
            else
                reason = "not a replica name of its Enclave";
            break;
        }
        if (!reason)
            continue;
        /* the owner tag names the Enclave: enclave/<name>/<uid> */
        char enclave_name[RESOURCE_NAME_MAX + 1] = "";
        const char *start = sb->owner + STRLEN(OWNER_PREFIX), *slash = strchr(start, '/');
        snprintf(enclave_name, sizeof(enclave_name), "%.*s", (int)(slash ? slash - start : 0), start);
        char why[RUNNER_WHY_MAX];
        int r = runner_client_delete(c->runner, sb->name, why, sizeof(why));
        json_auto_t *details = json_pack("{s:s}", "reason", reason);
        if (r < 0 && details)
            json_object_set_new(details, "error", json_string(why));
        emit(enclave_name, sb->name, "enclave.replica.stopped", r < 0 ? "failure" : "success", sb->pid, details);
        log_fields(r < 0 ? LOG_LEVEL_WARN : LOG_LEVEL_INFO,
                   r < 0 ? "cannot stop an enclave replica" : "enclave replica stopped", "replica", sb->name, "reason",
                   reason, r < 0 ? "error" : NULL, why, NULL);
        sb->name = NULL; /* hidden from the Enclaves reconciled next */
    }
}

/* ---- status ---------------------------------------------------------------- */

/* E's status document (a new reference), or NULL when out of memory. */
static json_t *status_build(const enclave *e, uint64_t now)
{
    json_auto_t *replicas = json_array();
    if (!replicas)
        return NULL;
    unsigned ready = 0;
    for (size_t i = 0; i < RESOURCE_ENCLAVE_REPLICAS_MAX; i++) {
        const replica *r = &e->replicas[i];
        if (!r->present)
            continue;
        char rname[RESOURCE_NAME_MAX + 8];
        replica_name(e->name, i, rname, sizeof(rname));
        json_t *item = json_pack("{s:s, s:i, s:s, s:i}", "name", rname, "pid", (int)r->pid, "state",
                                 state_name(r, now), "restarts", (int)r->restarts);
        if (item && r->started_at[0])
            json_object_set_new(item, "startedAt", json_string(r->started_at));
        if (item && r->last_exit.how[0]) {
            json_t *x = json_pack("{s:s, s:i, s:s}", "how", r->last_exit.how,
                                  strcmp(r->last_exit.how, "signal") == 0 ? "signal" : "code", r->last_exit.code,
                                  "at", r->last_exit.at);
            if (x && r->last_exit.reason[0])
                json_object_set_new(x, "reason", json_string(r->last_exit.reason));
            json_object_set_new(item, "lastExit", x);
        }
        if (item && r->limits.mechanism[0]) {
            json_t *lim = json_pack("{s:s}", "mechanism", r->limits.mechanism);
            if (lim && r->limits.memory_mib)
                json_object_set_new(lim, "memoryMiB", json_integer(r->limits.memory_mib));
            if (lim && r->limits.pids)
                json_object_set_new(lim, "pids", json_integer(r->limits.pids));
            json_object_set_new(item, "limits", lim);
        }
        if (item && r->last_error[0])
            json_object_set_new(item, "lastError", json_string(r->last_error));
        if (json_array_append_new(replicas, item) < 0)
            return NULL;
        ready += r->state == REPLICA_RUNNING && r->ready && !r->drain_since;
    }
    json_t *st = json_pack("{s:O, s:i, s:i, s:i}", "replicas", replicas, "ready", (int)ready, "desired",
                           (int)e->desired, "restarts", (int)e->restarts);
    if (st && e->pcr0[0])
        json_object_set_new(st, "pcr0", json_string(e->pcr0));
    if (st && e->last_event[0]) {
        json_object_set_new(st, "lastEvent", json_string(e->last_event));
        json_object_set_new(st, "lastEventAt", json_string(e->last_event_at));
    }
    return st;
}

/* The database refused WHAT, a write carrying this controller's fencing
 * token: another controller holds the lease now. Logs it and stands by. */
static void deposed(controller *c, const char *what)
{
    char token[24];
    snprintf(token, sizeof(token), "%lld", (long long)c->lease_token);
    log_fields(LOG_LEVEL_WARN, "controller: another controller took the lease; this one stands by", "refused", what,
               "fencingToken", token, NULL);
    c->lease_token = 0;
}

/* Writes E's status when it differs from the stored one: a REPLACE of the
 * document last seen, conditional on its resourceVersion. A concurrent
 * change (-ESTALE) or deletion (-ENOENT) is left to the feed; the status is
 * written again on the next pass. */
static void status_write(controller *c, enclave *e)
{
    json_auto_t *st = status_build(e, time_mono_ns());
    if (!st || !e->doc || (e->written && json_equal(st, e->written)))
        return;
    store_op op = {.type = STORE_REPLACE, .kind = "Enclave", .name = e->name, .doc = e->doc, .status = st,
                   .expected_rv = e->rv};
    store_txn txn = {.ops = &op, .n_ops = 1, .fence_lease = CONTROLLER_LEASE, .fence_token = c->lease_token};
    int r = store_write(c->store, &txn);
    if (r == 0 && op.result)
        enclave_take_doc(c, e, op.result);
    store_txn_clear(&txn);
    if (r == -ENOLCK) {
        deposed(c, "an Enclave's status");
        return;
    }
    if (r < 0 && r != -ESTALE && r != -ENOENT)
        log_fields(LOG_LEVEL_WARN, "controller: cannot write an Enclave's status; retrying", "enclave", e->name,
                   "error", strerror(-r), NULL);
}

/* Publishes what GET /metrics shows of every Enclave (controller_metrics_render()). */
static void stats_publish(controller *c)
{
    pthread_mutex_lock(&c->lock);
    c->n_stats = c->n_enclaves;
    for (size_t i = 0; i < c->n_enclaves; i++) {
        const enclave *e = c->enclaves[i];
        enclave_stats *st = &c->stats[i];
        *st = (enclave_stats){.desired = e->desired, .restarts = e->restarts};
        snprintf(st->name, sizeof(st->name), "%s", e->name);
        for (size_t k = 0; k < RESOURCE_ENCLAVE_REPLICAS_MAX; k++) {
            const replica *r = &e->replicas[k];
            if (!r->present)
                continue;
            st->ready += r->state == REPLICA_RUNNING && r->ready && !r->drain_since;
            st->crash_looping += controller_crash_looping(r, time_mono_ns());
        }
        json_int_t mib = json_integer_value(json_object_get(json_object_get(e->launch_spec, "limits"), "memoryMiB"));
        st->memory_limit_bytes = mib > 0 ? (uint64_t)mib << 20 : 0;
    }
    pthread_mutex_unlock(&c->lock);
}

int controller_metrics_render(controller *c, strbuf *out)
{
    static const struct {
        const char *name, *type, *help;
    } families[] = {
        {"cloister_enclave_replicas_desired", "gauge", "Replicas the controller keeps of an Enclave."},
        {"cloister_enclave_replicas_ready", "gauge", "Replicas of an Enclave ready: their workload answers on its port."},
        {"cloister_enclave_restarts_total", "counter",
         "Restarts of an Enclave's replicas after their workload exited."},
        {"cloister_enclave_replicas_crash_looping", "gauge",
         "Replicas crash looping: not ready, and exited 3 times within a minute."},
        {"cloister_enclave_memory_limit_bytes", "gauge", "The memory limit of each replica (spec.limits.memoryMiB)."},
    };
    int r = 0;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    for (size_t f = 0; f < ELEMENTSOF(families) && r == 0; f++) {
        r = strbuf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help, families[f].name,
                          families[f].type);
        for (size_t i = 0; i < c->n_stats && r == 0; i++) {
            const enclave_stats *st = &c->stats[i];
            const uint64_t values[ELEMENTSOF(families)] = {st->desired, st->ready, st->restarts, st->crash_looping,
                                                           st->memory_limit_bytes};
            if (f == 4 && !values[f]) /* no memory limit */
                continue;
            r = strbuf_printf(out, "%s{enclave=\"%s\"} %llu\n", families[f].name, st->name,
                              (unsigned long long)values[f]);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* ---- the thread ------------------------------------------------------------ */

/* Holds the controller lease: renews it a third of its TTL after the last
 * renewal, or tries to take it. Returns whether this controller leads. */
static bool lead(controller *c, uint64_t now)
{
    if (c->lease_token && now - c->lease_renewed < CONTROLLER_LEASE_TTL_MS / 3 * NSEC_PER_MSEC)
        return true;
    int r;
    if (c->lease_token) {
        r = store_lease_renew(c->store, CONTROLLER_LEASE, c->holder, c->lease_token, CONTROLLER_LEASE_TTL_MS);
        if (r == -ESTALE) {
            deposed(c, "the lease's renewal");
            return false;
        }
    } else {
        r = store_lease_acquire(c->store, CONTROLLER_LEASE, c->holder, CONTROLLER_LEASE_TTL_MS, &c->lease_token);
        if (r == 0)
            log_fields(LOG_LEVEL_INFO, "controller: holding the lease; this one reconciles", "holder", c->holder,
                       NULL);
    }
    if (r == 0)
        c->lease_renewed = now;
    else if (r != -EBUSY)
        log_fields(LOG_LEVEL_WARN, "controller: cannot renew or take the lease; retrying", "error", strerror(-r),
                   NULL);
    /* a renewal that failed for another reason keeps the lease until its TTL ends */
    return c->lease_token && now - c->lease_renewed < CONTROLLER_LEASE_TTL_MS * NSEC_PER_MSEC;
}

/* One pass over every Enclave. Returns the time_mono_ns() of the next:
 * the interval from now, or sooner when a restart is due. */
static uint64_t pass(controller *c)
{
    uint64_t now = time_mono_ns(), next = now + (uint64_t)c->interval_ms * NSEC_PER_MSEC;
    if (!lead(c, now))
        return MIN(next, now + CONTROLLER_LEASE_TTL_MS / 3 * NSEC_PER_MSEC);
    follow(c);
    if (c->runner_ready && !atomic_load(c->runner_ready)) {
        /* starting, restarting or stopping: its list says nothing of crashes */
        if (!c->runner_waiting_since)
            c->runner_waiting_since = now;
        if (now - c->runner_waiting_since >= RUNNER_WAIT_REPORT_NS)
            for (size_t i = 0; i < c->n_enclaves; i++) {
                set_event(c->enclaves[i], "waiting for the runner role to be ready; the replicas are left as they are");
                status_write(c, c->enclaves[i]);
            }
        return next;
    }
    c->runner_waiting_since = 0;
    runner_view v = {0};
    char why[RUNNER_WHY_MAX];
    int r = runner_client_list(c->runner, &v, why, sizeof(why));
    if (r < 0) {
        if (c->n_enclaves && !c->runner_down)
            log_fields(LOG_LEVEL_WARN, "controller: cannot reach the runner; replicas are left as they are", "error",
                       why, NULL);
        c->runner_down = c->n_enclaves > 0;
        for (size_t i = 0; i < c->n_enclaves; i++) {
            set_event(c->enclaves[i], "cannot reach the runner: %s; the replicas are left as they are", why);
            status_write(c, c->enclaves[i]);
        }
        return next;
    }
    if (c->runner_down)
        log_fields(LOG_LEVEL_INFO, "controller: the runner answers again", NULL);
    c->runner_down = false;
    sweep(c, &v);
    for (size_t i = 0; i < c->n_enclaves; i++) {
        enclave *e = c->enclaves[i];
        now = time_mono_ns();
        autoscale(c, e, now);
        reconcile(c, e, &v, now);
        status_write(c, e);
        next = controller_next_retry(e->replicas, e->desired, RESOURCE_ENCLAVE_REPLICAS_MAX, now, next);
    }
    runner_view_free(&v);
    stats_publish(c);
    return MAX(next, time_mono_ns() + 20 * NSEC_PER_MSEC);
}

/* The controller thread: a pass, then a wait until the next one is due,
 * controller_set_desired() wakes it, or controller_stop() ends it. */
static void *controller_main(void *arg)
{
    controller *c = arg;
    for (;;) {
        uint64_t next = pass(c);
        struct timespec ts = {.tv_sec = (time_t)(next / NSEC_PER_SEC), .tv_nsec = (long)(next % NSEC_PER_SEC)};
        pthread_mutex_lock(&c->lock);
        while (!c->stop && !c->wake)
            if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) == ETIMEDOUT)
                break;
        c->wake = false;
        bool stop = c->stop;
        pthread_mutex_unlock(&c->lock);
        if (stop)
            return NULL;
    }
}

int controller_start(const controller_config *cfg, controller **ret)
{
    controller *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->store = cfg->store;
    c->interval_ms = cfg->interval_ms ? cfg->interval_ms : CONTROLLER_INTERVAL_MS;
    c->runner_ready = cfg->runner_ready;
    c->load = cfg->load;
    /* the lease's holder: this host and instance, the same across a restart
     * (which then leads at once instead of waiting out its own lease) */
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(c->holder, sizeof(c->holder), "%s/%s", host, cfg->instance ? cfg->instance : "");
    int r = runner_client_new(cfg->runner_socket, &c->runner);
    if (r < 0) {
        free(c);
        return r;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* time_mono_ns()'s clock */
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, &attr);
    pthread_condattr_destroy(&attr);
    r = pthread_create(&c->thread, NULL, controller_main, c);
    if (r != 0) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        runner_client_free(c->runner);
        free(c);
        return -r;
    }
    *ret = c;
    return 0;
}

void controller_stop(controller *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stop = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    if (c->lease_token) /* the next controller need not wait out the TTL */
        store_lease_release(c->store, CONTROLLER_LEASE, c->holder, c->lease_token);
    for (size_t i = 0; i < c->n_enclaves; i++)
        enclave_free(c->enclaves[i]);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    runner_client_free(c->runner);
    free(c);
}

int controller_set_desired(controller *c, const char *name, unsigned desired)
{
    pthread_mutex_lock(&c->lock);
    enclave *e = enclave_find(c, name);
    int r = -ENOENT;
    if (e) {
        r = (int)controller_desired(MIN(desired, (unsigned)RESOURCE_ENCLAVE_REPLICAS_MAX), e->min, e->max);
        e->requested = (unsigned)r;
        c->wake = true;
        pthread_cond_signal(&c->cond);
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}
