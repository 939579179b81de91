/* The decide stage: the in-process policy set on ctx for the resolved
 * caller, the Service and the normalised request (see corridor.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "audit/event.h"
#include "policy/policy-http.h"
#include "proxy/corridor.h"

int proxy_policy_request(proxy_request *pr, policy_request *p)
{
    proxy_thread *t = pr->t;
    const resolved_token *r = proxy_request_token(pr);
    if (!r)
        return -ESTALE;
    cel_arena_reset(t->values);
    *p = r->caller; /* ctx.user and ctx.session, made with the token's resolution */
    policy_request_stamp(p, pr->rec.received); /* now() is when the request came */
    policy_request_set_browser(p, pr->from_cookie);
    if (policy_request_set_service_parts(p, pr->svc->name, pr->svc->name_len, pr->svc->attrs, t->values) < 0)
        return -ENOMEM;
    policy_request_set_string(p, POLICY_VAR_REQUEST_IP, pr->rec.ip);
    h2o_iovec_t query = pr->query ? h2o_iovec_init(pr->query, strlen(pr->query)) : h2o_iovec_init(NULL, 0);
    if (policy_request_set_http(p, pr->req, h2o_iovec_init(pr->target, pr->path_len), query, t->values) < 0)
        return -ENOMEM;
    return 0;
}

/* Decides PR into *RET. Returns 0, or a negative errno (the request is then
 * denied). */
static int decide(proxy_request *pr, policy_decision *ret)
{
    policy_request p;
    int r = proxy_policy_request(pr, &p);
    return r < 0 ? r : policy_decide(pr->c->policies, &p, pr->t->scratch, ret);
}

/* A browser's page of a denial by POLICY ("" when no rule matched): no
 * policy or rule names (the audit entry of the request id has them), the
 * Policy's own explanation and remediation when it has them. */
static void deny_page(proxy_request *pr, const char *policy)
{
    const json_t *spec = json_object_get(json_object_get(pr->c->policy_docs, policy), "spec");
    pr->page = (proxy_page_texts){
        .message = policy[0] ? "A policy does not let you reach this page."
                             : "No policy lets you reach this page.",
        .explanation = json_string_value(json_object_get(spec, "explanation")),
        .remediation = json_string_value(json_object_get(spec, "remediation")),
    };
}

/* Denies (403) what the policy does not allow, and what it allows for a
 * Service whose access must be audited while the audit log is unavailable
 * (503). */
proxy_step proxy_stage_decide(proxy_request *pr)
{
    access_record *rec = &pr->rec;
    policy_decision d;
    int e = decide(pr, &d);
    if (e < 0) {
        rec->decision = PROXY_DECISION_ERROR;
        return proxy_fail(pr, 403, "forbidden", "the request could not be decided (%s); it is denied", strerror(-e));
    }
    /* the same sizes: copied whole, without snprintf (every request) */
    _Static_assert(sizeof(rec->policy) == sizeof(d.policy) && sizeof(rec->rule) == sizeof(d.rule),
                   "an access record holds a decision's policy and rule names");
    memcpy(rec->policy, d.policy, sizeof(rec->policy));
    memcpy(rec->rule, d.rule, sizeof(rec->rule));
    if (!d.allow) {
        rec->decision = PROXY_DECISION_DENY;
        deny_page(pr, d.policy);
        return proxy_fail(pr, 403, "forbidden", "denied: %s", d.reason);
    }
    rec->decision = PROXY_DECISION_ALLOW;
    if (pr->svc->fail_closed && !audit_event_deliverable()) {
        rec->decision = PROXY_DECISION_ERROR;
        return proxy_fail(pr, 503, "unavailable",
                          "service %s requires its access to be audited and the audit log is unavailable",
                          pr->svc->name);
    }
    return PROXY_NEXT;
}
