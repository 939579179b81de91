/* The Enclave controller's pure rules: how many replicas to keep and how
 * long to wait before launching a replica again. The controller itself runs
 * against the real runner in tests/test_enclaves.py. */
#include <criterion/criterion.h>

#include "controller/controller.h"

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
