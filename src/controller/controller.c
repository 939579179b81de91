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

#include <openssl/evp.h>

#include "audit/client.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "proxy/metrics.h"
#include "resource/resource.h"

#define OWNER_PREFIX "enclave/"
#define OWNER_MAX 128                   /* the runner's cap, with the NUL */
#define SPEC_TAG_LEN 16                 /* hex digits of the launch spec's digest in the owner tag */
#define UID_MAX 37                      /* the store's uids have 36; with it the owner tag fits OWNER_MAX */
#define ACTOR "system:controller"       /* not a valid User name: no one can pose as it */
#define LIST_TIMEOUT_MS 5000
#define LAUNCH_TIMEOUT_MS 30000         /* measuring a large bundle takes a while */
#define DELETE_TIMEOUT_MS 5000
#define RUNNER_ITEMS_MAX 1024           /* a listing with more sandboxes or exits is refused */
#define RUNNER_MESSAGE_MAX 300          /* of a runner error quoted in lastEvent */
#define EVENT_MAX 512
#define CHANGES_BATCH 256
#define PCR_HEX_LEN 96
#define RUNNER_WAIT_REPORT_NS (10 * NSEC_PER_SEC) /* a runner not ready for longer shows in the statuses */
/* `<enclave>-16` must be a name the runner takes (at most 63 bytes) */
#define ENCLAVE_NAME_MAX (RESOURCE_NAME_MAX - 3)

typedef enum replica_state {
    REPLICA_STARTING, /* wanted, not launched yet (or its launch failed) */
    REPLICA_RUNNING,  /* the runner runs it */
    REPLICA_CRASHED,  /* its workload exited; restarted after its backoff */
    REPLICA_STOPPED,  /* deleted by the controller this pass (above desired) */
} replica_state;

static const char *const state_names[] = {"starting", "running", "crashed", "stopped"};

typedef struct replica {
    bool present;          /* listed in the status */
    replica_state state;
    pid_t pid;             /* the runner's pid while running, else 0 */
    pid_t stored_pid;      /* the pid the stored status named, to keep startedAt when adopting it */
    unsigned restarts;
    char started_at[40];   /* RFC 3339 of its last launch; "" before the first */
    uint64_t started_mono; /* time_mono_ns() of its last launch (or adoption) */
    uint64_t retry_at;     /* time_mono_ns() before which it is not launched */
    uint64_t backoff_ms;   /* the delay last used; 0 before any */
    bool failing;          /* its last launch failed: audited once per streak */
    uint64_t generation;   /* the launch spec it runs */
} replica;

typedef struct enclave {
    char name[RESOURCE_NAME_MAX + 1];
    char uid[UID_MAX + 1]; /* metadata.uid: a recreated Enclave is a new one */
    char owner[OWNER_MAX - SPEC_TAG_LEN]; /* "enclave/<name>/<uid>/": its sandboxes' owner tags start so */
    char spec_tag[SPEC_TAG_LEN + 1]; /* and end with this digest of launch_spec */
    json_t *doc;           /* the stored document last seen */
    int64_t rv;
    json_t *launch_spec;   /* the spec without replicas: what a replica is launched with */
    uint64_t generation;   /* bumped when launch_spec changes */
    unsigned min, max, desired;
    unsigned requested;    /* controller_set_desired(), 0 when none; under the lock */
    uint64_t busy_since, idle_since; /* time_mono_ns() of the load's state, 0 when not in it */
    unsigned restarts;
    char pcr0[PCR_HEX_LEN + 1];
    char last_event[EVENT_MAX];
    char last_event_at[40];
    json_t *written;       /* the status as stored */
    replica replicas[RESOURCE_ENCLAVE_REPLICAS_MAX];
} enclave;

struct controller {
    store *store;
    char *runner_socket;
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
    bool listed;
    bool overflow_logged;
    bool runner_down;      /* an outage is logged once */
    audit_client *runner;
};

/* A sandbox of the runner's listing; strings borrowed from the listing. */
typedef struct runner_sandbox {
    const char *name, *owner, *pcr0;
    pid_t pid;
} runner_sandbox;

typedef struct runner_exit {
    const char *name, *how;
    pid_t pid;
} runner_exit;

/* The runner's GET /v1/sandboxes, checked. */
typedef struct runner_view {
    json_t *json; /* owns the strings */
    runner_sandbox *items;
    size_t n_items;
    runner_exit *exits;
    size_t n_exits;
} runner_view;

/* ---- pure logic ---------------------------------------------------------- */

unsigned controller_desired(unsigned current, unsigned min, unsigned max)
{
    unsigned d = current < max ? current : max;
    return d > min ? d : min;
}

uint64_t controller_backoff_ms(uint64_t previous_ms, uint64_t ran_ms)
{
    if (previous_ms == 0 || ran_ms >= CONTROLLER_BACKOFF_RESET_MS)
        return CONTROLLER_BACKOFF_MIN_MS;
    uint64_t base = previous_ms < CONTROLLER_BACKOFF_MIN_MS ? CONTROLLER_BACKOFF_MIN_MS : previous_ms;
    return MIN(base * 2, (uint64_t)CONTROLLER_BACKOFF_MAX_MS);
}

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

static void replica_name(const char *enclave_name, size_t i, char *buf, size_t size)
{
    snprintf(buf, size, "%s-%zu", enclave_name, i + 1);
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
    e->desired = controller_desired(e->desired, e->min, e->max);
    json_decref(e->written);
    e->written = json_incref(json_object_get(doc, "status"));
    json_decref(e->doc);
    e->doc = json_incref(doc);
    e->rv = rv;
    return 0;
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
        int r = store_changes_since(c->store, "Enclave", c->revision, CHANGES_BATCH, &events);
        if (r == -ESTALE) {
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

/* ---- the runner ----------------------------------------------------------- */

/* Calls the runner: METHOD PATH with BODY (may be NULL), waiting at most
 * TIMEOUT_MS. Returns the HTTP status with the JSON object it answered in
 * *RET_ANSWER (a new reference), or a negative errno: -ECONNREFUSED or -EIO
 * when it cannot be reached, -EBADMSG when the answer is not a JSON object. */
static int runner_call(controller *c, const char *method, const char *path, const json_t *body, long timeout_ms,
                       json_t **ret_answer)
{
    _cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text)
        return -ENOMEM;
    long status = 0;
    _cleanup_free_ char *out = NULL;
    size_t len = 0;
    int r = audit_client_request(c->runner, method, path, text, text ? strlen(text) : 0, timeout_ms, &status, &out,
                                 &len);
    if (r < 0)
        return r;
    json_t *answer = json_loadb(out, len, 0, NULL);
    if (!json_is_object(answer) || status < 100 || status > 599) {
        json_decref(answer);
        return -EBADMSG;
    }
    *ret_answer = answer;
    return (int)status;
}

/* Writes the reason of a failed runner call (R from runner_call(), ANSWER
 * its answer or NULL) into BUF. */
static void runner_reason(int r, const json_t *answer, char *buf, size_t size)
{
    const char *msg = json_string_value(json_object_get(json_object_get(answer, "error"), "message"));
    if (r >= 0 && msg)
        snprintf(buf, size, "%.*s", RUNNER_MESSAGE_MAX, msg);
    else if (r >= 0)
        snprintf(buf, size, "the runner answered %d", r);
    else if (r == -EBADMSG)
        snprintf(buf, size, "the runner's answer is not JSON");
    else
        snprintf(buf, size, "%s", strerror(-r));
}

static void view_free(runner_view *v)
{
    json_decref(v->json);
    free(v->items);
    free(v->exits);
    *v = (runner_view){0};
}

/* A pid of the runner's listing: an integer in 1..INT_MAX, else 0. */
static pid_t view_pid(const json_t *v)
{
    json_int_t pid = json_is_integer(v) ? json_integer_value(v) : 0;
    return pid > 0 && pid <= INT_MAX ? (pid_t)pid : 0;
}

/* Checks the runner's GET /v1/sandboxes answer JSON (taken over) into V:
 * every sandbox has a valid name and pid, owners and PCR0 are strings of
 * sane length, and there are at most RUNNER_ITEMS_MAX of each. A runner
 * that breaks this is refused: -EBADMSG. */
static int view_parse(json_t *json, runner_view *v)
{
    *v = (runner_view){.json = json};
    const json_t *items = json_object_get(json, "items"), *exited = json_object_get(json, "exited");
    if (!json_is_array(items) || json_array_size(items) > RUNNER_ITEMS_MAX || (exited && !json_is_array(exited)) ||
        json_array_size(exited) > RUNNER_ITEMS_MAX)
        return -EBADMSG;
    v->items = calloc(json_array_size(items) + 1, sizeof(*v->items));
    v->exits = calloc(json_array_size(exited) + 1, sizeof(*v->exits));
    if (!v->items || !v->exits)
        return -ENOMEM;
    size_t i;
    const json_t *item;
    json_array_foreach(items, i, item) {
        runner_sandbox *sb = &v->items[v->n_items++];
        sb->name = json_string_value(json_object_get(item, "name"));
        sb->owner = json_string_value(json_object_get(item, "owner"));
        sb->pcr0 = json_string_value(json_object_get(json_object_get(item, "pcrs"), "0"));
        sb->pid = view_pid(json_object_get(item, "pid"));
        if (!sb->name || !resource_name_valid(sb->name) || !sb->pid || (sb->owner && strlen(sb->owner) >= OWNER_MAX) ||
            (sb->pcr0 && strlen(sb->pcr0) != PCR_HEX_LEN))
            return -EBADMSG;
    }
    json_array_foreach(exited, i, item) {
        runner_exit *x = &v->exits[v->n_exits++];
        x->name = json_string_value(json_object_get(item, "name"));
        x->how = json_string_value(json_object_get(item, "how"));
        x->pid = view_pid(json_object_get(item, "pid"));
        if (!x->name || !x->how || strlen(x->how) > 64 || !x->pid)
            return -EBADMSG;
    }
    return 0;
}

/* Lists the runner's sandboxes into V. Returns 0, or a negative errno with
 * the reason in WHY. */
static int runner_list(controller *c, runner_view *v, char *why, size_t size)
{
    json_t *answer = NULL;
    int r = runner_call(c, "GET", "/v1/sandboxes", NULL, LIST_TIMEOUT_MS, &answer);
    if (r != 200) {
        runner_reason(r, answer, why, size);
        json_decref(answer);
        return r < 0 ? r : -EIO;
    }
    r = view_parse(answer, v);
    if (r < 0) {
        snprintf(why, size, "%s", r == -ENOMEM ? "out of memory" : "the runner's list of sandboxes is malformed");
        view_free(v);
    }
    return r;
}

/* The sandbox called NAME in V, or NULL. */
static runner_sandbox *view_find(const runner_view *v, const char *name)
{
    for (size_t i = 0; i < v->n_items; i++)
        if (v->items[i].name && strcmp(v->items[i].name, name) == 0)
            return &v->items[i];
    return NULL;
}

/* How sandbox NAME with PID ended, if the runner still remembers; NULL
 * when it does not (it was deleted, or the runner restarted). */
static const char *view_exit(const runner_view *v, const char *name, pid_t pid)
{
    for (size_t i = v->n_exits; i-- > 0;)
        if (v->exits[i].pid == pid && strcmp(v->exits[i].name, name) == 0)
            return v->exits[i].how;
    return NULL;
}

/* Deletes sandbox NAME on the runner. Returns 0 once it is gone (a 404
 * counts), or a negative errno with the reason in WHY. */
static int runner_delete(controller *c, const char *name, char *why, size_t size)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", name);
    json_auto_t *answer = NULL;
    int r = runner_call(c, "DELETE", path, NULL, DELETE_TIMEOUT_MS, &answer);
    if (r == 200 || r == 404)
        return 0;
    runner_reason(r, answer, why, size);
    return r < 0 ? r : -EIO;
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
    char rname[RESOURCE_NAME_MAX + 8], why[RUNNER_MESSAGE_MAX + 64];
    replica_name(e->name, i, rname, sizeof(rname));
    int r = runner_delete(c, rname, why, sizeof(why));
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
    char rname[RESOURCE_NAME_MAX + 8], why[RUNNER_MESSAGE_MAX + 64];
    replica_name(e->name, i, rname, sizeof(rname));
    bool restart = r->state == REPLICA_CRASHED;
    const char *action = restart ? "enclave.replica.restarted" : "enclave.replica.launched";
    const json_t *spec = json_object_get(e->doc, "spec");
    const char *bundle = json_string_value(json_object_get(spec, "bundle"));
    const json_t *limits = json_object_get(spec, "limits");
    char owner[OWNER_MAX];
    snprintf(owner, sizeof(owner), "%s%s", e->owner, e->spec_tag);
    /* every replica runs under the agent: evidence, its secrets by key
     * release, the workload, attested TLS (docs/enclaves.md) */
    json_t *secrets = json_object_get(spec, "secrets");
    json_auto_t *body = json_pack("{s:s, s:s, s:s, s:{s:o}}", "name", rname, "bundle", bundle ? bundle : "", "owner",
                                  owner, "agent", "secrets", secrets ? json_incref(secrets) : json_array());
    json_auto_t *answer = NULL;
    int status = !body ? -ENOMEM
                 : limits && json_object_set(body, "limits", (json_t *)limits) < 0
                     ? -ENOMEM
                     : runner_call(c, "POST", "/v1/sandboxes", body, LAUNCH_TIMEOUT_MS, &answer);
    pid_t pid = status == 201 ? view_pid(json_object_get(answer, "pid")) : 0;
    const char *pcr0 = json_string_value(json_object_get(json_object_get(answer, "pcrs"), "0"));
    if (pid > 0 && pcr0 && strlen(pcr0) == PCR_HEX_LEN) {
        r->state = REPLICA_RUNNING;
        r->pid = pid;
        r->started_mono = now;
        time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), r->started_at, sizeof(r->started_at));
        r->generation = e->generation;
        r->failing = false;
        memcpy(e->pcr0, pcr0, PCR_HEX_LEN + 1);
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
    if (status == 201)
        status = -EBADMSG;
    runner_reason(status, answer, why, sizeof(why));
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

/* Scales E on the proxy's requests in flight to it: one replica more after
 * CONTROLLER_SCALE_UP_AFTER_MS above CONTROLLER_SCALE_UP_IN_FLIGHT per
 * ready replica, one fewer after CONTROLLER_SCALE_DOWN_AFTER_MS with
 * nothing in flight; within [min, max], each step audited. */
static void autoscale(controller *c, enclave *e, uint64_t now)
{
    if (!c->load)
        return;
    int64_t in_flight = proxy_metrics_enclave_in_flight(c->load, e->name);
    unsigned ready = 0;
    for (size_t i = 0; i < e->desired; i++)
        ready += e->replicas[i].state == REPLICA_RUNNING;
    unsigned from = e->desired, to = from;
    if (ready && in_flight > (int64_t)ready * CONTROLLER_SCALE_UP_IN_FLIGHT && e->desired < e->max) {
        if (!e->busy_since)
            e->busy_since = now;
        if (now - e->busy_since >= CONTROLLER_SCALE_UP_AFTER_MS * NSEC_PER_MSEC) {
            to = from + 1;
            e->busy_since = 0;
        }
    } else {
        e->busy_since = 0;
    }
    if (in_flight == 0 && e->desired > e->min) {
        if (!e->idle_since)
            e->idle_since = now;
        if (now - e->idle_since >= CONTROLLER_SCALE_DOWN_AFTER_MS * NSEC_PER_MSEC) {
            to = from - 1;
            e->idle_since = now; /* another full idle period before the next step */
        }
    } else {
        e->idle_since = 0;
    }
    if (to == from)
        return;
    e->desired = to;
    set_event(e, "scaled %s from %u to %u replicas (%lld requests in flight)", to > from ? "up" : "down", from, to,
              (long long)in_flight);
    log_fields(LOG_LEVEL_INFO, "enclave scaled", "enclave", e->name, "event", e->last_event, NULL);
    json_t *details = json_pack("{s:i, s:i, s:I}", "from", (int)from, "to", (int)to, "inFlight", (json_int_t)in_flight);
    audit_event_emit(&(audit_event){.action = "enclave.scaled", .user = "system:controller", .kind = "Enclave",
                                    .name = e->name, .outcome = "success", .details = details});
    json_decref(details);
}

/* Brings E's replicas in line with desired and with what the runner lists
 * in V: observe (adopt, notice exits), then act (stop above desired, launch
 * or restart what is due), then replace one replica of an older spec if
 * every other one runs. */
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
    for (size_t i = 0; i < RESOURCE_ENCLAVE_REPLICAS_MAX; i++) {
        replica *r = &e->replicas[i];
        char rname[RESOURCE_NAME_MAX + 8];
        replica_name(e->name, i, rname, sizeof(rname));
        runner_sandbox *sb = view_find(v, rname);
        const char *tag = sb ? owned_by(sb->owner, e) : NULL;
        if (sb && !tag) {
            if (i < e->desired)
                set_event(e, "replica %s cannot start: a sandbox of that name that the controller did not launch "
                             "runs on the runner",
                          rname);
            r->present = i < e->desired;
            r->state = REPLICA_STARTING;
            r->pid = 0;
            continue;
        }
        /* observe */
        if (sb) {
            if (r->state != REPLICA_RUNNING || r->pid != sb->pid) { /* found again after a restart */
                if (sb->pid != r->stored_pid || !r->started_at[0])
                    time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), r->started_at,
                                        sizeof(r->started_at));
                r->state = REPLICA_RUNNING;
                r->pid = sb->pid;
                r->started_mono = now;
                r->failing = false;
                /* launched with another spec (changed while we were away): replaced in turn */
                r->generation = strcmp(tag, e->spec_tag) == 0 ? e->generation : e->generation - 1;
            }
            if (sb->pcr0 && !e->pcr0[0])
                memcpy(e->pcr0, sb->pcr0, PCR_HEX_LEN + 1);
        } else if (r->state == REPLICA_RUNNING) {
            const char *how = view_exit(v, rname, r->pid);
            pid_t pid = r->pid;
            r->pid = 0;
            if (how) {
                uint64_t ran_ms = (now - r->started_mono) / NSEC_PER_MSEC;
                r->backoff_ms = controller_backoff_ms(r->backoff_ms, ran_ms);
                r->retry_at = now + r->backoff_ms * NSEC_PER_MSEC;
                r->state = REPLICA_CRASHED;
                set_event(e, "replica %s exited (%s); restarting in %" PRIu64 " ms", rname, how, r->backoff_ms);
                json_auto_t *details = json_pack("{s:s, s:I, s:I}", "how", how, "ranMs", (json_int_t)ran_ms,
                                                 "restartInMs", (json_int_t)r->backoff_ms);
                emit(e->name, rname, "enclave.replica.crashed", "success", pid, details);
                log_fields(LOG_LEVEL_WARN, "enclave replica exited; restarting with backoff", "replica", rname, "how",
                           how, NULL);
            } else {
                /* deleted behind our back, or the runner restarted: not a crash of the workload */
                r->state = REPLICA_STARTING;
                r->retry_at = 0;
                set_event(e, "replica %s is no longer on the runner (stopped outside the controller, or the runner "
                             "restarted); launching it again",
                          rname);
                json_auto_t *details = json_pack("{s:s}", "reason", "no longer on the runner");
                emit(e->name, rname, "enclave.replica.stopped", "success", pid, details);
            }
        }
        /* act */
        if (i >= e->desired) {
            if (sb)
                r->present = stop_replica(c, e, i, sb->pid, "above the desired replicas") == 0 || r->present;
            else
                *r = (replica){0}; /* gone: a later scale-up starts it afresh */
            continue;
        }
        r->present = true;
        if (r->state == REPLICA_STOPPED)
            r->state = REPLICA_STARTING;
        if (r->state != REPLICA_RUNNING && now >= r->retry_at)
            launch_replica(c, e, i, now);
    }
    /* a changed spec: replace the lowest-numbered replica of an older one,
     * and only while every other one runs and was seen running by an
     * earlier pass, so a bad change stops at one */
    size_t outdated = SIZE_MAX;
    for (size_t i = 0; i < e->desired; i++) {
        if (e->replicas[i].state != REPLICA_RUNNING || e->replicas[i].started_mono == now)
            return;
        if (outdated == SIZE_MAX && e->replicas[i].generation != e->generation)
            outdated = i;
    }
    if (outdated != SIZE_MAX && stop_replica(c, e, outdated, e->replicas[outdated].pid, "the spec changed") == 0) {
        e->replicas[outdated].state = REPLICA_STARTING;
        e->replicas[outdated].retry_at = 0;
        launch_replica(c, e, outdated, now);
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
        char why[RUNNER_MESSAGE_MAX + 64];
        int r = runner_delete(c, sb->name, why, sizeof(why));
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
static json_t *status_build(const enclave *e)
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
                                 state_names[r->state], "restarts", (int)r->restarts);
        if (item && r->started_at[0])
            json_object_set_new(item, "startedAt", json_string(r->started_at));
        if (json_array_append_new(replicas, item) < 0)
            return NULL;
        ready += i < e->desired && r->state == REPLICA_RUNNING;
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

/* Writes E's status when it differs from the stored one: a REPLACE of the
 * document last seen, conditional on its resourceVersion. A concurrent
 * change (-ESTALE) or deletion (-ENOENT) is left to the feed; the status is
 * written again on the next pass. */
static void status_write(controller *c, enclave *e)
{
    json_auto_t *st = status_build(e);
    if (!st || !e->doc || (e->written && json_equal(st, e->written)))
        return;
    store_op op = {.type = STORE_REPLACE, .kind = "Enclave", .name = e->name, .doc = e->doc, .status = st,
                   .expected_rv = e->rv};
    store_txn txn = {.ops = &op, .n_ops = 1};
    int r = store_write(c->store, &txn);
    if (r == 0 && op.result)
        enclave_take_doc(c, e, op.result);
    store_txn_clear(&txn);
    if (r < 0 && r != -ESTALE && r != -ENOENT)
        log_fields(LOG_LEVEL_WARN, "controller: cannot write an Enclave's status; retrying", "enclave", e->name,
                   "error", strerror(-r), NULL);
}

/* ---- the thread ------------------------------------------------------------ */

/* One pass over every Enclave. Returns the time_mono_ns() of the next:
 * the interval from now, or sooner when a restart is due. */
static uint64_t pass(controller *c)
{
    uint64_t now = time_mono_ns(), next = now + (uint64_t)c->interval_ms * NSEC_PER_MSEC;
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
    char why[RUNNER_MESSAGE_MAX + 64];
    int r = runner_list(c, &v, why, sizeof(why));
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
        for (size_t k = 0; k < e->desired; k++)
            if (e->replicas[k].state != REPLICA_RUNNING && e->replicas[k].retry_at > now)
                next = MIN(next, e->replicas[k].retry_at);
    }
    view_free(&v);
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
    c->runner_socket = strdup(cfg->runner_socket);
    int r = c->runner_socket ? audit_client_new(c->runner_socket, &c->runner) : -ENOMEM;
    if (r < 0) {
        free(c->runner_socket);
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
        audit_client_free(c->runner);
        free(c->runner_socket);
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
    for (size_t i = 0; i < c->n_enclaves; i++)
        enclave_free(c->enclaves[i]);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    audit_client_free(c->runner);
    free(c->runner_socket);
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
