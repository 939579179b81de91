"""The policy engine through the real server: CEL validated at apply time
(nothing applied, the field and line:column named), the API authorized by
policy with changes taking effect on the next call, the default deny, and
the what-if endpoint and CLI."""
import subprocess

import pytest

from conftest import CLOISTER, manifest, run_cli, sanitizer_env


def error_of(r):
    return r.json()["error"]


def rule(match, effect="allow", priority=0, name=None):
    r = {"effect": effect, "priority": priority, "condition": {"match": match}}
    if name:
        r["name"] = name
    return r


@pytest.mark.parametrize("match, position", [
    ("ctx.user.name == ", "1:"),
    ("ctx.user.name == 'a' &&\n  ctx.usr.groups.size() > 0", "2:3"),
    ("frobnicate(ctx.user.name)", "1:"),
])
def test_bad_cel_is_refused_everywhere_and_nothing_is_applied(shared_server, match, position):
    s = shared_server
    bad = manifest("Policy", "bad-cel", {"rules": [rule("true"), {"effect": "deny", "condition": {"all": [{"match": match}]}}]})
    field = "spec.rules[1].condition.all[0].match"
    for method, path, body in (("POST", "/v1/policies", bad), ("PUT", "/v1/policies/bad-cel", bad),
                               ("POST", "/v1/apply", {"items": [manifest("Group", "applied-with-bad", {}), bad]})):
        r = s.request(method, path, json=body)
        assert r.status_code == 400, (method, path, r.text)
        err = error_of(r)
        assert err["code"] == "invalid"
        assert err["field"] == field, err
        assert f"{field}: {position}" in err["message"], err
    assert s.request("GET", "/v1/policies/bad-cel").status_code == 404
    assert s.request("GET", "/v1/groups/applied-with-bad").status_code == 404


def test_bad_inline_policy_of_a_service_is_refused(shared_server):
    svc = manifest("Service", "bad-inline", {"upstream": {"url": "http://127.0.0.1:9"},
                                              "inlinePolicies": [{"name": "x", "rules": [rule("ctx.request.http.pth == '/'")]}]})
    r = shared_server.request("POST", "/v1/services", json=svc)
    assert r.status_code == 400
    err = error_of(r)
    assert err["field"] == "spec.inlinePolicies[0].rules[0].condition.match"
    assert "ctx.request.http.pth" in err["message"]
    assert shared_server.request("GET", "/v1/services/bad-inline").status_code == 404


def test_api_calls_are_decided_by_policy_and_changes_apply_at_once(shared_server):
    s = shared_server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", "no-secrets", {"rules": [
            rule('ctx.request.api.kind == "Secret"', effect="deny", priority=-1, name="secrets-are-off-limits")]}),
        manifest("Secret", "probe-secret", {"data": {"k": "v"}}),
    ]})
    assert r.status_code == 200, r.text
    assert s.request("GET", "/v1/secrets/probe-secret").status_code == 200

    admins = s.request("GET", "/v1/groups/admins").json()
    attached = manifest("Group", "admins", {**admins["spec"], "policies": ["cloister-admins", "no-secrets"]})
    assert s.request("PUT", "/v1/groups/admins", json=attached).status_code == 200
    try:
        for method, path in (("GET", "/v1/secrets/probe-secret"), ("GET", "/v1/secrets"),
                             ("DELETE", "/v1/secrets/probe-secret")):
            r = s.request(method, path)
            assert r.status_code == 403, (method, path, r.text)
            err = error_of(r)
            assert err["code"] == "forbidden"
            assert "secrets-are-off-limits" in err["message"] and "no-secrets" in err["message"], err
        # apply is decided per document
        r = s.request("POST", "/v1/apply", json={"items": [manifest("Group", "fine", {}),
                                                           manifest("Secret", "other", {"data": {"k": "v"}})]})
        assert r.status_code == 403 and error_of(r)["document"] == 1, r.text
        assert s.request("GET", "/v1/groups/fine").status_code == 404
        # everything else still allowed by cloister-admins
        assert s.request("GET", "/v1/services").status_code == 200
    finally:
        restored = manifest("Group", "admins", {**admins["spec"], "policies": ["cloister-admins"]})
        assert s.request("PUT", "/v1/groups/admins", json=restored).status_code == 200
    assert s.request("GET", "/v1/secrets/probe-secret").status_code == 200
    assert s.request("DELETE", "/v1/secrets/probe-secret").status_code == 200


def test_a_user_outside_every_policy_is_denied_by_default(server):
    admin = server.request("GET", "/v1/users/admin").json()
    r = server.request("PUT", "/v1/users/admin", json=manifest("User", "admin", {**admin["spec"], "groups": []}))
    assert r.status_code == 200, r.text
    r = server.request("GET", "/v1/services")
    assert r.status_code == 403
    assert "no rule matched (default deny)" in error_of(r)["message"]
    # a check for oneself needs no right; for anyone else it needs `check` on that User
    assert server.request("POST", "/v1/policy/check", json={"user": "admin"}).status_code == 200
    assert server.request("POST", "/v1/policy/check", json={"user": "cloister-proxy"}).status_code == 403
    # whoami only shows callers themselves
    who = server.request("GET", "/v1/whoami")
    assert who.status_code == 200 and who.json()["groups"] == []
    assert "API request refused" in server.read_log()


@pytest.fixture(scope="module")
def wiki(shared_server):
    s = shared_server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", "devs-read", {"rules": [
            rule('"devs" in ctx.user.groups && ctx.request.http.method in ["GET", "HEAD"]', name="devs-may-read"),
            rule('ctx.request.http.path.startsWith("/admin")', effect="deny", priority=-1, name="no-admin"),
        ]}),
        manifest("Policy", "office", {"rules": [
            rule('cidr("10.0.0.0/8").containsIP(ctx.request.ip) && ctx.request.http.headers["x-team"] == "blue"',
                 name="office-blue"),
        ]}),
        manifest("Group", "devs", {}),
        manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
        manifest("User", "bob", {"type": "human", "email": "bob@example.com", "policies": ["office"]}),
        manifest("Service", "wiki", {"upstream": {"url": "http://127.0.0.1:9"}, "policies": ["devs-read"],
                                     "inlinePolicies": [{"name": "writers", "rules": [
                                         rule('ctx.user.email.endsWith("@example.com") && ctx.request.http.method == "POST"',
                                              priority=1, name="example-may-post")]}]}),
    ]})
    assert r.status_code == 200, r.text
    return s


@pytest.mark.parametrize("body, allow, policy, rule_name", [
    ({"user": "alice", "service": "wiki", "method": "GET", "path": "/docs"}, True, "devs-read", "devs-may-read"),
    ({"user": "alice", "service": "wiki", "method": "GET", "path": "/admin/x"}, False, "devs-read", "no-admin"),
    ({"user": "alice", "service": "wiki", "method": "POST", "path": "/docs"}, True, "wiki/writers", "example-may-post"),
    ({"user": "alice", "service": "wiki", "method": "DELETE", "path": "/docs"}, False, "", ""),
    # no client address: cidr(...).containsIP("") is an error, and errors deny
    ({"user": "bob", "service": "wiki", "method": "GET", "path": "/docs"}, False, "office", "office-blue"),
    ({"user": "bob", "service": "wiki", "method": "GET", "path": "/docs", "ip": "10.1.2.3",
      "headers": {"x-team": "blue"}}, True, "office", "office-blue"),
    ({"user": "bob", "service": "wiki", "method": "GET", "path": "/docs", "ip": "192.168.1.1",
      "headers": {"x-team": "blue"}}, False, "", ""),
])
def test_what_if_endpoint(wiki, body, allow, policy, rule_name):
    r = wiki.request("POST", "/v1/policy/check", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["allow"] is allow and d["decision"] == ("allow" if allow else "deny"), d
    assert d["policy"] == policy and d["rule"] == rule_name, d
    if not policy:
        assert d["reason"] == "no rule matched (default deny)"


def test_what_if_errors(wiki):
    assert wiki.request("POST", "/v1/policy/check", json={"user": "nobody"}).status_code == 404
    assert wiki.request("POST", "/v1/policy/check", json={"user": "alice", "service": "nope"}).status_code == 404
    assert wiki.request("POST", "/v1/policy/check", json={"service": "wiki"}).status_code == 400
    assert wiki.request("POST", "/v1/policy/check", json={"user": 1}).status_code == 400
    assert wiki.request("GET", "/v1/policy/check").status_code == 405
    assert wiki.request("POST", "/v1/policy/other", json={}).status_code == 404


def test_what_if_cli(wiki, tmp_path):
    config = tmp_path / "config"
    p = run_cli(wiki, "login", "--token", wiki.token, config_home=config)
    assert p.returncode == 0, p.stderr
    p = run_cli(wiki, "policy", "check", "--user", "alice", "--service", "wiki", "--method", "GET", "--path", "/docs",
                config_home=config)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("allow (policy devs-read, rule devs-may-read)"), p.stdout
    p = run_cli(wiki, "policy", "check", "--user", "bob", "--service", "wiki", "--method", "GET", "--path", "/",
                "--header", "X-Team=blue", "--ip", "10.0.0.1", config_home=config)
    assert p.returncode == 0 and "office-blue" in p.stdout, p.stdout + p.stderr
    p = run_cli(wiki, "policy", "check", "--user", "bob", "--service", "wiki", "--method", "GET", "--path", "/",
                "-o", "json", config_home=config)
    assert p.returncode == 1 and '"decision": "deny"' in p.stdout, p.stdout
    p = run_cli(wiki, "policy", "check", "--service", "wiki", config_home=config)
    assert p.returncode == 2
    for out in (p.stdout, p.stderr):
        assert "Sanitizer" not in out and "runtime error" not in out


def test_a_non_admin_user_is_decided_by_its_groups_and_credential_policies(shared_server):
    s = shared_server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", "readers-read", {"rules": [
            rule('ctx.request.api.verb in ["get", "list"] && ctx.request.api.kind in ["Service", "Policy"]',
                 name="read-services-and-policies")]}),
        manifest("Policy", "reader-cli-limits", {"rules": [
            rule('ctx.request.api.kind == "Policy" && ctx.request.api.name == "cloister-admins"', effect="deny",
                 priority=-1, name="not-the-admin-policy")]}),
        manifest("Group", "readers", {"policies": ["readers-read"]}),
        manifest("User", "reader", {"groups": ["readers"]}),
        manifest("Credential", "reader-cli", {"user": "reader", "policies": ["reader-cli-limits"]}),
    ]})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/tokens", json={"credential": "reader-cli"})
    if r.status_code == 404 and "no such endpoint" in r.text:
        pytest.skip("token create (POST /v1/tokens) is not served by this build")
    assert r.status_code == 201, r.text
    tok = r.json()["token"]
    assert s.request("GET", "/v1/services", token=tok).status_code == 200
    assert s.request("GET", "/v1/policies/readers-read", token=tok).status_code == 200
    r = s.request("GET", "/v1/policies/cloister-admins", token=tok)
    assert r.status_code == 403 and "not-the-admin-policy" in error_of(r)["message"], r.text
    for method, path, body in (("GET", "/v1/users", None), ("GET", "/v1/secrets", None),
                               ("POST", "/v1/groups", manifest("Group", "by-reader", {}))):
        r = s.request(method, path, token=tok, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert "no rule matched (default deny)" in error_of(r)["message"]
    assert s.request("GET", "/v1/groups/by-reader").status_code == 404
    # granting more through the group takes effect on the next call
    r = s.request("PUT", "/v1/groups/readers", json=manifest("Group", "readers", {"policies": ["readers-read", "cloister-admins"]}))
    assert r.status_code == 200
    assert s.request("GET", "/v1/users", token=tok).status_code == 403  # cloister-admins wants group admins
    r = s.request("PUT", "/v1/users/reader", json=manifest("User", "reader", {"groups": ["readers", "admins"]}))
    assert r.status_code == 200
    assert s.request("GET", "/v1/users", token=tok).status_code == 200
    assert s.request("GET", "/v1/policies/cloister-admins", token=tok).status_code == 403  # the credential's deny still wins


def test_cli_apply_checks_cel_locally_with_file_line_and_position(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: cloister.dev/v1\nkind: Policy\nmetadata: {name: bad}\nspec:\n  rules:\n"
                 "  - effect: allow\n    condition:\n      match: 'ctx.user.nmae == \"x\"'\n")
    env = sanitizer_env()
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["CLOISTER_SERVER"] = "https://127.0.0.1:9"  # never reached: refused before sending
    p = subprocess.run([str(CLOISTER), "apply", "-f", str(f)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1
    assert f"{f}:8: document 1 (Policy/bad): spec.rules[0].condition.match: 1:1: undeclared reference to 'ctx.user.nmae'" \
        in p.stderr, p.stderr
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr
