#include <criterion/criterion.h>
#include <string.h>

#include "basic/strbuf.h"
#include "resource/manifest.h"
#include "resource/refs.h"
#include "resource/resource.h"
#include "resource/schema.h"

/* The single document of the YAML text S; the test fails if S does not parse. */
static json_t *yaml_doc(const char *s)
{
    manifest m = {};
    resource_error err;
    int r = manifest_parse(s, strlen(s), &m, &err);
    cr_assert_eq(r, 0, "parse: %s: %s", err.path, err.message);
    cr_assert_eq(m.n_docs, 1);
    json_t *v = json_incref(m.docs[0].value);
    manifest_free(&m);
    return v;
}

#define HEADER "apiVersion: cloister.dev/v1\n"

static void expect_valid(const char *s)
{
    json_auto_t *v = yaml_doc(s);
    resource_error err = {};
    int r = resource_validate(v, &err);
    cr_expect_eq(r, 0, "%s\nrefused: %s: %s", s, err.path, err.message);
}

/* Expects S to be refused at PATH with a message containing MESSAGE. */
static void expect_invalid(const char *s, const char *path, const char *message)
{
    json_auto_t *v = yaml_doc(s);
    resource_error err = {};
    cr_expect_eq(resource_validate(v, &err), -EINVAL, "%s\nwas accepted", s);
    cr_expect_str_eq(err.path, path, "%s\npath: %s (%s)", s, err.path, err.message);
    cr_expect(strstr(err.message, message), "%s\nmessage: %s", s, err.message);
}

Test(kind, find_accepts_kind_singular_and_plural_in_any_case)
{
    const resource_kind *k = resource_kind_find("Service");
    cr_assert_not_null(k);
    cr_expect_str_eq(k->kind, "Service");
    cr_expect_str_eq(k->plural, "services");
    cr_expect_eq(resource_kind_find("service"), k);
    cr_expect_eq(resource_kind_find("services"), k);
    cr_expect_eq(resource_kind_find("SERVICES"), k);
    cr_expect_str_eq(resource_kind_find("identityproviders")->kind, "IdentityProvider");
    cr_expect_str_eq(resource_kind_find("policy")->plural, "policies");
    cr_expect_null(resource_kind_find("svc"));
    cr_expect_null(resource_kind_find(""));
    cr_expect_null(resource_kind_find("Services "));
}

Test(kind, iteration_lists_every_kind_once)
{
    /* every kind of the foundation, in table order; later kinds follow them */
    const char *first[] = {"User", "Group", "Service", "Policy", "Credential", "IdentityProvider", "Secret"};
    size_t n = 0;
    for (const resource_kind *k; (k = resource_kind_get(n)); n++) {
        if (n < ELEMENTSOF(first))
            cr_expect_str_eq(k->kind, first[n]);
        cr_expect_eq(k->write_only_spec, strcmp(k->kind, "Secret") == 0);
        cr_expect_not_null(k->columns);
        cr_expect_eq(resource_kind_find(k->kind), k);
        cr_expect_eq(resource_kind_find(k->plural), k);
        for (size_t j = 0; j < n; j++)
            cr_expect_str_neq(resource_kind_get(j)->plural, k->plural);
    }
    cr_expect_geq(n, ELEMENTSOF(first));
    cr_expect_not_null(resource_kind_find("attestationpolicies"));
}

Test(name, dns_labels)
{
    char max[64], over[65];
    memset(max, 'a', 63);
    max[63] = 0;
    memset(over, 'a', 64);
    over[64] = 0;
    const char *good[] = {"a", "wiki", "devs-read", "a1", "0", "x-9-y", max};
    const char *bad[] = {"", "Wiki", "-a", "a-", "a_b", "a.b", "a b", "é", over};
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
        cr_expect(resource_name_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        cr_expect(!resource_name_valid(bad[i]), "%s", bad[i]);
}

Test(validate, every_kind_accepts_a_full_document)
{
    expect_valid(HEADER "kind: User\nmetadata: {name: alice, labels: {team: core, app.kubernetes.io/name: x}}\n"
                        "spec: {type: human, email: alice@example.com, groups: [devs], policies: [p],"
                        " disabled: false, attrs: {level: 3, tags: [a, b], nested: {x: null}}}\n");
    expect_valid(HEADER "kind: User\nmetadata: {name: bot}\nspec: {type: workload}\n");
    expect_valid(HEADER "kind: Group\nmetadata: {name: devs}\nspec: {policies: [devs-read], attrs: {}}\n");
    expect_valid(HEADER "kind: Group\nmetadata: {name: devs}\n");
    expect_valid(HEADER "kind: Service\nmetadata: {name: wiki}\n"
                        "spec:\n"
                        "  upstream: {url: \"http://127.0.0.1:9000\"}\n"
                        "  hosts: [wiki.example.com]\n"
                        "  policies: [devs-read]\n"
                        "  inlinePolicies:\n"
                        "  - name: extra\n"
                        "    rules: [{effect: deny, condition: {matchAny: true}}]\n"
                        "  inject: {secret: wiki-token, key: token, as: header, header: X-Api-Key}\n"
                        "  attrs: {tier: gold}\n"
                        "  failClosed: true\n"
                        "  passAuthorization: false\n");
    expect_valid(HEADER "kind: Service\nmetadata: {name: scorer}\nspec: {upstream: {enclave: scorer}}\n");
    expect_valid(HEADER "kind: Service\nmetadata: {name: v6}\nspec: {upstream: {url: \"https://[::1]:8443/base?x=1\"}}\n");
    expect_valid(HEADER "kind: Policy\nmetadata: {name: devs-read}\n"
                        "spec:\n"
                        "  rules:\n"
                        "  - {effect: allow, priority: 0, condition: {match: '\"devs\" in ctx.user.groups'}}\n"
                        "  - {effect: deny, priority: 1, condition: {all: [{match: 'a'}, {not: {match: 'b'}}]}}\n"
                        "  - {name: r3, effect: deny, priority: -4, condition: {any: [{matchAny: true}]}}\n");
    expect_valid(HEADER "kind: Credential\nmetadata: {name: admin-bootstrap}\n"
                        "spec: {user: admin, type: authToken, expiresAt: \"2030-01-31T12:00:00Z\", policies: [p]}\n");
    expect_valid(HEADER "kind: IdentityProvider\nmetadata: {name: google}\n"
                        "spec: {type: oidc, issuer: \"https://accounts.google.com\", clientId: abc.apps,"
                        " clientSecret: {secret: google-oidc, key: client-secret}, scopes: [openid, email],"
                        " claims: {email: email, groups: groups}, createUsers: true}\n");
    expect_valid(HEADER "kind: Secret\nmetadata: {name: wiki-token}\nspec: {data: {token: abc, tls.crt: \"\", A_b-1: x}}\n");
}

Test(validate, server_set_fields_and_status_are_tolerated)
{
    expect_valid(HEADER "kind: Group\n"
                        "metadata: {name: devs, uid: 7d0c, resourceVersion: \"12\","
                        " createdAt: \"2026-01-01T00:00:00Z\", updatedAt: \"2026-01-02T00:00:00.5Z\"}\n"
                        "spec: {}\n"
                        "status: {anything: [1, {goes: here}]}\n");
}

Test(validate, unknown_fields_are_named_with_the_known_ones)
{
    expect_invalid(HEADER "kind: Service\nmetadata: {name: wiki}\nspec: {upstrem: {url: \"http://a\"}}\n",
                   "spec.upstrem", "unknown field; known fields are: upstream, hosts, policies");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: wiki}\nspec: {upstream: {url: \"http://a\", port: 1}}\n",
                   "spec.upstream.port", "unknown field; known fields are: url, enclave");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs, namespace: x}\n", "metadata.namespace",
                   "unknown field");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs}\nspecs: {}\n", "specs",
                   "known fields are: apiVersion, kind, metadata, spec, status");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {rules: [{effect: allow, condition: {all: [{match: a, extra: 1}]}}]}\n",
                   "spec.rules[0].condition.all[0].extra", "unknown field");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs}\nspec: {\"odd key\": 1}\n",
                   "spec[\"odd key\"]", "unknown field");
}

Test(validate, document_envelope)
{
    expect_invalid("apiVersion: v1\nkind: Group\nmetadata: {name: devs}\n", "apiVersion",
                   "must be \"cloister.dev/v1\"");
    expect_invalid("kind: Group\nmetadata: {name: devs}\n", "apiVersion", "required field missing");
    expect_invalid(HEADER "metadata: {name: devs}\n", "kind", "required field missing");
    expect_invalid(HEADER "kind: Gadget\nmetadata: {name: devs}\n", "kind",
                   "unknown kind \"Gadget\"; known kinds are: User, Group, Service");
    expect_invalid(HEADER "kind: service\nmetadata: {name: wiki}\n", "kind",
                   "must be \"Service\" (kinds are case-sensitive");
    expect_invalid(HEADER "kind: Group\n", "metadata", "required field missing");
    expect_invalid(HEADER "kind: Group\nmetadata: {labels: {}}\n", "metadata.name",
                   "required field missing");
    expect_invalid(HEADER "kind: Group\nmetadata: []\n", "metadata", "must be an object (got an array)");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs}\nspec: [1]\n", "spec",
                   "must be an object (got an array)");
}

Test(validate, names_and_labels)
{
    expect_invalid(HEADER "kind: Group\nmetadata: {name: Devs}\n", "metadata.name", "DNS-1123 label");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: 12}\n", "metadata.name",
                   "must be a string (got an integer)");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs, labels: {-x: y}}\n",
                   "metadata.labels.-x", "invalid key");
    expect_invalid(HEADER "kind: Group\nmetadata: {name: devs, labels: {x: 1}}\n", "metadata.labels.x",
                   "must be a string");
    strbuf b;
    strbuf_init(&b, 1 << 20);
    strbuf_puts(&b, HEADER "kind: Group\nmetadata:\n  name: devs\n  labels:\n");
    for (int i = 0; i < RESOURCE_LABELS_MAX + 1; i++)
        strbuf_printf(&b, "    k%d: v\n", i);
    expect_invalid(b.data, "metadata.labels", "at most 64 keys");
    strbuf_free(&b);
}

Test(validate, enums_types_and_required_fields)
{
    expect_invalid(HEADER "kind: User\nmetadata: {name: a}\nspec: {type: robot}\n", "spec.type",
                   "must be one of: human, workload (got \"robot\")");
    expect_invalid(HEADER "kind: User\nmetadata: {name: a}\nspec: {groups: devs}\n", "spec.groups",
                   "must be an array (got a string)");
    expect_invalid(HEADER "kind: User\nmetadata: {name: a}\nspec: {groups: [Devs]}\n", "spec.groups[0]",
                   "DNS-1123");
    expect_invalid(HEADER "kind: User\nmetadata: {name: a}\nspec: {disabled: \"no\"}\n", "spec.disabled",
                   "must be a boolean (got a string)");
    expect_invalid(HEADER "kind: User\nmetadata: {name: a}\nspec: {email: not-an-email}\n", "spec.email",
                   "email address");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\n", "spec.rules", "required field missing");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: []}\n", "spec.rules",
                   "at least 1 elements");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: permit, condition: {matchAny: true}}]}\n",
                   "spec.rules[0].effect", "must be one of: allow, deny");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{condition: {matchAny: true}}]}\n",
                   "spec.rules[0].effect", "required field missing");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: allow}]}\n",
                   "spec.rules[0].condition", "required field missing");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: allow, priority: 5, condition: {matchAny: true}}]}\n",
                   "spec.rules[0].priority", "must be between -4 and 4 (got 5)");
    expect_invalid(HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: allow, priority: 1.5, condition: {matchAny: true}}]}\n",
                   "spec.rules[0].priority", "must be an integer (got a number)");
    expect_invalid(HEADER "kind: Credential\nmetadata: {name: c}\nspec: {type: authToken}\n", "spec.user",
                   "required field missing");
    expect_invalid(HEADER "kind: Credential\nmetadata: {name: c}\nspec: {user: a, type: password}\n",
                   "spec.type", "must be \"authToken\"");
    expect_invalid(HEADER "kind: Credential\nmetadata: {name: c}\nspec: {user: a, expiresAt: tomorrow}\n",
                   "spec.expiresAt", "RFC 3339");
    expect_invalid(HEADER "kind: IdentityProvider\nmetadata: {name: i}\n"
                          "spec: {type: oidc, issuer: \"http://idp\", clientId: a, clientSecret: {secret: s, key: k}}\n",
                   "spec.issuer", "https:// URL");
    expect_invalid(HEADER "kind: IdentityProvider\nmetadata: {name: i}\n"
                          "spec: {type: oidc, issuer: \"https://idp\", clientId: a}\n",
                   "spec.clientSecret", "required field missing");
    expect_invalid(HEADER "kind: IdentityProvider\nmetadata: {name: i}\n"
                          "spec: {type: saml, issuer: \"https://idp\", clientId: a, clientSecret: {secret: s, key: k}}\n",
                   "spec.type", "must be \"oidc\"");
    expect_invalid(HEADER "kind: Secret\nmetadata: {name: s}\nspec: {}\n", "spec.data", "required field missing");
    expect_invalid(HEADER "kind: Secret\nmetadata: {name: s}\nspec: {data: {..: x}}\n", "spec.data[\"..\"]",
                   "invalid key");
    expect_invalid(HEADER "kind: Secret\nmetadata: {name: s}\nspec: {data: {k: 1}}\n", "spec.data.k",
                   "must be a string (got an integer)");
}

Test(validate, service_upstream_and_inject_rules)
{
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {}\n", "spec.upstream",
                   "required field missing");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {}}\n", "spec.upstream",
                   "must set exactly one of: url, enclave");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\", enclave: e}}\n",
                   "spec.upstream", "must set exactly one of: url, enclave");
    const char *bad_urls[] = {"ftp://a", "http://", "http://user:pw@host/", "http://a/#frag",
                              "http://a b/", "http://a:0/", "http://a:65536/", "HTTP://a",
                              "http://[::1", "http://:80/", "//a"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(*bad_urls); i++) {
        char doc[512];
        snprintf(doc, sizeof(doc),
                 HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"%s\"}}\n", bad_urls[i]);
        expect_invalid(doc, "spec.upstream.url", "http:// or https:// URL");
    }
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, hosts: [Wiki.example.com]}\n",
                   "spec.hosts[0]", "lower-case DNS name");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k, as: header}}\n",
                   "spec.inject.header", "required field missing (as is header)");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k, header: X-A}}\n",
                   "spec.inject.header", "only allowed when as is header");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k, as: digest}}\n",
                   "spec.inject.as", "must be one of: bearer, basic, header");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k, as: header, header: X-Cloister-User}}\n",
                   "spec.inject.header", "x-cloister-*");
    expect_invalid(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k, as: header, header: \"Bad Header\"}}\n",
                   "spec.inject.header", "HTTP header name");
}

Test(validate, conditions_hold_exactly_one_operator)
{
#define POLICY(cond) HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: allow, condition: " cond "}]}\n"
    expect_invalid(POLICY("{}"), "spec.rules[0].condition", "must set exactly one of: match, all, any, not, matchAny");
    expect_invalid(POLICY("{match: a, matchAny: true}"), "spec.rules[0].condition", "exactly one");
    expect_invalid(POLICY("{matchAny: false}"), "spec.rules[0].condition.matchAny", "must be true");
    expect_invalid(POLICY("{all: []}"), "spec.rules[0].condition.all", "at least 1");
    expect_invalid(POLICY("{not: {any: [{match: ''}]}}"), "spec.rules[0].condition.not.any[0].match",
                   "must not be empty");
    expect_invalid(POLICY("{not: [{match: a}]}"), "spec.rules[0].condition.not", "must be an object");
#undef POLICY
}

Test(validate, caps_on_strings_arrays_and_depth)
{
    strbuf b;
    strbuf_init(&b, 1 << 20);
    strbuf_puts(&b, HEADER "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: allow, condition: {match: '");
    for (int i = 0; i < RESOURCE_STRING_MAX + 1; i++)
        strbuf_putc(&b, 'x');
    strbuf_puts(&b, "'}}]}\n");
    expect_invalid(b.data, "spec.rules[0].condition.match", "at most 4096 bytes");

    strbuf_reset(&b);
    strbuf_puts(&b, HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}, hosts: [");
    for (int i = 0; i < 65; i++)
        strbuf_printf(&b, "%sh%d.example.com", i ? ", " : "", i);
    strbuf_puts(&b, "]}\n");
    expect_invalid(b.data, "spec.hosts", "at most 64 elements (got 65)");

    strbuf_reset(&b);
    strbuf_puts(&b, HEADER "kind: Secret\nmetadata: {name: s}\nspec: {data: {big: '");
    for (int i = 0; i < 64 * 1024 + 1; i++)
        strbuf_putc(&b, 'x');
    strbuf_puts(&b, "'}}\n");
    expect_invalid(b.data, "spec.data.big", "at most 65536 bytes");
    strbuf_free(&b);

    /* Depth is counted on the JSON value: 32 levels pass, 33 do not. */
    json_auto_t *doc = yaml_doc(HEADER "kind: Group\nmetadata: {name: devs}\nspec: {attrs: {}}\n");
    json_t *at = json_object_get(json_object_get(doc, "spec"), "attrs"); /* depth 3 */
    for (int depth = 3; depth < RESOURCE_MAX_DEPTH; depth++) {
        json_t *next = json_object();
        json_object_set_new(at, "a", next);
        at = next;
    }
    resource_error err;
    cr_expect_eq(resource_validate(doc, &err), 0, "%s: %s", err.path, err.message);
    json_object_set_new(at, "a", json_array());
    cr_expect_eq(resource_validate(doc, &err), -EINVAL);
    cr_expect(strstr(err.message, "nested too deeply"), "%s", err.message);
}

Test(validate, not_an_object)
{
    json_auto_t *v = json_array();
    resource_error err;
    cr_expect_eq(resource_validate(v, &err), -EINVAL);
    cr_expect_str_eq(err.path, "");
    cr_expect_eq(resource_validate(v, NULL), -EINVAL);
}

Test(defaults, fills_declared_defaults_only)
{
    json_auto_t *user = yaml_doc(HEADER "kind: User\nmetadata: {name: a}\n");
    cr_assert_eq(resource_apply_defaults(user), 0);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(user, "spec"), "type")), "human");
    cr_expect_null(json_object_get(json_object_get(user, "spec"), "disabled"));

    json_auto_t *policy = yaml_doc(HEADER "kind: Policy\nmetadata: {name: p}\n"
                                          "spec: {rules: [{effect: allow, condition: {matchAny: true}},"
                                          " {effect: deny, priority: 2, condition: {matchAny: true}}]}\n");
    cr_assert_eq(resource_apply_defaults(policy), 0);
    json_t *rules = json_object_get(json_object_get(policy, "spec"), "rules");
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(rules, 0), "priority")), 0);
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(rules, 1), "priority")), 2);

    json_auto_t *svc = yaml_doc(HEADER "kind: Service\nmetadata: {name: w}\n"
                                       "spec: {upstream: {url: \"http://a\"}, inject: {secret: s, key: k}}\n");
    cr_assert_eq(resource_apply_defaults(svc), 0);
    cr_expect_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(svc, "spec"), "inject"), "as")),
                     "bearer");
    resource_error err;
    cr_expect_eq(resource_validate(svc, &err), 0);

    json_auto_t *bad = json_pack("{s:s}", "kind", "Gadget");
    cr_expect_eq(resource_apply_defaults(bad), -EINVAL);
}

Test(public_view, secrets_show_sorted_key_names_only)
{
    json_auto_t *secret = yaml_doc(HEADER "kind: Secret\nmetadata: {name: s}\n"
                                          "spec: {data: {zeta: z, alpha: a, mid: m}}\nstatus: {other: 1}\n");
    json_auto_t *view = resource_public_view(secret);
    cr_assert_not_null(view);
    cr_expect_eq(json_object_size(json_object_get(view, "spec")), 0);
    json_auto_t *expected = json_pack("{s:i,s:[sss]}", "other", 1, "keys", "alpha", "mid", "zeta");
    cr_expect(json_equal(json_object_get(view, "status"), expected));
    /* the input is untouched */
    cr_expect_eq(json_object_size(json_object_get(json_object_get(secret, "spec"), "data")), 3);
    char *dump = json_dumps(view, 0);
    cr_expect_null(strstr(dump, "\"z\""));
    free(dump);
}

Test(public_view, other_kinds_are_copied_unchanged)
{
    json_auto_t *svc = yaml_doc(HEADER "kind: Service\nmetadata: {name: w}\nspec: {upstream: {url: \"http://a\"}}\n");
    json_auto_t *view = resource_public_view(svc);
    cr_assert_not_null(view);
    cr_expect_neq(view, svc);
    cr_expect(json_equal(view, svc));
    json_auto_t *arr = json_array();
    cr_expect_null(resource_public_view(arr));
}

Test(validate, enclave_specs)
{
    expect_valid(HEADER "kind: Enclave\nmetadata: {name: scorer}\n"
                        "spec:\n"
                        "  bundle: /srv/bundles/scorer\n"
                        "  replicas: {min: 1, max: 4}\n"
                        "  secrets: [{key: model-key, file: model.key}, {secret: db-pass, key: DB_pass, file: db}]\n"
                        "  attestationPolicy: prod-enclaves\n"
                        "  limits: {memoryMiB: 256, pids: 64}\n");
    expect_valid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, replicas: {max: 16}}\n");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {}\n", "spec.bundle", "required field missing");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: srv/b}\n", "spec.bundle",
                   "absolute path");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /srv/../etc}\n", "spec.bundle",
                   "absolute path");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /srv//b}\n", "spec.bundle",
                   "absolute path");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /srv/b/}\n", "spec.bundle",
                   "absolute path");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: \"/a\\nb\"}\n", "spec.bundle",
                   "absolute path");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, replicas: {min: 0}}\n",
                   "spec.replicas.min", "between 1 and 16");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, replicas: {min: 1, max: 17}}\n",
                   "spec.replicas.max", "between 1 and 16");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, replicas: {min: 3, max: 2}}\n",
                   "spec.replicas.max", "at least min (3");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, replicas: {min: 3}}\n",
                   "spec.replicas.max", "max defaults to 1");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, secrets: [{key: k, file: a/b}]}\n",
                   "spec.secrets[0].file", "must be 1-253 letters");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, secrets: [{key: k, file: ..}]}\n",
                   "spec.secrets[0].file", "must be 1-253 letters");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, secrets: [{key: Model_Key, file: f}]}\n",
                   "spec.secrets[0].key", "must name a Key");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, secrets: [{secret: s, file: f}]}\n",
                   "spec.secrets[0].key", "required field missing");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\n"
                          "spec: {bundle: /b, secrets: [{key: k, file: f}, {secret: s, key: x, file: f}]}\n",
                   "spec.secrets[1].file", "secrets[0] already writes /run/secrets/f");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\n"
                          "spec: {bundle: /b, secrets: [{key: k, file: f}, {secret: s, key: x, file: g}]}\n",
                   "spec.attestationPolicy", "secrets[1] delivers a value of a Secret");
    expect_valid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, secrets: [{key: k, file: f}]}\n");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, limits: {memoryMiB: 0}}\n",
                   "spec.limits.memoryMiB", "between 8 and");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, limits: {cpu: 1}}\n",
                   "spec.limits.cpu", "unknown field");
}

Test(validate, enclave_scaling)
{
    expect_valid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {inFlightPerReplica: 2,"
                        " memoryPercent: 60, upAfterSeconds: 1, downAfterSeconds: 30}}\n");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {memoryPercent: 0}}\n",
                   "spec.scaling.memoryPercent", "between 1 and 100");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {memoryPercent: 101}}\n",
                   "spec.scaling.memoryPercent", "between 1 and 100");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {upAfterSeconds: 0}}\n",
                   "spec.scaling.upAfterSeconds", "between 1 and 86400");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {inFlightPerReplica: 0}}\n",
                   "spec.scaling.inFlightPerReplica", "between 1 and");
    expect_invalid(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b, scaling: {cpuPercent: 50}}\n",
                   "spec.scaling.cpuPercent", "unknown field");
}

Test(defaults, enclave_scaling_defaults_fill_what_is_left_out)
{
    json_auto_t *e = yaml_doc(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b}\n");
    cr_assert_eq(resource_apply_defaults(e), 0);
    json_t *scaling = json_object_get(json_object_get(e, "spec"), "scaling");
    cr_expect_eq(json_integer_value(json_object_get(scaling, "inFlightPerReplica")), 4);
    cr_expect_eq(json_integer_value(json_object_get(scaling, "memoryPercent")), 80);
    cr_expect_eq(json_integer_value(json_object_get(scaling, "upAfterSeconds")), 3);
    cr_expect_eq(json_integer_value(json_object_get(scaling, "downAfterSeconds")), 15);
    json_auto_t *f = yaml_doc(HEADER "kind: Enclave\nmetadata: {name: f}\nspec: {bundle: /b, scaling: {memoryPercent: 50}}\n");
    cr_assert_eq(resource_apply_defaults(f), 0);
    scaling = json_object_get(json_object_get(f, "spec"), "scaling");
    cr_expect_eq(json_integer_value(json_object_get(scaling, "memoryPercent")), 50);
    cr_expect_eq(json_integer_value(json_object_get(scaling, "upAfterSeconds")), 3);
}

Test(defaults, enclave_replicas_default_to_one)
{
    json_auto_t *e = yaml_doc(HEADER "kind: Enclave\nmetadata: {name: e}\nspec: {bundle: /b}\n");
    cr_assert_eq(resource_apply_defaults(e), 0);
    json_t *replicas = json_object_get(json_object_get(e, "spec"), "replicas");
    cr_expect_eq(json_integer_value(json_object_get(replicas, "min")), 1);
    cr_expect_eq(json_integer_value(json_object_get(replicas, "max")), 1);
    json_auto_t *f = yaml_doc(HEADER "kind: Enclave\nmetadata: {name: f}\nspec: {bundle: /b, replicas: {max: 3}}\n");
    cr_assert_eq(resource_apply_defaults(f), 0);
    replicas = json_object_get(json_object_get(f, "spec"), "replicas");
    cr_expect_eq(json_integer_value(json_object_get(replicas, "min")), 1);
    cr_expect_eq(json_integer_value(json_object_get(replicas, "max")), 3);
    resource_error err;
    cr_expect_eq(resource_validate(f, &err), 0);
}

#define JOB_DOC HEADER "kind: Job\nmetadata: {name: by-city}\n"

Test(validate, job)
{
    expect_valid(JOB_DOC "spec: {workspace: cohort, query: \"SELECT city, count(*) FROM patients GROUP BY city\","
                         " inputs: [patients, visits], recipients: [alice, bob], maxRuns: 3,"
                         " notAfter: \"2027-01-01T00:00:00Z\"}\n");
    expect_valid(JOB_DOC "spec: {workspace: cohort, query: \"SELECT 1\", inputs: [patients]}\n");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q}\n", "spec.inputs", "required field missing");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: []}\n", "spec.inputs", "at least 1");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a, b, a]}\n", "spec.inputs[2]",
                   "a is already inputs[0]");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a], recipients: [x, x]}\n",
                   "spec.recipients[1]", "x is already recipients[0]");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a], maxRuns: 0}\n", "spec.maxRuns", "");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a], notAfter: tomorrow}\n", "spec.notAfter",
                   "RFC 3339");
    /* at most 16 inputs, a query of at most 64 KiB */
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9,"
                           " a10, a11, a12, a13, a14, a15, a16]}\n", "spec.inputs", "at most 16");
    _cleanup_strbuf_ strbuf b;
    strbuf_init(&b, 200 * 1024);
    strbuf_puts(&b, JOB_DOC "spec: {workspace: cohort, inputs: [a], query: \"");
    for (int i = 0; i < 64 * 1024 + 1; i++)
        strbuf_putc(&b, 'x');
    strbuf_puts(&b, "\"}\n");
    expect_invalid(b.data, "spec.query", "");

    /* what an approver reads is what runs: no bidirectional controls or invisible characters */
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: \"SELECT 1 -- \xe2\x80\xae\", inputs: [a]}\n",
                   "spec.query", "holds U+202E at byte 12");
    expect_invalid(JOB_DOC "spec: {workspace: cohort, query: \"SELECT\xe2\x80\x8b 1\", inputs: [a]}\n",
                   "spec.query", "U+200B");
    expect_valid(JOB_DOC "spec: {workspace: cohort, query: \"SELECT 'Z\xc3\xbcrich \xe2\x82\xac \xf0\x9f\x98\x80'\","
                         " inputs: [a]}\n");

    json_auto_t *doc = yaml_doc(JOB_DOC "spec: {workspace: cohort, query: q, inputs: [a]}\n");
    cr_assert_eq(resource_apply_defaults(doc), 0);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(doc, "spec"), "maxRuns")), 1);
    cr_assert_null(json_object_get(json_object_get(doc, "spec"), "recipients"), "filled by the server, not a default");
}

/* ---- references (refs.c) ---- */

/* The schema at the table PATH (after "spec.") below S, or NULL. */
static const schema *schema_at(const schema *s, const char *path)
{
    while (s && *path) {
        if (*path == '.')
            path++;
        if (strncmp(path, "[]", 2) == 0) {
            if (s->type != SCHEMA_ARRAY)
                return NULL;
            s = s->items;
            path += 2;
            continue;
        }
        size_t n = strcspn(path, ".[");
        const schema *next = NULL;
        for (const schema_field *f = s->type == SCHEMA_OBJECT ? s->fields : NULL; f && f->name; f++)
            if (strlen(f->name) == n && strncmp(f->name, path, n) == 0)
                next = f->schema;
        s = next;
        path += n;
    }
    return s;
}

Test(refs, every_reference_names_a_field_of_its_kind_and_a_known_kind)
{
    const resource_ref *ref;
    size_t i;
    for (i = 0; (ref = resource_ref_get(i)); i++) {
        const resource_kind *k = resource_kind_find(ref->kind);
        cr_assert(k, "%s", ref->kind);
        cr_assert(resource_kind_find(ref->target), "%s", ref->target);
        cr_assert_eq(strncmp(ref->path, "spec.", 5), 0, "%s", ref->path);
        const schema *s = schema_at(k->spec, ref->path + 5);
        cr_assert(s, "%s %s is not in the schema", ref->kind, ref->path);
        cr_assert_eq(s->type, SCHEMA_STRING, "%s %s", ref->kind, ref->path);
        cr_assert(resource_kind_referenced(ref->target));
    }
    cr_assert_gt(i, 10);
    cr_assert_not(resource_kind_referenced("Session"));
}

static int collect(const resource_ref *ref, const char *name, void *userdata)
{
    strbuf *b = userdata;
    strbuf_printf(b, "%s=%s/%s;", ref->path, ref->target, name);
    return 0;
}

Test(refs, foreach_finds_names_in_arrays_objects_and_skips_the_unless_case)
{
    json_auto_t *enclave = json_loads(
        "{\"kind\":\"Enclave\",\"metadata\":{\"name\":\"e\"},\"spec\":{\"bundle\":\"/b\",\"attestationPolicy\":\"ap\","
        "\"secrets\":[{\"key\":\"k1\",\"file\":\"a\"},{\"secret\":\"s1\",\"key\":\"tok\",\"file\":\"b\"}]}}",
        0, NULL);
    char buf[512];
    strbuf b;
    strbuf_init_static(&b, buf, sizeof(buf));
    cr_assert_eq(resource_refs_foreach(enclave, collect, &b), 0);
    cr_assert_str_eq(buf, "spec.secrets[].secret=Secret/s1;spec.secrets[].key=Key/k1;"
                          "spec.attestationPolicy=AttestationPolicy/ap;");

    json_auto_t *svc = json_loads("{\"kind\":\"Service\",\"metadata\":{\"name\":\"w\"},\"spec\":{\"upstream\":"
                                  "{\"url\":\"http://x\"},\"policies\":[\"p1\",\"p2\"]}}",
                                  0, NULL);
    const char *path = NULL;
    cr_assert(resource_refs_names(svc, "Policy", "p2", &path));
    cr_assert_str_eq(path, "spec.policies[]");
    cr_assert_not(resource_refs_names(svc, "Policy", "p3", NULL));
    cr_assert_not(resource_refs_names(svc, "Group", "p1", NULL));
}
