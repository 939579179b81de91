/* One phase invocation (the ABI's opaque cloister_call): what the host
 * passes in (properties, headers, body; borrowed) and what the plugin
 * answers through the host functions (an action, header changes, tags;
 * copied into the call's own buffer). The same struct serves an in-process
 * call and, on both sides of the socket, an out-of-process one (wire.h). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cloister/plugin.h"

#define PLUGIN_PROPS_MAX 16
#define PLUGIN_HEADERS_MAX 128
#define PLUGIN_NAME_MAX 256     /* a header or property name, a tag key */
#define PLUGIN_VALUE_MAX 16384  /* a header or property value, a tag value */
#define PLUGIN_BODY_MAX (256u * 1024) /* body bytes a body phase sees */
#define PLUGIN_REASON_MAX 512
#define PLUGIN_OPS_MAX 32       /* header changes of one call */
#define PLUGIN_TAGS_MAX 16
#define PLUGIN_OUT_MAX 16384    /* bytes of the answer's header changes and tags */

typedef struct plugin_kv {
    cloister_str key, value;
} plugin_kv;

typedef enum plugin_op_kind {
    PLUGIN_OP_SET = 1,
    PLUGIN_OP_REMOVE = 2,
} plugin_op_kind;

typedef struct plugin_op {
    plugin_op_kind kind;
    cloister_str name, value; /* in the call's buffer */
} plugin_op;

struct cloister_call {
    cloister_phase phase;
    /* in (borrowed) */
    plugin_kv props[PLUGIN_PROPS_MAX];
    size_t n_props;
    plugin_kv headers[PLUGIN_HEADERS_MAX];
    size_t n_headers;
    cloister_str body;
    /* out */
    cloister_action action;
    int status; /* of a DENY; 0: 403 */
    char reason[PLUGIN_REASON_MAX + 1];
    plugin_op ops[PLUGIN_OPS_MAX];
    size_t n_ops;
    plugin_kv tags[PLUGIN_TAGS_MAX];
    size_t n_tags;
    char out[PLUGIN_OUT_MAX];
    size_t out_used;
};
typedef struct cloister_call plugin_call;

/* Empties CALL for PHASE. */
void plugin_call_init(plugin_call *call, cloister_phase phase);
/* Adds an input property or header (borrowed; NUL-terminated KEY). Returns
 * 0, or -E2BIG past the caps (the rest is left out). */
int plugin_call_prop(plugin_call *call, const char *key, const char *value, size_t len);
int plugin_call_header(plugin_call *call, const char *name, size_t name_len, const char *value, size_t value_len);
/* Resets the answer of CALL (action, status, reason, changes, tags). */
void plugin_call_clear_answer(plugin_call *call);
/* Copies LEN bytes at S into CALL's answer buffer; *RET points at the
 * copy. Returns 0 or -E2BIG. */
int plugin_call_keep(plugin_call *call, const char *s, size_t len, cloister_str *ret);

/* Whether NAME is a header a plugin may set or remove: an RFC 9110 token
 * of at most PLUGIN_NAME_MAX, not an identity header (x-cloister-*). */
bool plugin_header_settable(cloister_str name);
/* Whether V may be a header or tag value: at most PLUGIN_VALUE_MAX, no
 * control characters but tab. */
bool plugin_value_valid(cloister_str v);

/* The host functions over a plugin_call. LOG is where a plugin's log lines
 * go (the proxy's log in process, stderr in the sandbox). */
void plugin_host_table(cloister_host *ret, void (*log)(cloister_call *call, int level, cloister_str message));

/* "request_headers", ... (the manifest's names); NULL past the phases. */
const char *plugin_phase_name(cloister_phase p);
/* The phase named NAME, or -1. */
int plugin_phase_from_name(const char *name);
