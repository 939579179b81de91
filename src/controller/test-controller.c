/* The Enclave controller's decisions (controller/decide.h): how many
 * replicas to keep, how long to back off, when to scale, what to do with
 * each replica after a listing, which one to replace after a change of the
 * spec. They are pure, so time is a number here and nothing sleeps; the
 * controller carrying them out runs against the real runner in
 * tests/test_enclaves.py and tests/test_enclave_proxy.py. The last test runs
 * a controller on a real store: it reconciles only while it holds the
 * lease. */
#include <criterion/criterion.h>

#include "basic/timeutil.h"
#include "controller/decide.h"

#define MS(x) ((uint64_t)(x) * NSEC_PER_MSEC)
#define T0 MS(1000000) /* an arbitrary monotonic "now" far from 0 */

Test(desired, starts_at_min_and_stays_within_the_bounds)
{
    cr_expect_eq(controller_desired(0, 1, 1), 1);  /* nothing asked yet: min */
    cr_expect_eq(controller_desired(0, 2, 4), 2);
    cr_expect_eq(controller_desired(3, 2, 4), 3);  /* an autoscaler's choice inside the bounds is kept */
    cr_expect_eq(controller_desired(1, 2, 4), 2);  /* below min: min */
    cr_expect_eq(controller_desired(9, 2, 4), 4);  /* above max: max */
    cr_expect_eq(controller_desired(4, 1, 2), 2);  /* max lowered under it */
    cr_expect_eq(controller_desired(1, 3, 3), 3);  /* min raised over it */
    cr_expect_eq(controller_desired(16, 16, 16), 16);
}

Test(backoff, doubles_from_250_ms_to_30_s)
{
    uint64_t d = controller_backoff_ms(0, 0);
    cr_expect_eq(d, CONTROLLER_BACKOFF_MIN_MS);
    uint64_t want[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        d = controller_backoff_ms(d, 1000);
        cr_expect_eq(d, want[i], "step %zu: %llu", i, (unsigned long long)d);
    }
    cr_expect_eq(CONTROLLER_BACKOFF_MAX_MS, 30000);
}

Test(backoff, resets_after_a_minute_of_running)
{
    cr_expect_eq(controller_backoff_ms(30000, 59999), 30000);
    cr_expect_eq(controller_backoff_ms(16000, 59999), 30000);
    cr_expect_eq(controller_backoff_ms(30000, 60000), CONTROLLER_BACKOFF_MIN_MS);
    cr_expect_eq(controller_backoff_ms(8000, 3600 * 1000), CONTROLLER_BACKOFF_MIN_MS);
    /* a launch that failed counts as a run of 0 ms: the streak goes on */
    cr_expect_eq(controller_backoff_ms(250, 0), 500);
}

Test(backoff, a_stray_small_previous_delay_still_doubles_from_the_minimum)
{
    cr_expect_eq(controller_backoff_ms(1, 0), 2 * CONTROLLER_BACKOFF_MIN_MS);
}

/* ---- autoscaling ---- */

static const controller_scaling defaults = CONTROLLER_SCALING_DEFAULTS;

/* The default thresholds, on requests in flight alone (no memory limit). */
static unsigned autoscale_default(controller_load_clock *clock, unsigned desired, unsigned min, unsigned max,
                                  unsigned ready, int64_t in_flight, uint64_t now)
{
    return controller_autoscale(clock, &defaults, desired, min, max, ready, in_flight, -1, now);
}

Test(autoscale, scales_up_once_busy_for_three_seconds)
{
    controller_load_clock clock = {0};
    /* 2 ready, 9 in flight: above 4 per replica */
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0), 2);
    cr_expect_eq(clock.busy_since, T0);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0 + MS(2999)), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0 + MS(3000)), 3);
    cr_expect_eq(clock.busy_since, 0, "the busy period starts again after a step");
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 13, T0 + MS(3001)), 3);
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 13, T0 + MS(6001)), 4);
}

Test(autoscale, busy_means_strictly_more_than_four_per_ready_replica)
{
    controller_load_clock clock = {0};
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 8, T0), 2);
    cr_expect_eq(clock.busy_since, 0);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 8, T0 + MS(60000)), 2);
    /* readiness counts, not desired: one of two ready and 5 in flight is busy */
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 1, 5, T0), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 1, 5, T0 + MS(3000)), 3);
}

Test(autoscale, never_above_max_nor_with_no_replica_ready)
{
    controller_load_clock clock = {0};
    cr_expect_eq(autoscale_default(&clock, 4, 1, 4, 4, 100, T0), 4);
    cr_expect_eq(autoscale_default(&clock, 4, 1, 4, 4, 100, T0 + MS(10000)), 4);
    cr_expect_eq(clock.busy_since, 0);
    /* nothing ready (all starting): the load says nothing of capacity */
    cr_expect_eq(autoscale_default(&clock, 1, 1, 4, 0, 100, T0), 1);
    cr_expect_eq(autoscale_default(&clock, 1, 1, 4, 0, 100, T0 + MS(10000)), 1);
}

Test(autoscale, a_lull_resets_the_busy_period)
{
    controller_load_clock clock = {0};
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 3, T0 + MS(2000)), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0 + MS(2500)), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0 + MS(5000)), 2, "busy again only since 2.5 s");
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 9, T0 + MS(5500)), 3);
}

Test(autoscale, scales_down_after_fifteen_idle_seconds_one_step_per_period)
{
    controller_load_clock clock = {0};
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0), 3);
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0 + MS(14999)), 3);
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0 + MS(15000)), 2);
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 0, T0 + MS(15001)), 2, "a full idle period before the next");
    cr_expect_eq(autoscale_default(&clock, 2, 1, 4, 2, 0, T0 + MS(30000)), 1);
    /* at min: stays, and the idle clock stops */
    cr_expect_eq(autoscale_default(&clock, 1, 1, 4, 1, 0, T0 + MS(60000)), 1);
    cr_expect_eq(clock.idle_since, 0);
}

Test(autoscale, any_request_in_flight_is_not_idle)
{
    controller_load_clock clock = {0};
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0), 3);
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 1, T0 + MS(10000)), 3);
    cr_expect_eq(clock.idle_since, 0);
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0 + MS(20000)), 3, "idle again only since 20 s");
    cr_expect_eq(autoscale_default(&clock, 3, 1, 4, 3, 0, T0 + MS(35000)), 2);
}

Test(autoscale, memory_above_its_percent_for_up_after_adds_a_replica)
{
    const controller_scaling s = {.in_flight_per_replica = 4, .memory_percent = 50, .up_after_ms = 1000,
                                  .down_after_ms = 2000};
    controller_load_clock clock = {0};
    /* nothing in flight, memory at 51 %: busy, not idle */
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 1, 0, 51, T0), 1);
    cr_expect_eq(clock.busy_since, T0);
    cr_expect_eq(clock.idle_since, 0);
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 1, 0, 51, T0 + MS(999)), 1);
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 1, 0, 51, T0 + MS(1000)), 2);
    /* exactly at the threshold is neither busy nor idle */
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 3, 2, 0, 50, T0 + MS(1001)), 2);
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 3, 2, 0, 50, T0 + MS(60000)), 2);
    cr_expect_eq(clock.busy_since, 0);
    cr_expect_eq(clock.idle_since, 0);
}

Test(autoscale, memory_below_its_percent_for_down_after_removes_one)
{
    const controller_scaling s = {.in_flight_per_replica = 4, .memory_percent = 50, .up_after_ms = 1000,
                                  .down_after_ms = 2000};
    controller_load_clock clock = {0};
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 3, 2, 0, 24, T0), 2);
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 3, 2, 0, 24, T0 + MS(1999)), 2);
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 3, 2, 0, 24, T0 + MS(2000)), 1);
    /* below the threshold, but not once spread over one replica fewer (2 x 30 % = 60 % on one) */
    controller_load_clock c1 = {0};
    cr_expect_eq(controller_autoscale(&c1, &s, 2, 1, 3, 2, 0, 30, T0), 2);
    cr_expect_eq(controller_autoscale(&c1, &s, 2, 1, 3, 2, 0, 30, T0 + MS(60000)), 2);
    cr_expect_eq(c1.idle_since, 0);
    /* three at 30 %: 45 % on two, so one goes */
    cr_expect_eq(controller_autoscale(&c1, &s, 3, 1, 3, 3, 0, 30, T0 + MS(60001)), 3);
    cr_expect_eq(controller_autoscale(&c1, &s, 3, 1, 3, 3, 0, 30, T0 + MS(62001)), 2);
    /* one ready replica (of two desired): its own use decides */
    controller_load_clock c3 = {0};
    cr_expect_eq(controller_autoscale(&c3, &s, 2, 1, 3, 1, 0, 49, T0), 2);
    cr_expect_eq(controller_autoscale(&c3, &s, 2, 1, 3, 1, 0, 49, T0 + MS(2000)), 1);
    /* memory high again resets the idle period; requests in flight keep it from being idle */
    controller_load_clock c2 = {0};
    cr_expect_eq(controller_autoscale(&c2, &s, 2, 1, 3, 2, 0, 10, T0), 2);
    cr_expect_eq(controller_autoscale(&c2, &s, 2, 1, 3, 2, 0, 70, T0 + MS(1500)), 2);
    cr_expect_eq(controller_autoscale(&c2, &s, 2, 1, 3, 2, 1, 10, T0 + MS(1600)), 2);
    cr_expect_eq(controller_autoscale(&c2, &s, 2, 1, 3, 2, 0, 10, T0 + MS(3000)), 2, "idle only since 3 s");
    cr_expect_eq(controller_autoscale(&c2, &s, 2, 1, 3, 2, 0, 10, T0 + MS(5000)), 1);
}

Test(autoscale, memory_unknown_or_no_replica_ready_never_scales_up)
{
    const controller_scaling s = {.in_flight_per_replica = 4, .memory_percent = 50, .up_after_ms = 1000,
                                  .down_after_ms = 2000};
    controller_load_clock clock = {0};
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 1, 0, -1, T0), 1);
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 1, 0, -1, T0 + MS(5000)), 1);
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 0, 0, 90, T0 + MS(6000)), 1);
    cr_expect_eq(controller_autoscale(&clock, &s, 1, 1, 3, 0, 0, 90, T0 + MS(9000)), 1);
    cr_expect_eq(clock.busy_since, 0);
}

Test(autoscale, in_flight_per_replica_is_the_spec_s)
{
    const controller_scaling s = {.in_flight_per_replica = 1, .memory_percent = 80, .up_after_ms = 500,
                                  .down_after_ms = 15000};
    controller_load_clock clock = {0};
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 4, 2, 3, -1, T0), 2);
    cr_expect_eq(controller_autoscale(&clock, &s, 2, 1, 4, 2, 3, -1, T0 + MS(500)), 3);
}

Test(autoscale, memory_percent_is_the_mean_over_ready_replicas)
{
    cr_expect_eq(controller_memory_percent(0, 0, 2), -1, "no limit");
    cr_expect_eq(controller_memory_percent(100, 1000, 0), -1, "none ready");
    cr_expect_eq(controller_memory_percent(64ull << 20, 64ull << 20, 2), 50);
    cr_expect_eq(controller_memory_percent(96ull << 20, 64ull << 20, 1), 150);
    cr_expect_eq(controller_memory_percent((64ull << 20) - 1, 64ull << 20, 1), 99, "rounded down");
}

/* ---- a replica after a listing ---- */

static const replica_observation none = {.seen = SEEN_NONE};

Test(plan, a_wanted_replica_not_on_the_runner_is_launched_when_due)
{
    replica r = {.state = REPLICA_STARTING};
    replica_plan p = controller_plan_replica(&r, true, &none, T0);
    cr_expect_eq(p.change, CHANGE_NONE);
    cr_expect_eq(p.act, ACT_LAUNCH);
    r.retry_at = T0 + MS(500); /* a launch failed: backing off */
    cr_expect_eq(controller_plan_replica(&r, true, &none, T0).act, ACT_WAIT);
    cr_expect_eq(controller_plan_replica(&r, true, &none, T0 + MS(500)).act, ACT_LAUNCH);
    r.state = REPLICA_STOPPED; /* stopped above desired, wanted again */
    r.retry_at = 0;
    cr_expect_eq(controller_plan_replica(&r, true, &none, T0).act, ACT_LAUNCH);
}

Test(plan, a_replica_running_as_known_is_left_alone)
{
    replica r = {.state = REPLICA_RUNNING, .pid = 42, .started_mono = T0 - MS(5000)};
    replica_observation seen = {.seen = SEEN_OURS, .pid = 42};
    replica_plan p = controller_plan_replica(&r, true, &seen, T0);
    cr_expect_eq(p.change, CHANGE_NONE);
    cr_expect_eq(p.act, ACT_NONE);
}

Test(plan, a_replica_found_running_is_adopted_not_launched)
{
    /* after a restart of the api role: known as starting, listed running */
    replica r = {.state = REPLICA_STARTING};
    replica_observation seen = {.seen = SEEN_OURS, .pid = 42};
    replica_plan p = controller_plan_replica(&r, true, &seen, T0);
    cr_expect_eq(p.change, CHANGE_ADOPTED);
    cr_expect_eq(p.act, ACT_NONE);
    /* running under another pid than the one known */
    r = (replica){.state = REPLICA_RUNNING, .pid = 41};
    cr_expect_eq(controller_plan_replica(&r, true, &seen, T0).change, CHANGE_ADOPTED);
    /* a crashed one whose backoff is not over, found running again: adopted, not relaunched */
    r = (replica){.state = REPLICA_CRASHED, .retry_at = T0 + MS(1000)};
    p = controller_plan_replica(&r, true, &seen, T0);
    cr_expect_eq(p.change, CHANGE_ADOPTED);
    cr_expect_eq(p.act, ACT_NONE);
}

Test(plan, an_exit_is_a_crash_restarted_after_its_backoff)
{
    replica r = {.state = REPLICA_RUNNING, .pid = 42, .started_mono = T0 - MS(2000)};
    replica_observation gone = {.seen = SEEN_NONE, .exited = true};
    replica_plan p = controller_plan_replica(&r, true, &gone, T0);
    cr_expect_eq(p.change, CHANGE_CRASHED);
    cr_expect_eq(p.ran_ms, 2000);
    cr_expect_eq(p.backoff_ms, CONTROLLER_BACKOFF_MIN_MS);
    cr_expect_eq(p.act, ACT_WAIT, "restarted after the backoff, not at once");
    /* the streak doubles while runs are short */
    r.backoff_ms = 4000;
    p = controller_plan_replica(&r, true, &gone, T0);
    cr_expect_eq(p.backoff_ms, 8000);
    /* a run of a minute resets it */
    r.started_mono = T0 - MS(60000);
    cr_expect_eq(controller_plan_replica(&r, true, &gone, T0).backoff_ms, CONTROLLER_BACKOFF_MIN_MS);
}

Test(plan, a_replica_gone_without_an_exit_is_launched_again_at_once)
{
    /* deleted behind the controller's back, or the runner restarted */
    replica r = {.state = REPLICA_RUNNING, .pid = 42, .started_mono = T0 - MS(2000), .backoff_ms = 8000,
                 .retry_at = T0 + MS(100000)};
    replica_plan p = controller_plan_replica(&r, true, &none, T0);
    cr_expect_eq(p.change, CHANGE_VANISHED);
    cr_expect_eq(p.act, ACT_LAUNCH);
}

Test(plan, above_desired_a_listed_replica_is_stopped_a_gone_one_forgotten)
{
    replica r = {.state = REPLICA_RUNNING, .pid = 42};
    replica_observation seen = {.seen = SEEN_OURS, .pid = 42};
    cr_expect_eq(controller_plan_replica(&r, false, &seen, T0).act, ACT_STOP);
    replica idle = {0};
    cr_expect_eq(controller_plan_replica(&idle, false, &none, T0).act, ACT_FORGET);
    /* one that crashed above desired: the crash is seen, then it is forgotten, not restarted */
    replica_observation gone = {.seen = SEEN_NONE, .exited = true};
    replica_plan p = controller_plan_replica(&r, false, &gone, T0);
    cr_expect_eq(p.change, CHANGE_CRASHED);
    cr_expect_eq(p.act, ACT_FORGET);
}

Test(plan, a_name_taken_by_a_sandbox_the_controller_did_not_launch_is_left_alone)
{
    replica_observation foreign = {.seen = SEEN_FOREIGN, .pid = 7};
    replica r = {.state = REPLICA_STARTING};
    replica_plan p = controller_plan_replica(&r, true, &foreign, T0);
    cr_expect_eq(p.change, CHANGE_FOREIGN);
    cr_expect_eq(p.act, ACT_NONE, "never launched over it, never stopped");
    p = controller_plan_replica(&r, false, &foreign, T0);
    cr_expect_eq(p.act, ACT_NONE, "not stopped above desired either");
}

/* ---- replacing after a change of the spec ---- */

static void running(replica *r, size_t n, uint64_t generation)
{
    for (size_t i = 0; i < n; i++)
        r[i] = (replica){.present = true, .state = REPLICA_RUNNING, .ready = true, .pid = (pid_t)(100 + i),
                         .started_mono = T0 - MS(5000), .generation = generation};
}

Test(replace, the_lowest_numbered_outdated_replica_first)
{
    replica r[4];
    running(r, 4, 2);
    cr_expect_eq(controller_pick_replacement(r, 4, 4, 2, T0), -1, "all current: nothing to replace");
    r[2].generation = 1;
    r[3].generation = 1;
    cr_expect_eq(controller_pick_replacement(r, 4, 4, 2, T0), 2, "no room for a surge: in place");
    /* replicas beyond desired are not looked at */
    cr_expect_eq(controller_pick_replacement(r, 2, 2, 2, T0), -1);
}

Test(replace, only_while_every_other_replica_is_ready)
{
    replica r[3];
    running(r, 3, 1);
    r[0].generation = 0;
    r[2].state = REPLICA_CRASHED;
    cr_expect_eq(controller_pick_replacement(r, 3, 3, 1, T0), -1, "a bad change stops at one");
    r[2].state = REPLICA_STARTING;
    cr_expect_eq(controller_pick_replacement(r, 3, 3, 1, T0), -1);
    /* running but its workload does not answer yet: not ready, not counted */
    running(r, 3, 1);
    r[0].generation = 0;
    r[2].ready = false;
    cr_expect_eq(controller_pick_replacement(r, 3, 3, 1, T0), -1);
    /* one launched in this very pass has not proved itself yet */
    running(r, 3, 1);
    r[0].generation = 0;
    r[1].started_mono = T0;
    cr_expect_eq(controller_pick_replacement(r, 3, 3, 1, T0), -1);
    cr_expect_eq(controller_pick_replacement(r, 3, 3, 1, T0 + MS(1000)), 0);
}

/* ---- surge one: the new replica before the old one stops ---- */

Test(surge, a_one_replica_update_starts_the_new_replica_first)
{
    replica r[2] = {0};
    running(r, 1, 1); /* scorer-1 runs the old spec (generation 1) */
    /* the spec changes (generation 2): the surge slot is wanted, nothing replaced yet */
    cr_expect(controller_surge_wanted(r, 1, 2, 2));
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 2, T0), -1, "no surge running: the old one keeps serving");
    /* the surge is launched (new spec) but its workload does not answer yet */
    r[1] = (replica){.present = true, .state = REPLICA_RUNNING, .ready = false, .surge = true,
                     .started_mono = T0 - MS(2000), .generation = 2};
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 2, T0), -1, "the surge is not ready: keep the old one");
    /* the surge is ready: now the old one is replaced */
    r[1].ready = true;
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 2, T0), 0);
    /* replaced: scorer-1 starts again on the new spec; the surge stays while it is not ready */
    r[0] = (replica){.present = true, .state = REPLICA_RUNNING, .ready = false, .started_mono = T0, .generation = 2};
    cr_expect(controller_surge_wanted(r, 1, 2, 2), "scorer-1 is not ready: the surge keeps serving");
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 2, T0 + MS(500)), -1, "nothing outdated any more");
    r[0].ready = true;
    cr_expect_not(controller_surge_wanted(r, 1, 2, 2), "every replica ready on the new spec: the surge goes");
}

Test(surge, a_bad_change_never_stops_an_old_replica)
{
    replica r[2] = {0};
    running(r, 1, 1);
    /* the new spec's replica crash loops: never ready, the old one is never replaced */
    r[1] = (replica){.present = true, .state = REPLICA_CRASHED, .surge = true, .generation = 2};
    cr_expect(controller_surge_wanted(r, 1, 2, 2));
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 2, T0), -1);
    /* a surge on the old spec (the spec changed again meanwhile) does not count */
    r[1] = (replica){.present = true, .state = REPLICA_RUNNING, .ready = true, .surge = true,
                     .started_mono = T0 - MS(2000), .generation = 2};
    cr_expect_eq(controller_pick_replacement(r, 1, 2, 3, T0), -1);
}

Test(surge, not_without_an_update_nor_beyond_the_slots)
{
    replica r[2] = {0};
    running(r, 1, 2);
    cr_expect_not(controller_surge_wanted(r, 1, 2, 2), "nothing outdated");
    r[0].ready = false; /* a replica merely starting is no reason for a surge */
    cr_expect_not(controller_surge_wanted(r, 1, 2, 2));
    running(r, 2, 1);
    cr_expect_not(controller_surge_wanted(r, 2, 2, 2), "desired fills every slot: replaced in place");
}

/* ---- crash loops ---- */

Test(crashloop, three_exits_within_a_minute_while_not_ready)
{
    replica r = {.present = true, .state = REPLICA_CRASHED};
    controller_note_exit(&r, T0);
    controller_note_exit(&r, T0 + MS(400));
    cr_expect_not(controller_crash_looping(&r, T0 + MS(500)), "two exits are not a loop yet");
    controller_note_exit(&r, T0 + MS(1200));
    cr_expect(controller_crash_looping(&r, T0 + MS(1300)));
    /* restarted and still not ready: still looping */
    r.state = REPLICA_RUNNING;
    cr_expect(controller_crash_looping(&r, T0 + MS(1600)));
    /* ready: not looping, whatever it did before */
    r.ready = true;
    cr_expect_not(controller_crash_looping(&r, T0 + MS(1700)));
    /* exits spread over more than the window are no loop */
    replica slow = {.present = true, .state = REPLICA_CRASHED};
    controller_note_exit(&slow, T0);
    controller_note_exit(&slow, T0 + MS(40000));
    controller_note_exit(&slow, T0 + MS(80000));
    cr_expect_not(controller_crash_looping(&slow, T0 + MS(80001)));
    /* only the last three count */
    controller_note_exit(&slow, T0 + MS(81000));
    controller_note_exit(&slow, T0 + MS(82000));
    cr_expect(controller_crash_looping(&slow, T0 + MS(82001)));
    cr_expect_not(controller_crash_looping(&slow, T0 + MS(80000) + MS(CONTROLLER_CRASHLOOP_WINDOW_MS) + 1));
}

Test(plan, a_listing_says_whether_the_replica_is_ready)
{
    replica r = {.present = true, .state = REPLICA_RUNNING, .pid = 42, .started_mono = T0 - MS(100)};
    replica_observation o = {.seen = SEEN_OURS, .pid = 42, .ready = false};
    cr_expect_not(controller_plan_replica(&r, true, &o, T0).ready);
    o.ready = true;
    replica_plan p = controller_plan_replica(&r, true, &o, T0);
    cr_expect(p.ready);
    cr_expect_eq(p.change, CHANGE_NONE);
}

/* ---- when the next pass is due ---- */

Test(next, the_earliest_retry_of_a_replica_waiting_to_launch)
{
    replica r[3];
    running(r, 3, 1);
    uint64_t interval = T0 + MS(1000);
    cr_expect_eq(controller_next_retry(r, 3, 3, T0, interval), interval);
    r[1] = (replica){.state = REPLICA_CRASHED, .retry_at = T0 + MS(250)};
    r[2] = (replica){.state = REPLICA_STARTING, .retry_at = T0 + MS(500)};
    cr_expect_eq(controller_next_retry(r, 3, 3, T0, interval), T0 + MS(250));
    cr_expect_eq(controller_next_retry(r, 1, 3, T0, interval), interval, "beyond desired: not waited for");
    r[1].retry_at = T0; /* due now: launched in this pass, no earlier wake */
    cr_expect_eq(controller_next_retry(r, 3, 3, T0, interval), T0 + MS(500));
}

Test(next, sooner_while_a_replica_starts)
{
    replica r[3];
    running(r, 3, 1);
    uint64_t interval = T0 + MS(1000);
    r[2].ready = false; /* the surge slot of desired 2, running without answering yet */
    cr_expect_eq(controller_next_retry(r, 2, 3, T0, interval), T0 + MS(CONTROLLER_STARTING_POLL_MS));
    r[2].ready = true;
    r[1].drain_since = T0 - MS(500); /* stopping: the next pass when its drain ends */
    cr_expect_eq(controller_next_retry(r, 2, 3, T0, T0 + MS(5000)), T0 + MS(CONTROLLER_DRAIN_MS - 500));
}

Test(drain, a_ready_replica_is_stopped_only_after_its_drain)
{
    replica r = {.present = true, .state = REPLICA_RUNNING, .ready = true};
    cr_expect_not(controller_drained(&r, T0), "serving and not draining yet");
    r.drain_since = T0;
    cr_expect_not(controller_drained(&r, T0 + MS(CONTROLLER_DRAIN_MS - 1)));
    cr_expect(controller_drained(&r, T0 + MS(CONTROLLER_DRAIN_MS)));
    replica starting = {.present = true, .state = REPLICA_RUNNING, .ready = false};
    cr_expect(controller_drained(&starting, T0), "nothing is sent to a replica not ready: stopped at once");
}

/* ---- the lease: one controller at a time ---- */

#include <errno.h>
#include <stdlib.h>

#include "controller/controller.h"

/* Whether the Enclave E1 has a status written (by a controller). */
static bool status_written(store *s)
{
    json_t *doc;
    cr_assert_eq(store_get(s, "Enclave", "e1", &doc), 0);
    bool written = json_object_size(json_object_get(doc, "status")) > 0;
    json_decref(doc);
    return written;
}

/* While another holds the lease the controller writes nothing; once it is
 * released the controller takes it and reconciles (here: reports that the
 * runner cannot be reached); stopping releases it. */
Test(lease, only_the_holder_reconciles_and_stopping_releases_it)
{
    char dir[] = "/tmp/cloister-ctl-XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/store.db", dir);
    store *s;
    cr_assert_eq(store_open(path, &s), 0);
    json_t *doc = json_pack("{s:s, s:s, s:{s:s}, s:{}}", "apiVersion", "cloister.dev/v1", "kind", "Enclave",
                            "metadata", "name", "e1", "spec");
    store_op op = {.type = STORE_CREATE, .kind = "Enclave", .name = "e1", .doc = doc};
    store_txn txn = {.ops = &op, .n_ops = 1};
    cr_assert_eq(store_write(s, &txn), 0);
    store_txn_clear(&txn);
    json_decref(doc);
    int64_t other;
    cr_assert_eq(store_lease_acquire(s, CONTROLLER_LEASE, "another-replica", 60000, &other), 0);

    controller *c;
    char socket[96];
    snprintf(socket, sizeof(socket), "%s/no-runner.sock", dir);
    cr_assert_eq(controller_start(&(controller_config){.store = s, .runner_socket = socket, .interval_ms = 20,
                                                       .instance = "test"},
                                  &c),
                 0);
    /* a standing-by controller's passes (every 20 ms) write nothing */
    for (uint64_t until = time_mono_ns() + MS(400); time_mono_ns() < until;)
        cr_assert_not(status_written(s), "a controller without the lease wrote a status");

    cr_assert_eq(store_lease_release(s, CONTROLLER_LEASE, "another-replica", other), 0);
    uint64_t deadline = time_mono_ns() + MS(10000);
    while (!status_written(s) && time_mono_ns() < deadline)
        ;
    cr_assert(status_written(s), "the controller took the released lease and reconciled");
    int64_t mine;
    cr_assert_eq(store_lease_acquire(s, CONTROLLER_LEASE, "another-replica", 60000, &mine), -EBUSY);

    controller_stop(c);
    cr_assert_eq(store_lease_acquire(s, CONTROLLER_LEASE, "another-replica", 60000, &mine), 0, "released on stop");
    cr_assert_gt(mine, other);
    store_free(s);
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
