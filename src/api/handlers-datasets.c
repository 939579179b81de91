/* Workspaces and datasets (see handlers-datasets.h). */
#include "api/handlers-datasets.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/handlers-policy.h"
#include "api/notify.h"
#include "audit/event.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "blob/blob.h"
#include "httpd/httpd.h"
#include "kms/ciphertext.h"
#include "resource/resource.h"

#define AGE_VERSION_LINE "age-encryption.org/v1\n"
#define DOWNLOAD_CHUNK (64 * 1024)

static blob_store *blobs;

int api_datasets_init(const char *dir)
{
    return blob_store_open(dir, &blobs);
}

void api_datasets_done(void)
{
    blob_store_free(blobs);
    blobs = NULL;
}

/* ---- who may ---- */

static const char *str_at(const json_t *doc, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(doc, a), b));
}

static bool in_members(const json_t *ws, const char *user)
{
    size_t i;
    const json_t *m;
    json_array_foreach(json_object_get(json_object_get(ws, "spec"), "members"), i, m)
    {
        if (json_is_string(m) && strcmp(json_string_value(m), user) == 0)
            return true;
    }
    return false;
}

/* Whether USER is a member of Workspace NAME (false when it does not exist). */
static bool is_member(store *s, const char *name, const char *user)
{
    json_auto_t *ws = NULL;
    return name && store_get(s, "Workspace", name, &ws) == 0 && in_members(ws, user);
}

/* Whether users A and B are members of one workspace (A twice: whether A is a member of any). */
static bool share_workspace(store *s, const char *a, const char *b)
{
    json_auto_t *items = NULL;
    int64_t rev;
    if (store_list(s, "Workspace", &items, &rev) < 0)
        return false;
    size_t i;
    const json_t *ws;
    json_array_foreach(items, i, ws)
    {
        if (in_members(ws, a) && in_members(ws, b))
            return true;
    }
    return false;
}

/* The objects of a workspace its members have rights on: every member of
 * the object's workspace may do MEMBER_VERBS, its creator (status.CREATOR)
 * CREATOR_VERBS while a member; a member of any workspace may list them (the
 * list is filtered), a member of the workspace a new one names create it. */
typedef struct member_kind {
    const char *kind;
    const char *creator;
    const char *const *member_verbs, *const *creator_verbs;
} member_kind;

static const char *const dataset_member_verbs[] = {"get", NULL};
static const char *const dataset_creator_verbs[] = {"upload", "update", "delete", NULL};
/* approve, reject and veto are open to every member: the handlers decide
 * whose sign-off counts (handlers-jobs.c); run: the author starts a run
 * (handlers-job-runs.c checks the approvals) */
static const char *const job_member_verbs[] = {"get", "approve", "reject", "veto", NULL};
static const char *const job_creator_verbs[] = {"update", "delete", "run", NULL};
static const member_kind member_kinds[] = {
    {"Dataset", "owner", dataset_member_verbs, dataset_creator_verbs},
    {"Job", "author", job_member_verbs, job_creator_verbs},
};

static bool verb_in(const char *const *verbs, const char *verb)
{
    for (; *verbs; verbs++)
        if (strcmp(*verbs, verb) == 0)
            return true;
    return false;
}

bool api_member_allows(api_server *srv, const caller *c, const char *verb, const char *kind, const char *name,
                       const json_t *doc)
{
    store *s = srv->cfg->store;
    const char *user = caller_name(c);
    if (!c->user || !*user)
        return false;
    if (strcmp(kind, "Workspace") == 0)
        return strcmp(verb, "get") == 0 && is_member(s, name, user);
    if (strcmp(kind, "User") == 0)
        return strcmp(verb, "get-keys") == 0 && share_workspace(s, user, name);
    const member_kind *mk = NULL;
    for (size_t i = 0; i < ELEMENTSOF(member_kinds) && !mk; i++)
        if (strcmp(kind, member_kinds[i].kind) == 0)
            mk = &member_kinds[i];
    if (!mk)
        return false;
    if (strcmp(verb, "list") == 0)
        return !*name && share_workspace(s, user, user);
    if (strcmp(verb, "create") == 0)
        return doc && is_member(s, str_at(doc, "spec", "workspace"), user);
    json_auto_t *obj = NULL;
    if (store_get(s, kind, name, &obj) < 0 || !is_member(s, str_at(obj, "spec", "workspace"), user))
        return false;
    if (verb_in(mk->member_verbs, verb))
        return true;
    const char *creator = str_at(obj, "status", mk->creator);
    return creator && strcmp(creator, user) == 0 && verb_in(mk->creator_verbs, verb);
}

/* ---- the Dataset resource ---- */

int api_dataset_set_owner(store_op *op, const caller *c)
{
    if (op->type != STORE_CREATE || strcmp(op->kind, "Dataset") != 0)
        return 0;
    json_t *status = json_pack("{s:s}", "owner", caller_name(c));
    if (!status || json_object_set_new(op->doc, "status", status) < 0)
        return -ENOMEM;
    op->status = status;
    return 0;
}

int api_dataset_check(api_server *srv, const json_t *doc, const json_t *stored, api_error *err)
{
    const char *ws = str_at(doc, "spec", "workspace"), *old = str_at(stored, "spec", "workspace");
    if (old && strcmp(ws, old) != 0) {
        api_fail(err, 400, "invalid", "spec.workspace: a dataset stays in its workspace (%s); create another one", old);
        snprintf(err->field, sizeof(err->field), "spec.workspace");
        return -1;
    }
    json_auto_t *w = NULL;
    int e = store_get(srv->cfg->store, "Workspace", ws, &w);
    if (e == -ENOENT) {
        api_fail(err, 400, "invalid", "spec.workspace: workspace %s does not exist; create the Workspace first", ws);
        snprintf(err->field, sizeof(err->field), "spec.workspace");
        return -1;
    }
    return e < 0 ? api_fail_store(err, e, "Workspace", ws) : 0;
}

int api_dataset_delete_input(api_server *srv, const char *name, json_t *input, api_error *err)
{
    json_auto_t *ds = NULL;
    int e = store_get(srv->cfg->store, "Dataset", name, &ds);
    if (e < 0)
        return e == -ENOENT ? 0 : api_fail_store(err, e, "Dataset", name); /* the delete answers 404 */
    const char *sha = str_at(ds, "status", "sha256"), *uid = str_at(ds, "metadata", "uid");
    if ((sha && json_object_set_new(input, "blob", json_string(sha)) < 0) ||
        (uid && json_object_set_new(input, "upload", json_string(uid)) < 0))
        return api_fail(err, 500, "internal", "out of memory");
    return 0;
}

int api_workspace_delete_input(api_server *srv, const char *name, json_t *input, store_op *op, api_error *err)
{
    json_auto_t *ws = NULL;
    int e = store_get(srv->cfg->store, "Workspace", name, &ws);
    if (e < 0)
        return e == -ENOENT ? 0 : api_fail_store(err, e, "Workspace", name); /* the delete answers 404 */
    const char *key = str_at(ws, "status", "key"), *rv = str_at(ws, "metadata", "resourceVersion");
    char *end = NULL;
    long long v = rv ? strtoll(rv, &end, 10) : 0;
    if (!rv || *end || v <= 0)
        return api_fail(err, 500, "internal", "Workspace %s is stored without a resourceVersion", name);
    /* the key this version names is the one destroyed: a Workspace changed (or made again) since fails the delete */
    op->expected_rv = v;
    if (!key)
        return 0; /* made before workspaces had keys: nothing to destroy */
    if (strncmp(key, "workspace_", STRLEN("workspace_")) != 0 || !kms_key_name_valid(key))
        return api_fail(err, 500, "internal", "Workspace %s names a key (%s) that is no workspace key", name, key);
    return json_object_set_new(input, "workspaceKey", json_string(key)) < 0
               ? api_fail(err, 500, "internal", "out of memory")
               : 0;
}

void api_dataset_deleted(api_server *srv, const json_t *input)
{
    const char *sha = json_string_value(json_object_get(input, "blob"));
    const char *upload = json_string_value(json_object_get(input, "upload"));
    if (upload)
        blob_upload_abort(blobs, upload);
    if (!sha)
        return;
    json_auto_t *items = NULL;
    int64_t rev;
    if (store_list(srv->cfg->store, "Dataset", &items, &rev) < 0)
        return; /* kept: an orphan blob is harmless, a lost one is not */
    size_t i;
    const json_t *ds;
    json_array_foreach(items, i, ds)
    {
        const char *other = str_at(ds, "status", "sha256");
        if (other && strcmp(other, sha) == 0)
            return;
    }
    int r = blob_delete(blobs, sha);
    if (r < 0)
        log_fields(LOG_LEVEL_WARN, "cannot remove a deleted dataset's blob", "sha256", sha, "error", strerror(-r), NULL);
}

/* ---- /v1/datasets/{name}/data ---- */

/* Reports a data operation (ACTION) on Dataset NAME; never anything of the content but its hash and size. */
static void report(api_request *r, const char *action, const char *name, const char *outcome, json_t *details)
{
    char ip[INET6_ADDRSTRLEN];
    httpd_peer_ip(r->req, ip, sizeof(ip));
    audit_event_emit(&(audit_event){.action = action, .user = caller_name(r->caller), .ip = ip, .kind = "Dataset",
                                    .name = name, .outcome = outcome, .details = details});
}

/* Blob work off the loop: a part written, or the upload committed and the
 * Dataset's status recorded. */
typedef struct data_job {
    offload_job super;
    api_server *srv;
    api_route route;
    uint64_t started;
    char name[RESOURCE_NAME_MAX + 1];
    char user[256];
    char ip[INET6_ADDRSTRLEN];
    char upload[BLOB_ID_MAX + 1];
    bool commit;
    uint64_t offset, size;
    uint8_t *data; /* a part: its bytes (owned) */
    char sha256[BLOB_HEX_LEN + 1];
    json_t *dataset; /* commit: the Dataset as decided (owned); then as stored */
    int rc;
    api_error err;
} data_job;

static void data_job_free(data_job *job)
{
    free(job->data);
    json_decref(job->dataset);
    free(job);
}

/* The error of a blob operation's negative errno R. */
static int blob_fail(api_error *err, int r, uint64_t at)
{
    switch (r) {
    case -ERANGE:
        return api_fail(err, 409, "conflict", "the upload holds %llu bytes; send the next part at ?offset=%llu",
                        (unsigned long long)at, (unsigned long long)at);
    case -EBUSY:
        return api_fail(err, 409, "conflict", "another part of this upload is being written; send one part at a time");
    case -EFBIG:
        return api_fail(err, 413, "too_large", "a dataset holds at most 64 GiB");
    case -EBADMSG:
        return api_fail(err, 400, "invalid", "the uploaded bytes do not have the announced size and SHA-256; the "
                                             "upload was dropped: send it again from offset 0");
    case -ENOENT:
        return api_fail(err, 409, "conflict", "nothing was uploaded; PUT the parts first (from ?offset=0)");
    case -ENOSPC:
        return api_fail(err, 507, "insufficient_storage", "the server's disk is full");
    default:
        return api_fail(err, 500, "internal", "the blob store failed (%s)", strerror(-r));
    }
}

/* Tells every member of the workspace of JOB's Dataset but its uploader
 * that the data is there (notify.h: dataset.added). */
static void notify_dataset_added(const data_job *job)
{
    const char *ws = str_at(job->dataset, "spec", "workspace");
    json_auto_t *workspace = NULL;
    if (!ws || store_get(job->srv->cfg->store, "Workspace", ws, &workspace) < 0)
        return;
    const json_t *members = json_object_get(json_object_get(workspace, "spec"), "members");
    const char *users[NOTIFY_USERS_MAX];
    size_t n = 0, i;
    const json_t *m;
    json_array_foreach(members, i, m)
    {
        const char *u = json_string_value(m);
        if (u && strcmp(u, job->user) != 0 && n < ELEMENTSOF(users))
            users[n++] = u;
    }
    json_t *details = json_pack("{s:s, s:s, s:s, s:I}", "workspace", ws, "uploadedBy", job->user, "sha256",
                                job->sha256, "size", (json_int_t)job->size);
    int e = notify_users(job->srv, users, n, "dataset.added", "Dataset", job->name, details);
    if (e < 0)
        log_fields(LOG_LEVEL_WARN, "cannot notify the workspace of a dataset upload", "dataset", job->name, "error",
                   strerror(-e), NULL);
}

static void data_work(offload_job *j)
{
    data_job *job = (data_job *)j;
    uint64_t size = 0;
    if (!job->commit) {
        int r = blob_upload_write(blobs, job->upload, job->offset, job->data, job->size, &size);
        if (r == -ERANGE)
            blob_upload_size(blobs, job->upload, &size);
        job->rc = r < 0 ? blob_fail(&job->err, r, size) : 0;
        job->offset = size;
        return;
    }
    int r = blob_upload_commit(blobs, job->upload, job->sha256, job->size);
    if (r < 0) {
        job->rc = blob_fail(&job->err, r, 0);
        return;
    }
    /* the blob is durable; now the Dataset says so, unless it changed since it was decided */
    char at[40];
    const char *owner = str_at(job->dataset, "status", "owner");
    json_auto_t *status = json_pack("{s:s, s:s, s:I, s:s}", "owner", owner ? owner : job->user, "sha256", job->sha256,
                                    "size", (json_int_t)job->size, "uploadedAt",
                                    time_format_rfc3339((int64_t)(time_now_ns() / NSEC_PER_SEC), at, sizeof(at)));
    const char *rv = str_at(job->dataset, "metadata", "resourceVersion");
    store_op op = {.type = STORE_REPLACE, .kind = "Dataset", .name = job->name, .doc = job->dataset,
                   .status = status, .expected_rv = rv ? strtoll(rv, NULL, 10) : 0};
    store_txn txn = {.ops = &op, .n_ops = 1};
    r = status ? store_write(job->srv->cfg->store, &txn) : -ENOMEM;
    if (r == 0) {
        json_decref(job->dataset);
        job->dataset = json_incref(op.result);
    }
    store_txn_clear(&txn);
    if (r < 0)
        job->rc = api_fail_store(&job->err, r, "Dataset", job->name);
    else
        notify_dataset_added(job);
}

static void data_done(offload_job *j, h2o_req_t *req)
{
    data_job *job = (data_job *)j;
    if (job->commit) {
        json_auto_t *details = json_pack("{s:s, s:I}", "sha256", job->sha256, "size", (json_int_t)job->size);
        if (job->rc < 0)
            json_object_set_new(details, "reason", json_string(job->err.message));
        audit_event_emit(&(audit_event){.action = "dataset.upload", .user = job->user, .ip = job->ip,
                                        .kind = "Dataset", .name = job->name,
                                        .outcome = job->rc < 0 ? "failure" : "success", .details = details});
    }
    if (req && job->rc < 0)
        api_respond_error(req, job->route, job->started, &job->err);
    else if (req && job->commit) {
        json_auto_t *v = resource_public_view(job->dataset);
        api_respond_json(req, job->route, job->started, 200, v);
    } else if (req) {
        json_auto_t *ans = json_pack("{s:s, s:I}", "dataset", job->name, "offset", (json_int_t)job->offset);
        api_respond_json(req, job->route, job->started, 200, ans);
    }
    data_job_free(job);
}

/* Parses ?offset=N (decimal, no sign) into *RET. */
static int offset_param(const h2o_req_t *req, uint64_t *ret, api_error *err)
{
    char buf[24];
    if (!api_query_param(req, "offset", buf, sizeof(buf)) || !buf[0])
        return api_fail(err, 400, "invalid", "PUT .../data needs ?offset=N, where the part starts (0 for the first)");
    uint64_t v = 0;
    for (const char *p = buf; *p; p++) {
        if (*p < '0' || *p > '9' || v > BLOB_SIZE_MAX)
            return api_fail(err, 400, "invalid", "offset must be a decimal number of bytes");
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *ret = v;
    return 0;
}

/* Whether the N bytes at P begin with a whole age v1 header as far as the
 * server can tell without a key: the version line, stanzas ("-> TYPE
 * ARGS" and their body lines), at least one X25519 (the workspace's is one;
 * which recipient a stanza is for cannot be seen), then the MAC line
 * ("--- "). The decryptor checks the rest. */
static bool age_header_plausible(const char *p, size_t n)
{
    if (n < STRLEN(AGE_VERSION_LINE) || memcmp(p, AGE_VERSION_LINE, STRLEN(AGE_VERSION_LINE)) != 0)
        return false;
    size_t x25519 = 0;
    bool in_stanza = false;
    for (size_t at = STRLEN(AGE_VERSION_LINE); at < n;) {
        const char *nl = memchr(p + at, '\n', n - at);
        if (!nl)
            return false;
        size_t len = (size_t)(nl - (p + at));
        const char *line = p + at;
        at += len + 1;
        if (len >= 4 && memcmp(line, "--- ", 4) == 0)
            return in_stanza && x25519 > 0;
        if (len >= 3 && memcmp(line, "-> ", 3) == 0) {
            in_stanza = true;
            x25519 += len > 10 && memcmp(line, "-> X25519 ", 10) == 0;
        } else if (!in_stanza)
            return false;
    }
    return false;
}

/* Fills a job for R on DATASET (taken over). */
static data_job *job_new(api_request *r, const char *name, json_t *dataset, bool commit)
{
    data_job *job = calloc(1, sizeof(*job));
    if (!job) {
        json_decref(dataset);
        return NULL;
    }
    *job = (data_job){.super = {.work = data_work, .done = data_done}, .srv = r->server, .route = r->route,
                      .started = r->started, .commit = commit, .dataset = dataset};
    snprintf(job->name, sizeof(job->name), "%s", name);
    snprintf(job->user, sizeof(job->user), "%s", caller_name(r->caller));
    snprintf(job->upload, sizeof(job->upload), "%s", str_at(dataset, "metadata", "uid"));
    httpd_peer_ip(r->req, job->ip, sizeof(job->ip));
    return job;
}

static int submit(api_request *r, data_job *job, api_error *err)
{
    if (api_offload(r, r->server->local, &job->super, err) < 0) {
        data_job_free(job);
        return -1;
    }
    return 0;
}

/* PUT ?offset=N: one part (the request body) of the ciphertext. */
static int put_part(api_request *r, const char *name, json_t *dataset, api_error *err)
{
    uint64_t offset = 0;
    h2o_iovec_t body = r->req->entity;
    if (offset_param(r->req, &offset, err) < 0) {
        json_decref(dataset);
        return -1;
    }
    if (body.len == 0 || body.len > API_DATASET_PART_MAX) {
        json_decref(dataset);
        return api_fail(err, body.len ? 413 : 400, body.len ? "too_large" : "invalid",
                        "a part holds 1 to %d bytes", API_DATASET_PART_MAX);
    }
    /* the server cannot read it, but it must be an age file */
    if (offset == 0 && !age_header_plausible(body.base, body.len)) {
        json_decref(dataset);
        return api_fail(err, 400, "invalid", "a dataset is an age v1 file whose first part holds its whole header "
                                             "(\"age-encryption.org/v1\", X25519 stanzas, the MAC line); encrypt "
                                             "it with cloister dataset upload");
    }
    data_job *job = job_new(r, name, dataset, false);
    if (!job || !(job->data = malloc(body.len))) {
        if (job)
            data_job_free(job);
        return api_fail(err, 500, "internal", "out of memory");
    }
    memcpy(job->data, body.base, body.len);
    job->offset = offset;
    job->size = body.len;
    return submit(r, job, err);
}

/* POST {sha256, size}: publishes the upload as the Dataset's content. */
static int commit(api_request *r, const char *name, json_t *dataset, api_error *err)
{
    json_auto_t *body = api_decode_body(r->req->entity.base, r->req->entity.len, err);
    const char *sha = json_string_value(json_object_get(body, "sha256"));
    json_t *size = json_object_get(body, "size");
    if (!body || !sha || !blob_hex_valid(sha) || !json_is_integer(size) || json_integer_value(size) <= 0 ||
        (uint64_t)json_integer_value(size) > BLOB_SIZE_MAX || json_object_size(body) != 2) {
        json_decref(dataset);
        return body ? api_fail(err, 400, "invalid", "the body is {\"sha256\": \"<64 lower-case hex>\", \"size\": "
                                                    "<bytes, 1 to 64 GiB>} of the whole ciphertext")
                    : -1;
    }
    data_job *job = job_new(r, name, dataset, true);
    if (!job)
        return api_fail(err, 500, "internal", "out of memory");
    snprintf(job->sha256, sizeof(job->sha256), "%s", sha);
    job->size = (uint64_t)json_integer_value(size);
    return submit(r, job, err);
}

/* A download: the blob read and sent one chunk at a time. */
typedef struct download {
    h2o_generator_t super;
    int fd;
    uint64_t sent, size;
    uint8_t buf[DOWNLOAD_CHUNK];
} download;

static void download_dispose(void *p)
{
    download *d = p;
    if (d->fd >= 0)
        close(d->fd);
}

static void download_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    download *d = (download *)g;
    size_t want = (size_t)MIN((uint64_t)sizeof(d->buf), d->size - d->sent);
    ssize_t n;
    do
        n = pread(d->fd, d->buf, want, (off_t)d->sent);
    while (n < 0 && errno == EINTR);
    if (n <= 0 && want > 0) {
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    d->sent += (uint64_t)n;
    h2o_iovec_t v = h2o_iovec_init(d->buf, (size_t)n);
    h2o_send(req, &v, 1, d->sent == d->size ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void download_stop(h2o_generator_t *g, h2o_req_t *req)
{
}

blob_store *api_blobs(void)
{
    return blobs;
}

int api_send_blob(api_request *r, const char *sha, uint64_t *ret_size, api_error *err)
{
    int fd;
    uint64_t size;
    int e = blob_open(blobs, sha, &fd, &size);
    if (e < 0)
        return api_fail(err, 500, "internal", "blob %.16s… cannot be read (%s)", sha, strerror(-e));
    download *d = h2o_mem_alloc_shared(&r->req->pool, sizeof(*d), download_dispose);
    *d = (download){.super = {.proceed = download_proceed, .stop = download_stop}, .fd = fd, .size = size};
    h2o_req_t *req = r->req;
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = size;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/octet-stream"));
    h2o_start_response(req, &d->super);
    api_finish(r->route, r->started, 200);
    if (api_method_is(req, "HEAD") || size == 0)
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    else
        download_proceed(&d->super, req);
    *ret_size = size;
    return 0;
}

/* GET: the ciphertext, streamed. */
static int get_data(api_request *r, const char *name, const json_t *dataset, api_error *err)
{
    const char *sha = str_at(dataset, "status", "sha256");
    if (!sha)
        return api_fail(err, 404, "not_found", "Dataset %s has no data yet (cloister dataset upload)", name);
    uint64_t size;
    if (api_send_blob(r, sha, &size, err) < 0)
        return -1;
    json_auto_t *details = json_pack("{s:s, s:I}", "sha256", sha, "size", (json_int_t)size);
    report(r, "dataset.download", name, "success", details);
    return 0;
}

int api_handle_dataset_data(api_request *r, const char *name, api_error *err)
{
    bool get = api_method_is(r->req, "GET") || api_method_is(r->req, "HEAD");
    bool put = api_method_is(r->req, "PUT"), post = api_method_is(r->req, "POST");
    if (!get && !put && !post) {
        api_method_not_allowed(r->req, r->route, r->started, "GET, PUT, POST");
        return 0;
    }
    if (!resource_name_valid(name))
        return api_fail(err, 404, "not_found", "Dataset '%s' not found (not a valid name)", name);
    /* decided on the exact object: reading is `get`, writing its content `upload` */
    if (api_authorize(r->server, r->req, r->caller, get ? "get" : "upload", "Dataset", name, err) < 0)
        return -1;
    json_t *dataset = NULL;
    int e = store_get(r->server->cfg->store, "Dataset", name, &dataset);
    if (e < 0)
        return api_fail_store(err, e, "Dataset", name);
    if (get) {
        e = get_data(r, name, dataset, err);
        json_decref(dataset);
        return e;
    }
    if (str_at(dataset, "status", "sha256")) {
        json_decref(dataset);
        return api_fail(err, 409, "conflict", "Dataset %s already holds its data; delete it and upload again", name);
    }
    if (!blob_id_valid(str_at(dataset, "metadata", "uid") ?: "")) {
        json_decref(dataset);
        return api_fail(err, 500, "internal", "Dataset %s has no usable uid", name);
    }
    return put ? put_part(r, name, dataset, err) : commit(r, name, dataset, err);
}
