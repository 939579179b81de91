#include "audit/entry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/timeutil.h"

/* True when V is a string of at most AUDIT_FIELD_MAX bytes, or null when
 * NULLABLE. */
static bool short_string(const json_t *v, bool nullable)
{
    if (json_is_null(v))
        return nullable;
    return json_is_string(v) && json_string_length(v) <= AUDIT_FIELD_MAX &&
           strlen(json_string_value(v)) == json_string_length(v);
}

/* True when OBJ is an object with exactly the N keys NAMES. */
static bool exact_keys(const json_t *obj, const char *const *names, size_t n)
{
    if (!json_is_object(obj) || json_object_size(obj) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!json_object_get(obj, names[i]))
            return false;
    return true;
}

/* The fields every entry has, as a client submits it. */
static const char *const fields[] = {"time", "actor", "action", "resource", "outcome", "details"};

/* True when V is a string holding an RFC 3339 time. */
static bool rfc3339_string(const json_t *v)
{
    int64_t secs;
    return short_string(v, false) && time_parse_rfc3339(json_string_value(v), &secs) == 0;
}

/* Details hold strings, integers, booleans, null, arrays and objects, to a
 * bounded depth; floating point has no canonical text and is refused. */
static bool details_valid(const json_t *v, unsigned depth)
{
    if (depth > AUDIT_DETAILS_DEPTH_MAX)
        return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) if (strlen(k) > AUDIT_FIELD_MAX || !details_valid(x, depth + 1)) return false;
        return true;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (!details_valid(x, depth + 1)) return false;
        return true;
    }
    case JSON_STRING:
        return short_string(v, false);
    case JSON_REAL:
        return false;
    default:
        return true;
    }
}

/* True when E holds the six fields every entry has, each well formed
 * (other keys are the caller's business). */
static bool common_valid(const json_t *e)
{
    static const char *const actor[] = {"user", "session", "ip"};
    static const char *const resource[] = {"kind", "name"};
    const json_t *a = json_object_get(e, "actor"), *res = json_object_get(e, "resource");
    if (!exact_keys(a, actor, 3) || !exact_keys(res, resource, 2))
        return false;
    for (size_t i = 0; i < 3; i++)
        if (!short_string(json_object_get(a, actor[i]), true))
            return false;
    for (size_t i = 0; i < 2; i++)
        if (!short_string(json_object_get(res, resource[i]), true))
            return false;
    const json_t *action = json_object_get(e, "action"), *outcome = json_object_get(e, "outcome"),
                 *details = json_object_get(e, "details");
    if (!rfc3339_string(json_object_get(e, "time")))
        return false;
    if (!short_string(action, false) || json_string_length(action) == 0 || !short_string(outcome, false) ||
        json_string_length(outcome) == 0)
        return false;
    return json_is_object(details) && details_valid(details, 0);
}

/* E's canonical text into *RET (heap) and *RET_LEN; -E2BIG past the cap. */
static int canonical_text(const json_t *e, char **ret, size_t *ret_len)
{
    char *text = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text)
        return -ENOMEM;
    size_t len = strlen(text);
    if (len > AUDIT_ENTRY_MAX) {
        free(text);
        return -E2BIG;
    }
    *ret = text;
    *ret_len = len;
    return 0;
}

int audit_entry_submission_canonicalize(const json_t *e, char **ret, size_t *ret_len)
{
    if (!exact_keys(e, fields, ELEMENTSOF(fields)) || !common_valid(e))
        return -EINVAL;
    return canonical_text(e, ret, ret_len);
}

int audit_entry_canonicalize_json(const json_t *e, char **ret, size_t *ret_len)
{
    if (!json_is_object(e) || !common_valid(e))
        return -EINVAL;
    /* the common fields, then appender and client_time, stamped by the audit
     * role (entries written before it stamped have neither) */
    size_t n = ELEMENTSOF(fields);
    for (size_t i = 0; i < n; i++)
        if (!json_object_get(e, fields[i]))
            return -EINVAL;
    const json_t *appender = json_object_get(e, "appender"), *client_time = json_object_get(e, "client_time");
    if (appender && (!short_string(appender, false) || json_string_length(appender) == 0))
        return -EINVAL;
    if (client_time && (!appender || !rfc3339_string(client_time)))
        return -EINVAL;
    if (json_object_size(e) != n + !!appender + !!client_time)
        return -EINVAL;
    return canonical_text(e, ret, ret_len);
}

int audit_entry_stamp(const json_t *submitted, const char *appender, uint64_t now_ns, char **ret, size_t *ret_len)
{
    if (!exact_keys(submitted, fields, ELEMENTSOF(fields)) || !common_valid(submitted) || !appender || !*appender ||
        strlen(appender) > AUDIT_FIELD_MAX)
        return -EINVAL;
    char now[40];
    if (!time_format_rfc3339_ms(now_ns, now, sizeof(now)))
        return -EINVAL;
    json_t *e = json_copy((json_t *)submitted); /* shallow: only the top level changes */
    if (!e || json_object_set(e, "client_time", json_object_get(submitted, "time")) < 0 ||
        json_object_set_new(e, "time", json_string(now)) < 0 ||
        json_object_set_new(e, "appender", json_string(appender)) < 0) {
        json_decref(e);
        return -ENOMEM;
    }
    int r = canonical_text(e, ret, ret_len);
    json_decref(e);
    return r;
}

bool audit_appender_may(const char *appender, const char *action)
{
    /* what each role emits today: the api reports for everything it fronts
     * (resources, auth, KMS calls, decisions, the Enclave controller); the
     * runner its enclaves' egress decisions only */
    static const struct {
        const char *role, *prefix;
    } table[] = {
        {"api", ""},
        {"proxy", "proxy."},
        {"kms", "kms."},
        {"runner", "enclave.egress"},
    };
    if (!appender || !action || strncmp(action, "audit.", 6) == 0)
        return false;
    /* "" and "x." are prefixes; anything else one exact action */
    for (size_t i = 0; i < ELEMENTSOF(table); i++)
        if (strcmp(appender, table[i].role) == 0) {
            size_t n = strlen(table[i].prefix);
            return n == 0 || table[i].prefix[n - 1] == '.' ? strncmp(action, table[i].prefix, n) == 0
                                                           : strcmp(action, table[i].prefix) == 0;
        }
    return false;
}

int audit_entry_canonicalize(const char *data, size_t len, char **ret, size_t *ret_len)
{
    if (len > AUDIT_ENTRY_MAX)
        return -E2BIG;
    json_error_t jerr;
    json_t *e = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!e)
        return -EINVAL;
    int r = audit_entry_canonicalize_json(e, ret, ret_len);
    json_decref(e);
    return r;
}

int audit_parse_index(const char *s, size_t len, uint64_t *ret)
{
    if (len == 0 || len > 19 || (len > 1 && s[0] == '0'))
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (UINT64_C(1) << 62))
        return -EINVAL;
    *ret = v;
    return 0;
}

int audit_parse_query(const char *query, size_t len, const char *const names[2], uint64_t ret[2])
{
    uint64_t v[2];
    bool seen[2] = {false, false};
    const char *p = query, *end = query + len;
    if (len == 0)
        return -EINVAL;
    while (p <= end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (!eq)
            return -EINVAL;
        size_t klen = (size_t)(eq - p);
        int which = -1;
        for (int i = 0; i < 2; i++)
            if (strlen(names[i]) == klen && memcmp(p, names[i], klen) == 0)
                which = i;
        if (which < 0 || seen[which] || audit_parse_index(eq + 1, (size_t)(stop - eq - 1), &v[which]) < 0)
            return -EINVAL;
        seen[which] = true;
        if (!amp)
            break;
        p = amp + 1;
    }
    if (!seen[0] || !seen[1])
        return -EINVAL;
    ret[0] = v[0];
    ret[1] = v[1];
    return 0;
}
