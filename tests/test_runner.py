"""The runner role: it launches bundles in sandboxes and vouches only for
sandboxes it launched, with evidence whose PCR0 is its own measurement of
the bundle, verified by cloister attest verify against the cluster's
platform CA and cross-checked with cbor2."""
import base64
import http.client
import json
import os
import socket
import stat
import subprocess

import cbor2
import pytest

from conftest import CLOISTER, sanitizer_env


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def call(server, method, path, body=None):
    c = UnixHTTPConnection(str(server.data_dir / "run" / "runner.sock"))
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read())


def launch(server, name, bundle, **extra):
    return call(server, "POST", "/v1/sandboxes", {"name": name, "bundle": str(bundle), **extra})


def ask(server, body):
    return call(server, "POST", "/v1/evidence", body)


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/bin/sleep", "600"]\nenv: {MODE: scoring}\n')
    (b / "app.py").write_text("print('scoring')\n")
    os.chmod(b, 0o755)
    return b


def cli(*args):
    return subprocess.run([str(CLOISTER), *args], capture_output=True, text=True, env=sanitizer_env(), timeout=60)


def test_runner_socket_is_private(server):
    st = os.stat(server.data_dir / "run" / "runner.sock")
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o600
    assert os.stat(server.data_dir / "platform-ca.key").st_mode & 0o777 == 0o600


def test_evidence_binds_bundle_nonce_and_key_and_verifies(server, bundle, tmp_path):
    status, launched = launch(server, "scorer", bundle, config={"limits": {"memoryMiB": 256}})
    assert status == 201, launched
    nonce, pub = os.urandom(32), b"\x04" + os.urandom(96)
    status, ans = ask(server, {"name": "scorer", "nonce": nonce.hex(), "public_key": pub.hex()})
    assert status == 200, ans
    doc = tmp_path / "doc.b64"
    doc.write_text(ans["document"])
    r = cli("attest", "verify", "--type", "sandbox", "--evidence", str(doc),
            "--roots", str(server.data_dir / "platform-ca.pem"), "-o", "json")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)["claims"]
    measured = cli("enclave", "measure", str(bundle)).stdout.strip()
    assert claims["sandbox"] is True and claims["module_id"] == "sandbox-scorer"
    assert claims["pcrs"]["0"] == measured == ans["pcrs"]["0"] == launched["pcrs"]["0"]
    assert claims["nonce"] == nonce.hex() and claims["public_key"] == pub.hex()
    # PCR2 is SHA-384 of the canonical configuration, PCR3.. are zero
    import hashlib
    assert claims["pcrs"]["2"] == hashlib.sha384(b'{"limits":{"memoryMiB":256}}').hexdigest()
    assert claims["pcrs"]["3"] == "00" * 48
    # independent decoding of the COSE_Sign1 with cbor2
    cose = cbor2.loads(base64.b64decode(ans["document"]))
    assert cose[0] == bytes.fromhex("a1013822")  # protected header {1: -35}, ES384
    payload = cbor2.loads(cose[2])
    assert payload["pcrs"][0].hex() == measured and payload["nonce"] == nonce


def test_evidence_is_refused_under_other_roots_and_as_nitro(server, bundle, tmp_path):
    launch(server, "scorer", bundle)
    status, ans = ask(server, {"name": "scorer"})
    assert status == 200
    doc = tmp_path / "doc.b64"
    doc.write_text(ans["document"])
    r = cli("attest", "verify", "--type", "sandbox", "--evidence", str(doc), "--roots", str(server.data_dir / "ca.pem"))
    assert r.returncode == 1
    r = cli("attest", "verify", "--type", "nitro", "--evidence", str(doc))
    assert r.returncode == 1


def test_changed_bundle_changes_pcr0(server, bundle):
    _, a = launch(server, "one", bundle)
    (bundle / "app.py").write_text("print('evil')\n")
    _, b = launch(server, "two", bundle)
    assert a["pcrs"]["0"] != b["pcrs"]["0"] and a["pcrs"]["1"] == b["pcrs"]["1"]


def test_no_evidence_for_sandboxes_it_did_not_launch(server, bundle):
    status, ans = ask(server, {"name": "never-launched"})
    assert status == 404 and "only issued for sandboxes this runner launched" in ans["error"]["message"]
    launch(server, "short", bundle)
    status, _ = call(server, "DELETE", "/v1/sandboxes/short")
    assert status == 200
    status, ans = ask(server, {"name": "short"})
    assert status == 404


def test_workload_runs_isolated_and_is_listed_and_stopped(server, bundle):
    status, s = launch(server, "iso", bundle)
    assert status == 201
    pid = s["pid"]
    # the host sees the workload; its root is not the host's
    assert os.readlink(f"/proc/{pid}/exe").endswith("sleep")
    assert os.stat(f"/proc/{pid}/root/app/enclave.yaml")
    assert not os.path.exists(f"/proc/{pid}/root/etc/passwd")
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    status, listed = call(server, "GET", "/v1/sandboxes")
    assert [i["name"] for i in listed["items"]] == ["iso"]
    status, dup = launch(server, "iso", bundle)
    assert status == 409
    call(server, "DELETE", "/v1/sandboxes/iso")
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_sandboxes_stop_with_the_runner(tmp_path, bundle):
    from conftest import Server
    s = Server(tmp_path / "data").start()
    _, launched = launch(s, "bye", bundle)
    s.stop()
    assert not os.path.exists(f"/proc/{launched['pid']}")


@pytest.mark.parametrize("body,why", [
    ({"name": "scorer", "bundle": "relative/dir"}, "absolute"),
    ({"name": "Bad_Name", "bundle": "/tmp"}, "DNS-1123"),
    ({"name": "scorer", "bundle": "/nonexistent-bundle"}, "cannot measure"),
    ({"name": "scorer", "bundle": "/tmp", "pcr0": "00"}, "unknown field"),
])
def test_bad_launches_are_refused(server, body, why):
    status, ans = call(server, "POST", "/v1/sandboxes", body)
    assert status == 400 and why in ans["error"]["message"], ans


def test_bad_evidence_requests_are_refused(server, bundle):
    launch(server, "scorer", bundle)
    status, ans = ask(server, {"name": "scorer", "nonce": "zz"})
    assert status == 400 and "hex" in ans["error"]["message"]


def test_symlinked_bundles_are_refused(server, bundle):
    os.symlink("/etc/shadow", bundle / "shadow")
    status, ans = launch(server, "scorer", bundle)
    assert status == 400 and "symbolic links" in ans["error"]["message"]
