"""Resource caps and a truthful health check (issue 13, findings 10 and 11),
written as the attacker's steps: a read-only user who opens watch streams
until the API runs out of memory, a client that never reads its stream, a
flood of connections, a proxy cut off from its configuration and a sealed KMS
that /healthz (now /readyz) used to call ok, and /metrics read without a credential. Each
is refused or reported, and the legitimate use beside it keeps working."""
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import CLOISTER, CLOISTERD, Server, manifest, run_cli
from test_enclaves import wait_for

PER_USER = 16  # API_SSE_PER_USER_MAX
NOFILE = 192   # the descriptor limit the capped daemon runs under
RESERVED = 64  # HTTPD_FDS_RESERVED
PASSPHRASE = "limits test passphrase 7"


def rule(match):
    return {"effect": "allow", "priority": 0, "condition": {"match": match}}


def user_with(s, name, match):
    """A workload user whose one policy allows MATCH, and a token of theirs."""
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", f"{name}-policy", {"rules": [rule(match)]}),
        manifest("User", name, {"type": "workload", "policies": [f"{name}-policy"]}),
        manifest("Credential", f"{name}-cli", {"user": name, "type": "authToken"})]})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/tokens", json={"credential": f"{name}-cli"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def metric(s, name):
    text = s.request("GET", "/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Watch:
    """A watch stream read line by line (HTTP/1.1 through requests)."""

    def __init__(self, s, path, token):
        self.r = requests.get(s.url + path, headers={"Authorization": f"Bearer {token}"}, verify=s.ca, stream=True,
                              timeout=20)
        self.lines = self.r.iter_lines(decode_unicode=True) if self.r.status_code == 200 else None

    def wait_line(self, predicate):
        for line in self.lines:
            if predicate(line):
                return line
        raise AssertionError("the stream ended")

    def close(self):
        self.r.close()


@pytest.fixture(scope="module")
def tenant(shared_server):
    s = shared_server
    return {
        # the attacker: may only watch Services
        "watcher": user_with(s, "watcher", 'ctx.request.api.verb == "watch" && ctx.request.api.kind == "Service"'),
        "bystander": user_with(s, "bystander", 'ctx.request.api.verb == "watch"'),
        "scraper": user_with(s, "scraper", 'ctx.request.api.verb == "get" && ctx.request.api.kind == "Metrics"'),
    }


def test_a_user_gets_at_most_16_streams_and_a_closed_one_frees_its_slot(shared_server, tenant):
    s, tok = shared_server, tenant["watcher"]
    streams = [Watch(s, "/v1/services?watch=1", tok) for _ in range(PER_USER)]
    try:
        for w in streams:
            assert w.r.status_code == 200
            w.wait_line(lambda l: l == ": watching")
        # the 17th is refused, naming the cap
        r = s.request("GET", "/v1/services?watch=1", token=tok, stream=True)
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "too_many_streams" and "user watcher already has 16 streams open" in err["message"]
        # another user is not affected
        other = Watch(s, "/v1/services?watch=1", tenant["bystander"])
        assert other.r.status_code == 200
        other.close()
        # the 16 keep streaming
        assert s.request("POST", "/v1/services", json=manifest(
            "Service", "caps-a", {"upstream": {"url": "http://127.0.0.1:9"}})).status_code == 201
        for w in streams:
            w.wait_line(lambda l: l.startswith("data: ") and '"caps-a"' in l)
        # closing one frees a slot once the server sees it gone (at its next write to it)
        streams.pop().close()

        def reopened():
            s.request("POST", "/v1/services", json=manifest(
                "Service", f"caps-{time.monotonic_ns()}", {"upstream": {"url": "http://127.0.0.1:9"}}))
            w = Watch(s, "/v1/services?watch=1", tok)
            if w.r.status_code == 200:
                return w
            assert w.r.status_code == 429
            w.close()
            return None
        streams.append(wait_for(reopened, what="a slot freed by the closed stream"))
        assert metric(s, "cloister_api_streams_open") >= PER_USER
    finally:
        for w in streams:
            w.close()
    # every end path gives the slots back: all 16 open again
    def all_reopen():
        s.request("POST", "/v1/services", json=manifest(
            "Service", f"caps-{time.monotonic_ns()}", {"upstream": {"url": "http://127.0.0.1:9"}}))
        return metric(s, "cloister_api_streams_open") <= 1  # the proxy's own configuration stream
    wait_for(all_reopen, what="the closed streams to be released")
    again = [Watch(s, "/v1/services?watch=1", tok) for _ in range(PER_USER)]
    try:
        assert [w.r.status_code for w in again] == [200] * PER_USER
    finally:
        for w in again:
            w.close()


def test_metrics_need_a_credential_allowed_get_on_metrics(shared_server, tenant):
    s = shared_server
    r = requests.get(s.url + "/metrics", verify=s.ca)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = s.request("GET", "/metrics", token=tenant["watcher"])
    assert r.status_code == 403
    assert r.json()["error"]["message"].startswith("get Metrics by user watcher is denied")
    r = s.request("GET", "/metrics", token=tenant["scraper"])
    assert r.status_code == 200 and "cloister_api_requests_total" in r.text
    # the scrape credential gives nothing else
    assert s.request("GET", "/v1/services", token=tenant["scraper"]).status_code == 403

    # the refusal is an audit entry naming the decision
    def denied():
        size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
        entries = s.request("GET", f"/v1/audit/entries?start={max(0, size - 200)}&end={size}").json()["entries"]
        return any(e["action"] == "api.access" and e["outcome"] == "denied" and e["actor"]["user"] == "watcher"
                   and (e.get("details") or {}).get("api") == {"verb": "get", "kind": "Metrics", "name": ""}
                   for e in (json.loads(x["entry"]) for x in entries))
    wait_for(denied, what="the audit entry of the refused scrape")


def test_docs_scrape_credential_example_runs(shared_server, tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    script = doc.split("<!-- test: metrics-scrape -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    config = tmp_path / "config"
    assert run_cli(shared_server, "login", "--token", shared_server.token, config_home=config).returncode == 0
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), CLOISTER_SERVER=shared_server.url,
               CLOISTER_CA=shared_server.ca, PATH=f"{Path(CLOISTER).parent}:{os.environ['PATH']}")
    env.pop("CLOISTER_TOKEN", None)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^cloister_api_streams_open \d+$", p.stdout, re.M), p.stdout
    assert (tmp_path / "scrape.token").stat().st_mode & 0o777 == 0o600


def test_readyz_names_a_proxy_cut_off_from_its_configuration(shared_server):
    s = shared_server
    r = requests.get(s.url + "/readyz", verify=s.ca)
    assert r.status_code == 200 and r.json()["roles"]["proxy"] == "ready", r.text
    assert metric(s, "cloister_proxy_config_age_seconds") < 10  # a keep-alive every 4 s
    proxy = s.role_pid("proxy")
    os.kill(proxy, signal.SIGSTOP)  # the proxy hears nothing more from the API
    try:
        def stale():
            r = requests.get(s.url + "/readyz", verify=s.ca)
            return r.json() if r.status_code == 503 else None
        body = wait_for(stale, timeout=60, what="/readyz to report the proxy")
        assert body["status"] == "unavailable" and body["roles"]["proxy"] == "stale", body
        assert len(body["problems"]) == 1, body
        assert re.fullmatch(r"proxy: no configuration from the API for (\d+) s", body["problems"][0]), body
        assert int(body["problems"][0].split()[-2]) >= 30
        assert metric(s, "cloister_proxy_config_age_seconds") > 30
        # liveness stays 200: a stale proxy is not restarted for it
        live = requests.get(s.url + "/healthz", verify=s.ca)
        assert live.status_code == 200 and live.json()["roles"]["proxy"] == "stale", live.text
    finally:
        os.kill(proxy, signal.SIGCONT)
    wait_for(lambda: requests.get(s.url + "/readyz", verify=s.ca).status_code == 200, what="the proxy to hear again")


def test_a_slow_reader_is_ended_with_an_error_event(shared_server, tenant):
    """The watcher never reads; the API holds at most 4 MiB for it, then ends
    its stream with an ERROR event instead of growing without bound."""
    s = shared_server
    rev = s.request("GET", "/v1/groups").json()["metadata"]["resourceVersion"]
    ctx = ssl.create_default_context(cafile=s.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the API's send buffers fill
    raw.connect(("127.0.0.1", s.port))
    conn = ctx.wrap_socket(raw, server_hostname="localhost")
    conn.sendall(f"GET /v1/groups?watch=1&resourceVersion={rev} HTTP/1.1\r\nHost: localhost\r\n"
                 f"Authorization: Bearer {tenant['bystander']}\r\nConnection: close\r\n\r\n".encode())
    try:
        ended = metric(s, "cloister_api_streams_too_slow_total")
        # up to 20 MiB of changes: 64 labels of 253 bytes on each of 1,200 Groups
        labels = {f"l{i}": "x" * 253 for i in range(64)}
        created = 0
        for batch in range(24):
            items = [manifest("Group", f"slow-{batch}-{i}", {}, labels=labels) for i in range(50)]
            assert s.request("POST", "/v1/apply", json={"items": items}).status_code == 200
            created += len(items)
            if metric(s, "cloister_api_streams_too_slow_total") > ended:
                break
        wait_for(lambda: metric(s, "cloister_api_streams_too_slow_total") > ended, what="the stream to be ended")
        # now the client reads: what was in flight, then the ERROR event and the end
        conn.settimeout(30)
        data = b""
        while chunk := conn.recv(1 << 20):
            data += chunk
    finally:
        conn.close()
    text = data.decode(errors="replace")
    assert text.startswith("HTTP/1.1 200")
    m = re.search(r"event: ERROR\ndata: (.*)\n\n", text)
    assert m, text[-2000:]
    assert json.loads(m.group(1))["error"]["code"] == "too_large"
    # what did not fit was dropped, never queued without bound; the server closed (Connection: close)
    assert text.count("event: ADDED") < created


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory):
    """A daemon under a low descriptor limit (a soft limit below it, which
    cloisterd raises), its KMS sealed by passphrase."""
    s = Server(tmp_path_factory.mktemp("capped") / "data", ["--seal", "passphrase"],
               prefix=["prlimit", f"--nofile=100:{NOFILE}", "--"]).start()
    yield s
    s.stop()


def test_readyz_names_a_sealed_kms(capped_server):
    s = capped_server
    r = requests.get(s.url + "/readyz", verify=s.ca)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable" and body["roles"]["kms"] == "sealed", body
    assert body["problems"] == ["kms: sealed (seal passphrase); run cloisterd unseal"]
    assert body["seal"] == {"mode": "passphrase", "sealed": True}, body
    # liveness stays 200: a probe must not restart a daemon waiting for its unseal
    assert requests.get(s.url + "/healthz", verify=s.ca).status_code == 200
    assert {k: v for k, v in body["roles"].items() if k != "kms"} == dict.fromkeys(
        ["api", "audit", "runner", "proxy"], "ready")
    p = subprocess.run([str(CLOISTERD), "unseal", "--data-dir", str(s.data_dir), "--passphrase-fd", "0"],
                       input=PASSPHRASE, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = requests.get(s.url + "/readyz", verify=s.ca)
    assert r.status_code == 200 and r.json() == {
        "status": "ok", "roles": dict.fromkeys(["api", "kms", "audit", "runner", "proxy"], "ready"),
        "seal": {"mode": "passphrase", "sealed": False}, "store": {"driver": "sqlite", "reachable": True},
        "audit": {"reachable": True},
        "replicas": dict.fromkeys(["api", "kms", "audit", "runner", "proxy"], 1), "problems": []}, r.text


def test_the_api_closes_connections_past_its_cap_and_keeps_serving(capped_server):
    s = capped_server
    lines = [json.loads(l) for l in s.read_log().splitlines() if l.startswith('{') and '"API connection cap"' in l]
    assert lines, s.read_log()[-3000:]
    cap = int(lines[-1]["maxConnections"])
    assert cap == NOFILE - RESERVED and lines[-1]["descriptorLimit"] == str(NOFILE)
    assert '"raised the open file limit to its hard limit","from":"100","to":"192"' in s.read_log()

    # a client already connected (HTTP/1.1 keep-alive)
    keeper = requests.Session()
    auth = {"Authorization": f"Bearer {s.token}"}
    assert keeper.get(s.url + "/v1/whoami", headers=auth, verify=s.ca).status_code == 200

    # the flood: more raw TCP connections than the cap
    flood = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(cap + 20)]
    try:
        closed = set()

        def past_cap_closed():
            readable, _, _ = select.select([c for c in flood if c not in closed], [], [], 0.5)
            for c in readable:
                try:
                    if c.recv(1) == b"":
                        closed.add(c)
                except ConnectionResetError:
                    closed.add(c)
            return len(closed) >= 20
        wait_for(past_cap_closed, what="connections past the cap to be closed")
        assert len(closed) < 40, len(closed)  # those under the cap stay open
        # the open connection keeps working; a new one is closed at once
        assert keeper.get(s.url + "/v1/whoami", headers=auth, verify=s.ca).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/v1/whoami", headers=auth, verify=s.ca, timeout=10)
        # once some close, a fresh connection is served
        for c in flood[:30]:
            c.close()

        def fresh():
            try:
                return requests.get(s.url + "/v1/whoami", headers=auth, verify=s.ca, timeout=10).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(fresh, what="a fresh connection to be served")
    finally:
        for c in flood:
            c.close()
        keeper.close()
    assert s.proc.poll() is None  # no role crashed
    assert '"role died' not in s.read_log()
