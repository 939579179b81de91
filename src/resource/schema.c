#include "resource/schema.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/timeutil.h"

/* Caps of SCHEMA_ANY values (attrs) and of map keys. */
#define ANY_ARRAY_MAX 1024
#define ANY_OBJECT_MAX 256
#define MAP_KEY_MAX 253
#define URL_MAX 2048
#define HEADER_NAME_MAX 256

/* How much of a user-supplied string an error message echoes. */
#define QUOTE_MAX 48

int resource_fail(resource_error *err, const resource_path *path, const char *fmt, ...)
{
    if (err) {
        snprintf(err->path, sizeof(err->path), "%s", path->buf);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

char *quote_for_message(const char *s, char *out, size_t size)
{
    size_t n = strlen(s), cut = n;
    if (cut > QUOTE_MAX) {
        cut = QUOTE_MAX;
        while (cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80)
            cut--;
    }
    char raw[QUOTE_MAX + 1];
    memcpy(raw, s, cut);
    raw[cut] = 0;
    strbuf b;
    strbuf_init_static(&b, out, size);
    strbuf_put_json_string(&b, raw);
    if (cut < n)
        strbuf_puts(&b, "...");
    return out;
}

/* "a string", "an object", ...: what V is, for messages. */
static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* [a-z0-9]([-a-z0-9]*[a-z0-9])?, 1..63 bytes */
static bool dns_label_ok(const char *s, size_t n)
{
    if (n == 0 || n > 63 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
        return false;
    for (size_t i = 1; i + 1 < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return false;
    return true;
}

/* A lower-case DNS-1123 subdomain: labels joined by dots, at most 253. */
static bool hostname_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (!dns_label_ok(s + start, i - start))
                return false;
            start = i + 1;
        }
    }
    return true;
}

/* scheme://host[:port][/path][?query]: printable ASCII, no userinfo, no
 * fragment; the host a name, an IPv4 address or a bracketed IPv6 address. */
static bool url_ok(const char *s, size_t n, bool https_only)
{
    size_t off;
    if (n > URL_MAX)
        return false;
    if (n > 8 && strncmp(s, "https://", 8) == 0)
        off = 8;
    else if (!https_only && n > 7 && strncmp(s, "http://", 7) == 0)
        off = 7;
    else
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '#')
            return false;
    size_t end = off;
    while (end < n && s[end] != '/' && s[end] != '?')
        end++;
    const char *a = s + off;
    size_t an = end - off, hn;
    if (an == 0 || memchr(a, '@', an))
        return false;
    const char *port = NULL;
    if (a[0] == '[') {
        const char *close = memchr(a, ']', an);
        if (!close || close == a + 1)
            return false;
        for (const char *p = a + 1; p < close; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
                  *p == ':' || *p == '.'))
                return false;
        hn = (size_t)(close + 1 - a);
        if (hn < an) {
            if (a[hn] != ':')
                return false;
            port = a + hn + 1;
        }
    } else {
        const char *colon = memchr(a, ':', an);
        hn = colon ? (size_t)(colon - a) : an;
        if (hn == 0)
            return false;
        for (size_t i = 0; i < hn; i++)
            if (!is_alnum(a[i]) && a[i] != '-' && a[i] != '.' && a[i] != '_')
                return false;
        if (colon)
            port = colon + 1;
    }
    if (port) {
        size_t pn = (size_t)(a + an - port);
        unsigned long v = 0;
        if (pn == 0 || pn > 5)
            return false;
        for (size_t i = 0; i < pn; i++) {
            if (port[i] < '0' || port[i] > '9')
                return false;
            v = v * 10 + (unsigned long)(port[i] - '0');
        }
        if (v == 0 || v > 65535)
            return false;
    }
    return true;
}

/* local@domain: one @, printable local part, a DNS-ish domain; at most 254. */
static bool email_ok(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    if (n > 254 || !at || at == s || at == s + n - 1 || memchr(at + 1, '@', (size_t)(s + n - at - 1)))
        return false;
    for (const char *p = s; p < at; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("<>\",;", *p))
            return false;
    for (const char *p = at + 1; p < s + n; p++)
        if (!is_alnum(*p) && *p != '-' && *p != '.')
            return false;
    return true;
}

/* An RFC 9110 token that is neither a framing header nor x-cloister-*,
 * which the proxy owns. */
static bool header_name_ok(const char *s, size_t n)
{
    static const char *const reserved[] = {
        "host",    "content-length", "transfer-encoding", "connection",       "upgrade",
        "te",      "trailer",        "keep-alive",        "proxy-connection", "expect",
    };
    if (n == 0 || n > HEADER_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i]))
            return false;
    for (size_t i = 0; i < ELEMENTSOF(reserved); i++)
        if (strcasecmp(s, reserved[i]) == 0)
            return false;
    return strncasecmp(s, "x-cloister-", STRLEN("x-cloister-")) != 0;
}

/* Printable ASCII without spaces. */
static bool token_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f)
            return false;
    return true;
}

/* A Secret data key: [A-Za-z0-9._-]{1,253}, not "." or "..". */
static bool data_key_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

/* Lower-case hex of whole bytes. */
static bool hex_ok(const char *s, size_t n)
{
    if (n == 0 || n % 2)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* The claims an AttestationPolicy may pin reference values of. */
static bool measurement_ok(const char *s, size_t n)
{
    static const char *const names[] = {"measurement", "host_data", "chip_id", "mr_td", "mr_config_id",
                                        "rtmr0", "rtmr1", "rtmr2", "rtmr3", NULL};
    for (size_t i = 0; names[i]; i++)
        if (strlen(names[i]) == n && memcmp(s, names[i], n) == 0)
            return true;
    /* pcr0 .. pcr31, no leading zeros */
    if (n < 4 || n > 5 || memcmp(s, "pcr", 3) != 0 || (n == 5 && s[3] == '0'))
        return false;
    int v = 0;
    for (size_t i = 3; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 31;
}

/* A label key: alphanumeric ends, [A-Za-z0-9._/-] inside, at most 253. */
static bool label_key_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253 || !is_alnum(s[0]) || !is_alnum(s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && !strchr("._/-", s[i]))
            return false;
    return true;
}

/* An absolute path of '/'-separated names: none empty, "." or "..", and no
 * control characters anywhere, so it names one place without tricks. */
static bool absolute_path_ok(const char *s, size_t n)
{
    if (n < 2 || s[0] != '/')
        return false;
    size_t start = 1;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f))
            return false;
        if (i < n && s[i] != '/')
            continue;
        size_t len = i - start;
        if (len == 0 || (len == 1 && s[start] == '.') || (len == 2 && s[start] == '.' && s[start + 1] == '.'))
            return false;
        start = i + 1;
    }
    return true;
}

bool schema_string_matches(schema_format f, const char *s, size_t n)
{
    int64_t secs;
    switch (f) {
    case FORMAT_TEXT:
        return true;
    case FORMAT_NAME:
        return dns_label_ok(s, n);
    case FORMAT_HOSTNAME:
        return hostname_ok(s, n);
    case FORMAT_HTTP_URL:
        return url_ok(s, n, false);
    case FORMAT_HTTPS_URL:
        return url_ok(s, n, true);
    case FORMAT_RFC3339:
        return time_parse_rfc3339(s, &secs) == 0;
    case FORMAT_EMAIL:
        return email_ok(s, n);
    case FORMAT_HEADER_NAME:
        return header_name_ok(s, n);
    case FORMAT_TOKEN:
        return token_ok(s, n);
    case FORMAT_DATA_KEY:
        return data_key_ok(s, n);
    case FORMAT_LABEL_KEY:
        return label_key_ok(s, n);
    case FORMAT_HEX:
        return hex_ok(s, n);
    case FORMAT_MEASUREMENT:
        return measurement_ok(s, n);
    case FORMAT_ABSOLUTE_PATH:
        return absolute_path_ok(s, n);
    }
    return false;
}

/* The sentence telling what a string of format F must look like. */
static const char *format_rule(schema_format f)
{
    switch (f) {
    case FORMAT_TEXT:
        return "must be text";
    case FORMAT_NAME:
        return "must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', "
               "starting and ending with a letter or digit";
    case FORMAT_HOSTNAME:
        return "must be a lower-case DNS name (RFC 1123) of at most 253 characters";
    case FORMAT_HTTP_URL:
        return "must be an http:// or https:// URL with a host and no credentials or fragment";
    case FORMAT_HTTPS_URL:
        return "must be an https:// URL with a host and no credentials or fragment";
    case FORMAT_RFC3339:
        return "must be an RFC 3339 timestamp such as 2030-01-31T12:00:00Z";
    case FORMAT_EMAIL:
        return "must be an email address (local@domain)";
    case FORMAT_HEADER_NAME:
        return "must be an HTTP header name (RFC 9110 token) other than a framing header "
               "(Host, Content-Length, Transfer-Encoding, Connection...) or x-cloister-*";
    case FORMAT_TOKEN:
        return "must be printable ASCII without spaces";
    case FORMAT_DATA_KEY:
        return "must be 1-253 letters, digits, '.', '_' or '-' (not \".\" or \"..\")";
    case FORMAT_LABEL_KEY:
        return "must be at most 253 letters, digits, '.', '_', '/' or '-', starting and ending "
               "with a letter or digit";
    case FORMAT_HEX:
        return "must be lower-case hex (an even number of 0-9, a-f)";
    case FORMAT_MEASUREMENT:
        return "must name a measured claim: pcr0..pcr31, measurement, host_data, chip_id, mr_td, "
               "mr_config_id or rtmr0..rtmr3";
    case FORMAT_ABSOLUTE_PATH:
        return "must be an absolute path (/dir/name) without empty, '.' or '..' components or control "
               "characters";
    }
    return "is malformed";
}

/* Joins the NULL-terminated VALUES with ", " into BUF. */
static const char *join_values(const char *const *values, char *buf, size_t size)
{
    strbuf b;
    strbuf_init_static(&b, buf, size);
    for (size_t i = 0; values[i]; i++)
        strbuf_printf(&b, "%s%s", i ? ", " : "", values[i]);
    return buf;
}

/* Joins the names of FIELDS with ", " into BUF. */
static const char *join_fields(const schema_field *fields, char *buf, size_t size)
{
    strbuf b;
    strbuf_init_static(&b, buf, size);
    for (size_t i = 0; fields[i].name; i++)
        strbuf_printf(&b, "%s%s", i ? ", " : "", fields[i].name);
    return buf;
}

/* Type, emptiness, length, allowed values, then format. */
static int validate_string(const schema *s, const json_t *v, resource_path *path,
                           resource_error *err)
{
    if (!json_is_string(v))
        return resource_fail(err, path, "must be a string (got %s)", type_name(v));
    const char *str = json_string_value(v);
    size_t n = json_string_length(v), max = s->max_len ? s->max_len : RESOURCE_STRING_MAX;
    if (strlen(str) != n)
        return resource_fail(err, path, "must not contain NUL characters");
    if (n == 0 && !s->allow_empty)
        return resource_fail(err, path, "must not be empty");
    if (n > max)
        return resource_fail(err, path, "must be at most %zu bytes long (got %zu)", max, n);
    if (s->values) {
        for (size_t i = 0; s->values[i]; i++)
            if (strcmp(str, s->values[i]) == 0)
                return 0;
        char list[256], q[80];
        if (!s->values[1])
            return resource_fail(err, path, "must be \"%s\" (got %s)", s->values[0],
                                 quote_for_message(str, q, sizeof(q)));
        return resource_fail(err, path, "must be one of: %s (got %s)",
                             join_values(s->values, list, sizeof(list)),
                             quote_for_message(str, q, sizeof(q)));
    }
    if (!schema_string_matches(s->format, str, n))
        return resource_fail(err, path, "%s", format_rule(s->format));
    return 0;
}

/* The field called NAME, or NULL. */
static const schema_field *field_find(const schema_field *fields, const char *name)
{
    for (size_t i = 0; fields[i].name; i++)
        if (strcmp(fields[i].name, name) == 0)
            return &fields[i];
    return NULL;
}

/* Unknown fields first (in document order), then exactly-one, then each
 * field in schema order, then the cross-field check. */
static int validate_object(const schema *s, const json_t *v, resource_path *path,
                           resource_error *err)
{
    if (!json_is_object(v))
        return resource_fail(err, path, "must be an object (got %s)", type_name(v));
    const char *key;
    const json_t *value;
    char list[400];
    json_object_foreach((json_t *)v, key, value) {
        if (!field_find(s->fields, key)) {
            resource_path_push_key(path, key, strlen(key));
            return resource_fail(err, path, "unknown field; known fields are: %s",
                                 join_fields(s->fields, list, sizeof(list)));
        }
    }
    if (s->exactly_one) {
        size_t set = 0;
        for (size_t i = 0; s->fields[i].name; i++)
            set += json_object_get(v, s->fields[i].name) != NULL;
        if (set != 1)
            return resource_fail(err, path, "must set exactly one of: %s",
                                 join_fields(s->fields, list, sizeof(list)));
    }
    for (size_t i = 0; s->fields[i].name; i++) {
        const schema_field *f = &s->fields[i];
        const json_t *fv = json_object_get(v, f->name);
        if ((!fv && !f->required) || (fv && !f->schema))
            continue;
        size_t saved = resource_path_push_key(path, f->name, strlen(f->name));
        int r = fv ? schema_validate(f->schema, fv, path, err)
                   : resource_fail(err, path, "required field missing");
        resource_path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return s->check ? s->check(v, path, err) : 0;
}

/* Checks N elements (or keys) against the schema's min and max. */
static int check_count(const schema *s, size_t n, const char *what, resource_path *path,
                       resource_error *err)
{
    size_t max = s->max_items ? s->max_items : SCHEMA_MAX_ITEMS;
    if (n < s->min_items)
        return resource_fail(err, path, "must have at least %zu %s", s->min_items, what);
    if (n > max)
        return resource_fail(err, path, "must have at most %zu %s (got %zu)", max, what, n);
    return 0;
}

/* The count, then every element against the item schema. */
static int validate_array(const schema *s, const json_t *v, resource_path *path,
                          resource_error *err)
{
    if (!json_is_array(v))
        return resource_fail(err, path, "must be an array (got %s)", type_name(v));
    int r = check_count(s, json_array_size(v), "elements", path, err);
    if (r < 0)
        return r;
    size_t i;
    const json_t *item;
    json_array_foreach(v, i, item) {
        size_t saved = resource_path_push_index(path, i);
        r = schema_validate(s->items, item, path, err);
        resource_path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return 0;
}

/* The count, then every key against the key format and every value
 * against the item schema. */
static int validate_map(const schema *s, const json_t *v, resource_path *path, resource_error *err)
{
    if (!json_is_object(v))
        return resource_fail(err, path, "must be an object (got %s)", type_name(v));
    int r = check_count(s, json_object_size(v), "keys", path, err);
    if (r < 0)
        return r;
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)v, key, value) {
        size_t n = strlen(key);
        size_t saved = resource_path_push_key(path, key, n);
        if (n == 0)
            r = resource_fail(err, path, "keys must not be empty");
        else if (n > MAP_KEY_MAX)
            r = resource_fail(err, path, "keys must be at most %d bytes long", MAP_KEY_MAX);
        else if (!schema_string_matches(s->format, key, n))
            r = resource_fail(err, path, "invalid key: %s", format_rule(s->format));
        else
            r = schema_validate(s->items, value, path, err);
        resource_path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Free-form values: only the generic caps apply. */
static int validate_any(const json_t *v, resource_path *path, resource_error *err)
{
    int r = 0;
    if (json_is_string(v)) {
        if (json_string_length(v) > RESOURCE_STRING_MAX)
            return resource_fail(err, path, "must be at most %d bytes long", RESOURCE_STRING_MAX);
    } else if (json_is_array(v)) {
        if (json_array_size(v) > ANY_ARRAY_MAX)
            return resource_fail(err, path, "must have at most %d elements", ANY_ARRAY_MAX);
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            size_t saved = resource_path_push_index(path, i);
            r = validate_any(item, path, err);
            resource_path_pop(path, saved);
            if (r < 0)
                return r;
        }
    } else if (json_is_object(v)) {
        if (json_object_size(v) > ANY_OBJECT_MAX)
            return resource_fail(err, path, "must have at most %d keys", ANY_OBJECT_MAX);
        const char *key;
        const json_t *value;
        json_object_foreach((json_t *)v, key, value) {
            size_t n = strlen(key);
            size_t saved = resource_path_push_key(path, key, n);
            if (n == 0 || n > MAP_KEY_MAX)
                r = resource_fail(err, path, "keys must be 1-%d bytes long", MAP_KEY_MAX);
            else
                r = validate_any(value, path, err);
            resource_path_pop(path, saved);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

int schema_validate(const schema *s, const json_t *v, resource_path *path, resource_error *err)
{
    switch (s->type) {
    case SCHEMA_STRING:
        return validate_string(s, v, path, err);
    case SCHEMA_BOOL:
        if (!json_is_boolean(v))
            return resource_fail(err, path, "must be a boolean (got %s)", type_name(v));
        if (s->must_be_true && !json_is_true(v))
            return resource_fail(err, path, "must be true");
        return 0;
    case SCHEMA_INT:
        if (!json_is_integer(v))
            return resource_fail(err, path, "must be an integer (got %s)", type_name(v));
        if (json_integer_value(v) < s->min || json_integer_value(v) > s->max)
            return resource_fail(err, path, "must be between %lld and %lld (got %lld)", s->min,
                                 s->max, (long long)json_integer_value(v));
        return 0;
    case SCHEMA_OBJECT:
        return validate_object(s, v, path, err);
    case SCHEMA_ARRAY:
        return validate_array(s, v, path, err);
    case SCHEMA_MAP:
        return validate_map(s, v, path, err);
    case SCHEMA_ANY:
        return validate_any(v, path, err);
    }
    return resource_fail(err, path, "has no schema");
}

int schema_check_depth(const json_t *v, unsigned depth, unsigned max, resource_path *path,
                       resource_error *err)
{
    if (!json_is_object(v) && !json_is_array(v))
        return 0;
    if (depth > max)
        return resource_fail(err, path, "nested too deeply (more than %u levels)", max);
    int r = 0;
    if (json_is_array(v)) {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item) {
            size_t saved = resource_path_push_index(path, i);
            r = schema_check_depth(item, depth + 1, max, path, err);
            resource_path_pop(path, saved);
            if (r < 0)
                return r;
        }
        return 0;
    }
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)v, key, value) {
        size_t saved = resource_path_push_key(path, key, strlen(key));
        r = schema_check_depth(value, depth + 1, max, path, err);
        resource_path_pop(path, saved);
        if (r < 0)
            return r;
    }
    return 0;
}

int schema_apply_defaults(const schema *s, json_t *v)
{
    int r;
    switch (s->type) {
    case SCHEMA_OBJECT:
        if (!json_is_object(v))
            return 0;
        for (size_t i = 0; s->fields[i].name; i++) {
            const schema_field *f = &s->fields[i];
            json_t *fv = json_object_get(v, f->name);
            if (fv && f->schema) {
                r = schema_apply_defaults(f->schema, fv);
                if (r < 0)
                    return r;
            } else if (f->default_json) {
                json_t *d = json_loads(f->default_json, JSON_DECODE_ANY, NULL);
                if (!d || json_object_set_new(v, f->name, d) < 0)
                    return -ENOMEM;
            }
        }
        return 0;
    case SCHEMA_ARRAY: {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) {
            r = schema_apply_defaults(s->items, item);
            if (r < 0)
                return r;
        }
        return 0;
    }
    case SCHEMA_MAP: {
        const char *key;
        json_t *value;
        json_object_foreach(v, key, value) {
            r = schema_apply_defaults(s->items, value);
            if (r < 0)
                return r;
        }
        return 0;
    }
    default:
        return 0;
    }
}
