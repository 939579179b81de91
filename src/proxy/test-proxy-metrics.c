/* Unit tests of the proxy metrics: the configuration age /readyz reads, errors by class. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "basic/timeutil.h"
#include "plugin/plugin.h"
#include "proxy/metrics.h"

static proxy_metrics m;

static void at(uint64_t started, uint64_t heard)
{
    memset(&m, 0, sizeof(m));
    atomic_store(&m.follow_started_ns, started);
    atomic_store(&m.config_heard_ns, heard);
}

Test(config_age, unknown_before_the_proxy_follows)
{
    uint64_t age = 7;
    at(0, 0);
    cr_expect_eq(proxy_metrics_config_age(&m, 100 * NSEC_PER_SEC, &age), -ENOENT);
    cr_expect_eq(age, 7, "no output on failure");
}

Test(config_age, waiting_for_the_first_configuration_counts_from_the_start)
{
    uint64_t age = 0;
    at(10 * NSEC_PER_SEC, 0);
    cr_expect_eq(proxy_metrics_config_age(&m, 52 * NSEC_PER_SEC, &age), -EAGAIN);
    cr_expect_eq(age, 42 * NSEC_PER_SEC);
}

Test(config_age, counts_from_the_last_event_or_keep_alive)
{
    uint64_t age = 0;
    at(10 * NSEC_PER_SEC, 20 * NSEC_PER_SEC);
    cr_expect_eq(proxy_metrics_config_age(&m, 62 * NSEC_PER_SEC, &age), 0);
    cr_expect_eq(age, 42 * NSEC_PER_SEC);
    cr_expect_eq(proxy_metrics_config_age(&m, 5 * NSEC_PER_SEC, &age), 0, "a clock read before the update");
    cr_expect_eq(age, 0);
}

Test(config_age, what_a_previous_run_of_the_role_heard_does_not_count)
{
    uint64_t age = 0;
    at(30 * NSEC_PER_SEC, 20 * NSEC_PER_SEC);
    cr_expect_eq(proxy_metrics_config_age(&m, 31 * NSEC_PER_SEC, &age), -EAGAIN);
    cr_expect_eq(age, 1 * NSEC_PER_SEC);
}

Test(config_age, rendered_once_heard)
{
    strbuf out;
    at(0, 0);
    proxy_metrics_follow_started(&m);
    strbuf_init(&out, 1 << 20);
    cr_assert_eq(proxy_metrics_render(&m, &out), 0);
    cr_expect_null(strstr(out.data, "cloister_proxy_config_age_seconds"));
    proxy_metrics_config_heard(&m);
    strbuf_reset(&out);
    cr_assert_eq(proxy_metrics_render(&m, &out), 0);
    cr_expect_not_null(strstr(out.data, "\ncloister_proxy_config_age_seconds 0.0"), "%s", out.data);
    strbuf_free(&out);
}

Test(errors, counted_by_class_and_upstream_errors_are_their_sum)
{
    static proxy_metrics em;
    strbuf out;
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_ALLOW, 200, 1000);
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_ALLOW, 502, 1000);
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_ALLOW, 504, 1000);
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_ALLOW, 504, 1000);
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_DENY, 403, 1000);
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_DENY, 503, 1000); /* not an upstream's */
    proxy_metrics_observe(&em, "wiki", PROXY_DECISION_INVALID, 400, 1000);
    proxy_metrics_observe(&em, NULL, PROXY_DECISION_ERROR, 503, 1000);
    strbuf_init(&out, 1 << 20);
    cr_assert_eq(proxy_metrics_render(&em, &out), 0);
    static const char *const want[] = {
        "\ncloister_proxy_errors_total{service=\"wiki\",class=\"bad_gateway\"} 1\n",
        "\ncloister_proxy_errors_total{service=\"wiki\",class=\"timeout\"} 2\n",
        "\ncloister_proxy_errors_total{service=\"wiki\",class=\"unavailable\"} 0\n",
        "\ncloister_proxy_errors_total{service=\"wiki\",class=\"invalid_request\"} 1\n",
        "\ncloister_proxy_errors_total{service=\"wiki\",class=\"internal\"} 0\n",
        "\ncloister_proxy_errors_total{service=\"(other)\",class=\"internal\"} 1\n",
        "\ncloister_proxy_upstream_errors_total{service=\"wiki\"} 3\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        cr_expect_not_null(strstr(out.data, want[i]), "%s not in\n%s", want[i], out.data);
    strbuf_free(&out);
}

Test(plugins, calls_by_phase_and_outcome_denials_and_time)
{
    static proxy_metrics pm;
    strbuf out;
    proxy_metrics_plugin(&pm, "claims-auth", CLOISTER_PHASE_REQUEST_HEADERS, PLUGIN_OUTCOME_OK, true, 2000000);
    proxy_metrics_plugin(&pm, "claims-auth", CLOISTER_PHASE_REQUEST_HEADERS, PLUGIN_OUTCOME_OK, false, 1000000);
    proxy_metrics_plugin(&pm, "hang", CLOISTER_PHASE_LOG, PLUGIN_OUTCOME_TIMEOUT, false, 300000000);
    proxy_metrics_plugin(&pm, "hang", CLOISTER_PHASE_COUNT_, PLUGIN_OUTCOME_OK, false, 1); /* out of range: ignored */
    strbuf_init(&out, 1 << 20);
    cr_assert_eq(proxy_metrics_render(&pm, &out), 0);
    static const char *const want[] = {
        "\ncloister_plugin_calls_total{plugin=\"claims-auth\",phase=\"request_headers\",outcome=\"ok\"} 2\n",
        "\ncloister_plugin_calls_total{plugin=\"claims-auth\",phase=\"request_headers\",outcome=\"crash\"} 0\n",
        "\ncloister_plugin_denials_total{plugin=\"claims-auth\",phase=\"request_headers\"} 1\n",
        "\ncloister_plugin_duration_seconds_sum{plugin=\"claims-auth\",phase=\"request_headers\"} 0.003000000\n",
        "\ncloister_plugin_calls_total{plugin=\"hang\",phase=\"log\",outcome=\"timeout\"} 1\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        cr_expect_not_null(strstr(out.data, want[i]), "%s not in\n%s", want[i], out.data);
    cr_expect_null(strstr(out.data, "plugin=\"hang\",phase=\"request_headers\""), "no calls: no lines");
    strbuf_free(&out);
}
