"""cloisterd as an operator sees it: first start, restart, role supervision,
SIGTERM, and durability of acknowledged writes across kill -9."""
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

from conftest import Server, manifest


def test_first_start_creates_ca_token_and_keys(server):
    d = server.data_dir
    assert (d / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert os.stat(d / "admin.token").st_mode & 0o777 == 0o600
    assert os.stat(d / "ca.key").st_mode & 0o777 == 0o600
    # root's start: others may pass through to their role's subtree, not list it
    assert os.stat(d).st_mode & 0o777 == (0o711 if os.geteuid() == 0 else 0o700)
    assert os.stat(d / "ca.key").st_uid == 0 and os.stat(d / "admin.token").st_uid == os.geteuid()
    assert server.token.startswith("clst_") and len(server.token) == 48


def test_restart_keeps_token_and_data(tmp_path):
    s = Server(tmp_path / "data").start()
    token = s.token
    assert s.request("POST", "/v1/groups", json=manifest("Group", "kept", {})).status_code == 201
    s.stop()
    s.start()
    try:
        assert s.token == token
        assert s.request("GET", "/v1/groups/kept").status_code == 200
    finally:
        s.stop()


def test_lost_token_file_is_replaced_and_old_token_revoked(tmp_path):
    s = Server(tmp_path / "data").start()
    old = s.token
    s.stop()
    (s.data_dir / "admin.token").unlink()
    s.start()
    try:
        assert s.token != old
        assert s.request("GET", "/v1/whoami", token=old).status_code == 401
        assert s.request("GET", "/v1/whoami").status_code == 200
    finally:
        s.stop()


def test_each_role_is_titled_by_its_name(server):
    """ps names each role as relayd and sshd do ("cloisterd: kms"); /proc/PID/comm keeps the short name
    (role_pid finds the roles by it) and the supervisor keeps its command line."""
    for role in ("api", "proxy", "kms", "audit", "runner"):
        pid = server.role_pid(role)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline.rstrip(b"\0") == f"cloisterd: {role}".encode(), cmdline[:80]
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=True)
        assert ps.stdout.strip() == f"cloisterd: {role}"
    supervisor = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert supervisor[0].endswith(b"/cloisterd") and b"--dev" in supervisor


def test_sigterm_exits_zero(server):
    assert server.stop() == 0


def test_a_dead_role_is_restarted(server):
    pid = server.role_pid("api")
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if server.role_pid("api") != pid:
                break
        except AssertionError:
            pass
        time.sleep(0.1)
    server.wait_healthy()
    assert server.request("GET", "/v1/whoami").status_code == 200
    assert '"role died; restarting"' in server.read_log()


def test_bad_flags_are_usage_errors(tmp_path):
    import subprocess
    from conftest import CLOISTERD
    for args in (["--dev", "--api-listen", "nope"], ["--dev", "--bogus"], []):
        r = subprocess.run([str(CLOISTERD), *args, "--data-dir", str(tmp_path / "d")], capture_output=True, text=True)
        assert r.returncode == 2, args
        assert "usage" in r.stderr or "HOST:PORT" in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket
    import subprocess
    from conftest import CLOISTERD
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        p = subprocess.Popen([str(CLOISTERD), "--dev", "--data-dir", str(tmp_path / "d"), "--api-listen",
                              f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
        assert "cannot listen" in err and "Address already in use" in err


def write_until_stopped(server, prefix, acked, stop):
    """Creates groups one after another, recording each acknowledged name."""
    session = requests.Session()  # keep-alive; verify is passed per request, as an
    session.headers["Authorization"] = f"Bearer {server.token}"  # env CA bundle would override Session.verify
    i = 0
    while not stop.is_set():
        name = f"{prefix}-{i}"
        try:
            r = session.post(server.url + "/v1/groups", json=manifest("Group", name, {}), timeout=5, verify=server.ca)
            if r.status_code == 201:
                acked.append(name)
                i += 1
            elif r.status_code == 409:  # landed before the crash, answer lost
                i += 1
        except requests.RequestException:
            time.sleep(0.05)


def assert_all_present(server, acked):
    names = {i["metadata"]["name"] for i in server.request("GET", "/v1/groups").json()["items"]}
    missing = [n for n in acked if n not in names]
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"


def test_acknowledged_writes_survive_kill9_of_the_api_role(server):
    acked, stop = [], threading.Event()
    writers = [threading.Thread(target=write_until_stopped, args=(server, f"w{k}", acked, stop)) for k in range(4)]
    for t in writers:
        t.start()
    time.sleep(1.5)
    os.kill(server.role_pid("api"), signal.SIGKILL)
    time.sleep(1.5)
    server.wait_healthy()
    time.sleep(1.0)
    stop.set()
    for t in writers:
        t.join()
    assert len(acked) > 20
    assert_all_present(server, acked)


def test_acknowledged_writes_survive_kill9_of_everything(tmp_path):
    s = Server(tmp_path / "data").start()
    acked, stop = [], threading.Event()
    writers = [threading.Thread(target=write_until_stopped, args=(s, f"x{k}", acked, stop)) for k in range(4)]
    for t in writers:
        t.start()
    time.sleep(2)
    s.kill9()
    stop.set()
    for t in writers:
        t.join()
    assert len(acked) > 20
    s.start()
    try:
        assert_all_present(s, acked)
    finally:
        s.stop()


def test_sigterm_with_idle_keep_alive_connections_exits_cleanly(server):
    """Idle HTTP/1.1 and HTTP/2 connections must not hold up or crash the shutdown."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=server.ca)
    conns = []
    for proto in (["http/1.1"], ["h2"]):
        ctx.set_alpn_protocols(proto)
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="localhost")
        conns.append(c)
    conns[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"200 OK" in conns[0].recv(4096)
    started = time.time()
    assert server.stop() == 0
    assert time.time() - started < 10
    for c in conns:
        c.close()


def test_disabling_the_user_takes_effect_on_the_next_request(server):
    assert server.request("GET", "/v1/whoami").status_code == 200  # warm any cache
    r = server.request("PUT", "/v1/users/admin", json=manifest("User", "admin", {"groups": ["admins"], "disabled": True}))
    assert r.status_code == 200
    r = server.request("GET", "/v1/whoami")
    assert r.status_code == 403 and "disabled" in r.json()["error"]["message"]


def test_deleting_the_credential_revokes_its_token_at_once(server):
    assert server.request("GET", "/v1/whoami").status_code == 200
    assert server.request("DELETE", "/v1/credentials/admin-bootstrap").status_code == 200
    r = server.request("GET", "/v1/whoami")
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
