/* Users' public keys (DESIGN.md, "Confidential analytics"). */
#pragma once

#include "api/request.h"

/* POST /v1/users/NAME/keys by user NAME alone: stores {approval, recipient}
 * in the User's status.publicKeys and audits it. GET: those keys, to NAME,
 * to a member of a workspace NAME is in, or by policy (`get-keys` on the
 * User). Returns 0 once answered, or -1 with ERR. */
int api_handle_user_keys(api_request *r, const char *name, api_error *err);
