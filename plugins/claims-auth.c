/* claims-auth: an authorizer (docs/plugins.md). Its config names one
 * request header or one property of the call (a claim of the signed-in
 * user: "user.name", "user.email") and the values that let the request
 * through; anything else is denied (status, default 403). On an allowed
 * request it can add a header for the upstream.
 *
 *   {"header": "x-team", "values": ["blue"], "status": 403,
 *    "addHeader": {"name": "x-authorized-by", "value": "claims-auth"}}
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cloister/plugin.h"

#define VALUES_MAX 64

typedef struct authorizer {
    const cloister_host *host;
    char *header, *property;
    char *values[VALUES_MAX];
    size_t n_values;
    int status;
    char *add_name, *add_value;
} authorizer;

static void destroy(void *instance)
{
    authorizer *a = instance;
    if (!a)
        return;
    free(a->header);
    free(a->property);
    for (size_t i = 0; i < a->n_values; i++)
        free(a->values[i]);
    free(a->add_name);
    free(a->add_value);
    free(a);
}

static char *dup_string(const json_t *v)
{
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

static int init(const cloister_host *host, cloister_str config, void **ret, char *err, size_t err_size)
{
    json_error_t je;
    json_t *c = json_loadb(config.ptr, config.len, 0, &je);
    authorizer *a = calloc(1, sizeof(*a));
    int r = -EINVAL;
    if (!a) {
        r = -ENOMEM;
        goto out;
    }
    a->host = host;
    a->status = 403;
    if (!json_is_object(c)) {
        snprintf(err, err_size, "config must be an object");
        goto out;
    }
    a->header = dup_string(json_object_get(c, "header"));
    a->property = dup_string(json_object_get(c, "property"));
    if (!a->header == !a->property) {
        snprintf(err, err_size, "config needs exactly one of header and property");
        goto out;
    }
    const json_t *values = json_object_get(c, "values"), *v;
    size_t i;
    if (!json_is_array(values) || json_array_size(values) == 0 || json_array_size(values) > VALUES_MAX) {
        snprintf(err, err_size, "config.values must be 1 to %d strings", VALUES_MAX);
        goto out;
    }
    json_array_foreach(values, i, v)
    {
        if (!(a->values[i] = dup_string(v))) {
            snprintf(err, err_size, "config.values[%zu] must be a string", i);
            goto out;
        }
        a->n_values = i + 1;
    }
    const json_t *status = json_object_get(c, "status");
    if (status) {
        if (!json_is_integer(status) || json_integer_value(status) < 400 || json_integer_value(status) > 599) {
            snprintf(err, err_size, "config.status must be 400 to 599");
            goto out;
        }
        a->status = (int)json_integer_value(status);
    }
    const json_t *add = json_object_get(c, "addHeader");
    if (add && (!(a->add_name = dup_string(json_object_get(add, "name"))) ||
                !(a->add_value = dup_string(json_object_get(add, "value"))))) {
        snprintf(err, err_size, "config.addHeader needs a name and a value");
        goto out;
    }
    r = 0;
out:
    json_decref(c);
    if (r < 0) {
        destroy(a);
        return r;
    }
    *ret = a;
    return 0;
}

static cloister_action on_request_headers(void *instance, cloister_call *call)
{
    authorizer *a = instance;
    const cloister_host *h = a->host;
    cloister_str got;
    const char *what = a->header ? a->header : a->property;
    cloister_str name = {what, strlen(what)};
    int r = a->header ? h->get_header(call, name, &got) : h->get_property(call, name, &got);
    for (size_t i = 0; r == 0 && i < a->n_values; i++)
        if (got.len == strlen(a->values[i]) && memcmp(got.ptr, a->values[i], got.len) == 0) {
            if (a->add_name)
                h->set_header(call, (cloister_str){a->add_name, strlen(a->add_name)},
                              (cloister_str){a->add_value, strlen(a->add_value)});
            return CLOISTER_CONTINUE;
        }
    char reason[300];
    int n = snprintf(reason, sizeof(reason), "claims-auth: %s %s %s", a->header ? "header" : "property", what,
                     r == 0 ? "has a value that is not allowed" : "is missing");
    h->deny(call, a->status, (cloister_str){reason, n < 0 ? 0 : (size_t)n});
    return CLOISTER_DENY;
}

static const cloister_plugin plugin = {
    .size = sizeof(cloister_plugin),
    .abi_version = CLOISTER_PLUGIN_ABI_VERSION,
    .name = "claims-auth",
    .init = init,
    .destroy = destroy,
    .phases = {[CLOISTER_PHASE_REQUEST_HEADERS] = on_request_headers},
};

const cloister_plugin *cloister_plugin_v1(void)
{
    return &plugin;
}
