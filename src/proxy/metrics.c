/* The proxy's metrics (see metrics.h). */
#include "proxy/metrics.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/timeutil.h"
#include "plugin/plugin.h"

static const double buckets_s[PROXY_METRICS_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                        0.05,   0.1,   0.25,   0.5,   1,    2.5};
static const char *const decision_names[PROXY_DECISION_COUNT_] = {"allow", "deny", "unauthenticated", "invalid",
                                                                  "error"};
static const char *const error_class_names[PROXY_ERROR_COUNT_] = {"invalid_request", "internal", "bad_gateway",
                                                                  "unavailable", "timeout"};

const char *proxy_decision_name(proxy_decision d)
{
    return d < PROXY_DECISION_COUNT_ ? decision_names[d] : "error";
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot named NAME in the table of N slots at BASE (STRIDE bytes
 * apart): found, or claimed when free (CLAIM); NULL when absent, the table
 * is full or the name too long. */
static proxy_metrics_slot *find_slot(void *base, size_t stride, size_t n, const char *name, bool claim)
{
    if (!name || strlen(name) >= PROXY_METRICS_NAME_MAX)
        return NULL;
    uint64_t h = name_hash(name);
    for (size_t probe = 0; probe < n; probe++) {
        proxy_metrics_slot *s = (proxy_metrics_slot *)((char *)base + ((h + probe) % n) * stride);
        int state = atomic_load(&s->state);
        if (state == 0) {
            int expected = 0;
            if (!claim)
                return NULL;
            if (atomic_compare_exchange_strong(&s->state, &expected, 1)) {
                strcpy(s->name, name);
                atomic_store(&s->state, 2);
                return s;
            }
            state = atomic_load(&s->state);
        }
        while (state == 1) /* another thread is writing the name: a few instructions */
            state = atomic_load(&s->state);
        if (strcmp(s->name, name) == 0)
            return s;
    }
    return NULL;
}

/* The slot of SERVICE, or the overflow slot ("(other)") when it has none. */
static proxy_service_metrics *slot_of(proxy_metrics *m, const char *service)
{
    proxy_metrics_slot *s = find_slot(m->services, sizeof(m->services[0]), PROXY_METRICS_SERVICES, service, true);
    return s ? (proxy_service_metrics *)s : &m->services[PROXY_METRICS_SERVICES];
}

_Atomic int64_t *proxy_metrics_enclave(proxy_metrics *m, const char *name)
{
    proxy_metrics_slot *s = m ? find_slot(m->enclaves, sizeof(m->enclaves[0]), PROXY_METRICS_ENCLAVES, name, true) : NULL;
    return s ? &((proxy_enclave_load *)s)->in_flight : NULL;
}

int64_t proxy_metrics_enclave_in_flight(const proxy_metrics *m, const char *name)
{
    proxy_metrics_slot *s =
        m ? find_slot((void *)m->enclaves, sizeof(m->enclaves[0]), PROXY_METRICS_ENCLAVES, name, false) : NULL;
    return s ? MAX(atomic_load(&((proxy_enclave_load *)s)->in_flight), (int64_t)0) : 0;
}

void proxy_metrics_observe(proxy_metrics *m, const char *service, proxy_decision d, int status, uint64_t latency_ns)
{
    if (!m)
        return;
    proxy_service_metrics *s = slot_of(m, service);
    int cls = status >= 100 && status < 600 ? status / 100 - 1 : 4;
    atomic_fetch_add_explicit(&s->requests[d][cls], 1, memory_order_relaxed);
    int error = d == PROXY_DECISION_INVALID ? PROXY_ERROR_INVALID_REQUEST
                : d == PROXY_DECISION_ERROR ? PROXY_ERROR_INTERNAL
                : d != PROXY_DECISION_ALLOW ? -1
                : status == 502             ? PROXY_ERROR_BAD_GATEWAY
                : status == 503             ? PROXY_ERROR_UNAVAILABLE
                : status == 504             ? PROXY_ERROR_TIMEOUT
                                            : -1;
    if (error >= 0)
        atomic_fetch_add_explicit(&s->errors[error], 1, memory_order_relaxed);
    double secs = (double)latency_ns / 1e9;
    for (size_t b = 0; b < PROXY_METRICS_BUCKETS; b++)
        if (secs <= buckets_s[b]) {
            atomic_fetch_add_explicit(&s->latency_buckets[b], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&s->latency_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_sum_ns, latency_ns, memory_order_relaxed);
}

void proxy_metrics_config(proxy_metrics *m, uint64_t generation, int64_t revision)
{
    if (!m)
        return;
    atomic_store(&m->config_generation, generation);
    atomic_store(&m->config_revision, (uint64_t)(revision < 0 ? 0 : revision));
    atomic_fetch_add(&m->config_updates, 1);
}

void proxy_metrics_follow_started(proxy_metrics *m)
{
    if (m)
        atomic_store(&m->follow_started_ns, time_mono_ns());
}

void proxy_metrics_config_heard(proxy_metrics *m)
{
    if (m)
        atomic_store(&m->config_heard_ns, time_mono_ns());
}

int proxy_metrics_config_age(const proxy_metrics *m, uint64_t now, uint64_t *ret_age_ns)
{
    uint64_t started = atomic_load(&m->follow_started_ns), heard = atomic_load(&m->config_heard_ns);
    if (!started)
        return -ENOENT;
    /* what a previous run of the role heard does not count */
    uint64_t since = heard >= started ? heard : started;
    *ret_age_ns = now > since ? now - since : 0;
    return heard >= started ? 0 : -EAGAIN;
}

/* Whether decision D answered with status class C (0: 1xx .. 4: 5xx) is
 * usual enough to be rendered from the start (as 0): a counter's first
 * increase is lost to rate() when its series appears with it. The others
 * appear once they happen. */
static bool usual_outcome(int d, int c)
{
    switch (d) {
    case PROXY_DECISION_ALLOW:
        return c >= 1;
    case PROXY_DECISION_ERROR:
        return c == 4;
    default: /* deny, unauthenticated, invalid */
        return c == 3;
    }
}

/* Allowed requests of S answered 502, 503 or 504. */
static uint64_t upstream_errors(const proxy_service_metrics *s)
{
    uint64_t n = 0;
    for (int c = PROXY_ERROR_BAD_GATEWAY; c <= PROXY_ERROR_TIMEOUT; c++)
        n += atomic_load_explicit(&s->errors[c], memory_order_relaxed);
    return n;
}

void proxy_metrics_plugin(proxy_metrics *m, const char *name, unsigned phase, unsigned outcome, bool denied,
                          uint64_t latency_ns)
{
    if (!m || phase >= PROXY_METRICS_PLUGIN_PHASES || outcome >= PROXY_METRICS_PLUGIN_OUTCOMES)
        return;
    proxy_plugin_metrics *p = (proxy_plugin_metrics *)find_slot(m->plugins, sizeof(m->plugins[0]),
                                                                PROXY_METRICS_PLUGINS, name, true);
    if (!p)
        return;
    atomic_fetch_add_explicit(&p->calls[phase][outcome], 1, memory_order_relaxed);
    if (denied)
        atomic_fetch_add_explicit(&p->denials[phase], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->latency_sum_ns[phase], latency_ns, memory_order_relaxed);
}

/* The plugins' part of the exposition: calls by outcome, denials and
 * time per plugin and phase (those with calls). */
static int render_plugins(const proxy_metrics *m, strbuf *out)
{
    int r = strbuf_puts(out, "# HELP cloister_plugin_calls_total Plugin calls by plugin, phase and outcome (ok, error, "
                             "crash, timeout, garbage).\n"
                             "# TYPE cloister_plugin_calls_total counter\n"
                             "# HELP cloister_plugin_denials_total Plugin calls answered DENY.\n"
                             "# TYPE cloister_plugin_denials_total counter\n"
                             "# HELP cloister_plugin_duration_seconds_sum Time spent in plugin calls.\n"
                             "# TYPE cloister_plugin_duration_seconds_sum counter\n");
    for (size_t i = 0; i < PROXY_METRICS_PLUGINS && r == 0; i++) {
        const proxy_plugin_metrics *p = &m->plugins[i];
        if (atomic_load(&p->slot.state) != 2)
            continue;
        for (unsigned ph = 0; ph < PROXY_METRICS_PLUGIN_PHASES && r == 0; ph++) {
            uint64_t total = 0;
            for (unsigned o = 0; o < PROXY_METRICS_PLUGIN_OUTCOMES; o++)
                total += atomic_load_explicit(&p->calls[ph][o], memory_order_relaxed);
            if (!total)
                continue;
            const char *phase = plugin_phase_name((cloister_phase)ph);
            for (unsigned o = 0; o < PROXY_METRICS_PLUGIN_OUTCOMES && r == 0; o++)
                r = strbuf_printf(out, "cloister_plugin_calls_total{plugin=\"%s\",phase=\"%s\",outcome=\"%s\"} %llu\n",
                                  p->slot.name, phase, plugin_outcome_name((plugin_outcome)o),
                                  (unsigned long long)atomic_load_explicit(&p->calls[ph][o], memory_order_relaxed));
            if (r == 0)
                r = strbuf_printf(out,
                                  "cloister_plugin_denials_total{plugin=\"%s\",phase=\"%s\"} %llu\n"
                                  "cloister_plugin_duration_seconds_sum{plugin=\"%s\",phase=\"%s\"} %.9f\n",
                                  p->slot.name, phase,
                                  (unsigned long long)atomic_load_explicit(&p->denials[ph], memory_order_relaxed),
                                  p->slot.name, phase,
                                  (double)atomic_load_explicit(&p->latency_sum_ns[ph], memory_order_relaxed) / 1e9);
        }
    }
    return r;
}

int proxy_metrics_render(const proxy_metrics *m, strbuf *out)
{
    int r = strbuf_puts(out, "# HELP cloister_proxy_requests_total Proxy requests by service, decision and status class.\n"
                             "# TYPE cloister_proxy_requests_total counter\n");
    for (size_t i = 0; i <= PROXY_METRICS_SERVICES && r == 0; i++) {
        const proxy_service_metrics *s = &m->services[i];
        const char *name = i == PROXY_METRICS_SERVICES ? "(other)" : s->slot.name;
        if (i < PROXY_METRICS_SERVICES && atomic_load(&s->slot.state) != 2)
            continue;
        for (int d = 0; d < PROXY_DECISION_COUNT_ && r == 0; d++)
            for (int c = 0; c < 5 && r == 0; c++) {
                uint64_t n = atomic_load_explicit(&s->requests[d][c], memory_order_relaxed);
                if (n || usual_outcome(d, c))
                    r = strbuf_printf(out,
                                      "cloister_proxy_requests_total{service=\"%s\",decision=\"%s\",status=\"%dxx\"} %llu\n",
                                      name, decision_names[d], c + 1, (unsigned long long)n);
            }
    }
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_proxy_upstream_errors_total Allowed requests answered 502, 503 or 504.\n"
                             "# TYPE cloister_proxy_upstream_errors_total counter\n");
    for (size_t i = 0; i <= PROXY_METRICS_SERVICES && r == 0; i++) {
        const proxy_service_metrics *s = &m->services[i];
        if ((i < PROXY_METRICS_SERVICES && atomic_load(&s->slot.state) != 2) || !atomic_load(&s->latency_count))
            continue;
        r = strbuf_printf(out, "cloister_proxy_upstream_errors_total{service=\"%s\"} %llu\n",
                          i == PROXY_METRICS_SERVICES ? "(other)" : s->slot.name,
                          (unsigned long long)upstream_errors(s));
    }
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_proxy_errors_total Proxy requests answered with an error, by class: "
                             "invalid_request (refused before a decision), internal (no decision could be made), "
                             "bad_gateway, unavailable, timeout (an allowed request's upstream: 502, 503, 504).\n"
                             "# TYPE cloister_proxy_errors_total counter\n");
    for (size_t i = 0; i <= PROXY_METRICS_SERVICES && r == 0; i++) {
        const proxy_service_metrics *s = &m->services[i];
        if ((i < PROXY_METRICS_SERVICES && atomic_load(&s->slot.state) != 2) || !atomic_load(&s->latency_count))
            continue;
        for (int c = 0; c < PROXY_ERROR_COUNT_ && r == 0; c++)
            r = strbuf_printf(out, "cloister_proxy_errors_total{service=\"%s\",class=\"%s\"} %llu\n",
                              i == PROXY_METRICS_SERVICES ? "(other)" : s->slot.name, error_class_names[c],
                              (unsigned long long)atomic_load_explicit(&s->errors[c], memory_order_relaxed));
    }
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_proxy_request_duration_seconds Proxy request latency by service.\n"
                             "# TYPE cloister_proxy_request_duration_seconds histogram\n");
    for (size_t i = 0; i <= PROXY_METRICS_SERVICES && r == 0; i++) {
        const proxy_service_metrics *s = &m->services[i];
        const char *name = i == PROXY_METRICS_SERVICES ? "(other)" : s->slot.name;
        uint64_t count = atomic_load_explicit(&s->latency_count, memory_order_relaxed);
        if ((i < PROXY_METRICS_SERVICES && atomic_load(&s->slot.state) != 2) || !count)
            continue;
        uint64_t cumulative = 0;
        for (size_t b = 0; b < PROXY_METRICS_BUCKETS && r == 0; b++) {
            cumulative += atomic_load_explicit(&s->latency_buckets[b], memory_order_relaxed);
            r = strbuf_printf(out, "cloister_proxy_request_duration_seconds_bucket{service=\"%s\",le=\"%g\"} %llu\n",
                              name, buckets_s[b], (unsigned long long)cumulative);
        }
        if (r == 0)
            r = strbuf_printf(out,
                              "cloister_proxy_request_duration_seconds_bucket{service=\"%s\",le=\"+Inf\"} %llu\n"
                              "cloister_proxy_request_duration_seconds_sum{service=\"%s\"} %.9f\n"
                              "cloister_proxy_request_duration_seconds_count{service=\"%s\"} %llu\n",
                              name, (unsigned long long)count, name,
                              (double)atomic_load_explicit(&s->latency_sum_ns, memory_order_relaxed) / 1e9, name,
                              (unsigned long long)count);
    }
    if (r == 0)
        r = strbuf_puts(out, "# HELP cloister_proxy_enclave_in_flight Requests in flight to an Enclave's replicas.\n"
                             "# TYPE cloister_proxy_enclave_in_flight gauge\n");
    for (size_t i = 0; i < PROXY_METRICS_ENCLAVES && r == 0; i++)
        if (atomic_load(&m->enclaves[i].slot.state) == 2)
            r = strbuf_printf(out, "cloister_proxy_enclave_in_flight{enclave=\"%s\"} %lld\n", m->enclaves[i].slot.name,
                              (long long)MAX(atomic_load(&m->enclaves[i].in_flight), (int64_t)0));
    if (r == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_proxy_config_revision The store revision of the configuration the proxy serves.\n"
                          "# TYPE cloister_proxy_config_revision gauge\n"
                          "cloister_proxy_config_revision %llu\n"
                          "# HELP cloister_proxy_config_updates_total Configurations the proxy has switched to.\n"
                          "# TYPE cloister_proxy_config_updates_total counter\n"
                          "cloister_proxy_config_updates_total %llu\n"
                          "# HELP cloister_proxy_connections Client connections open in the proxy.\n"
                          "# TYPE cloister_proxy_connections gauge\n"
                          "cloister_proxy_connections %llu\n"
                          "# HELP cloister_proxy_audit_events_dropped_total Access-log entries that did not reach the "
                          "audit role (each was written to the proxy's log instead).\n"
                          "# TYPE cloister_proxy_audit_events_dropped_total counter\n"
                          "cloister_proxy_audit_events_dropped_total %llu\n",
                          (unsigned long long)atomic_load(&m->config_revision),
                          (unsigned long long)atomic_load(&m->config_updates),
                          (unsigned long long)atomic_load(&m->connections),
                          (unsigned long long)atomic_load(&m->audit_dropped));
    uint64_t age;
    if (r == 0 && proxy_metrics_config_age(m, time_mono_ns(), &age) == 0)
        r = strbuf_printf(out,
                          "# HELP cloister_proxy_config_age_seconds Time since the proxy last heard from its "
                          "configuration stream (an event or a keep-alive, at least every 5 s).\n"
                          "# TYPE cloister_proxy_config_age_seconds gauge\n"
                          "cloister_proxy_config_age_seconds %.3f\n",
                          (double)age / 1e9);
    if (r == 0)
        r = render_plugins(m, out);
    return r;
}
