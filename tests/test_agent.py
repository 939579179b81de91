"""The in-enclave agent end to end with the real cloisterd: the runner starts
cloister-agent first in an agent-mode sandbox; the agent gets the sandbox's
evidence over the channel, obtains a Key by attestation into
/run/secrets/model.key, starts the workload and serves attested TLS whose
certificate carries the evidence. The test checks the certificate with
`cloister attest verify`, cbor2 and cryptography, reaches the workload
through the TLS connection, and shows that a changed bundle gets no key.
Sandboxes are Enclaves' replicas, launched through the API (only the api
role may use the runner's socket)."""
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import BUILD, CLOISTER, SANITIZER_MARKERS, manifest, sanitizer_env
from test_audit import all_entries
from test_runner import channel, launch, remove, wait_for

OID = "1.3.6.1.4.1.999999.1.1"
AGENT = BUILD / "src" / "agent" / "cloister-agent"

APP = r'''
import hashlib, http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        try:
            data = open("/run/secrets/model.key", "rb").read()
            st = os.stat("/run/secrets/model.key")
            answer = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": st.st_mode & 0o777}
        except OSError as e:
            answer = {"error": str(e)}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
'''


def make_bundle(path, app=APP):
    path.mkdir()
    (path / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\nenv: {MODE: scoring}\nport: 8080\n')
    (path / "app.py").write_text(app)
    os.chmod(path, 0o755)
    return path


def measure(bundle):
    r = subprocess.run([str(CLOISTER), "enclave", "measure", str(bundle)], capture_output=True, text=True,
                       env=sanitizer_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def der_items(data):
    """The items of a DER SEQUENCE as (tag, value) pairs: an independent
    reader of the CloisterAttestation the extension holds."""
    def item(buf, at):
        tag, n = buf[at], buf[at + 1]
        at += 2
        if n & 0x80:
            k = n & 0x7f
            n = int.from_bytes(buf[at:at + k], "big")
            at += k
        return tag, buf[at:at + n], at + n
    tag, body, end = item(data, 0)
    assert tag == 0x30 and end == len(data)
    out, at = [], 0
    while at < len(body):
        t, v, at = item(body, at)
        out.append((t, v))
    return out


def connect_atls(path, sni=None, timeout=10):
    """A TLS connection to the agent through its host Unix socket (through
    /proc/self/fd: the data dir may be longer than sun_path allows)."""
    dirfd = os.open(os.path.dirname(path), os.O_PATH)
    try:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        raw.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the evidence in the certificate is what is verified
    return ctx.wrap_socket(raw, server_hostname=sni)


def get(tls, path="/"):
    tls.sendall(f"GET {path} HTTP/1.0\r\nHost: workload\r\n\r\n".encode())
    data = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), head
    return json.loads(body)


def wait_served(path, timeout=30):
    """The workload's answer through aTLS once the agent and the workload serve."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            with connect_atls(path) as tls:
                return get(tls), tls
        except (OSError, ssl.SSLError, ValueError) as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"no answer through aTLS at {path}: {last}")


def atls_path(server, replica):
    return str(server.data_dir / "runner" / replica / "atls.sock")


def wait_crashed(server, replica, timeout=30):
    """How REPLICA's sandbox ended, from the controller's enclave.replica.crashed entry."""
    def crashed():
        return [e for e in all_entries(server)
                if e["action"] == "enclave.replica.crashed" and e["details"].get("replica") == replica]
    return wait_for(crashed, timeout=timeout, what=f"{replica} exited")[0]["details"]["how"]


def evidence_of(cert_der):
    cert = x509.load_der_x509_certificate(cert_der)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID))
    assert not ext.critical
    items = der_items(ext.value.value)
    assert items[0] == (0x02, b"\x01") and items[1] == (0x0c, b"sandbox") and items[2][0] == 0x04
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return items[2][1], spki, cert


def verify_cli(server, evidence, tmp_path, name="ev.cbor"):
    path = tmp_path / name
    path.write_bytes(evidence)
    r = subprocess.run([str(CLOISTER), "attest", "verify", "--type", "sandbox", "--evidence", str(path), "--roots",
                        str(server.data_dir / "platform-ca.pem"), "-o", "json"], capture_output=True, text=True,
                       env=sanitizer_env(), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["claims"]


@pytest.fixture
def enclave(server, tmp_path):
    """A bundle, a policy pinning its PCR0, a Key released under it, and one
    agent-mode replica of it."""
    bundle = make_bundle(tmp_path / "bundle")
    pcr0 = measure(bundle)
    docs = [manifest("AttestationPolicy", "scorer", {"types": ["sandbox"], "allowSandbox": True,
                                                     "maxAgeSeconds": 300, "referenceValues": {"pcr0": [pcr0]}}),
            manifest("Key", "model-key", {"purpose": "encrypt", "release": {"attestationPolicy": "scorer"}}),
            manifest("Key", "other-key", {"purpose": "encrypt", "release": {"attestationPolicy": "scorer"}})]
    r = server.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    launched, _ = launch(server, "scorer", bundle, secrets=[{"key": "model-key", "file": "model.key"}])
    yield server, bundle, pcr0, launched
    # the agents ran sanitized too: their reports land in the sandboxes' logs
    server.stop()
    for log in (server.data_dir / "runner").glob("*.log"):
        text = log.read_text(errors="replace")
        for marker in SANITIZER_MARKERS:
            assert marker not in text, f"{marker!r} in {log}:\n{text[-4000:]}"


def test_the_workload_gets_its_key_and_serves_attested_tls(enclave, tmp_path):
    server, bundle, pcr0, launched = enclave
    atls = atls_path(server, "scorer-1")
    # the proxy, a user of its own when started as root, connects: the
    # agent's attestation, not the socket's mode, authenticates the enclave
    assert os.stat(atls).st_mode & 0o777 == 0o666
    # PCR3 measures the agent the runner bound into the sandbox
    assert launched["pcrs"]["3"] == hashlib.sha384(AGENT.read_bytes()).hexdigest()

    answer, tls = wait_served(atls)
    # the workload read a 32-byte data key the agent wrote 0400
    assert set(answer) == {"sha256", "size", "mode"}, answer
    assert answer["size"] == 32 and answer["mode"] == 0o400 and len(answer["sha256"]) == 64

    # the certificate: self-signed by the key its evidence binds
    with connect_atls(atls) as tls:
        cert_der = tls.getpeercert(binary_form=True)
        assert get(tls)["sha256"] == answer["sha256"]
    evidence, spki, cert = evidence_of(cert_der)
    claims = verify_cli(server, evidence, tmp_path)
    assert claims["sandbox"] is True and claims["module_id"] == "sandbox-scorer-1"
    assert claims["public_key"] == spki.hex()
    assert claims["pcrs"]["0"] == pcr0 == launched["pcrs"]["0"]
    assert claims["pcrs"]["3"] == launched["pcrs"]["3"]
    assert cert.public_key().curve.name == "secp384r1"
    # independently: the COSE_Sign1 payload, decoded with cbor2
    payload = cbor2.loads(cbor2.loads(evidence)[2])
    assert payload["public_key"] == spki and payload["pcrs"][0].hex() == pcr0
    # openssl shows the extension by its OID
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], input=cert_der,
                          capture_output=True, timeout=30).stdout.decode()
    assert OID in text

    # the key never reached the logs
    log = (server.data_dir / "runner" / "scorer-1.log").read_text()
    assert "secrets released" in log and "workload started" in log
    releases = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
    assert all("plaintext" not in json.dumps(l) for l in releases)


def test_a_client_nonce_is_carried_in_the_certificate(enclave, tmp_path):
    server, _, _, _ = enclave
    atls = atls_path(server, "scorer-1")
    wait_served(atls)
    nonce = os.urandom(32)
    sni = f"{nonce[:16].hex()}.{nonce[16:].hex()}.nonce.atls"
    with connect_atls(atls, sni=sni) as tls:
        evidence, spki, _ = evidence_of(tls.getpeercert(binary_form=True))
        assert get(tls)["size"] == 32
    claims = verify_cli(server, evidence, tmp_path)
    assert claims["nonce"] == nonce.hex() and claims["public_key"] == spki.hex()
    # without one, the periodically renewed certificate carries none
    with connect_atls(atls) as tls:
        evidence, _, _ = evidence_of(tls.getpeercert(binary_form=True))
    assert verify_cli(server, evidence, tmp_path, "plain.cbor")["nonce"] is None


def test_a_second_replica_has_its_own_key_evidence_and_secret(enclave, tmp_path):
    server, bundle, pcr0, _ = enclave
    launch(server, "scorer-b", bundle, secrets=[{"key": "model-key", "file": "model.key"}])
    a, b = atls_path(server, "scorer-1"), atls_path(server, "scorer-b-1")
    answer_a, _ = wait_served(a)
    answer_b, _ = wait_served(b)
    with connect_atls(a) as ta, connect_atls(b) as tb:
        ev_a, spki_a, _ = evidence_of(ta.getpeercert(binary_form=True))
        ev_b, spki_b, _ = evidence_of(tb.getpeercert(binary_form=True))
    assert spki_a != spki_b and ev_a != ev_b
    claims_b = verify_cli(server, ev_b, tmp_path)
    assert claims_b["module_id"] == "sandbox-scorer-b-1" and claims_b["pcrs"]["0"] == pcr0
    assert claims_b["public_key"] == spki_b.hex()
    # each release is a fresh data key
    assert answer_a["size"] == answer_b["size"] == 32 and answer_a["sha256"] != answer_b["sha256"]


def test_a_changed_bundle_gets_no_key_and_never_starts(enclave, tmp_path):
    server, bundle, _, _ = enclave
    evil = tmp_path / "evil"
    shutil.copytree(bundle, evil)
    app = (evil / "app.py").read_bytes()
    (evil / "app.py").write_bytes(app[:-2] + bytes([app[-2] ^ 0x01]) + app[-1:])  # one byte
    r = server.request("POST", "/v1/apply", json={"items": [manifest(
        "Enclave", "evil", {"bundle": str(evil), "secrets": [{"key": "model-key", "file": "model.key"}]})]})
    assert r.status_code == 200, r.text
    assert wait_crashed(server, "evil-1") == "exit status 1"
    log = (server.data_dir / "runner" / "evil-1.log").read_text()
    refused = [json.loads(l) for l in log.splitlines() if "key release refused" in l]
    assert refused and refused[0]["key"] == "model-key" and refused[0]["status"] == "403"
    assert "reference values" in refused[0]["reason"], refused[0]
    assert "workload started" not in log
    remove(server, "evil")
    wait_for(lambda: not (server.data_dir / "runner" / "evil-1").exists(),
             what="its sockets gone with it")


def test_the_channel_serves_only_what_an_enclave_may_ask(enclave):
    server, _, _, _ = enclave
    # evidence for this sandbox, never for a name it sends
    status, ans = channel(server, "scorer-1", "POST", "/v1/evidence", {"name": "other"})
    assert status == 400 and "name is not accepted" in ans["error"]["message"]
    status, ans = channel(server, "scorer-1", "POST", "/v1/evidence", {"nonce": "00" * 32})
    assert status == 200
    payload = cbor2.loads(cbor2.loads(base64.b64decode(ans["document"]))[2])
    assert payload["module_id"] == "sandbox-scorer-1" and payload["nonce"] == bytes(32)
    # the runner's own API is not there
    status, ans = channel(server, "scorer-1", "POST", "/v1/sandboxes", {"name": "x", "bundle": "/tmp"})
    assert status == 404
    status, _ = channel(server, "scorer-1", "GET", "/v1/sandboxes")
    assert status == 405
    # key release only for the Keys the sandbox was launched with
    status, ans = channel(server, "scorer-1", "POST", "/v1/kms/keys/other-key/release",
                          {"type": "sandbox", "evidence": "AA==", "publicKey": "AA=="})
    assert status == 403 and "not among this sandbox's secrets" in ans["error"]["message"]
    # a challenge is forwarded to the API as the runner's identity
    status, ans = channel(server, "scorer-1", "POST", "/v1/attest/challenge", {})
    assert status == 200 and len(ans["nonce"]) == 64
    status, ans = channel(server, "scorer-1", "POST", "/v1/kms/keys/model-key/release",
                          {"type": "sandbox", "evidence": "AA==", "publicKey": "AA=="})
    assert status == 403 and "is not released" in ans["error"]["message"]
    # the runner's identity can do nothing else on the API
    token = (server.data_dir / "runner" / "runner.token").read_text().strip()
    assert server.request("GET", "/v1/keys", token=token).status_code == 403
    assert server.request("POST", "/v1/kms/datakey", token=token, json={"key": "model-key"}).status_code == 403


def test_sigterm_is_forwarded_and_a_crash_ends_the_sandbox(enclave):
    server, bundle, _, launched = enclave
    wait_served(atls_path(server, "scorer-1"))
    # a crash of the workload ends the sandbox with its status
    with pytest.raises((OSError, ssl.SSLError, ValueError, AssertionError)):
        with connect_atls(atls_path(server, "scorer-1")) as tls:
            get(tls, "/crash")
    assert wait_crashed(server, "scorer-1") == "exit status 3"
    assert not os.path.exists(f"/proc/{launched['pid']}") or \
        open(f"/proc/{launched['pid']}/stat").read().split()[2] == "Z"
    # SIGTERM to the agent reaches the workload, whose status the agent returns
    second, _ = launch(server, "scorer-2", bundle, secrets=[{"key": "model-key", "file": "model.key"}])
    wait_served(atls_path(server, "scorer-2-1"))
    os.kill(second["pid"], signal.SIGTERM)
    assert wait_crashed(server, "scorer-2-1") == f"exit status {128 + signal.SIGTERM}"
    log = (server.data_dir / "runner" / "scorer-2-1.log").read_text()
    assert "stopping the workload" in log


@pytest.mark.parametrize("secrets,why", [
    ([{"secret": "db-pass", "file": "db"}], "key: required field missing"),
    ([{"key": "model-key", "file": "../etc/passwd"}], "file: must be 1-253 letters"),
    ([{"key": "model-key", "file": "a"}, {"key": "other-key", "file": "a"}], "already writes /run/secrets/a"),
    ([{"key": "Model_Key", "file": "a"}], "must name a Key"),
    ("yes", "must be an array"),
])
def test_bad_agent_parameters_are_refused(server, tmp_path, secrets, why):
    """The agent's parameters come from the Enclave's spec, checked by the
    API before anything reaches the runner (the runner checks them again)."""
    bundle = make_bundle(tmp_path / "bundle")
    r = server.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "bad", {"bundle": str(bundle),
                                                                                         "secrets": secrets})]})
    assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
