"""The enclave runtime (issue 21): a Secret's value reaches an attested
replica and nothing else; health that tells the truth (ready only once the
workload answers, crash loops with their reason, surge-one updates)."""
import hashlib
import os
import threading
import time

import pytest
import requests

from conftest import Server, free_port, manifest
from test_authz_writes import assert_refused, grant_use, tenant_user
from test_enclave_proxy import get, login, mint
from test_enclaves import measure, status, wait_for

DOMAIN = "localhost"
SECRET_VALUE = "correct horse battery staple"

# serves the SHA-256 of /run/secrets/db and the mode of the file, and the
# GREETING of its environment (an update changes it)
APP = """\
import hashlib, http.server, json, os, stat

p = "/run/secrets/db"
value = open(p, "rb").read()
body = json.dumps({"sha256": hashlib.sha256(value).hexdigest(), "mode": stat.S_IMODE(os.stat(p).st_mode),
                   "greeting": os.environ.get("GREETING", "")}).encode()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


def make_bundle(path, greeting="hello", app=APP):
    path.mkdir()
    (path / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\n'
                                       f'env: {{GREETING: {greeting}}}\nport: 8080\n')
    (path / "app.py").write_text(app)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def stack(tmp_path):
    http_port = free_port()
    s = Server(tmp_path / "data", extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}"]).start()
    yield s, http_port
    s.stop()


def world(s, bundle, pcr0, name="scorer"):
    """A Secret, a policy pinning PCR0, an Enclave that gets the Secret's
    value, its Service and a user allowed through it; the user's token."""
    docs = [
        manifest("Secret", "db", {"data": {"password": SECRET_VALUE}}),
        manifest("AttestationPolicy", "pinned", {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                                                 "referenceValues": {"pcr0": [pcr0]}}),
        manifest("Enclave", name, {"bundle": str(bundle), "attestationPolicy": "pinned",
                                   "secrets": [{"secret": "db", "key": "password", "file": "db"}]}),
        manifest("Service", name, {"upstream": {"enclave": name}, "policies": ["analysts"]}),
        manifest("Policy", "analysts", {"rules": [{"effect": "allow", "condition": {"match": 'ctx.user.name == "ana"'}}]}),
        manifest("User", "ana", {"type": "human"}),
        manifest("Credential", "ana-cli", {"user": "ana", "type": "authToken"}),
    ]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    return login(s, "ana", mint(s, "ana"))


def releases(s, outcome):
    from test_audit import all_entries
    return [e for e in all_entries(s) if e["action"] == "kms.release" and e["resource"]["kind"] == "Secret"
            and e["outcome"] == outcome]


def test_an_attested_enclave_gets_the_secrets_value_and_a_changed_bundle_gets_nothing(stack, tmp_path):
    s, port = stack
    good = make_bundle(tmp_path / "good")
    tok = world(s, good, measure(good))
    deadline, r = time.time() + 60, None
    while time.time() < deadline:
        r = get(port, f"scorer.{DOMAIN}", tok)
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(SECRET_VALUE.encode()).hexdigest()
    assert r.json()["mode"] == 0o400
    ok = wait_for(lambda: releases(s, "success"), what="an audited release")
    assert ok[0]["resource"] == {"kind": "Secret", "name": "db"} and ok[0]["actor"]["user"] == "cloister-runner"
    # no plaintext in the data dir's logs
    for f in (s.data_dir / "runner").glob("*.log"):
        assert SECRET_VALUE not in f.read_text(errors="replace")

    # another bundle (one byte changed) under the same policy: refused, and
    # the replica shows a crash loop with the refusal as its reason within 5 s
    bad = make_bundle(tmp_path / "bad", app=APP + "\n# changed\n")
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Enclave", "rogue", {"bundle": str(bad), "attestationPolicy": "pinned",
                                      "secrets": [{"secret": "db", "key": "password", "file": "db"}]})]})
    assert r.status_code == 200, r.text
    applied = time.time()

    def looping():
        reps = status(s, "rogue").get("replicas", [])
        return reps[0] if reps and reps[0]["state"] == "crashLoop" else None
    rep = wait_for(looping, timeout=5, what="crashLoop of rogue-1")
    assert time.time() - applied <= 5
    assert "pcr0" in rep["lastError"] and "refused" in rep["lastError"], rep
    assert rep["lastExit"]["how"] == "exited" and rep["lastExit"]["code"] == 1 and rep["lastExit"]["at"], rep
    st = status(s, "rogue")
    assert st["ready"] == 0, st
    denied = wait_for(lambda: releases(s, "denied"), what="an audited refusal")
    assert "pcr0" in denied[0]["details"]["reason"]


def test_a_writer_without_use_on_the_secret_is_refused_at_apply(server, tmp_path):
    s = server
    bundle = make_bundle(tmp_path / "b")
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Secret", "db", {"data": {"password": "x"}})]})
    assert r.status_code == 200, r.text
    tok = tenant_user(s, "encwriter", 'ctx.request.api.kind == "Enclave" && '
                                      'ctx.request.api.verb in ["create", "update", "get"]')
    doc = manifest("Enclave", "thief", {"bundle": str(bundle),
                                        "secrets": [{"secret": "db", "key": "password", "file": "db"}]})
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [doc]})
    assert_refused(r, 403, user="encwriter", verb="use", kind="Secret", name="db", s=s)
    assert s.request("GET", "/v1/enclaves/thief").status_code == 404
    grant_use(s, "encwriter", "db")
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [doc]})
    assert r.status_code == 200, r.text
