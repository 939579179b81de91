/* The proxy's access-log segments as `cloister audit show` and `verify` see
 * them: fetched through the API (GET /v1/audit/segments/{id}, which the api
 * role reads from the audit role), walked with audit/segment.h, and checked
 * against the chain heads the log's proxy.access entries commit. */
#pragma once

#include <jansson.h>
#include <stdint.h>

#include "basic/macro.h"
#include "cli/cli.h"

typedef struct access_segments access_segments;

/* An empty cache of segments fetched with CTX; NULL when out of memory. */
access_segments *access_segments_new(cli_ctx *ctx);
void access_segments_free(access_segments *a);
DEFINE_TRIVIAL_CLEANUP_FUNC(access_segments *, access_segments_free);

/* Calls CB with each record committed by the proxy.access entry whose
 * details are DETAILS ({segment, first, count, ...}) as a new JSON array of
 * its values (CB borrows it), in order; records the server does not have
 * or that are not JSON are skipped (verify reports them). Returns 0, CB's
 * non-zero return, or an exit status when the segment cannot be fetched. */
int access_segments_records(access_segments *a, const json_t *details, int (*cb)(void *userdata, json_t *values),
                            void *userdata);

/* Notes the head a log entry (INDEX, TEXT of LEN bytes) commits, if it is a
 * proxy.access segment head, or the segments it names if it is an
 * audit.access.prune entry of the audit role (removed past their
 * retention). Returns 0, or -ENOMEM. */
int access_segments_note(access_segments *a, uint64_t index, const char *text, size_t len);

/* Recomputes every noted segment's chain and compares it with each head
 * committed for it; a segment the audit role no longer has counts as
 * removed unless an audit.access.prune entry of the audit role, after its
 * heads, names it. Returns CLI_EXIT_OK with the records and segments
 * checked and the segments removed past their retention, or prints the
 * first record found changed, removed or reordered (its segment, index and
 * requestId) and returns CLI_EXIT_FAILED (or another exit status when the
 * server cannot be read). */
int access_segments_verify(access_segments *a, uint64_t *ret_records, size_t *ret_segments, size_t *ret_pruned);
