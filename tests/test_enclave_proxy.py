"""A Service whose upstream is an Enclave, end to end through the proxy: a
request reaches the workload in a replica that got its key by attestation
(it answers the key's hash), over a bridge that verified the replica's
attested TLS certificate against the Enclave's AttestationPolicy with a
fresh nonce; a replica whose measurement the policy does not allow is
refused (503/502) and the refusal is audited."""
import json
import time

import pytest
import requests

from conftest import Server, free_port, manifest, run_cli
from test_agent import make_bundle, measure
from test_audit import all_entries

DOMAIN = "localhost"


@pytest.fixture
def stack(tmp_path):
    http_port = free_port()
    s = Server(tmp_path / "data", extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}"]).start()
    yield s, http_port
    s.stop()


def mint(s, user):
    """USER's credential token (minting again would end the sessions the last one opened)."""
    return s.request("POST", "/v1/tokens", json={"credential": f"{user}-cli"}).json()["token"]


def login(s, user, cred=None):
    tok = cred or mint(s, user)
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
    cred = mint(s, "ana")
    tok = login(s, "ana", cred)
    r = wait_for(lambda: get(port, f"scorer.{DOMAIN}", tok), 200)
    answer = r.json()
    # the workload read the key the KMS released to it by attestation
    assert answer["size"] == 32 and answer["mode"] == 0o400 and len(answer["sha256"]) == 64
    assert get(port, f"scorer.{DOMAIN}", tok, "/again").json() == answer  # a kept-alive bridge connection

    # a client verifies the service's enclave itself: its nonce, its roots, its PCR0
    https_port = int(s.extra_args[s.extra_args.index("--proxy-listen") + 1].rsplit(":", 1)[1])
    home = tmp_path / "ana-config"
    assert run_cli(s, "login", "--token", cred, config_home=home).returncode == 0
    time.sleep(1.5)  # a new session reaches the proxy within a second
    roots = str(s.data_dir / "platform-ca.pem")
    args = ("attest", "service", "scorer", "--proxy", f"https://127.0.0.1:{https_port}", "--roots", roots)
    p = run_cli(s, *args, "--pcr0", pcr0, "-o", "json", config_home=home)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["verified"] is True and doc["service"] == "scorer" and doc["replica"] == "scorer-1"
    assert doc["claims"]["pcrs"]["0"] == pcr0 and len(doc["claims"]["nonce"]) == 64
    p = run_cli(s, *args, "--pcr0", "00" * 48, config_home=home)  # not what we expect to run
    assert p.returncode == 1 and "pcr0" in p.stderr.lower(), p.stderr
    p = run_cli(s, *args, "--roots", str(s.data_dir / "ca.pem"), config_home=home)  # not the platform's roots
    assert p.returncode == 1, p.stdout + p.stderr

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


SLOW_APP = r'''
import http.server, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy's pools expect
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
'''


def test_replicas_scale_up_under_load_and_back_down_when_it_stops(stack, tmp_path):
    import threading
    s, port = stack
    bundle = make_bundle(tmp_path / "slow", app=SLOW_APP)
    docs = [
        manifest("AttestationPolicy", "slow", {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                                               "referenceValues": {"pcr0": [measure(bundle)]}}),
        manifest("Enclave", "slow", {"bundle": str(bundle), "attestationPolicy": "slow",
                                     "replicas": {"min": 1, "max": 2}}),
        manifest("Service", "slow", {"upstream": {"enclave": "slow"}, "policies": ["analysts"]}),
        manifest("Policy", "analysts", {"rules": [{"effect": "allow", "condition": {"match": 'ctx.user.name == "ana"'}}]}),
        manifest("User", "ana", {"type": "human"}),
        manifest("Credential", "ana-cli", {"user": "ana", "type": "authToken"}),
    ]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    tok = login(s, "ana")
    wait_for(lambda: get(port, f"slow.{DOMAIN}", tok), 200)

    def status():
        return s.request("GET", "/v1/enclaves/slow").json().get("status", {})

    assert status()["desired"] == 1
    stop = threading.Event()
    codes = []

    def client():
        with requests.Session() as http:
            while not stop.is_set():
                codes.append(http.get(f"http://127.0.0.1:{port}/slow", timeout=30,
                                      headers={"Host": f"slow.{DOMAIN}", "Authorization": f"Bearer {tok}"}).status_code)

    workers = [threading.Thread(target=client) for _ in range(12)]  # 12 in flight > 4 per replica
    for w in workers:
        w.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (status()["desired"] == 2 and status()["ready"] == 2):
            time.sleep(0.5)
        assert status()["desired"] == 2 and status()["ready"] == 2, status()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
    assert codes and set(codes) == {200}, set(codes)
    # idle: back to min after the idle period
    deadline = time.time() + 40
    while time.time() < deadline and status()["desired"] != 1:
        time.sleep(0.5)
    assert status()["desired"] == 1, status()
    scaled = [e for e in all_entries(s) if e["action"] == "enclave.scaled"]
    assert [(e["details"]["from"], e["details"]["to"]) for e in scaled] == [(1, 2), (2, 1)]
    assert scaled[0]["details"]["inFlight"] > 4
    text = s.request("GET", "/metrics").text  # the admin token: /metrics needs a credential
    assert 'cloister_proxy_enclave_in_flight{enclave="slow"} 0' in text
