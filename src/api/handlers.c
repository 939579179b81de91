/* The API's request handling: routing, authentication of the caller, the
 * resource endpoints, apply, watch streams, health and metrics. Writes go to
 * the store asynchronously (group commit) and are answered on the event loop
 * that received them once durable. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "api/auth.h"
#include "api/authz-write.h"
#include "api/handlers-datasets.h"
#include "api/handlers-job-runs.h"
#include "api/handlers-jobs.h"
#include "api/handlers-kms.h"
#include "api/handlers-policy.h"
#include "api/references.h"
#include "api/request.h"
#include "api/span.h"
#include "api/sse.h"
#include "audit/event.h"
#include "auth/bootstrap-names.h"
#include "auth/credential.h"
#include "auth/session.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"
#include "controller/controller.h"
#include "httpd/framing.h"
#include "httpd/httpd.h"
#include "proxy/metrics.h"
#include "telemetry/telemetry.h"
#include "resource/resource.h"

#define WATCH_BATCH_MAX 500
#define WATCH_HEARTBEAT_NS (15 * NSEC_PER_SEC)
#define WATCH_BUFFER_MAX (4 * 1024 * 1024) /* unsent bytes per stream; a slower reader is ended */

typedef struct api_handler {
    h2o_handler_t super;
    api_server *server;
} api_handler;

/* The document as clients may see it: write-only values removed, and
 * server-internal status fields (a credential's token digest, an
 * invitation's) dropped. */
static json_t *public_view(const json_t *doc)
{
    json_t *v = resource_public_view(doc);
    json_t *status = json_object_get(v, "status");
    if (json_is_object(status))
        json_object_del(status, "tokenDigest");
    if (json_is_object(status))
        json_object_del(status, "inviteDigest"); /* a pending invitation's token digest (handlers-passkeys.c) */
    if (strcmp(json_string_value(json_object_get(v, "kind")) ?: "", "Job") == 0)
        api_job_view(v);
    return v;
}

/* ---- authentication ---- */

static auth_cache_entry *auth_cache_slot(api_thread *t, const char *lookup_key)
{
    uint32_t h = 2166136261u; /* FNV-1a over the (random) key */
    for (const char *p = lookup_key; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return &t->auth_cache[h % AUTH_CACHE_SLOTS];
}

static void auth_cache_entry_clear(auth_cache_entry *e)
{
    json_decref(e->user);
    json_decref(e->credential);
    explicit_bzero(e, sizeof(*e));
}

/* Resolves a credential token (its DIGEST and lookup KEY) to its credential
 * and user from the store (new references in *RET); the rule of
 * auth/session.h is applied by the caller on every use. Returns 0 or -1 with
 * ERR. */
static int resolve_credential(api_server *srv, const char *digest, const char *key, caller *ret, api_error *err)
{
    json_t *cred = NULL;
    int e = store_get_by_lookup(srv->cfg->store, "Credential", key, &cred);
    const char *stored = cred ? json_string_value(json_object_get(json_object_get(cred, "status"), "tokenDigest")) : NULL;
    if (e < 0 || !stored || !credential_digest_equal(stored, digest)) {
        json_decref(cred);
        if (e < 0 && e != -ENOENT)
            return api_fail_store(err, e, "Credential", "?");
        return api_fail(err, 401, "unauthenticated", "unknown or revoked credential token");
    }
    const char *user_name = json_string_value(json_object_get(json_object_get(cred, "spec"), "user"));
    json_t *user = NULL;
    e = user_name ? store_get(srv->cfg->store, "User", user_name, &user) : -ENOENT;
    if (e < 0 && e != -ENOENT) {
        json_decref(cred);
        return api_fail_store(err, e, "User", user_name);
    }
    *ret = (caller){.user = user, .credential = cred};
    return 0;
}

/* The caller of a request on api.roleListen: the role its client
 * certificate names (checked during the handshake against the listener's
 * allow-list, proxy and runner) is that role's own identity, its bootstrap
 * credential and workload user, decided like that credential's token would
 * be (a revoked or expired credential, a deleted or disabled user is
 * refused). No token is read there. Returns 0 with *RET, or -1 with ERR. */
static int authenticate_role(api_server *srv, int peer, caller *ret, api_error *err)
{
    const char *role = (size_t)peer < srv->cfg->n_roles ? srv->cfg->roles[peer].name : NULL;
    const char *credential = !role                       ? NULL
                             : strcmp(role, "proxy") == 0 ? BOOTSTRAP_PROXY_CREDENTIAL
                             : strcmp(role, "runner") == 0 ? BOOTSTRAP_RUNNER_CREDENTIAL
                                                           : NULL;
    if (!credential)
        return api_fail(err, 403, "forbidden", "the role certificate names no role that calls the API");
    json_t *cred = NULL, *user = NULL;
    int e = store_get(srv->cfg->store, "Credential", credential, &cred);
    if (e == -ENOENT)
        return api_fail(err, 401, "unauthenticated",
                        "the %s role's credential %s is gone; run cloisterd --init to make it again", role, credential);
    if (e < 0)
        return api_fail_store(err, e, "Credential", credential);
    const char *user_name = json_string_value(json_object_get(json_object_get(cred, "spec"), "user"));
    e = user_name ? store_get(srv->cfg->store, "User", user_name, &user) : -ENOENT;
    if (e < 0 && e != -ENOENT) {
        json_decref(cred);
        return api_fail_store(err, e, "User", user_name);
    }
    caller c = {.user = user, .credential = cred};
    auth_verdict why;
    if (auth_credential_check(c.credential, c.user, (int64_t)(time_now_ns() / NSEC_PER_SEC), &why) < 0) {
        api_fail(err, why.status, why.code, "%s", why.message);
        caller_clear(&c);
        return -1;
    }
    *ret = c;
    return 0;
}

/* Finds the caller from `Authorization: Bearer <credential or access token>`,
 * or on api.roleListen from the role certificate (authenticate_role()). Any
 * failure is a 401 (or 403 for a disabled user); nothing falls through.
 * Verified tokens are cached per thread while the store is unchanged; the
 * credential's expiry, user and uid are decided on every call. */
static int authenticate(api_server *srv, h2o_req_t *req, caller *ret, api_error *err)
{
    int peer = httpd_conn_peer(req);
    if (peer >= 0)
        return authenticate_role(srv, peer, ret, err);
    api_thread *t = (api_thread *)httpd_thread_state(req);
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return api_fail(err, 401, "unauthenticated",
                        "missing Authorization header; send 'Authorization: Bearer <token>' "
                        "(cloister login --token TOKEN)");
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len < 7 || strncasecmp(v.base, "Bearer ", 7) != 0)
        return api_fail(err, 401, "unauthenticated", "Authorization header must use the Bearer scheme");
    const char *token = v.base + 7;
    size_t len = v.len - 7;
    if (!credential_token_well_formed(token, len) && api_token_is_jwt(token, len))
        return api_auth_access_token(srv, token, len, ret, err); /* a session's access token */
    if (!credential_token_well_formed(token, len))
        return api_fail(err, 401, "unauthenticated", "malformed token (expected a clst_… credential token or an access token)");

    char digest[CREDENTIAL_DIGEST_HEX_LEN + 1], key[CREDENTIAL_LOOKUP_KEY_LEN + 1];
    credential_token_digest(token, len, digest, key);
    int64_t revision = store_revision(srv->cfg->store);
    auth_cache_entry *slot = auth_cache_slot(t, key);
    caller c;
    if (slot->credential && slot->revision == revision && strcmp(slot->lookup_key, key) == 0 &&
        credential_digest_equal(slot->digest, digest)) {
        c = (caller){.user = json_incref(slot->user), .credential = json_incref(slot->credential)};
    } else {
        int r = resolve_credential(srv, digest, key, &c, err);
        if (r < 0) {
            explicit_bzero(digest, sizeof(digest));
            return r;
        }
        auth_cache_entry_clear(slot);
        snprintf(slot->lookup_key, sizeof(slot->lookup_key), "%s", key);
        memcpy(slot->digest, digest, sizeof(slot->digest));
        slot->revision = revision;
        slot->user = json_incref(c.user);
        slot->credential = json_incref(c.credential);
    }
    explicit_bzero(digest, sizeof(digest));

    auth_verdict why;
    if (auth_credential_check(c.credential, c.user, (int64_t)(time_now_ns() / NSEC_PER_SEC), &why) < 0) {
        api_fail(err, why.status, why.code, "%s", why.message);
        caller_clear(&c);
        return -1;
    }
    *ret = c;
    return 0;
}

int api_authenticate(api_server *srv, h2o_req_t *req, caller *ret, api_error *err)
{
    return authenticate(srv, req, ret, err);
}

/* The API verb (ctx.request.api.verb) of a resource call on ROUTE. */
static const char *api_verb(api_route route)
{
    switch (route) {
    case ROUTE_LIST:
        return "list";
    case ROUTE_WATCH:
        return "watch";
    case ROUTE_GET:
        return "get";
    default:
        break;
    }
    return ""; /* not a resource call: never decided here */
}

/* Authorizes caller C by policy (ctx.request.api: VERB of ROUTE on KIND/NAME).
 * whoami only shows callers their own identity and is not decided by policy;
 * writes (create, update, delete, apply) are decided on the document and
 * what it adds in the write path (api_decide_writes()). Returns 0 or -1 with
 * ERR. */
static int authorize(api_server *srv, h2o_req_t *req, api_route route, const char *kind, const char *name,
                     const caller *c, api_error *err)
{
    if (route == ROUTE_WHOAMI || route == ROUTE_CREATE || route == ROUTE_REPLACE || route == ROUTE_DELETE ||
        route == ROUTE_APPLY)
        return 0;
    return api_authorize(srv, req, c, api_verb(route), kind, name, err);
}

/* ---- asynchronous writes ---- */

typedef struct write_anchor write_anchor;

/* A write waiting on the store. Owned by the handler until queued, then by
 * the store until done, then by the event loop that frees it. */
typedef struct pending_write {
    h2o_multithread_message_t msg;
    api_thread *thread;
    h2o_req_t *req; /* NULL once the client went away */
    write_anchor *anchor;
    api_route route;
    uint64_t started;
    char user[256];
    api_origin origin; /* for the audit of the write after the client went away */
    json_t *input; /* owns the documents and strings the ops borrow */
    json_t *warnings; /* an apply's warnings (references to missing resources), or NULL */
    json_t *writer;   /* the caller's User, for the audit of a refusal by the store guard */
    json_t *host_additions; /* hosts the write adds to Services (authz_host_additions()), or NULL */
    api_error claim_error;  /* the 409 of hosts_guard()'s last refusal */
    store_txn txn;
    store_op ops[];
} pending_write;

/* Lives in the request's pool; tells the pending write when the request dies. */
struct write_anchor {
    pending_write *pw;
};

static void anchor_dispose(void *p)
{
    write_anchor *a = p;
    if (a->pw)
        a->pw->req = NULL;
}

static pending_write *pending_write_new(h2o_req_t *req, api_route route, uint64_t started,
                                        const caller *c, json_t *input, size_t n_ops)
{
    pending_write *pw = calloc(1, sizeof(*pw) + n_ops * sizeof(store_op));
    if (!pw)
        return NULL;
    pw->thread = (api_thread *)httpd_thread_state(req);
    pw->req = req;
    pw->route = route;
    pw->started = started;
    snprintf(pw->user, sizeof(pw->user), "%s", caller_name(c));
    api_origin_of(req, &pw->origin);
    pw->input = json_incref(input);
    pw->writer = json_incref(c->user);
    pw->txn.ops = pw->ops;
    pw->txn.n_ops = n_ops;
    return pw;
}

static void pending_write_free(pending_write *pw)
{
    store_txn_clear(&pw->txn);
    json_decref(pw->input);
    json_decref(pw->warnings);
    json_decref(pw->writer);
    json_decref(pw->host_additions);
    free(pw);
}

/* The store guard of a write that adds hosts to Services (its pending
 * write in txn->guard_data): api_decide_writes()'s rule on hosts again,
 * inside the transaction, against every Service as it leaves them, so
 * writes decided at once (two requests, two replicas) cannot both claim a
 * host. Runs on the store's writer thread. A refusal is -EADDRINUSE at the
 * Service's op, its 409 kept in claim_error for respond_write(). */
static int hosts_guard(store_txn *txn, store_view *view, size_t *ret_failed_op)
{
    pending_write *pw = txn->guard_data;
    json_auto_t *services = NULL;
    int e = store_view_list(view, "Service", &services);
    if (e < 0)
        return e;
    const char *service = NULL;
    if (authz_check_host_additions(services, pw->host_additions, pw->thread->server->cfg->domain, &service,
                                   &pw->claim_error) == 0)
        return 0;
    if (!service)
        return -ENOMEM;
    for (size_t i = 0; i < txn->n_ops; i++)
        if (strcmp(txn->ops[i].kind, "Service") == 0 && strcmp(txn->ops[i].name, service) == 0)
            *ret_failed_op = i;
    return -EADDRINUSE;
}

/* Guards PW's transaction with hosts_guard() when the N writes W (as
 * decided) add hosts to Services. Returns 0 or -1 with ERR. */
static int guard_hosts(api_server *srv, pending_write *pw, const api_write *w, size_t n, api_error *err)
{
    if (authz_host_additions(w, n, srv->cfg->domain, &pw->host_additions) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    if (json_object_size(pw->host_additions) > 0) {
        pw->txn.guard = hosts_guard;
        pw->txn.guard_data = pw;
    }
    return 0;
}

/* Runs on the store's writer thread: hand the result to the event loop. */
static void on_store_done(store_txn *txn, void *userdata)
{
    pending_write *pw = userdata;
    h2o_multithread_send_message(&pw->thread->write_done, &pw->msg);
}

static void submit_write(api_server *srv, pending_write *pw)
{
    write_anchor *a = h2o_mem_alloc_shared(&pw->req->pool, sizeof(*a), anchor_dispose);
    a->pw = pw;
    pw->anchor = a;
    pw->thread->writes_in_flight++;
    pw->txn.done = on_store_done;
    pw->txn.userdata = pw;
    store_write_async(srv->cfg->store, &pw->txn);
}

/* Reports one applied operation of a write as an audit event. */
static void report_write(const pending_write *pw, const store_op *op)
{
    static const char *const actions[] = {
        [STORE_CREATED] = "resource.create",
        [STORE_CONFIGURED] = "resource.update",
        [STORE_DELETED] = "resource.delete",
    };
    if (op->action == STORE_UNCHANGED)
        return;
    const char *rv = json_string_value(json_object_get(json_object_get(op->result, "metadata"), "resourceVersion"));
    json_t *details = rv ? json_pack("{s:s}", "resourceVersion", rv) : NULL;
    audit_event_emit(&(audit_event){.action = actions[op->action], .user = pw->user, .ip = pw->origin.ip, .kind = op->kind,
                                    .name = op->name, .outcome = "success", .details = details});
    json_decref(details);
}

/* What a completed write leaves behind whether or not its client is still
 * there: the audit events of what it applied (or of the store guard's
 * refusal, audited as api_decide_writes() does), approval requests for
 * new Jobs, a deleted Dataset's blob. Runs on the write's event loop. */
static void settle_write(pending_write *pw)
{
    store_txn *txn = &pw->txn;
    if (txn->error < 0) {
        const store_op *op = &txn->ops[txn->failed_op];
        if (txn->error == -EADDRINUSE && txn->guard)
            api_report_decision_at(&pw->origin, &(caller){.user = pw->writer},
                                   op->type == STORE_CREATE ? "create" : "update", op->kind, op->name,
                                   &pw->claim_error);
        return;
    }
    for (size_t i = 0; i < txn->n_ops; i++) {
        report_write(pw, &txn->ops[i]);
        api_job_written(pw->thread->server, &txn->ops[i]);
    }
    if (pw->route == ROUTE_DELETE && strcmp(txn->ops[0].kind, "Dataset") == 0)
        api_dataset_deleted(pw->thread->server, pw->input);
}

/* Answers a completed write (settled first) on its event loop. */
static void respond_write(pending_write *pw)
{
    h2o_req_t *req = pw->req;
    store_txn *txn = &pw->txn;
    if (txn->error < 0) {
        const store_op *op = &txn->ops[txn->failed_op];
        api_error err;
        if (txn->error == -EADDRINUSE && txn->guard)
            err = pw->claim_error;
        else
            api_fail_store(&err, txn->error, op->kind, op->name);
        if (pw->route == ROUTE_APPLY)
            err.document = (long)txn->failed_op;
        api_respond_error(req, pw->route, pw->started, &err);
        return;
    }
    if (pw->route == ROUTE_APPLY) {
        json_t *items = json_array();
        for (size_t i = 0; i < txn->n_ops; i++) {
            const store_op *op = &txn->ops[i];
            json_array_append_new(
                items, json_pack("{s:s, s:s, s:s, s:O}", "kind", op->kind, "name", op->name, "action",
                                 store_action_name(op->action), "resourceVersion",
                                 json_object_get(json_object_get(op->result, "metadata"), "resourceVersion")));
        }
        json_t *body = json_pack("{s:o, s:O}", "items", items, "warnings", pw->warnings); /* set by handle_apply */
        api_respond_json(req, pw->route, pw->started, 200, body);
        json_decref(body);
    } else if (pw->route == ROUTE_DELETE) {
        json_t *body = json_pack("{s:s, s:s, s:s}", "kind", txn->ops[0].kind, "name", txn->ops[0].name,
                                 "status", "deleted");
        api_respond_json(req, pw->route, pw->started, 200, body);
        json_decref(body);
    } else {
        json_t *body = public_view(txn->ops[0].result);
        api_respond_json(req, pw->route, pw->started, pw->route == ROUTE_CREATE ? 201 : 200, body);
        json_decref(body);
    }
}

static void on_write_done(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        pending_write *pw = H2O_STRUCT_FROM_MEMBER(pending_write, msg.link, messages->next);
        h2o_linklist_unlink(&pw->msg.link);
        pw->thread->writes_in_flight--;
        settle_write(pw);
        if (pw->req) {
            pw->anchor->pw = NULL;
            respond_write(pw);
        }
        pending_write_free(pw);
    }
}

/* ---- resources ---- */

/* metadata.resourceVersion of DOC as a number: 0 when absent, -1 when malformed. */
static int64_t doc_expected_rv(const json_t *doc)
{
    const char *s = json_string_value(json_object_get(json_object_get(doc, "metadata"), "resourceVersion"));
    if (!s || !*s)
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v <= 0)
        return -1;
    return v;
}

/* Checks a document against its kind's schema and the request's path, then
 * fills in its defaults. PATH_KIND is the kind named by the URL (NULL for
 * apply). No secret work here: Secret values are sealed only once the write
 * is decided (seal()). */
static int check_document(json_t *doc, const resource_kind *path_kind, const char *path_name,
                          const resource_kind **ret_kind, api_error *err)
{
    resource_error rerr = {0};
    if (resource_validate(doc, &rerr) < 0) {
        api_fail(err, 400, "invalid", "%s%s%s", rerr.path, rerr.path[0] ? ": " : "", rerr.message);
        snprintf(err->field, sizeof(err->field), "%s", rerr.path);
        return -1;
    }
    if (api_check_policies(doc, err) < 0)
        return -1;
    const resource_kind *k = resource_kind_find(json_string_value(json_object_get(doc, "kind")));
    if (k->server_managed)
        return api_fail(err, 400, "invalid", "%s resources are written by the server only (POST /v1/auth/token)",
                        k->kind);
    if (path_kind && k != path_kind)
        return api_fail(err, 400, "invalid", "kind %s does not match the URL, which names %s", k->kind,
                        path_kind->kind);
    if (path_name && strcmp(doc_name(doc), path_name) != 0)
        return api_fail(err, 400, "invalid", "metadata.name %s does not match the URL, which names %s",
                        doc_name(doc), path_name);
    if (doc_expected_rv(doc) < 0)
        return api_fail(err, 400, "invalid", "metadata.resourceVersion must be a positive decimal number");
    /* stored with its defaults, so re-applying the same manifest changes nothing */
    if (resource_apply_defaults(doc) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    *ret_kind = k;
    return 0;
}

/* Reads the stored KIND/NAME a write is decided against into *RET (a new
 * reference, NULL when absent). Returns 0 or -1 with ERR. */
static int load_stored(api_server *srv, const char *kind, const char *name, json_t **ret, api_error *err)
{
    json_t *doc = NULL;
    int e = store_get(srv->cfg->store, kind, name, &doc);
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, kind, name);
    *ret = doc;
    return 0;
}

/* Makes store op OP a compare-and-swap on STORED, the document its write was
 * decided against, so nothing can slip in between the decision and the
 * write: absent, OP is a create or replace, which fails when it appeared
 * since (409, or 404 for a replace); present, OP expects its
 * resourceVersion (409 when changed since). A resourceVersion the client gave
 * must be the one read. Returns 0 or -1 with ERR. */
static int expect_stored(store_op *op, const json_t *stored, api_error *err)
{
    if (!stored)
        return 0;
    int64_t rv = doc_expected_rv(stored), client = doc_expected_rv(op->doc);
    if (client > 0 && client != rv)
        return api_fail_store(err, -ESTALE, op->kind, op->name);
    op->expected_rv = rv;
    return 0;
}

/* Sealing the Secret values of a decided write: KMS work, off the loop. */
typedef struct seal_job {
    offload_job super;
    api_server *srv;
    pending_write *pw; /* owned until submitted */
    int rc;
    api_error err;
} seal_job;

/* Whether OP of PW needs the KMS before it is written: a Secret's values
 * are sealed, a new Workspace gets its key, a deleted one loses it (the
 * key its stored status names: api_workspace_delete_input()). */
static bool op_seals(const pending_write *pw, const store_op *op)
{
    if (op->type == STORE_DELETE)
        return strcmp(op->kind, "Workspace") == 0 && json_object_get(pw->input, "workspaceKey");
    return op->doc && (strcmp(op->kind, "Secret") == 0 || (op->type == STORE_CREATE && strcmp(op->kind, "Workspace") == 0));
}

/* A new Workspace's key, made by the KMS: its server-owned status
 * {recipient, key} goes into OP's document, which owns it. */
static int make_workspace_key(store_op *op, api_error *err)
{
    json_t *status;
    if (api_kms_workspace_key(&status, err) < 0)
        return -1;
    if (json_object_set_new(op->doc, "status", status) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    op->status = status;
    return 0;
}

static void seal_work(offload_job *j)
{
    seal_job *job = (seal_job *)j;
    store_txn *txn = &job->pw->txn;
    for (size_t i = 0; i < txn->n_ops && job->rc == 0; i++) {
        store_op *op = &txn->ops[i];
        if (!op_seals(job->pw, op))
            continue;
        /* a deleted Workspace's key goes first: were the Workspace deleted
         * first, nothing would name the key any more to destroy it later */
        if (op->type == STORE_DELETE)
            job->rc = api_kms_destroy_workspace_key(op->name, json_string_value(json_object_get(job->pw->input,
                                                                                              "workspaceKey")),
                                                    job->pw->user, job->pw->origin.ip, &job->err);
        else
            job->rc = strcmp(op->kind, "Secret") == 0 ? api_kms_seal_secret(op->doc, &job->err)
                                                      : make_workspace_key(op, &job->err);
        if (job->rc < 0)
            job->err.document = job->pw->route == ROUTE_APPLY ? (long)i : -1;
    }
}

/* Writes the sealed documents, or answers why they could not be sealed;
 * a write whose client went away before it was sealed is dropped. */
static void seal_done(offload_job *j, h2o_req_t *req)
{
    seal_job *job = (seal_job *)j;
    pending_write *pw = job->pw;
    if (req && job->rc == 0)
        submit_write(job->srv, pw);
    else {
        if (req)
            api_respond_error(req, pw->route, pw->started, &job->err);
        pending_write_free(pw);
    }
    free(job);
}

/* Submits PW (taken over, also on failure) to the store, once the values
 * of its Secrets are sealed by the KMS (off the loop) when it has any.
 * Returns 0 (the answer follows), or -1 with ERR. */
static int seal_and_submit(api_server *srv, h2o_req_t *req, pending_write *pw, api_error *err)
{
    bool seals = false;
    for (size_t i = 0; i < pw->txn.n_ops; i++)
        seals |= op_seals(pw, &pw->txn.ops[i]);
    if (!seals) {
        submit_write(srv, pw);
        return 0;
    }
    seal_job *job = calloc(1, sizeof(*job));
    if (job)
        *job = (seal_job){.super = {.work = seal_work, .done = seal_done}, .srv = srv, .pw = pw};
    api_request r = {.server = srv, .req = req, .route = pw->route, .started = pw->started};
    int e = job ? api_offload(&r, srv->local, &job->super, err) : api_fail(err, 500, "internal", "out of memory");
    if (e < 0) {
        err->document = -1;
        free(job);
        pending_write_free(pw);
    }
    return e;
}

/* POST, PUT or DELETE of one resource of KIND (NAME from the URL, NULL for
 * POST): checked, decided with what it adds over the stored document, sealed
 * when a Secret, then written as a compare-and-swap on what was decided. The
 * answer follows once durable; returns 0, or -1 with ERR. */
static int handle_write_one(api_server *srv, h2o_req_t *req, api_route route, uint64_t started, const caller *c,
                            const resource_kind *kind, const char *name, api_error *err)
{
    json_auto_t *input = NULL, *stored = NULL;
    json_t *doc = NULL;
    if (route == ROUTE_DELETE) {
        /* owns the name, and what dies with the object, for the asynchronous write */
        if (api_auth_delete_input(srv, kind->kind, name, &input, err) < 0 ||
            (strcmp(kind->kind, "Dataset") == 0 && api_dataset_delete_input(srv, name, input, err) < 0))
            return -1;
        name = json_string_value(json_object_get(input, "name"));
    } else {
        input = api_decode_body(req->entity.base, req->entity.len, err);
        const resource_kind *k;
        if (!input || check_document(input, kind, name, &k, err) < 0)
            return -1;
        doc = input;
        name = doc_name(doc);
    }
    if (route == ROUTE_REPLACE && load_stored(srv, kind->kind, name, &stored, err) < 0)
        return -1;
    api_write w = {.verb = route == ROUTE_CREATE ? "create" : route == ROUTE_REPLACE ? "update" : "delete",
                   .kind = kind->kind, .name = name, .doc = doc, .stored = stored};
    store_op op = {
        .type = route == ROUTE_CREATE ? STORE_CREATE : route == ROUTE_REPLACE ? STORE_REPLACE : STORE_DELETE,
        .kind = kind->kind,
        .name = name,
        .doc = doc,
    };
    if (api_decide_writes(srv, req, c, &w, 1, err) < 0) {
        err->document = -1;
        return -1;
    }
    /* decided first: only a caller who may delete it learns what refers to it */
    if (route == ROUTE_DELETE && !api_query_flag(req, "force") &&
        api_check_unreferenced(srv, kind->kind, name, json_object_get(input, "dependents"), err) < 0)
        return -1;
    if (route == ROUTE_DELETE && strcmp(kind->kind, "Workspace") == 0 &&
        api_workspace_delete_input(srv, name, input, &op, err) < 0)
        return -1;
    if (expect_stored(&op, stored, err) < 0)
        return -1;
    size_t n_dependents = route == ROUTE_DELETE ? json_array_size(json_object_get(input, "dependents")) : 0;
    pending_write *pw = pending_write_new(req, route, started, c, input, 1 + n_dependents);
    if (!pw)
        return api_fail(err, 500, "internal", "out of memory");
    pw->ops[0] = op;
    if (guard_hosts(srv, pw, &w, 1, err) < 0) {
        pending_write_free(pw);
        return -1;
    }
    if (route == ROUTE_DELETE)
        api_auth_dependent_ops(pw->input, pw->ops + 1);
    api_auth_bind_credential(&pw->ops[0]);
    if (api_dataset_set_owner(&pw->ops[0], c) < 0) {
        pending_write_free(pw);
        return api_fail(err, 500, "internal", "out of memory");
    }
    if (api_job_prepare(srv, req, c, &pw->ops[0], stored, err) < 0) {
        pending_write_free(pw);
        return -1;
    }
    return seal_and_submit(srv, req, pw, err); /* Secret values go to the KMS only now, decided */
}

/* Answers a dry-run apply PW (every document checked and decided, KINDS
 * and W its kinds and writes) with what each would do, and frees PW:
 * nothing was sealed or written. Returns 0. */
static int respond_dry_run(pending_write *pw, const resource_kind *const *kinds, const api_write *w)
{
    json_t *out = json_array();
    for (size_t i = 0; out && i < pw->txn.n_ops; i++)
        if (json_array_append_new(out, api_dry_run_item(kinds[i], pw->ops[i].doc, w[i].stored, pw->ops[i].status)) < 0)
            json_decref(TAKE_PTR(out));
    json_t *body = out ? json_pack("{s:b, s:o, s:O}", "dryRun", true, "items", out, "warnings", pw->warnings) : NULL;
    if (body)
        api_respond_json(pw->req, ROUTE_APPLY, pw->started, 200, body);
    else {
        api_error err;
        api_fail(&err, 500, "internal", "out of memory");
        api_respond_error(pw->req, ROUTE_APPLY, pw->started, &err);
    }
    json_decref(body);
    pending_write_free(pw);
    return 0;
}

/* Checks document I of an apply (DOC) against its schema and the documents
 * W[0..I) before it, and reads the stored one it is decided against into
 * *RET_STORED (NULL when absent). Returns 0, or -1 with ERR (its document
 * index still -1, for the caller to set). */
static int check_apply_document(api_server *srv, json_t *doc, const api_write *w, size_t i,
                                const resource_kind **ret_kind, json_t **ret_stored, api_error *err)
{
    const resource_kind *k;
    if (check_document(doc, NULL, NULL, &k, err) < 0)
        return -1;
    for (size_t j = 0; j < i; j++)
        if (w[j].kind == k->kind && strcmp(w[j].name, doc_name(doc)) == 0)
            return api_fail(err, 400, "invalid", "%s %s appears twice in one apply (documents %zu and %zu)", k->kind,
                            doc_name(doc), j, i);
    if (load_stored(srv, k->kind, doc_name(doc), ret_stored, err) < 0)
        return -1;
    *ret_kind = k;
    return 0;
}

/* POST /v1/apply {items}: each document checked, then every one decided as
 * create (absent) or update (present) with what it adds, before any Secret
 * is sealed; then all written in one transaction, each a compare-and-swap on
 * the stored document it was decided against. The answer carries warnings
 * about references to missing resources. With ?dryRun=1 everything up to
 * the write is done the same way, and then nothing is sealed or written:
 * the answer says what each document would do (api_dry_run_item()).
 * Returns 0 or -1 with ERR (err->document naming the document). */
static int handle_apply(api_server *srv, h2o_req_t *req, uint64_t started, const caller *c, api_error *err)
{
    json_auto_t *body = api_decode_body(req->entity.base, req->entity.len, err);
    if (!body)
        return -1;
    json_t *items = json_object_get(body, "items");
    if (!json_is_array(items) || json_array_size(items) == 0)
        return api_fail(err, 400, "invalid", "apply needs {\"items\": [document, ...]} with at least one document");
    size_t n = json_array_size(items);
    if (n > API_APPLY_ITEMS_MAX)
        return api_fail(err, 413, "too_large", "apply takes at most %d documents, got %zu", API_APPLY_ITEMS_MAX, n);
    _cleanup_free_ api_write *w = calloc(n, sizeof(*w));
    _cleanup_free_ const resource_kind **kinds = calloc(n, sizeof(*kinds));
    json_auto_t *stored = json_array(); /* owns w[i].stored; null when absent */
    if (!w || !kinds || !stored)
        return api_fail(err, 500, "internal", "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *doc = json_array_get(items, i), *old = NULL;
        int r = check_apply_document(srv, doc, w, i, &kinds[i], &old, err);
        if (r == 0 && json_array_append_new(stored, old ? old : json_null()) < 0)
            r = api_fail(err, 500, "internal", "out of memory");
        if (r < 0) {
            err->document = (long)i;
            return -1;
        }
        w[i] = (api_write){.verb = old ? "update" : "create", .kind = kinds[i]->kind, .name = doc_name(doc),
                           .doc = doc, .stored = old};
    }
    if (api_decide_writes(srv, req, c, w, n, err) < 0)
        return -1;
    bool dry_run = api_query_flag(req, "dryRun");
    pending_write *pw = pending_write_new(req, ROUTE_APPLY, started, c, body, n);
    if (pw)
        pw->warnings = api_apply_warnings(srv, req, c, items);
    if (!pw || !pw->warnings || guard_hosts(srv, pw, w, n, err) < 0) {
        if (pw)
            pending_write_free(pw);
        return api_fail(err, 500, "internal", "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *doc = json_array_get(items, i);
        pw->ops[i] = (store_op){.type = w[i].stored ? STORE_REPLACE : STORE_CREATE, .kind = w[i].kind,
                                .name = w[i].name, .doc = doc};
        if (expect_stored(&pw->ops[i], w[i].stored, err) < 0) {
            err->document = (long)i;
            pending_write_free(pw);
            return -1;
        }
        api_auth_bind_credential(&pw->ops[i]);
        if (api_dataset_set_owner(&pw->ops[i], c) < 0) {
            pending_write_free(pw);
            return api_fail(err, 500, "internal", "out of memory");
        }
        if (api_job_prepare(srv, req, c, &pw->ops[i], w[i].stored, err) < 0) {
            err->document = (long)i;
            pending_write_free(pw);
            return -1;
        }
    }
    if (dry_run)
        return respond_dry_run(pw, kinds, w);
    /* only now, every document decided: Secret values go to the KMS */
    return seal_and_submit(srv, req, pw, err);
}

static void handle_get(api_server *srv, h2o_req_t *req, uint64_t started, const resource_kind *kind,
                       const char *name)
{
    json_t *doc;
    api_error err;
    int e = store_get(srv->cfg->store, kind->kind, name, &doc);
    if (e < 0) {
        api_fail_store(&err, e, kind->kind, name);
        api_respond_error(req, ROUTE_GET, started, &err);
        return;
    }
    json_t *v = public_view(doc);
    api_respond_json(req, ROUTE_GET, started, 200, v);
    json_decref(v);
    json_decref(doc);
}

/* Lists KIND for caller C; of Datasets and Jobs, only those C may get (a
 * workspace member sees their workspaces' datasets and jobs). */
static void handle_list(api_server *srv, h2o_req_t *req, uint64_t started, const resource_kind *kind, const caller *c)
{
    json_t *items;
    int64_t rev;
    api_error err;
    int e = store_list(srv->cfg->store, kind->kind, &items, &rev);
    if (e < 0) {
        api_fail_store(&err, e, kind->kind, "*");
        api_respond_error(req, ROUTE_LIST, started, &err);
        return;
    }
    json_t *out = json_array();
    size_t i;
    json_t *doc;
    bool each = strcmp(kind->kind, "Dataset") == 0 || strcmp(kind->kind, "Job") == 0;
    json_array_foreach(items, i, doc)
    {
        if (!each || api_may(srv, req, c, "get", kind->kind, doc_name(doc)))
            json_array_append_new(out, public_view(doc));
    }
    json_decref(items);
    char rvs[24];
    snprintf(rvs, sizeof(rvs), "%lld", (long long)rev);
    json_t *body = json_pack("{s:s, s:s, s:{s:s}, s:o}", "apiVersion", "cloister.dev/v1", "kind", "List",
                             "metadata", "resourceVersion", rvs, "items", out);
    api_respond_json(req, ROUTE_LIST, started, 200, body);
    json_decref(body);
}

/* ---- watch (Server-Sent Events) ---- */

/* A watch stream of one kind (the stream machinery is sse.c's). */
typedef struct watcher {
    api_sse super;
    const char *kind;
    int64_t revision;
} watcher;

/* A poll tick: queues the changes of the kind after the stream's revision;
 * a revision older than the kept history ends the stream ("gone"). */
static void watcher_poll(api_sse *s)
{
    watcher *w = (watcher *)s;
    json_t *events;
    if (api_sse_changes(s, w->kind, w->revision, WATCH_BATCH_MAX, &events) < 0)
        return;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        int64_t rev = json_integer_value(json_object_get(ev, "revision"));
        json_t *obj = json_object_get(ev, "object");
        json_t *pub = public_view(obj);
        json_object_set_new(ev, "object", pub);
        if (api_sse_queue_event(s, json_string_value(json_object_get(ev, "type")), rev, ev) < 0) {
            json_decref(events);
            api_sse_fail(&w->super, "too_large", "the client does not read the stream fast enough (more than 4 MiB waits "
                                           "to be sent); watch again from the last revision received");
            return;
        }
        w->revision = rev;
    }
    json_decref(events);
}

/* Re-decides the stream (sse.c calls this every API_SSE_RECHECK_NS): a
 * caller who lost the session, the credential or the right to watch the
 * kind gets an ERROR event (forbidden or unauthenticated) and the end. */
static void watcher_recheck(api_sse *s)
{
    watcher *w = (watcher *)s;
    api_error err;
    if (api_sse_redecide(s, "watch", w->kind, "", &err) < 0)
        api_sse_fail(&w->super, err.code, err.message);
}

static const api_sse_class watcher_class = {
    .size = sizeof(watcher),
    .route = ROUTE_WATCH,
    .buffer_max = WATCH_BUFFER_MAX,
    .heartbeat_ns = WATCH_HEARTBEAT_NS,
    .heartbeat = ": heartbeat\n\n",
    .poll = watcher_poll,
    .recheck = watcher_recheck,
};

/* Opens a watch stream of KIND for the caller C (counted against their
 * stream cap: 429 past it). */
static void handle_watch(api_server *srv, h2o_req_t *req, uint64_t started, const resource_kind *kind,
                         int64_t from_revision, const caller *c)
{
    api_error err;
    watcher *w = (watcher *)api_sse_new(req, started, &watcher_class, c->user, &err);
    if (!w) {
        api_respond_error(req, ROUTE_WATCH, started, &err);
        return;
    }
    w->kind = kind->kind;
    if (from_revision > 0)
        w->revision = from_revision;
    else {
        /* the current state first, then every change after it */
        json_t *items;
        int e = store_list(srv->cfg->store, kind->kind, &items, &w->revision);
        if (e < 0) {
            api_fail_store(&err, e, kind->kind, "*");
            api_respond_error(req, ROUTE_WATCH, started, &err);
            return;
        }
        size_t i;
        json_t *doc;
        json_array_foreach(items, i, doc)
        {
            json_t *ev = json_pack("{s:s, s:I, s:o}", "type", "ADDED", "revision", (json_int_t)w->revision,
                                   "object", public_view(doc));
            e = api_sse_queue_event(&w->super, "ADDED", w->revision, ev);
            json_decref(ev);
            if (e < 0)
                break;
        }
        json_decref(items);
        if (e < 0) /* no partial state: the stream ends at once */
            api_sse_fail(&w->super, "too_large", "the current resources do not fit in a watch stream's 4 MiB buffer; "
                                           "list them, then watch with ?resourceVersion=<the list's>");
    }
    if (!w->super.finishing)
        api_sse_queue_text(&w->super, ": watching\n\n");
    api_sse_start(&w->super);
}

/* ---- health, metrics, whoami ---- */

/* The state of each role that should run into ROLES (name -> ready,
 * starting, sealed, stale), and a problem naming each one not ready into
 * PROBLEMS: serving, the KMS unsealed, the proxy heard from its
 * configuration stream within PROXY_CONFIG_MAX_AGE_S. */
static void roles_readiness(const api_config *cfg, json_t *roles, json_t *problems)
{
    char problem[200];
    for (size_t i = 0; i < cfg->n_roles; i++) {
        const role_health *role = &cfg->roles[i];
        if (!atomic_load(&role->wanted))
            continue;
        const char *state = "ready";
        uint64_t age = 0;
        problem[0] = 0;
        if (!atomic_load(&role->ready)) {
            state = "starting";
            snprintf(problem, sizeof(problem), "%s: starting (not serving yet)", role->name);
        } else if (atomic_load(&role->sealed)) {
            state = "sealed";
            snprintf(problem, sizeof(problem), "%s: sealed (seal %s); run cloisterd unseal", role->name,
                     cfg->seal_mode ? cfg->seal_mode : "?");
        } else if (strcmp(role->name, "proxy") == 0 && cfg->proxy_metrics) {
            int e = proxy_metrics_config_age(cfg->proxy_metrics, time_mono_ns(), &age);
            if (e == -EAGAIN) {
                state = "starting";
                snprintf(problem, sizeof(problem), "proxy: no configuration from the API yet (waiting %llu s)",
                         (unsigned long long)(age / NSEC_PER_SEC));
            } else if (e == 0 && age > PROXY_CONFIG_MAX_AGE_S * NSEC_PER_SEC) {
                state = "stale";
                snprintf(problem, sizeof(problem), "proxy: no configuration from the API for %llu s",
                         (unsigned long long)(age / NSEC_PER_SEC));
            }
        }
        json_object_set_new(roles, role->name, json_string(state));
        if (problem[0])
            json_array_append_new(problems, json_string(problem));
    }
}

/* /healthz, liveness: 200 {"status":"ok","roles":{…}} while the API serves
 * (503 "stopping" once it drains), whatever the other parts say: a probe
 * that restarts what fails it must not restart a process waiting for
 * `cloisterd unseal`. No credential. */
static void handle_healthz(api_server *srv, h2o_req_t *req, uint64_t started)
{
    json_t *roles = json_object(), *problems = json_array();
    roles_readiness(srv->cfg, roles, problems);
    json_decref(problems);
    bool stopping = httpd_stopping(req);
    json_t *body = json_pack("{s:s, s:o}", "status", stopping ? "stopping" : "ok", "roles", roles);
    api_respond_json(req, ROUTE_HEALTHZ, started, stopping ? 503 : 200, body);
    json_decref(body);
}

/* /readyz, readiness: 200 {"status":"ok", …} when every role that should
 * run serves, the KMS is unsealed, the store answers a read, the API's
 * audit events reach the audit role and the proxy hears from its
 * configuration stream; else 503 {"status":"unavailable"} with a problem
 * naming each part that is not ready. Also says the seal (mode, sealed),
 * the store (driver, reachable), the audit log (reachable) and the
 * replicas (this release: one of each role). No credential: load balancers and
 * supervisors ask it, and `cloister status` shows it. */
static void handle_readyz(api_server *srv, h2o_req_t *req, uint64_t started)
{
    const api_config *cfg = srv->cfg;
    json_t *roles = json_object(), *problems = json_array(), *replicas = json_object();
    if (httpd_stopping(req))
        json_array_append_new(problems, json_string("api: stopping"));
    roles_readiness(cfg, roles, problems);
    bool sealed = false;
    for (size_t i = 0; i < cfg->n_roles; i++) {
        if (atomic_load(&cfg->roles[i].wanted))
            json_object_set_new(replicas, cfg->roles[i].name, json_integer(1));
        if (strcmp(cfg->roles[i].name, "kms") == 0)
            sealed = atomic_load(&cfg->roles[i].sealed);
    }
    /* a kms role on another machine: what it last said of itself */
    bool kms_reachable;
    char remote_mode[16];
    const char *seal_mode = cfg->seal_mode ? cfg->seal_mode : "unknown";
    if (api_kms_remote_status(&kms_reachable, &sealed, remote_mode)) {
        seal_mode = remote_mode;
        json_object_set_new(roles, "kms", json_string(!kms_reachable ? "unreachable" : sealed ? "sealed" : "ready"));
        if (!kms_reachable)
            json_array_append_new(problems, json_string("kms: unreachable at peers.kms (the api role logs why)"));
        else if (sealed)
            json_array_append_new(problems, json_string("kms: sealed; run cloisterd unseal --kms URL --pki-dir DIR"));
    }
    /* a read of one row: the store answers (found or not) */
    json_t *doc = NULL;
    int r = store_get(cfg->store, "Group", "admins", &doc);
    json_decref(doc);
    bool reachable = r == 0 || r == -ENOENT;
    if (!reachable) {
        char problem[200];
        snprintf(problem, sizeof(problem), "store: unreachable (%s)", strerror(-r));
        json_array_append_new(problems, json_string(problem));
    }
    /* this process's events reach the audit role (its last delivery went through) */
    bool audited = audit_event_deliverable();
    if (!audited)
        json_array_append_new(problems, json_string("audit: events do not reach the audit log (the last delivery "
                                                    "failed or the queue is full)"));
    bool ok = json_array_size(problems) == 0;
    json_t *body = json_pack("{s:s, s:o, s:{s:s, s:b}, s:{s:s, s:b}, s:{s:b}, s:o, s:o}", "status",
                             ok ? "ok" : "unavailable", "roles", roles, "seal", "mode", seal_mode, "sealed", sealed,
                             "store", "driver",
                             cfg->store_driver ? cfg->store_driver : "unknown", "reachable", reachable, "audit",
                             "reachable", audited, "replicas", replicas, "problems", problems);
    api_respond_json(req, ROUTE_READYZ, started, ok ? 200 : 503, body);
    json_decref(body);
}

int api_metrics_text(const api_config *cfg, strbuf *out)
{
    int r = metrics_render(out);
    unsigned streams;
    uint64_t too_slow;
    api_sse_counts(&streams, &too_slow);
    if (r == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_api_streams_open Watch and configuration streams open (at most %d per user, "
                          "%d in all).\n"
                          "# TYPE cloister_api_streams_open gauge\n"
                          "cloister_api_streams_open %u\n"
                          "# HELP cloister_api_streams_too_slow_total Streams ended because more than their buffer cap "
                          "waited to be sent.\n"
                          "# TYPE cloister_api_streams_too_slow_total counter\n"
                          "cloister_api_streams_too_slow_total %llu\n",
                          API_SSE_PER_USER_MAX, API_SSE_TOTAL_MAX, streams, (unsigned long long)too_slow);
    if (r == 0 && cfg->proxy_metrics)
        r = proxy_metrics_render(cfg->proxy_metrics, out);
    if (r == 0)
        r = metrics_render_roles(cfg->roles, cfg->n_roles, out);
    if (r == 0)
        r = controller_metrics_render(cfg->controller, out);
    return r;
}

/* /metrics: the Prometheus text of the API, its streams and the proxy, for
 * a caller authenticated as any API call and allowed `get` on kind Metrics
 * (401 / 403 JSON otherwise). */
static void handle_metrics(api_server *srv, h2o_req_t *req, uint64_t started)
{
    caller c = {0};
    api_error err;
    int denied = authenticate(srv, req, &c, &err);
    if (denied < 0)
        api_report_refusal(req, &c, &err);
    else /* audits a refusal itself */
        denied = api_authorize(srv, req, &c, "get", "Metrics", "", &err);
    caller_clear(&c);
    if (denied < 0) {
        api_respond_error(req, ROUTE_METRICS, started, &err);
        return;
    }
    _cleanup_strbuf_ strbuf out;
    strbuf_init(&out, 4 * 1024 * 1024);
    api_metrics_text(srv->cfg, &out);
    telemetry_metrics_render(&out);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/plain; version=0.0.4; charset=utf-8"));
    req->res.content_length = out.len;
    h2o_send_inline(req, out.data ? out.data : "", out.len);
    api_finish(ROUTE_METRICS, started, 200);
}

static void handle_whoami(h2o_req_t *req, uint64_t started, const caller *c)
{
    json_t *spec = json_object_get(c->user, "spec");
    json_t *groups = json_object_get(spec, "groups");
    /* credential is null for sessions opened through an identity provider */
    /* publicKeys: the keys the user registered (keys register), null before */
    json_t *keys = json_object_get(json_object_get(c->user, "status"), "publicKeys");
    json_t *body = json_pack("{s:s, s:s, s:s, s:o, s:s?}", "user", caller_name(c), "type",
                             json_string_value(json_object_get(spec, "type")) ?: "human", "email",
                             json_string_value(json_object_get(spec, "email")) ?: "", "groups",
                             groups ? json_incref(groups) : json_array(), "credential", doc_name(c->credential));
    if (body && json_is_object(keys))
        json_object_set(body, "publicKeys", keys);
    api_respond_json(req, ROUTE_WHOAMI, started, 200, body);
    json_decref(body);
}

/* ---- routing ---- */


/* Serves REQ when its path is /v1/PLURAL/NAME/SUB of a registered
 * sub-resource (request.c); returns whether it did. */
static bool handle_subresource(api_server *srv, h2o_req_t *req, uint64_t started)
{
    h2o_iovec_t path = req->path_normalized;
    if (path.len <= 4 || memcmp(path.base, "/v1/", 4) != 0)
        return false;
    const char *a = path.base + 4, *end = path.base + path.len;
    const char *s1 = memchr(a, '/', (size_t)(end - a));
    const char *s2 = s1 ? memchr(s1 + 1, '/', (size_t)(end - s1 - 1)) : NULL;
    if (!s2 || memchr(s2 + 1, '/', (size_t)(end - s2 - 1)) || s2 == s1 + 1)
        return false;
    const api_subresource *sr = NULL;
    for (size_t i = 0; i < api_n_subresources && !sr; i++)
        if (h2o_memis(a, (size_t)(s1 - a), api_subresources[i].plural, strlen(api_subresources[i].plural)) &&
            h2o_memis(s2 + 1, (size_t)(end - s2 - 1), api_subresources[i].sub, strlen(api_subresources[i].sub)))
            sr = &api_subresources[i];
    if (!sr)
        return false;
    char name[256] = ""; /* a longer one stays "", an invalid name the handler refuses */
    size_t nlen = (size_t)(s2 - s1 - 1);
    if (nlen < sizeof(name)) {
        memcpy(name, s1 + 1, nlen);
        name[nlen] = '\0';
    }
    api_error err;
    caller c = {0};
    if (authenticate(srv, req, &c, &err) < 0) {
        api_report_refusal(req, &c, &err);
        api_respond_error(req, sr->route, started, &err);
    } else {
        api_request r = {.server = srv, .req = req, .route = sr->route, .started = started, .caller = &c};
        if (sr->handle(&r, name, &err) < 0)
            api_respond_error(req, sr->route, started, &err);
    }
    caller_clear(&c);
    return true;
}

/* Serves REQ when its path is /v1/PLURAL/NAME/referrers of any kind
 * (api_handle_referrers()); returns whether it did. */
static bool handle_referrers_path(api_server *srv, h2o_req_t *req, uint64_t started)
{
    static const char suffix[] = "/referrers";
    h2o_iovec_t path = req->path_normalized;
    size_t n = sizeof(suffix) - 1;
    if (path.len <= 4 + n || memcmp(path.base, "/v1/", 4) != 0 || memcmp(path.base + path.len - n, suffix, n) != 0)
        return false;
    char middle[256]; /* PLURAL/NAME */
    size_t mlen = path.len - 4 - n;
    if (mlen >= sizeof(middle))
        return false;
    memcpy(middle, path.base + 4, mlen);
    middle[mlen] = 0;
    char *slash = strchr(middle, '/');
    if (!slash || strchr(slash + 1, '/'))
        return false;
    *slash = 0;
    const resource_kind *kind = resource_kind_find(middle);
    if (!kind || strcmp(kind->plural, middle) != 0)
        return false;
    api_error err;
    caller c = {0};
    if (authenticate(srv, req, &c, &err) < 0) {
        api_report_refusal(req, &c, &err);
        api_respond_error(req, ROUTE_REFERRERS, started, &err);
    } else if (!resource_name_valid(slash + 1)) {
        api_fail(&err, 404, "not_found", "%s '%s' not found (not a valid name)", kind->kind, slash + 1);
        api_respond_error(req, ROUTE_REFERRERS, started, &err);
    } else
        api_handle_referrers(srv, req, started, &c, kind, slash + 1);
    caller_clear(&c);
    return true;
}

static int route_req(h2o_handler_t *self, h2o_req_t *req)
{
    api_server *srv = ((api_handler *)self)->server;
    uint64_t started = time_mono_ns();
    api_error err;
    h2o_iovec_t path = req->path_normalized;
    const char *why;

    if (httpd_framing_check(req, &why) < 0) { /* before anything of the request is read */
        api_fail(&err, 400, "bad_request", "ambiguous request refused: %s", why);
        api_respond_error(req, ROUTE_OTHER, started, &err);
        return 0;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/healthz"))) {
        if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
            api_method_not_allowed(req, ROUTE_HEALTHZ, started, "GET");
        else
            handle_healthz(srv, req, started);
        return 0;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/readyz"))) {
        if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
            api_method_not_allowed(req, ROUTE_READYZ, started, "GET");
        else
            handle_readyz(srv, req, started);
        return 0;
    }
    if (h2o_memis(path.base, path.len, H2O_STRLIT("/metrics"))) {
        if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
            api_method_not_allowed(req, ROUTE_METRICS, started, "GET");
        else
            handle_metrics(srv, req, started);
        return 0;
    }

    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/version"))) {
        api_handle_version(req, started);
        return 0;
    }

    /* endpoint groups served by other components (request.c) */
    for (size_t g = 0; g < api_n_endpoint_groups; g++) {
        const api_endpoint_group *grp = &api_endpoint_groups[g];
        size_t plen = strlen(grp->prefix);
        if (path.len < plen || memcmp(path.base, grp->prefix, plen) != 0)
            continue;
        /* the handler decides on the object it touches (request.h) */
        caller c = {0};
        if (grp->access == API_GROUP_AUTHENTICATED && authenticate(srv, req, &c, &err) < 0) {
            api_report_refusal(req, &c, &err);
            api_respond_error(req, grp->route, started, &err);
        } else {
            api_request r = {.server = srv, .req = req, .route = grp->route, .started = started, .caller = &c};
            if (grp->handle(&r, path.base + plen, path.len - plen, &err) < 0)
                api_respond_error(req, grp->route, started, &err);
        }
        caller_clear(&c);
        return 0;
    }

    if (h2o_memis(path.base, path.len, H2O_STRLIT("/v1/jobs/engine"))) {
        api_handle_job_engine(srv, req, started);
        return 0;
    }
    if (handle_subresource(srv, req, started) || handle_referrers_path(srv, req, started))
        return 0;

    /* /v1/<a>[/<b>] */
    char seg_a[64] = "", seg_b[256] = "";
    int n_seg = 0;
    if (path.len > 4 && memcmp(path.base, "/v1/", 4) == 0) {
        const char *a = path.base + 4, *end = path.base + path.len;
        const char *slash = memchr(a, '/', (size_t)(end - a));
        const char *a_end = slash ? slash : end;
        if (a_end > a && (size_t)(a_end - a) < sizeof(seg_a)) {
            memcpy(seg_a, a, (size_t)(a_end - a));
            n_seg = 1;
            if (slash) {
                const char *b = slash + 1;
                if (b < end && !memchr(b, '/', (size_t)(end - b)) && (size_t)(end - b) < sizeof(seg_b)) {
                    memcpy(seg_b, b, (size_t)(end - b));
                    n_seg = 2;
                } else
                    n_seg = -1;
            }
        }
    }
    if (n_seg <= 0) {
        api_fail(&err, 404, "not_found", "no such endpoint: %.*s", (int)MIN(path.len, (size_t)200), path.base);
        api_respond_error(req, ROUTE_OTHER, started, &err);
        return 0;
    }

    api_route route = ROUTE_OTHER;
    const resource_kind *kind = NULL;
    if (n_seg == 1 && strcmp(seg_a, "whoami") == 0)
        route = ROUTE_WHOAMI;
    else if (n_seg == 1 && strcmp(seg_a, "apply") == 0)
        route = ROUTE_APPLY;
    else {
        kind = resource_kind_find(seg_a);
        if (!kind || strcmp(kind->plural, seg_a) != 0) {
            api_fail(&err, 404, "not_found", "unknown resource kind '%s' in the URL; use the lower-case plural, e.g. /v1/services",
                     seg_a);
            api_respond_error(req, ROUTE_OTHER, started, &err);
            return 0;
        }
        char watch[8];
        if (n_seg == 1)
            route = api_method_is(req, "POST") ? ROUTE_CREATE
                    : (api_query_param(req, "watch", watch, sizeof(watch)) && (strcmp(watch, "1") == 0 || strcmp(watch, "true") == 0))
                        ? ROUTE_WATCH
                        : ROUTE_LIST;
        else
            route = api_method_is(req, "PUT") ? ROUTE_REPLACE : api_method_is(req, "DELETE") ? ROUTE_DELETE : ROUTE_GET;
    }

    /* every /v1 call is authenticated and authorized before anything else */
    caller c = {0};
    int denied = authenticate(srv, req, &c, &err);
    if (denied < 0)
        api_report_refusal(req, &c, &err);
    else /* audits a refusal itself */
        denied = authorize(srv, req, route, kind ? kind->kind : "", n_seg == 2 ? seg_b : "", &c, &err);
    if (denied < 0) {
        caller_clear(&c);
        api_respond_error(req, route, started, &err);
        return 0;
    }

    int r = 0;
    switch (route) {
    case ROUTE_WHOAMI:
        if (!api_method_is(req, "GET"))
            api_method_not_allowed(req, route, started, "GET");
        else
            handle_whoami(req, started, &c);
        break;
    case ROUTE_APPLY:
        if (!api_method_is(req, "POST"))
            api_method_not_allowed(req, route, started, "POST");
        else
            r = handle_apply(srv, req, started, &c, &err);
        break;
    case ROUTE_LIST:
    case ROUTE_WATCH:
        if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
            api_method_not_allowed(req, route, started, "GET, POST");
        else if (route == ROUTE_LIST)
            handle_list(srv, req, started, kind, &c);
        else {
            char rv[24];
            long long from = 0;
            if (api_query_param(req, "resourceVersion", rv, sizeof(rv))) {
                char *end;
                from = strtoll(rv, &end, 10);
                if (*end || from < 0)
                    from = -1;
            }
            if (from < 0)
                r = api_fail(&err, 400, "invalid", "resourceVersion must be a non-negative decimal number");
            else
                handle_watch(srv, req, started, kind, from, &c);
        }
        break;
    case ROUTE_CREATE:
        r = handle_write_one(srv, req, route, started, &c, kind, NULL, &err);
        break;
    case ROUTE_GET:
    case ROUTE_REPLACE:
    case ROUTE_DELETE:
        if (!resource_name_valid(seg_b))
            r = api_fail(&err, 404, "not_found", "%s '%s' not found (not a valid name)", kind->kind, seg_b);
        else if (route == ROUTE_GET && !api_method_is(req, "GET") && !api_method_is(req, "HEAD"))
            api_method_not_allowed(req, route, started, "GET, PUT, DELETE");
        else if (route == ROUTE_GET)
            handle_get(srv, req, started, kind, seg_b);
        else
            r = handle_write_one(srv, req, route, started, &c, kind, seg_b, &err);
        break;
    default:
        r = api_fail(&err, 404, "not_found", "no such endpoint");
    }
    if (r < 0)
        api_respond_error(req, route, started, &err);
    caller_clear(&c);
    return 0;
}
/* Every request: its span (api/span.h) current while it is routed. */
static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    api_span_start(req);
    int r = route_req(self, req);
    api_span_leave();
    return r;
}


void api_handlers_register(h2o_pathconf_t *pathconf, void *userdata)
{
    api_handler *h = (api_handler *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->server = userdata;
}

void *api_handlers_thread_init(h2o_context_t *ctx, void *userdata)
{
    api_thread *t = calloc(1, sizeof(*t));
    if (!t)
        abort(); /* at start-up, before serving: nothing to degrade to */
    t->ctx = ctx;
    t->server = userdata;
    t->queue = h2o_multithread_create_queue(ctx->loop);
    h2o_multithread_register_receiver(t->queue, &t->write_done, on_write_done);
    if (offload_loop_new(ctx->loop, &t->offload) < 0)
        abort();
    api_sse_thread_init(t);
    return t;
}

void api_handlers_thread_drain(void *state)
{
    api_sse_drain(state);
}

bool api_handlers_thread_busy(void *state)
{
    api_thread *t = state;
    return t->writes_in_flight > 0 || offload_loop_in_flight(t->offload) > 0;
}

void api_handlers_thread_dispose(void *state)
{
    api_thread *t = state;
    for (size_t i = 0; i < AUTH_CACHE_SLOTS; i++)
        auth_cache_entry_clear(&t->auth_cache[i]);
    offload_loop_free(t->offload);
    h2o_multithread_unregister_receiver(t->queue, &t->write_done);
    h2o_multithread_destroy_queue(t->queue);
    api_sse_thread_dispose(t);
    free(t);
}
