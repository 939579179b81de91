/* What a write adds that needs a right of its own (authz_write_additions()),
 * on JSON documents: only what is new, each once, hosts under the cluster
 * domain and one's own credentials exempt. The decisions themselves run
 * against the real server in tests/test_authz_writes.py. */
#include <criterion/criterion.h>
#include <string.h>

#include "api/authz-write.h"

static json_t *load(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    cr_assert(v, "bad test JSON: %s", e.text);
    return v;
}

/* The additions of writing NEW over OLD (NULL: absent) by WRITER as
 * "verb Kind/name" lines joined with "; ". */
static char *additions(const char *new_doc, const char *old_doc, const char *writer)
{
    json_t *doc = load(new_doc), *stored = old_doc ? load(old_doc) : NULL, *adds = NULL;
    cr_assert_eq(authz_write_additions(doc, stored, "cluster.test", writer, &adds), 0);
    char *out = calloc(1, 4096);
    size_t i;
    json_t *a;
    json_array_foreach(adds, i, a)
    {
        size_t len = strlen(out);
        snprintf(out + len, 4096 - len, "%s%s %s/%s", i ? "; " : "", json_string_value(json_object_get(a, "verb")),
                 json_string_value(json_object_get(a, "kind")), json_string_value(json_object_get(a, "name")));
    }
    json_decref(adds);
    json_decref(doc);
    json_decref(stored);
    return out;
}

#define EXPECT_ADDS(new_doc, old_doc, writer, want)                                                                    \
    do {                                                                                                               \
        char *got_ = additions(new_doc, old_doc, writer);                                                              \
        cr_expect_str_eq(got_, want);                                                                                  \
        free(got_);                                                                                                    \
    } while (0)

Test(additions, a_new_user_needs_bind_on_each_group_and_policy_once)
{
    EXPECT_ADDS("{\"kind\":\"User\",\"metadata\":{\"name\":\"eve\"},"
                "\"spec\":{\"groups\":[\"admins\",\"devs\",\"admins\"],\"policies\":[\"p\"]}}",
                NULL, "eve", "bind Group/admins; bind Group/devs; bind Policy/p");
}

Test(additions, what_is_already_there_may_be_kept)
{
    const char *stored = "{\"kind\":\"User\",\"metadata\":{\"name\":\"eve\"},"
                         "\"spec\":{\"groups\":[\"devs\"],\"policies\":[\"p\"]}}";
    EXPECT_ADDS(stored, stored, "eve", "");
    /* reordered, or one removed: nothing added */
    EXPECT_ADDS("{\"kind\":\"User\",\"metadata\":{\"name\":\"eve\"},\"spec\":{\"policies\":[\"p\"]}}", stored, "eve",
                "");
    EXPECT_ADDS("{\"kind\":\"User\",\"metadata\":{\"name\":\"eve\"},"
                "\"spec\":{\"groups\":[\"devs\",\"admins\"],\"policies\":[\"p\"]}}",
                stored, "eve", "bind Group/admins");
}

Test(additions, groups_and_credentials_bind_their_policies)
{
    EXPECT_ADDS("{\"kind\":\"Group\",\"metadata\":{\"name\":\"g\"},\"spec\":{\"policies\":[\"cloister-admins\"]}}",
                "{\"kind\":\"Group\",\"metadata\":{\"name\":\"g\"},\"spec\":{}}", "m", "bind Policy/cloister-admins");
    EXPECT_ADDS("{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},"
                "\"spec\":{\"user\":\"m\",\"policies\":[\"limits\"]}}",
                NULL, "m", "bind Policy/limits");
}

Test(additions, a_credential_for_someone_else_impersonates_them)
{
    EXPECT_ADDS("{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"user\":\"admin\"}}", NULL, "m",
                "impersonate User/admin");
    /* unchanged: kept */
    EXPECT_ADDS("{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"user\":\"admin\"}}",
                "{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"user\":\"admin\"}}", "m", "");
    /* moved to another user */
    EXPECT_ADDS("{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"user\":\"bob\"}}",
                "{\"kind\":\"Credential\",\"metadata\":{\"name\":\"c\"},\"spec\":{\"user\":\"m\"}}", "m",
                "impersonate User/bob");
}

Test(additions, services_use_secrets_bind_policies_and_hosts_outside_the_domain)
{
    EXPECT_ADDS("{\"kind\":\"Service\",\"metadata\":{\"name\":\"s\"},\"spec\":{"
                "\"upstream\":{\"url\":\"http://127.0.0.1:1\"},"
                "\"hosts\":[\"a.cluster.test\",\"x.y.cluster.test\",\"evil.example.net\",\"cluster.test\","
                "\"notcluster.test\"],"
                "\"policies\":[\"p\"],\"inlinePolicies\":[{\"name\":\"own\",\"rules\":[]}],"
                "\"inject\":{\"secret\":\"db\",\"key\":\"password\"}}}",
                NULL, "w",
                "bind Policy/p; bind Host/evil.example.net; bind Host/cluster.test; bind Host/notcluster.test; "
                "use Secret/db");
    /* the same secret under another key is the same Secret */
    EXPECT_ADDS("{\"kind\":\"Service\",\"metadata\":{\"name\":\"s\"},\"spec\":{\"inject\":{\"secret\":\"db\","
                "\"key\":\"other\"}}}",
                "{\"kind\":\"Service\",\"metadata\":{\"name\":\"s\"},\"spec\":{\"inject\":{\"secret\":\"db\","
                "\"key\":\"password\"}}}",
                "w", "");
}

Test(additions, identity_providers_and_enclaves_use_secrets)
{
    EXPECT_ADDS("{\"kind\":\"IdentityProvider\",\"metadata\":{\"name\":\"idp\"},"
                "\"spec\":{\"clientSecret\":{\"secret\":\"idp-secret\",\"key\":\"k\"}}}",
                NULL, "w", "use Secret/idp-secret; impersonate User/*");
    EXPECT_ADDS("{\"kind\":\"Enclave\",\"metadata\":{\"name\":\"e\"},\"spec\":{\"secrets\":["
                "{\"key\":\"team-key\",\"file\":\"a\"},"
                "{\"secret\":\"s1\",\"key\":\"k\",\"file\":\"b\"},"
                "{\"secret\":\"s2\",\"key\":\"k\",\"file\":\"c\"}]}}",
                "{\"kind\":\"Enclave\",\"metadata\":{\"name\":\"e\"},\"spec\":{\"secrets\":["
                "{\"secret\":\"s1\",\"key\":\"other\",\"file\":\"b\"}]}}",
                "w", "use Secret/s2");
}

Test(additions, an_identity_provider_that_vouches_anew_impersonates_anyone)
{
    const char *stored = "{\"kind\":\"IdentityProvider\",\"metadata\":{\"name\":\"idp\"},"
                         "\"spec\":{\"issuer\":\"https://idp.test\",\"clientId\":\"c\",\"scopes\":[\"openid\"]}}";
    /* the scopes it asks for change nothing about whom it vouches for */
    EXPECT_ADDS("{\"kind\":\"IdentityProvider\",\"metadata\":{\"name\":\"idp\"},"
                "\"spec\":{\"issuer\":\"https://idp.test\",\"clientId\":\"c\",\"scopes\":[\"openid\",\"email\"]}}",
                stored, "w", "");
    EXPECT_ADDS("{\"kind\":\"IdentityProvider\",\"metadata\":{\"name\":\"idp\"},"
                "\"spec\":{\"issuer\":\"https://evil.test\",\"clientId\":\"c\",\"scopes\":[\"openid\"]}}",
                stored, "w", "impersonate User/*");
    EXPECT_ADDS("{\"kind\":\"IdentityProvider\",\"metadata\":{\"name\":\"idp\"},"
                "\"spec\":{\"issuer\":\"https://idp.test\",\"clientId\":\"c\",\"scopes\":[\"openid\"],"
                "\"createUsers\":true}}",
                stored, "w", "impersonate User/*");
}

Test(additions, kinds_that_name_nothing_add_nothing)
{
    EXPECT_ADDS("{\"kind\":\"Policy\",\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":[]}}", NULL, "w", "");
    EXPECT_ADDS("{\"kind\":\"Secret\",\"metadata\":{\"name\":\"s\"},\"spec\":{\"data\":{\"k\":\"v\"}}}", NULL, "w",
                "");
}

Test(hosts, in_the_domain_means_a_label_or_more_under_it)
{
    cr_expect(authz_host_in_domain("wiki.cluster.test", "cluster.test"));
    cr_expect(authz_host_in_domain("a.b.cluster.test", "cluster.test"));
    cr_expect(authz_host_in_domain("wiki.Cluster.Test", "cluster.test"));
    cr_expect_not(authz_host_in_domain("cluster.test", "cluster.test"));
    cr_expect_not(authz_host_in_domain(".cluster.test", "cluster.test"));
    cr_expect_not(authz_host_in_domain("evilcluster.test", "cluster.test"));
    cr_expect_not(authz_host_in_domain("cluster.test.evil.net", "cluster.test"));
    cr_expect_not(authz_host_in_domain("wiki.cluster.test", ""));
    cr_expect_not(authz_host_in_domain("wiki.cluster.test", NULL));
}

Test(hosts, a_service_claims_its_own_name_and_its_hosts)
{
    json_t *doc = load("{\"kind\":\"Service\",\"metadata\":{\"name\":\"wiki\"},"
                       "\"spec\":{\"hosts\":[\"wiki.example.com\"]}}");
    json_t *hosts = authz_service_hosts(doc, "cluster.test");
    cr_assert(hosts);
    cr_expect_eq(json_object_size(hosts), 2);
    cr_expect(json_object_get(hosts, "wiki.cluster.test"));
    cr_expect(json_object_get(hosts, "wiki.example.com"));
    json_decref(hosts);
    json_decref(doc);
}

/* The check inside the store transaction (authz_check_host_additions()):
 * the hosts each write adds (authz_host_additions(): only new ones) against
 * every Service as the transaction leaves them, the writes' own included. */
Test(hosts, additions_are_checked_against_the_services_as_written)
{
    json_t *stored = load("{\"kind\":\"Service\",\"metadata\":{\"name\":\"wiki\"},"
                          "\"spec\":{\"hosts\":[\"kept.example.com\"]}}");
    json_t *doc = load("{\"kind\":\"Service\",\"metadata\":{\"name\":\"wiki\"},"
                       "\"spec\":{\"hosts\":[\"kept.example.com\",\"new.example.com\"]}}");
    json_t *other = load("{\"kind\":\"Service\",\"metadata\":{\"name\":\"blog\"},"
                         "\"spec\":{\"hosts\":[\"new.example.com\"]}}");
    api_write w[2] = {{.verb = "update", .kind = "Service", .name = "wiki", .doc = doc, .stored = stored},
                      {.verb = "delete", .kind = "Service", .name = "old", .stored = other}};
    json_t *adds = NULL;
    cr_assert_eq(authz_host_additions(w, 2, "cluster.test", &adds), 0);
    json_t *want = load("{\"wiki\":{\"new.example.com\":true}}");
    cr_expect(json_equal(adds, want), "%s", json_dumps(adds, 0));
    json_t *alone = json_pack("[O]", doc), *raced = json_pack("[O, O]", other, doc);
    api_error err = {0};
    const char *service = NULL;
    cr_expect_eq(authz_check_host_additions(alone, adds, "cluster.test", &service, &err), 0);
    cr_expect_eq(authz_check_host_additions(raced, adds, "cluster.test", &service, &err), -1);
    cr_expect_str_eq(service, "wiki");
    cr_expect_eq(err.status, 409);
    cr_expect_str_eq(err.message, "host new.example.com is already claimed by Service blog; a host routes to one "
                                  "Service (remove it there first)");
    json_decref(alone);
    json_decref(raced);
    json_decref(want);
    json_decref(adds);
    json_decref(other);
    json_decref(doc);
    json_decref(stored);
}

Test(protection, the_bootstrap_objects)
{
    cr_expect_eq(authz_write_protection("Group", "admins"), AUTHZ_ADMIN_ONLY);
    cr_expect_eq(authz_write_protection("User", "admin"), AUTHZ_ADMIN_ONLY);
    cr_expect_eq(authz_write_protection("Policy", "cloister-admins"), AUTHZ_ADMIN_ONLY);
    cr_expect_eq(authz_write_protection("Credential", "admin-bootstrap"), AUTHZ_ADMIN_ONLY);
    cr_expect_eq(authz_write_protection("Credential", "cloister-proxy"), AUTHZ_NOBODY);
    cr_expect_eq(authz_write_protection("Policy", "cloister-runner"), AUTHZ_NOBODY);
    cr_expect_eq(authz_write_protection("User", "cloister-runner"), AUTHZ_NOBODY);
    cr_expect_eq(authz_write_protection("Group", "admin"), AUTHZ_UNPROTECTED);
    cr_expect_eq(authz_write_protection("Service", "cloister-proxy"), AUTHZ_UNPROTECTED);
}

Test(additions, new_workspace_members_need_bind_on_the_workspace_once)
{
    const char *stored = "{\"kind\":\"Workspace\",\"metadata\":{\"name\":\"cohort\"},\"spec\":{\"members\":[\"alice\"]}}";
    EXPECT_ADDS("{\"kind\":\"Workspace\",\"metadata\":{\"name\":\"cohort\"},"
                "\"spec\":{\"members\":[\"alice\",\"bob\",\"carol\"]}}",
                stored, "admin", "bind Workspace/cohort");
    EXPECT_ADDS("{\"kind\":\"Workspace\",\"metadata\":{\"name\":\"cohort\"},\"spec\":{\"members\":[\"bob\"]}}",
                NULL, "admin", "bind Workspace/cohort");
    /* removing members, or keeping them, adds nothing */
    EXPECT_ADDS("{\"kind\":\"Workspace\",\"metadata\":{\"name\":\"cohort\"},\"spec\":{\"members\":[\"alice\"],"
                "\"approvals\":\"all\"}}",
                stored, "admin", "");
}

