/* What OTLP export costs per proxied request, the exporter alone: the
 * records the proxy makes for one request (a SERVER span with 14
 * attributes and a link, a CLIENT span with 5, an access log record with 14),
 * N times on this thread through the real exporter to the collector named
 * by OTEL_EXPORTER_OTLP_ENDPOINT. Prints the CPU time per request of the
 * calling thread and of the whole process (the exporter's thread, its gzip
 * and its requests included), and the records dropped (there should be none:
 * run.sh sets a queue that holds them all).
 *
 * Usage: bench-telemetry N */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "telemetry/telemetry.h"

static double cpu_us(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* The records of one request, as src/proxy/trace.c makes them. */
static void one_request(const trace_context *incoming)
{
    static const char *const server_attrs[][2] = {
        {"http.request.method", "GET"}, {"url.path", "/index.html"}, {"url.scheme", "http"},
        {"server.address", "static.localhost"}, {"user_agent.original", "wrk"}, {"client.address", "127.0.0.1"},
        {"cloister.request_id", "01JEXAMPLE0REQUEST0ID0"}, {"cloister.service", "static"}, {"cloister.user", "bench"},
        {"cloister.session", "01JEXAMPLE0SESSION0ID0"}, {"cloister.decision", "allow"},
        {"cloister.policy", "bench-rules"}, {"cloister.rule", "9"},
    };
    static const char *const log_attrs[] = {
        "event.name", "proxy.access", "cloister.request_id", "01JEXAMPLE0REQUEST0ID0", "cloister.user", "bench",
        "cloister.session", "01JEXAMPLE0SESSION0ID0", "cloister.service", "static", "cloister.decision", "allow",
        "cloister.policy", "bench-rules", "cloister.rule", "9", "client.address", "127.0.0.1",
        "http.request.method", "GET", "url.path", "/index.html", "http.response.status_code", "200",
        "http.response.body.size", "612", "cloister.latency_us", "123", NULL,
    };
    telemetry_span *server = telemetry_span_start("GET", TELEMETRY_SPAN_SERVER, NULL);
    telemetry_span_add_link(server, incoming);
    trace_context ctx;
    telemetry_span_context(server, &ctx);
    telemetry_span *client = telemetry_span_start("GET", TELEMETRY_SPAN_CLIENT, &ctx);
    telemetry_span_set_attr_str(client, "http.request.method", "GET");
    telemetry_span_set_attr_str(client, "cloister.service", "static");
    telemetry_span_set_attr_str(client, "server.address", "127.0.0.1");
    telemetry_span_set_attr_int(client, "server.port", 8081);
    telemetry_span_set_attr_int(client, "http.response.status_code", 200);
    telemetry_span_end(client);
    for (size_t i = 0; i < sizeof(server_attrs) / sizeof(server_attrs[0]); i++)
        telemetry_span_set_attr_str(server, server_attrs[i][0], server_attrs[i][1]);
    telemetry_span_set_attr_int(server, "http.response.status_code", 200);
    telemetry_span_end(server);
    telemetry_log(TELEMETRY_SEVERITY_INFO, "proxy.access", &ctx, log_attrs);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 0;
    if (n <= 0) {
        fprintf(stderr, "usage: bench-telemetry N (with OTEL_EXPORTER_OTLP_ENDPOINT set)\n");
        return 2;
    }
    if (telemetry_init("cloisterd-proxy") < 0 || !telemetry_enabled()) {
        fprintf(stderr, "export is off: set OTEL_EXPORTER_OTLP_ENDPOINT\n");
        return 1;
    }
    trace_context incoming;
    trace_context_new(&incoming);
    double thread0 = cpu_us(CLOCK_THREAD_CPUTIME_ID), process0 = cpu_us(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i++)
        one_request(&incoming);
    double thread1 = cpu_us(CLOCK_THREAD_CPUTIME_ID);
    telemetry_shutdown(); /* everything sent: the exporter's work is all counted */
    double process1 = cpu_us(CLOCK_PROCESS_CPUTIME_ID);
    printf("%.2f %.2f %llu\n", (thread1 - thread0) / (double)n, (process1 - process0) / (double)n,
           (unsigned long long)(telemetry_dropped(TELEMETRY_TRACES) + telemetry_dropped(TELEMETRY_LOGS)));
    return 0;
}
