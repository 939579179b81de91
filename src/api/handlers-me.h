/* The caller's own views: GET /v1/me/services (what policy lets me reach),
 * and its ?watch=1 stream. No right is needed: each shows the caller only
 * what concerns themself. */
#pragma once

#include "api/request.h"

/* The /v1/me/ endpoint group. */
int api_handle_me(api_request *r, const char *rest, size_t rest_len, api_error *err);
