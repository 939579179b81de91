"""OpenTelemetry export over OTLP/HTTP (JSON) from the real cloisterd to the
test receiver (tests/otlp_receiver.py), whose checker every request must
pass: spans of API calls (with the decision), of KMS operations, of an
enclave launch and the key release its agent asks for, one trace across the
api and runner roles; /metrics exported as OTLP metrics; the retry policy
(429 with Retry-After, 503 retried; 400 not); drops counted when the
collector is down; API calls fast while it hangs. The checker itself is
shown to refuse broken encodings and to accept the OpenTelemetry JS SDK's
(tests/otel, installed with `npm ci`)."""
import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLOISTERD, Server, manifest, role_user
from otlp_receiver import Receiver, attrs, check_request
from test_agent import make_bundle, measure
from test_auth import make_user_with_token
from test_runner import launch

OTEL_DIR = Path(__file__).resolve().parent / "otel"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.stop()


def traced_server(tmp_path, rx, **env):
    return Server(tmp_path / "data", env_extra=rx.otel_env(**env)).start()


@pytest.fixture
def traced(tmp_path, receiver):
    s = traced_server(tmp_path, receiver)
    yield s, receiver
    s.stop()
    assert receiver.problems == [], receiver.problems


def span_named(rx, name, service="cloisterd-api", timeout=20, **want):
    return rx.wait_for(lambda: rx.find_span(service=service, name=name, **want), timeout)[-1]


# ---- the checker ----

VALID = {"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]},
    "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "GET /",
        "kind": 2, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000000000000001,
        "attributes": [{"key": "http.response.status_code", "value": {"intValue": "200"}}],
        "status": {"code": 0}}]}]}]}


def mutate(path, value):
    doc = copy.deepcopy(VALID)
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    if value is KeyError:
        del span[path]
    else:
        span[path] = value
    return doc


@pytest.mark.parametrize("field,value,complaint", [
    ("traceId", "0AF7651916CD43DD8448EB211C80319C", "lower-case hex"),
    ("traceId", "00000000000000000000000000000000", "not all zero"),
    ("spanId", "b7ad6b716920333", "16 lower-case hex"),
    ("traceId", "CvdlGRbNQ92ESOshHIAxnA==", "lower-case hex"),  # base64, the protobuf JSON default
    ("kind", "SPAN_KIND_SERVER", "SpanKind integer"),
    ("startTimeUnixNano", 1.7e18, "uint64"),
    ("startTimeUnixNano", KeyError, "startTimeUnixNano missing"),
    ("name", KeyError, "name missing"),
    ("trace_id", "0af7651916cd43dd8448eb211c80319c", "lowerCamelCase"),
    ("attributes", [{"key": "a", "value": {"intValue": "12x"}}], "wrong type"),
    ("status", {"code": "STATUS_CODE_ERROR"}, "StatusCode integer"),
])
def test_the_checker_refuses_what_breaks_the_json_rules(field, value, complaint):
    assert check_request("/v1/traces", VALID) == []
    problems = check_request("/v1/traces", mutate(field, value))
    assert any(complaint in p for p in problems), problems


def test_the_checker_refuses_bad_metrics_and_logs():
    hist = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "h", "histogram": {
        "aggregationTemporality": 2, "dataPoints": [{"timeUnixNano": "1", "count": "3", "bucketCounts": ["1", "1"],
                                                     "explicitBounds": [0.1, 0.2]}]}}]}]}]}
    assert any("need one more" in p for p in check_request("/v1/metrics", hist))
    log = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "1", "severityNumber": "INFO",
                                                             "traceId": "abc"}]}]}]}
    problems = check_request("/v1/logs", log)
    assert any("SeverityNumber integer" in p for p in problems) and any("traceId" in p for p in problems)
    assert check_request("/v1/spans", VALID)  # not an OTLP path


@pytest.fixture(scope="session")
def otel_js():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the reference exporter")
    if not (OTEL_DIR / "node_modules" / "@opentelemetry" / "exporter-trace-otlp-http").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OTEL_DIR, check=True, capture_output=True,
                       timeout=300)
    return OTEL_DIR


def test_the_checker_accepts_the_reference_exporter(otel_js, receiver):
    out = subprocess.run(["node", "export-spans.js", receiver.url], cwd=otel_js, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    got = receiver.wait_for(lambda: len(receiver.spans()) >= 3 and receiver.spans())
    assert receiver.problems == []
    assert {s["spanId"] for _, s in got} == set(made["spanIds"])
    child = next(s for _, s in got if s["name"] == "kms /v1/encrypt")
    assert child["traceId"] == made["traceId"] and child["parentSpanId"] == made["spanIds"][0]


# ---- cloisterd's export ----

def test_api_calls_and_kms_operations_are_spans_and_metrics(traced):
    server, rx = traced
    r = server.request("GET", "/v1/whoami", headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    res, whoami = span_named(rx, "GET /v1/whoami")
    # the caller's context is the parent
    assert whoami["traceId"] == TRACEPARENT[3:35] and whoami["parentSpanId"] == TRACEPARENT[36:52]
    assert whoami["kind"] == 2
    a = attrs(whoami["attributes"])
    assert a["http.request.method"] == "GET" and a["http.route"] == "/v1/whoami"
    assert a["http.response.status_code"] == 200 and a["url.path"] == "/v1/whoami"
    assert res["service.name"] == "cloisterd-api" and res["cloister.role"] == "api"
    assert res["process.pid"] == server.role_pid("api")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", res["service.instance.id"])

    assert server.request("POST", "/v1/apply", json={"items": [
        manifest("Key", "telemetry-key", {"purpose": "encrypt"})]}).status_code == 200
    r = server.request("POST", "/v1/kms/encrypt", json={"key": "telemetry-key", "plaintext": "aGVsbG8="})
    assert r.status_code == 200, r.text
    _, op = span_named(rx, "POST /v1/kms/", attr_cloister__kind="Key", attr_cloister__name="telemetry-key")
    a = attrs(op["attributes"])
    assert a["cloister.decision"] == "allow" and a["enduser.id"] == "admin" and a["cloister.verb"]
    _, kms = span_named(rx, "kms /v1/encrypt", traceId=op["traceId"])
    assert kms["kind"] == 3 and kms["parentSpanId"] == op["spanId"]
    assert "aGVsbG8=" not in json.dumps([r.body for r in rx.records])  # no plaintext leaves

    # a call for what does not exist: its decision and status; a new trace
    # (a malformed traceparent, upper-case hex, is ignored)
    r = server.request("GET", "/v1/users/nobody", headers={"traceparent": TRACEPARENT.upper()})
    _, missing = span_named(rx, "GET /v1/{kind}/{name}", attr_cloister__name="nobody")
    assert missing["traceId"] != TRACEPARENT[3:35] and "parentSpanId" not in missing
    assert attrs(missing["attributes"])["http.response.status_code"] == r.status_code

    # a denied call: the decision on the span, and the 403
    token = make_user_with_token(server, "mallory")
    r = server.request("GET", "/v1/keys/telemetry-key", token=token)
    assert r.status_code == 403
    _, denied = span_named(rx, "GET /v1/{kind}/{name}", attr_enduser__id="mallory")
    a = attrs(denied["attributes"])
    assert a["cloister.decision"] == "deny" and a["cloister.kind"] == "Key" and a["cloister.verb"] == "get"
    assert a["http.response.status_code"] == 403 and denied["status"].get("code", 0) == 0  # a 4xx is no server error

    # /metrics' text as OTLP metrics: a cumulative monotonic sum and a histogram
    def whoami_counted():
        for _, m in rx.metrics():
            if m["name"] == "cloister_api_requests":
                for p in m["sum"]["dataPoints"]:
                    if attrs(p["attributes"]).get("route") == "/v1/whoami":
                        return m, p
    m, point = rx.wait_for(whoami_counted)
    assert m["sum"]["isMonotonic"] is True and m["sum"]["aggregationTemporality"] == 2 and int(point["asInt"]) >= 1
    hist = rx.wait_for(lambda: [m for _, m in rx.metrics() if m["name"] == "cloister_api_request_duration_seconds"])
    assert hist[-1]["unit"] == "s" and hist[-1]["histogram"]["aggregationTemporality"] == 2
    # the proxy's, from the same text: a gauge
    proxy = rx.wait_for(lambda: [m for _, m in rx.metrics() if m["name"] == "cloister_proxy_connections"])
    assert "gauge" in proxy[-1] and "asInt" in proxy[-1]["gauge"]["dataPoints"][0]
    # every request was gzip, to the signal's path
    assert rx.records and all(r.headers.get("Content-Encoding") == "gzip" for r in rx.records)
    assert {r.path for r in rx.records} <= {"/v1/traces", "/v1/metrics", "/v1/logs"}


def test_an_enclave_launch_and_its_key_release_are_one_trace(traced, tmp_path):
    """The controller's launch (api role) parents the runner's span of it;
    the key release the agent asks through the runner is in the same trace,
    down to the KMS operation it makes."""
    server, rx = traced
    bundle = make_bundle(tmp_path / "bundle")
    pcr0 = measure(bundle)
    docs = [manifest("AttestationPolicy", "scorer", {"types": ["sandbox"], "allowSandbox": True,
                                                     "maxAgeSeconds": 300, "referenceValues": {"pcr0": [pcr0]}}),
            manifest("Key", "model-key", {"purpose": "encrypt", "release": {"attestationPolicy": "scorer"}})]
    assert server.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    launch(server, "scorer", bundle, secrets=[{"key": "model-key", "file": "model.key"}])

    res, launched = span_named(rx, "enclave launch", attr_cloister__replica="scorer-1")
    trace = launched["traceId"]
    assert "parentSpanId" not in launched and attrs(launched["attributes"])["cloister.pcr0"] == pcr0
    runner_res, sandbox = span_named(rx, "sandbox launch", service="cloisterd-runner", traceId=trace)
    assert sandbox["parentSpanId"] == launched["spanId"] and sandbox["kind"] == 2
    assert runner_res["cloister.role"] == "runner" and runner_res["process.pid"] == server.role_pid("runner")
    # the agent's release, forwarded by the runner, answered by the api, with the KMS call it makes
    _, forward = span_named(rx, "enclave call forward", service="cloisterd-runner", traceId=trace,
                            attr_cloister__call="release of model-key")
    _, release = span_named(rx, "POST /v1/kms/", traceId=trace, parentSpanId=forward["spanId"])
    assert attrs(release["attributes"])["http.response.status_code"] == 200
    rx.wait_for(lambda: [s for _, s in rx.spans() if s["traceId"] == trace and s["name"].startswith("kms /v1/")
                         and s["kind"] == 3])
    if os.geteuid() == 0:  # started as root: the roles export under their own uids and seccomp filters
        for role in ("api", "runner"):
            status = Path(f"/proc/{server.role_pid(role)}/status").read_text()
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
            assert uid == role_user(role)[0] and re.search(r"^Seccomp:\s+2", status, re.M), status


def exports_of(rx, span_id):
    """The /v1/traces requests that carried span SPAN_ID, in order."""
    return [r for r in rx.requests_to("/v1/traces") if span_id in json.dumps(r.body)]


def traced_call(server, rx, path="/v1/whoami", parent=None):
    """An API call whose span is known by its parent (a traceparent of our
    own; PARENT, a span id in hex, or a new one)."""
    parent = parent or os.urandom(8).hex()
    tp = f"00-{os.urandom(16).hex()}-{parent}-01"
    assert server.request("GET", path, headers={"traceparent": tp}).status_code == 200
    return parent


def dropped_spans(server):
    m = re.search(r'cloister_telemetry_dropped_total\{signal="traces"\} (\d+)', server.request("GET", "/metrics").text)
    return int(m.group(1))


def test_429_and_503_are_retried_honouring_retry_after_and_400_is_not(traced):
    server, rx = traced
    parent = os.urandom(8).hex()
    rx.answer(429, {"Retry-After": "2"}, times=1, paths=["/v1/traces"], containing=parent)
    parent = traced_call(server, rx, parent=parent)
    tries = rx.wait_for(lambda: [r for r in exports_of(rx, parent) if r.status == 200] and exports_of(rx, parent))
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].time - tries[0].time >= 1.9  # Retry-After: 2 honoured

    parent = os.urandom(8).hex()
    rx.answer(503, times=2, paths=["/v1/traces"], containing=parent)
    parent = traced_call(server, rx, parent=parent)
    tries = rx.wait_for(lambda: [r for r in exports_of(rx, parent) if r.status == 200] and exports_of(rx, parent))
    assert [r.status for r in tries] == [503, 503, 200]
    assert tries[2].time - tries[1].time > tries[1].time - tries[0].time  # the backoff grows

    refused = os.urandom(8).hex()
    rx.answer(400, times=1, paths=["/v1/traces"], containing=refused)
    refused = traced_call(server, rx, parent=refused)
    rx.wait_for(lambda: exports_of(rx, refused))
    later = traced_call(server, rx)  # a later export goes through...
    rx.wait_for(lambda: [r for r in exports_of(rx, later) if r.status == 200])
    assert [r.status for r in exports_of(rx, refused)] == [400]  # ...and the refused batch never came back
    assert dropped_spans(server) == 1

    # a partial success: what the collector says it rejected is counted dropped
    rx.answer(200, paths=["/v1/traces"], body={"partialSuccess": {"rejectedSpans": "1", "errorMessage": "too old"}})
    partly = traced_call(server, rx)
    rx.wait_for(lambda: exports_of(rx, partly))
    deadline = time.monotonic() + 10
    while dropped_spans(server) != 2:
        assert time.monotonic() < deadline, dropped_spans(server)
        time.sleep(0.1)
    assert len(exports_of(rx, partly)) == 1  # and it is not sent again


def slowest_of(server, n):
    """The longest of N API calls, in seconds."""
    slowest = 0
    for _ in range(n):
        t = time.monotonic()
        assert server.request("GET", "/v1/whoami").status_code == 200
        slowest = max(slowest, time.monotonic() - t)
    return slowest


def trace_queue(server):
    """(records queued, records dropped) of the api role's traces, as /metrics says."""
    text = server.request("GET", "/metrics").text
    queued = re.search(r'cloister_telemetry_queued_records\{signal="traces"\} (\d+)', text)
    return int(queued.group(1)), int(re.search(r'cloister_telemetry_dropped_total\{signal="traces"\} (\d+)', text).group(1))


def test_drops_are_counted_when_the_collector_is_down_and_calls_stay_fast(tmp_path, receiver):
    server = traced_server(tmp_path, receiver, OTEL_BSP_MAX_QUEUE_SIZE="4", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2")
    try:
        receiver.stop()  # refused connections from now on
        # The exporter takes a batch (2 spans) and keeps it through its retries (0.5 s, 1 s, 2 s, 4 s): the queue
        # fills behind it (every call is a span, the /metrics calls too). Wait until it is full.
        deadline = time.monotonic() + 20
        slowest = 0
        queued, dropped = 0, 0
        while queued < 4:
            assert time.monotonic() < deadline, (queued, dropped)
            t = time.monotonic()
            queued, dropped = trace_queue(server)
            slowest = max(slowest, time.monotonic() - t)
        # From now on a span finds the queue full and is dropped, or takes the place of one the exporter took (at
        # most a batch of 2 in flight, dropped in its turn): of the 22 that follow, at least 20 are counted.
        slowest = max(slowest, slowest_of(server, 22))
        assert slowest < 2.0, slowest  # no call waits for the retries
        deadline = time.monotonic() + 20
        while (now := trace_queue(server))[1] - dropped < 20:  # the last spans may end just after their answer
            assert time.monotonic() < deadline, (now, dropped)
        assert "telemetry records dropped" in server.read_log()
    finally:
        server.stop()


def test_api_calls_stay_fast_while_the_collector_hangs(tmp_path, receiver):
    server = traced_server(tmp_path, receiver, OTEL_EXPORTER_OTLP_TIMEOUT="10000")
    try:
        receiver.hang()
        traced_call(server, receiver)
        receiver.wait_for(lambda: receiver.arrived)  # an export waits for its answer
        slowest = slowest_of(server, 50)
        assert slowest < 2.0, slowest  # a call that waited for the export would take its 10 s
    finally:
        receiver.release()
        t = time.monotonic()
        server.stop()
        assert time.monotonic() - t < 15  # the last flush has a deadline
    assert receiver.problems == []


def test_an_ordinary_users_start_exports_from_the_landlocked_roles(tmp_path, receiver):
    """Started as nobody, the api and proxy roles run under Landlock (the
    runner without): their export still reaches the collector, the proxy's
    included, with their filters as they are."""
    base = tmp_path / "nobody"
    base.mkdir()
    os.chown(base, 65534, 65534)
    binary = base / "cloisterd"  # where an ordinary user can run it
    shutil.copy(CLOISTERD, binary)
    os.chmod(binary, 0o755)
    s = Server(base / "data", prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"), binary=binary,
               env_extra=receiver.otel_env(OTEL_EXPORTER_OTLP_METRICS_COMPRESSION="none"))
    s.start()
    try:
        if "Landlock is unavailable" in s.read_log():
            pytest.skip("this kernel offers no Landlock")
        assert s.request("GET", "/v1/whoami").status_code == 200
        res, _ = span_named(receiver, "GET /v1/whoami")
        assert res["process.pid"] == s.role_pid("api")
        # the proxy's exporter runs too: its dropped counter arrives as a metric of its own
        receiver.wait_for(lambda: [m for r, m in receiver.metrics() if r.get("service.name") == "cloisterd-proxy"
                                   and m["name"] == "cloister_telemetry_dropped"])
        assert "Landlock applied" in s.read_log()
        # a signal's own variable: metrics uncompressed, traces gzip as ever
        assert all("Content-Encoding" not in r.headers for r in receiver.requests_to("/v1/metrics"))
        assert all(r.headers.get("Content-Encoding") == "gzip" for r in receiver.requests_to("/v1/traces"))
    finally:
        s.stop()
    assert receiver.problems == []
