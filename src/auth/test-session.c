#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "auth/session.h"

#define NOW 1800000000 /* 2027-01-15 */
#define FUTURE "2030-01-01T00:00:00Z"
#define PAST "2020-01-01T00:00:00Z"

static json_t *user, *cred, *session;

/* bob (uid u1), his credential bob-cli (uid c1, generation 3) and a session it opened */
static void setup(void)
{
    user = json_pack("{s:s, s:{s:s, s:s}, s:{s:s}}", "kind", "User", "metadata", "name", "bob", "uid", "u1", "spec",
                     "type", "human");
    cred = json_pack("{s:s, s:{s:s, s:s}, s:{s:s, s:s}, s:{s:s, s:i}}", "kind", "Credential", "metadata", "name",
                     "bob-cli", "uid", "c1", "spec", "user", "bob", "type", "authToken", "status", "userUid", "u1",
                     "tokenGeneration", 3);
    session = json_pack("{s:s, s:{s:s, s:s}, s:{s:s, s:s, s:s, s:s, s:i, s:s}}", "kind", "Session", "metadata",
                        "name", "s1", "uid", "x", "spec", "user", "bob", "userUid", "u1", "credential", "bob-cli",
                        "credentialUid", "c1", "tokenGeneration", 3, "expiresAt", FUTURE);
}

static void teardown(void)
{
    json_decref(user);
    json_decref(cred);
    json_decref(session);
}

TestSuite(session, .init = setup, .fini = teardown);

static void expect(int r, const auth_verdict *v, auth_reason reason, int status, const char *text)
{
    cr_assert_eq(r, -EACCES);
    cr_assert_eq(v->reason, reason, "reason %d, expected %d (%s)", v->reason, reason, v->message);
    cr_assert_eq(v->status, status);
    cr_assert_str_eq(v->code, status == 403 ? "forbidden" : "unauthenticated");
    cr_assert(strstr(v->message, text), "message '%s' lacks '%s'", v->message, text);
}

static void set(json_t *doc, const char *part, const char *field, json_t *value)
{
    json_object_set_new(json_object_get(doc, part), field, value);
}

Test(session, a_good_session_and_credential_pass)
{
    auth_verdict v;
    cr_assert_eq(auth_session_check(session, "bob", user, cred, NOW, &v), 0);
    cr_assert_eq(auth_session_check(session, NULL, user, cred, NOW, &v), 0);
    cr_assert_eq(auth_credential_check(cred, user, NOW, &v), 0);
    cr_assert_eq(auth_credential_generation(cred), 3);
}

Test(session, an_absent_session_or_another_subject_is_refused)
{
    auth_verdict v;
    expect(auth_session_check(NULL, "bob", user, cred, NOW, &v), &v, AUTH_NO_SESSION, 401, "revoked");
    expect(auth_session_check(session, "alice", user, cred, NOW, &v), &v, AUTH_SUBJECT_MISMATCH, 401,
           "does not match");
}

Test(session, an_expired_or_unreadable_expiry_ends_the_session)
{
    auth_verdict v;
    set(session, "spec", "expiresAt", json_string(PAST));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_SESSION_EXPIRED, 401, "expired");
    set(session, "spec", "expiresAt", json_string("tomorrow"));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_SESSION_EXPIRED, 401, "expired");
    json_object_del(json_object_get(session, "spec"), "expiresAt");
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_SESSION_EXPIRED, 401, "expired");
}

Test(session, a_deleted_user_ends_it_and_a_new_one_of_the_same_name_inherits_nothing)
{
    auth_verdict v;
    expect(auth_session_check(session, "bob", NULL, cred, NOW, &v), &v, AUTH_NO_USER, 401, "no longer exists");
    expect(auth_credential_check(cred, NULL, NOW, &v), &v, AUTH_NO_USER, 401, "does not exist");
    set(user, "metadata", "uid", json_string("u2")); /* bob deleted, a new bob made */
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_USER_REPLACED, 401, "deleted");
    expect(auth_credential_check(cred, user, NOW, &v), &v, AUTH_USER_REPLACED, 401, "another user");
    /* a user document of another name is no answer either */
    set(user, "metadata", "uid", json_string("u1"));
    set(user, "metadata", "name", json_string("alice"));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_NO_USER, 401, "no longer exists");
}

Test(session, a_session_or_credential_without_a_recorded_uid_is_refused)
{
    auth_verdict v;
    json_object_del(json_object_get(session, "spec"), "userUid");
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_USER_REPLACED, 401, "deleted");
    json_object_del(json_object_get(cred, "status"), "userUid");
    expect(auth_credential_check(cred, user, NOW, &v), &v, AUTH_USER_REPLACED, 401, "another user");
}

Test(session, a_disabled_user_is_forbidden_in_both)
{
    auth_verdict v;
    set(user, "spec", "disabled", json_true());
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_USER_DISABLED, 403,
           "user bob is disabled");
    expect(auth_credential_check(cred, user, NOW, &v), &v, AUTH_USER_DISABLED, 403, "user bob is disabled");
    json_object_del(json_object_get(session, "spec"), "credential"); /* an identity provider's session */
    expect(auth_session_check(session, "bob", user, NULL, NOW, &v), &v, AUTH_USER_DISABLED, 403,
           "user bob is disabled");
}

Test(session, a_deleted_or_replaced_credential_ends_its_sessions)
{
    auth_verdict v;
    expect(auth_session_check(session, "bob", user, NULL, NOW, &v), &v, AUTH_NO_CREDENTIAL, 401, "deleted");
    set(cred, "metadata", "uid", json_string("c2"));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_NO_CREDENTIAL, 401, "deleted");
    expect(auth_credential_check(NULL, user, NOW, &v), &v, AUTH_NO_CREDENTIAL, 401, "unknown");
}

Test(session, an_expired_credential_ends_its_token_and_sessions)
{
    auth_verdict v;
    set(cred, "spec", "expiresAt", json_string(PAST));
    expect(auth_credential_check(cred, user, NOW, &v), &v, AUTH_CREDENTIAL_EXPIRED, 401, "bob-cli has expired");
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_CREDENTIAL_EXPIRED, 401,
           "bob-cli has expired");
    set(cred, "spec", "expiresAt", json_string("soon"));
    expect(auth_credential_check(cred, user, NOW, &v), &v, AUTH_CREDENTIAL_EXPIRED, 401, "expired");
    set(cred, "spec", "expiresAt", json_string(FUTURE));
    cr_assert_eq(auth_session_check(session, "bob", user, cred, NOW, &v), 0);
}

Test(session, a_credential_pointed_at_another_user_ends_its_sessions)
{
    auth_verdict v;
    set(cred, "status", "userUid", json_string("u9"));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_USER_REPLACED, 401, "another user");
    set(cred, "status", "userUid", json_string("u1"));
    set(cred, "spec", "user", json_string("alice"));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_NO_USER, 401, "alice");
}

Test(session, a_reminted_token_ends_the_sessions_it_opened)
{
    auth_verdict v;
    set(cred, "status", "tokenGeneration", json_integer(4));
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_TOKEN_REMINTED, 401, "minted again");
    cr_assert_eq(auth_credential_check(cred, user, NOW, &v), 0); /* the new token itself is good */
    json_object_del(json_object_get(session, "spec"), "tokenGeneration");
    expect(auth_session_check(session, "bob", user, cred, NOW, &v), &v, AUTH_TOKEN_REMINTED, 401, "minted again");
    json_object_del(json_object_get(cred, "status"), "tokenGeneration");
    cr_assert_eq(auth_credential_generation(cred), 0);
}

Test(session, an_identity_provider_session_needs_no_credential)
{
    auth_verdict v;
    json_object_del(json_object_get(session, "spec"), "credential");
    cr_assert_eq(auth_session_check(session, "bob", user, NULL, NOW, &v), 0);
}
