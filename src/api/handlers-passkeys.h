/* Invitations and passkeys (handlers-passkeys.c): local login without an
 * identity provider, WebAuthn ES256 checked by auth/webauthn.h. */
#pragma once

#include <stdbool.h>

#include "api/request.h"

/* /v1/users/{name}/invite: POST invites (a one-time link, 24 h), DELETE revokes. */
int api_handle_user_invite(api_request *r, const char *name, api_error *err);
/* /v1/users/{name}/passkeys: GET lists, DELETE ?id= removes one. */
int api_handle_user_passkeys(api_request *r, const char *name, api_error *err);
/* /v1/auth/passkey/: the pages and the register/login ceremonies (public). */
int api_passkey_handle(api_request *r, const char *rest, size_t rest_len, api_error *err);
#define PASSKEY_ORIGIN_MAX 300
/* The WebAuthn relying party: its RP ID, api.<domain> (the API's host:
 * passkeys are for it alone), into RP, and the API's origin, https://<RP
 * ID> with the listen port unless 443, into ORIGIN. */
void api_passkey_relying_party(const api_server *srv, char rp[PASSKEY_ORIGIN_MAX], char origin[PASSKEY_ORIGIN_MAX]);
/* Whether any user holds a passkey (the login page then offers it). */
bool api_passkeys_registered(api_server *srv);
