"""Egress to a DNS-named entry with `tls: true` (docs/enclaves.md "Egress"):
the runner resolves the name itself, and a tunnel whose TLS ClientHello
names another server is closed before any connection leaves; the literal-
address cases are in test_enclave_egress.py.

No DNS reaches the test machine, and a name must resolve to a public address
to pass the runner's address checks: the daemon runs in a mount namespace of
its own where /etc/hosts maps the entry's name to a public address (which
no connection is ever made to: the mismatch closes the tunnel first)."""
import json
import os

import pytest

from conftest import Server
from test_enclave_egress import PROBE, egress_entry, results
from test_enclaves import APP, apply, enclave

NAME = "api.example.com"
ADDRESS = "1.2.3.4"  # public, so the name passes the address checks; never connected to


@pytest.fixture
def hosts_server(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{ADDRESS} {NAME}\n")
    os.chmod(hosts, 0o644)
    s = Server(tmp_path / "data", prefix=["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                          f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh"]).start()
    yield s
    s.stop()


def test_a_clienthello_naming_another_server_than_the_dns_entry_is_closed(hosts_server, tmp_path):
    s = hosts_server
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "probe.py"]\nport: 8080\n')
    (b / "probe.py").write_text(PROBE + "\n" + APP)
    plan = [
        {"kind": "tls", "name": "sni-mismatch", "target": f"{NAME}:443", "server_hostname": "evil.example.net",
         "path": "/"},
        {"kind": "tls", "name": "sni-missing", "target": f"{NAME}:443", "server_hostname": None, "path": "/"},
    ]
    (b / "plan.json").write_text(json.dumps(plan))
    for f in b.iterdir():
        os.chmod(f, 0o644)
    os.chmod(b, 0o755)
    apply(s, enclave("egress", b, egress=[{"host": NAME, "port": 443, "tls": True}]))
    got = results(s, "egress-1")

    # the name resolved to an address that may be reached: the tunnel was
    # answered, then closed on the ClientHello, before any connection
    for probe, reason in (("sni-mismatch", "the ClientHello names another server: evil.example.net"),
                          ("sni-missing", "the ClientHello names no server")):
        assert " 200 " in got[probe]["status"] and got[probe].get("handshake") not in (None, "ok"), got[probe]
        e = egress_entry(s, lambda d, r=reason: d["host"] == NAME and d["reason"] == r)
        assert e["outcome"] == "denied" and e["details"]["address"] == ADDRESS, e
        assert e["details"]["port"] == 443 and e["details"]["replica"] == "egress-1", e
