"""Peers checked on every local socket (issue 14, item 3): kms.sock answers
only the api and runner roles, audit.sock only the roles that emit events
(and only the api reads), runner.sock only the api role; any other process,
of another uid or of the daemon's own, gets its connection closed before a
byte is read. The audit role stamps each entry with the appending role and
its own receive time, and refuses an entry its role may not append: shown
with the proxy's own connection to audit.sock, taken with pidfd_getfd(2) as
a compromised proxy would use it."""
import base64
import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from conftest import access_records, run_cli
from test_audit import all_entries, wait_for

SOCKETS = ("kms.sock", "audit.sock", "runner.sock")
REQUESTS = {
    "kms.sock": b'POST /v1/decrypt HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\n'
                b'Content-Length: 2\r\n\r\n{}',
    "audit.sock": b'GET /v1/checkpoint HTTP/1.1\r\nHost: audit\r\n\r\n',
    "runner.sock": b'GET /v1/sandboxes HTTP/1.1\r\nHost: runner\r\n\r\n',
}
FORGED = {"time": "2020-01-01T00:00:00.000Z", "action": "resource.delete",
          "actor": {"user": "admin", "session": None, "ip": "127.0.0.1"},
          "resource": {"kind": "Group", "name": "forged-by-a-peer"}, "outcome": "success", "details": {}}

# Runs as the peer: connects, sends the request, prints what came back as JSON
# ({"connect": errno name or null, "answer": bytes read as text}).
CLIENT = r"""
import json, socket, sys
path, data = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
out = {"connect": None, "answer": ""}
try:
    s.connect(path)
except OSError as e:
    out["connect"] = type(e).__name__
else:
    got = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    out["answer"] = got.decode(errors="replace")
print(json.dumps(out))
"""


def peer_exchange(path, data, prefix=()):
    p = subprocess.run([*prefix, sys.executable, "-c", CLIENT, str(path), data.decode()], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def refusals(server, since):
    """The 'refused a local peer' log lines written after offset SINCE, as dicts."""
    out = []
    for line in server.read_log()[since:].splitlines():
        if '"refused a local peer"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def checkpoint_size(server):
    return server.request("GET", "/v1/audit/checkpoint").json()["size"]


def verify(server):
    p = run_cli(server, "audit", "verify", env_extra={"CLOISTER_TOKEN": server.token})
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def peers_server(shared_server):
    # the log settles (start-up events delivered) before sizes are compared
    wait_for(lambda: any(e["action"] == "kms.unseal" for e in all_entries(shared_server)))
    return shared_server


@pytest.mark.parametrize("name", SOCKETS)
def test_a_process_of_the_daemons_uid_gets_nothing(peers_server, name):
    """The test itself runs as the daemon's uid (root in CI) but is no role:
    connected, its request is never read and never answered."""
    s = peers_server
    size, since = checkpoint_size(s), len(s.read_log())
    forged = json.dumps({"entries": [FORGED]}).encode()
    data = REQUESTS[name] if name != "audit.sock" else (
        b"POST /v1/append HTTP/1.1\r\nHost: audit\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(forged) + forged)
    got = peer_exchange(s.data_dir / "run" / name, data)
    assert got == {"connect": None, "answer": ""}, got
    seen = wait_for(lambda: refusals(s, since))
    mine = [r for r in seen if r["socket"] == name]
    assert mine and all(r["uid"] == str(os.getuid()) and r["reason"] == "not a process of this daemon's roles"
                        for r in mine), seen
    # the forged entry is nowhere, and the log still verifies
    assert checkpoint_size(s) == size
    assert not any(e["resource"]["name"] == "forged-by-a-peer" for e in all_entries(s))
    verify(s)


@pytest.mark.parametrize("name", SOCKETS)
def test_a_process_of_another_uid_gets_nothing(peers_server, name):
    """As nobody: started as root, the roles are users of their own and
    their sockets are open to every uid, so the peer check refuses it;
    started as an ordinary user, the 0700 run dir does. And as nobody
    holding CAP_DAC_OVERRIDE (past the file modes), the peer check does."""
    s = peers_server
    path = s.data_dir / "run" / name
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    got = peer_exchange(path, REQUESTS[name], nobody)
    if os.geteuid() == 0:
        assert got == {"connect": None, "answer": ""}, got
    else:
        assert got["connect"] == "PermissionError" and got["answer"] == "", got
    since = len(s.read_log())
    got = peer_exchange(path, REQUESTS[name], nobody + ("--inh-caps=+dac_override", "--ambient-caps=+dac_override"))
    assert got == {"connect": None, "answer": ""}, got
    seen = wait_for(lambda: [r for r in refusals(s, since) if r["uid"] == "65534"])
    assert seen[0]["reason"] == "not a process of this daemon's roles" and int(seen[0]["pid"]) > 0, seen


def test_the_unseal_socket_serves_only_status_and_unseal(peers_server):
    """`cloisterd unseal` is no role: it has a socket of its own (mode 0600,
    the daemon's uid), which serves nothing but status and unseal."""
    s = peers_server
    path = s.data_dir / "run" / "kms-unseal.sock"
    status = peer_exchange(path, b"POST /v1/status HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")
    assert status["answer"].startswith("HTTP/1.1 200") and '"sealed":false' in status["answer"], status
    decrypt = peer_exchange(path, b"POST /v1/decrypt HTTP/1.1\r\nHost: kms\r\nConnection: close\r\n"
                                  b"Content-Length: 2\r\n\r\n{}")
    assert decrypt["answer"].startswith("HTTP/1.1 403") and "only /v1/status and /v1/unseal" in decrypt["answer"]


def test_entries_carry_the_appending_role_and_the_audit_roles_time(peers_server):
    s = peers_server
    before = time.time()
    assert s.request("POST", "/v1/groups", json={"apiVersion": "cloister.dev/v1", "kind": "Group",
                                                  "metadata": {"name": "appender-probe"}, "spec": {}}).status_code == 201
    proxy_port = int(s.extra_args[s.extra_args.index("--proxy-listen") + 1].rsplit(":", 1)[1])
    requests.get(f"https://127.0.0.1:{proxy_port}/appender-probe", headers={"Host": "nothing.localhost"},
                 verify=s.ca, timeout=10)

    def found():
        es = all_entries(s)
        write = [e for e in es if e["action"] == "resource.create" and e["resource"]["name"] == "appender-probe"]
        access = [e for (e, rec) in access_records(s) if rec["path"] == "/appender-probe"]
        return (write, access) if write and access else None
    write, access = wait_for(found)
    assert write[0]["appender"] == "api" and access[0]["appender"] == "proxy"
    unseal = next(e for e in all_entries(s) if e["action"] == "kms.unseal")
    assert unseal["appender"] == "kms"
    for e in (write[0], access[0]):
        # the audit role's receive time, at or after the emitter's own
        assert e["time"] >= e["client_time"] and e["time"].endswith("Z")
        assert time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1)) <= e["time"]
    verify(s)


# ---- a compromised proxy, on its own connection to audit.sock ----

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438


def steal_audit_connection(server, role, name="audit.sock"):
    """A duplicate of ROLE's connected socket to the audit role's socket NAME
    (audit.sock, or segments.sock beside it) with pidfd_getfd, or None."""
    pid = server.role_pid(role)
    pidfd = os.pidfd_open(pid)
    target = os.path.join(os.path.dirname(os.path.realpath(server.data_dir / "run" / "audit.sock")), name)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if mine < 0:
                continue
            sock = socket.socket(fileno=mine)
            try:
                if sock.family == socket.AF_UNIX and sock.getpeername() == target:
                    return sock
            except OSError:
                pass
            sock.close()
    finally:
        os.close(pidfd)
    return None


def http_on(sock, method, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else b""
    sock.settimeout(10)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: audit\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, rest = got.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def test_a_role_cannot_append_what_it_may_not(peers_server):
    s = peers_server
    proxy_port = int(s.extra_args[s.extra_args.index("--proxy-listen") + 1].rsplit(":", 1)[1])
    # the proxy delivers an access entry; its connection to audit.sock stays open (keep-alive)
    requests.get(f"https://127.0.0.1:{proxy_port}/warm-up", headers={"Host": "nothing.localhost"}, verify=s.ca,
                 timeout=10)
    wait_for(lambda: any(rec["path"] == "/warm-up" for (_, rec) in access_records(s)))
    sock = wait_for(lambda: steal_audit_connection(s, "proxy"), timeout=5)
    size, since, started = checkpoint_size(s), len(s.read_log()), time.time()
    allowed = dict(FORGED, action="proxy.access", resource={"kind": "Service", "name": "stamped-probe"},
                   details={"count": 0, "fields": [], "requests": []})
    with sock:
        # an api entry in the batch refuses the whole batch, naming the action and the role
        status, ans = http_on(sock, "POST", "/v1/append", {"entries": [allowed, FORGED]})
        assert status == 403, ans
        assert ans["error"]["message"] == \
            "the proxy role may not append resource.delete entries (entry 1); the batch is refused"
        # nor may the proxy read the log
        status, ans = http_on(sock, "GET", "/v1/checkpoint", None)
        assert status == 403 and "only the api role reads" in ans["error"]["message"]
        # a proxy entry is taken, stamped by the audit role: its back-dated time is only client_time
        status, ans = http_on(sock, "POST", "/v1/append", {"entries": [allowed]})
        assert status == 200 and ans["count"] == 1, ans
    line = next(l for l in s.read_log()[since:].splitlines() if "refused an audit entry" in l)
    assert '"role":"proxy"' in line and '"action":"resource.delete"' in line
    stamped = wait_for(lambda: [e for e in all_entries(s) if e["resource"]["name"] == "stamped-probe"])
    assert stamped[0]["appender"] == "proxy" and stamped[0]["client_time"] == "2020-01-01T00:00:00.000Z"
    assert stamped[0]["time"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))
    assert not any(e["resource"]["name"] == "forged-by-a-peer" for e in all_entries(s))
    assert checkpoint_size(s) >= size + 1
    verify(s)


def probed_segment(s, path):
    """Requests PATH through the proxy; (the segment whose head commits its record, the audit role's copy)."""
    proxy_port = int(s.extra_args[s.extra_args.index("--proxy-listen") + 1].rsplit(":", 1)[1])
    requests.get(f"https://127.0.0.1:{proxy_port}{path}", headers={"Host": "nothing.localhost"}, verify=s.ca,
                 timeout=10)
    (entry, _) = wait_for(lambda: next(((e, r) for (e, r) in access_records(s) if r["path"] == path), None))
    segment = entry["details"]["segment"]
    return segment, (s.data_dir / "audit" / "access" / segment).read_bytes()


def test_only_the_proxy_writes_segments_in_order_and_only_the_api_reads_them(peers_server):
    """audit.sock's /v1/segment: the proxy's access-log segment bytes, stored by
    the audit role in its own subtree; bytes arrive in order (a gap is 409, a
    retry of the bytes the copy ends with is taken again, other bytes at a
    stored offset are 409), ids are file names, the api role alone reads them
    and no other role writes them."""
    s = peers_server
    (segment, stored) = probed_segment(s, "/segment-probe")
    proxy_sock = wait_for(lambda: steal_audit_connection(s, "proxy"), timeout=5)
    with proxy_sock:
        # the bytes its copy ends with, sent again (a retried delivery): taken, nothing changes
        tail = len(stored) - 100
        status, ans = http_on(proxy_sock, "POST", f"/v1/segment?id={segment}&offset={tail}", None, raw=stored[tail:])
        assert status == 200 and ans["size"] == len(stored), ans
        # bytes it has but not where the copy ends, or other bytes at an offset it holds: refused
        status, ans = http_on(proxy_sock, "POST", f"/v1/segment?id={segment}&offset=0", None, raw=stored[:100])
        assert status == 409 and "other bytes" in ans["error"]["message"], ans
        other = bytes([stored[tail] ^ 1]) + stored[tail + 1:]
        status, ans = http_on(proxy_sock, "POST", f"/v1/segment?id={segment}&offset={tail}", None, raw=other)
        assert status == 409 and "other bytes" in ans["error"]["message"], ans
        # a gap: refused
        status, ans = http_on(proxy_sock, "POST", "/v1/segment?id=fresh-probe&offset=10", None, raw=b"x\n")
        assert status == 409 and "in order" in ans["error"]["message"], ans
        # an id that is not a file name
        status, ans = http_on(proxy_sock, "POST", "/v1/segment?id=../audit.db&offset=0", None, raw=b"x\n")
        assert status == 400, ans
        # the proxy does not read them back
        status, ans = http_on(proxy_sock, "GET", f"/v1/segment?id={segment}", None)
        assert status == 403 and "only the api role reads" in ans["error"]["message"]
    assert (s.data_dir / "audit" / "access" / segment).read_bytes().startswith(stored)
    assert not (s.data_dir / "audit" / "access" / "fresh-probe").exists()
    # the api role's connections to audit.sock come and go (one per worker, closed when idle): a fresh one
    for attempt in range(5):
        s.request("GET", "/v1/audit/checkpoint")
        api_sock = wait_for(lambda: steal_audit_connection(s, "api"), timeout=5)
        try:
            with api_sock:
                status, ans = http_on(api_sock, "POST", f"/v1/segment?id={segment}&offset={len(stored)}", None,
                                      raw=b"x\n")
                assert status == 403 and "only the proxy role writes" in ans["error"]["message"], ans
                status, ans = http_on(api_sock, "GET", f"/v1/segment?id={segment}", None)
                assert status == 200 and base64.b64decode(ans["data"]).startswith(stored), ans
            break
        except (BrokenPipeError, ConnectionResetError):
            assert attempt < 4, "no open connection of the api role to audit.sock"
    verify(s)


def spool_exchange(sock, message, fds):
    """Sends MESSAGE with descriptors FDS on a spool channel connection; the answer (status, text)."""
    sock.settimeout(10)
    socket.send_fds(sock, [message.encode()], fds)
    status, _, text = sock.recv(512).decode().partition(" ")
    return int(status), text


def test_the_spool_channel_copies_the_bytes_a_proxy_file_holds_and_takes_only_the_proxy(peers_server, tmp_path):
    """segments.sock, beside audit.sock: the proxy hands over its spool file's
    descriptor with "id=&offset=&length=" and the audit role copies those
    bytes into its own copy, by the same rules as POST /v1/segment (a retry
    of the bytes the copy ends with is taken, other bytes are 409, a gap is
    409); a descriptor that is not a regular file, a file that ends before
    the bytes named, a message without a descriptor or with another syntax
    are 400; a process that is no role is refused at connect."""
    s = peers_server
    (segment, stored) = probed_segment(s, "/spool-probe")
    same, other = tmp_path / "same", tmp_path / "other"
    same.write_bytes(stored)
    other.write_bytes(stored[:-2] + bytes([stored[-2] ^ 1]) + stored[-1:])
    tail = len(stored) - 100
    proxy_sock = wait_for(lambda: steal_audit_connection(s, "proxy", "segments.sock"), timeout=10)
    r, w = os.pipe()
    try:
        with proxy_sock, open(same, "rb") as f_same, open(other, "rb") as f_other:
            assert spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=100", [f_same.fileno()]) == \
                (200, str(len(stored)))
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset=0&length=100", [f_same.fileno()])
            assert status == 409 and "other bytes" in text, text
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=100", [f_other.fileno()])
            assert status == 409 and "other bytes" in text, text
            status, text = spool_exchange(proxy_sock, "id=fresh-spool&offset=10&length=2", [f_same.fileno()])
            assert status == 409 and "in order" in text, text
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=100", [r])
            assert status == 400 and "regular file" in text, text
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=101", [f_same.fileno()])
            assert status == 400 and "ends before" in text, text
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=100", [])
            assert status == 400, text
            status, text = spool_exchange(proxy_sock, "id=../audit.db&offset=0&length=1", [f_same.fileno()])
            assert status == 400 and "expected id=" in text, text
            status, text = spool_exchange(proxy_sock, f"id={segment}&offset={tail}&length=2097152",
                                          [f_same.fileno()])
            assert status == 413, text
    finally:
        os.close(r)
        os.close(w)
    assert (s.data_dir / "audit" / "access" / segment).read_bytes().startswith(stored)
    assert not (s.data_dir / "audit" / "access" / "fresh-spool").exists()
    # the test is no role: connected, then refused
    since = len(s.read_log())
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as mine, open(same, "rb") as f_same:
        mine.connect(str(s.data_dir / "run" / "audit" / "segments.sock"))
        mine.settimeout(10)
        try:
            socket.send_fds(mine, [f"id={segment}&offset={tail}&length=100".encode()], [f_same.fileno()])
            assert mine.recv(512) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
    seen = wait_for(lambda: [r for r in refusals(s, since) if r["socket"] == "segments.sock"])
    assert seen[0]["reason"] == "not a process of this daemon's roles", seen
    verify(s)
