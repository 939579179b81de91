/* W3C trace context through the proxy (docs/proxy.md, "Trace context"):
 * the trace stage reads the client's traceparent and tracestate, the
 * trace-upstream stage writes the ones the upstream gets, and
 * proxy_trace_finish() ends the spans and exports the access record as an
 * OTLP log record (see corridor.h).
 *
 * A client is outside the trust boundary unless its Service sets
 * spec.trustTraceContext: its request starts a new trace, and its valid
 * context becomes a link of the SERVER span. Under a trusting Service a
 * valid traceparent is the SERVER span's parent and its tracestate (checked,
 * capped) goes upstream. Whatever the client sent is never forwarded as it
 * is: rewrite.c drops both headers, and the upstream gets a traceparent
 * whose parent-id is the CLIENT span of its hop. Without export the ids are
 * still made (the upstream sees one consistent trace), from the request's
 * pool and the thread's generator: no allocation of its own. */
#include <stdio.h>
#include <string.h>

#include "basic/encoding.h"
#include "proxy/corridor.h"
#include "proxy/trace-state.h"

/* 64 random-looking bits from T's generator (splitmix64: each state gives
 * another output, so ids repeat only after 2^64 draws of a thread). */
static uint64_t trace_random(proxy_thread *t)
{
    uint64_t z = (t->trace_seed += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fills OUT (LEN bytes, a multiple of 8) with non-zero random bytes. */
static void trace_random_id(proxy_thread *t, uint8_t *out, size_t len)
{
    for (;;) {
        uint64_t any = 0;
        for (size_t i = 0; i < len; i += 8) {
            uint64_t v = trace_random(t);
            memcpy(out + i, &v, 8);
            any |= v;
        }
        if (any)
            return;
    }
}

/* Reads the client's trace headers of PR: *RET_PARENT from exactly one
 * valid traceparent (false otherwise: absent, repeated or malformed), the
 * tracestate headers joined with ',' into *RET_STATE (from the pool; a NULL
 * base when absent or longer than PROXY_TRACESTATE_IN_MAX), and the
 * User-Agent into PR. */
static bool read_trace_headers(proxy_request *pr, trace_context *ret_parent, h2o_iovec_t *ret_state)
{
    const h2o_headers_t *in = &pr->req->headers;
    const h2o_iovec_t *parent = NULL;
    size_t n_parents = 0, state_len = 0, n_states = 0;
    for (size_t i = 0; i < in->size; i++) {
        const h2o_header_t *h = &in->entries[i];
        if (h->name == &H2O_TOKEN_USER_AGENT->buf)
            pr->user_agent = h->value;
        else if (h2o_lcstris(h->name->base, h->name->len, H2O_STRLIT("traceparent"))) {
            parent = &h->value;
            n_parents++;
        } else if (h2o_lcstris(h->name->base, h->name->len, H2O_STRLIT("tracestate"))) {
            state_len += h->value.len + 1;
            n_states++;
        }
    }
    *ret_state = h2o_iovec_init(NULL, 0);
    if (n_states && state_len <= PROXY_TRACESTATE_IN_MAX + 1) {
        char *joined = h2o_mem_alloc_pool(&pr->req->pool, state_len);
        size_t w = 0;
        for (size_t i = 0; i < in->size; i++) {
            const h2o_header_t *h = &in->entries[i];
            if (!h2o_lcstris(h->name->base, h->name->len, H2O_STRLIT("tracestate")))
                continue;
            if (w)
                joined[w++] = ',';
            memcpy(joined + w, h->value.base, h->value.len);
            w += h->value.len;
        }
        *ret_state = h2o_iovec_init(joined, w);
    }
    /* two traceparent headers cannot be told apart: neither is the caller's */
    return n_parents == 1 && trace_context_parse(parent->base, parent->len, ret_parent) == 0;
}

/* Sets the request's trace: the SERVER span (when exporting) and its
 * context, continued from a trusted client's traceparent or new, the
 * client's context linked when it is not trusted; the tracestate to pass
 * when the trace continues. Never refuses. */
proxy_step proxy_stage_trace(proxy_request *pr)
{
    proxy_thread *t = pr->t;
    trace_context incoming;
    h2o_iovec_t state;
    bool valid = read_trace_headers(pr, &incoming, &state);
    bool trusted = valid && pr->svc->trust_trace_context;
    pr->server_span = telemetry_span_start(pr->rec.method, TELEMETRY_SPAN_SERVER, trusted ? &incoming : NULL);
    if (telemetry_span_context(pr->server_span, &pr->trace)) {
        if (valid && !trusted)
            telemetry_span_add_link(pr->server_span, &incoming);
    } else { /* export is off: the ids the upstream will see all the same */
        if (trusted) {
            memcpy(pr->trace.trace_id, incoming.trace_id, sizeof(pr->trace.trace_id));
            pr->trace.flags = incoming.flags;
        } else {
            trace_random_id(t, pr->trace.trace_id, sizeof(pr->trace.trace_id));
            pr->trace.flags = 0; /* nothing of it is recorded */
        }
        trace_random_id(t, pr->trace.span_id, sizeof(pr->trace.span_id));
    }
    pr->traced = true;
    if (trusted && state.base) {
        char *kept = h2o_mem_alloc_pool(&pr->req->pool, PROXY_TRACESTATE_MAX + 1);
        int n = proxy_tracestate_filter(state.base, state.len, kept, PROXY_TRACESTATE_MAX + 1);
        if (n > 0)
            pr->tracestate = h2o_iovec_init(kept, (size_t)n);
    }
    return PROXY_NEXT;
}

/* Starts the CLIENT span of the hop to the upstream (or enclave replica)
 * and adds the traceparent naming it, and the tracestate kept, to the
 * headers rewrite.c made for the upstream. Never refuses. */
proxy_step proxy_stage_trace_upstream(proxy_request *pr)
{
    proxy_thread *t = pr->t;
    h2o_req_t *req = pr->req;
    const proxy_service *svc = pr->svc;
    pr->client_span = telemetry_span_start(pr->rec.method, TELEMETRY_SPAN_CLIENT, &pr->trace);
    if (pr->client_span) {
        telemetry_span_set_attr_str(pr->client_span, "http.request.method", pr->rec.method);
        telemetry_span_set_attr_str(pr->client_span, "cloister.service", svc->name);
        if (svc->is_enclave) {
            telemetry_span_set_attr_str(pr->client_span, "cloister.enclave", svc->enclave);
            telemetry_span_set_attr_str(pr->client_span, "cloister.replica", svc->replica_names[pr->replica]);
        } else {
            char host[256];
            proxy_copy_printable(host, sizeof(host), svc->upstream.host.base, svc->upstream.host.len);
            telemetry_span_set_attr_str(pr->client_span, "server.address", host);
            telemetry_span_set_attr_int(pr->client_span, "server.port", h2o_url_get_port(&svc->upstream));
        }
    }
    if (!telemetry_span_context(pr->client_span, &pr->upstream_trace)) {
        pr->upstream_trace = pr->trace;
        trace_random_id(t, pr->upstream_trace.span_id, sizeof(pr->upstream_trace.span_id));
    }
    char *tp = h2o_mem_alloc_pool(&req->pool, TRACEPARENT_LEN + 1);
    trace_context_format(&pr->upstream_trace, tp);
    h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("traceparent"), 0, NULL, tp, TRACEPARENT_LEN);
    if (pr->tracestate.base)
        h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("tracestate"), 0, NULL, pr->tracestate.base,
                              pr->tracestate.len);
    return PROXY_NEXT;
}

void proxy_trace_upstream_answered(proxy_request *pr, int status)
{
    if (!pr->client_span)
        return;
    telemetry_span_set_attr_int(pr->client_span, "http.response.status_code", status);
    if (status >= 400) {
        char code[16];
        snprintf(code, sizeof(code), "%d", status);
        telemetry_span_set_status(pr->client_span, TELEMETRY_STATUS_ERROR, code);
    }
    telemetry_span_end(pr->client_span);
    pr->client_span = NULL;
}

/* The OTLP severity of an access record: denials warn, errors are errors. */
static int access_severity(const access_record *rec, int status)
{
    if (rec->decision == PROXY_DECISION_ERROR || status >= 500)
        return TELEMETRY_SEVERITY_ERROR;
    if (rec->decision == PROXY_DECISION_DENY || status >= 400)
        return TELEMETRY_SEVERITY_WARN;
    return TELEMETRY_SEVERITY_INFO;
}

/* Sets the SERVER span's attributes (HTTP semantic conventions and the
 * proxy's own) and status, and ends it. */
static void server_span_end(proxy_request *pr, int status)
{
    telemetry_span *s = pr->server_span;
    const access_record *rec = &pr->rec;
    h2o_req_t *req = pr->req;
    telemetry_span_set_attr_str(s, "http.request.method", rec->method);
    telemetry_span_set_attr_str(s, "url.path", rec->path);
    /* req->input: the request as it came (forwarding rewrites the rest) */
    telemetry_span_set_attr_str(s, "url.scheme", req->input.scheme == &H2O_URL_SCHEME_HTTPS ? "https" : "http");
    telemetry_span_set_attr_int(s, "http.response.status_code", status);
    char text[256];
    proxy_copy_printable(text, sizeof(text), req->input.authority.base, req->input.authority.len);
    char *colon = strrchr(text, ':');
    if (colon && !strchr(colon, ']'))
        *colon = 0;
    telemetry_span_set_attr_str(s, "server.address", text);
    if (pr->user_agent.base) {
        proxy_copy_printable(text, sizeof(text), pr->user_agent.base, pr->user_agent.len);
        telemetry_span_set_attr_str(s, "user_agent.original", text);
    }
    if (rec->ip[0])
        telemetry_span_set_attr_str(s, "client.address", rec->ip);
    telemetry_span_set_attr_str(s, "cloister.request_id", rec->id);
    if (rec->service)
        telemetry_span_set_attr_str(s, "cloister.service", rec->service);
    if (rec->user)
        telemetry_span_set_attr_str(s, "cloister.user", rec->user);
    if (rec->session)
        telemetry_span_set_attr_str(s, "cloister.session", rec->session);
    telemetry_span_set_attr_str(s, "cloister.decision", proxy_decision_name(rec->decision));
    if (rec->policy[0])
        telemetry_span_set_attr_str(s, "cloister.policy", rec->policy);
    if (rec->rule[0])
        telemetry_span_set_attr_str(s, "cloister.rule", rec->rule);
    if (status >= 500) {
        snprintf(text, sizeof(text), "%d", status);
        telemetry_span_set_status(s, TELEMETRY_STATUS_ERROR, text);
    }
    telemetry_span_end(s);
    pr->server_span = NULL;
}

/* The access record of PR as an OTLP log record in its trace. */
static void access_log_record(proxy_request *pr, int status, uint64_t bytes, uint64_t latency_us)
{
    const access_record *rec = &pr->rec;
    char status_s[16], bytes_s[24], latency_s[24];
    snprintf(status_s, sizeof(status_s), "%d", status);
    snprintf(bytes_s, sizeof(bytes_s), "%llu", (unsigned long long)bytes);
    snprintf(latency_s, sizeof(latency_s), "%llu", (unsigned long long)latency_us);
    const char *attrs[40];
    size_t n = 0;
#define ATTR(k, v)                                                                                                     \
    do {                                                                                                               \
        const char *value_ = (v);                                                                                      \
        if (value_) {                                                                                                  \
            attrs[n++] = (k);                                                                                          \
            attrs[n++] = value_;                                                                                       \
        }                                                                                                              \
    } while (0)
    ATTR("event.name", "proxy.access");
    ATTR("cloister.request_id", rec->id);
    ATTR("cloister.user", rec->user);
    ATTR("cloister.session", rec->session);
    ATTR("cloister.service", rec->service);
    ATTR("cloister.decision", proxy_decision_name(rec->decision));
    ATTR("cloister.policy", rec->policy[0] ? rec->policy : NULL);
    ATTR("cloister.rule", rec->rule[0] ? rec->rule : NULL);
    ATTR("client.address", rec->ip[0] ? rec->ip : NULL);
    ATTR("http.request.method", rec->method);
    ATTR("url.path", rec->path);
    ATTR("http.response.status_code", status_s);
    ATTR("http.response.body.size", bytes_s);
    ATTR("cloister.latency_us", latency_s);
#undef ATTR
    attrs[n] = NULL;
    telemetry_log(access_severity(rec, status), "proxy.access", pr->traced ? &pr->trace : NULL, attrs);
}

void proxy_trace_finish(proxy_request *pr, int status, uint64_t bytes, uint64_t latency_us)
{
    if (pr->client_span) { /* the upstream never answered: the request went away first */
        telemetry_span_set_status(pr->client_span, TELEMETRY_STATUS_ERROR, "no answer from the upstream");
        telemetry_span_end(pr->client_span);
        pr->client_span = NULL;
    }
    if (pr->server_span)
        server_span_end(pr, status);
    if (telemetry_enabled())
        access_log_record(pr, status, bytes, latency_us);
}
