/* The api side of the proxy role's configuration: the proxy holds a
 * read-only copy of routes, policies, sessions and token verification keys,
 * pushed from the api role over one Server-Sent Events stream. */
#pragma once

#include "api/request.h"

/* The /v1/proxy/ endpoint group: GET /v1/proxy/config[?since=REV]. Public in
 * the group table because it authenticates the caller itself. It is served
 * to the proxy's workload identity alone (user cloister-proxy, a workload,
 * through its credential cloister-proxy), whatever policies say: everyone
 * else gets 403, audited as verb "watch" on kind "ProxyConfig". */
int api_handle_proxy(api_request *r, const char *rest, size_t rest_len, api_error *err);
