/* The one rule deciding whether a session or a credential token still
 * speaks for its user, used by the API (credential tokens, access tokens,
 * refresh) and the proxy alike. Identities bind by uid, not by name:
 *
 *   a Credential records status.userUid (its user's metadata.uid, set by the
 *   API when it is written) and status.tokenGeneration (incremented each time
 *   a token is minted for it);
 *   a Session records spec.user and spec.userUid, and when a credential token
 *   opened it spec.credential, spec.credentialUid and spec.tokenGeneration.
 *
 * A credential is good while it is unexpired (spec.expiresAt in the future)
 * and its user exists with the uid it recorded and is enabled. A session is
 * good while it is unexpired, its user exists with the same uid and is
 * enabled, and (when a credential opened it) that credential exists with the
 * same uid, is good, and has the same token generation: deleting the user or
 * the credential, re-minting the token or setting expiresAt in the past ends
 * it, and a new user of the same name inherits nothing.
 *
 * The functions are pure: they look only at the documents given (which the
 * caller found by name, NULL when absent) and NOW. */
#pragma once

#include <jansson.h>
#include <stdint.h>

typedef enum auth_reason {
    AUTH_OK = 0,
    AUTH_NO_SESSION,          /* the session does not exist (revoked, collected) */
    AUTH_SUBJECT_MISMATCH,    /* the access token names another user than its session */
    AUTH_SESSION_EXPIRED,
    AUTH_NO_USER,             /* the user does not exist */
    AUTH_USER_REPLACED,       /* a user of the same name with another uid */
    AUTH_USER_DISABLED,       /* 403 */
    AUTH_NO_CREDENTIAL,       /* the credential does not exist, or it is another of the same name */
    AUTH_CREDENTIAL_EXPIRED,
    AUTH_TOKEN_REMINTED,      /* the credential's token was minted again since the session opened */
} auth_reason;

/* Why a session or credential is refused: the HTTP status (401, or 403 for a
 * disabled user), the error code ("unauthenticated", "forbidden") and a
 * message for the caller, naming no secret. */
typedef struct auth_verdict {
    auth_reason reason;
    int status;
    const char *code;
    char message[256];
} auth_verdict;

/* Decides whether CREDENTIAL (found by its token) still speaks for USER (the
 * User named by its spec.user, NULL when absent) at NOW (seconds). Returns 0,
 * or -EACCES with *WHY filled. */
int auth_credential_check(const json_t *credential, const json_t *user, int64_t now, auth_verdict *why);

/* Decides whether SESSION is still good at NOW (seconds) for an access token
 * of SUBJECT (its `sub`; NULL when no access token is involved, as for a
 * refresh). USER is the User named by the session's spec.user and CREDENTIAL
 * the Credential named by its spec.credential (each NULL when absent). Any of
 * the documents may be NULL. Returns 0, or -EACCES with *WHY filled. */
int auth_session_check(const json_t *session, const char *subject, const json_t *user, const json_t *credential,
                       int64_t now, auth_verdict *why);

/* The token generation of CREDENTIAL (status.tokenGeneration; 0 before its
 * first token). */
int64_t auth_credential_generation(const json_t *credential);
