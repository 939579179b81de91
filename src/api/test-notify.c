/* Webhook signing (the published Standard Webhooks test vector), the
 * secret's text form, the retry schedule and which answers are retried. The
 * deliveries themselves run against a real receiver in
 * tests/test_notifications.py. */
#include <criterion/criterion.h>
#include <string.h>

#include "api/notify.h"
#include "basic/encoding.h"

Test(notify, signature_matches_the_standard_webhooks_vector)
{
    /* whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, msg_p5jXN8AQM9LWM0D4loKWxJek,
     * 1614265330, {"test": 2432232314} -> the spec's expected signature */
    const char *b64 = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    uint8_t secret[32];
    long n = base64_decode(b64, strlen(b64), secret, sizeof(secret), false);
    cr_assert_eq(n, 24);
    const char *body = "{\"test\": 2432232314}";
    char sig[NOTIFY_SIGNATURE_SIZE];
    cr_assert_eq(notify_webhook_sign(secret, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                     strlen(body), sig), 0);
    cr_assert_str_eq(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* any change of id, time or body changes it */
    char other[NOTIFY_SIGNATURE_SIZE];
    cr_assert_eq(notify_webhook_sign(secret, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body,
                                     strlen(body), other), 0);
    cr_assert_str_neq(sig, other);
    cr_assert_eq(notify_webhook_sign(secret, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJeK", 1614265330, body,
                                     strlen(body), other), 0);
    cr_assert_str_neq(sig, other);
    cr_assert_eq(notify_webhook_sign(secret, (size_t)n, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                     strlen(body) - 1, other), 0);
    cr_assert_str_neq(sig, other);
}

Test(notify, signing_refuses_no_secret_or_id)
{
    uint8_t secret[32] = {1};
    char sig[NOTIFY_SIGNATURE_SIZE];
    cr_assert_eq(notify_webhook_sign(secret, 0, "id", 1, "{}", 2, sig), -EINVAL);
    cr_assert_eq(notify_webhook_sign(secret, sizeof(secret), "", 1, "{}", 2, sig), -EINVAL);
    cr_assert_eq(notify_webhook_sign(NULL, 32, "id", 1, "{}", 2, sig), -EINVAL);
}

Test(notify, secret_text_is_whsec_and_base64)
{
    uint8_t secret[NOTIFY_SECRET_LEN];
    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (uint8_t)i;
    char text[NOTIFY_SECRET_TEXT_SIZE];
    notify_secret_format(secret, text);
    cr_assert_str_eq(text, "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
}

Test(notify, backoff_doubles_from_one_second_up_to_the_cap)
{
    cr_assert_eq(notify_webhook_delay_ms(1), 1000);
    cr_assert_eq(notify_webhook_delay_ms(2), 2000);
    cr_assert_eq(notify_webhook_delay_ms(3), 4000);
    cr_assert_eq(notify_webhook_delay_ms(7), 64000);
    cr_assert_eq(notify_webhook_delay_ms(10), 512000);
    cr_assert_eq(notify_webhook_delay_ms(11), NOTIFY_WEBHOOK_DELAY_MAX_MS);
    cr_assert_eq(notify_webhook_delay_ms(1000), NOTIFY_WEBHOOK_DELAY_MAX_MS);
    /* every attempt of a delivery waits at most this long in all */
    uint64_t total = 0;
    for (unsigned a = 1; a < NOTIFY_WEBHOOK_ATTEMPTS_MAX; a++)
        total += notify_webhook_delay_ms(a);
    cr_assert_eq(total, 127000);
}

Test(notify, only_no_answer_408_429_and_5xx_are_retried)
{
    cr_assert(notify_webhook_retryable(0));
    cr_assert(notify_webhook_retryable(500));
    cr_assert(notify_webhook_retryable(503));
    cr_assert(notify_webhook_retryable(408));
    cr_assert(notify_webhook_retryable(429));
    cr_assert_not(notify_webhook_retryable(400));
    cr_assert_not(notify_webhook_retryable(404));
    cr_assert_not(notify_webhook_retryable(410));
    cr_assert_not(notify_webhook_retryable(301));
}

Test(notify, types_are_the_contract_s)
{
    const char *ok[] = {"job.approval-requested", "job.approved", "job.rejected", "job.vetoed", "job.run.started",
                        "job.run.succeeded", "job.run.failed", "dataset.added", "key-release.refused"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert(notify_type_valid(ok[i]), "%s", ok[i]);
    cr_assert_not(notify_type_valid("job.run"));
    cr_assert_not(notify_type_valid(""));
    cr_assert_not(notify_type_valid(NULL));
}

/* ITEMS: N notifications of user u1 named n0..n(N-1), those in READ read,
 * and one of user u2 between them. */
static json_t *items_of(size_t n, const char *read)
{
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++) {
        char name[24];
        snprintf(name, sizeof(name), "n%zu", i);
        bool is_read = strchr(read, (int)('0' + i)) != NULL;
        json_array_append_new(items, json_pack("{s:{s:s}, s:{s:s}, s:{s:b}}", "metadata", "name", name, "spec",
                                               "userUid", "u1", "status", "read", is_read));
        if (i == 1)
            json_array_append_new(items, json_pack("{s:{s:s}, s:{s:s}, s:{s:b}}", "metadata", "name", "other",
                                                   "spec", "userUid", "u2", "status", "read", true));
    }
    return items;
}

Test(notify, pruning_takes_the_oldest_read_ones_first_then_the_oldest)
{
    const char *names[16];
    json_t *items = items_of(4, "");
    cr_assert_eq(notify_prune(items, "u1", 5, names), 0, "under the cap nothing goes");
    cr_assert_eq(notify_prune(items, "u1", 4, names), 1);
    cr_assert_str_eq(names[0], "n0", "none read: the oldest");
    json_decref(items);

    items = items_of(5, "24");
    cr_assert_eq(notify_prune(items, "u1", 5, names), 1);
    cr_assert_str_eq(names[0], "n2", "the oldest read one, before older unread ones");
    cr_assert_eq(notify_prune(items, "u1", 3, names), 3);
    cr_assert_str_eq(names[0], "n2");
    cr_assert_str_eq(names[1], "n4");
    cr_assert_str_eq(names[2], "n0", "then the oldest unread");
    /* another user's never, whatever their count */
    cr_assert_eq(notify_prune(items, "u2", 1, names), 1);
    cr_assert_str_eq(names[0], "other");
    cr_assert_eq(notify_prune(items, "u3", 1, names), 0);
    json_decref(items);
}

Test(notify, a_users_ids_share_a_prefix_from_their_uid)
{
    char prefix[NOTIFY_PREFIX_SIZE];
    notify_user_prefix("abc", prefix); /* SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223... */
    cr_assert_str_eq(prefix, "ba7816bf8f01cfea-");
    notify_user_prefix("abd", prefix);
    cr_assert_str_neq(prefix, "ba7816bf8f01cfea-");
}
