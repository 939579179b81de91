/* Building the ctx a policy decision sees from stored documents. */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "basic/macro.h"
#include "basic/timeutil.h"
#include "cel/cel-internal.h"
#include "policy/policy.h"

#define JSON_DEPTH_MAX 32

static const cel_list empty_list = {0, NULL};
static const cel_map empty_map = {0, NULL};

void policy_request_stamp(policy_request *r, uint64_t now_ns)
{
    r->now_sec = (int64_t)(now_ns / NSEC_PER_SEC);
    r->now_nsec = (uint32_t)(now_ns % NSEC_PER_SEC);
}

void policy_request_init(policy_request *r)
{
    *r = (policy_request){0};
    for (size_t v = 0; v < POLICY_VAR_COUNT_; v++)
        r->vars[v] = cel_string("", 0);
    r->vars[POLICY_VAR_USER_GROUPS] = cel_list_value(&empty_list);
    r->vars[POLICY_VAR_USER_ATTRS] = cel_map_value(&empty_map);
    r->vars[POLICY_VAR_SERVICE_ATTRS] = cel_map_value(&empty_map);
    r->vars[POLICY_VAR_HTTP_HEADERS] = cel_map_value(&empty_map);
    r->vars[POLICY_VAR_SESSION_CREATED_AT] = cel_timestamp(0, 0);
    r->vars[POLICY_VAR_SESSION_EXPIRES_AT] = cel_timestamp(0, 0);
    r->vars[POLICY_VAR_SESSION_IS_BROWSER] = cel_bool(false);
    policy_request_stamp(r, time_now_ns());
}

void policy_request_set_string(policy_request *r, policy_var v, const char *s)
{
    r->vars[v] = cel_cstring(s);
}

bool policy_text_valid(const char *s, size_t len)
{
    return cel_utf8_valid(s, len);
}

/* Headers CEL never sees: they carry credentials. */
static bool header_hidden(const char *name, size_t len)
{
    static const char *const hidden[] = {"authorization", "cookie", "proxy-authorization"};
    for (size_t i = 0; i < ELEMENTSOF(hidden); i++)
        if (strlen(hidden[i]) == len && strncasecmp(hidden[i], name, len) == 0)
            return true;
    return false;
}

int policy_request_set_headers(policy_request *r, const policy_header *h, size_t n_headers, cel_arena *a)
{
    cel_map_entry *entries;
    cel_map *m = cel_map_new(a, MIN(n_headers, (size_t)POLICY_HEADERS_MAX), &entries);
    if (!m)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < n_headers; i++) {
        if (header_hidden(h[i].name, h[i].name_len) || !policy_text_valid(h[i].value, h[i].value_len))
            continue;
        size_t k = 0;
        while (k < n && !(entries[k].key.len == h[i].name_len && memcmp(entries[k].key.str, h[i].name, h[i].name_len) == 0))
            k++;
        if (k == n) {
            if (n == POLICY_HEADERS_MAX)
                continue;
            entries[n++] = (cel_map_entry){cel_string(h[i].name, h[i].name_len), cel_string(h[i].value, h[i].value_len)};
            continue;
        }
        const cel_value *old = &entries[k].value;
        char *joined = cel_arena_alloc(a, old->len + 2 + h[i].value_len);
        if (!joined)
            return -ENOMEM;
        memcpy(joined, old->str, old->len);
        memcpy(joined + old->len, ", ", 2);
        memcpy(joined + old->len + 2, h[i].value, h[i].value_len);
        entries[k].value = cel_string(joined, old->len + 2 + h[i].value_len);
    }
    m->len = n;
    r->vars[POLICY_VAR_HTTP_HEADERS] = cel_map_value(m);
    return 0;
}

static int value_from_json(const json_t *j, cel_arena *a, cel_value *ret, unsigned depth)
{
    if (depth > JSON_DEPTH_MAX)
        return -E2BIG;
    switch (json_typeof(j)) {
    case JSON_STRING:
        *ret = cel_string(json_string_value(j), json_string_length(j));
        return 0;
    case JSON_INTEGER:
        *ret = cel_int(json_integer_value(j));
        return 0;
    case JSON_REAL:
        *ret = cel_double(json_real_value(j));
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        *ret = cel_bool(json_is_true(j));
        return 0;
    case JSON_NULL:
        *ret = cel_null();
        return 0;
    case JSON_ARRAY: {
        cel_value *items;
        cel_list *l = cel_list_new(a, json_array_size(j), &items);
        if (!l)
            return -ENOMEM;
        size_t i;
        const json_t *v;
        json_array_foreach(j, i, v)
        {
            int r = value_from_json(v, a, &items[i], depth + 1);
            if (r < 0)
                return r;
        }
        *ret = cel_list_value(l);
        return 0;
    }
    case JSON_OBJECT: {
        cel_map_entry *entries;
        cel_map *m = cel_map_new(a, json_object_size(j), &entries);
        if (!m)
            return -ENOMEM;
        size_t i = 0;
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            entries[i].key = cel_cstring(k);
            int r = value_from_json(v, a, &entries[i].value, depth + 1);
            if (r < 0)
                return r;
            i++;
        }
        *ret = cel_map_value(m);
        return 0;
    }
    }
    return -EINVAL;
}

int policy_value_from_json(const json_t *j, cel_arena *a, cel_value *ret)
{
    cel_value v;
    int r = value_from_json(j, a, &v, 0);
    if (r == 0)
        *ret = v;
    return r;
}

/* Sets string slot V from a JSON string, or leaves it when J is not one. */
static void set_json_string(policy_request *r, policy_var v, const json_t *j)
{
    if (json_is_string(j))
        r->vars[v] = cel_string(json_string_value(j), json_string_length(j));
}

/* Sets map slot V from the object J when it is one; 0 or -ENOMEM / -E2BIG. */
static int set_json_map(policy_request *r, policy_var v, const json_t *j, cel_arena *a)
{
    if (!json_is_object(j))
        return 0;
    return policy_value_from_json(j, a, &r->vars[v]);
}

int policy_request_set_user(policy_request *r, const json_t *user, cel_arena *a)
{
    const json_t *spec = json_object_get(user, "spec");
    set_json_string(r, POLICY_VAR_USER_NAME, json_object_get(json_object_get(user, "metadata"), "name"));
    set_json_string(r, POLICY_VAR_USER_EMAIL, json_object_get(spec, "email"));
    set_json_string(r, POLICY_VAR_USER_TYPE, json_object_get(spec, "type"));
    const json_t *groups = json_object_get(spec, "groups");
    if (json_is_array(groups)) {
        int e = policy_value_from_json(groups, a, &r->vars[POLICY_VAR_USER_GROUPS]);
        if (e < 0)
            return e;
    }
    return set_json_map(r, POLICY_VAR_USER_ATTRS, json_object_get(spec, "attrs"), a);
}

int policy_request_set_service(policy_request *r, const json_t *service, cel_arena *a)
{
    const json_t *name = json_object_get(json_object_get(service, "metadata"), "name");
    return policy_request_set_service_parts(r, json_string_value(name), json_string_length(name),
                                            json_object_get(json_object_get(service, "spec"), "attrs"), a);
}

int policy_request_set_service_parts(policy_request *r, const char *name, size_t len, const json_t *attrs,
                                     cel_arena *a)
{
    if (name)
        r->vars[POLICY_VAR_SERVICE_NAME] = cel_string(name, len);
    return set_json_map(r, POLICY_VAR_SERVICE_ATTRS, attrs, a);
}

/* spec.authMethod as the API writes it when it opens a session ("token"
 * for a credential's token, "oidc" for a login at an identity provider);
 * anything else is "". */
static const char *session_auth_method(const json_t *session)
{
    const char *m = json_string_value(json_object_get(json_object_get(session, "spec"), "authMethod"));
    return m && (strcmp(m, "token") == 0 || strcmp(m, "oidc") == 0) ? m : "";
}

void policy_request_set_session(policy_request *r, const json_t *session, int64_t created, int64_t expires,
                                bool browser)
{
    set_json_string(r, POLICY_VAR_SESSION_ID, json_object_get(json_object_get(session, "metadata"), "name"));
    policy_request_set_string(r, POLICY_VAR_SESSION_AUTH_METHOD, session_auth_method(session));
    r->vars[POLICY_VAR_SESSION_CREATED_AT] = cel_timestamp(created, 0);
    r->vars[POLICY_VAR_SESSION_EXPIRES_AT] = cel_timestamp(expires, 0);
    policy_request_set_browser(r, browser);
}

void policy_request_set_browser(policy_request *r, bool browser)
{
    policy_request_set_string(r, POLICY_VAR_SESSION_TYPE, browser ? "browser" : "client");
    r->vars[POLICY_VAR_SESSION_IS_BROWSER] = cel_bool(browser);
}
