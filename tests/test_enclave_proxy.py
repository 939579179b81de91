"""A Service whose upstream is an Enclave, end to end through the proxy: a
request reaches the workload in a replica that got its key by attestation
(it answers the key's hash), over a bridge that verified the replica's
attested TLS certificate against the Enclave's AttestationPolicy with a
fresh nonce; a replica whose measurement the policy does not allow is
refused (503/502) and the refusal is audited."""
import time

import pytest
import requests

from conftest import Server, free_port, manifest
from test_agent import make_bundle, measure
from test_audit import all_entries

DOMAIN = "localhost"


@pytest.fixture
def stack(tmp_path):
    http_port = free_port()
    s = Server(tmp_path / "data", extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}"]).start()
    yield s, http_port
    s.stop()


def login(s, user):
    tok = s.request("POST", "/v1/tokens", json={"credential": f"{user}-cli"}).json()["token"]
    return s.request("POST", "/v1/auth/token", token="", json={"token": tok}).json()["access_token"]


def get(port, host, token, path="/"):
    return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host, "Authorization": f"Bearer {token}"},
                        timeout=30)


def wait_for(fn, want, timeout=60):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        last = fn()
        if last.status_code == want:
            return last
        time.sleep(0.3)
    raise AssertionError(f"wanted {want}, last {last.status_code}: {last.text}")


def test_requests_reach_an_attested_enclave_and_a_changed_bundle_is_refused(stack, tmp_path):
    s, port = stack
    good = make_bundle(tmp_path / "good")
    pcr0 = measure(good)
    docs = [
        manifest("AttestationPolicy", "scorers", {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                                                  "referenceValues": {"pcr0": [pcr0]}}),
        manifest("Key", "model-key", {"purpose": "encrypt", "release": {"attestationPolicy": "scorers"}}),
        manifest("Enclave", "scorer", {"bundle": str(good), "attestationPolicy": "scorers",
                                       "secrets": [{"key": "model-key", "file": "model.key"}]}),
        manifest("Service", "scorer", {"upstream": {"enclave": "scorer"}, "policies": ["analysts"]}),
        manifest("Policy", "analysts", {"rules": [{"effect": "allow", "condition": {"match": 'ctx.user.name == "ana"'}}]}),
        manifest("User", "ana", {"type": "human"}),
        manifest("Credential", "ana-cli", {"user": "ana", "type": "authToken"}),
    ]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    tok = login(s, "ana")
    r = wait_for(lambda: get(port, f"scorer.{DOMAIN}", tok), 200)
    answer = r.json()
    # the workload read the key the KMS released to it by attestation
    assert answer["size"] == 32 and answer["mode"] == 0o400 and len(answer["sha256"]) == 64
    assert get(port, f"scorer.{DOMAIN}", tok, "/again").json() == answer  # a kept-alive bridge connection

    # another bundle (one byte changed) under an Enclave the same policy governs
    bad = make_bundle(tmp_path / "bad")
    (bad / "app.py").write_text((bad / "app.py").read_text() + "\n# changed\n")
    assert measure(bad) != pcr0
    docs = [manifest("Enclave", "rogue", {"bundle": str(bad), "attestationPolicy": "scorers"}),
            manifest("Service", "rogue", {"upstream": {"enclave": "rogue"}, "policies": ["analysts"]})]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    # once its replica runs, the proxy refuses it: the attestation fails
    r = wait_for(lambda: get(port, f"rogue.{DOMAIN}", tok), 502)
    deadline = time.time() + 15
    while time.time() < deadline:
        refused = [e for e in all_entries(s) if e["action"] == "proxy.enclave.refused"]
        if refused:
            break
        time.sleep(0.3)
    assert refused and refused[0]["resource"] == {"kind": "Enclave", "name": "rogue"}
    assert refused[0]["outcome"] == "denied" and "pcr0" in refused[0]["details"]["reason"].lower()
    # the good one still answers
    assert get(port, f"scorer.{DOMAIN}", tok).status_code == 200
    # an Enclave without an AttestationPolicy is never reached
    docs = [manifest("Enclave", "unverified", {"bundle": str(good)}),
            manifest("Service", "unverified", {"upstream": {"enclave": "unverified"}, "policies": ["analysts"]})]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    r = wait_for(lambda: get(port, f"unverified.{DOMAIN}", tok), 503, timeout=20)
    assert "AttestationPolicy" in r.json()["error"]["message"]
