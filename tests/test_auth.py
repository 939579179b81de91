"""The auth server against the running cloisterd: token exchange, refresh
rotation and reuse detection, logout, sessions, credential tokens, signing
keys and JWKS, and every refused-token case. Access tokens are checked with
PyJWT (an independent implementation) against the server's JWKS; forged
tokens are signed with the server's own key read from its data dir, so each
refusal is about the one property under test."""
import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import manifest, run_cli, signing_keys

AUD = "cloister"


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def login(server, token=None):
    r = server.request("POST", "/v1/auth/token", token="", json={"token": token or server.token})
    assert r.status_code == 200, r.text
    return r.json()


def jwks(server):
    r = server.request("GET", "/.well-known/jwks.json", token="")
    assert r.status_code == 200, r.text
    return r.json()


def issuer(server):
    return "https://api.localhost"


def signing_key(server):
    """The server's current private signing key (a PyJWT key) and its kid."""
    keys = signing_keys(server)
    current = [k for k in keys if k["retired"] == 0][0]["jwk"]
    return jwt.PyJWK(current).key, current["kid"]


def forge(server, claims=None, header=None, drop=()):
    """A token signed with the server's key whose claims differ from a good one."""
    key, kid = signing_key(server)
    sid = login(server)["session"]
    now = int(time.time())
    body = {"iss": issuer(server), "sub": "admin", "aud": AUD, "exp": now + 600, "iat": now, "nbf": now,
            "jti": "forged", "sid": sid, "groups": ["admins"]}
    body.update(claims or {})
    for k in drop:
        body.pop(k)
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid, **(header or {})})


def whoami(server, token):
    return server.request("GET", "/v1/whoami", token=token)


def test_exchange_issues_es256_access_token_that_pyjwt_verifies(shared_server):
    s = shared_server
    t = login(s)
    assert set(t) >= {"access_token", "refresh_token", "expires_in", "session"}
    assert t["expires_in"] == 900 and t["refresh_token"].startswith("clsr_")
    header = jwt.get_unverified_header(t["access_token"])
    assert header["alg"] == "ES256"
    keys = {k["kid"]: k for k in jwks(s)["keys"]}
    assert header["kid"] in keys and all("d" not in k for k in keys.values())
    key = jwt.PyJWK(keys[header["kid"]]).key
    claims = jwt.decode(t["access_token"], key, algorithms=["ES256"], audience=AUD, issuer=issuer(s))
    assert claims["sub"] == "admin" and claims["sid"] == t["session"] and claims["groups"] == ["admins"]
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"] and claims["jti"]
    r = whoami(s, t["access_token"])
    assert r.status_code == 200 and r.json()["user"] == "admin"
    # the resource API accepts it too
    assert s.request("GET", "/v1/users", token=t["access_token"]).status_code == 200


def test_refresh_rotates_and_reuse_revokes_the_session(shared_server):
    s = shared_server
    t1 = login(s)
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": t1["refresh_token"]})
    assert r.status_code == 200, r.text
    t2 = r.json()
    assert t2["session"] == t1["session"] and t2["refresh_token"] != t1["refresh_token"]
    assert whoami(s, t2["access_token"]).status_code == 200
    # the old refresh token again: the whole session goes
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": t1["refresh_token"]})
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert whoami(s, t2["access_token"]).status_code == 401
    assert whoami(s, t1["access_token"]).status_code == 401
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": t2["refresh_token"]})
    assert r.status_code == 401
    assert s.request("GET", f"/v1/sessions/{t1['session']}").status_code == 404


def test_concurrent_reuse_of_one_refresh_token_revokes(shared_server):
    s = shared_server
    t = login(s)
    body = {"refresh_token": t["refresh_token"]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: s.request("POST", "/v1/auth/refresh", token="", json=body).status_code,
                                range(4)))
    assert codes.count(200) <= 1 and set(codes) <= {200, 401}, codes
    assert s.request("GET", f"/v1/sessions/{t['session']}").status_code == 404


def test_a_session_ends_with_its_credential(shared_server):
    s = shared_server
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "hank", {}), manifest("Credential", "hank-cli", {"user": "hank", "expiresAt": exp})]})
    assert r.status_code == 200, r.text
    tok = s.request("POST", "/v1/tokens", json={"credential": "hank-cli"}).json()["token"]
    t = login(s, tok)
    assert s.request("GET", f"/v1/sessions/{t['session']}").json()["spec"]["expiresAt"] == exp
    assert whoami(s, t["access_token"]).status_code == 200
    time.sleep(4)
    assert whoami(s, t["access_token"]).status_code == 401
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 401


def test_refresh_refuses_garbage(shared_server):
    s = shared_server
    t = login(s)
    bad = t["refresh_token"][:-1] + ("A" if t["refresh_token"][-1] != "A" else "B")
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": bad})
    assert r.status_code == 401
    # a wrong guess does not revoke the session
    assert whoami(s, t["access_token"]).status_code == 200
    for body in ({"refresh_token": "clsr_x"}, {"refresh_token": 5}, {}):
        assert s.request("POST", "/v1/auth/refresh", token="", json=body).status_code in (400, 401)


def test_logout_with_access_or_refresh_token(shared_server):
    s = shared_server
    t = login(s)
    r = s.request("POST", "/v1/auth/logout", token=t["access_token"])
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert whoami(s, t["access_token"]).status_code == 401
    t = login(s)
    r = s.request("POST", "/v1/auth/logout", token="", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 200
    assert whoami(s, t["access_token"]).status_code == 401
    assert s.request("POST", "/v1/auth/logout", token="").status_code == 401


def test_sessions_list_get_delete(shared_server):
    s = shared_server
    t = login(s)
    items = s.request("GET", "/v1/sessions").json()["items"]
    assert t["session"] in [i["metadata"]["name"] for i in items]
    r = s.request("GET", f"/v1/sessions/{t['session']}")
    assert r.status_code == 200
    doc = r.json()
    assert doc["kind"] == "Session" and doc["spec"]["user"] == "admin" and doc["spec"]["authMethod"] == "token"
    assert "status" not in doc and "Digest" not in r.text
    assert s.request("DELETE", f"/v1/sessions/{t['session']}").status_code == 200
    assert whoami(s, t["access_token"]).status_code == 401
    assert s.request("DELETE", f"/v1/sessions/{t['session']}").status_code == 404


def test_sessions_cannot_be_written_through_the_resource_api(shared_server):
    s = shared_server
    doc = manifest("Session", "s0123", {"user": "admin", "authMethod": "token", "expiresAt": "2030-01-01T00:00:00Z"})
    r = s.request("POST", "/v1/apply", json={"items": [doc]})
    assert r.status_code == 400 and "server only" in r.text
    assert s.request("POST", "/v1/sessions", json=doc).status_code == 405
    assert s.request("PUT", "/v1/sessions/s0123", json=doc).status_code == 405


def make_user_with_token(s, user, groups=()):
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", user, {"groups": list(groups)}),
        manifest("Credential", f"{user}-cli", {"user": user})]})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/tokens", json={"credential": f"{user}-cli"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_token_create_shows_the_token_once_and_replaces_the_old_one(shared_server):
    s = shared_server
    tok = make_user_with_token(s, "carol")
    assert tok.startswith("clst_") and len(tok) == 48
    assert whoami(s, tok).json()["user"] == "carol"
    cred = s.request("GET", "/v1/credentials/carol-cli").text
    assert tok not in cred and hashlib.sha256(tok.encode()).hexdigest() not in cred
    tok2 = s.request("POST", "/v1/tokens", json={"credential": "carol-cli"}).json()["token"]
    assert whoami(s, tok).status_code == 401
    assert whoami(s, tok2).status_code == 200
    assert s.request("POST", "/v1/tokens", json={"credential": "nobody"}).status_code == 404


def test_deleting_a_credential_revokes_its_sessions(shared_server):
    s = shared_server
    tok = make_user_with_token(s, "dave")
    t = login(s, tok)
    assert whoami(s, t["access_token"]).json()["user"] == "dave"
    assert s.request("DELETE", "/v1/credentials/dave-cli").status_code == 200
    assert whoami(s, t["access_token"]).status_code == 401
    r = s.request("POST", "/v1/auth/refresh", token="", json={"refresh_token": t["refresh_token"]})
    assert r.status_code == 401
    assert s.request("POST", "/v1/auth/token", token="", json={"token": tok}).status_code == 401


def test_users_see_only_their_own_sessions(shared_server):
    s = shared_server
    admin_session = login(s)["session"]
    tok = make_user_with_token(s, "erin")
    t = login(s, tok)
    r = s.request("GET", "/v1/sessions", token=t["access_token"])
    assert r.status_code == 200
    assert [i["metadata"]["name"] for i in r.json()["items"]] == [t["session"]]
    assert s.request("GET", f"/v1/sessions/{admin_session}", token=t["access_token"]).status_code == 404
    assert s.request("DELETE", f"/v1/sessions/{admin_session}", token=t["access_token"]).status_code == 404
    assert s.request("GET", f"/v1/sessions/{t['session']}", token=t["access_token"]).status_code == 200


def test_api_calls_with_an_access_token_are_decided_with_its_session(shared_server):
    """ctx.session is the access token's session for API calls as for the
    proxy; a credential token opens none, so a rule on it does not match."""
    s = shared_server
    match = ('ctx.request.api.verb == "list" && ctx.request.api.kind == "Service" && '
             'ctx.session.authMethod == "token" && ctx.session.type == "client" && !ctx.session.isBrowser && '
             'ctx.session.expiresAt > now() && ctx.session.createdAt <= now()')
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", "session-lister", {"rules": [
            {"effect": "allow", "priority": 0, "condition": {"match": match}}]}),
        manifest("User", "sid-user", {"policies": ["session-lister"]}),
        manifest("Credential", "sid-user-cli", {"user": "sid-user"})]})
    assert r.status_code == 200, r.text
    tok = s.request("POST", "/v1/tokens", json={"credential": "sid-user-cli"}).json()["token"]
    assert s.request("GET", "/v1/services", token=tok).status_code == 403
    t = login(s, tok)
    r = s.request("GET", "/v1/services", token=t["access_token"])
    assert r.status_code == 200, r.text
    only_this = manifest("Policy", "session-lister", {"rules": [{"effect": "allow", "priority": 0, "condition": {
        "match": f'ctx.request.api.kind == "Service" && ctx.session.id == "{t["session"]}"'}}]})
    assert s.request("PUT", "/v1/policies/session-lister", json=only_this).status_code == 200
    assert s.request("GET", "/v1/services", token=t["access_token"]).status_code == 200
    other = login(s, s.request("POST", "/v1/tokens", json={"credential": "sid-user-cli"}).json()["token"])
    assert s.request("GET", "/v1/services", token=other["access_token"]).status_code == 403


def test_disabled_user_cannot_log_in_or_use_tokens(shared_server):
    s = shared_server
    tok = make_user_with_token(s, "frank")
    t = login(s, tok)
    r = s.request("PUT", "/v1/users/frank", json=manifest("User", "frank", {"disabled": True}))
    assert r.status_code == 200, r.text
    assert whoami(s, t["access_token"]).status_code == 403
    assert s.request("POST", "/v1/auth/token", token="", json={"token": tok}).status_code == 403


def test_key_rotation_keeps_old_tokens_valid_and_publishes_both(shared_server):
    s = shared_server
    t = login(s)
    old_kid = jwt.get_unverified_header(t["access_token"])["kid"]
    r = s.request("POST", "/v1/auth/keys/rotate")
    assert r.status_code == 200
    new_kid = r.json()["kid"]
    assert new_kid != old_kid
    kids = [k["kid"] for k in jwks(s)["keys"]]
    assert kids[0] == new_kid and old_kid in kids
    assert whoami(s, t["access_token"]).status_code == 200
    t2 = login(s)
    assert jwt.get_unverified_header(t2["access_token"])["kid"] == new_kid
    assert s.request("POST", "/v1/auth/keys/rotate", token="").status_code == 401


def test_credential_token_exchange_refusals(shared_server):
    s = shared_server
    for body in ({"token": "clst_" + "A" * 43}, {"token": "nope"}):
        r = s.request("POST", "/v1/auth/token", token="", json=body)
        assert r.status_code == 401, r.text
    assert s.request("POST", "/v1/auth/token", token="", data="{").status_code == 400
    assert s.request("GET", "/v1/auth/token", token="").status_code == 405
    assert s.request("POST", "/v1/auth/nothing", token="").status_code == 404


# ---- every refused access token, against the running server ----

def tamper_signature(tok):
    h, p, sig = tok.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    return f"{h}.{p}.{b64url(bytes(raw))}"


def alg_none(server):
    good = login(server)["access_token"]
    h, p, _ = good.split(".")
    hdr = json.loads(base64.urlsafe_b64decode(h + "=="))
    hdr["alg"] = "none"
    return f"{b64url(json.dumps(hdr))}.{p}."


def alg_none_with_signature(server):
    return alg_none(server) + "AAAA"


def hmac_with_public_key(server):
    """HS256 keyed with the server's public key, in the forms libraries have confused."""
    good = login(server)["access_token"]
    kid = jwt.get_unverified_header(good)["kid"]
    pub = [k for k in jwks(server)["keys"] if k["kid"] == kid][0]
    _, p, _ = good.split(".")
    h = b64url(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}))
    secret = json.dumps(pub).encode()
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(mac)}"


def unknown_kid(server):
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return jwt.encode({"iss": issuer(server), "sub": "admin", "aud": AUD, "exp": now + 600, "iat": now,
                       "sid": login(server)["session"]}, other, algorithm="ES256", headers={"kid": "k-unknown"})


def other_key_same_kid(server):
    other = ec.generate_private_key(ec.SECP256R1())
    _, kid = signing_key(server)
    now = int(time.time())
    return jwt.encode({"iss": issuer(server), "sub": "admin", "aud": AUD, "exp": now + 600, "iat": now,
                       "sid": login(server)["session"]}, other, algorithm="ES256", headers={"kid": kid})


REFUSED = {
    "alg_none": alg_none,
    "alg_none_with_signature": alg_none_with_signature,
    "hmac_with_public_key": hmac_with_public_key,
    "unknown_kid": unknown_kid,
    "bad_signature": lambda s: tamper_signature(login(s)["access_token"]),
    "other_key_same_kid": other_key_same_kid,
    "expired": lambda s: forge(s, {"exp": int(time.time()) - 120, "iat": int(time.time()) - 1000}),
    "not_yet_valid": lambda s: forge(s, {"nbf": int(time.time()) + 300}),
    "issued_in_the_future": lambda s: forge(s, {"iat": int(time.time()) + 300}),
    "wrong_issuer": lambda s: forge(s, {"iss": "https://evil.example"}),
    "wrong_audience": lambda s: forge(s, {"aud": "someone-else"}),
    "no_exp": lambda s: forge(s, drop=("exp",)),
    "exp_not_a_number": lambda s: forge(s, {"exp": "tomorrow"}),
    "unknown_session": lambda s: forge(s, {"sid": "s000000000000000000000000"}),
    "subject_not_the_sessions_user": lambda s: forge(s, {"sub": "carol"}),
    "crit_header": lambda s: forge(s, header={"crit": ["exp"]}),
    "oversized": lambda s: forge(s, {"pad": "x" * 9000}),
    "malformed_base64": lambda s: login(s)["access_token"].replace(".", "!.", 1),
    "padded_base64": lambda s: login(s)["access_token"] + "=",
    "malformed_json": lambda s: b64url("{\"alg\":\"ES256\"") + "." + login(s)["access_token"].split(".", 1)[1],
    "extra_part": lambda s: login(s)["access_token"] + ".AAAA",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_access_tokens(shared_server, case):
    token = REFUSED[case](shared_server)
    r = whoami(shared_server, token)
    assert r.status_code == 401, f"{case}: {r.status_code} {r.text}"
    assert r.json()["error"]["code"] == "unauthenticated"


def test_small_clock_skew_is_allowed(shared_server):
    s = shared_server
    assert whoami(s, forge(s, {"nbf": int(time.time()) + 10, "iat": int(time.time()) + 10})).status_code == 200
    assert whoami(s, forge(s, {"exp": int(time.time()) - 5})).status_code == 200


def test_forged_token_with_every_claim_right_is_accepted(shared_server):
    # the control for the refusals above: only the property under test differs
    assert whoami(shared_server, forge(shared_server)).status_code == 200


def test_token_endpoints_are_rate_limited(server):
    s = server
    bogus = {"token": "clst_" + "B" * 43}
    codes = []
    for _ in range(200):
        r = s.request("POST", "/v1/auth/token", token="", json=bogus)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "rate_limited"
            break
    assert codes[-1] == 429 and set(codes[:-1]) == {401}, codes


# ---- the CLI ----

def test_cli_login_keeps_a_session_and_refreshes_it(server, tmp_path):
    s = server
    cfg = tmp_path / "cfg"
    r = run_cli(s, "login", "--token", s.token, config_home=cfg)
    assert r.returncode == 0, r.stderr
    path = cfg / "cloister" / "session.json"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    saved = json.loads(path.read_text())
    assert saved["access_token"].count(".") == 2 and saved["refresh_token"].startswith("clsr_")
    assert s.token not in path.read_text()
    r = run_cli(s, "whoami", "-o", "json", config_home=cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["user"] == "admin", r.stderr
    # an access token the server no longer takes is refreshed transparently
    saved["access_token"] = tamper_signature(saved["access_token"])
    path.write_text(json.dumps(saved))
    os.chmod(path, 0o600)
    r = run_cli(s, "whoami", "-o", "json", config_home=cfg)
    assert r.returncode == 0, r.stderr
    refreshed = json.loads(path.read_text())
    assert refreshed["refresh_token"] != saved["refresh_token"]
    # sessions are resources to `get` (and `delete`)
    other = login(s)["session"]
    r = run_cli(s, "get", "sessions", config_home=cfg)
    assert r.returncode == 0 and saved["session"] in r.stdout and other in r.stdout, r.stderr
    r = run_cli(s, "delete", "session", other, config_home=cfg)
    assert r.returncode == 0, r.stderr
    assert other not in run_cli(s, "get", "sessions", config_home=cfg).stdout
    # logout revokes the session on the server
    r = run_cli(s, "logout", config_home=cfg)
    assert r.returncode == 0, r.stderr
    assert not path.exists()
    assert whoami(s, refreshed["access_token"]).status_code == 401


def test_cli_token_create(server, tmp_path):
    s = server
    cfg = tmp_path / "cfg"
    assert run_cli(s, "login", "--token", s.token, config_home=cfg).returncode == 0
    r = s.request("POST", "/v1/apply", json={"items": [manifest("User", "gina", {}),
                                                        manifest("Credential", "gina-ci", {"user": "gina"})]})
    assert r.status_code == 200, r.text
    r = run_cli(s, "token", "create", "gina-ci", config_home=cfg)
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip().splitlines()[-1]
    assert tok.startswith("clst_")
    assert whoami(s, tok).json()["user"] == "gina"
    r = run_cli(s, "token", "create", "missing", config_home=cfg)
    assert r.returncode == 1
    assert run_cli(s, "token", config_home=cfg).returncode == 2


def test_dead_sessions_are_collected(server):
    s = server
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "ivy", {}), manifest("Credential", "ivy-cli", {"user": "ivy", "expiresAt": exp})]})
    assert r.status_code == 200, r.text
    tok = s.request("POST", "/v1/tokens", json={"credential": "ivy-cli"}).json()["token"]
    dead = login(s, tok)["session"]  # the first opening also collects: nothing is dead yet
    time.sleep(3)
    assert s.request("GET", f"/v1/sessions/{dead}").status_code == 200
    for _ in range(63):
        login(s)
    assert s.request("GET", f"/v1/sessions/{dead}").status_code == 200
    login(s)  # the 64th opening after the first collects again
    assert s.request("GET", f"/v1/sessions/{dead}").status_code == 404
