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
    doc = manifest("Enclave", "thief", {"bundle": str(bundle), "attestationPolicy": "pinned",
                                        "secrets": [{"secret": "db", "key": "password", "file": "db"}]})
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [doc]})
    assert_refused(r, 403, user="encwriter", verb="use", kind="Secret", name="db", s=s)
    assert s.request("GET", "/v1/enclaves/thief").status_code == 404
    grant_use(s, "encwriter", "db")
    r = s.request("POST", "/v1/apply", token=tok, json={"items": [doc]})
    assert r.status_code == 200, r.text


def test_a_one_replica_update_answers_only_200s(stack, tmp_path):
    s, port = stack
    v1, v2 = make_bundle(tmp_path / "v1", greeting="one"), make_bundle(tmp_path / "v2", greeting="two")
    pcr1, pcr2 = measure(v1), measure(v2)
    assert pcr1 != pcr2  # enclave.yaml (its env) is part of the measurement
    tok = world(s, v1, pcr1)
    r = s.request("PUT", "/v1/attestationpolicies/pinned", json=manifest(
        "AttestationPolicy", "pinned", {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                                        "referenceValues": {"pcr0": [pcr1, pcr2]}}))
    assert r.status_code == 200, r.text
    first = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(get(port, f"scorer.{DOMAIN}", tok)),
                     timeout=60, what="the first answer")
    assert first.json()["greeting"] == "one"
    before = status(s, "scorer")
    assert before["ready"] == 1 and before["replicas"][0]["state"] == "running", before

    # a client loops through the proxy during the update: bounded in count and time
    seen, stop = [], threading.Event()

    def loop():
        session = requests.Session()
        deadline = time.time() + 90
        while not stop.is_set() and len(seen) < 20000 and time.time() < deadline:
            try:
                r = session.get(f"http://127.0.0.1:{port}/", headers={"Host": f"scorer.{DOMAIN}",
                                                                     "Authorization": f"Bearer {tok}"}, timeout=30)
                seen.append((r.status_code, r.json().get("greeting") if r.status_code == 200 else r.text))
            except requests.RequestException as e:
                seen.append((0, str(e)))
    t = threading.Thread(target=loop)
    t.start()
    try:
        wait_for(lambda: len(seen) >= 5, what="the client's first answers")
        r = s.request("POST", "/v1/apply", json={"items": [
            manifest("Enclave", "scorer", {"bundle": str(v2), "attestationPolicy": "pinned",
                                           "secrets": [{"secret": "db", "key": "password", "file": "db"}]})]})
        assert r.status_code == 200, r.text

        # done when scorer-1 runs the new bundle (a new startedAt), ready, and the surge is gone
        def updated():
            st = status(s, "scorer")
            reps = st.get("replicas", [])
            ok = (st.get("pcr0") == pcr2 and st.get("ready") == 1 and len(reps) == 1 and reps[0]["state"] == "running"
                  and reps[0]["startedAt"] != before["replicas"][0]["startedAt"])
            return st if ok else None
        wait_for(updated, timeout=60, what="the update to finish")
        n = len(seen)
        wait_for(lambda: len(seen) >= n + 5, what="answers after the update")
    finally:
        stop.set()
        t.join(timeout=60)
    bad = [x for x in seen if x[0] != 200]
    assert not bad, f"{len(bad)} of {len(seen)} requests failed during the update: {bad[:5]}"
    greetings = [g for _, g in seen]
    assert greetings[0] == "one" and greetings[-1] == "two", (greetings[0], greetings[-1])
    # the new replica served before the old one stopped: the surge was audited as launched and stopped
    from test_enclaves import enclave_events
    launched = [e["details"]["replica"] for e in enclave_events(s, "scorer", "enclave.replica.launched")]
    assert "scorer-2" in launched, launched
