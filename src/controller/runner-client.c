/* The controller's client of the runner: see runner-client.h. It speaks
 * HTTP/JSON over the runner's Unix socket with the local-role client of
 * audit/client.h. */
#include "controller/runner-client.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/client.h"
#include "basic/macro.h"
#include "resource/resource.h"

#define LIST_TIMEOUT_MS 5000
#define LAUNCH_TIMEOUT_MS 30000 /* measuring a large bundle takes a while */
#define DELETE_TIMEOUT_MS 5000
#define LOGS_TIMEOUT_MS 5000
#define LOGS_LINES_MAX 1000 /* the runner's page (RUNNER_LOG_PAGE_MAX) */

struct runner_client {
    audit_client *http;
};

int runner_client_new(const char *socket, runner_client **ret)
{
    runner_client *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return -ENOMEM;
    int r = audit_client_new("runner", socket, &rc->http);
    if (r < 0) {
        free(rc);
        return r;
    }
    *ret = rc;
    return 0;
}

void runner_client_free(runner_client *rc)
{
    if (!rc)
        return;
    audit_client_free(rc->http);
    free(rc);
}

/* Calls the runner: METHOD PATH with BODY (may be NULL), waiting at most
 * TIMEOUT_MS. Returns the HTTP status with the JSON object it answered in
 * *RET_ANSWER (a new reference), or a negative errno: -ECONNREFUSED or -EIO
 * when it cannot be reached, -EBADMSG when the answer is not a JSON object. */
static int call(runner_client *rc, const char *method, const char *path, const json_t *body, long timeout_ms,
                json_t **ret_answer)
{
    _cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body && !text)
        return -ENOMEM;
    long status = 0;
    _cleanup_free_ char *out = NULL;
    size_t len = 0;
    int r = audit_client_request(rc->http, method, path, text, text ? strlen(text) : 0, timeout_ms, &status, &out,
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

/* Writes the reason of a failed call (R from call(), ANSWER its answer or
 * NULL) into BUF. */
static void reason(int r, const json_t *answer, char *buf, size_t size)
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

void runner_view_free(runner_view *v)
{
    json_decref(v->json);
    free(v->items);
    free(v->exits);
    *v = (runner_view){0};
}

/* A pid of the runner's answers: an integer in 1..INT_MAX, else 0. */
static pid_t answer_pid(const json_t *v)
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
        sb->pid = answer_pid(json_object_get(item, "pid"));
        sb->ready = !json_is_false(json_object_get(item, "ready"));
        sb->error = json_string_value(json_object_get(item, "error"));
        const json_t *limits = json_object_get(item, "limits");
        sb->mechanism = json_string_value(json_object_get(limits, "mechanism"));
        json_int_t mib = json_integer_value(json_object_get(limits, "memoryMiB"));
        json_int_t pids = json_integer_value(json_object_get(limits, "pids"));
        json_int_t used = json_integer_value(json_object_get(item, "memoryBytes"));
        sb->memory_mib = mib > 0 && mib <= UINT32_MAX ? (unsigned)mib : 0;
        sb->pids = pids > 0 && pids <= UINT32_MAX ? (unsigned)pids : 0;
        sb->memory_bytes = used > 0 ? (uint64_t)used : 0;
        if (sb->mechanism && strcmp(sb->mechanism, "cgroup2") != 0 && strcmp(sb->mechanism, "rlimit") != 0)
            return -EBADMSG;
        if ((sb->error && strlen(sb->error) > 1024) || !sb->name || !resource_name_valid(sb->name) || !sb->pid ||
            (sb->owner && strlen(sb->owner) >= RUNNER_OWNER_MAX) || (sb->pcr0 && strlen(sb->pcr0) != RUNNER_PCR_HEX_LEN))
            return -EBADMSG;
    }
    json_array_foreach(exited, i, item) {
        runner_exit *x = &v->exits[v->n_exits++];
        x->name = json_string_value(json_object_get(item, "name"));
        x->how = json_string_value(json_object_get(item, "how"));
        x->pid = answer_pid(json_object_get(item, "pid"));
        json_int_t code = json_integer_value(json_object_get(item, "code"));
        json_int_t sig = json_integer_value(json_object_get(item, "signal"));
        x->code = code >= 0 && code <= 255 ? (int)code : 0;
        x->signal = sig > 0 && sig < 128 ? (int)sig : 0;
        x->at = json_string_value(json_object_get(item, "at")) ?: "";
        x->error = json_string_value(json_object_get(item, "error")) ?: "";
        x->reason = json_string_value(json_object_get(item, "reason")) ?: "";
        if (x->reason[0] && strcmp(x->reason, "oomKilled") != 0 && strcmp(x->reason, "memoryLimit") != 0)
            return -EBADMSG;
        if (!x->name || !x->how || strlen(x->how) > 64 || !x->pid || strlen(x->at) >= 40 || strlen(x->error) > 1024)
            return -EBADMSG;
    }
    return 0;
}

int runner_client_list(runner_client *rc, runner_view *ret, char *why, size_t size)
{
    json_t *answer = NULL;
    int r = call(rc, "GET", "/v1/sandboxes", NULL, LIST_TIMEOUT_MS, &answer);
    if (r != 200) {
        reason(r, answer, why, size);
        json_decref(answer);
        return r < 0 ? r : -EIO;
    }
    runner_view v;
    r = view_parse(answer, &v);
    if (r < 0) {
        snprintf(why, size, "%s", r == -ENOMEM ? "out of memory" : "the runner's list of sandboxes is malformed");
        runner_view_free(&v);
        return r;
    }
    *ret = v;
    return 0;
}

runner_sandbox *runner_view_find(const runner_view *v, const char *name)
{
    for (size_t i = 0; i < v->n_items; i++)
        if (v->items[i].name && strcmp(v->items[i].name, name) == 0)
            return &v->items[i];
    return NULL;
}

const runner_exit *runner_view_exit(const runner_view *v, const char *name, pid_t pid)
{
    for (size_t i = v->n_exits; i-- > 0;)
        if (v->exits[i].pid == pid && strcmp(v->exits[i].name, name) == 0)
            return &v->exits[i];
    return NULL;
}

int runner_client_launch(runner_client *rc, const runner_launch *l, pid_t *ret_pid, char *ret_pcr0, char *why,
                         size_t size)
{
    /* the agent is the sandbox's first process: evidence, its secrets by
     * key release, the workload, attested TLS (docs/enclaves.md) */
    json_auto_t *body = l->job ? json_pack("{s:s, s:s, s:s, s:{s:O}}", "name", l->name, "bundle", l->bundle, "owner",
                                           l->owner, "agent", "job", l->job)
                               : json_pack("{s:s, s:s, s:s, s:{s:o}}", "name", l->name, "bundle", l->bundle, "owner",
                                           l->owner, "agent", "secrets",
                                           l->secrets ? json_incref((json_t *)l->secrets) : json_array());
    json_auto_t *answer = NULL;
    int status = !body ? -ENOMEM
                 : l->limits && json_object_set(body, "limits", (json_t *)l->limits) < 0
                     ? -ENOMEM
                 : l->egress && json_object_set(body, "egress", (json_t *)l->egress) < 0
                     ? -ENOMEM
                 : l->plugins && json_object_set(body, "plugins", (json_t *)l->plugins) < 0
                     ? -ENOMEM
                     : call(rc, "POST", "/v1/sandboxes", body, LAUNCH_TIMEOUT_MS, &answer);
    pid_t pid = status == 201 ? answer_pid(json_object_get(answer, "pid")) : 0;
    const char *pcr0 = json_string_value(json_object_get(json_object_get(answer, "pcrs"), "0"));
    if (pid > 0 && pcr0 && strlen(pcr0) == RUNNER_PCR_HEX_LEN) {
        *ret_pid = pid;
        memcpy(ret_pcr0, pcr0, RUNNER_PCR_HEX_LEN + 1);
        return 0;
    }
    if (status == 201)
        status = -EBADMSG;
    reason(status, answer, why, size);
    return status < 0 ? status : -EIO;
}

int runner_client_delete(runner_client *rc, const char *name, char *why, size_t size)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/sandboxes/%s", name);
    json_auto_t *answer = NULL;
    int r = call(rc, "DELETE", path, NULL, DELETE_TIMEOUT_MS, &answer);
    if (r == 200 || r == 404)
        return 0;
    reason(r, answer, why, size);
    return r < 0 ? r : -EIO;
}

/* Whether ANSWER is what GET /v1/logs answers (see runner_client_logs()). */
static bool logs_answer_valid(const json_t *answer)
{
    const char *boot = json_string_value(json_object_get(answer, "boot"));
    const json_t *next = json_object_get(answer, "next"), *lines = json_object_get(answer, "lines");
    if (!boot || strlen(boot) != 16 || !json_is_integer(next) || json_integer_value(next) < 0 ||
        !json_is_array(lines) || json_array_size(lines) > LOGS_LINES_MAX)
        return false;
    size_t i;
    const json_t *l;
    json_array_foreach(lines, i, l)
    {
        const json_t *seq = json_object_get(l, "seq");
        const char *replica = json_string_value(json_object_get(l, "replica"));
        if (!json_is_integer(seq) || !json_is_string(json_object_get(l, "time")) || !replica ||
            !resource_name_valid(replica) || !json_is_string(json_object_get(l, "stream")) ||
            !json_is_string(json_object_get(l, "text")))
            return false;
    }
    return true;
}

int runner_client_logs(runner_client *rc, const char *query, json_t **ret, char *why, size_t size)
{
    char path[512];
    snprintf(path, sizeof(path), "/v1/logs?%s", query);
    json_t *answer = NULL;
    int r = call(rc, "GET", path, NULL, LOGS_TIMEOUT_MS, &answer);
    if (r == 200 && !logs_answer_valid(answer)) {
        snprintf(why, size, "the runner's answer of logs is malformed");
        json_decref(answer);
        return -EBADMSG;
    }
    if (r != 200) {
        reason(r, answer, why, size);
        json_decref(answer);
        return r < 0 ? r : -EIO;
    }
    *ret = answer;
    return 0;
}
