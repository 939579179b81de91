"""Allow-only egress of an Enclave (docs/enclaves.md "Egress"), against the
real cloisterd: a workload inside the sandbox reaches only what
spec.egress lists, through the agent's CONNECT proxy (HTTPS_PROXY) and the
runner, which resolves names itself, refuses private and loopback addresses
unless the entry names the address, checks the TLS ClientHello's server name
and audits every decision. Nothing else leaves the sandbox: its own
loopback only, and raw or packet sockets are refused by its seccomp filter.

The workload (PROBE, python3) runs the probes the test writes into its
bundle and prints each result as one line `EGRESS {json}` on stdout, which
the runner keeps in <runner_dir>/<replica>.log."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import audited, run_cli
from echo_upstream import EchoUpstream
from test_enclaves import APP, apply, bundle, enclave, wait_for  # noqa: F401 (bundle: a fixture)

PROBE = r'''
import errno, json, os, socket, ssl, sys

proxy = os.environ.get("HTTPS_PROXY", "")


def report(name, **result):
    print("EGRESS " + json.dumps({"probe": name, **result}), flush=True)


def connect(target):
    """A CONNECT through the agent's proxy: the socket and the status line."""
    host, port = proxy.rsplit("/", 1)[1].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    line, _, rest = head.partition(b"\r\n")
    return s, line.decode(errors="replace"), rest.partition(b"\r\n\r\n")[2]


def read_all(s):
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (OSError, ssl.SSLError) as e:
        out += f"<{type(e).__name__}>".encode()
    return out


def http_get(s, path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n".encode())
    return read_all(s).decode(errors="replace")


report("env", proxy=proxy, no_proxy=os.environ.get("NO_PROXY", ""))
for p in json.load(open("/app/plan.json")):
    kind, name = p["kind"], p["name"]
    try:
        if kind == "http":
            s, status, rest = connect(p["target"])
            answer = http_get(s, p["path"]) if " 200 " in status else rest.decode(errors="replace")
            report(name, status=status, answer=answer)
        elif kind == "tls":
            s, status, _ = connect(p["target"])
            if " 200 " not in status:
                report(name, status=status)
                continue
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                t = ctx.wrap_socket(s, server_hostname=p["server_hostname"])
                report(name, status=status, handshake="ok", answer=http_get(t, p["path"]))
            except (OSError, ssl.SSLError) as e:
                report(name, status=status, handshake=type(e).__name__)
        elif kind == "direct":
            try:
                socket.create_connection(tuple(p["address"]), timeout=5)
                report(name, result="connected")
            except OSError as e:
                report(name, result=errno.errorcode.get(e.errno, str(e.errno)))
        elif kind == "raw":
            out = {}
            for label, family, type_, proto in [("inet_raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                                                ("packet", socket.AF_PACKET, socket.SOCK_RAW, 0x0300)]:
                try:
                    socket.socket(family, type_, proto).close()
                    out[label] = "created"
                except OSError as e:
                    out[label] = errno.errorcode.get(e.errno, str(e.errno))
            report(name, **out)
    except Exception as e:
        report(name, error=f"{type(e).__name__}: {e}")
report("done")
'''


class CountingListener:
    """A TCP listener on loopback that only counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def tls_cert(tmp_path):
    cert, key = tmp_path / "up.pem", tmp_path / "up.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def results(server, replica, timeout=60):
    """The probes' results once the workload printed them all."""
    log = server.data_dir / "runner" / f"{replica}.log"

    def done():
        text = log.read_text() if log.exists() else ""
        lines = [json.loads(l.split("EGRESS ", 1)[1]) for l in text.splitlines() if "EGRESS " in l]
        return {r["probe"]: r for r in lines} if any(r["probe"] == "done" for r in lines) else None
    return wait_for(done, timeout=timeout, what=f"the probes' results in {log}")


def egress_entry(server, pred):
    return audited(server, "enclave.egress", lambda e: e["resource"]["name"] == "egress" and pred(e["details"]))[0]


def test_egress_is_allow_only(server, tmp_path, tls_cert):
    echo = EchoUpstream()
    echo_port = echo.start()
    tls_echo = EchoUpstream(tls=True, cert=tls_cert[0], key=tls_cert[1])
    tls_port = tls_echo.start()
    unlisted, sni_target = CountingListener(), CountingListener()
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "probe.py"]\nport: 8080\n')
    (b / "probe.py").write_text(PROBE + "\n" + APP)
    plan = [
        {"kind": "http", "name": "allowed", "target": f"127.0.0.1:{echo_port}", "path": "/through-the-tunnel"},
        {"kind": "http", "name": "unlisted", "target": f"127.0.0.1:{unlisted.port}", "path": "/"},
        {"kind": "http", "name": "private-name", "target": f"localhost:{echo_port}", "path": "/"},
        {"kind": "tls", "name": "tls-allowed", "target": f"127.0.0.1:{tls_port}", "server_hostname": "127.0.0.1",
         "path": "/over-tls"},
        {"kind": "tls", "name": "sni-mismatch", "target": f"127.0.0.1:{sni_target.port}",
         "server_hostname": "wrong.example", "path": "/"},
        {"kind": "direct", "name": "direct", "address": ["127.0.0.1", echo_port]},
        {"kind": "raw", "name": "raw"},
    ]
    (b / "plan.json").write_text(json.dumps(plan))
    for f in b.iterdir():
        os.chmod(f, 0o644)
    os.chmod(b, 0o755)
    try:
        apply(server, enclave("egress", b, egress=[
            {"host": "127.0.0.1", "port": echo_port},
            {"host": "localhost", "port": echo_port},
            {"host": "127.0.0.1", "port": tls_port, "tls": True},
            {"host": "127.0.0.1", "port": sni_target.port, "tls": True},
        ]))
        got = results(server, "egress-1")
        assert got["env"]["proxy"].startswith("http://127.0.0.1:"), got["env"]
        assert "localhost" in got["env"]["no_proxy"]

        # an address listed literally is reached through the proxy
        assert " 200 " in got["allowed"]["status"], got["allowed"]
        assert "/through-the-tunnel" in got["allowed"]["answer"], got["allowed"]
        assert any(r["target"] == "/through-the-tunnel" for r in echo.requests)
        e = egress_entry(server, lambda d: d["port"] == echo_port and d["host"] == "127.0.0.1")
        assert e["outcome"] == "success" and e["details"]["address"] == "127.0.0.1"
        assert e["details"]["replica"] == "egress-1" and e["details"]["enclave"] == "egress"

        # a destination not listed is refused, audited, and never sees a connection
        assert " 403 " in got["unlisted"]["status"], got["unlisted"]
        e = egress_entry(server, lambda d: d["port"] == unlisted.port)
        assert e["outcome"] == "denied" and "not in the egress list" in e["details"]["reason"]
        assert unlisted.accepted == 0

        # a name that resolves to a loopback address is refused
        assert " 403 " in got["private-name"]["status"], got["private-name"]
        assert "loopback" in got["private-name"]["answer"]
        e = egress_entry(server, lambda d: d["host"] == "localhost")
        assert e["outcome"] == "denied" and "loopback" in e["details"]["reason"]
        assert e["details"]["address"] in ("127.0.0.1", "::1")

        # TLS to an address entry: no server name, the handshake goes through
        assert got["tls-allowed"].get("handshake") == "ok", got["tls-allowed"]
        assert "/over-tls" in got["tls-allowed"]["answer"]

        # a ClientHello naming another server is closed before any connection
        assert " 200 " in got["sni-mismatch"]["status"] and got["sni-mismatch"]["handshake"] != "ok", \
            got["sni-mismatch"]
        e = egress_entry(server, lambda d: d["port"] == sni_target.port)
        assert e["outcome"] == "denied" and "wrong.example" in e["details"]["reason"], e
        assert sni_target.accepted == 0

        # nothing else leaves: the sandbox's loopback is its own, raw and packet sockets are refused
        assert got["direct"]["result"] == "ECONNREFUSED", got["direct"]
        assert got["raw"] == {"probe": "raw", "inet_raw": "EPERM", "packet": "EPERM"}, got["raw"]
        assert (server.data_dir / "runner" / "egress-1" / "egress.sock").exists()

        # the CLI shows the decisions
        p = run_cli(server, "audit", "show", "--action", "enclave.egress", "-o", "json",
                    env_extra={"CLOISTER_TOKEN": server.token})
        assert p.returncode == 0, p.stderr
        shown = json.loads(p.stdout)
        assert {(e["details"]["port"], e["outcome"]) for e in shown} >= {
            (echo_port, "success"), (unlisted.port, "denied"), (echo_port, "denied"), (sni_target.port, "denied"),
            (tls_port, "success")}, shown
        assert all(e["appender"] == "runner" and e["actor"]["user"] == "system:runner" for e in shown), shown
    finally:
        echo.stop()
        tls_echo.stop()
        unlisted.close()
        sni_target.close()


def test_without_egress_there_is_no_proxy(server, bundle):
    """An Enclave without egress gets no egress socket and no proxy variables."""
    (bundle / "app.py").write_text("import os\nprint('EGRESS-ENV', os.environ.get('HTTPS_PROXY'), "
                                   "os.path.exists('/run/cloister/egress.sock'), flush=True)\n" + APP)
    apply(server, enclave("closed", bundle))
    log = server.data_dir / "runner" / "closed-1.log"
    line = wait_for(lambda: next((l for l in (log.read_text() if log.exists() else "").splitlines()
                                  if "EGRESS-ENV" in l), None), what="the workload's environment line")
    assert line.endswith("EGRESS-ENV None False"), line
    assert not (server.data_dir / "runner" / "closed-1" / "egress.sock").exists()


def test_egress_entries_are_validated(server, bundle):
    for bad in [{"host": "bad host", "port": 443}, {"host": "example.com", "port": 0},
                {"host": "example.com", "port": 70000}, {"host": "[::1]", "port": 443},
                {"host": "example.com", "port": 443, "tls": "yes"}, {"host": "example.com"}]:
        r = server.request("POST", "/v1/apply", json={"items": [enclave("bad", bundle, egress=[bad])]})
        assert r.status_code == 400, (bad, r.text)
    r = server.request("POST", "/v1/apply", json={"items": [enclave("bad", bundle, egress=[
        {"host": "example.com", "port": 443 + i} for i in range(33)])]})
    assert r.status_code == 400 and "32" in r.text, r.text
