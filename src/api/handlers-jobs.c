/* Jobs: status, approvals, rejections, vetoes (see handlers-jobs.h). */
#include "api/handlers-jobs.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/handlers-policy.h"
#include "api/notify.h"
#include "audit/event.h"
#include "basic/encoding.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "httpd/httpd.h"
#include "job/digest.h"
#include "resource/resource.h"

#define REASON_MAX 1024
#define JOB_INVOLVED_MAX 257 /* the author and every member of a workspace */

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

/* Whether array A holds the string S. */
static bool names_contain(const json_t *a, const char *s)
{
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

/* The index of the entry of USER in array A of {user, ...}, or -1. */
static long entry_of(const json_t *a, const char *user)
{
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        const char *u = json_string_value(json_object_get(v, "user"));
        if (u && strcmp(u, user) == 0)
            return (long)i;
    }
    return -1;
}

static void now_rfc3339(char *out, size_t size)
{
    time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), out, size);
}

int api_job_engine_pcr0(api_server *srv, char ret[API_JOB_PCR0_HEX_LEN + 1], api_error *err)
{
    const char *pcr0 = srv->cfg->job_engine_pcr0;
    if (!pcr0 || strlen(pcr0) != API_JOB_PCR0_HEX_LEN)
        return api_fail(err, 503, "unavailable",
                        "the job engine bundle was not found, so no job digest can name its PCR0; start cloisterd "
                        "with CLOISTER_JOB_BUNDLE set to the engine bundle's directory");
    memcpy(ret, pcr0, API_JOB_PCR0_HEX_LEN + 1);
    return 0;
}

/* ---- the status ---- */

/* Recomputes STATUS's missingApprovers (required, not yet approved) and,
 * unless a run owns it (running, succeeded, failed), its state: rejected
 * once anyone rejected or vetoed, approved once nobody is missing, else
 * pending. Returns 0 or -ENOMEM. */
static int job_update_state(json_t *status)
{
    const json_t *approvals = json_object_get(status, "approvals");
    json_t *missing = json_array();
    size_t i;
    const json_t *u;
    json_array_foreach(json_object_get(status, "requiredApprovers"), i, u)
    {
        if (entry_of(approvals, json_string_value(u)) < 0 && json_array_append(missing, (json_t *)u) < 0)
            break;
    }
    if (!missing || json_object_set_new(status, "missingApprovers", missing) < 0)
        return -ENOMEM;
    const char *state = json_string_value(json_object_get(status, "state"));
    bool run_owned = state && (strcmp(state, "running") == 0 || strcmp(state, "succeeded") == 0 ||
                               strcmp(state, "failed") == 0);
    if (json_array_size(json_object_get(status, "vetoes")) || json_array_size(json_object_get(status, "rejections")))
        state = "rejected";
    else if (!run_owned)
        state = json_array_size(missing) == 0 ? "approved" : "pending";
    return json_object_set_new(status, "state", json_string(state));
}

/* Fails ERR with 400 naming FIELD of the job's spec and the formatted reason. */
static int spec_fail(api_error *err, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int spec_fail(api_error *err, const char *field, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    api_fail(err, 400, "invalid", "spec.%s: %s", field, msg);
    snprintf(err->field, sizeof(err->field), "spec.%s", field);
    return -1;
}

/* Resolves the inputs of SPEC in workspace WS: RESOLVED gets [{name,
 * sha256}], OWNERS each input's owner once, in order. */
static int resolve_inputs(store *s, const json_t *spec, const char *ws, json_t *resolved, json_t *owners,
                          api_error *err)
{
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(spec, "inputs"), i, v)
    {
        const char *name = json_string_value(v);
        json_auto_t *ds = NULL;
        int e = store_get(s, "Dataset", name, &ds);
        if (e == -ENOENT)
            return spec_fail(err, "inputs", "Dataset %s does not exist", name);
        if (e < 0)
            return api_fail_store(err, e, "Dataset", name);
        const char *dws = str_at(ds, "spec", "workspace"), *sha = str_at(ds, "status", "sha256");
        const char *owner = str_at(ds, "status", "owner");
        if (!dws || strcmp(dws, ws) != 0)
            return spec_fail(err, "inputs", "Dataset %s belongs to another workspace (%s)", name, dws ? dws : "-");
        if (!sha || !owner)
            return spec_fail(err, "inputs", "Dataset %s has no data yet; its owner %s must finish `cloister "
                                            "dataset upload` first", name, owner ? owner : "-");
        if (json_array_append_new(resolved, json_pack("{s:s, s:s}", "name", name, "sha256", sha)) < 0 ||
            (!names_contain(owners, owner) && json_array_append_new(owners, json_string(owner)) < 0))
            return api_fail(err, 500, "internal", "out of memory");
    }
    return 0;
}

/* Resolves SPEC's recipients (members of workspace WS_DOC) into their
 * registered age keys, in order. */
static int resolve_recipients(store *s, const json_t *spec, const json_t *ws_doc, json_t *keys, api_error *err)
{
    const json_t *members = json_object_get(json_object_get(ws_doc, "spec"), "members");
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(spec, "recipients"), i, v)
    {
        const char *user = json_string_value(v);
        if (!names_contain(members, user))
            return spec_fail(err, "recipients", "%s is not a member of workspace %s; results go to members only",
                             user, doc_name(ws_doc));
        json_auto_t *u = NULL;
        int e = store_get(s, "User", user, &u);
        if (e < 0 && e != -ENOENT)
            return api_fail_store(err, e, "User", user);
        const char *key = str_at(json_object_get(u, "status"), "publicKeys", "recipient");
        if (!key)
            return spec_fail(err, "recipients", "user %s has no registered age key; %s must run `cloister keys "
                                                "init` and `cloister keys register` first", user, user);
        if (json_array_append_new(keys, json_string(key)) < 0)
            return api_fail(err, 500, "internal", "out of memory");
    }
    return 0;
}

/* The status of Job DOC (its spec's recipients filled in) over STORED,
 * written by AUTHOR; see api_job_prepare(). *RET a new object. */
static int job_status(api_server *srv, json_t *doc, const json_t *stored, const char *author, json_t **ret,
                      api_error *err)
{
    store *s = srv->cfg->store;
    json_t *spec = json_object_get(doc, "spec");
    const char *ws = str_at(doc, "spec", "workspace"), *old_ws = str_at(stored, "spec", "workspace");
    const json_t *old_status = json_object_get(stored, "status");
    const char *old_state = json_string_value(json_object_get(old_status, "state"));
    if (old_ws && strcmp(ws, old_ws) != 0)
        return spec_fail(err, "workspace", "a job stays in its workspace (%s); propose another one", old_ws);
    if (old_state && strcmp(old_state, "running") == 0)
        return api_fail(err, 409, "conflict", "Job %s is running; change it once the run ended", doc_name(doc));
    json_auto_t *w = NULL;
    int e = store_get(s, "Workspace", ws, &w);
    if (e == -ENOENT)
        return spec_fail(err, "workspace", "workspace %s does not exist", ws);
    if (e < 0)
        return api_fail_store(err, e, "Workspace", ws);
    const json_t *members = json_object_get(json_object_get(w, "spec"), "members");
    const char *not_after = json_string_value(json_object_get(spec, "notAfter"));
    int64_t until;
    if (not_after && time_parse_rfc3339(not_after, &until) == 0 && until <= (int64_t)(time_now_ns() / NSEC_PER_SEC))
        return spec_fail(err, "notAfter", "%s has passed; a job must be runnable after its proposal", not_after);
    if (!json_object_get(spec, "recipients") && json_object_set_new(spec, "recipients", json_deep_copy(members)) < 0)
        return api_fail(err, 500, "internal", "out of memory");

    json_auto_t *inputs = json_array(), *owners = json_array(), *keys = json_array();
    char pcr0[API_JOB_PCR0_HEX_LEN + 1];
    if (!inputs || !owners || !keys)
        return api_fail(err, 500, "internal", "out of memory");
    if (resolve_inputs(s, spec, ws, inputs, owners, err) < 0 || resolve_recipients(s, spec, w, keys, err) < 0 ||
        api_job_engine_pcr0(srv, pcr0, err) < 0)
        return -1;
    json_auto_t *resolved = json_pack("{s:O, s:O, s:{s:s}}", "inputs", inputs, "recipients", keys, "engine", "pcr0",
                                      pcr0);
    json_t *input = NULL;
    uint8_t digest[JOB_DIGEST_SIZE];
    char hex[2 * JOB_DIGEST_SIZE + 1];
    if (!resolved || job_digest_input(spec, resolved, &input) < 0 || job_digest(input, digest) < 0) {
        json_decref(input);
        return api_fail(err, 500, "internal", "the job's digest could not be computed");
    }
    hex_encode(digest, sizeof(digest), hex);

    bool all = strcmp(str_at(w, "spec", "approvals") ?: "owners", "all") == 0;
    const char *old_digest = json_string_value(json_object_get(old_status, "digest"));
    bool same = old_digest && strcmp(old_digest, hex) == 0;
    json_t *status = same ? json_deep_copy(old_status) : json_object();
    if (!status) {
        json_decref(input);
        return api_fail(err, 500, "internal", "out of memory");
    }
    if (json_object_set_new(status, "author", json_string(author)) < 0 ||
        json_object_set_new(status, "digest", json_string(hex)) < 0 ||
        json_object_set_new(status, "digestInput", input) < 0 ||
        json_object_set_new(status, "requiredApprovers", json_deep_copy(all ? members : owners)) < 0 ||
        json_object_set_new(status, "inputOwners", json_incref(owners)) < 0 ||
        (str_at(w, "status", "key") &&
         json_object_set_new(status, "workspaceKey", json_string(str_at(w, "status", "key"))) < 0)) {
        json_decref(status);
        return api_fail(err, 500, "internal", "out of memory");
    }
    if (!same) {
        /* a new proposal: nothing signed the old digest for this one; runs are history */
        json_t *runs = json_object_get(old_status, "runs");
        if (json_object_set_new(status, "approvals", json_array()) < 0 ||
            json_object_set_new(status, "rejections", json_array()) < 0 ||
            json_object_set_new(status, "vetoes", json_array()) < 0 ||
            json_object_set_new(status, "state", json_string("pending")) < 0 ||
            json_object_set_new(status, "runs", runs ? json_incref(runs) : json_array()) < 0) {
            json_decref(status);
            return api_fail(err, 500, "internal", "out of memory");
        }
    }
    if (job_update_state(status) < 0) {
        json_decref(status);
        return api_fail(err, 500, "internal", "out of memory");
    }
    *ret = status;
    return 0;
}

int api_job_prepare(api_server *srv, h2o_req_t *req, const caller *c, store_op *op, const json_t *stored,
                    api_error *err)
{
    if (strcmp(op->kind, "Job") != 0 || !op->doc || (op->type != STORE_CREATE && op->type != STORE_REPLACE))
        return 0;
    const char *author = str_at(stored, "status", "author");
    json_t *status = NULL;
    if (strcmp(op->name, "engine") == 0) { /* GET /v1/jobs/engine is the engine's measurement */
        api_fail(err, 400, "invalid", "Job/engine: the name engine is reserved (GET /v1/jobs/engine answers the "
                 "job engine's measurement); choose another name");
        api_report_decision(req, c, stored ? "update" : "create", "Job", op->name, err);
        return -1;
    }
    if (job_status(srv, op->doc, stored, author ? author : caller_name(c), &status, err) < 0) {
        if (err->status < 500)
            api_report_decision(req, c, stored ? "update" : "create", "Job", op->name, err);
        return -1;
    }
    if (json_object_set_new(op->doc, "status", status) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    op->status = status;
    return 0;
}

/* Whether Job DOC waits for approvals or a run past its spec.notAfter. */
static bool job_expired(const json_t *doc)
{
    const char *state = str_at(doc, "status", "state"), *not_after = str_at(doc, "spec", "notAfter");
    int64_t until;
    return state && not_after && (strcmp(state, "pending") == 0 || strcmp(state, "approved") == 0) &&
           time_parse_rfc3339(not_after, &until) == 0 && until <= (int64_t)(time_now_ns() / NSEC_PER_SEC);
}

void api_job_view(json_t *view)
{
    if (job_expired(view))
        json_object_set_new(json_object_get(view, "status"), "state", json_string("expired"));
}

/* Appends the strings of array A to USERS (holding *N, at most
 * JOB_INVOLVED_MAX); they stay A's. */
static void add_users(const json_t *a, const char **users, size_t *n)
{
    size_t i;
    const json_t *u;
    json_array_foreach(a, i, u)
    {
        if (*n < JOB_INVOLVED_MAX && json_is_string(u))
            users[(*n)++] = json_string_value(u);
    }
}

/* Notifies TYPE about Job NAME to its author and required approvers (from
 * STATUS), with {digest, by: BY, reason: REASON (may be NULL)}. */
static void notify_involved(api_server *srv, const char *name, const json_t *status, const char *type, const char *by,
                            const char *reason)
{
    const char *users[JOB_INVOLVED_MAX];
    size_t n = 0;
    const char *author = json_string_value(json_object_get(status, "author"));
    if (author)
        users[n++] = author;
    add_users(json_object_get(status, "requiredApprovers"), users, &n);
    json_t *details = json_pack("{s:s?, s:s?, s:s?}", "digest", json_string_value(json_object_get(status, "digest")),
                                "by", by, "reason", reason);
    notify_users(srv, users, n, type, "Job", name, details); /* never blocks; a full queue is counted there */
}

void api_job_written(api_server *srv, const store_op *op)
{
    if (strcmp(op->kind, "Job") != 0 || (op->action != STORE_CREATED && op->action != STORE_CONFIGURED) || !op->result)
        return;
    const json_t *status = json_object_get(op->result, "status");
    const char *state = json_string_value(json_object_get(status, "state"));
    if (!state || strcmp(state, "pending") != 0 || json_array_size(json_object_get(status, "approvals")) ||
        json_array_size(json_object_get(status, "rejections")) || json_array_size(json_object_get(status, "vetoes")))
        return;
    const char *users[JOB_INVOLVED_MAX];
    size_t n = 0;
    add_users(json_object_get(status, "missingApprovers"), users, &n);
    json_t *details = json_pack("{s:s?, s:s?}", "digest", json_string_value(json_object_get(status, "digest")),
                                "author", json_string_value(json_object_get(status, "author")));
    notify_users(srv, users, n, "job.approval-requested", "Job", op->name, details);
}

/* ---- approvals, rejections, vetoes ---- */

/* One sign-off call on a Job: what it loaded and who asks. */
typedef struct signoff {
    api_request *r;
    const char *name;
    const char *action; /* the audit action: job.approve, job.revoke, job.reject, job.veto */
    json_t *job;        /* the stored Job (owned) */
    json_t *status;     /* the status to write (owned) */
    json_t *body;       /* the request's JSON body (owned), NULL for DELETE */
} signoff;

static void signoff_clear(signoff *so)
{
    json_decref(so->job);
    json_decref(so->status);
    json_decref(so->body);
}

/* Audits call SO with OUTCOME and DETAILS (borrowed, may be NULL); a
 * refusal's reason is ERR's message. */
static void signoff_report(const signoff *so, const char *outcome, json_t *details, const api_error *err)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(so->r->req, ip, sizeof(ip));
    json_auto_t *d = details ? json_deep_copy(details) : json_object();
    const char *digest = str_at(so->job, "status", "digest");
    if (d && digest)
        json_object_set_new(d, "digest", json_string(digest));
    if (d && err)
        json_object_set_new(d, "reason", json_string(err->message));
    audit_event_emit(&(audit_event){.action = so->action, .user = caller_name(so->r->caller), .ip = ip, .kind = "Job",
                                    .name = so->name, .outcome = outcome, .details = d});
}

/* Refuses call SO: fills ERR (STATUS, CODE, the formatted message), audits
 * it as denied with DETAILS (borrowed, may be NULL). Returns -1. */
static int signoff_refuse(const signoff *so, json_t *details, api_error *err, int status, const char *code,
                          const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int signoff_refuse(const signoff *so, json_t *details, api_error *err, int status, const char *code,
                          const char *fmt, ...)
{
    char msg[sizeof(err->message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    api_fail(err, status, code, "%s", msg);
    signoff_report(so, "denied", details, err);
    return -1;
}

/* Decides VERB on the Job, loads it and checks that it can still be signed
 * off: it has a digest, and is neither running nor expired. */
static int signoff_begin(signoff *so, const char *verb, bool need_body, api_error *err)
{
    api_request *r = so->r;
    if (!resource_name_valid(so->name))
        return api_fail(err, 404, "not_found", "Job '%s' not found (not a valid name)", so->name);
    if (api_authorize(r->server, r->req, r->caller, verb, "Job", so->name, err) < 0)
        return -1;
    int e = store_get(r->server->cfg->store, "Job", so->name, &so->job);
    if (e < 0)
        return e == -ENOENT ? api_fail_absent(r->server, r->req, r->caller, verb, "Job", so->name, err)
                            : api_fail_store(err, e, "Job", so->name);
    if (need_body && !(so->body = api_decode_body(r->req->entity.base, r->req->entity.len, err)))
        return -1;
    const char *state = str_at(so->job, "status", "state");
    if (!str_at(so->job, "status", "digest"))
        return signoff_refuse(so, NULL, err, 409, "conflict", "Job %s has no digest to sign off", so->name);
    if ((state && strcmp(state, "running") == 0) || job_expired(so->job))
        return signoff_refuse(so, NULL, err, 409, "conflict", "Job %s is %s; it can no longer be signed off",
                              so->name, job_expired(so->job) ? "expired (spec.notAfter passed)" : "running");
    so->status = json_deep_copy(json_object_get(so->job, "status"));
    return so->status ? 0 : api_fail(err, 500, "internal", "out of memory");
}

/* Writes SO's status over the Job it loaded (a compare-and-swap: 409 when
 * the job changed meanwhile), audits the success with DETAILS and answers
 * the Job. Returns 0, or -1 with ERR. */
static int signoff_commit(signoff *so, json_t *details, api_error *err)
{
    api_request *r = so->r;
    if (job_update_state(so->status) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    const char *rv = str_at(so->job, "metadata", "resourceVersion");
    store_op op = {.type = STORE_REPLACE, .kind = "Job", .name = so->name, .doc = so->job, .status = so->status,
                   .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    store_txn txn = {.ops = &op, .n_ops = 1};
    int e = store_write(r->server->cfg->store, &txn);
    json_auto_t *result = e == 0 ? json_incref(op.result) : NULL;
    store_txn_clear(&txn);
    if (e < 0) {
        api_fail_store(err, e, "Job", so->name);
        signoff_report(so, "failure", details, err);
        return -1;
    }
    signoff_report(so, "success", details, NULL);
    const char *was = str_at(so->job, "status", "state"), *now = json_string_value(json_object_get(so->status, "state"));
    const char *reason = json_string_value(json_object_get(so->body, "reason")), *by = caller_name(r->caller);
    if (strcmp(so->action, "job.reject") == 0)
        notify_involved(r->server, so->name, so->status, "job.rejected", by, reason);
    else if (strcmp(so->action, "job.veto") == 0)
        notify_involved(r->server, so->name, so->status, "job.vetoed", by, reason);
    else if (strcmp(now, "approved") == 0 && (!was || strcmp(was, "approved") != 0))
        notify_involved(r->server, so->name, so->status, "job.approved", by, NULL);
    json_auto_t *view = resource_public_view(result);
    api_job_view(view);
    api_respond_json(r->req, r->route, r->started, 200, view);
    return 0;
}

/* The string member NAME of SO's body (1 to MAX bytes, no NUL), or NULL
 * with ERR naming it. */
static const char *body_string(const signoff *so, const char *name, size_t max, const char *shape, api_error *err)
{
    const json_t *v = json_object_get(so->body, name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        api_fail(err, 400, "invalid", "%s: missing, empty or longer than %zu bytes (the body is %s)", name, max, shape);
        return NULL;
    }
    return json_string_value(v);
}

/* Removes USER's entry from array FIELD of STATUS, if any; true when one was there. */
static bool remove_entry(json_t *status, const char *field, const char *user)
{
    json_t *a = json_object_get(status, field);
    long i = entry_of(a, user);
    if (i >= 0)
        json_array_remove(a, (size_t)i);
    return i >= 0;
}

/* Sets USER's entry {user, KEY: VALUE, at} in array FIELD of STATUS. */
static int put_entry(json_t *status, const char *field, const char *user, const char *key, const char *value)
{
    char at[40];
    now_rfc3339(at, sizeof(at));
    remove_entry(status, field, user);
    json_t *a = json_object_get(status, field);
    if (!json_is_array(a) && json_object_set_new(status, field, a = json_array()) < 0)
        return -ENOMEM;
    return json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "user", user, key, value, "at", at));
}

/* The caller's registered approval key (32 raw bytes) into PUB. */
static int approval_key_of(const signoff *so, uint8_t pub[JOB_ED25519_PUBLIC_SIZE], api_error *err)
{
    const char *user = caller_name(so->r->caller);
    json_auto_t *u = NULL;
    int e = store_get(so->r->server->cfg->store, "User", user, &u);
    if (e < 0 && e != -ENOENT)
        return api_fail_store(err, e, "User", user);
    const char *key = str_at(json_object_get(u, "status"), "publicKeys", "approval");
    uint8_t raw[JOB_ED25519_PUBLIC_SIZE + 2];
    if (!key)
        return signoff_refuse(so, NULL, err, 409, "conflict", "user %s has no registered approval key; run `cloister "
                              "keys init` and `cloister keys register`, then approve again", user);
    if (base64_decode(key, strlen(key), raw, sizeof(raw), false) != JOB_ED25519_PUBLIC_SIZE)
        return api_fail(err, 500, "internal", "user %s's registered approval key is malformed", user);
    memcpy(pub, raw, JOB_ED25519_PUBLIC_SIZE);
    return 0;
}

/* POST {signature[, digest]}: the caller's approval of the current digest. */
static int approve(signoff *so, api_error *err)
{
    const char *user = caller_name(so->r->caller), *name = so->name;
    const char *digest_hex = json_string_value(json_object_get(so->status, "digest"));
    const json_t *required = json_object_get(so->status, "requiredApprovers");
    const char *sig_b64 = body_string(so, "signature", 128, "{\"signature\": BASE64 of 64 bytes, \"digest\": HEX}", err);
    if (!sig_b64)
        return -1;
    const char *claimed = json_string_value(json_object_get(so->body, "digest"));
    json_auto_t *details = json_pack("{s:s}", "signature", sig_b64);
    if (!names_contain(required, user)) {
        _cleanup_free_ char *list = json_dumps(required, JSON_COMPACT);
        return signoff_refuse(so, details, err, 403, "forbidden",
                              "%s is not a required approver of Job %s (required: %s); an approval by %s would not "
                              "count, so it is not recorded", user, name, list ? list : "-", user);
    }
    if (claimed && strcmp(claimed, digest_hex) != 0)
        return signoff_refuse(so, details, err, 409, "conflict",
                              "Job %s changed: its digest is now %s, not %s; review it again (cloister job show %s) "
                              "and approve anew", name, digest_hex, claimed, name);
    uint8_t sig[JOB_ED25519_SIGNATURE_SIZE + 2], pub[JOB_ED25519_PUBLIC_SIZE], digest[JOB_DIGEST_SIZE];
    if (base64_decode(sig_b64, strlen(sig_b64), sig, sizeof(sig), false) != JOB_ED25519_SIGNATURE_SIZE)
        return signoff_refuse(so, details, err, 400, "invalid", "signature: not the standard base64 of a 64-byte "
                                                                 "Ed25519 signature");
    if (approval_key_of(so, pub, err) < 0)
        return -1;
    if (hex_decode(digest_hex, strlen(digest_hex), digest, sizeof(digest)) < 0)
        return api_fail(err, 500, "internal", "Job %s's stored digest is malformed", name);
    if (!job_approval_verify(digest, pub, sig))
        return signoff_refuse(so, details, err, 403, "forbidden",
                              "the signature does not verify against %s's registered approval key over Job %s's "
                              "current digest %s (signed another digest or job, or with another key); nothing "
                              "was recorded", user, name, digest_hex);
    remove_entry(so->status, "rejections", user);
    if (put_entry(so->status, "approvals", user, "signature", sig_b64) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    return signoff_commit(so, details, err);
}

/* DELETE: the caller withdraws their own approval. */
static int withdraw(signoff *so, api_error *err)
{
    const char *user = caller_name(so->r->caller);
    if (!remove_entry(so->status, "approvals", user))
        return signoff_refuse(so, NULL, err, 404, "not_found", "%s has no approval of Job %s to revoke", user,
                              so->name);
    return signoff_commit(so, NULL, err);
}

int api_handle_job_approvals(api_request *r, const char *name, api_error *err)
{
    bool post = api_method_is(r->req, "POST"), del = api_method_is(r->req, "DELETE");
    if (!post && !del) {
        api_method_not_allowed(r->req, r->route, r->started, "POST, DELETE");
        return 0;
    }
    _cleanup_(signoff_clear) signoff so = {.r = r, .name = name, .action = post ? "job.approve" : "job.revoke"};
    if (signoff_begin(&so, "approve", post, err) < 0)
        return -1;
    return post ? approve(&so, err) : withdraw(&so, err);
}

/* POST {reason} as ACTION (job.reject by a required approver, job.veto by
 * an owner of an input) into status array FIELD; the caller's approval goes. */
static int reason_call(api_request *r, const char *name, const char *verb, const char *action, const char *field,
                       api_error *err)
{
    if (!api_method_is(r->req, "POST")) {
        api_method_not_allowed(r->req, r->route, r->started, "POST");
        return 0;
    }
    _cleanup_(signoff_clear) signoff so = {.r = r, .name = name, .action = action};
    if (signoff_begin(&so, verb, true, err) < 0)
        return -1;
    const char *user = caller_name(r->caller);
    const char *reason = body_string(&so, "reason", REASON_MAX, "{\"reason\": TEXT}", err);
    if (!reason)
        return -1;
    json_auto_t *details = json_pack("{s:s}", "reason", reason);
    bool veto = strcmp(field, "vetoes") == 0;
    const char *who = veto ? "inputOwners" : "requiredApprovers";
    if (!names_contain(json_object_get(so.status, who), user))
        return signoff_refuse(&so, details, err, 403, "forbidden", "%s may not %s Job %s: only %s may", user, verb,
                              name, veto ? "an owner of one of its inputs" : "a required approver");
    remove_entry(so.status, "approvals", user);
    if (put_entry(so.status, field, user, "reason", reason) < 0)
        return api_fail(err, 500, "internal", "out of memory");
    return signoff_commit(&so, details, err);
}

int api_handle_job_rejections(api_request *r, const char *name, api_error *err)
{
    return reason_call(r, name, "reject", "job.reject", "rejections", err);
}

int api_handle_job_vetoes(api_request *r, const char *name, api_error *err)
{
    return reason_call(r, name, "veto", "job.veto", "vetoes", err);
}
