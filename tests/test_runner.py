"""The runner role: it launches bundles in sandboxes and vouches only for
sandboxes it launched, with evidence whose PCR0 is its own measurement of
the bundle, verified by cloister attest verify against the cluster's
platform CA and cross-checked with cbor2.

Only the api role may use the runner's socket (issue 14: peers checked on
every local socket), so a test launches the way a client does, with an
Enclave applied through the API, and asks for evidence where a sandbox does,
on its own channel (<runner_dir>/<replica>/channel.sock)."""
import base64
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import time

import cbor2
import pytest

from conftest import CLOISTER, manifest, sanitizer_env


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def channel(server, replica, method, path, body=None):
    """One request on REPLICA's agent channel (through /proc/self/fd: the data
    dir may be longer than sun_path allows); returns (status, json)."""
    dirfd = os.open(server.data_dir / "runner" / replica, os.O_PATH)
    try:
        c = UnixHTTPConnection(f"/proc/self/fd/{dirfd}/channel.sock")
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        os.close(dirfd)


def ask(server, replica, body):
    """Evidence for REPLICA, asked on its channel."""
    return channel(server, replica, "POST", "/v1/evidence", body)


def enclave_status(server, name):
    r = server.request("GET", f"/v1/enclaves/{name}")
    return r.json().get("status", {}) if r.status_code == 200 else None


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what} not met in {timeout}s")


def launch(server, name, bundle, **spec):
    """Applies Enclave NAME for BUNDLE (SPEC: secrets, limits, ...) and waits
    for its replica NAME-1 to run. Returns (the replica: name, pid and its
    PCRs as its evidence reports them, the Enclave's status)."""
    r = server.request("POST", "/v1/apply", json={"items": [manifest("Enclave", name, {"bundle": str(bundle), **spec})]})
    assert r.status_code == 200, r.text

    def running():
        st = enclave_status(server, name) or {}
        reps = [x for x in st.get("replicas", []) if x["state"] == "running"]
        return (reps[0], st) if st.get("ready") == 1 and reps else None
    replica, st = wait_for(running, what=f"a running replica of {name} (last: {enclave_status(server, name)})")
    code, ev = wait_for(lambda: (lambda a: a if a[0] == 200 else None)(ask(server, replica["name"], {})),
                        what="the replica's channel")
    return {"name": replica["name"], "pid": replica["pid"], "pcrs": ev["pcrs"]}, st


def remove(server, name):
    assert server.request("DELETE", f"/v1/enclaves/{name}").status_code == 200


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
    # started as root the roles are users of their own: the socket is open
    # to every uid and the peer check is the gate; otherwise only ours
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o666
    if os.geteuid() != 0:
        assert os.stat(server.data_dir / "run").st_mode & 0o777 == 0o700
    assert os.stat(server.data_dir / "platform-ca.key").st_mode & 0o777 == 0o600
    # a process of the daemon's own uid that is not the api role gets nothing (tests/test_peers.py)
    c = UnixHTTPConnection(str(server.data_dir / "run" / "runner.sock"))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        c.request("POST", "/v1/evidence", body=json.dumps({"name": "anything"}))
        c.getresponse()


def test_evidence_binds_bundle_nonce_and_key_and_verifies(server, bundle, tmp_path):
    launched, _ = launch(server, "scorer", bundle, limits={"memoryMiB": 256})
    nonce, pub = os.urandom(32), b"\x04" + os.urandom(96)
    status, ans = ask(server, "scorer-1", {"nonce": nonce.hex(), "public_key": pub.hex()})
    assert status == 200, ans
    doc = tmp_path / "doc.b64"
    doc.write_text(ans["document"])
    r = cli("attest", "verify", "--type", "sandbox", "--evidence", str(doc),
            "--roots", str(server.data_dir / "platform-ca.pem"), "-o", "json")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)["claims"]
    measured = cli("enclave", "measure", str(bundle)).stdout.strip()
    assert claims["sandbox"] is True and claims["module_id"] == "sandbox-scorer-1"
    assert claims["pcrs"]["0"] == measured == ans["pcrs"]["0"] == launched["pcrs"]["0"]
    assert claims["nonce"] == nonce.hex() and claims["public_key"] == pub.hex()
    # PCR2 is SHA-384 of the canonical configuration (the controller passes none), PCR3 the agent's, PCR4.. zero
    assert claims["pcrs"]["2"] == hashlib.sha384(b"{}").hexdigest()
    assert claims["pcrs"]["4"] == "00" * 48
    # independent decoding of the COSE_Sign1 with cbor2
    cose = cbor2.loads(base64.b64decode(ans["document"]))
    assert cose[0] == bytes.fromhex("a1013822")  # protected header {1: -35}, ES384
    payload = cbor2.loads(cose[2])
    assert payload["pcrs"][0].hex() == measured and payload["nonce"] == nonce


def test_evidence_is_refused_under_other_roots_and_as_nitro(server, bundle, tmp_path):
    launch(server, "scorer", bundle)
    status, ans = ask(server, "scorer-1", {})
    assert status == 200
    doc = tmp_path / "doc.b64"
    doc.write_text(ans["document"])
    r = cli("attest", "verify", "--type", "sandbox", "--evidence", str(doc), "--roots", str(server.data_dir / "ca.pem"))
    assert r.returncode == 1
    r = cli("attest", "verify", "--type", "nitro", "--evidence", str(doc))
    assert r.returncode == 1


def test_changed_bundle_changes_pcr0(server, bundle):
    a, _ = launch(server, "one", bundle)
    (bundle / "app.py").write_text("print('evil')\n")
    b, _ = launch(server, "two", bundle)
    assert a["pcrs"]["0"] != b["pcrs"]["0"] and a["pcrs"]["1"] == b["pcrs"]["1"]


def test_no_evidence_for_sandboxes_it_did_not_launch(server, bundle):
    # a channel vouches for its own sandbox only, and goes with it
    launch(server, "short", bundle)
    status, ans = ask(server, "short-1", {"name": "other"})
    assert status == 400 and "name is not accepted" in ans["error"]["message"]
    remove(server, "short")
    wait_for(lambda: not (server.data_dir / "runner" / "short-1").exists(), what="the channel gone")
    with pytest.raises(FileNotFoundError):
        ask(server, "short-1", {})


def test_workload_runs_isolated_and_is_listed_and_stopped(server, bundle):
    s, st = launch(server, "iso", bundle)
    pid = s["pid"]
    # the host sees the sandbox (the agent, which runs the workload); its root is not the host's
    assert os.stat(f"/proc/{pid}/root/app/enclave.yaml")
    assert not os.path.exists(f"/proc/{pid}/root/etc/passwd")
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert [r["name"] for r in st["replicas"]] == ["iso-1"]
    remove(server, "iso")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             what="the sandbox stopped")


def test_sandboxes_stop_with_the_runner(tmp_path, bundle):
    from conftest import Server
    s = Server(tmp_path / "data").start()
    launched, _ = launch(s, "bye", bundle)
    s.stop()
    assert not os.path.exists(f"/proc/{launched['pid']}")


@pytest.mark.parametrize("bundle_dir,why", [
    ("relative/dir", "absolute"),
    ("/nonexistent-bundle", "cannot measure"),
])
def test_bad_launches_are_refused(server, bundle_dir, why):
    """Refused by the API's schema, or by the runner, whose reason the Enclave's status carries."""
    r = server.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "bad", {"bundle": bundle_dir})]})
    if r.status_code == 400:
        assert why in r.json()["error"]["message"], r.text
        return
    assert r.status_code == 200, r.text
    st = wait_for(lambda: (lambda s: s if why in (s or {}).get("lastEvent", "") else None)(enclave_status(server, "bad")),
                  what=f"{why!r} in the status")
    assert st["ready"] == 0


def test_bad_evidence_requests_are_refused(server, bundle):
    launch(server, "scorer", bundle)
    status, ans = ask(server, "scorer-1", {"nonce": "zz"})
    assert status == 400 and "hex" in ans["error"]["message"]


def test_symlinked_bundles_are_refused(server, bundle):
    os.symlink("/etc/shadow", bundle / "shadow")
    r = server.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "scorer", {"bundle": str(bundle)})]})
    assert r.status_code == 200, r.text
    st = wait_for(lambda: (lambda s: s if "symbolic links" in (s or {}).get("lastEvent", "") else None)(
        enclave_status(server, "scorer")), what="the refusal in the status")
    assert st["ready"] == 0
