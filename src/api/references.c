#include "api/references.h"

#include <errno.h>
#include <string.h>

#include "api/handlers-policy.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "resource/refs.h"
#include "store/store.h"

/* Referrers a 409 names; the rest are counted. */
#define REFUSAL_NAMES_MAX 10

bool api_query_flag(const h2o_req_t *req, const char *name)
{
    char v[8];
    return api_query_param(req, name, v, sizeof(v)) && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0);
}

/* "spec.policies" for the table path "spec.policies[]", "spec.secrets.key"
 * for "spec.secrets[].key": how a field is named in messages. */
static const char *field_name(const char *path, char *buf, size_t size)
{
    size_t o = 0;
    for (const char *p = path; *p && o + 1 < size; p++)
        if (*p != '[' && *p != ']')
            buf[o++] = *p;
    buf[o] = 0;
    return buf;
}

/* ---- apply warnings ---- */

typedef struct warn_walk {
    api_server *srv;
    h2o_req_t *req;
    const caller *c;
    const json_t *items;
    const json_t *doc;
    json_t *names;    /* {kind: {name: true}}: the stored names of each kind read so far */
    json_t *warnings;
    size_t n_warnings; /* all found, also those past the cap */
} warn_walk;

/* Whether ITEMS holds a document of KIND named NAME. */
static bool among_items(const json_t *items, const char *kind, const char *name)
{
    size_t i;
    const json_t *doc;
    json_array_foreach(items, i, doc) {
        if (strcmp(json_string_value(json_object_get(doc, "kind")) ?: "", kind) == 0 &&
            strcmp(doc_name(doc) ?: "", name) == 0)
            return true;
    }
    return false;
}

/* The stored names of KIND as {name: true}, read once per apply; NULL when
 * the store cannot be read (no warning is better than a wrong one). */
static const json_t *stored_names(warn_walk *w, const char *kind)
{
    json_t *set = json_object_get(w->names, kind);
    if (set)
        return json_is_object(set) ? set : NULL;
    json_t *items = NULL;
    int64_t rev;
    set = json_object();
    if (set && store_list(w->srv->cfg->store, kind, &items, &rev) == 0) {
        size_t i;
        const json_t *doc;
        json_array_foreach(items, i, doc) json_object_set_new(set, doc_name(doc) ?: "", json_true());
    } else {
        json_decref(set);
        set = json_null();
    }
    json_decref(items);
    json_object_set_new(w->names, kind, set);
    return json_is_object(set) ? set : NULL;
}

static int warn_ref(const resource_ref *ref, const char *name, void *userdata)
{
    warn_walk *w = userdata;
    if (among_items(w->items, ref->target, name))
        return 0;
    const json_t *set = stored_names(w, ref->target);
    /* decided last, for the missing ones only: the policy evaluation costs most */
    if (!set || json_object_get(set, name) || !api_may(w->srv, w->req, w->c, "get", ref->target, name))
        return 0;
    if (++w->n_warnings > API_APPLY_WARNINGS_MAX)
        return 0;
    char field[128];
    json_array_append_new(w->warnings,
                          json_sprintf("%s %s: %s names %s %s, which does not exist",
                                       json_string_value(json_object_get(w->doc, "kind")), doc_name(w->doc),
                                       field_name(ref->path, field, sizeof(field)), ref->target, name));
    return 0;
}

json_t *api_apply_warnings(api_server *srv, h2o_req_t *req, const caller *c, const json_t *items)
{
    json_auto_t *names = json_object();
    json_t *warnings = json_array();
    if (!names || !warnings) {
        json_decref(warnings);
        return NULL;
    }
    warn_walk w = {.srv = srv, .req = req, .c = c, .items = items, .names = names, .warnings = warnings};
    size_t i;
    const json_t *doc;
    json_array_foreach(items, i, doc) {
        w.doc = doc;
        resource_refs_foreach(doc, warn_ref, &w);
    }
    if (w.n_warnings > API_APPLY_WARNINGS_MAX)
        json_array_append_new(warnings, json_sprintf("and %zu more references to missing resources",
                                                     w.n_warnings - API_APPLY_WARNINGS_MAX));
    return warnings;
}

/* ---- referrers ---- */

/* Whether SKIP (an array of [kind, name] pairs, or NULL) holds KIND/NAME. */
static bool skipped(const json_t *skip, const char *kind, const char *name)
{
    size_t i;
    const json_t *pair;
    json_array_foreach(skip, i, pair) {
        if (strcmp(json_string_value(json_array_get(pair, 0)) ?: "", kind) == 0 &&
            strcmp(json_string_value(json_array_get(pair, 1)) ?: "", name) == 0)
            return true;
    }
    return false;
}

int api_referrers(api_server *srv, h2o_req_t *req, const caller *c, const char *kind, const char *name,
                  const json_t *skip, json_t **ret, size_t *ret_total, api_error *err)
{
    json_auto_t *out = json_array();
    if (!out)
        return api_fail(err, 500, "internal", "out of memory");
    size_t total = 0;
    const resource_ref *ref;
    /* each referring kind read once, even when it references KIND in several fields */
    for (size_t i = 0; (ref = resource_ref_get(i)); i++) {
        if (strcmp(ref->target, kind) != 0)
            continue;
        bool seen = false;
        const resource_ref *earlier;
        for (size_t j = 0; j < i && (earlier = resource_ref_get(j)); j++)
            seen |= strcmp(earlier->target, kind) == 0 && strcmp(earlier->kind, ref->kind) == 0;
        if (seen)
            continue;
        json_auto_t *items = NULL;
        int64_t rev;
        int e = store_list(srv->cfg->store, ref->kind, &items, &rev);
        if (e < 0)
            return api_fail_store(err, e, ref->kind, "*");
        size_t k;
        const json_t *doc;
        json_array_foreach(items, k, doc) {
            const char *path, *doc_n = doc_name(doc) ?: "";
            if (!resource_refs_names(doc, kind, name, &path) || skipped(skip, ref->kind, doc_n) ||
                (c && !api_may(srv, req, c, "get", ref->kind, doc_n)))
                continue;
            if (++total > RESOURCE_REFERRERS_MAX)
                continue;
            char field[128];
            json_array_append_new(out, json_pack("{s:s, s:s, s:s}", "kind", ref->kind, "name", doc_n, "field",
                                                 field_name(path, field, sizeof(field))));
        }
    }
    *ret = TAKE_PTR(out);
    *ret_total = total;
    return 0;
}

int api_check_unreferenced(api_server *srv, const char *kind, const char *name, const json_t *skip,
                           api_error *err)
{
    if (!resource_kind_referenced(kind))
        return 0;
    json_auto_t *list = NULL;
    size_t total;
    if (api_referrers(srv, NULL, NULL, kind, name, skip, &list, &total, err) < 0)
        return -1;
    if (total == 0)
        return 0;
    json_t *stored = NULL;
    if (store_get(srv->cfg->store, kind, name, &stored) == -ENOENT)
        return 0; /* dangling references: the delete answers 404 */
    json_decref(stored);
    char text[600];
    strbuf b;
    strbuf_init_static(&b, text, sizeof(text));
    size_t i;
    const json_t *r;
    json_array_foreach(list, i, r) {
        if (i == REFUSAL_NAMES_MAX)
            break;
        strbuf_printf(&b, "%s%s/%s (%s)", i ? ", " : "", json_string_value(json_object_get(r, "kind")),
                      json_string_value(json_object_get(r, "name")), json_string_value(json_object_get(r, "field")));
    }
    if (total > REFUSAL_NAMES_MAX)
        strbuf_printf(&b, " and %zu more", total - REFUSAL_NAMES_MAX);
    return api_fail(err, 409, "referenced",
                    "%s %s is still referenced by %s; change those first, or delete anyway with ?force=1 "
                    "(cloister delete --force)",
                    kind, name, text);
}

void api_handle_referrers(api_server *srv, h2o_req_t *req, uint64_t started, const caller *c,
                          const resource_kind *kind, const char *name)
{
    api_error err;
    json_auto_t *list = NULL;
    json_t *stored = NULL;
    size_t total = 0;
    int e = 0;
    if (!api_method_is(req, "GET")) {
        api_method_not_allowed(req, ROUTE_REFERRERS, started, "GET");
        return;
    }
    if (api_authorize(srv, req, c, "get", kind->kind, name, &err) < 0)
        e = -1;
    else if ((e = store_get(srv->cfg->store, kind->kind, name, &stored)) < 0)
        e = api_fail_store(&err, e, kind->kind, name);
    else
        e = api_referrers(srv, req, c, kind->kind, name, NULL, &list, &total, &err);
    json_decref(stored);
    if (e < 0) {
        api_respond_error(req, ROUTE_REFERRERS, started, &err);
        return;
    }
    json_auto_t *body = json_pack("{s:s, s:s, s:O, s:I, s:b}", "kind", kind->kind, "name", name, "referrers", list,
                                  "total", (json_int_t)total, "truncated", total > json_array_size(list));
    api_respond_json(req, ROUTE_REFERRERS, started, 200, body);
}

void api_handle_version(h2o_req_t *req, uint64_t started)
{
    if (!api_method_is(req, "GET") && !api_method_is(req, "HEAD")) {
        api_method_not_allowed(req, ROUTE_VERSION, started, "GET");
        return;
    }
    json_auto_t *body = json_pack("{s:s, s:s}", "version", CLOISTER_VERSION, "apiVersion", RESOURCE_API_VERSION);
    api_respond_json(req, ROUTE_VERSION, started, 200, body);
}

/* ---- dry run ---- */

/* {metadata: {labels}, spec} of DOC as a diff shows it; the values of a
 * write-only spec replaced by "(hidden)". */
static json_t *diff_view(const resource_kind *k, const json_t *doc)
{
    const json_t *labels = json_object_get(json_object_get(doc, "metadata"), "labels");
    const json_t *spec = json_object_get(doc, "spec");
    json_t *shown;
    if (k->write_only_spec) {
        json_t *data = json_object();
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)json_object_get(spec, "data"), key, v)
            json_object_set_new(data, key, json_string("(hidden)"));
        shown = json_pack("{s:o}", "data", data);
    } else
        shown = spec ? json_deep_copy(spec) : json_object();
    return json_pack("{s:{s:O}, s:o}", "metadata", "labels", labels ? labels : json_object(), "spec", shown);
}

json_t *api_dry_run_item(const resource_kind *k, const json_t *doc, const json_t *stored, const json_t *status)
{
    const char *action = "created";
    if (stored)
        action = store_same_content(doc, stored) && (!status || json_equal(status, json_object_get(stored, "status")))
                     ? "unchanged"
                     : "configured";
    return json_pack("{s:s, s:s, s:s, s:o, s:o}", "kind", k->kind, "name", doc_name(doc), "action", action, "before",
                     stored ? diff_view(k, stored) : json_null(), "after", diff_view(k, doc));
}
