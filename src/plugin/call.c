/* A phase invocation and the host functions over it (see call.h). */
#include "plugin/call.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "basic/macro.h"

static const char *const phase_names[CLOISTER_PHASE_COUNT_] = {
    "request_headers", "request_body", "response_headers", "response_body", "log", "egress",
};

const char *plugin_phase_name(cloister_phase p)
{
    return (unsigned)p < CLOISTER_PHASE_COUNT_ ? phase_names[p] : NULL;
}

int plugin_phase_from_name(const char *name)
{
    for (size_t i = 0; name && i < ELEMENTSOF(phase_names); i++)
        if (strcmp(phase_names[i], name) == 0)
            return (int)i;
    return -1;
}

void plugin_call_clear_answer(plugin_call *call)
{
    call->action = CLOISTER_CONTINUE;
    call->status = 0;
    call->reason[0] = 0;
    call->n_ops = call->n_tags = call->out_used = 0;
}

void plugin_call_init(plugin_call *call, cloister_phase phase)
{
    call->phase = phase;
    call->n_props = call->n_headers = 0;
    call->body = (cloister_str){NULL, 0};
    plugin_call_clear_answer(call);
}

int plugin_call_prop(plugin_call *call, const char *key, const char *value, size_t len)
{
    if (call->n_props >= PLUGIN_PROPS_MAX || len > PLUGIN_VALUE_MAX)
        return -E2BIG;
    call->props[call->n_props++] = (plugin_kv){{key, strlen(key)}, {value ? value : "", value ? len : 0}};
    return 0;
}

int plugin_call_header(plugin_call *call, const char *name, size_t name_len, const char *value, size_t value_len)
{
    if (call->n_headers >= PLUGIN_HEADERS_MAX || name_len > PLUGIN_NAME_MAX || value_len > PLUGIN_VALUE_MAX)
        return -E2BIG;
    call->headers[call->n_headers++] = (plugin_kv){{name, name_len}, {value, value_len}};
    return 0;
}

int plugin_call_keep(plugin_call *call, const char *s, size_t len, cloister_str *ret)
{
    if (len > PLUGIN_OUT_MAX - call->out_used)
        return -E2BIG;
    char *at = call->out + call->out_used;
    if (len)
        memcpy(at, s, len);
    call->out_used += len;
    *ret = (cloister_str){at, len};
    return 0;
}

static bool str_eq_nocase(cloister_str a, cloister_str b)
{
    return a.len == b.len && (a.len == 0 || strncasecmp(a.ptr, b.ptr, a.len) == 0);
}

static int host_get_header(cloister_call *call, cloister_str name, cloister_str *ret)
{
    for (size_t i = 0; i < call->n_headers; i++)
        if (str_eq_nocase(call->headers[i].key, name)) {
            *ret = call->headers[i].value;
            return 0;
        }
    return -ENOENT;
}

static size_t host_header_count(cloister_call *call)
{
    return call->n_headers;
}

static int host_header_at(cloister_call *call, size_t i, cloister_str *ret_name, cloister_str *ret_value)
{
    if (i >= call->n_headers)
        return -ENOENT;
    *ret_name = call->headers[i].key;
    *ret_value = call->headers[i].value;
    return 0;
}

static int host_get_property(cloister_call *call, cloister_str name, cloister_str *ret)
{
    for (size_t i = 0; i < call->n_props; i++)
        if (call->props[i].key.len == name.len && memcmp(call->props[i].key.ptr, name.ptr, name.len) == 0) {
            *ret = call->props[i].value;
            return 0;
        }
    return -ENOENT;
}

static int host_get_body(cloister_call *call, cloister_str *ret)
{
    if (call->phase != CLOISTER_PHASE_REQUEST_BODY && call->phase != CLOISTER_PHASE_RESPONSE_BODY)
        return -EINVAL;
    *ret = call->body;
    return 0;
}

static bool headers_phase(const cloister_call *call)
{
    return call->phase == CLOISTER_PHASE_REQUEST_HEADERS || call->phase == CLOISTER_PHASE_RESPONSE_HEADERS;
}

/* (call.h) Checked by the host functions and again on an answer from a
 * sandbox. */
bool plugin_header_settable(cloister_str name)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (name.len == 0 || name.len > PLUGIN_NAME_MAX ||
        (name.len >= 11 && strncasecmp(name.ptr, "x-cloister-", 11) == 0))
        return false;
    for (size_t i = 0; i < name.len; i++) {
        char c = name.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c && strchr(tchar, c))))
            return false;
    }
    return true;
}

bool plugin_value_valid(cloister_str v)
{
    if (v.len > PLUGIN_VALUE_MAX)
        return false;
    for (size_t i = 0; i < v.len; i++)
        if (((unsigned char)v.ptr[i] < 0x20 && v.ptr[i] != '\t') || v.ptr[i] == 0x7f)
            return false;
    return true;
}

static int add_op(cloister_call *call, plugin_op_kind kind, cloister_str name, cloister_str value)
{
    if (!headers_phase(call))
        return -EINVAL;
    if (!plugin_header_settable(name) || !plugin_value_valid(value))
        return -EINVAL;
    if (call->n_ops >= PLUGIN_OPS_MAX)
        return -E2BIG;
    plugin_op *op = &call->ops[call->n_ops];
    size_t saved = call->out_used;
    if (plugin_call_keep(call, name.ptr, name.len, &op->name) < 0 ||
        plugin_call_keep(call, value.ptr, value.len, &op->value) < 0) {
        call->out_used = saved;
        return -E2BIG;
    }
    for (size_t i = 0; i < op->name.len; i++) /* header names go on in lower case */
        if (op->name.ptr[i] >= 'A' && op->name.ptr[i] <= 'Z')
            ((char *)op->name.ptr)[i] = (char)(op->name.ptr[i] - 'A' + 'a');
    op->kind = kind;
    call->n_ops++;
    return 0;
}

static int host_set_header(cloister_call *call, cloister_str name, cloister_str value)
{
    return add_op(call, PLUGIN_OP_SET, name, value);
}

static int host_remove_header(cloister_call *call, cloister_str name)
{
    return add_op(call, PLUGIN_OP_REMOVE, name, (cloister_str){"", 0});
}

static int host_deny(cloister_call *call, int status, cloister_str reason)
{
    if (status < 400 || status > 599)
        return -EINVAL;
    call->status = status;
    size_t n = MIN(reason.len, (size_t)PLUGIN_REASON_MAX);
    for (size_t i = 0; i < n; i++) /* printable text only: it goes in a JSON answer and the log */
        call->reason[i] = (unsigned char)reason.ptr[i] < 0x20 || reason.ptr[i] == 0x7f ? '?' : reason.ptr[i];
    call->reason[n] = 0;
    return 0;
}

static int host_tag(cloister_call *call, cloister_str key, cloister_str value)
{
    if (key.len == 0 || key.len > PLUGIN_NAME_MAX || !plugin_value_valid(value))
        return -EINVAL;
    if (call->n_tags >= PLUGIN_TAGS_MAX)
        return -E2BIG;
    plugin_kv *t = &call->tags[call->n_tags];
    size_t saved = call->out_used;
    if (plugin_call_keep(call, key.ptr, key.len, &t->key) < 0 ||
        plugin_call_keep(call, value.ptr, value.len, &t->value) < 0) {
        call->out_used = saved;
        return -E2BIG;
    }
    call->n_tags++;
    return 0;
}

void plugin_host_table(cloister_host *ret, void (*log)(cloister_call *call, int level, cloister_str message))
{
    *ret = (cloister_host){
        .size = sizeof(cloister_host),
        .abi_version = CLOISTER_PLUGIN_ABI_VERSION,
        .get_header = host_get_header,
        .header_count = host_header_count,
        .header_at = host_header_at,
        .get_property = host_get_property,
        .get_body = host_get_body,
        .set_header = host_set_header,
        .remove_header = host_remove_header,
        .deny = host_deny,
        .tag = host_tag,
        .log = log,
    };
}
