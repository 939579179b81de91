/* Policy manifests from arbitrary bytes: JSON -> schema -> CEL validation ->
 * a rule set with the policy attached to a service and to a group -> a
 * decision on a fixed request, which the index must make exactly as the
 * unindexed evaluator does (unless a limit was reached: cost, memory or the
 * conditions of one decision, which only evaluated rules count towards). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "resource/resource.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The fixed request: alice of groups devs and ops, GET /docs/a on wiki. */
static void fixed_request(policy_request *r, cel_list *groups, cel_value *items, cel_map *headers,
                          cel_map_entry *entries)
{
    policy_request_init(r);
    policy_request_set_string(r, POLICY_VAR_USER_NAME, "alice");
    policy_request_set_string(r, POLICY_VAR_USER_EMAIL, "alice@example.com");
    policy_request_set_string(r, POLICY_VAR_SERVICE_NAME, "wiki");
    policy_request_set_string(r, POLICY_VAR_HTTP_METHOD, "GET");
    policy_request_set_string(r, POLICY_VAR_HTTP_PATH, "/docs/a");
    policy_request_set_string(r, POLICY_VAR_REQUEST_IP, "10.1.2.3");
    policy_request_set_string(r, POLICY_VAR_API_KIND, "Secret");
    items[0] = cel_cstring("devs");
    items[1] = cel_cstring("ops");
    *groups = (cel_list){2, items};
    r->vars[POLICY_VAR_USER_GROUPS] = cel_list_value(groups);
    entries[0] = (cel_map_entry){cel_cstring("x-team"), cel_cstring("blue")};
    *headers = (cel_map){1, entries};
    r->vars[POLICY_VAR_HTTP_HEADERS] = cel_map_value(headers);
}

static bool resource_limited(const policy_decision *d)
{
    return strstr(d->reason, "cost limit") || strstr(d->reason, "out of memory") ||
           strstr(d->reason, "conditions were evaluated in one decision");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        return 0;
    resource_error rerr;
    policy_problem problem;
    if (resource_validate(doc, &rerr) < 0 || resource_apply_defaults(doc) < 0 ||
        policy_validate_document(doc, &problem) < 0) {
        json_decref(doc);
        return 0;
    }
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const char *name = json_string_value(json_object_get(json_object_get(doc, "metadata"), "name"));
    json_t *policies = json_array(), *services = json_array(), *groups = json_array();
    if (strcmp(kind, "Policy") == 0) {
        json_array_append(policies, doc);
        json_array_append_new(services, json_pack("{s:{s:s}, s:{s:[s]}}", "metadata", "name", "wiki", "spec",
                                                  "policies", name));
        json_array_append_new(groups, json_pack("{s:{s:s}, s:{s:[s]}}", "metadata", "name", "devs", "spec",
                                                "policies", name));
    } else if (strcmp(kind, "Service") == 0) {
        json_array_append(services, doc);
    }
    policy_set *set;
    if (policy_set_new(policies, NULL, groups, NULL, services, &set) == 0) {
        policy_request r;
        cel_list gl;
        cel_value items[2];
        cel_map hm;
        cel_map_entry entries[1];
        fixed_request(&r, &gl, items, &hm, entries);
        if (strcmp(kind, "Service") == 0)
            policy_request_set_string(&r, POLICY_VAR_SERVICE_NAME, name);
        cel_arena *arena = cel_arena_new(POLICY_ARENA_MAX);
        policy_decision a, b;
        if (arena && policy_decide(set, &r, arena, &a) == 0 && policy_decide_unindexed(set, &r, arena, &b) == 0 &&
            !resource_limited(&a) && !resource_limited(&b) &&
            (a.allow != b.allow || strcmp(a.policy, b.policy) != 0 || strcmp(a.rule, b.rule) != 0))
            abort();
        cel_arena_free(arena);
        policy_set_unref(set);
    }
    json_decref(policies);
    json_decref(services);
    json_decref(groups);
    json_decref(doc);
    return 0;
}
