"""Issue 13, findings 1, 2, 3 and the policy check of 11, as the attacker's
steps: every non-CRUD API call is decided on the exact object it touches
(verb, kind, name), and a right on one object lends nothing on another.

The tenant is the one a careful admin set up: `minter` may mint the token
of its own credential, `keyuser` may encrypt and decrypt with Key team-a,
`keyadmin` may rotate and disable it, `destroyer` may destroy its versions,
`auditor` may get, list and watch everything. Each test asserts the refusal (status and message), that it is
an audit entry naming the verb, kind and name decided, and that the
legitimate use beside it still works."""
import base64
import datetime
import json
import sqlite3
import time

import pytest
import requests

from conftest import Server, manifest, start_with_proxy
from echo_upstream import EchoUpstream
from test_audit import all_entries, wait_for

DOMAIN = "localhost"


def allow(name, match):
    return manifest("Policy", name, {"rules": [{"name": name, "effect": "allow", "priority": 0,
                                                 "condition": {"match": match}}]})


def api(verb, kind, name=None):
    cond = f'ctx.request.api.verb == "{verb}" && ctx.request.api.kind == "{kind}"'
    return cond + (f' && ctx.request.api.name == "{name}"' if name else "")


class Tenant:
    def __init__(self, server, upstream, http_port):
        self.s = server
        self.up = upstream
        self.http_port = http_port
        self.tokens = {}

    def mint(self, credential):
        r = self.s.request("POST", "/v1/tokens", json={"credential": credential})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def as_(self, user, method, path, **kw):
        return self.s.request(method, path, token=self.tokens[user], **kw)

    def kms(self, user, op, **body):
        return self.as_(user, "POST", f"/v1/kms/{op}", json=body)

    def wait_proxy(self, token, status, timeout=10):
        """Waits until the proxy answers STATUS to GET wiki/ with TOKEN: it has the configuration
        that answer needs."""
        deadline = time.time() + timeout
        while True:
            r = requests.get(f"http://127.0.0.1:{self.http_port}/", headers={"Host": f"wiki.{DOMAIN}",
                             "Authorization": f"Bearer {token}"}, timeout=10, allow_redirects=False)
            if r.status_code == status:
                return
            assert time.time() < deadline, f"the proxy answers {r.status_code}, not {status}: {r.text}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    up = EchoUpstream()
    up_port = up.start()
    s, http_port, _ = start_with_proxy(tmp_path_factory.mktemp("authz-objects") / "data", DOMAIN)
    users = {
        "minter": api("token", "Credential", "minter-cli"),
        "auditor": 'ctx.request.api.verb in ["get", "list", "watch"]',
        "keyuser": 'ctx.request.api.verb in ["encrypt", "decrypt"] && ctx.request.api.kind == "Key" && '
                   'ctx.request.api.name == "team-a"',
        "destroyer": api("destroy", "Key", "team-a"),
        "keyadmin": 'ctx.request.api.verb in ["rotate", "disable"] && ctx.request.api.kind == "Key" && '
                    'ctx.request.api.name == "team-a"',
    }
    docs = [manifest("AttestationPolicy", "enclaves", {"types": ["sandbox"], "allowSandbox": True}),
            manifest("Key", "team-a", {"purpose": "encrypt"}),
            manifest("Key", "team-b", {"purpose": "encrypt"}),
            manifest("Key", "enclave-only", {"purpose": "encrypt", "release": {"attestationPolicy": "enclaves"}}),
            manifest("Key", "enclave-signer", {"purpose": "sign", "release": {"attestationPolicy": "enclaves"}}),
            # the proxy serves wiki to nobody yet
            manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}})]
    for user, rule in users.items():
        docs += [allow(f"{user}-rights", rule),
                 manifest("User", user, {"type": "human", "policies": [f"{user}-rights"]}),
                 manifest("Credential", f"{user}-cli", {"user": user, "type": "authToken"})]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    t = Tenant(s, up, http_port)
    for user in users:
        t.tokens[user] = t.mint(f"{user}-cli")
    yield t
    s.stop()
    up.stop()


def refusal(r, verb, kind, name, user):
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "forbidden"
    target = f"{kind}/{name}" if name else kind
    assert err["message"].startswith(f"{verb} {target} by user {user} is denied: "), err["message"]
    return err["message"]


def audited(s, user, verb, kind, name):
    """Waits for the api.access refusal of VERB on KIND/NAME by USER."""
    want = {"verb": verb, "kind": kind, "name": name}

    def found():
        return [e for e in all_entries(s) if e["action"] == "api.access" and e["outcome"] == "denied"
                and e["actor"]["user"] == user and e["details"].get("api") == want]
    got = wait_for(found)
    assert got[0]["resource"]["kind"] == kind
    return got


def test_minter_mints_only_its_own_token_and_the_proxy_keeps_serving(tenant):
    t, s = tenant, tenant.s
    proxy_token = (s.data_dir / "proxy" / "proxy.token").read_text().strip()
    # the legitimate use: its own credential
    r = t.as_("minter", "POST", "/v1/tokens", json={"credential": "minter-cli"})
    assert r.status_code == 201, r.text
    t.tokens["minter"] = r.json()["token"]
    assert t.as_("minter", "GET", "/v1/whoami").json()["user"] == "minter"
    # the attack: the admin's token, the proxy's identity, the runner's, an unknown credential
    for cred in ("admin-bootstrap", "cloister-proxy", "cloister-runner", "no-such-credential"):
        r = t.as_("minter", "POST", "/v1/tokens", json={"credential": cred})
        msg = refusal(r, "token", "Credential", cred, "minter")
        assert "token" not in r.json()
        if cred in ("admin-bootstrap", "no-such-credential"):
            assert msg.endswith("no rule matched (default deny)")  # an unknown one looks forbidden
    # a workload credential is minted by nobody, admins included: cloisterd writes its token
    r = s.request("POST", "/v1/tokens", json={"credential": "cloister-proxy"})
    assert "written by cloisterd alone" in refusal(r, "token", "Credential", "cloister-proxy", "admin")
    # the admin may still mint the others (an unknown one is a 404 to who may get it)
    assert s.request("POST", "/v1/tokens", json={"credential": "no-such-credential"}).status_code == 404
    for user, verb, kind, name in (("minter", "token", "Credential", "admin-bootstrap"),
                                   ("minter", "token", "Credential", "cloister-proxy"),
                                   ("minter", "token", "Credential", "no-such-credential"),
                                   ("admin", "token", "Credential", "cloister-proxy")):
        audited(s, user, verb, kind, name)
    # the proxy's token was never replaced, and its configuration stream still delivers:
    # an admin's policy change reaches the proxy
    assert (s.data_dir / "proxy" / "proxy.token").read_text().strip() == proxy_token
    assert s.request("GET", "/v1/whoami", token=proxy_token).json()["user"] == "cloister-proxy"
    access = s.request("POST", "/v1/auth/token", token="", json={"token": t.tokens["minter"]}).json()["access_token"]
    t.wait_proxy(access, 403)  # the proxy knows wiki, and nothing lets minter in
    r = s.request("POST", "/v1/apply", json={"items": [
        allow("minter-reads-wiki", 'ctx.user.name == "minter" && ctx.request.http.method == "GET"'),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{t.up.port}"},
                                     "policies": ["minter-reads-wiki"]})]})
    assert r.status_code == 200, r.text
    t.wait_proxy(access, 200)


def test_minter_cannot_rotate_signing_keys_or_read_the_audit_log(tenant):
    t = tenant
    refusal(t.as_("minter", "POST", "/v1/auth/keys/rotate"), "rotate", "SigningKey", "", "minter")
    refusal(t.as_("minter", "GET", "/v1/audit/checkpoint"), "get", "AuditLog", "", "minter")
    refusal(t.as_("minter", "POST", "/v1/attest/challenge", json={}), "create", "AttestationChallenge", "",
            "minter")
    audited(t.s, "minter", "rotate", "SigningKey", "")
    audited(t.s, "minter", "get", "AuditLog", "")
    audited(t.s, "minter", "create", "AttestationChallenge", "")
    # the auditor's get on everything reads the log; the admin rotates
    assert t.as_("auditor", "GET", "/v1/audit/checkpoint").status_code == 200
    assert t.s.request("POST", "/v1/auth/keys/rotate").status_code == 200


def b64(data):
    return base64.b64encode(data).decode()


def renamed(ciphertext, key):
    """CIPHERTEXT (base64) with the key name in its header replaced by KEY."""
    raw = base64.b64decode(ciphertext)
    n = raw[4]
    return b64(raw[:4] + bytes([len(key)]) + key.encode() + raw[5 + n:])


def test_keyuser_uses_team_a_and_nothing_of_team_b(tenant):
    t, s = tenant, tenant.s
    ctx = {"app": "ledger"}
    # team b's data, encrypted by the admin
    r = s.request("POST", "/v1/kms/encrypt", json={"key": "team-b", "plaintext": b64(b"team b payroll"), "context": ctx})
    assert r.status_code == 200, r.text
    ct_b = r.json()["ciphertext"]
    # the legitimate use: team a's key, both ways
    r = t.kms("keyuser", "encrypt", key="team-a", plaintext=b64(b"team a notes"), context=ctx)
    assert r.status_code == 200, r.text
    ct_a = r.json()["ciphertext"]
    r = t.kms("keyuser", "decrypt", ciphertext=ct_a, context=ctx)
    assert r.status_code == 200 and base64.b64decode(r.json()["plaintext"]) == b"team a notes"
    # team b's ciphertext: decided on the key named inside it
    r = t.kms("keyuser", "decrypt", ciphertext=ct_b, context=ctx)
    refusal(r, "decrypt", "Key", "team-b", "keyuser")
    assert "plaintext" not in r.json()
    refusal(t.kms("keyuser", "rewrap", ciphertext=ct_b, context=ctx), "rewrap", "Key", "team-b", "keyuser")
    refusal(t.kms("keyuser", "encrypt", key="team-b", plaintext=b64(b"x")), "encrypt", "Key", "team-b", "keyuser")
    # verbs it was not given, on its own key
    refusal(t.kms("keyuser", "datakey", key="team-a"), "datakey", "Key", "team-a", "keyuser")
    refusal(t.kms("keyuser", "rewrap", ciphertext=ct_a, context=ctx), "rewrap", "Key", "team-a", "keyuser")
    refusal(t.as_("keyuser", "POST", "/v1/kms/keys/team-a/rotate"), "rotate", "Key", "team-a", "keyuser")
    refusal(t.as_("keyuser", "GET", "/v1/kms/keys/team-a"), "get", "Key", "team-a", "keyuser")
    for state, verb in (("disabled", "disable"), ("enabled", "disable"), ("destroyed", "destroy")):
        r = t.as_("keyuser", "POST", "/v1/kms/keys/team-a/versions/1", json={"state": state, "destroyAfterSeconds": 1}
                  if state == "destroyed" else {"state": state})
        refusal(r, verb, "Key", "team-a", "keyuser")
    # a ciphertext naming a key that does not exist looks like a forbidden one (no enumeration);
    # to the admin, who may get Keys, it is a 404
    ghost = renamed(ct_b, "ghost-key")
    msg_ghost = refusal(t.kms("keyuser", "decrypt", ciphertext=ghost, context=ctx), "decrypt", "Key", "ghost-key",
                        "keyuser")
    msg_b = refusal(t.kms("keyuser", "decrypt", ciphertext=ct_b, context=ctx), "decrypt", "Key", "team-b", "keyuser")
    assert msg_ghost.replace("ghost-key", "team-b") == msg_b
    assert s.request("POST", "/v1/kms/decrypt", json={"ciphertext": ghost, "context": ctx}).status_code == 404
    for verb, name in (("decrypt", "team-b"), ("rewrap", "team-b"), ("encrypt", "team-b"), ("datakey", "team-a"),
                       ("rotate", "team-a"), ("get", "team-a"), ("disable", "team-a"), ("destroy", "team-a"),
                       ("decrypt", "ghost-key")):
        audited(s, "keyuser", verb, "Key", name)
    # each refusal is one entry: no kms.* operation entry beside it
    assert not [e for e in all_entries(s) if e["action"].startswith("kms.") and e["actor"]["user"] == "keyuser"
                and e["resource"]["name"] in ("team-b", "ghost-key")]
    # the admin still reads team b's data
    r = s.request("POST", "/v1/kms/decrypt", json={"ciphertext": ct_b, "context": ctx})
    assert r.status_code == 200 and base64.b64decode(r.json()["plaintext"]) == b"team b payroll"


def test_destruction_waits_a_day_and_can_be_cancelled_by_who_may_destroy(tenant):
    t, s = tenant, tenant.s
    r = t.as_("keyadmin", "POST", "/v1/kms/keys/team-a/rotate")  # version 1 is no longer primary
    assert r.status_code == 200, r.text
    path = "/v1/kms/keys/team-a/versions/1"
    # the attack of the issue: destroyAfterSeconds 1, irreversible at once
    for after in (1, 0, 86399):
        r = t.as_("destroyer", "POST", path, json={"state": "destroyed", "destroyAfterSeconds": after})
        assert r.status_code == 400 and "86400" in r.json()["error"]["message"], r.text
    r = t.as_("destroyer", "POST", path, json={"state": "destroyed", "destroyAfterSeconds": 86400})
    assert r.status_code == 200, r.text
    v1 = r.json()["versions"][0]
    assert v1["state"] == "pendingDestruction"
    at = datetime.datetime.fromisoformat(v1["destroyAt"].replace("Z", "+00:00"))
    day = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    assert abs((at - day).total_seconds()) < 120
    # the key's description shows it pending, with its time
    d = s.request("GET", "/v1/kms/keys/team-a").json()
    assert d["versions"][0]["state"] == "pendingDestruction" and d["versions"][0]["destroyAt"] == v1["destroyAt"]
    # cancelling needs destroy: who may only disable may not; the destroyer may
    refusal(t.as_("keyadmin", "POST", path, json={"state": "enabled"}), "destroy", "Key", "team-a", "keyadmin")
    refusal(t.as_("keyuser", "POST", path, json={"state": "enabled"}), "disable", "Key", "team-a", "keyuser")
    r = t.as_("destroyer", "POST", path, json={"state": "enabled"})
    assert r.status_code == 200 and r.json()["versions"][0]["state"] == "enabled", r.text
    # and destroy lends no disable
    refusal(t.as_("destroyer", "POST", path, json={"state": "disabled"}), "disable", "Key", "team-a", "destroyer")
    refusal(t.as_("destroyer", "POST", "/v1/kms/keys/team-b/versions/1", json={"state": "destroyed"}), "destroy",
            "Key", "team-b", "destroyer")
    audited(s, "keyadmin", "destroy", "Key", "team-a")
    audited(s, "destroyer", "disable", "Key", "team-a")
    audited(s, "destroyer", "destroy", "Key", "team-b")
    # the old version decrypts again
    r = s.request("POST", "/v1/kms/encrypt", json={"key": "team-a", "plaintext": b64(b"x")})
    assert r.status_code == 200


def test_a_release_key_gives_nothing_through_the_plain_api_even_to_admins(tenant):
    s = tenant.s
    for op, body in (("encrypt", {"key": "enclave-only", "plaintext": b64(b"x")}),
                     ("datakey", {"key": "enclave-only"}),
                     ("sign", {"key": "enclave-signer", "message": b64(b"x")}),
                     ("verify", {"key": "enclave-signer", "message": b64(b"x"), "signature": b64(b"y"),
                                 "version": 1})):
        r = s.request("POST", f"/v1/kms/{op}", json=body)
        assert "spec.release" in refusal(r, op, "Key", body["key"], "admin")
        assert "plaintext" not in r.json()
        audited(s, "admin", op, "Key", body["key"])
    # a ciphertext made before the key became a release key: no decrypt, no rewrap
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Key", "later-enclave", {"purpose": "encrypt"})]})
    assert r.status_code == 200, r.text
    ct = s.request("POST", "/v1/kms/encrypt", json={"key": "later-enclave", "plaintext": b64(b"x")}).json()["ciphertext"]
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Key", "later-enclave", {"purpose": "encrypt", "release": {"attestationPolicy": "enclaves"}})]})
    assert r.status_code == 200, r.text
    for op in ("decrypt", "rewrap"):
        r = s.request("POST", f"/v1/kms/{op}", json={"ciphertext": ct})
        assert "spec.release" in refusal(r, op, "Key", "later-enclave", "admin")
        audited(s, "admin", op, "Key", "later-enclave")
    # managing it stays possible
    assert s.request("GET", "/v1/kms/keys/enclave-only").status_code == 200


def test_the_auditor_does_not_get_the_proxy_configuration(tenant):
    t, s = tenant, tenant.s
    r = t.as_("auditor", "GET", "/v1/proxy/config")
    assert "proxy's workload identity" in refusal(r, "watch", "ProxyConfig", "", "auditor")
    # nor a caller that policies allow everything
    refusal(s.request("GET", "/v1/proxy/config"), "watch", "ProxyConfig", "", "admin")
    audited(s, "auditor", "watch", "ProxyConfig", "")
    audited(s, "admin", "watch", "ProxyConfig", "")
    # what the auditor was given still works
    assert t.as_("auditor", "GET", "/v1/users").status_code == 200
    assert t.as_("auditor", "GET", "/v1/kms/keys/team-a").status_code == 200
    refusal(t.as_("auditor", "POST", "/v1/kms/keys/team-a/rotate"), "rotate", "Key", "team-a", "auditor")


def test_policy_check_for_another_user_needs_check_and_enumerates_nobody(tenant):
    t, s = tenant, tenant.s
    # for oneself: no right needed
    r = t.as_("minter", "POST", "/v1/policy/check", json={"user": "minter", "api": {"verb": "token",
              "kind": "Credential", "name": "minter-cli"}})
    assert r.status_code == 200 and r.json()["allow"] is True, r.text
    # for anyone else: `check` on that User, decided before the user is looked up
    msgs = {}
    for who in ("admin", "no-such-user"):
        r = t.as_("auditor", "POST", "/v1/policy/check", json={"user": who})
        msgs[who] = refusal(r, "check", "User", who, "auditor")
        audited(s, "auditor", "check", "User", who)
    assert msgs["admin"].replace("admin", "X") == msgs["no-such-user"].replace("no-such-user", "X")
    # a service that does not exist: 404 only to who may get it
    r = t.as_("auditor", "POST", "/v1/policy/check", json={"user": "auditor", "service": "no-such-service"})
    assert r.status_code == 404, r.text
    r = t.as_("minter", "POST", "/v1/policy/check", json={"user": "minter", "service": "no-such-service"})
    assert refusal(r, "get", "Service", "no-such-service", "minter").endswith("no rule matched (default deny)")
    audited(s, "minter", "get", "Service", "no-such-service")
    # nor the rules attached to someone else's credential, through a check for oneself
    r = t.as_("minter", "POST", "/v1/policy/check", json={"user": "minter", "credential": "minter-cli"})
    assert r.status_code == 200, r.text
    for cred in ("keyuser-cli", "no-such-cli"):
        r = t.as_("minter", "POST", "/v1/policy/check", json={"user": "minter", "credential": cred})
        assert refusal(r, "get", "Credential", cred, "minter").endswith("no rule matched (default deny)")
        audited(s, "minter", "get", "Credential", cred)
    r = s.request("POST", "/v1/policy/check", json={"user": "admin", "credential": "keyuser-cli"})
    assert r.status_code == 400 and "not user admin's" in r.json()["error"]["message"], r.text
    # who holds `check` asks about others; the admin does
    r = s.request("POST", "/v1/policy/check", json={"user": "keyuser", "api": {"verb": "decrypt", "kind": "Key",
                                                                                "name": "team-b"}})
    assert r.status_code == 200 and r.json()["allow"] is False
    assert s.request("POST", "/v1/policy/check", json={"user": "no-such-user"}).status_code == 404


def test_an_upgrade_brings_the_workload_policies_to_the_new_vocabulary(tmp_path):
    s = Server(tmp_path / "data").start()
    try:
        new = {name: s.request("GET", f"/v1/policies/{name}").json()["spec"]
               for name in ("cloister-proxy", "cloister-runner")}
        assert new["cloister-proxy"]["rules"][0]["condition"]["match"] == "false"  # grants nothing
        assert 'ctx.request.api.verb == "release"' in new["cloister-runner"]["rules"][0]["condition"]["match"]
        s.stop()
        # the rules an older version wrote, decided by endpoint group
        old = {"cloister-proxy": 'ctx.request.api.kind == "ProxyConfig"',
               "cloister-runner": 'ctx.request.api.kind == "kms" || ctx.request.api.kind == "attest"'}
        db = sqlite3.connect(s.data_dir / "api" / "store.db")
        for name, match in old.items():
            (text,) = db.execute("SELECT doc FROM resources WHERE kind = 'Policy' AND name = ?", (name,)).fetchone()
            doc = json.loads(text)
            doc["spec"]["rules"][0]["condition"]["match"] = match
            db.execute("UPDATE resources SET doc = ? WHERE kind = 'Policy' AND name = ?", (json.dumps(doc), name))
        db.commit()
        db.close()
        s.start()
        for name, spec in new.items():
            assert s.request("GET", f"/v1/policies/{name}").json()["spec"] == spec
        assert "updated a workload identity's documents" in s.read_log()
    finally:
        s.stop()
