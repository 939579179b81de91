/* What the API does with the references between resources (the table of
 * src/resource/refs.h): apply's warnings about references to missing
 * resources, the referrers that stop a delete without ?force=1, GET
 * /v1/{kind}/{name}/referrers for `cloister describe`, and what a dry-run
 * apply answers about each document. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "api/request.h"
#include "resource/resource.h"

/* Warnings an apply answers with: at most this many (then one saying how many more). */
#define API_APPLY_WARNINGS_MAX 50

/* Whether query parameter NAME of REQ is "1" or "true". */
bool api_query_flag(const h2o_req_t *req, const char *name);

/* The warnings about the documents ITEMS (checked, defaults filled) of an
 * apply by caller C: each reference to a resource that neither exists nor
 * is among ITEMS, as "Service wiki: spec.policies names Policy nope, which
 * does not exist". References to kinds C may not get are not looked up (a
 * warning would tell what exists). Returns a new array (NULL: out of memory). */
json_t *api_apply_warnings(api_server *srv, h2o_req_t *req, const caller *c, const json_t *items);

/* The referrers of KIND/NAME: every stored resource whose references (the
 * table) name it, as a new array of {kind, name, field} in *RET (at most
 * RESOURCE_REFERRERS_MAX) and how many in all in *RET_TOTAL. With C set,
 * only those C may get are listed and counted. Those in SKIP (an array of
 * [kind, name] pairs, the dependents a delete removes too; may be NULL) are
 * left out. Returns 0 or -1 with ERR. */
int api_referrers(api_server *srv, h2o_req_t *req, const caller *c, const char *kind, const char *name,
                  const json_t *skip, json_t **ret, size_t *ret_total, api_error *err);

/* Refuses the delete of KIND/NAME (decided, not forced) while something
 * references it: 409 "referenced" naming the referrers (the first ten) and
 * how to go on. Returns 0 when nothing does, -1 with ERR otherwise. */
int api_check_unreferenced(api_server *srv, const char *kind, const char *name, const json_t *skip,
                           api_error *err);

/* What a dry-run apply answers about one document: {kind, name, action
 * (created, configured or unchanged, as the real apply would say), before
 * and after ({metadata: {labels}, spec}; before null when absent)}. DOC is
 * the checked document, STORED the stored one (NULL: absent), STATUS what
 * the write would set as status (NULL: kept). Secret values never appear:
 * each is "(hidden)". Returns a new object, NULL when out of memory. */
json_t *api_dry_run_item(const resource_kind *k, const json_t *doc, const json_t *stored, const json_t *status);

/* GET /v1/{kind}/{name}/referrers: decided as get on KIND/NAME; answers
 * {kind, name, referrers: [{kind, name, field}], total, truncated} with
 * the referrers the caller may get. */
void api_handle_referrers(api_server *srv, h2o_req_t *req, uint64_t started, const caller *c,
                          const resource_kind *kind, const char *name);

/* GET /v1/version: {version, apiVersion}; no credential needed (clients
 * compare versions before they log in, as Kubernetes' /version). */
void api_handle_version(h2o_req_t *req, uint64_t started);
