/* egress-rules: a network interceptor for an Enclave's outbound
 * connections (docs/plugins.md). The runner's egress gate asks it about
 * each CONNECT its allow-list permits; the first rule whose host ("*."
 * matches any subdomain) and port (0 or absent: any) match decides:
 * deny refuses the connection, allow lets it go; either may add tags to
 * the decision's audit entry. Without a matching rule: `default`.
 *
 *   {"rules": [{"host": "*.example.com", "port": 443, "action": "allow",
 *               "tags": {"purpose": "billing"}},
 *              {"host": "127.0.0.1", "action": "deny"}],
 *    "default": "allow"}
 */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cloister/plugin.h"

#define RULES_MAX 256

typedef struct rule {
    char *host;
    long port; /* 0: any */
    bool deny;
    json_t *tags; /* object of strings, or NULL */
} rule;

typedef struct interceptor {
    const cloister_host *host;
    rule rules[RULES_MAX];
    size_t n_rules;
    bool default_deny;
} interceptor;

static void destroy(void *instance)
{
    interceptor *in = instance;
    if (!in)
        return;
    for (size_t i = 0; i < in->n_rules; i++) {
        free(in->rules[i].host);
        json_decref(in->rules[i].tags);
    }
    free(in);
}

/* Parses "allow" or "deny" into *RET_DENY. */
static int action(const json_t *v, bool *ret_deny)
{
    const char *s = json_string_value(v);
    if (!s || (strcmp(s, "allow") != 0 && strcmp(s, "deny") != 0))
        return -EINVAL;
    *ret_deny = strcmp(s, "deny") == 0;
    return 0;
}

static int init(const cloister_host *host, cloister_str config, void **ret, char *err, size_t err_size)
{
    json_error_t je;
    json_t *c = json_loadb(config.ptr, config.len, 0, &je);
    interceptor *in = calloc(1, sizeof(*in));
    int r = -EINVAL;
    if (!in) {
        r = -ENOMEM;
        goto out;
    }
    in->host = host;
    const json_t *rules = json_object_get(c, "rules"), *v;
    if (!json_is_object(c) || !json_is_array(rules) || json_array_size(rules) > RULES_MAX) {
        snprintf(err, err_size, "config must be an object with rules: an array of at most %d", RULES_MAX);
        goto out;
    }
    if (json_object_get(c, "default") && action(json_object_get(c, "default"), &in->default_deny) < 0) {
        snprintf(err, err_size, "config.default must be allow or deny");
        goto out;
    }
    size_t i;
    json_array_foreach(rules, i, v)
    {
        rule *ru = &in->rules[i];
        const json_t *port = json_object_get(v, "port"), *tags = json_object_get(v, "tags");
        const char *h = json_string_value(json_object_get(v, "host"));
        if (!h || action(json_object_get(v, "action"), &ru->deny) < 0 ||
            (port && (!json_is_integer(port) || json_integer_value(port) < 0 || json_integer_value(port) > 65535)) ||
            (tags && !json_is_object(tags))) {
            snprintf(err, err_size, "config.rules[%zu] needs a host, an action (allow or deny), a port 0..65535 and "
                                    "tags an object of strings", i);
            goto out;
        }
        if (!(ru->host = strdup(h))) {
            r = -ENOMEM;
            goto out;
        }
        ru->port = port ? (long)json_integer_value(port) : 0;
        ru->tags = tags ? json_incref((json_t *)tags) : NULL;
        in->n_rules = i + 1;
    }
    r = 0;
out:
    json_decref(c);
    if (r < 0) {
        destroy(in);
        return r;
    }
    *ret = in;
    return 0;
}

/* Whether pattern P (a name, or "*." and a suffix) matches HOST. */
static bool host_matches(const char *p, cloister_str host)
{
    size_t n = strlen(p);
    if (n > 2 && p[0] == '*' && p[1] == '.')
        return host.len > n - 1 && strncasecmp(host.ptr + host.len - (n - 1), p + 1, n - 1) == 0;
    return host.len == n && strncasecmp(host.ptr, p, n) == 0;
}

static cloister_action on_egress(void *instance, cloister_call *call)
{
    interceptor *in = instance;
    const cloister_host *h = in->host;
    cloister_str host = {"", 0}, port_text = {"0", 1};
    h->get_property(call, (cloister_str){"egress.host", 11}, &host);
    h->get_property(call, (cloister_str){"egress.port", 11}, &port_text);
    char digits[8] = "";
    snprintf(digits, sizeof(digits), "%.*s", (int)(port_text.len < 7 ? port_text.len : 7), port_text.ptr);
    long port = strtol(digits, NULL, 10);
    for (size_t i = 0; i < in->n_rules; i++) {
        const rule *ru = &in->rules[i];
        if (!host_matches(ru->host, host) || (ru->port && ru->port != port))
            continue;
        const char *key;
        json_t *value;
        json_object_foreach(ru->tags, key, value) if (json_is_string(value))
            h->tag(call, (cloister_str){key, strlen(key)},
                   (cloister_str){json_string_value(value), json_string_length(value)});
        if (!ru->deny)
            return CLOISTER_CONTINUE;
        char reason[200];
        int n = snprintf(reason, sizeof(reason), "egress-rules: rule %zu denies %.*s:%ld", i, (int)host.len, host.ptr,
                         port);
        h->deny(call, 403, (cloister_str){reason, n < 0 ? 0 : (size_t)n});
        return CLOISTER_DENY;
    }
    if (!in->default_deny)
        return CLOISTER_CONTINUE;
    h->deny(call, 403, (cloister_str){"egress-rules: no rule allows it (default deny)", 46});
    return CLOISTER_DENY;
}

static const cloister_plugin plugin = {
    .size = sizeof(cloister_plugin),
    .abi_version = CLOISTER_PLUGIN_ABI_VERSION,
    .name = "egress-rules",
    .init = init,
    .destroy = destroy,
    .phases = {[CLOISTER_PHASE_EGRESS] = on_egress},
};

const cloister_plugin *cloister_plugin_v1(void)
{
    return &plugin;
}
