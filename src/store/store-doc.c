/* What every driver decides the same way about one write: whether an op
 * may run against the stored document, and the document it stores (the
 * server-owned metadata and status). The driver reads and writes rows; this
 * file never touches a database. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/encoding.h"
#include "basic/fileio.h"
#include "basic/macro.h"
#include "store/store-driver.h"

static void make_uid(char out[37])
{
    uint8_t b[16];
    if (random_bytes(b, sizeof(b)) < 0)
        abort(); /* the kernel CSPRNG does not fail once the system is up */
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    char hex[33];
    hex_encode(b, 16, hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

/* Builds the document to store from the client's INPUT and the existing OLD
 * one (NULL when new): server-owned metadata is set here, never taken from the
 * client. Returns a new reference. */
static json_t *build_doc(const json_t *input, json_t *new_status, const json_t *old, const char *kind,
                         const char *name, int64_t rv, const char *now)
{
    json_t *in_meta = json_object_get(input, "metadata");
    json_t *old_meta = old ? json_object_get(old, "metadata") : NULL;
    char uid[37], rvs[24];
    const char *uid_s = old_meta ? json_string_value(json_object_get(old_meta, "uid")) : NULL;
    if (!uid_s) {
        make_uid(uid);
        uid_s = uid;
    }
    const char *created = old_meta ? json_string_value(json_object_get(old_meta, "createdAt")) : NULL;
    snprintf(rvs, sizeof(rvs), "%lld", (long long)rv);
    json_t *meta = json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", name, "uid", uid_s, "resourceVersion", rvs,
                             "createdAt", created ? created : now, "updatedAt", now);
    json_t *labels = json_object_get(in_meta, "labels");
    if (labels)
        json_object_set(meta, "labels", labels);
    json_t *spec = json_object_get(input, "spec");
    json_t *status = new_status ? new_status : old ? json_object_get(old, "status") : NULL;
    return json_pack("{s:s, s:s, s:o, s:o, s:o}", "apiVersion", "cloister.dev/v1", "kind", kind, "metadata", meta,
                     "spec", spec ? json_incref(spec) : json_object(), "status",
                     status ? json_incref(status) : json_object());
}

/* The status OP stores into *RET (a new reference): op->status, or OLD's
 * when it sets none, with the uid of LINKED (the document OP links to) set
 * in it; NULL when the stored status is kept as it is. When OLD recorded
 * another uid there, the rest of its status (state bound to that other
 * document, such as a token) is dropped. Returns 0, -ENOLINK when the linked
 * document does not exist, or another negative errno. */
static int op_status(const store_op *op, const json_t *old, const json_t *linked, json_t **ret)
{
    if (!op->uid_kind) {
        *ret = json_incref(op->status);
        return 0;
    }
    if (!linked)
        return -ENOLINK;
    json_t *uid = json_object_get(json_object_get(linked, "metadata"), "uid");
    json_t *old_status = old ? json_object_get(old, "status") : NULL;
    json_t *recorded = json_object_get(old_status, op->uid_field);
    json_t *base = op->status ? op->status : recorded && !json_equal(recorded, uid) ? NULL : old_status;
    json_t *status = json_is_object(base) ? json_deep_copy(base) : json_object();
    if (!status || !json_is_string(uid) || json_object_set(status, op->uid_field, uid) < 0) {
        json_decref(status);
        return json_is_string(uid) ? -ENOMEM : -EIO;
    }
    *ret = status;
    return 0;
}

bool store_op_needs_link(const store_op *op)
{
    return op->uid_kind && op->uid_name && op->uid_field && op->type != STORE_DELETE && op->type != STORE_REMOVE;
}

int store_op_plan(store_op *op, json_t *old, int64_t old_rv, const char *old_lookup, const json_t *linked,
                  int64_t *rev, const char *now, store_plan *ret)
{
    bool exists = old != NULL;
    *ret = (store_plan){.write = STORE_PLAN_NOTHING};
    if (op->type == STORE_REMOVE && !exists) {
        op->action = STORE_UNCHANGED;
        return 0;
    }
    int e = 0;
    if (op->type == STORE_CREATE && exists)
        e = -EEXIST;
    else if ((op->type == STORE_REPLACE || op->type == STORE_DELETE) && !exists)
        e = -ENOENT;
    else if (exists && op->expected_rv > 0 && op->expected_rv != old_rv)
        e = -ESTALE;
    if (e < 0) {
        json_decref(old);
        return e;
    }
    ret->old_rv = old_rv;

    if (op->type == STORE_DELETE || op->type == STORE_REMOVE) {
        ret->rv = ++*rev;
        char rvs[24];
        snprintf(rvs, sizeof(rvs), "%lld", (long long)ret->rv);
        json_object_set_new(json_object_get(old, "metadata"), "resourceVersion", json_string(rvs));
        ret->text = json_dumps(old, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(old);
        if (!ret->text)
            return -ENOMEM;
        ret->write = STORE_PLAN_DELETE;
        return 0;
    }

    /* the lookup key and the status are the server's: kept unless the op sets them */
    json_t *status = NULL;
    e = op_status(op, old, linked, &status);
    if (e < 0) {
        json_decref(old);
        return e;
    }
    bool same_lookup = !op->lookup_key || (old_lookup && strcmp(op->lookup_key, old_lookup) == 0);
    bool same_status = !status || json_equal(status, json_object_get(old, "status"));
    if (exists && same_lookup && same_status && store_same_content(op->doc, old)) {
        json_decref(status);
        op->action = STORE_UNCHANGED;
        op->result = old;
        return 0;
    }
    ret->rv = ++*rev;
    ret->doc = build_doc(op->doc, status, old, op->kind, op->name, ret->rv, now);
    json_decref(status);
    json_decref(old);
    ret->text = ret->doc ? json_dumps(ret->doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (!ret->text) {
        store_plan_clear(ret);
        return -ENOMEM;
    }
    ret->write = exists ? STORE_PLAN_UPDATE : STORE_PLAN_INSERT;
    return 0;
}

void store_plan_done(store_op *op, store_plan *plan)
{
    op->action = plan->write == STORE_PLAN_DELETE   ? STORE_DELETED
                 : plan->write == STORE_PLAN_INSERT ? STORE_CREATED
                                                    : STORE_CONFIGURED;
    op->result = TAKE_PTR(plan->doc);
    store_plan_clear(plan);
}

void store_plan_clear(store_plan *plan)
{
    json_decref(plan->doc);
    plan->doc = NULL;
    free(plan->text);
    plan->text = NULL;
}

store_event_type store_plan_event(const store_plan *plan)
{
    return plan->write == STORE_PLAN_DELETE   ? STORE_EVENT_DELETED
           : plan->write == STORE_PLAN_INSERT ? STORE_EVENT_ADDED
                                              : STORE_EVENT_MODIFIED;
}

void store_queue_init(store_queue *q)
{
    *q = (store_queue){0};
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
}

void store_queue_destroy(store_queue *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->wake);
}

void store_queue_push(store_queue *q, store_txn *txn)
{
    pthread_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = txn;
    else
        q->head = txn;
    q->tail = txn;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
}

store_txn *store_queue_take(store_queue *q, size_t max)
{
    pthread_mutex_lock(&q->lock);
    while (!q->head && !q->stopping)
        pthread_cond_wait(&q->wake, &q->lock);
    store_txn *batch = q->head, *last = batch;
    if (batch) {
        for (size_t n = 1; last->next && n < max; n++)
            last = last->next;
        q->head = last->next;
        if (!q->head)
            q->tail = NULL;
        last->next = NULL;
    }
    pthread_mutex_unlock(&q->lock);
    return batch;
}

void store_queue_stop(store_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->stopping = true;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
}

void store_pool_init(store_pool *p)
{
    *p = (store_pool){0};
    pthread_mutex_init(&p->lock, NULL);
}

store_pooled *store_pool_take(store_pool *p)
{
    pthread_mutex_lock(&p->lock);
    store_pooled *item = p->idle;
    if (item) {
        p->idle = item->next;
        p->n_idle--;
    }
    pthread_mutex_unlock(&p->lock);
    return item;
}

bool store_pool_put(store_pool *p, store_pooled *item)
{
    pthread_mutex_lock(&p->lock);
    bool kept = p->n_idle < STORE_POOL_MAX;
    if (kept) {
        item->next = p->idle;
        p->idle = item;
        p->n_idle++;
    }
    pthread_mutex_unlock(&p->lock);
    return kept;
}

store_pooled *store_pool_destroy(store_pool *p)
{
    store_pooled *all = p->idle;
    p->idle = NULL;
    p->n_idle = 0;
    pthread_mutex_destroy(&p->lock);
    return all;
}

void store_txn_apply(store_txn *txn, store_apply_fn apply, void *ctx, store_view *view)
{
    for (int linking = 0; linking < 2; linking++)
        for (size_t i = 0; txn->error == 0 && i < txn->n_ops; i++) {
            if ((txn->ops[i].uid_kind != NULL) != linking)
                continue;
            txn->error = apply(&txn->ops[i], ctx);
            if (txn->error < 0)
                txn->failed_op = i;
        }
    if (txn->error == 0 && txn->guard) {
        size_t failed_op = 0;
        txn->error = txn->guard(txn, view, &failed_op);
        if (txn->error < 0)
            txn->failed_op = failed_op < txn->n_ops ? failed_op : 0;
    }
}

void store_batch_done(store_txn *batch)
{
    while (batch) {
        store_txn *next = batch->next;
        batch->next = NULL;
        batch->done(batch, batch->userdata);
        batch = next;
    }
}
