/* Write-time decisions (see authz-write.h). */
#include "api/authz-write.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

#include "api/handlers-datasets.h"
#include "api/handlers-policy.h"
#include "auth/bootstrap-names.h"
#include "basic/macro.h"

/* ---- what a write adds (pure) ---- */

static const struct protected_object {
    const char *kind, *name;
    authz_protection protection;
} protected_objects[] = {
    {"User", BOOTSTRAP_ADMIN_USER, AUTHZ_ADMIN_ONLY},
    {"Group", BOOTSTRAP_ADMIN_GROUP, AUTHZ_ADMIN_ONLY},
    {"Policy", BOOTSTRAP_ADMIN_POLICY, AUTHZ_ADMIN_ONLY},
    {"Credential", BOOTSTRAP_ADMIN_CREDENTIAL, AUTHZ_ADMIN_ONLY},
    {"User", BOOTSTRAP_PROXY_USER, AUTHZ_NOBODY},
    {"Policy", BOOTSTRAP_PROXY_POLICY, AUTHZ_NOBODY},
    {"Credential", BOOTSTRAP_PROXY_CREDENTIAL, AUTHZ_NOBODY},
    {"User", BOOTSTRAP_RUNNER_USER, AUTHZ_NOBODY},
    {"Policy", BOOTSTRAP_RUNNER_POLICY, AUTHZ_NOBODY},
    {"Credential", BOOTSTRAP_RUNNER_CREDENTIAL, AUTHZ_NOBODY},
};

authz_protection authz_write_protection(const char *kind, const char *name)
{
    for (size_t i = 0; i < ELEMENTSOF(protected_objects); i++)
        if (strcmp(kind, protected_objects[i].kind) == 0 && strcmp(name, protected_objects[i].name) == 0)
            return protected_objects[i].protection;
    return AUTHZ_UNPROTECTED;
}

bool authz_host_in_domain(const char *host, const char *domain)
{
    size_t h = strlen(host), d = domain ? strlen(domain) : 0;
    /* at least one label and its dot before the domain */
    return d > 0 && h > d + 1 && host[h - d - 1] == '.' && strcasecmp(host + h - d, domain) == 0;
}

/* Adds the strings at PATH under V to the set OUT (name -> true). PATH is
 * dot-separated member names; "name[]" steps into each element of an array;
 * at the end a string, or each string of an array, is taken. Returns 0 or
 * -ENOMEM. */
static int collect(const json_t *v, const char *path, json_t *out)
{
    if (!*path) {
        if (json_is_string(v))
            return json_object_set_new(out, json_string_value(v), json_true()) < 0 ? -ENOMEM : 0;
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item)
        {
            if (json_is_string(item) && json_object_set_new(out, json_string_value(item), json_true()) < 0)
                return -ENOMEM;
        }
        return 0;
    }
    size_t len = strcspn(path, ".");
    const char *rest = path[len] ? path + len + 1 : path + len;
    bool each = len > 2 && path[len - 2] == '[' && path[len - 1] == ']';
    char member[64];
    snprintf(member, sizeof(member), "%.*s", (int)(each ? len - 2 : len), path);
    const json_t *m = json_object_get(v, member);
    if (!each)
        return m ? collect(m, rest, out) : 0;
    size_t i;
    const json_t *item;
    json_array_foreach(m, i, item)
    {
        int r = collect(item, rest, out);
        if (r < 0)
            return r;
    }
    return 0;
}

/* What the write adds (authz_write_additions()) needs no right of its own. */
typedef bool (*exempt_fn)(const char *name, const char *domain, const char *writer);

static bool host_exempt(const char *name, const char *domain, const char *writer)
{
    return authz_host_in_domain(name, domain);
}

static bool self_exempt(const char *name, const char *domain, const char *writer)
{
    return strcmp(name, writer) == 0;
}

/* Where documents name what a write must be allowed to add: a document of
 * KIND naming NAME at spec.PATH needs VERB on TARGET/NAME, unless EXEMPT;
 * when ON_SELF, VERB on TARGET/<the document's own name>, once however many
 * names it adds (a Workspace's new members: `bind` on that Workspace). */
static const struct reference {
    const char *kind, *path, *verb, *target;
    exempt_fn exempt;
    bool on_self;
} references[] = {
    {"User", "groups", "bind", "Group", NULL},
    {"User", "policies", "bind", "Policy", NULL},
    {"Group", "policies", "bind", "Policy", NULL},
    {"Credential", "user", "impersonate", "User", self_exempt},
    {"Credential", "policies", "bind", "Policy", NULL},
    {"Service", "policies", "bind", "Policy", NULL}, /* inlinePolicies are the service's own */
    {"Service", "hosts", "bind", "Host", host_exempt},
    {"Service", "inject.secret", "use", "Secret", NULL},
    {"IdentityProvider", "clientSecret.secret", "use", "Secret", NULL},
    {"Enclave", "secrets[].secret", "use", "Secret", NULL},
    {"Workspace", "members", "bind", "Workspace", NULL, true},
};

/* Whether writing IdentityProvider DOC over STORED changes whom it vouches
 * for: a new provider, or another issuer, client, claim mapping or user
 * creation. The provider's logins match users by email and give new users
 * the groups its tokens claim, so such a write is impersonating any user. */
static bool idp_vouches_anew(const json_t *doc, const json_t *stored)
{
    static const char *const fields[] = {"issuer", "clientId", "claims", "createUsers"};
    const json_t *spec = json_object_get(doc, "spec"), *old = json_object_get(stored, "spec");
    if (!stored)
        return true;
    for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
        const json_t *a = json_object_get(spec, fields[i]), *b = json_object_get(old, fields[i]);
        if ((a || b) && (!a || !b || !json_equal(a, b)))
            return true;
    }
    return false;
}

int authz_write_additions(const json_t *doc, const json_t *stored, const char *domain, const char *writer,
                          json_t **ret)
{
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const json_t *spec = json_object_get(doc, "spec"), *old_spec = json_object_get(stored, "spec");
    json_auto_t *out = json_array();
    if (!out)
        return -ENOMEM;
    for (size_t i = 0; kind && i < ELEMENTSOF(references); i++) {
        const struct reference *ref = &references[i];
        if (strcmp(kind, ref->kind) != 0)
            continue;
        json_auto_t *names = json_object(), *old = json_object();
        if (!names || !old || collect(spec, ref->path, names) < 0 || collect(old_spec, ref->path, old) < 0)
            return -ENOMEM;
        const char *name;
        const json_t *ignored;
        json_object_foreach((json_t *)names, name, ignored)
        {
            if (json_object_get(old, name) || (ref->exempt && ref->exempt(name, domain, writer)))
                continue;
            const char *target = ref->on_self ? doc_name(doc) : name;
            if (json_array_append_new(out, json_pack("{s:s, s:s, s:s}", "verb", ref->verb, "kind", ref->target,
                                                     "name", target)) < 0)
                return -ENOMEM;
            if (ref->on_self)
                break;
        }
    }
    if (kind && strcmp(kind, "IdentityProvider") == 0 && idp_vouches_anew(doc, stored) &&
        json_array_append_new(out, json_pack("{s:s, s:s, s:s}", "verb", "impersonate", "kind", "User", "name",
                                             AUTHZ_ANY_USER)) < 0)
        return -ENOMEM;
    *ret = TAKE_PTR(out);
    return 0;
}

json_t *authz_service_hosts(const json_t *doc, const char *domain)
{
    json_auto_t *hosts = json_object();
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    if (!hosts || collect(json_object_get(doc, "spec"), "hosts", hosts) < 0)
        return NULL;
    if (name && domain && *domain) {
        _cleanup_free_ char *own = NULL;
        if (asprintf(&own, "%s.%s", name, domain) < 0 || json_object_set_new(hosts, own, json_true()) < 0)
            return NULL;
    }
    return TAKE_PTR(hosts);
}

/* ---- deciding a write ---- */

/* Refuses write W of caller C when it touches a protected bootstrap object
 * (403, an audit entry). Returns 0 when the caller may. */
static int check_protection(h2o_req_t *req, const caller *c, const api_write *w, api_error *err)
{
    authz_protection p = authz_write_protection(w->kind, w->name);
    if (p == AUTHZ_UNPROTECTED || (p == AUTHZ_ADMIN_ONLY && strcmp(caller_name(c), BOOTSTRAP_ADMIN_USER) == 0))
        return 0;
    api_fail(err, 403, "forbidden", "%s %s/%s by user %s is denied: protected bootstrap object; %s", w->verb, w->kind,
             w->name, caller_name(c),
             p == AUTHZ_NOBODY ? "the workload identities are written by cloisterd only"
                               : "only the bootstrap user " BOOTSTRAP_ADMIN_USER " may change or delete it");
    api_report_decision(req, c, w->verb, w->kind, w->name, err);
    return -1;
}

/* Decides write W's own verb and every right its additions need. */
static int decide_rights(api_server *srv, h2o_req_t *req, const caller *c, const api_write *w, api_error *err)
{
    if (check_protection(req, c, w, err) < 0)
        return -1;
    /* a workspace member's implicit rights know the new document (handlers-datasets.h) */
    if (!api_member_allows(srv, c, w->verb, w->kind, w->name, w->doc) &&
        api_authorize(srv, req, c, w->verb, w->kind, w->name, err) < 0)
        return -1;
    if (!w->doc)
        return 0;
    json_auto_t *adds = NULL;
    if (authz_write_additions(w->doc, w->stored, srv->cfg->domain, caller_name(c), &adds) < 0)
        return api_fail(err, 500, "internal", "out of memory; the write is refused");
    size_t i;
    const json_t *a;
    json_array_foreach(adds, i, a)
    {
        if (api_authorize(srv, req, c, json_string_value(json_object_get(a, "verb")),
                          json_string_value(json_object_get(a, "kind")), json_string_value(json_object_get(a, "name")),
                          err) < 0)
            return -1;
    }
    return 0;
}

/* The document among W of KIND/NAME, or NULL. */
static const json_t *written(const api_write *w, size_t n, const char *kind, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (w[i].doc && strcmp(w[i].kind, kind) == 0 && strcmp(w[i].name, name) == 0)
            return w[i].doc;
    return NULL;
}

/* Refuses a Credential (W[I]) for a user that neither exists nor is written
 * by the same request (400). */
static int check_credential_user(api_server *srv, const api_write *w, size_t n, size_t i, api_error *err)
{
    const char *user = json_string_value(json_object_get(json_object_get(w[i].doc, "spec"), "user"));
    if (!user || written(w, n, "User", user))
        return 0;
    json_t *doc = NULL;
    int e = store_get(srv->cfg->store, "User", user, &doc);
    json_decref(doc);
    if (e == -ENOENT) {
        api_fail(err, 400, "invalid", "spec.user: user %s does not exist; create the User first", user);
        snprintf(err->field, sizeof(err->field), "spec.user");
        return -1;
    }
    return e < 0 ? api_fail_store(err, e, "User", user) : 0;
}

/* Adds the hosts Service DOC claims to CLAIMS (host -> [owner, ...]). */
static int add_claims(json_t *claims, const json_t *doc, const char *domain)
{
    json_auto_t *hosts = authz_service_hosts(doc, domain);
    if (!hosts)
        return -ENOMEM;
    const char *host;
    const json_t *ignored;
    json_object_foreach(hosts, host, ignored)
    {
        json_t *owners = json_object_get(claims, host);
        if (!owners && json_object_set_new(claims, host, owners = json_array()) < 0)
            return -ENOMEM;
        if (json_array_append_new(owners, json_string(doc_name(doc))) < 0)
            return -ENOMEM;
    }
    return 0;
}

/* Who claims which host among the Service documents SERVICES, leaving out
 * those the N writes W write: a new object (host -> [owner, ...]) or NULL
 * when out of memory. */
static json_t *claims_of(const json_t *services, const api_write *w, size_t n, const char *domain)
{
    json_auto_t *claims = json_object();
    size_t i;
    const json_t *svc;
    json_array_foreach(services, i, svc)
    {
        if (!claims || (!written(w, n, "Service", doc_name(svc)) && add_claims(claims, svc, domain) < 0))
            return NULL;
    }
    return TAKE_PTR(claims);
}

/* Who claims which host once the N writes W are done: every stored Service,
 * with the ones W writes replaced by their new documents. Returns a new
 * object (host -> [owner, ...]) or NULL with ERR. */
static json_t *host_claims(api_server *srv, const api_write *w, size_t n, api_error *err)
{
    const char *domain = srv->cfg->domain;
    json_auto_t *services = NULL;
    int64_t rev;
    int e = store_list(srv->cfg->store, "Service", &services, &rev);
    if (e < 0) {
        api_fail_store(err, e, "Service", "*");
        return NULL;
    }
    json_auto_t *claims = claims_of(services, w, n, domain);
    for (size_t i = 0; claims && e == 0 && i < n; i++)
        if (w[i].doc && strcmp(w[i].kind, "Service") == 0)
            e = add_claims(claims, w[i].doc, domain);
    if (!claims || e < 0) {
        api_fail(err, 500, "internal", "out of memory; the write is refused");
        return NULL;
    }
    return TAKE_PTR(claims);
}

/* The hosts Service write W adds: those its new document claims that the
 * stored one did not, as a new object used as a set (maybe empty), or NULL
 * when out of memory. */
static json_t *hosts_added(const api_write *w, const char *domain)
{
    json_auto_t *hosts = authz_service_hosts(w->doc, domain);
    json_auto_t *old = w->stored ? authz_service_hosts(w->stored, domain) : json_object();
    if (!hosts || !old)
        return NULL;
    const char *host;
    const json_t *ignored;
    void *tmp;
    json_object_foreach_safe(hosts, tmp, host, ignored)
    {
        if (json_object_get(old, host))
            json_object_del(hosts, host);
    }
    return TAKE_PTR(hosts);
}

/* The one rule on hosts: Service NAME may add the hosts HOSTS (a set) only
 * while no other Service claims them in CLAIMS (host -> [owner, ...]).
 * Returns 0, or -1 with ERR (409 naming the owner). */
static int check_claimed(const json_t *claims, const char *name, const json_t *hosts, api_error *err)
{
    const char *host;
    const json_t *ignored;
    json_object_foreach((json_t *)hosts, host, ignored)
    {
        size_t j;
        const json_t *owner;
        json_array_foreach(json_object_get(claims, host), j, owner)
        {
            if (strcmp(json_string_value(owner), name) != 0)
                return api_fail(err, 409, "conflict",
                                "host %s is already claimed by Service %s; a host routes to one Service (remove it "
                                "there first)",
                                host, json_string_value(owner));
        }
    }
    return 0;
}

/* Refuses Service write W[I] when a host it adds is claimed by another
 * Service (409 naming it). *CLAIMS is built on first need. */
static int check_hosts(api_server *srv, const api_write *w, size_t n, size_t i, json_t **claims, api_error *err)
{
    json_auto_t *hosts = hosts_added(&w[i], srv->cfg->domain);
    if (!hosts)
        return api_fail(err, 500, "internal", "out of memory; the write is refused");
    if (json_object_size(hosts) == 0)
        return 0;
    if (!*claims && !(*claims = host_claims(srv, w, n, err)))
        return -1;
    return check_claimed(*claims, w[i].name, hosts, err);
}

int authz_host_additions(const api_write *w, size_t n, const char *domain, json_t **ret)
{
    json_auto_t *out = json_object();
    if (!out)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!w[i].doc || strcmp(w[i].kind, "Service") != 0)
            continue;
        json_t *hosts = hosts_added(&w[i], domain);
        if (!hosts)
            return -ENOMEM;
        if (json_object_size(hosts) == 0)
            json_decref(hosts);
        else if (json_object_set_new(out, w[i].name, hosts) < 0)
            return -ENOMEM;
    }
    *ret = TAKE_PTR(out);
    return 0;
}

int authz_check_host_additions(const json_t *services, const json_t *additions, const char *domain,
                               const char **ret_service, api_error *err)
{
    json_auto_t *claims = claims_of(services, NULL, 0, domain);
    if (!claims)
        return api_fail(err, 500, "internal", "out of memory; the write is refused");
    const char *name;
    const json_t *hosts;
    json_object_foreach((json_t *)additions, name, hosts)
    {
        if (check_claimed(claims, name, hosts, err) < 0) {
            *ret_service = name;
            return -1;
        }
    }
    return 0;
}

/* Refuses what no right permits in write W[I]; see api_decide_writes(). */
static int check_constraints(api_server *srv, const api_write *w, size_t n, size_t i, json_t **claims,
                             api_error *err)
{
    if (!w[i].doc)
        return 0;
    if (strcmp(w[i].kind, "Credential") == 0)
        return check_credential_user(srv, w, n, i, err);
    if (strcmp(w[i].kind, "Service") == 0)
        return check_hosts(srv, w, n, i, claims, err);
    if (strcmp(w[i].kind, "Dataset") == 0)
        return api_dataset_check(srv, w[i].doc, w[i].stored, err);
    return 0;
}

int api_decide_writes(api_server *srv, h2o_req_t *req, const caller *c, const api_write *w, size_t n,
                      api_error *err)
{
    json_auto_t *claims = NULL;
    for (size_t i = 0; i < n; i++)
        if (decide_rights(srv, req, c, &w[i], err) < 0) {
            err->document = (long)i;
            return -1;
        }
    /* what no right permits, once the caller is known to be allowed; a
     * refusal is audited as the write's own, since no policy was asked */
    for (size_t i = 0; i < n; i++)
        if (check_constraints(srv, w, n, i, &claims, err) < 0) {
            if (err->status < 500)
                api_report_decision(req, c, w[i].verb, w[i].kind, w[i].name, err);
            err->document = (long)i;
            return -1;
        }
    return 0;
}
