/* The rule of session and credential validity (see session.h). */
#include "auth/session.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "basic/timeutil.h"

static const char *member(const json_t *doc, const char *part, const char *field)
{
    return json_string_value(json_object_get(json_object_get(doc, part), field));
}

static bool same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Fills *WHY with REASON and its message; returns -EACCES. */
__attribute__((format(printf, 3, 4))) static int refuse(auth_verdict *why, auth_reason reason, const char *fmt, ...)
{
    why->reason = reason;
    why->status = reason == AUTH_USER_DISABLED ? 403 : 401;
    why->code = reason == AUTH_USER_DISABLED ? "forbidden" : "unauthenticated";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->message, sizeof(why->message), fmt, ap);
    va_end(ap);
    return -EACCES;
}

/* Whether the RFC 3339 time FIELD of DOC's spec is absent or after NOW; an
 * unreadable time counts as past (fail closed). */
static bool unexpired(const json_t *doc, const char *field, bool absent_is_forever, int64_t now)
{
    const char *text = member(doc, "spec", field);
    int64_t t;
    if (!text)
        return absent_is_forever;
    return time_parse_rfc3339(text, &t) == 0 && t > now;
}

int64_t auth_credential_generation(const json_t *credential)
{
    json_t *g = json_object_get(json_object_get(credential, "status"), "tokenGeneration");
    return json_is_integer(g) ? json_integer_value(g) : 0;
}

int auth_credential_check(const json_t *credential, const json_t *user, int64_t now, auth_verdict *why)
{
    const char *name = member(credential, "metadata", "name");
    const char *user_name = member(credential, "spec", "user");
    if (!credential || !name)
        return refuse(why, AUTH_NO_CREDENTIAL, "unknown or revoked credential token");
    if (!unexpired(credential, "expiresAt", true, now))
        return refuse(why, AUTH_CREDENTIAL_EXPIRED, "credential %s has expired", name);
    if (!user || !same(member(user, "metadata", "name"), user_name))
        return refuse(why, AUTH_NO_USER, "user %s of credential %s does not exist", user_name ? user_name : "?",
                      name);
    if (!same(member(user, "metadata", "uid"), member(credential, "status", "userUid")))
        return refuse(why, AUTH_USER_REPLACED,
                      "credential %s was made for another user %s (deleted since); make a new credential", name,
                      user_name);
    if (json_is_true(json_object_get(json_object_get(user, "spec"), "disabled")))
        return refuse(why, AUTH_USER_DISABLED, "user %s is disabled", user_name);
    return 0;
}

int auth_session_check(const json_t *session, const char *subject, const json_t *user, const json_t *credential,
                       int64_t now, auth_verdict *why)
{
    const char *user_name = member(session, "spec", "user");
    if (!session)
        return refuse(why, AUTH_NO_SESSION, "the session of this access token was revoked or has expired");
    if (!user_name || (subject && strcmp(subject, user_name) != 0))
        return refuse(why, AUTH_SUBJECT_MISMATCH, "the access token does not match its session");
    if (!unexpired(session, "expiresAt", false, now))
        return refuse(why, AUTH_SESSION_EXPIRED, "the session has expired; log in again");
    if (!user || !same(member(user, "metadata", "name"), user_name))
        return refuse(why, AUTH_NO_USER, "the user of this session no longer exists");
    if (!same(member(user, "metadata", "uid"), member(session, "spec", "userUid")))
        return refuse(why, AUTH_USER_REPLACED, "the user of this session was deleted; log in again");
    const char *cred_name = member(session, "spec", "credential");
    if (!cred_name) {
        if (json_is_true(json_object_get(json_object_get(user, "spec"), "disabled")))
            return refuse(why, AUTH_USER_DISABLED, "user %s is disabled", user_name);
        return 0;
    }
    if (!credential || !same(member(credential, "metadata", "name"), cred_name) ||
        !same(member(credential, "metadata", "uid"), member(session, "spec", "credentialUid")))
        return refuse(why, AUTH_NO_CREDENTIAL, "the credential of this session was deleted");
    int r = auth_credential_check(credential, user, now, why);
    if (r < 0)
        return r;
    json_t *generation = json_object_get(json_object_get(session, "spec"), "tokenGeneration");
    if (!json_is_integer(generation) || json_integer_value(generation) != auth_credential_generation(credential))
        return refuse(why, AUTH_TOKEN_REMINTED,
                      "the token of credential %s was minted again, which ended this session; log in again",
                      cred_name);
    return 0;
}
