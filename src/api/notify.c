/* Notifications and their webhooks (see notify.h). One mutex guards two
 * queues: what notify_users() asked for, taken by the writer thread, which
 * stores it; and the webhook deliveries, ordered by when each is due, taken
 * by the sender threads, which POST them (libcurl) and record the outcome
 * in the Notification's status. */
#include "api/notify.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "api/handlers-kms.h"
#include "api/metrics.h"
#include "api/request.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "resource/resource.h"

#define SENDERS 2
#define TEXT_MAX 253 /* a KIND or NAME a notification names */
#define ID_SIZE (NOTIFY_PREFIX_SIZE + 25) /* the user's prefix, 13 + 12 hex digits and the NUL */
#define SECRET_KIND "NotificationSecret"

static const char *const types[] = {
    "job.approval-requested", "job.approved",  "job.rejected",        "job.vetoed",
    "job.run.started",        "job.run.succeeded", "job.run.failed", "dataset.added",
    "key-release.refused",
};

bool notify_type_valid(const char *type)
{
    for (size_t i = 0; type && i < ELEMENTSOF(types); i++)
        if (strcmp(type, types[i]) == 0)
            return true;
    return false;
}

/* A notify_users() call waiting for the writer. */
typedef struct pending {
    struct pending *next;
    char **users;
    size_t n_users;
    bool to_admins; /* the users are resolved by the writer */
    char type[32];
    char *kind, *name;
    json_t *details;
} pending;

/* One webhook delivery: a notification to one URL of its user. */
typedef struct delivery {
    char id[ID_SIZE];
    char user[RESOURCE_NAME_MAX + 1];
    char uid[129];
    char *url;
    size_t index;  /* in the notification's status.deliveries */
    char *payload; /* the body, the same on every attempt */
    unsigned attempts;
    uint64_t due_ns; /* monotonic */
} delivery;

struct notifier {
    api_server *srv;
    pthread_mutex_t lock;
    pthread_cond_t wake_writer, wake_senders;
    pending *head, *tail;
    size_t n_pending;
    delivery **deliveries; /* a heap-free array; the earliest due is searched (it is short) */
    size_t n_deliveries;
    bool stopping;
    _Atomic bool stop_now; /* cut transfers in progress */
    bool writer_started;
    size_t n_senders;
    pthread_t writer, senders[SENDERS];
};

static void pending_free(pending *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_users; i++)
        free(p->users[i]);
    free(p->users);
    free(p->kind);
    free(p->name);
    json_decref(p->details);
    free(p);
}

static void delivery_free(delivery *d)
{
    if (!d)
        return;
    free(d->url);
    free(d->payload);
    free(d);
}

/* ---- the queue of notifications to store ---- */

/* Checks and queues a notification for USERS, or for the administrators
 * when TO_ADMINS (notify_users(), notify_admins()). */
static int enqueue(api_server *srv, const char *const *users, size_t n_users, bool to_admins, const char *type,
                   const char *kind, const char *name, json_t *details)
{
    json_auto_t *d = details;
    notifier *n = srv ? srv->notify : NULL;
    if (!n)
        return -ESHUTDOWN;
    if (!notify_type_valid(type) || n_users > NOTIFY_USERS_MAX || (kind && strlen(kind) > TEXT_MAX) ||
        (name && strlen(name) > TEXT_MAX) || (d && !json_is_object(d)))
        return -EINVAL;
    if (d) {
        char *text = json_dumps(d, JSON_COMPACT);
        size_t len = text ? strlen(text) : 0;
        free(text);
        if (len > NOTIFY_DETAILS_MAX)
            return -EINVAL;
    }
    if (n_users == 0 && !to_admins)
        return 0;
    pending *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->to_admins = to_admins;
    p->users = calloc(to_admins ? NOTIFY_USERS_MAX : n_users, sizeof(char *));
    p->kind = strdup(kind ?: "");
    p->name = strdup(name ?: "");
    if (!p->users || !p->kind || !p->name) {
        pending_free(p);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n_users; i++) {
        bool seen = false;
        for (size_t j = 0; j < p->n_users && !seen; j++)
            seen = users[i] && strcmp(p->users[j], users[i]) == 0;
        if (seen || !users[i] || !resource_name_valid(users[i]))
            continue;
        if (!(p->users[p->n_users] = strdup(users[i]))) {
            pending_free(p);
            return -ENOMEM;
        }
        p->n_users++;
    }
    snprintf(p->type, sizeof(p->type), "%s", type);
    p->details = d ? TAKE_PTR(d) : json_object();
    int r = 0;
    pthread_mutex_lock(&n->lock);
    if (n->stopping)
        r = -ESHUTDOWN;
    else if (n->n_pending >= NOTIFY_QUEUE_MAX)
        r = -EAGAIN;
    else {
        if (n->tail)
            n->tail->next = p;
        else
            n->head = p;
        n->tail = p;
        n->n_pending++;
        pthread_cond_signal(&n->wake_writer);
    }
    pthread_mutex_unlock(&n->lock);
    if (r < 0) {
        if (r == -EAGAIN) {
            metrics_count_notify(NOTIFY_METRIC_DROPPED);
            log_fields(LOG_LEVEL_WARN, "notification dropped: too many waiting to be stored", "type", type, "kind",
                       p->kind, "name", p->name, NULL);
        }
        pending_free(p);
    }
    return r;
}

int notify_users(api_server *srv, const char *const *users, size_t n_users, const char *type, const char *kind,
                 const char *name, json_t *details)
{
    return enqueue(srv, users, n_users, false, type, kind, name, details);
}

int notify_admins(api_server *srv, const char *type, const char *kind, const char *name, json_t *details)
{
    return enqueue(srv, NULL, 0, true, type, kind, name, details);
}

/* Fills P's users with the administrators: the users of group admins that
 * are not disabled, at most NOTIFY_USERS_MAX (P->users has room for them). */
static void resolve_admins(store *st, pending *p)
{
    json_auto_t *users = NULL;
    int64_t rev;
    if (store_list(st, "User", &users, &rev) < 0)
        return;
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u)
    {
        const json_t *spec = json_object_get(u, "spec"), *groups = json_object_get(spec, "groups");
        bool admin = false;
        for (size_t k = 0; k < json_array_size(groups) && !admin; k++)
            admin = strcmp(json_string_value(json_array_get(groups, k)) ?: "", "admins") == 0;
        if (!admin || json_is_true(json_object_get(spec, "disabled")) || p->n_users == NOTIFY_USERS_MAX)
            continue;
        char *name = strdup(doc_name(u) ?: "");
        if (name)
            p->users[p->n_users++] = name;
    }
}

/* ---- the writer ---- */

void notify_user_prefix(const char *uid, char out[NOTIFY_PREFIX_SIZE])
{
    uint8_t digest[32];
    unsigned int n = 0;
    if (EVP_Digest(uid, strlen(uid), digest, &n, EVP_sha256(), NULL) != 1)
        memset(digest, 0, sizeof(digest)); /* cannot fail with the default provider; every id stays valid */
    hex_encode(digest, 8, out);
    out[16] = '-';
    out[17] = 0;
}

/* A fresh notification id for user UID: their prefix, then the time in ms
 * (13 hex digits) and 48 random bits, so that a user's ids are one range of
 * the store's key and sort by creation time. */
static int make_id(const char *uid, char out[ID_SIZE])
{
    uint8_t rnd[6];
    int r = random_bytes(rnd, sizeof(rnd));
    if (r < 0)
        return r;
    notify_user_prefix(uid, out);
    snprintf(out + NOTIFY_PREFIX_SIZE - 1, ID_SIZE - NOTIFY_PREFIX_SIZE + 1, "%013llx",
             (unsigned long long)(time_now_ns() / 1000000));
    hex_encode(rnd, sizeof(rnd), out + NOTIFY_PREFIX_SIZE - 1 + 13);
    out[ID_SIZE - 1] = 0;
    return 0;
}

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

json_t *notify_item_view(const json_t *doc)
{
    const json_t *spec = json_object_get(doc, "spec"), *status = json_object_get(doc, "status");
    json_t *v = json_pack("{s:s?, s:s?, s:s?, s:s?, s:O?, s:s?, s:b}", "id", str_at(doc, "metadata", "name"),
                          "type", json_string_value(json_object_get(spec, "type")), "kind",
                          json_string_value(json_object_get(spec, "kind")), "name",
                          json_string_value(json_object_get(spec, "name")), "details",
                          json_object_get(spec, "details"), "createdAt", str_at(doc, "metadata", "createdAt"),
                          "read", json_is_true(json_object_get(status, "read")));
    const json_t *read_at = json_object_get(status, "readAt"), *dl = json_object_get(status, "deliveries");
    if (v && read_at)
        json_object_set(v, "readAt", (json_t *)read_at);
    if (v && json_array_size(dl))
        json_object_set(v, "deliveries", (json_t *)dl);
    return v;
}

/* The user UID's notifications in ITEMS. */
static size_t count_for(const json_t *items, const char *uid)
{
    size_t n = 0, i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        if (strcmp(str_at(doc, "spec", "userUid") ?: "", uid) == 0)
            n++;
    }
    return n;
}

int notify_list_user(store *st, const char *uid, json_t **ret_items, int64_t *ret_revision)
{
    char prefix[NOTIFY_PREFIX_SIZE];
    notify_user_prefix(uid, prefix);
    json_t *items = NULL;
    int e = store_list_prefix(st, "Notification", prefix, &items, ret_revision);
    if (e < 0)
        return e;
    /* another uid with the same 64-bit prefix would be a collision: never shown */
    for (size_t i = json_array_size(items); i-- > 0;)
        if (strcmp(str_at(json_array_get(items, i), "spec", "userUid") ?: "", uid) != 0)
            json_array_remove(items, i);
    *ret_items = items;
    return 0;
}

size_t notify_prune(const json_t *items, const char *uid, size_t cap, const char **ret_names)
{
    size_t have = count_for(items, uid);
    if (have < cap)
        return 0;
    size_t excess = have - cap + 1, n = 0;
    for (int pass = 0; pass < 2 && n < excess; pass++) {
        size_t i;
        json_t *doc;
        json_array_foreach(items, i, doc)
        {
            if (n == excess)
                break;
            if (strcmp(str_at(doc, "spec", "userUid") ?: "", uid) != 0)
                continue;
            bool read = json_is_true(json_object_get(json_object_get(doc, "status"), "read"));
            if (pass == 0 ? !read : read)
                continue;
            ret_names[n++] = str_at(doc, "metadata", "name");
        }
    }
    return n;
}

/* Queues the webhook deliveries of the stored notification DOC (its
 * status.deliveries) not yet delivered or failed for good, each due now. */
static void deliveries_queue(notifier *n, const json_t *doc)
{
    const json_t *dl = json_object_get(json_object_get(doc, "status"), "deliveries");
    if (!json_array_size(dl))
        return;
    json_auto_t *data = notify_item_view(doc);
    json_object_del(data, "deliveries");
    json_object_del(data, "read");
    json_auto_t *body = json_pack("{s:s?, s:s?, s:O}", "type", str_at(doc, "spec", "type"), "timestamp",
                                  str_at(doc, "metadata", "createdAt"), "data", data);
    char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
    size_t i;
    json_t *e;
    json_array_foreach(dl, i, e)
    {
        const char *state = json_string_value(json_object_get(e, "state")) ?: "";
        if (strcmp(state, "pending") != 0 && strcmp(state, "retrying") != 0)
            continue;
        delivery *d = calloc(1, sizeof(*d));
        if (d) {
            d->url = strdup(json_string_value(json_object_get(e, "url")) ?: "");
            d->payload = payload ? strdup(payload) : NULL;
        }
        if (!d || !d->url || !d->payload) {
            delivery_free(d);
            continue;
        }
        snprintf(d->id, sizeof(d->id), "%s", str_at(doc, "metadata", "name"));
        snprintf(d->user, sizeof(d->user), "%s", str_at(doc, "spec", "user") ?: "");
        snprintf(d->uid, sizeof(d->uid), "%s", str_at(doc, "spec", "userUid") ?: "");
        d->index = i;
        d->attempts = (unsigned)json_integer_value(json_object_get(e, "attempts"));
        d->due_ns = time_mono_ns();
        pthread_mutex_lock(&n->lock);
        bool room = n->n_deliveries < NOTIFY_WEBHOOK_QUEUE_MAX;
        if (room) {
            n->deliveries[n->n_deliveries++] = d;
            pthread_cond_signal(&n->wake_senders);
        }
        pthread_mutex_unlock(&n->lock);
        if (!room) {
            metrics_count_notify(NOTIFY_METRIC_WEBHOOK_FAILED);
            log_fields(LOG_LEVEL_WARN, "webhook delivery dropped: too many waiting", "notification", d->id, "user",
                       d->user, NULL);
            delivery_free(d);
        }
    }
    free(payload);
}

/* Stores the notifications of P (one per user that exists), pruning each
 * user's oldest past the cap, in one transaction; then queues their
 * webhook deliveries and audits the lot. */
static void store_pending(notifier *n, pending *p)
{
    store *st = n->srv->cfg->store;
    if (p->to_admins)
        resolve_admins(st, p);
    size_t cap = p->n_users * (NOTIFY_PER_USER_MAX + 1);
    store_op *ops = calloc(cap, sizeof(*ops));
    /* each user's notifications, which the removals' names are borrowed from */
    json_t **docs = calloc(p->n_users, sizeof(json_t *)), **lists = calloc(p->n_users, sizeof(json_t *));
    json_auto_t *notified = json_array();
    size_t n_ops = 0;
    int e = 0;
    for (size_t i = 0; ops && docs && lists && notified && i < p->n_users; i++) {
        json_auto_t *user = NULL;
        if (store_get(st, "User", p->users[i], &user) < 0)
            continue;
        const char *uid = str_at(user, "metadata", "uid");
        char id[ID_SIZE];
        if (!uid || make_id(uid, id) < 0)
            continue;
        e = notify_list_user(st, uid, &lists[i], NULL);
        if (e < 0) {
            log_fields(LOG_LEVEL_ERROR, "notification lost: cannot read the store", "type", p->type, "user",
                       p->users[i], "error", strerror(-e), NULL);
            continue;
        }
        const json_t *hooks = json_object_get(json_object_get(json_object_get(user, "spec"), "notify"), "webhooks");
        json_t *deliveries = json_array();
        size_t k;
        json_t *url;
        json_array_foreach(hooks, k, url)
        {
            json_array_append_new(deliveries, json_pack("{s:O, s:s, s:i}", "url", url, "state", "pending",
                                                         "attempts", 0));
        }
        docs[i] = json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s, s:s, s:s, s:s, s:O}}", "apiVersion",
                            RESOURCE_API_VERSION, "kind", "Notification", "metadata", "name", id, "spec", "user",
                            p->users[i], "userUid", uid, "type", p->type, "kind", p->kind, "name", p->name,
                            "details", p->details);
        json_t *status = json_pack("{s:b, s:o}", "read", false, "deliveries", deliveries);
        if (!docs[i] || !status) {
            json_decref(status);
            continue;
        }
        const char **names = calloc(json_array_size(lists[i]) + 1, sizeof(char *));
        size_t n_prune = names ? notify_prune(lists[i], uid, NOTIFY_PER_USER_MAX, names) : 0;
        for (size_t j = 0; j < n_prune && j < NOTIFY_PER_USER_MAX; j++)
            ops[n_ops++] = (store_op){.type = STORE_REMOVE, .kind = "Notification", .name = names[j]};
        free(names);
        /* the status object lives in the doc so that the op's borrowed pointer stays valid */
        json_object_set_new(docs[i], "status", status);
        ops[n_ops++] = (store_op){.type = STORE_CREATE, .kind = "Notification", .name = doc_name(docs[i]),
                                  .doc = docs[i], .status = status};
        json_array_append_new(notified, json_string(p->users[i]));
    }
    if (!ops || !docs || !lists || !notified) {
        log_fields(LOG_LEVEL_ERROR, "notifications lost: out of memory", "type", p->type, NULL);
        n_ops = 0;
    }
    if (n_ops > 0) {
        store_txn txn = {.ops = ops, .n_ops = n_ops};
        e = store_write(st, &txn);
        if (e < 0)
            log_fields(LOG_LEVEL_ERROR, "notifications lost: the store refused them", "type", p->type, "error",
                       strerror(-e), NULL);
        for (size_t i = 0; e == 0 && i < n_ops; i++)
            if (ops[i].type == STORE_CREATE) {
                metrics_count_notify(NOTIFY_METRIC_CREATED);
                deliveries_queue(n, ops[i].result);
            }
        store_txn_clear(&txn);
        json_auto_t *details = json_pack("{s:s, s:O}", "type", p->type, "users", notified);
        audit_event_emit(&(audit_event){.action = "notification.create", .kind = p->kind[0] ? p->kind : NULL,
                                        .name = p->name[0] ? p->name : NULL,
                                        .outcome = e < 0 ? "failure" : "success", .details = details});
    }
    for (size_t i = 0; docs && lists && i < p->n_users; i++) {
        json_decref(docs[i]);
        json_decref(lists[i]);
    }
    free(docs);
    free(lists);
    free(ops);
}

/* The writer thread: stores what is queued, in order, until stopped with
 * nothing left. */
static void *writer_main(void *arg)
{
    notifier *n = arg;
    pthread_mutex_lock(&n->lock);
    for (;;) {
        while (!n->head && !n->stopping)
            pthread_cond_wait(&n->wake_writer, &n->lock);
        pending *p = n->head;
        if (!p)
            break; /* stopping, and everything queued is stored */
        n->head = p->next;
        if (!n->head)
            n->tail = NULL;
        n->n_pending--;
        pthread_mutex_unlock(&n->lock);
        store_pending(n, p);
        pending_free(p);
        pthread_mutex_lock(&n->lock);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

/* ---- webhooks: signing, the schedule, the secret ---- */

int notify_webhook_sign(const uint8_t *secret, size_t secret_len, const char *msg_id, int64_t timestamp,
                        const char *body, size_t body_len, char out[NOTIFY_SIGNATURE_SIZE])
{
    if (!secret || secret_len == 0 || !msg_id || !*msg_id || (!body && body_len))
        return -EINVAL;
    char *signed_content = NULL;
    int len = asprintf(&signed_content, "%s.%lld.%.*s", msg_id, (long long)timestamp, (int)body_len, body ?: "");
    if (len < 0)
        return -ENOMEM;
    uint8_t mac[32];
    size_t mac_len = 0;
    bool ok = EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, secret_len, (const uint8_t *)signed_content,
                        (size_t)len, mac, sizeof(mac), &mac_len) != NULL &&
              mac_len == sizeof(mac);
    free(signed_content);
    if (!ok)
        return -EIO;
    memcpy(out, "v1,", 3);
    base64_encode(mac, sizeof(mac), out + 3, false);
    return 0;
}

void notify_secret_format(const uint8_t secret[NOTIFY_SECRET_LEN], char out[NOTIFY_SECRET_TEXT_SIZE])
{
    memcpy(out, "whsec_", 6);
    base64_encode(secret, NOTIFY_SECRET_LEN, out + 6, false);
}

uint64_t notify_webhook_delay_ms(unsigned attempt)
{
    uint64_t d = NOTIFY_WEBHOOK_DELAY_BASE_MS;
    for (unsigned i = 1; i < attempt && d < NOTIFY_WEBHOOK_DELAY_MAX_MS; i++)
        d *= 2;
    return MIN(d, (uint64_t)NOTIFY_WEBHOOK_DELAY_MAX_MS);
}

bool notify_webhook_retryable(long status)
{
    return status == 0 || status == 408 || status == 429 || (status >= 500 && status <= 599);
}

/* What binds a sealed signing secret to its user. */
static json_t *secret_context(const char *user, const char *uid)
{
    return json_pack("{s:s, s:s, s:s}", "kind", SECRET_KIND, "name", user, "userUid", uid);
}

/* The negative errno of a failed KMS call that filled ERR. */
static int kms_errno(const api_error *err)
{
    return err->status == 503 ? -EAGAIN : -EIO;
}

int notify_secret_get(api_server *srv, const char *user, const char *uid, bool rotate,
                      uint8_t ret[NOTIFY_SECRET_LEN])
{
    store *st = srv->cfg->store;
    json_auto_t *ctx = secret_context(user, uid);
    if (!ctx)
        return -ENOMEM;
    for (int tries = 0; tries < 3; tries++) {
        json_auto_t *doc = NULL;
        int e = store_get(st, SECRET_KIND, user, &doc);
        if (e < 0 && e != -ENOENT)
            return e;
        api_error err;
        if (doc && !rotate && strcmp(str_at(doc, "spec", "userUid") ?: "", uid) == 0) {
            uint8_t *pt = NULL;
            size_t n = 0;
            if (api_kms_unseal(str_at(doc, "spec", "secret"), ctx, &pt, &n, &err) < 0)
                return kms_errno(&err);
            bool ok = n == NOTIFY_SECRET_LEN;
            if (ok)
                memcpy(ret, pt, NOTIFY_SECRET_LEN);
            OPENSSL_cleanse(pt, n);
            free(pt);
            return ok ? 0 : -EBADMSG;
        }
        uint8_t fresh[NOTIFY_SECRET_LEN];
        char *sealed = NULL;
        e = random_bytes(fresh, sizeof(fresh));
        if (e == 0 && api_kms_seal(ctx, fresh, sizeof(fresh), &sealed, &err) < 0)
            e = kms_errno(&err);
        json_auto_t *nd = e == 0 ? json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s, s:s}}", "apiVersion",
                                             RESOURCE_API_VERSION, "kind", SECRET_KIND, "metadata", "name", user,
                                             "spec", "user", user, "userUid", uid, "secret", sealed)
                                 : NULL;
        free(sealed);
        const char *rv = str_at(doc, "metadata", "resourceVersion");
        store_op op = {.type = doc ? STORE_REPLACE : STORE_CREATE, .kind = SECRET_KIND, .name = user, .doc = nd,
                       .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
        store_txn txn = {.ops = &op, .n_ops = 1};
        if (e == 0)
            e = nd ? store_write(st, &txn) : -ENOMEM;
        store_txn_clear(&txn);
        if (e == 0)
            memcpy(ret, fresh, NOTIFY_SECRET_LEN);
        OPENSSL_cleanse(fresh, sizeof(fresh));
        if (e == -EEXIST || e == -ESTALE) { /* made or rotated meanwhile: use that one */
            rotate = false;
            continue;
        }
        return e;
    }
    return -ESTALE;
}

/* ---- webhooks: delivery ---- */

/* Whether a webhook may connect to ADDR: never to an unspecified,
 * link-local (cloud metadata endpoints live there), multicast or broadcast
 * address, whatever the URL's name resolved to (checked on the address
 * connected to, so DNS rebinding cannot get around it). Loopback and
 * private addresses are allowed: see docs/notifications.md, "SSRF". */
static bool address_allowed(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
        return (a >> 24) != 0 && (a >> 16) != 0xa9fe && (a >> 28) != 0xe && a != 0xffffffff;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            struct sockaddr_in v4 = {.sin_family = AF_INET};
            memcpy(&v4.sin_addr, a->s6_addr + 12, 4);
            return address_allowed((const struct sockaddr *)&v4);
        }
        return !IN6_IS_ADDR_UNSPECIFIED(a) && !IN6_IS_ADDR_LINKLOCAL(a) && !IN6_IS_ADDR_MULTICAST(a);
    }
    return false;
}

/* libcurl's socket opener: refuses addresses address_allowed() does not
 * allow (setting *CLIENTP). */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    bool *refused = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN || !address_allowed(&addr->addr)) {
        *refused = true;
        return CURL_SOCKET_BAD;
    }
    return socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
}

/* Cuts a transfer when the notifier stops. */
static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    notifier *n = clientp;
    return atomic_load(&n->stop_now) ? 1 : 0;
}

/* The receiver's answer is not kept. */
static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return size * nmemb;
}

/* One attempt of D signed with SECRET: returns the HTTP status, or 0 with
 * WHY filled when there was none. */
static long post_once(notifier *n, const delivery *d, const uint8_t secret[NOTIFY_SECRET_LEN], char *why,
                      size_t why_size)
{
    char sig[NOTIFY_SIGNATURE_SIZE], h_id[64], h_ts[48], h_sig[sizeof(sig) + 32];
    int64_t ts = (int64_t)(time_now_ns() / NSEC_PER_SEC);
    if (notify_webhook_sign(secret, NOTIFY_SECRET_LEN, d->id, ts, d->payload, strlen(d->payload), sig) < 0) {
        snprintf(why, why_size, "cannot sign the message");
        return 0;
    }
    snprintf(h_id, sizeof(h_id), "webhook-id: %s", d->id);
    snprintf(h_ts, sizeof(h_ts), "webhook-timestamp: %lld", (long long)ts);
    snprintf(h_sig, sizeof(h_sig), "webhook-signature: %s", sig);
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    const char *lines[] = {"Content-Type: application/json", "Expect:", h_id, h_ts, h_sig};
    for (size_t i = 0; i < ELEMENTSOF(lines); i++) {
        struct curl_slist *next = curl_slist_append(h, lines[i]);
        if (!next)
            break;
        h = next;
    }
    if (!c || !h) {
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        snprintf(why, why_size, "out of memory");
        return 0;
    }
    bool refused = false;
    curl_easy_setopt(c, CURLOPT_URL, d->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, d->payload);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(d->payload));
    curl_easy_setopt(c, CURLOPT_USERAGENT, "cloister-webhooks/1");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)NOTIFY_WEBHOOK_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)NOTIFY_WEBHOOK_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &refused);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, n);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else if (refused)
        snprintf(why, why_size, "the URL's address is not allowed for webhooks (unspecified, link-local, "
                                "multicast or broadcast)");
    else
        snprintf(why, why_size, "%s", curl_easy_strerror(rc));
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

/* Writes the outcome ENTRY (an object, stolen) of D into its
 * notification's status.deliveries, compare-and-swap, retried when the
 * notification changed meanwhile (read, another delivery). Returns 0,
 * -ENOENT when the notification is gone (pruned), or a negative errno. */
static int record(notifier *n, const delivery *d, json_t *entry)
{
    json_auto_t *e = entry;
    store *st = n->srv->cfg->store;
    for (int tries = 0; tries < 8; tries++) {
        json_auto_t *doc = NULL;
        int r = store_get(st, "Notification", d->id, &doc);
        if (r < 0)
            return r;
        json_auto_t *status = json_deep_copy(json_object_get(doc, "status"));
        json_t *dl = json_object_get(status, "deliveries");
        if (!json_is_array(dl) || d->index >= json_array_size(dl))
            return -ENOENT;
        json_object_set_new(e, "url", json_string(d->url));
        json_array_set(dl, d->index, e);
        const char *rv = str_at(doc, "metadata", "resourceVersion");
        store_op op = {.type = STORE_REPLACE, .kind = "Notification", .name = d->id, .doc = doc, .status = status,
                       .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
        store_txn txn = {.ops = &op, .n_ops = 1};
        r = store_write(st, &txn);
        store_txn_clear(&txn);
        if (r != -ESTALE)
            return r;
    }
    return -ESTALE;
}

/* Puts D back in the queue, due in DELAY_MS. */
static void requeue(notifier *n, delivery *d, uint64_t delay_ms)
{
    d->due_ns = time_mono_ns() + delay_ms * 1000000ull;
    pthread_mutex_lock(&n->lock);
    bool room = !n->stopping && n->n_deliveries < NOTIFY_WEBHOOK_QUEUE_MAX;
    if (room) {
        n->deliveries[n->n_deliveries++] = d;
        pthread_cond_signal(&n->wake_senders);
    }
    pthread_mutex_unlock(&n->lock);
    if (!room)
        delivery_free(d);
}

/* Makes one attempt of D and records it: delivered, retried later (a
 * retryable failure with attempts left) or failed. Owns D. */
static void deliver(notifier *n, delivery *d)
{
    uint8_t secret[NOTIFY_SECRET_LEN];
    char why[256] = "";
    long status = 0;
    int e = notify_secret_get(n->srv, d->user, d->uid, false, secret);
    if (e < 0)
        snprintf(why, sizeof(why), "the signing secret is not available (%s)",
                 e == -EAGAIN ? "the KMS cannot be reached" : strerror(-e));
    else
        status = post_once(n, d, secret, why, sizeof(why));
    OPENSSL_cleanse(secret, sizeof(secret));
    if (atomic_load(&n->stop_now)) { /* cut by the stop: not an attempt; taken up again at the next start */
        delivery_free(d);
        return;
    }
    d->attempts++;
    char at[40];
    time_format_rfc3339_ms(time_now_ns(), at, sizeof(at));
    json_t *entry = json_pack("{s:i, s:I}", "attempts", (int)d->attempts, "lastStatus", (json_int_t)status);
    if (why[0])
        json_object_set_new(entry, "lastError", json_string(why));
    json_object_set_new(entry, "lastAttemptAt", json_string(at));
    bool ok = status >= 200 && status <= 299;
    bool again = !ok && notify_webhook_retryable(status) && d->attempts < NOTIFY_WEBHOOK_ATTEMPTS_MAX;
    uint64_t delay = again ? notify_webhook_delay_ms(d->attempts) : 0;
    if (ok) {
        json_object_set_new(entry, "state", json_string("delivered"));
        json_object_set_new(entry, "deliveredAt", json_string(at));
        metrics_count_notify(NOTIFY_METRIC_WEBHOOK_OK);
    } else if (again) {
        char next[40];
        json_object_set_new(entry, "state", json_string("retrying"));
        json_object_set_new(entry, "nextAttemptAt",
                            json_string(time_format_rfc3339_ms(time_now_ns() + delay * 1000000ull, next,
                                                               sizeof(next))));
        metrics_count_notify(NOTIFY_METRIC_WEBHOOK_RETRIED);
    } else {
        json_object_set_new(entry, "state", json_string("failed"));
        metrics_count_notify(NOTIFY_METRIC_WEBHOOK_FAILED);
        log_fields(LOG_LEVEL_WARN, "webhook delivery failed", "notification", d->id, "user", d->user, "reason",
                   why[0] ? why : "the receiver's answer", NULL);
    }
    e = entry ? record(n, d, entry) : -ENOMEM;
    if (e < 0 && e != -ENOENT)
        log_fields(LOG_LEVEL_WARN, "cannot record a webhook delivery", "notification", d->id, "error", strerror(-e),
                   NULL);
    if (again && e != -ENOENT)
        requeue(n, d, delay);
    else
        delivery_free(d);
}

/* A sender thread: takes the delivery due first once it is due, until
 * stopped. */
static void *sender_main(void *arg)
{
    notifier *n = arg;
    pthread_mutex_lock(&n->lock);
    while (!n->stopping) {
        size_t first = n->n_deliveries;
        for (size_t i = 0; i < n->n_deliveries; i++)
            if (first == n->n_deliveries || n->deliveries[i]->due_ns < n->deliveries[first]->due_ns)
                first = i;
        if (first == n->n_deliveries) {
            pthread_cond_wait(&n->wake_senders, &n->lock);
            continue;
        }
        uint64_t now = time_mono_ns(), due = n->deliveries[first]->due_ns;
        if (due > now) {
            struct timespec ts = {.tv_sec = (time_t)(due / NSEC_PER_SEC), .tv_nsec = (long)(due % NSEC_PER_SEC)};
            pthread_cond_timedwait(&n->wake_senders, &n->lock, &ts);
            continue;
        }
        delivery *d = n->deliveries[first];
        n->deliveries[first] = n->deliveries[--n->n_deliveries];
        pthread_mutex_unlock(&n->lock);
        deliver(n, d);
        pthread_mutex_lock(&n->lock);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

/* Queues again the deliveries a previous run left pending or retrying. */
static void resume_deliveries(notifier *n)
{
    json_auto_t *items = NULL;
    int64_t rev;
    if (store_list(n->srv->cfg->store, "Notification", &items, &rev) < 0)
        return;
    size_t i;
    json_t *doc;
    json_array_foreach(items, i, doc)
    {
        deliveries_queue(n, doc);
    }
}

/* ---- start and stop ---- */

int notify_start(api_server *srv)
{
    notifier *n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->srv = srv;
    n->deliveries = calloc(NOTIFY_WEBHOOK_QUEUE_MAX, sizeof(delivery *));
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->wake_writer, NULL);
    pthread_cond_init(&n->wake_senders, &attr);
    pthread_condattr_destroy(&attr);
    srv->notify = n;
    int e = n->deliveries ? -pthread_create(&n->writer, NULL, writer_main, n) : -ENOMEM;
    n->writer_started = e == 0;
    for (size_t i = 0; e == 0 && i < SENDERS; i++) {
        e = -pthread_create(&n->senders[i], NULL, sender_main, n);
        if (e == 0)
            n->n_senders++;
    }
    if (e < 0) {
        notify_stop(srv);
        return e;
    }
    resume_deliveries(n);
    return 0;
}

void notify_stop(api_server *srv)
{
    notifier *n = srv->notify;
    if (!n)
        return;
    pthread_mutex_lock(&n->lock);
    n->stopping = true;
    pthread_cond_broadcast(&n->wake_writer);
    pthread_cond_broadcast(&n->wake_senders);
    pthread_mutex_unlock(&n->lock);
    atomic_store(&n->stop_now, true);
    if (n->writer_started)
        pthread_join(n->writer, NULL);
    for (size_t i = 0; i < n->n_senders; i++)
        pthread_join(n->senders[i], NULL);
    srv->notify = NULL;
    for (size_t i = 0; i < n->n_deliveries; i++)
        delivery_free(n->deliveries[i]);
    free(n->deliveries);
    while (n->head) {
        pending *p = n->head;
        n->head = p->next;
        pending_free(p);
    }
    pthread_cond_destroy(&n->wake_writer);
    pthread_cond_destroy(&n->wake_senders);
    pthread_mutex_destroy(&n->lock);
    free(n);
}
