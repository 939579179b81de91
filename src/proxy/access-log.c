/* The access log: one record per request, batched per thread into audit
 * entries (see corridor.h). */
#include <stdatomic.h>
#include <stdio.h>

#include "audit/event.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/timeutil.h"
#include "proxy/corridor.h"

#define ACCESS_BATCH_BYTES (12 * 1024) /* record text per audit entry (entries are capped at 16 KiB) */
#define ACCESS_RECORD_MAX 2600         /* the longest record: path, policy, rule and names at their caps */
#define ACCESS_FLUSH_MS 200            /* a batch waits at most this long */

const char *const proxy_access_fields[PROXY_ACCESS_FIELDS_N] = {
    "time", "requestId", "user", "session", "ip", "service", "method",
    "path", "decision", "policy", "rule", "status", "bytes", "latencyUs",
};

/* The field names as the JSON array each entry carries. New reference, or
 * NULL. */
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

/* The outcome of a batch: "denied" when any of its records was refused by
 * authentication or policy, else "failure" when any was refused before a
 * decision or without one (invalid, error), else "success". */
static const char *batch_outcome(const proxy_thread *t)
{
    return t->access_denied ? "denied" : t->access_failed ? "failure" : "success";
}

/* Sends the thread's pending records as one audit entry: {action:
 * proxy.access, outcome (batch_outcome), details: {fields: [names],
 * requests: [[values]...], count, denied}} (arrays rather than objects: a
 * third of the bytes and no key sorting). */
static void access_flush(proxy_thread *t)
{
    if (h2o_timeout_is_linked(&t->access_flush))
        h2o_timeout_unlink(&t->access_flush);
    if (!t->access_count)
        return;
    int r = strbuf_putc(&t->access, ']');
    json_error_t err;
    json_t *requests = r == 0 ? json_loadb(t->access.data, t->access.len, 0, &err) : NULL;
    json_t *details = requests ? json_pack("{s:o, s:o, s:i, s:i}", "fields", fields_json(), "requests", requests,
                                           "count", (int)t->access_count, "denied", (int)t->access_denied)
                               : NULL;
    if (details)
        audit_event_emit(&(audit_event){.action = "proxy.access", .kind = "Service", .outcome = batch_outcome(t),
                                        .details = details});
    else
        log_fields(LOG_LEVEL_ERROR, "access records could not be batched; they are logged here instead", "records",
                   t->access.data, NULL);
    json_decref(details);
    strbuf_reset(&t->access);
    t->access_count = t->access_denied = t->access_failed = 0;
}

static void on_access_timeout(h2o_timeout_entry_t *entry)
{
    access_flush(H2O_STRUCT_FROM_MEMBER(proxy_thread, access_flush, entry));
}

void proxy_access_init(proxy_thread *t)
{
    strbuf_init(&t->access, ACCESS_BATCH_BYTES + ACCESS_RECORD_MAX + 64);
    h2o_timeout_init(t->ctx->loop, &t->access_timeout, ACCESS_FLUSH_MS);
    t->access_flush.cb = on_access_timeout;
}

void proxy_access_dispose(proxy_thread *t)
{
    access_flush(t);
    if (h2o_timeout_is_linked(&t->access_flush))
        h2o_timeout_unlink(&t->access_flush);
    h2o_timeout_dispose(t->ctx->loop, &t->access_timeout);
    strbuf_free(&t->access);
}

/* Appends the JSON string S (or null) as the next array element. */
static void put_member(strbuf *b, const char *s)
{
    strbuf_putc(b, ',');
    if (s)
        strbuf_put_json_string(b, s);
    else
        strbuf_puts(b, "null");
}

void proxy_access_encode(strbuf *b, bool first, const char *now, const access_record *rec, int status,
                         uint64_t bytes, uint64_t latency_us)
{
    strbuf_printf(b, "%c[\"%s\",\"%s\"", first ? '[' : ',', now, rec->id);
    put_member(b, rec->user);
    put_member(b, rec->session);
    put_member(b, rec->ip[0] ? rec->ip : NULL);
    put_member(b, rec->service);
    put_member(b, rec->method);
    put_member(b, rec->path);
    put_member(b, proxy_decision_name(rec->decision));
    put_member(b, rec->policy[0] ? rec->policy : NULL);
    put_member(b, rec->rule[0] ? rec->rule : NULL);
    strbuf_printf(b, ",%d,%llu,%llu]", status, (unsigned long long)bytes, (unsigned long long)latency_us);
}

void proxy_access_emit(void *p)
{
    proxy_request *pr = p;
    access_record *rec = &pr->rec;
    h2o_req_t *req = pr->req;
    proxy_thread *t = pr->t;
    uint64_t latency_ns = time_mono_ns() - rec->started;
    int status = req->res.status;
    if (t->access.len + ACCESS_RECORD_MAX > ACCESS_BATCH_BYTES)
        access_flush(t);
    char now[40];
    time_format_rfc3339_ms(time_now_ns(), now, sizeof(now));
    proxy_access_encode(&t->access, t->access_count == 0, now, rec, status, req->bytes_sent, latency_ns / 1000);
    t->access_denied += rec->decision == PROXY_DECISION_DENY || rec->decision == PROXY_DECISION_UNAUTHENTICATED;
    t->access_failed += rec->decision == PROXY_DECISION_INVALID || rec->decision == PROXY_DECISION_ERROR;
    if (t->access_count++ == 0)
        h2o_timeout_link(t->ctx->loop, &t->access_timeout, &t->access_flush);
    const proxy_settings *s = t->settings;
    if (rec->in_flight)
        atomic_fetch_sub(rec->in_flight, 1);
    proxy_metrics_observe(s->metrics, rec->service, rec->decision, status, latency_ns);
    proxy_trace_finish(pr, status, req->bytes_sent, latency_ns / 1000);
    if (s->metrics)
        atomic_store_explicit(&s->metrics->audit_dropped, audit_event_dropped(), memory_order_relaxed);
    proxy_config_unref(rec->config);
}

void proxy_copy_printable(char *out, size_t size, const char *s, size_t len)
{
    size_t n = MIN(len, size - 1);
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    out[n] = 0;
}
