"""Identities bind by uid, tokens never outlive their credential, an unchanged
apply changes nothing, and watch streams are re-decided (issue 13, findings
7 and 8), each written as the attacker's steps against the real cloisterd
and its proxy, with the legitimate use beside it still working.

The rule lives once in src/auth/session.c and is applied by the API and the
proxy alike: a session is good while its user exists with the same uid and
is enabled, and its credential exists with the same uid, is unexpired and
has the same token generation."""
import json
import sqlite3
import time

import pytest
import requests

from conftest import ROOT, audit_entries, manifest, run_cli, start_with_proxy
from echo_upstream import EchoUpstream

DOMAIN = "localhost"
WATCH_RULE = 'ctx.request.api.verb in ["get", "list", "watch"]'


class Cluster:
    def __init__(self, server, http_port):
        self.s = server
        self.http_port = http_port

    def apply(self, *items):
        r = self.s.request("POST", "/v1/apply", json={"items": list(items)})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def mint(self, credential):
        r = self.s.request("POST", "/v1/tokens", json={"credential": credential})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def login(self, clst):
        r = self.s.request("POST", "/v1/auth/token", token="", json={"token": clst})
        assert r.status_code == 200, r.text
        return r.json()

    def refresh(self, refresh_token):
        return self.s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": refresh_token})

    def whoami(self, token):
        return self.s.request("GET", "/v1/whoami", token=token)

    def proxied(self, token):
        return requests.get(f"http://127.0.0.1:{self.http_port}/x", timeout=10, allow_redirects=False,
                            headers={"Host": f"echo.{DOMAIN}", "Authorization": f"Bearer {token}"})

    def wait_proxied(self, token, want, timeout):
        """Polls the proxy until it answers WANT; returns the answer and how long it took."""
        started = time.time()
        r = None
        while time.time() - started < timeout:
            r = self.proxied(token)
            if r.status_code == want:
                return r, time.time() - started
            time.sleep(0.02)
        raise AssertionError(f"proxy: wanted {want}, last {r.status_code if r is not None else None}: "
                             f"{r.text if r is not None else ''}")

    def person(self, name, groups=(), policies=()):
        """User NAME with credential NAME-cli: its clst_ token and a session opened with it."""
        self.apply(manifest("User", name, {"type": "human", "groups": list(groups), "policies": list(policies)}),
                   manifest("Credential", f"{name}-cli", {"user": name, "type": "authToken"}))
        clst = self.mint(f"{name}-cli")
        return clst, self.login(clst)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    up = EchoUpstream()
    up_port = up.start()
    s, http_port, _ = start_with_proxy(tmp_path_factory.mktemp("identity") / "data", DOMAIN)
    c = Cluster(s, http_port)
    c.apply(
        manifest("Group", "staff", {}),
        manifest("Policy", "staff-use-echo", {"rules": [
            {"effect": "allow", "priority": 0, "condition": {"match": '"staff" in ctx.user.groups'}}]}),
        manifest("Service", "echo", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                     "policies": ["staff-use-echo"]}),
        manifest("Policy", "auditing", {"rules": [
            {"effect": "allow", "priority": 0, "condition": {"match": WATCH_RULE}}]}),
    )
    yield c
    s.stop()
    up.stop()


def error_of(r):
    return r.json()["error"]


def open_watch(c, token, kind="groups"):
    """A watch stream read up to the point where it is watching (the current
    state sent): what the server does from here on is a change."""
    r = c.s.request("GET", f"/v1/{kind}?watch=1", token=token, stream=True)
    assert r.status_code == 200, r.text
    lines = r.iter_lines(decode_unicode=True)
    for line in lines:
        if line == ": watching":
            return r, lines
    raise AssertionError("the stream ended before it was watching")


def read_until_error(lines, deadline):
    """The ERROR event's data; fails when the stream ends without one or
    DEADLINE (time.time()) passes first."""
    event = None
    for line in lines:
        assert time.time() < deadline, "the stream was not ended in time"
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "ERROR":
            return json.loads(line[6:])
    raise AssertionError("the stream ended without an ERROR event")


def test_applying_the_quickstart_twice_keeps_every_token(cluster, tmp_path):
    c = cluster
    config = tmp_path / "config"
    p = run_cli(c.s, "login", "--token", c.s.token, config_home=config)
    assert p.returncode == 0, p.stderr
    p = run_cli(c.s, "apply", "-f", str(ROOT / "examples" / "quickstart.yaml"), config_home=config)
    assert p.returncode == 0, p.stderr
    clst = c.mint("alice-cli")
    session = c.login(clst)
    # as docs/getting-started.md does: the same manifest again
    p = run_cli(c.s, "apply", "-f", str(ROOT / "examples" / "quickstart.yaml"), config_home=config)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["group/devs unchanged", "user/alice unchanged", "user/bob unchanged",
                                     "credential/alice-cli unchanged", "service/wiki unchanged",
                                     "policy/devs-read unchanged"]
    # alice's CLI credential, her session and the admin's all still work
    assert c.whoami(clst).json()["user"] == "alice"
    assert c.whoami(session["access_token"]).json()["user"] == "alice"
    assert c.refresh(session["refresh_token"]).status_code == 200
    assert c.login(clst)["session"]
    assert run_cli(c.s, "get", "users", config_home=config).returncode == 0


@pytest.mark.parametrize("via", ["credential", "session"])
def test_a_deleted_user_with_a_deleted_credential_keeps_no_watch_stream(cluster, via):
    c = cluster
    name = f"watcher-{via}"
    clst, session = c.person(name, policies=["auditing"])
    token = clst if via == "credential" else session["access_token"]
    r, lines = open_watch(c, token)
    with r:
        assert c.s.request("DELETE", f"/v1/credentials/{name}-cli").status_code == 200
        assert c.s.request("DELETE", f"/v1/users/{name}").status_code == 200
        err = read_until_error(lines, time.time() + 6)
    assert err["error"]["code"] == "unauthenticated", err
    # the stream is gone and cannot be opened again
    assert c.s.request("GET", "/v1/groups?watch=1", token=token).status_code == 401
    # the legitimate watcher beside it keeps watching
    r, _ = open_watch(c, c.s.token)
    r.close()


def test_a_policy_change_removing_watch_rights_ends_the_stream(cluster):
    c = cluster
    c.apply(manifest("Policy", "watch-then-not", {"rules": [
        {"effect": "allow", "priority": 0, "condition": {"match": WATCH_RULE}}]}))
    clst, _ = c.person("fickle", policies=["watch-then-not"])
    r, lines = open_watch(c, clst)
    with r:
        c.apply(manifest("Policy", "watch-then-not", {"rules": [
            {"effect": "allow", "priority": 0, "condition": {"match": 'ctx.request.api.verb in ["get", "list"]'}}]}))
        err = read_until_error(lines, time.time() + 6)
    assert err["error"]["code"] == "forbidden", err
    assert "watch Group" in err["error"]["message"]
    # what the policy still grants works
    assert c.s.request("GET", "/v1/groups", token=clst).status_code == 200
    # and the refusal that ended the stream is an audit entry naming the decision
    deadline = time.time() + 15
    while not any(e["outcome"] == "denied" and e["actor"].get("user") == "fickle" and
                  e["details"].get("api") == {"verb": "watch", "kind": "Group", "name": ""}
                  for e in audit_entries(c.s, "api.access")):
        assert time.time() < deadline, "no audit entry for the ended watch"
        time.sleep(0.2)  # the audit role takes entries asynchronously


def test_deleting_a_user_ends_its_credentials_and_sessions_and_a_namesake_inherits_nothing(cluster):
    c = cluster
    clst, session = c.person("bob", groups=["staff"])
    assert c.whoami(session["access_token"]).status_code == 200
    c.wait_proxied(session["access_token"], 200, timeout=5)

    assert c.s.request("DELETE", "/v1/users/bob").status_code == 200
    assert c.s.request("GET", "/v1/credentials/bob-cli").status_code == 404
    assert c.s.request("GET", f"/v1/sessions/{session['session']}").status_code == 404
    assert c.whoami(session["access_token"]).status_code == 401
    assert c.whoami(clst).status_code == 401
    r = c.refresh(session["refresh_token"])
    assert r.status_code == 401 and error_of(r)["code"] == "unauthenticated"
    c.wait_proxied(session["access_token"], 401, timeout=1)

    # a new bob, even an admin, is another identity: the old token revives nothing
    c.apply(manifest("User", "bob", {"type": "human", "groups": ["admins"]}))
    r = c.whoami(clst)
    assert r.status_code == 401 and error_of(r)["code"] == "unauthenticated"
    assert c.whoami(session["access_token"]).status_code == 401
    assert c.s.request("POST", "/v1/auth/token", token="", json={"token": clst}).status_code == 401
    # nor does a new credential of the old name
    c.apply(manifest("Credential", "bob-cli", {"user": "bob", "type": "authToken"}))
    assert c.whoami(clst).status_code == 401
    # the new bob's own token works
    assert c.whoami(c.mint("bob-cli")).json()["user"] == "bob"


def test_a_credential_only_for_a_user_that_exists(cluster):
    c = cluster
    r = c.s.request("POST", "/v1/credentials",
                    json=manifest("Credential", "ghost-cli", {"user": "ghost", "type": "authToken"}))
    assert r.status_code in (400, 404, 422), r.text
    assert "ghost" in error_of(r)["message"] or "User" in error_of(r)["message"]
    assert c.s.request("GET", "/v1/credentials/ghost-cli").status_code == 404


def test_deleting_a_credential_deletes_its_sessions(cluster):
    c = cluster
    clst, session = c.person("erin", groups=["staff"])
    assert c.s.request("DELETE", "/v1/credentials/erin-cli").status_code == 200
    assert c.s.request("GET", f"/v1/sessions/{session['session']}").status_code == 404
    assert c.whoami(session["access_token"]).status_code == 401
    assert c.whoami(clst).status_code == 401
    assert c.refresh(session["refresh_token"]).status_code == 401
    # the user is still there and may get a new credential
    assert c.s.request("GET", "/v1/users/erin").status_code == 200


def test_a_credential_pointed_at_another_user_does_not_carry_its_token_over(cluster):
    c = cluster
    clst, session = c.person("grace", groups=["staff"])
    c.apply(manifest("User", "heidi", {"type": "human", "groups": ["admins"]}))
    # the holder of grace's token must not become heidi (an admin)
    c.apply(manifest("Credential", "grace-cli", {"user": "heidi", "type": "authToken"}))
    assert c.whoami(clst).status_code == 401
    assert c.whoami(session["access_token"]).status_code == 401
    assert c.s.request("POST", "/v1/auth/token", token="", json={"token": clst}).status_code == 401
    # a token minted now is heidi's
    assert c.whoami(c.mint("grace-cli")).json()["user"] == "heidi"


def test_reminting_a_token_ends_the_sessions_it_opened(cluster):
    c = cluster
    clst, session = c.person("carol", groups=["staff"])
    c.wait_proxied(session["access_token"], 200, timeout=5)
    assert c.whoami(session["access_token"]).status_code == 200

    new = c.mint("carol-cli")
    r = c.whoami(session["access_token"])
    assert r.status_code == 401 and "minted again" in error_of(r)["message"]
    _, took = c.wait_proxied(session["access_token"], 401, timeout=1)
    assert took <= 1.0
    r = c.refresh(session["refresh_token"])
    assert r.status_code == 401 and "minted again" in error_of(r)["message"]
    assert c.whoami(clst).status_code == 401  # the old credential token itself
    # the new token and its sessions work, in the API and through the proxy
    fresh = c.login(new)
    assert c.whoami(fresh["access_token"]).json()["user"] == "carol"
    c.wait_proxied(fresh["access_token"], 200, timeout=5)


def test_setting_expires_at_in_the_past_ends_the_credential_and_its_sessions(cluster):
    c = cluster
    clst, session = c.person("dave", groups=["staff"])
    c.wait_proxied(session["access_token"], 200, timeout=5)
    cred = c.s.request("GET", "/v1/credentials/dave-cli").json()
    cred["spec"]["expiresAt"] = "2020-01-01T00:00:00Z"
    cred.pop("status", None)
    r = c.s.request("PUT", "/v1/credentials/dave-cli", json=cred)
    assert r.status_code == 200, r.text

    r = c.whoami(clst)
    assert r.status_code == 401 and "dave-cli has expired" in error_of(r)["message"]
    assert c.whoami(session["access_token"]).status_code == 401
    _, took = c.wait_proxied(session["access_token"], 401, timeout=1)
    assert took <= 1.0
    r = c.refresh(session["refresh_token"])
    assert r.status_code == 401 and "expired" in error_of(r)["message"]
    assert c.s.request("POST", "/v1/auth/token", token="", json={"token": clst}).status_code == 401
    # the admin's credential beside it is untouched
    assert c.whoami(c.s.token).status_code == 200


def test_a_disabled_user_gets_the_same_answer_from_the_proxy_and_the_api(cluster):
    c = cluster
    clst, session = c.person("frank", groups=["staff"])
    c.wait_proxied(session["access_token"], 200, timeout=5)
    c.apply(manifest("User", "frank", {"type": "human", "groups": ["staff"], "disabled": True}))
    for r in (c.whoami(clst), c.whoami(session["access_token"]),
              c.wait_proxied(session["access_token"], 403, timeout=1)[0]):
        assert r.status_code == 403, r.text
        assert error_of(r) == {"code": "forbidden", "message": "user frank is disabled"}
    # enabled again, the same session works again: disabling is not deleting
    c.apply(manifest("User", "frank", {"type": "human", "groups": ["staff"]}))
    c.wait_proxied(session["access_token"], 200, timeout=1)


def test_a_bootstrap_credential_from_before_uid_binding_keeps_working(server):
    """A data dir whose credentials do not record their user's uid yet: the
    bootstrap binds its own on start; the admin re-applies the others."""
    s = server
    assert s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "old", {"type": "human"}),
        manifest("Credential", "old-cli", {"user": "old", "type": "authToken"})]}).status_code == 200
    old = s.request("POST", "/v1/tokens", json={"credential": "old-cli"}).json()["token"]
    s.stop()
    db = sqlite3.connect(str(s.data_dir / "api" / "store.db"))
    with db:
        for name, doc in list(db.execute("SELECT name, doc FROM resources WHERE kind = 'Credential'")):
            d = json.loads(doc)
            d["status"].pop("userUid")
            db.execute("UPDATE resources SET doc = ? WHERE kind = 'Credential' AND name = ?", (json.dumps(d), name))
    db.close()
    s.start()
    assert s.request("GET", "/v1/whoami").json()["user"] == "admin"
    r = s.request("GET", "/v1/whoami", token=old)
    assert r.status_code == 401 and "another user" in r.json()["error"]["message"]
    assert s.request("POST", "/v1/apply", json={"items": [
        manifest("Credential", "old-cli", {"user": "old", "type": "authToken"})]}).json()["items"][0]["action"] == \
        "configured"
    assert s.request("GET", "/v1/whoami", token=old).json()["user"] == "old"
