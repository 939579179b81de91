"""W3C trace context through the proxy, access records and daemon logs as
OTLP logs, and enclave workloads' output (docs/proxy.md "Trace context",
docs/telemetry.md, docs/enclaves.md "Logs"), against the real cloisterd
exporting to the test OTLP receiver (tests/otlp_receiver.py) with the echo
upstream behind the proxy: the upstream (and an enclave replica behind its
attested bridge) receives a valid traceparent whose parent is an exported
CLIENT span; an untrusted client's context is a link
of a new trace, a Service with trustTraceContext continues it; malformed
traceparent values are replaced, never forwarded; each access record
arrives as an OTLP log record in its request's trace; enclave replicas'
stdout/stderr arrive as OTLP logs and through the API and the CLI."""
import http.client
import json
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest
import requests

from conftest import CLOISTER, Server, free_port, manifest, open_for_roles, run_cli, sanitizer_env
from echo_upstream import EchoUpstream
from otlp_receiver import Receiver, attrs

DOMAIN = "localhost"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SERVER, CLIENT = 2, 3

APP = """\
import sys, time
print("hello from stdout", flush=True)
print("trouble on stderr", file=sys.stderr, flush=True)
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.3)
"""


class Traced:
    def __init__(self, rx, up, server, http_port):
        self.rx, self.up, self.s, self.http_port = rx, up, server, http_port
        self.token = None

    def get(self, path="/", host=f"wiki.{DOMAIN}", headers=()):
        """GET through the proxy with HEADERS as (name, value) pairs, repeated names kept."""
        c = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            c.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            for k, v in [("Host", host), ("Authorization", f"Bearer {self.token}"), *headers]:
                c.putheader(k, v)
            c.endheaders()
            r = c.getresponse()
            return SimpleNamespace(status_code=r.status, headers=r.headers, body=r.read())
        finally:
            c.close()

    @staticmethod
    def received(r):
        """What the echo upstream received for the forwarded request whose answer is R (it echoes it)."""
        assert r.status_code == 200, r.body
        return json.loads(r.body)

    @staticmethod
    def request_id(r):
        """The request id of R: the proxy's header on its own answers, else what the upstream received."""
        return r.headers.get("x-cloister-request-id") or header(Traced.received(r), "x-cloister-request-id")[0]

    def proxy_span(self, **want):
        return self.rx.wait_for(lambda: self.rx.find_span(service="cloisterd-proxy", **want))[0][1]


def header(record, name):
    return [v for (k, v) in record["headers"] if k.lower() == name]


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    rx = Receiver()
    up = EchoUpstream()
    up_port = up.start()
    http_port = free_port()
    s = Server(tmp_path_factory.mktemp("tracing") / "data",
               extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}", "--domain", DOMAIN],
               env_extra=rx.otel_env()).start()
    t = Traced(rx, up, s, http_port)
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": []}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "alice-reads", {"rules": [
            {"name": "reads", "effect": "allow", "condition": {"match": 'ctx.user.name == "alice"'}},
            {"name": "no-admin", "effect": "deny", "priority": -1,
             "condition": {"match": 'ctx.request.http.path.startsWith("/admin")'}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["alice-reads"]}),
        manifest("Service", "trusted", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                        "policies": ["alice-reads"], "trustTraceContext": True}),
    ]})
    assert r.status_code == 200, r.text
    cred = s.request("POST", "/v1/tokens", json={"credential": "alice-cli"}).json()["token"]
    t.token = s.request("POST", "/v1/auth/token", token="", json={"token": cred}).json()["access_token"]
    deadline = time.time() + 15
    while t.get(host=f"trusted.{DOMAIN}").status_code != 200:
        assert time.time() < deadline, "the proxy never served the services"
        time.sleep(0.1)
    yield t
    s.stop()
    up.stop()
    rx.stop()
    assert rx.problems == [], rx.problems


def test_the_upstream_gets_a_traceparent_whose_parent_is_an_exported_client_span(traced):
    r = traced.get("/docs/page?x=1", headers=[("User-Agent", "tracing-test/1")])
    assert r.status_code == 200
    rid = traced.request_id(r)
    got = header(traced.received(r), "traceparent")
    assert len(got) == 1 and TRACEPARENT.match(got[0]), got
    trace_id, parent_id, _ = TRACEPARENT.match(got[0]).groups()
    client = traced.proxy_span(spanId=parent_id)
    assert client["kind"] == CLIENT and client["traceId"] == trace_id
    assert attrs(client["attributes"])["server.address"] == "127.0.0.1"
    server = traced.proxy_span(spanId=client["parentSpanId"])
    assert server["kind"] == SERVER and server["traceId"] == trace_id
    assert "parentSpanId" not in server and not server.get("links"), "no incoming context: a new trace"
    a = attrs(server["attributes"])
    assert a["http.request.method"] == "GET" and a["url.path"] == "/docs/page"
    assert a["http.response.status_code"] == 200 and a["server.address"] == f"wiki.{DOMAIN}"
    assert a["user_agent.original"] == "tracing-test/1"
    assert (a["cloister.user"], a["cloister.service"], a["cloister.decision"]) == ("alice", "wiki", "allow")
    assert (a["cloister.policy"], a["cloister.rule"], a["cloister.request_id"]) == ("alice-reads", "reads", rid)


def test_an_untrusted_clients_context_is_a_link_of_a_new_trace(traced):
    r = traced.get(headers=[("traceparent", CLIENT_PARENT), ("tracestate", "rojo=00f067aa0ba902b7")])
    assert r.status_code == 200
    up = traced.received(r)
    trace_id, parent_id, _ = TRACEPARENT.match(header(up, "traceparent")[0]).groups()
    assert trace_id != CLIENT_TRACE, "the client is outside the trust boundary: a new trace"
    assert header(up, "tracestate") == [], "the state of the client's trace does not go with a new one"
    client = traced.proxy_span(spanId=parent_id)
    server = traced.proxy_span(spanId=client["parentSpanId"])
    assert "parentSpanId" not in server
    assert [(l["traceId"], l["spanId"]) for l in server["links"]] == [(CLIENT_TRACE, CLIENT_SPAN)]


def test_a_trusting_service_continues_the_clients_trace_and_passes_its_tracestate(traced):
    r = traced.get(host=f"trusted.{DOMAIN}",
                   headers=[("traceparent", CLIENT_PARENT), ("tracestate", "rojo=00f067aa0ba902b7 ,, congo=t61"),
                            ("tracestate", "x@y=z")])
    assert r.status_code == 200
    up = traced.received(r)
    trace_id, parent_id, flags = TRACEPARENT.match(header(up, "traceparent")[0]).groups()
    assert trace_id == CLIENT_TRACE and parent_id != CLIENT_SPAN and flags == "01"
    assert header(up, "tracestate") == ["rojo=00f067aa0ba902b7,congo=t61,x@y=z"]
    client = traced.proxy_span(spanId=parent_id)
    server = traced.proxy_span(spanId=client["parentSpanId"])
    assert server["traceId"] == CLIENT_TRACE and server["parentSpanId"] == CLIENT_SPAN
    assert not server.get("links")


@pytest.mark.parametrize("value", [
    f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",   # upper-case hex
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",               # all-zero trace id
    f"00-{CLIENT_TRACE}-{'0' * 16}-01",              # all-zero span id
    f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",           # version ff
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-0",            # short
    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",     # long
    f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",      # a short trace id
    f"00_{CLIENT_TRACE}_{CLIENT_SPAN}_01",           # separators
])
def test_malformed_traceparent_values_are_replaced_never_forwarded(traced, value):
    # even where the context would be trusted
    r = traced.get(host=f"trusted.{DOMAIN}", headers=[("traceparent", value), ("tracestate", "rojo=1")])
    assert r.status_code == 200
    up = traced.received(r)
    sent = header(up, "traceparent")
    assert len(sent) == 1 and sent[0] != value and TRACEPARENT.match(sent[0]), sent
    trace_id, parent_id, _ = TRACEPARENT.match(sent[0]).groups()
    assert trace_id not in (CLIENT_TRACE, "0" * 32)
    assert header(up, "tracestate") == [], "a tracestate goes only with a valid traceparent"
    server = traced.proxy_span(spanId=traced.proxy_span(spanId=parent_id)["parentSpanId"])
    assert "parentSpanId" not in server and not server.get("links")


def test_two_traceparent_headers_are_neither_trusted(traced):
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    r = traced.get(host=f"trusted.{DOMAIN}", headers=[("traceparent", CLIENT_PARENT), ("traceparent", other)])
    up = traced.received(r)
    sent = header(up, "traceparent")
    assert len(sent) == 1 and TRACEPARENT.match(sent[0]).group(1) not in (CLIENT_TRACE, "1" * 32)


def test_access_records_arrive_as_otlp_logs_in_their_requests_trace(traced):
    ok = traced.get("/hello")
    denied = traced.get("/admin/x")
    assert (ok.status_code, denied.status_code) == (200, 403)

    def record(rid):
        return [(res, l) for res, l in traced.rx.logs()
                if attrs(l.get("attributes")).get("cloister.request_id") == rid]

    for resp, decision, severity in ((ok, "allow", 9), (denied, "deny", 13)):
        rid = traced.request_id(resp)
        res, log = traced.rx.wait_for(lambda: record(rid))[0]
        a = attrs(log["attributes"])
        assert res["service.name"] == "cloisterd-proxy" and log["body"] == {"stringValue": "proxy.access"}
        assert log["severityNumber"] == severity
        assert (a["cloister.user"], a["cloister.service"], a["cloister.decision"]) == ("alice", "wiki", decision)
        assert a["cloister.policy"] == "alice-reads" and a["cloister.rule"] == ("reads" if decision == "allow" else "no-admin")
        assert a["http.response.status_code"] == str(resp.status_code) and int(a["cloister.latency_us"]) > 0
        assert a["cloister.session"] and a["url.path"] == ("/hello" if decision == "allow" else "/admin/x")
        server = traced.proxy_span(kind=SERVER, attr_cloister__request_id=rid)
        assert (log["traceId"], log["spanId"]) == (server["traceId"], server["spanId"])


def test_daemon_logs_arrive_as_otlp_logs(traced):
    # the proxy logs its connection cap when it starts
    res, log = traced.rx.wait_for(lambda: [(r, l) for r, l in traced.rx.logs()
                                           if l.get("body") == {"stringValue": "proxy connection cap"}])[0]
    assert res["service.name"] == "cloisterd-proxy" and log["severityNumber"] == 9
    assert int(attrs(log["attributes"])["maxConnections"]) > 0


# ---- enclave logs ----

@pytest.fixture(scope="module")
def ticking(traced, tmp_path_factory):
    """An Enclave whose one replica prints two lines, then a tick every 0.3 s."""
    b = tmp_path_factory.mktemp("ticker") / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\n')
    (b / "app.py").write_text(APP)
    os.chmod(b, 0o755)
    open_for_roles(b)
    r = traced.s.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "ticker", {"bundle": str(b)})]})
    assert r.status_code == 200, r.text
    return "ticker"


def wait_lines(traced, path, pred, timeout=30):
    deadline = time.time() + timeout
    while True:
        r = traced.s.request("GET", path)
        assert r.status_code == 200, r.text
        if pred(r.json()["lines"]):
            return r.json()
        assert time.time() < deadline, f"no such lines: {r.json()}"
        time.sleep(0.2)


def test_enclave_output_arrives_as_otlp_logs_of_its_enclave_and_replica(traced, ticking):
    def found(body):
        return [(res, l) for res, l in traced.rx.logs() if l.get("body") == {"stringValue": body}]

    for body, stream, severity in (("hello from stdout", "stdout", 9), ("trouble on stderr", "stderr", 13)):
        res, log = traced.rx.wait_for(lambda: found(body), timeout=30)[0]
        assert res["service.name"] == "cloisterd-runner" and log["severityNumber"] == severity
        assert attrs(log["attributes"]) == {"cloister.enclave": "ticker", "cloister.replica": "ticker-1",
                                            "log.iostream": stream}


def test_enclave_logs_through_the_api_and_the_cli(traced, ticking):
    answer = wait_lines(traced, "/v1/enclaves/ticker/logs?tail=1000",
                        lambda ls: any(l["text"] == "tick 2" for l in ls))
    lines = answer["lines"]
    seen = [{k: l[k] for k in ("replica", "stream", "text")} for l in lines]
    hello = seen.index({"replica": "ticker-1", "stream": "stdout", "text": "hello from stdout"})
    assert {"replica": "ticker-1", "stream": "stderr", "text": "trouble on stderr"} in seen  # ordered per stream only
    assert seen.index({"replica": "ticker-1", "stream": "stdout", "text": "tick 1"}) > hello
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", l["time"]) for l in lines)
    # a cursor gives only what came after
    later = wait_lines(traced, f"/v1/enclaves/ticker/logs?after={answer['cursor']}", lambda ls: len(ls) > 0)
    ticks = [int(l["text"].split()[1]) for l in later["lines"]]
    assert min(ticks) > max(int(l["text"].split()[1]) for l in lines if l["text"].startswith("tick"))
    assert traced.s.request("GET", "/v1/enclaves/ticker/logs?tail=2").json()["lines"][-1]["text"].startswith("tick")
    assert len(traced.s.request("GET", "/v1/enclaves/ticker/logs?tail=2").json()["lines"]) == 2
    # checked parameters, and an Enclave that does not exist
    assert traced.s.request("GET", "/v1/enclaves/ticker/logs?replica=other-1").status_code == 400
    assert traced.s.request("GET", "/v1/enclaves/ticker/logs?tail=1001").status_code == 400
    assert traced.s.request("GET", "/v1/enclaves/ticker/logs?after=nonsense").status_code == 400
    assert traced.s.request("GET", "/v1/enclaves/nothing/logs").status_code == 404
    # alice may use the proxy but not read an enclave's output: `logs` on Enclave
    r = traced.s.request("GET", "/v1/enclaves/ticker/logs", token=traced.token)
    assert r.status_code == 403 and "logs Enclave/ticker" in r.json()["error"]["message"]

    env = {"CLOISTER_TOKEN": traced.s.token}
    p = run_cli(traced.s, "enclave", "logs", "ticker", "--tail", "1000", env_extra=env)
    assert p.returncode == 0, p.stderr
    assert "ticker-1 hello from stdout\n" in p.stdout and "ticker-1 trouble on stderr\n" in p.stdout
    p = run_cli(traced.s, "enclave", "logs", "ticker", "--replica", "ticker-2", env_extra=env)
    assert p.returncode == 0 and p.stdout == "", "no such replica: no lines"


def test_following_enclave_logs_over_sse_and_with_the_cli(traced, ticking):
    last = max(int(l["text"].split()[1]) for l in wait_lines(
        traced, "/v1/enclaves/ticker/logs", lambda ls: any(l["text"].startswith("tick") for l in ls))["lines"]
        if l["text"].startswith("tick"))
    with requests.get(traced.s.url + "/v1/enclaves/ticker/logs?follow=1&tail=0", stream=True, timeout=30,
                      verify=traced.s.ca, headers={"Authorization": f"Bearer {traced.s.token}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events, event = [], {}
        for raw in r.iter_lines(decode_unicode=True):
            if raw.startswith("event: ") or raw.startswith("id: ") or raw.startswith("data: "):
                k, v = raw.split(": ", 1)
                event[k] = v
            elif raw == "" and event:
                events.append(event)
                event = {}
                if len(events) == 2:
                    break
    assert [e["event"] for e in events] == ["line", "line"]
    ticks = [int(json.loads(e["data"])["text"].split()[1]) for e in events]
    assert ticks[0] > last and ticks[1] == ticks[0] + 1 and int(events[1]["id"]) > int(events[0]["id"])

    env = sanitizer_env()
    env.update({"XDG_CONFIG_HOME": str(traced.s.data_dir.parent / "config"), "CLOISTER_SERVER": traced.s.url,
                "CLOISTER_CA": traced.s.ca, "CLOISTER_TOKEN": traced.s.token})
    p = subprocess.Popen([str(CLOISTER), "enclave", "logs", "ticker", "-f", "--tail", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = [p.stdout.readline() for _ in range(3)]
        assert all(re.match(r"^ticker-1 tick \d+\n$", s) for s in seen), seen
        n = [int(s.split()[2]) for s in seen]
        assert n == [n[0], n[0] + 1, n[0] + 2], "followed in order, nothing lost or repeated"
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err


ECHO_APP = """\
import http.server, json


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
"""


def test_the_hop_to_an_enclave_replica_is_a_client_span_whose_id_the_workload_gets(traced, tmp_path):
    b = tmp_path / "echo-bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\nport: 8080\n')
    (b / "app.py").write_text(ECHO_APP)
    os.chmod(b, 0o755)
    open_for_roles(b)
    pcr0 = subprocess.run([str(CLOISTER), "enclave", "measure", str(b)], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=60).stdout.strip()
    r = traced.s.request("POST", "/v1/apply", json={"items": [
        manifest("AttestationPolicy", "echoes", {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                                                 "referenceValues": {"pcr0": [pcr0]}}),
        manifest("Enclave", "echo", {"bundle": str(b), "attestationPolicy": "echoes"}),
        manifest("Service", "echo", {"upstream": {"enclave": "echo"}, "policies": ["alice-reads"]}),
    ]})
    assert r.status_code == 200, r.text
    deadline = time.time() + 60
    while (r := traced.get("/x", host=f"echo.{DOMAIN}", headers=[("traceparent", CLIENT_PARENT)])).status_code != 200:
        assert time.time() < deadline, f"the enclave never answered: {r.status_code} {r.body[:300]}"
        time.sleep(0.3)
    got = [v for k, v in json.loads(r.body)["headers"] if k == "traceparent"]
    assert len(got) == 1 and TRACEPARENT.match(got[0]), got
    trace_id, parent_id, _ = TRACEPARENT.match(got[0]).groups()
    assert trace_id != CLIENT_TRACE
    client = traced.proxy_span(spanId=parent_id)
    a = attrs(client["attributes"])
    assert client["kind"] == CLIENT and (a["cloister.enclave"], a["cloister.replica"]) == ("echo", "echo-1")
    assert a["http.response.status_code"] == 200
    server = traced.proxy_span(spanId=client["parentSpanId"])
    assert attrs(server["attributes"])["cloister.service"] == "echo"
