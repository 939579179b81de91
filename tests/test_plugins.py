"""Plugins (docs/plugins.md) against the real cloisterd, its proxy and its
runner: the shipped plugins (claims-auth, request-log) in process (trusted)
and out of process (in a sandbox the runner launches, over a Unix socket);
a crashing and a hanging plugin failing open and closed; a plugin of another
ABI version refused at load with the versions named; `when` deciding which
requests a plugin sees; the calls counted in /metrics.

Each plugin file is installed under two names in the plugin directory: NAME
(listed in --plugin-trusted: in process) and NAME-sandboxed (not listed: out
of process), so one daemon runs both."""
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from conftest import BUILD, Server, audited, free_port, manifest, open_for_roles, wait_for

DOMAIN = "localhost"
PLUGINS = {"claims-auth": "plugins", "request-log": "plugins", "egress-rules": "plugins",
           "noop": "plugins/testing", "crash": "plugins/testing", "hang": "plugins/testing",
           "abi-v2": "plugins/testing"}
TRUSTED = ["claims-auth", "request-log", "noop", "abi-v2", "egress-rules"]


def install_plugins(plugin_dir):
    """Copies the built plugins into PLUGIN_DIR as NAME.so and
    NAME-sandboxed.so, readable by the roles' users and the sandboxes'."""
    plugin_dir.mkdir(parents=True, exist_ok=True)
    for name, sub in PLUGINS.items():
        for target in (name, f"{name}-sandboxed"):
            shutil.copy(BUILD / sub / f"{name}.so", plugin_dir / f"{target}.so")
            os.chmod(plugin_dir / f"{target}.so", 0o755)
    os.chmod(plugin_dir, 0o755)
    open_for_roles(plugin_dir)


def start_with_plugins(base, trusted=TRUSTED):
    """A started cloisterd whose proxy serves plain HTTP on one thread (one
    event loop), with the plugin directory BASE/plugins; returns (server,
    plain HTTP port, plugin dir)."""
    plugin_dir = base / "plugins"
    install_plugins(plugin_dir)
    http_port = free_port()
    s = Server(base / "data", extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}", "--domain", DOMAIN,
                                          "--plugin-dir", str(plugin_dir), "--plugin-trusted", ",".join(trusted),
                                          "--proxy-threads", "1"])
    s.start()
    return s, http_port, plugin_dir


class Cluster:
    def __init__(self, s, http_port, base, upstream_port):
        self.s, self.http_port, self.base, self.up_port = s, http_port, base, upstream_port
        self.token = None

    def apply(self, *items):
        r = self.s.request("POST", "/v1/apply", json={"items": list(items)})
        assert r.status_code == 200, r.text

    def get(self, service, path="/", headers=None, timeout=15):
        h = {"Host": f"{service}.{DOMAIN}", "Authorization": f"Bearer {self.token}"}
        h.update(headers or {})
        return requests.get(f"http://127.0.0.1:{self.http_port}{path}", headers=h, timeout=timeout)

    def service(self, name, plugins):
        self.apply(manifest("Service", name, {"upstream": {"url": f"http://127.0.0.1:{self.up_port}"},
                                              "policies": ["everyone"], "plugins": plugins}))

    def wait(self, service, pred, path="/", headers=None, timeout=20):
        """The first answer of SERVICE that PRED accepts (the proxy picks up
        a new configuration within a moment)."""
        deadline = time.time() + timeout
        r = None
        while time.time() < deadline:
            r = self.get(service, path, headers)
            if pred(r):
                return r
            time.sleep(0.1)
        raise AssertionError(f"{service}{path}: last answer {r.status_code if r is not None else None}: "
                             f"{r.text if r is not None else ''}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from echo_upstream import EchoUpstream
    up = EchoUpstream()
    up_port = up.start()
    base = tmp_path_factory.mktemp("plugins")
    open_for_roles(base)
    s, http_port, _ = start_with_plugins(base)
    c = Cluster(s, http_port, base, up_port)
    c.up = up
    c.apply(
        manifest("User", "alice", {"type": "human", "email": "alice@example.com"}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "everyone", {"rules": [{"effect": "allow", "condition": {"matchAny": True}}]}),
    )
    tok = s.request("POST", "/v1/tokens", json={"credential": "alice-cli"}).json()["token"]
    r = s.request("POST", "/v1/auth/token", token="", json={"token": tok})
    assert r.status_code == 200, r.text
    c.token = r.json()["access_token"]
    yield c
    s.stop()
    up.stop()


def auth_plugin(name, **extra):
    return {"name": name, "phase": "request_headers",
            "config": {"header": "x-team", "values": ["blue"],
                       "addHeader": {"name": "x-authorized-by", "value": name}}, **extra}


@pytest.mark.parametrize("plugin", ["claims-auth", "claims-auth-sandboxed"])
def test_claims_auth_allows_and_denies(cluster, plugin):
    c = cluster
    svc = f"auth-{plugin}"
    c.service(svc, [auth_plugin(plugin)])
    denied = c.wait(svc, lambda r: r.status_code == 403)
    assert "denied by plugin " + plugin in denied.json()["error"]["message"]
    assert "header x-team is missing" in denied.json()["error"]["message"]
    wrong = c.get(svc, headers={"x-team": "red"})
    assert wrong.status_code == 403 and "not allowed" in wrong.json()["error"]["message"]
    ok = c.get(svc, "/hello", headers={"x-team": "blue"})
    assert ok.status_code == 200, ok.text
    seen = dict((k.lower(), v) for k, v in ok.json()["headers"])
    assert seen.get("x-authorized-by") == plugin, "the plugin's header change reaches the upstream"


def test_a_plugin_runs_only_when_its_condition_holds(cluster):
    c = cluster
    c.service("guarded", [auth_plugin("claims-auth", when='ctx.request.http.path.startsWith("/guarded")')])
    c.wait("guarded", lambda r: r.status_code == 403, path="/guarded/x")
    assert c.get("guarded", "/open").status_code == 200


def test_a_bad_when_is_refused_at_apply(cluster):
    r = cluster.s.request("POST", "/v1/apply", json={"items": [manifest("Service", "bad-when", {
        "upstream": {"url": "http://127.0.0.1:1"},
        "plugins": [{"name": "noop", "phase": "request_headers", "when": "ctx.request.nosuch == 1"}]})]})
    assert r.status_code == 400 and "spec.plugins[0].when" in r.text, r.text
    r = cluster.s.request("POST", "/v1/apply", json={"items": [manifest("Service", "bad-phase", {
        "upstream": {"url": "http://127.0.0.1:1"}, "plugins": [{"name": "noop", "phase": "egress"}]})]})
    assert r.status_code == 400 and "egress belongs to an Enclave" in r.text, r.text


def log_lines(text):
    return [json.loads(line[line.index("{"):]) for line in text.splitlines()
            if '"service":"log-' in line and "{" in line]


def test_request_log_in_process_writes_json_lines(cluster):
    c = cluster
    log = c.base / "requests.jsonl"
    log.touch()
    os.chmod(log, 0o666)
    c.service("log-in", [{"name": "request-log", "phase": "log", "config": {"file": str(log)}}])
    c.wait("log-in", lambda r: r.status_code == 200, path="/first")
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        if any(x.get("path") == "/first" for x in lines):
            break
        time.sleep(0.1)
    line = next(x for x in lines if x.get("path") == "/first")
    assert line["service"] == "log-in" and line["user"] == "alice" and line["status"] == "200"
    assert line["method"] == "GET" and line["decision"] == "allow" and len(line["id"]) == 32


def test_request_log_out_of_process_writes_to_the_runners_log(cluster):
    c = cluster
    c.service("log-out", [{"name": "request-log-sandboxed", "phase": "log"}])
    c.wait("log-out", lambda r: r.status_code == 200, path="/sandboxed-line")
    deadline = time.time() + 15
    while time.time() < deadline:
        lines = [x for x in log_lines(c.s.read_log()) if x.get("path") == "/sandboxed-line"]
        if lines:
            break
        time.sleep(0.2)
    assert lines and lines[0]["service"] == "log-out" and lines[0]["user"] == "alice"


def test_a_hanging_log_plugin_does_not_hold_the_proxy_thread(cluster):
    """An out-of-process log-phase call runs on the plugin pool, detached
    from its request (nothing waits for its answer): with one proxy thread,
    a plugin that never answers in the log phase delays neither the next
    request to its Service nor another Service's, and its timeout is still
    counted once it passes."""
    c = cluster
    hang_ms = 3000
    c.service("slow-log", [{"name": "hang", "phase": "log", "failure": "open", "timeoutMs": hang_ms}])
    c.service("quick-log", [])
    c.wait("slow-log", lambda r: r.status_code == 200, path="/configured")
    c.wait("quick-log", lambda r: r.status_code == 200)
    started = time.time()
    for i in range(3):  # each request's log call hangs for timeoutMs: on the loop, the next would wait for it
        assert c.get("slow-log", f"/logged-{i}").status_code == 200
        assert c.get("quick-log", f"/after-{i}").status_code == 200
    took = time.time() - started
    assert took < hang_ms / 1000, f"requests waited for the hanging log calls: {took:.1f}s for 6 requests"

    def timeouts():
        m = requests.get(c.s.url + "/metrics", verify=c.s.ca, headers={"Authorization": f"Bearer {c.s.token}"}).text
        return sum(int(line.split()[-1]) for line in m.splitlines()
                   if line.startswith("cloister_plugin_calls_total{") and 'plugin="hang"' in line
                   and 'phase="log"' in line and 'outcome="timeout"' in line)
    wait_for(lambda: timeouts() >= 4, 30, "the log calls' timeouts (the configuration probe's and these three)")


@pytest.mark.parametrize("plugin,failure,want", [
    ("crash", "open", 200), ("crash", "closed", 503), ("hang", "open", 200), ("hang", "closed", 503)])
def test_failing_plugins_fail_open_or_closed(cluster, plugin, failure, want):
    c = cluster
    svc = f"{plugin}-{failure}"
    c.service(svc, [{"name": plugin, "phase": "request_headers", "failure": failure, "timeoutMs": 300}])
    r = c.wait(svc, lambda r: r.status_code in (want,) and (want == 200 or "plugin" in r.text))
    if want == 503:
        why = "no answer within 300 ms" if plugin == "hang" else "went away"
        assert f"plugin {plugin} failed" in r.json()["error"]["message"] and why in r.json()["error"]["message"], r.text
    # the next request gets a new sandbox, and fails alike
    started = time.time()
    assert c.get(svc).status_code == want
    assert time.time() - started < 5
    m = requests.get(c.s.url + "/metrics", verify=c.s.ca, headers={"Authorization": f"Bearer {c.s.token}"}).text
    outcome = "timeout" if plugin == "hang" else "crash"
    counted = [l for l in m.splitlines() if l.startswith("cloister_plugin_calls_total{") and f'plugin="{plugin}"' in l
               and f'outcome="{outcome}"' in l]
    assert counted and int(counted[0].split()[-1]) >= 1, counted


def test_a_hanging_plugin_does_not_hold_the_proxy_thread(cluster):
    """With one proxy thread, requests to another Service are answered
    while an out-of-process plugin hangs on one; and several calls of that
    plugin are in flight together (not one after the other)."""
    import threading
    c = cluster
    hang_ms = 3000
    c.service("slow", [{"name": "hang", "phase": "request_headers", "failure": "open", "timeoutMs": hang_ms}])
    c.service("quick", [])
    c.wait("slow", lambda r: r.status_code == 200)  # the plugin is configured (it failed open once)
    c.wait("quick", lambda r: r.status_code == 200)
    answered = []
    lock = threading.Lock()

    def slow_request(i):
        r = c.get("slow", f"/slow-{i}", timeout=60)
        with lock:
            answered.append(("slow", r.status_code, time.time()))

    started = time.time()
    slow = [threading.Thread(target=slow_request, args=(i,)) for i in range(3)]
    for t in slow:
        t.start()
    for i in range(5):
        r = c.get("quick", f"/quick-{i}")
        assert r.status_code == 200, r.text
        with lock:
            answered.append(("quick", r.status_code, time.time()))
    for t in slow:
        t.join(timeout=60)
    kinds = [a[0] for a in answered]
    assert kinds == ["quick"] * 5 + ["slow"] * 3, f"another Service waited for the hanging plugin: {kinds}"
    assert all(a[1] == 200 for a in answered), answered  # the hang timed out and failed open
    # three calls of one timeoutMs each: one after the other they would take
    # three times as long; in flight together, well under two
    last = max(a[2] for a in answered)
    assert last - started < 2 * hang_ms / 1000, f"the hanging calls ran one after the other: {last - started:.1f}s"


@pytest.mark.parametrize("plugin", ["abi-v2", "abi-v2-sandboxed"])
def test_an_abi_version_mismatch_is_refused_at_load(cluster, plugin):
    c = cluster
    svc = f"abi-{plugin}"
    c.service(svc, [{"name": plugin, "phase": "request_headers", "failure": "closed"}])
    r = c.wait(svc, lambda r: r.status_code == 503)
    msg = r.json()["error"]["message"]
    assert f"plugin {plugin}: ABI version mismatch" in msg, msg
    assert "expects version 1" in msg and "has version 2" in msg, msg
    if plugin == "abi-v2":
        assert "ABI version mismatch" in c.s.read_log()


def test_a_plugin_outside_the_directory_is_refused(cluster):
    c = cluster
    outside = c.base / "outside.so"
    shutil.copy(BUILD / "plugins/testing/noop.so", outside)
    link = c.base / "plugins" / "escape.so"
    link.symlink_to(outside)
    c.service("escape", [{"name": "escape", "phase": "request_headers", "failure": "closed"}])
    r = c.wait("escape", lambda r: r.status_code == 503)
    assert "not a file in the plugin directory" in r.text or "outside the plugin directory" in r.text, r.text


def test_plugin_calls_are_metrics(cluster):
    c = cluster
    c.service("metered", [{"name": "noop", "phase": "request_headers"}, {"name": "noop", "phase": "request_body"},
                          {"name": "noop", "phase": "response_headers"}, {"name": "noop-sandboxed", "phase": "log"}])
    c.wait("metered", lambda r: r.status_code == 200)
    r = requests.post(f"http://127.0.0.1:{c.http_port}/posted", data=b"a body",
                      headers={"Host": f"metered.{DOMAIN}", "Authorization": f"Bearer {c.token}"}, timeout=15)
    assert r.status_code == 200 and r.json()["body"] == "a body", r.text

    def counted(phase, plugin="noop"):
        m = requests.get(c.s.url + "/metrics", verify=c.s.ca, headers={"Authorization": f"Bearer {c.s.token}"}).text
        line = [x for x in m.splitlines()
                if x.startswith(f'cloister_plugin_calls_total{{plugin="{plugin}",phase="{phase}",outcome="ok"}}')]
        return int(line[0].split()[-1]) if line else 0
    assert counted("request_headers") >= 2 and counted("response_headers") >= 2
    assert counted("request_body") >= 1
    deadline = time.time() + 10  # the log phase runs as the request ends, after its answer
    while counted("log", "noop-sandboxed") < 2:
        assert time.time() < deadline, "the sandboxed log calls were not counted"
        time.sleep(0.1)
    m = requests.get(c.s.url + "/metrics", verify=c.s.ca, headers={"Authorization": f"Bearer {c.s.token}"}).text
    assert 'cloister_plugin_duration_seconds_sum{plugin="noop",phase="request_headers"}' in m


def test_egress_plugins_deny_and_tag_an_enclaves_connections(cluster, tmp_path):
    """The runner asks an Enclave's egress plugins about each CONNECT its
    allow-list permits: egress-rules in the runner's process and another
    instance in a sandbox; a denied destination never sees a connection."""
    from echo_upstream import EchoUpstream
    from test_enclave_egress import PROBE, CountingListener
    from test_enclaves import APP, enclave, wait_for
    c = cluster
    echo = EchoUpstream()
    echo_port = echo.start()
    denied_in, denied_out = CountingListener(), CountingListener()
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "probe.py"]\nport: 8080\n')
    (b / "probe.py").write_text(PROBE + "\n" + APP)
    plan = [
        {"kind": "http", "name": "tagged", "target": f"127.0.0.1:{echo_port}", "path": "/tagged"},
        {"kind": "http", "name": "denied-in", "target": f"127.0.0.1:{denied_in.port}", "path": "/"},
        {"kind": "http", "name": "denied-out", "target": f"127.0.0.1:{denied_out.port}", "path": "/"},
    ]
    (b / "plan.json").write_text(json.dumps(plan))
    for f in b.iterdir():
        os.chmod(f, 0o644)
    os.chmod(b, 0o755)
    open_for_roles(b)
    rules_in = {"rules": [{"host": "127.0.0.1", "port": echo_port, "action": "allow", "tags": {"purpose": "billing"}},
                          {"host": "127.0.0.1", "port": denied_in.port, "action": "deny"}]}
    rules_out = {"rules": [{"host": "127.0.0.1", "port": denied_out.port, "action": "deny"}], "default": "allow"}
    try:
        c.apply(enclave("outbound", b, egress=[{"host": "127.0.0.1", "port": p}
                                               for p in (echo_port, denied_in.port, denied_out.port)],
                        plugins=[{"name": "egress-rules", "phase": "egress", "config": rules_in},
                                 {"name": "egress-rules-sandboxed", "phase": "egress", "config": rules_out}]))
        log = c.s.data_dir / "runner" / "outbound-1.log"

        def done():
            text = log.read_text() if log.exists() else ""
            lines = [json.loads(x.split("EGRESS ", 1)[1]) for x in text.splitlines() if "EGRESS " in x]
            return {r["probe"]: r for r in lines} if any(r["probe"] == "done" for r in lines) else None
        got = wait_for(done, timeout=90, what=f"the probes' results in {log}")
        assert " 200 " in got["tagged"]["status"] and "/tagged" in got["tagged"]["answer"], got["tagged"]
        assert " 403 " in got["denied-in"]["status"], got["denied-in"]
        assert "denied by plugin egress-rules:" in got["denied-in"]["answer"], got["denied-in"]
        assert " 403 " in got["denied-out"]["status"], got["denied-out"]
        assert "denied by plugin egress-rules-sandboxed:" in got["denied-out"]["answer"], got["denied-out"]
        assert denied_in.accepted == 0 and denied_out.accepted == 0

        def entry(port):
            return audited(c.s, "enclave.egress", lambda e: e["resource"]["name"] == "outbound"
                           and e["details"]["port"] == port)[0]
        e = entry(echo_port)
        assert e["outcome"] == "success" and e["details"]["tags"] == {"purpose": "billing"}, e
        e = entry(denied_in.port)
        assert e["outcome"] == "denied" and "denied by plugin egress-rules: egress-rules: rule 1" in \
            e["details"]["reason"], e
        assert entry(denied_out.port)["outcome"] == "denied"
        # an Enclave's plugin must be an egress one
        r = c.s.request("POST", "/v1/apply", json={"items": [enclave("outbound", b, plugins=[
            {"name": "noop", "phase": "request_headers"}])]})
        assert r.status_code == 400 and "phase must be egress" in r.text, r.text
    finally:
        c.s.request("DELETE", "/v1/enclaves/outbound")
        echo.stop()
        denied_in.close()
        denied_out.close()


def test_plugins_never_see_credentials_or_identity_headers(cluster):
    """A client-sent x-cloister-* header (which the proxy strips) and the
    bearer token are hidden from plugins: an authorizer keyed on them
    cannot be fooled by a client, nor can it read the token."""
    c = cluster
    c.service("spoof", [{"name": "claims-auth-sandboxed", "phase": "request_headers",
                         "config": {"header": "x-cloister-user", "values": ["alice"]}},
                        ])
    r = c.wait("spoof", lambda r: r.status_code == 403, headers={"x-cloister-user": "alice"})
    assert "header x-cloister-user is missing" in r.json()["error"]["message"], r.text
    c.service("token-peek", [{"name": "claims-auth", "phase": "request_headers",
                              "config": {"header": "authorization", "values": [f"Bearer {c.token}"]}}])
    r = c.wait("token-peek", lambda r: r.status_code == 403)
    assert "header authorization is missing" in r.json()["error"]["message"], r.text


def token_slot(token):
    """The proxy's token-cache slot of TOKEN (authenticate.c: the first 8
    bytes of the SHA-256 of its signature, little-endian, modulo
    PROXY_TOKEN_SLOTS)."""
    signature = token.rsplit(".", 1)[-1]
    return int.from_bytes(hashlib.sha256(signature.encode()).digest()[:8], "little") % 1024


def test_a_token_taking_a_waiting_requests_cache_slot_does_not_lend_it_its_identity(cluster):
    """Alice's request waits on an out-of-process plugin while bob's token,
    which falls in the same cache slot, is resolved on the same proxy
    thread: alice's request is then refused (503), never forwarded as bob."""
    import http.client
    import ssl
    import threading
    c = cluster
    # the token endpoint limits each credential and each client address to 100 in a burst
    creds = [f"bob-{i}" for i in range(60)]
    c.apply(manifest("User", "bob", {"type": "human", "email": "bob@example.com"}),
            *(manifest("Credential", name, {"user": "bob", "type": "authToken"}) for name in creds))
    cred_tokens = []
    ctx = ssl.create_default_context(cafile=str(c.s.ca))
    ctx.check_hostname = False
    want, bob, host, port = token_slot(c.token), None, c.s.url.split("//")[1].split(":")[0], c.s.port
    for attempt in range(6000):  # one in 1,024 falls in alice's slot
        if attempt % 100 == 0:
            cred_tokens.append(c.s.request("POST", "/v1/tokens", json={"credential": creds[attempt // 100]}).json()[
                "token"])
        cred = cred_tokens[-1]
        if attempt % 40 == 0:
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30,
                                               source_address=(f"127.{attempt // 40 % 250 + 1}.{attempt % 200}.9", 0))
        conn.request("POST", "/v1/auth/token", body=json.dumps({"token": cred}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        candidate = json.loads(body)["access_token"]
        if token_slot(candidate) == want:
            bob = candidate
            break
    assert bob, "no token of bob fell in alice's slot"
    c.service("slot-slow", [{"name": "hang", "phase": "request_headers", "failure": "open", "timeoutMs": 3000}])
    c.service("slot-quick", [])
    c.wait("slot-slow", lambda r: r.status_code == 200)
    c.wait("slot-quick", lambda r: r.status_code == 200)
    def user_of(resp):
        return {k.lower(): v for k, v in resp.json()["headers"]}.get("x-cloister-user")

    refused = False
    for _ in range(3):  # bob's token must be resolved while alice's request waits: retried if it came first
        answer = {}
        waiting = threading.Thread(target=lambda: answer.setdefault("alice", c.get("slot-slow", "/as-alice",
                                                                                   timeout=60)))
        waiting.start()
        time.sleep(0.5)  # alice's request is inside the hanging plugin's 3 s (a race by its nature)
        r = c.get("slot-quick", "/as-bob", headers={"Authorization": f"Bearer {bob}"})
        assert r.status_code == 200 and user_of(r) == "bob", r.text
        waiting.join(timeout=60)
        a = answer["alice"]
        assert a.status_code in (200, 503), a.text
        if a.status_code == 200:
            assert user_of(a) == "alice", f"alice's request reached the upstream as {user_of(a)}"
            continue  # bob's resolution came before alice's: the slot was alice's again
        assert "lost track of who sent this request" in a.json()["error"]["message"], a.text
        refused = True
        break
    assert refused, "bob's token never took the slot while alice's request waited"
