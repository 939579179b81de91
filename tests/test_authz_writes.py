"""No right can be borrowed through a write (issue 13, findings 4, 6, 9 and the
host parts of 5 and 10), tried as the attacker would against a tenant the
admin set up: a Service writer naming a Secret they may not read, a Group
manager attaching cloister-admins or deleting admins, a user joining admins
through their own User, a Credential writer minting for someone else, a
Service writer claiming a host outside the cluster domain or another
Service's host, and a user with no rights timing the Secret comparison. Each
refusal is a 403 naming the verb, kind and name it lacks (or the 409/400 no
right permits), and an audit entry; the legitimate use beside it still works."""
import re
import time

import pytest

from conftest import manifest
from test_audit import all_entries

UPSTREAM = "http://127.0.0.1:9"  # the attacker's own echo server; never reached by these writes


def rule(cel, name="r"):
    return {"name": name, "effect": "allow", "priority": 0, "condition": {"match": cel}}


def error_of(r):
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


def tenant_user(s, name, *cels, groups=()):
    """User NAME whose policy NAME-rights allows what the CEL conditions say,
    with credential NAME-cli; returns its token."""
    items = [manifest("User", name, {"groups": list(groups), "policies": [f"{name}-rights"] if cels else []}),
             manifest("Credential", f"{name}-cli", {"user": name})]
    if cels:
        items.insert(0, manifest("Policy", f"{name}-rights",
                                 {"rules": [rule(c, f"{name}-{i}") for i, c in enumerate(cels)]}))
    r = s.request("POST", "/v1/apply", json={"items": items})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/tokens", json={"credential": f"{name}-cli"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def grant(s, name, *cels):
    """Adds rules to NAME's policy (decided on the next call)."""
    pol = s.request("GET", f"/v1/policies/{name}-rights").json()
    n = len(pol["spec"]["rules"])
    rules = pol["spec"]["rules"] + [rule(c, f"{name}-{n + i}") for i, c in enumerate(cels)]
    r = s.request("PUT", f"/v1/policies/{name}-rights", json=manifest("Policy", f"{name}-rights", {"rules": rules}))
    assert r.status_code == 200, r.text


def grant_use(s, name, secret):
    grant(s, name, f'ctx.request.api.verb == "use" && ctx.request.api.kind == "Secret" && '
                   f'ctx.request.api.name == "{secret}"')


def assert_refused(r, status, *needles, user, verb, kind, name, s):
    """R is refused with STATUS and a message holding NEEDLES, and is an audit
    entry of USER naming VERB KIND/NAME (for a 403, the right it lacks)."""
    assert r.status_code == status, r.text
    msg = error_of(r)["message"]
    for n in needles:
        assert n in msg, msg
    if status == 403:
        assert msg.startswith(f"{verb} {kind}/{name} by user {user} is denied: "), msg
    want = {"verb": verb, "kind": kind, "name": name}
    deadline = time.time() + 15
    while True:  # entries reach the audit role asynchronously
        for e in all_entries(s):
            if (e["action"] == "api.access" and e["outcome"] == "denied" and e["actor"]["user"] == user
                    and e["details"].get("api") == want and e["details"]["reason"] == msg):
                return
        assert time.time() < deadline, f"no audit entry for {user}: {want}"
        time.sleep(0.2)


def kms_calls(s):
    m = s.request("GET", "/metrics")
    assert m.status_code == 200, m.text
    return int(re.search(r"^cloister_api_kms_calls_total (\d+)$", m.text, re.M).group(1))


@pytest.fixture(scope="module")
def tenant(shared_server):
    """The attacker's tenant: each user's token."""
    s = shared_server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Secret", "db-password", {"data": {"password": "correct-horse-battery"}}),
        manifest("Secret", "idp-client", {"data": {"secret": "oidc-client-secret"}}),
        manifest("Group", "devs-x", {}),
    ]})
    assert r.status_code == 200, r.text
    return {
        "nobody": tenant_user(s, "nobody"),
        "svcwriter": tenant_user(s, "svcwriter", 'ctx.request.api.kind in ["Service", "IdentityProvider"] && '
                                                 'ctx.request.api.verb in ["create", "update", "get"]'),
        "groupmgr": tenant_user(s, "groupmgr",
                                'ctx.request.api.kind == "Group" && ctx.request.api.verb in ["create", "update", "delete"]',
                                'ctx.request.api.kind == "User" && ctx.request.api.name == "groupmgr" && '
                                'ctx.request.api.verb in ["get", "update"]'),
        "selfed": tenant_user(s, "selfed", 'ctx.request.api.kind == "User" && ctx.request.api.name == "selfed" && '
                                           'ctx.request.api.verb in ["get", "update"]', groups=["devs-x"]),
        "helpdesk": tenant_user(s, "helpdesk", 'ctx.request.api.kind == "Credential" && '
                                               'ctx.request.api.verb in ["create", "update"]',
                                'ctx.request.api.verb == "impersonate" && ctx.request.api.kind == "User" && '
                                'ctx.request.api.name.startsWith("team-")'),
    }


def test_a_user_without_rights_learns_nothing_from_a_secret_write_and_the_kms_is_not_called(shared_server, tenant):
    s = shared_server
    before = kms_calls(s)
    guess = manifest("Secret", "db-password", {"data": {"password": "correct-horse-battery"}})
    tries = [("POST", "/v1/apply", {"items": [guess]}, "update", "db-password"),
             ("POST", "/v1/apply", {"items": [manifest("Secret", "new-secret", {"data": {"k": "v"}})]}, "create",
              "new-secret"),
             ("PUT", "/v1/secrets/db-password", guess, "update", "db-password")]
    answers = [s.request(method, path, token=tenant["nobody"], json=body) for method, path, body, _, _ in tries]
    assert [r.status_code for r in answers] == [403] * len(tries), [r.text for r in answers]
    assert kms_calls(s) == before, "a refused Secret write reached the KMS"
    for r, (_, _, _, verb, name) in zip(answers, tries):
        assert_refused(r, 403, user="nobody", verb=verb, kind="Secret", name=name, s=s)
    assert error_of(answers[0])["document"] == 0
    # the observable is real: the admin's unchanged re-apply compares (decrypts), a new value seals
    r = s.request("POST", "/v1/apply", json={"items": [guess]})
    assert r.status_code == 200 and r.json()["items"][0]["action"] == "unchanged", r.text
    assert kms_calls(s) > before


def test_service_writer_cannot_name_a_secret_without_use(shared_server, tenant):
    s, tok = shared_server, tenant["svcwriter"]
    exfil = manifest("Service", "exfil", {"upstream": {"url": UPSTREAM},
                                          "inject": {"secret": "db-password", "key": "password"}})
    r = s.request("POST", "/v1/services", token=tok, json=exfil)
    assert_refused(r, 403, user="svcwriter", verb="use", kind="Secret", name="db-password", s=s)
    assert s.request("GET", "/v1/services/exfil").status_code == 404
    # the same through apply, and as an update of a Service they own
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [exfil]})
    assert_refused(r, 403, user="svcwriter", verb="use", kind="Secret", name="db-password", s=s)
    plain = manifest("Service", "exfil", {"upstream": {"url": UPSTREAM}})
    assert s.request("POST", "/v1/services", token=tok, json=plain).status_code == 201
    r = s.request("PUT", "/v1/services/exfil", token=tok, json=exfil)
    assert_refused(r, 403, user="svcwriter", verb="use", kind="Secret", name="db-password", s=s)
    grant_use(s, "svcwriter", "db-password")
    r = s.request("PUT", "/v1/services/exfil", token=tok, json=exfil)
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["inject"]["secret"] == "db-password"


def test_identity_provider_client_secret_needs_use(shared_server, tenant):
    s, tok = shared_server, tenant["svcwriter"]
    idp = manifest("IdentityProvider", "evil-idp", {"type": "oidc", "issuer": "https://idp.attacker.example",
                                                    "clientId": "x",
                                                    "clientSecret": {"secret": "idp-client", "key": "secret"}})
    r = s.request("POST", "/v1/identityproviders", token=tok, json=idp)
    assert_refused(r, 403, user="svcwriter", verb="use", kind="Secret", name="idp-client", s=s)
    grant_use(s, "svcwriter", "idp-client")
    # an identity provider logs in any user whose email it vouches for: a
    # provider of one's own is impersonating anyone
    r = s.request("POST", "/v1/identityproviders", token=tok, json=idp)
    assert_refused(r, 403, user="svcwriter", verb="impersonate", kind="User", name="*", s=s)
    grant(s, "svcwriter", 'ctx.request.api.verb == "impersonate" && ctx.request.api.kind == "User" && '
                          'ctx.request.api.name == "*"')
    r = s.request("POST", "/v1/identityproviders", token=tok, json=idp)
    assert r.status_code == 201, r.text
    # without that right again, its scopes may still change; its issuer may not
    pol = s.request("GET", "/v1/policies/svcwriter-rights").json()
    pol["spec"]["rules"] = pol["spec"]["rules"][:-1]
    assert s.request("PUT", "/v1/policies/svcwriter-rights",
                     json=manifest("Policy", "svcwriter-rights", pol["spec"])).status_code == 200
    idp["spec"]["scopes"] = ["openid", "email", "profile"]
    assert s.request("PUT", "/v1/identityproviders/evil-idp", token=tok, json=idp).status_code == 200
    idp["spec"]["issuer"] = "https://elsewhere.attacker.example"
    r = s.request("PUT", "/v1/identityproviders/evil-idp", token=tok, json=idp)
    assert_refused(r, 403, user="svcwriter", verb="impersonate", kind="User", name="*", s=s)


def test_group_manager_cannot_attach_admin_policy_nor_touch_admins(shared_server, tenant):
    s, tok = shared_server, tenant["groupmgr"]
    assert s.request("POST", "/v1/groups", token=tok, json=manifest("Group", "team-g", {})).status_code == 201
    r = s.request("PUT", "/v1/groups/team-g", token=tok,
                  json=manifest("Group", "team-g", {"policies": ["cloister-admins"]}))
    assert_refused(r, 403, user="groupmgr", verb="bind", kind="Policy", name="cloister-admins", s=s)
    r = s.request("POST", "/v1/apply", token=tok,
                  json={"items": [manifest("Group", "team-h", {"policies": ["cloister-admins"]})]})
    assert_refused(r, 403, user="groupmgr", verb="bind", kind="Policy", name="cloister-admins", s=s)
    assert s.request("GET", "/v1/groups/team-h").status_code == 404
    r = s.request("DELETE", "/v1/groups/admins", token=tok)
    assert_refused(r, 403, "protected bootstrap object", user="groupmgr", verb="delete", kind="Group",
                   name="admins", s=s)
    admins = s.request("GET", "/v1/groups/admins").json()
    r = s.request("PUT", "/v1/groups/admins", token=tok, json=manifest("Group", "admins", {"policies": []}))
    assert_refused(r, 403, "protected bootstrap object", user="groupmgr", verb="update", kind="Group",
                   name="admins", s=s)
    assert s.request("GET", "/v1/groups/admins").json()["spec"] == admins["spec"]
    # joining admins through one's own User needs bind on the Group
    me = s.request("GET", "/v1/users/groupmgr", token=tok).json()
    joined = manifest("User", "groupmgr", {**me["spec"], "groups": ["admins"]})
    r = s.request("PUT", "/v1/users/groupmgr", token=tok, json=joined)
    assert_refused(r, 403, user="groupmgr", verb="bind", kind="Group", name="admins", s=s)
    assert s.request("DELETE", "/v1/groups/team-g", token=tok).status_code == 200


def test_own_user_update_keeps_what_is_there_but_adds_nothing(shared_server, tenant):
    s, tok = shared_server, tenant["selfed"]
    me = s.request("GET", "/v1/users/selfed", token=tok).json()
    assert me["spec"]["groups"] == ["devs-x"]
    # re-applying unchanged (it already has a group and a policy) needs only update
    mine = manifest("User", "selfed", me["spec"])
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [mine]})
    assert r.status_code == 200 and r.json()["items"][0]["action"] == "unchanged", r.text
    more = manifest("User", "selfed", {**me["spec"], "policies": me["spec"]["policies"] + ["cloister-admins"]})
    r = s.request("PUT", "/v1/users/selfed", token=tok, json=more)
    assert_refused(r, 403, user="selfed", verb="bind", kind="Policy", name="cloister-admins", s=s)
    # removing is not adding
    fewer = manifest("User", "selfed", {**me["spec"], "email": "selfed@example.com", "groups": []})
    r = s.request("PUT", "/v1/users/selfed", token=tok, json=fewer)
    assert r.status_code == 200, r.text


def test_credential_writer_cannot_impersonate_nor_mint_for_nobody(shared_server, tenant):
    s, tok = shared_server, tenant["helpdesk"]
    r = s.request("POST", "/v1/credentials", token=tok, json=manifest("Credential", "admin-2", {"user": "admin"}))
    assert_refused(r, 403, user="helpdesk", verb="impersonate", kind="User", name="admin", s=s)
    assert s.request("GET", "/v1/credentials/admin-2").status_code == 404
    r = s.request("POST", "/v1/credentials", token=tok,
                  json=manifest("Credential", "ghost-cli", {"user": "team-ghost"}))
    assert_refused(r, 400, "spec.user: user team-ghost does not exist", user="helpdesk", verb="create",
                   kind="Credential", name="ghost-cli", s=s)
    # the bootstrap admin's credential and the workload ones are protected
    r = s.request("PUT", "/v1/credentials/admin-bootstrap", token=tok,
                  json=manifest("Credential", "admin-bootstrap", {"user": "helpdesk"}))
    assert_refused(r, 403, "protected bootstrap object", user="helpdesk", verb="update", kind="Credential",
                   name="admin-bootstrap", s=s)
    # what the helpdesk is for: credentials for its team, and its own
    assert s.request("POST", "/v1/users", json=manifest("User", "team-bob", {})).status_code == 201
    r = s.request("POST", "/v1/credentials", token=tok, json=manifest("Credential", "team-bob-cli", {"user": "team-bob"}))
    assert r.status_code == 201, r.text
    r = s.request("POST", "/v1/credentials", token=tok, json=manifest("Credential", "helpdesk-2", {"user": "helpdesk"}))
    assert r.status_code == 201, r.text
    # a credential with its user in the same apply is fine (the quickstart's shape)
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Credential", "team-carol-cli", {"user": "team-carol"}),
                                                       manifest("User", "team-carol", {})]})
    assert r.status_code == 200, r.text


def test_hosts_outside_the_domain_need_bind_and_belong_to_one_service(shared_server, tenant):
    s, tok = shared_server, tenant["svcwriter"]
    site = manifest("Service", "site", {"upstream": {"url": UPSTREAM}, "hosts": ["site-alias.localhost"]})
    assert s.request("POST", "/v1/services", token=tok, json=site).status_code == 201  # inside the domain: no bind
    hijack = manifest("Service", "site", {"upstream": {"url": UPSTREAM},
                                          "hosts": ["site-alias.localhost", "evil.example.net"]})
    r = s.request("PUT", "/v1/services/site", token=tok, json=hijack)
    assert_refused(r, 403, user="svcwriter", verb="bind", kind="Host", name="evil.example.net", s=s)
    grant(s, "svcwriter", 'ctx.request.api.verb == "bind" && ctx.request.api.kind == "Host"')
    r = s.request("PUT", "/v1/services/site", token=tok, json=hijack)
    assert r.status_code == 200, r.text

    # a second Service claiming any of those hosts, or site's own name, is a conflict naming the owner
    for host in ("evil.example.net", "site-alias.localhost", "site.localhost"):
        squat = manifest("Service", "squat", {"upstream": {"url": UPSTREAM}, "hosts": [host]})
        for method, path in (("POST", "/v1/services"), ("POST", "/v1/apply")):
            r = s.request(method, path, token=tok, json=squat if path == "/v1/services" else {"items": [squat]})
            assert_refused(r, 409, f"host {host} is already claimed by Service site", user="svcwriter", verb="create",
                           kind="Service", name="squat", s=s)
    # a Service whose own name another already claims
    r = s.request("POST", "/v1/services", token=tok,
                  json=manifest("Service", "site-alias", {"upstream": {"url": UPSTREAM}}))
    assert_refused(r, 409, "host site-alias.localhost is already claimed by Service site", user="svcwriter",
                   verb="create", kind="Service", name="site-alias", s=s)
    # two documents of one apply claiming the same new host
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [
        manifest("Service", "twin-a", {"upstream": {"url": UPSTREAM}, "hosts": ["twin.example.net"]}),
        manifest("Service", "twin-b", {"upstream": {"url": UPSTREAM}, "hosts": ["twin.example.net"]})]})
    assert r.status_code == 409 and "twin.example.net is already claimed by Service twin-" in error_of(r)["message"]
    assert s.request("GET", "/v1/services/twin-a").status_code == 404
    # a host moved between Services in one apply is no conflict
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [
        manifest("Service", "site", {"upstream": {"url": UPSTREAM}, "hosts": ["site-alias.localhost"]}),
        manifest("Service", "site-2", {"upstream": {"url": UPSTREAM}, "hosts": ["evil.example.net"]})]})
    assert r.status_code == 200, r.text


def test_workload_identities_are_protected_even_from_the_admin(shared_server):
    s = shared_server
    for kind, plural in (("User", "users"), ("Policy", "policies"), ("Credential", "credentials")):
        for name in ("cloister-proxy", "cloister-runner"):
            r = s.request("DELETE", f"/v1/{plural}/{name}")
            assert_refused(r, 403, "protected bootstrap object", user="admin", verb="delete", kind=kind, name=name,
                           s=s)
    doc = s.request("GET", "/v1/users/cloister-proxy").json()
    r = s.request("POST", "/v1/apply", json={"items": [manifest("User", "cloister-proxy", doc["spec"])]})
    assert_refused(r, 403, "protected bootstrap object", user="admin", verb="update", kind="User",
                   name="cloister-proxy", s=s)
    # the bootstrap admin may still keep its own objects
    admins = s.request("GET", "/v1/groups/admins").json()
    r = s.request("PUT", "/v1/groups/admins", json=manifest("Group", "admins", admins["spec"]))
    assert r.status_code == 200, r.text
