"""A test OTLP/HTTP receiver (JSON encoding): a real HTTP server on loopback
that records every export request and checks it against the OTLP JSON rules
(opentelemetry-proto docs/specification.md, "JSON Protobuf Encoding"):
trace and span ids as lower-case hex of the right length, enums as integers,
lowerCamelCase field names, 64-bit integers as decimal strings or numbers,
the required fields of spans, log records and metric points, resource
attributes. A request whose body is gzip (Content-Encoding) is gunzipped.

Shared by the telemetry tests (test_otlp, test_tracing, test_prometheus):

    from otlp_receiver import Receiver
    with Receiver() as rx:            # or rx = Receiver(); ...; rx.stop()
        env = rx.otel_env()           # OTEL_EXPORTER_OTLP_ENDPOINT and quick batching
        ...
        span = rx.wait_for(lambda: rx.find_span(name="GET /v1/whoami"), timeout=20)
        rx.answer(429, {"Retry-After": "1"}, times=1)   # the next request's answer
        rx.hang()  / rx.release()     # hold every answer until released
        assert rx.problems == []      # every request passed the checker

Each record: path, headers, body (the decoded JSON, or None), status (what
was answered), problems (the checker's complaints), time (monotonic).
"""
import gzip
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
UINT_STR = re.compile(r"^[0-9]+$")
INT_STR = re.compile(r"^-?[0-9]+$")

SIGNALS = {"/v1/traces": "resourceSpans", "/v1/metrics": "resourceMetrics", "/v1/logs": "resourceLogs"}
ANY_VALUE_KINDS = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue"}


# ---- the checker ----

def _camel_keys(v, where, problems):
    if isinstance(v, dict):
        for k, x in v.items():
            if not CAMEL.match(k):
                problems.append(f"{where}: field {k!r} is not lowerCamelCase")
            _camel_keys(x, f"{where}.{k}", problems)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _camel_keys(x, f"{where}[{i}]", problems)


def _is_uint64(v):
    return (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (isinstance(v, str) and bool(UINT_STR.match(v)))


def _is_int64(v):
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(INT_STR.match(v)))


def _is_enum(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _time(obj, field, where, problems, required=True):
    if field not in obj:
        if required:
            problems.append(f"{where}: {field} missing")
        return None
    v = obj[field]
    if not _is_uint64(v):
        problems.append(f"{where}: {field} {v!r} is not a uint64 as a decimal string or a number")
        return None
    return int(v)


def _any_value(v, where, problems):
    if not isinstance(v, dict):
        problems.append(f"{where}: an AnyValue must be an object, not {v!r}")
        return
    kinds = set(v) & ANY_VALUE_KINDS
    if len(kinds) > 1 or set(v) - ANY_VALUE_KINDS:
        problems.append(f"{where}: an AnyValue holds exactly one of {sorted(ANY_VALUE_KINDS)}: {v!r}")
        return
    if not kinds:
        return  # an empty value is allowed
    k = kinds.pop()
    x = v[k]
    ok = {"stringValue": lambda: isinstance(x, str), "boolValue": lambda: isinstance(x, bool),
          "intValue": lambda: _is_int64(x), "doubleValue": lambda: isinstance(x, (int, float)) and not isinstance(x, bool)
          or x in ("NaN", "Infinity", "-Infinity"),
          "bytesValue": lambda: isinstance(x, str),
          "arrayValue": lambda: isinstance(x, dict) and isinstance(x.get("values", []), list),
          "kvlistValue": lambda: isinstance(x, dict) and isinstance(x.get("values", []), list)}[k]()
    if not ok:
        problems.append(f"{where}: {k} {x!r} has the wrong type")
    elif k == "arrayValue":
        for i, e in enumerate(x.get("values", [])):
            _any_value(e, f"{where}.arrayValue[{i}]", problems)
    elif k == "kvlistValue":
        _attributes(x.get("values", []), f"{where}.kvlistValue", problems)


def _attributes(attrs, where, problems):
    if not isinstance(attrs, list):
        problems.append(f"{where}: attributes must be a list")
        return
    for i, kv in enumerate(attrs):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str) or not kv.get("key"):
            problems.append(f"{where}[{i}]: a KeyValue needs a non-empty string key: {kv!r}")
            continue
        if "value" in kv:
            _any_value(kv["value"], f"{where}[{i}]({kv['key']})", problems)


def _id(obj, field, pattern, where, problems, required):
    v = obj.get(field)
    if v in (None, "") and not required:
        return
    if not isinstance(v, str) or not pattern.match(v) or set(v) == {"0"}:
        problems.append(f"{where}: {field} {v!r} is not {'32' if pattern is HEX32 else '16'} lower-case hex digits, "
                        "not all zero")


def _span(s, where, problems):
    _id(s, "traceId", HEX32, where, problems, True)
    _id(s, "spanId", HEX16, where, problems, True)
    _id(s, "parentSpanId", HEX16, where, problems, False)
    if not isinstance(s.get("name"), str) or not s.get("name"):
        problems.append(f"{where}: name missing")
    if "kind" in s and not _is_enum(s["kind"], 0, 5):
        problems.append(f"{where}: kind {s['kind']!r} is not a SpanKind integer")
    start = _time(s, "startTimeUnixNano", where, problems)
    end = _time(s, "endTimeUnixNano", where, problems)
    if start is not None and end is not None and end < start:
        problems.append(f"{where}: ends before it starts")
    _attributes(s.get("attributes", []), f"{where}.attributes", problems)
    for i, link in enumerate(s.get("links", [])):
        _id(link, "traceId", HEX32, f"{where}.links[{i}]", problems, True)
        _id(link, "spanId", HEX16, f"{where}.links[{i}]", problems, True)
    for i, ev in enumerate(s.get("events", [])):
        _time(ev, "timeUnixNano", f"{where}.events[{i}]", problems)
    st = s.get("status", {})
    if not isinstance(st, dict) or ("code" in st and not _is_enum(st["code"], 0, 2)):
        problems.append(f"{where}: status {st!r} has no StatusCode integer")
    if "flags" in s and not (isinstance(s["flags"], int) and 0 <= s["flags"] < 2 ** 32):
        problems.append(f"{where}: flags {s['flags']!r} is not a fixed32")


def _log(r, where, problems):
    _time(r, "timeUnixNano", where, problems, required=False)
    _time(r, "observedTimeUnixNano", where, problems, required=False)
    if "timeUnixNano" not in r and "observedTimeUnixNano" not in r:
        problems.append(f"{where}: neither timeUnixNano nor observedTimeUnixNano")
    if "severityNumber" in r and not _is_enum(r["severityNumber"], 0, 24):
        problems.append(f"{where}: severityNumber {r['severityNumber']!r} is not a SeverityNumber integer")
    if "body" in r:
        _any_value(r["body"], f"{where}.body", problems)
    _attributes(r.get("attributes", []), f"{where}.attributes", problems)
    _id(r, "traceId", HEX32, where, problems, False)
    _id(r, "spanId", HEX16, where, problems, False)


def _number_point(p, where, problems):
    _time(p, "timeUnixNano", where, problems)
    _time(p, "startTimeUnixNano", where, problems, required=False)
    _attributes(p.get("attributes", []), f"{where}.attributes", problems)
    if ("asInt" in p) == ("asDouble" in p):
        problems.append(f"{where}: a point has exactly one of asInt, asDouble")
    elif "asInt" in p and not _is_int64(p["asInt"]):
        problems.append(f"{where}: asInt {p['asInt']!r} is not an int64")
    elif "asDouble" in p and (not isinstance(p["asDouble"], (int, float)) or isinstance(p["asDouble"], bool)):
        problems.append(f"{where}: asDouble {p['asDouble']!r} is not a number")


def _histogram_point(p, where, problems):
    _time(p, "timeUnixNano", where, problems)
    _time(p, "startTimeUnixNano", where, problems, required=False)
    _attributes(p.get("attributes", []), f"{where}.attributes", problems)
    count = p.get("count")
    if not _is_uint64(count):
        problems.append(f"{where}: count {count!r} is not a uint64")
        return
    buckets, bounds = p.get("bucketCounts", []), p.get("explicitBounds", [])
    if not all(_is_uint64(b) for b in buckets):
        problems.append(f"{where}: bucketCounts {buckets!r} are not uint64s")
        return
    if buckets and len(buckets) != len(bounds) + 1:
        problems.append(f"{where}: {len(buckets)} bucketCounts for {len(bounds)} explicitBounds (need one more)")
    if buckets and sum(int(b) for b in buckets) != int(count):
        problems.append(f"{where}: bucketCounts add up to {sum(int(b) for b in buckets)}, count is {count}")
    if any(not isinstance(b, (int, float)) for b in bounds) or bounds != sorted(bounds):
        problems.append(f"{where}: explicitBounds {bounds!r} are not increasing numbers")


def _metric(m, where, problems):
    if not isinstance(m.get("name"), str) or not m.get("name"):
        problems.append(f"{where}: name missing")
    data = [k for k in ("gauge", "sum", "histogram", "exponentialHistogram", "summary") if k in m]
    if len(data) != 1:
        problems.append(f"{where}: a metric has exactly one data field, not {data}")
        return
    kind = data[0]
    d = m[kind]
    if kind in ("sum", "histogram", "exponentialHistogram") and not _is_enum(d.get("aggregationTemporality"), 1, 2):
        problems.append(f"{where}.{kind}: aggregationTemporality {d.get('aggregationTemporality')!r} is not 1 or 2")
    if kind == "sum" and "isMonotonic" in d and not isinstance(d["isMonotonic"], bool):
        problems.append(f"{where}.sum: isMonotonic is not a boolean")
    points = d.get("dataPoints")
    if not isinstance(points, list) or not points:
        problems.append(f"{where}.{kind}: no dataPoints")
        return
    for i, p in enumerate(points):
        (_histogram_point if kind == "histogram" else _number_point)(p, f"{where}.{kind}.dataPoints[{i}]", problems)


def check_request(path, body):
    """The OTLP JSON rules broken by BODY, an export request to PATH: a list
    of readable complaints (empty when it is valid)."""
    problems = []
    top = SIGNALS.get(path)
    if top is None:
        return [f"unknown path {path} (OTLP/HTTP paths: {sorted(SIGNALS)})"]
    if not isinstance(body, dict) or set(body) != {top}:
        return [f"the body of {path} must be an object with only {top}, not {list(body) if isinstance(body, dict) else body!r}"]
    _camel_keys(body, "request", problems)
    scope_key = {"resourceSpans": "scopeSpans", "resourceMetrics": "scopeMetrics", "resourceLogs": "scopeLogs"}[top]
    item_key = {"resourceSpans": "spans", "resourceMetrics": "metrics", "resourceLogs": "logRecords"}[top]
    check = {"resourceSpans": _span, "resourceMetrics": _metric, "resourceLogs": _log}[top]
    for i, rs in enumerate(body[top]):
        where = f"{top}[{i}]"
        res = rs.get("resource", {})
        _attributes(res.get("attributes", []), f"{where}.resource.attributes", problems)
        for j, ss in enumerate(rs.get(scope_key, [])):
            scope = ss.get("scope", {})
            if scope and not isinstance(scope.get("name", ""), str):
                problems.append(f"{where}.{scope_key}[{j}].scope: name is not a string")
            for k, item in enumerate(ss.get(item_key, [])):
                check(item, f"{where}.{scope_key}[{j}].{item_key}[{k}]", problems)
    return problems


def attrs(kvs):
    """An OTLP attribute list as a dict of plain values (intValue as int)."""
    out = {}
    for kv in kvs or []:
        v = kv.get("value", {})
        if "intValue" in v:
            out[kv["key"]] = int(v["intValue"])
        elif v:
            out[kv["key"]] = next(iter(v.values()))
    return out


# ---- the server ----

class Record:
    def __init__(self, path, headers, body, status, problems):
        self.path, self.headers, self.body, self.status, self.problems = path, headers, body, status, problems
        self.time = time.monotonic()

    def __repr__(self):
        return f"<{self.path} {self.status} problems={self.problems}>"


class Receiver:
    """An OTLP/HTTP JSON receiver on 127.0.0.1 (a port of its own)."""

    def __init__(self, port=0):
        self.records = []
        self.arrived = 0  # requests received, answered or not (hang())
        self.problems = []  # every record's, prefixed with its path
        self._answers = []  # [status, headers, times left, paths, body, containing]
        self._lock = threading.Condition()
        self._hang = threading.Event()
        self._hang.set()  # set: answer at once
        self._conns = set()  # open connections, closed by stop()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with rx._lock:
                    rx._conns.add(self.connection)

            def finish(self):
                with rx._lock:
                    rx._conns.discard(self.connection)
                super().finish()

            def do_POST(self):
                rx._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stops listening and closes every connection (kept-alive ones
        included): new ones are then refused."""
        self._hang.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def otel_env(self, **extra):
        """The variables that point cloisterd at this receiver, batching
        quickly so that tests wait little."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
               "OTEL_METRIC_EXPORT_INTERVAL": "500"}
        env.update(extra)
        return env

    # programmable answers
    def answer(self, status, headers=None, times=1, paths=None, body=None, containing=None):
        """The next TIMES requests (to PATHS, or any; whose JSON body holds the
        text CONTAINING, or any: other roles export too) get STATUS with
        HEADERS (and BODY, a JSON value: e.g. a partialSuccess)."""
        with self._lock:
            self._answers.append([status, headers or {}, times, paths, body, containing])

    def hang(self):
        """Holds every answer until release()."""
        self._hang.clear()

    def release(self):
        self._hang.set()

    def _next_answer(self, path, body):
        with self._lock:
            for a in self._answers:
                if a[2] > 0 and (a[3] is None or path in a[3]) and (a[5] is None or a[5] in json.dumps(body)):
                    a[2] -= 1
                    return a[0], a[1], a[4]
        return 200, {}, None

    @staticmethod
    def _read_body(h):
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length", "0")))

    def _handle(self, h):
        raw = self._read_body(h)
        problems = []
        body = None
        if h.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            problems.append(f"Content-Type {h.headers.get('Content-Type')!r} is not application/json")
        enc = h.headers.get("Content-Encoding", "identity")
        try:
            if enc == "gzip":
                raw = gzip.decompress(raw)
            elif enc != "identity":
                problems.append(f"Content-Encoding {enc!r} (gzip or none)")
            body = json.loads(raw)
        except (OSError, ValueError) as e:
            problems.append(f"the body is not {'gzip of ' if enc == 'gzip' else ''}JSON: {e}")
        path = h.path.split("?")[0]
        if body is not None:
            problems += check_request(path, body)
        with self._lock:
            self.arrived += 1
            self._lock.notify_all()
        self._hang.wait()
        status, headers, answer = self._next_answer(path, body)
        if problems and status == 200:
            status, answer = 400, None
        if answer is None:
            answer = {} if status == 200 else {"code": 3, "message": "; ".join(problems) or "refused"}
        payload = json.dumps(answer).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except OSError:
            pass
        with self._lock:
            self.records.append(Record(path, dict(h.headers), body, status, problems))
            self.problems += [f"{path}: {p}" for p in problems]
            self._lock.notify_all()

    # reading what arrived
    def wait_for(self, predicate, timeout=20):
        """Polls PREDICATE (called without arguments) as requests arrive until
        it returns something true, which is returned; AssertionError after
        TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = predicate()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"nothing matched within {timeout}s; {len(self.records)} requests arrived: "
                                         f"{self.records[-5:]}")
                self._lock.wait(min(left, 0.2))

    def requests_to(self, path):
        with self._lock:
            return [r for r in self.records if r.path == path]

    def _items(self, path, scope_key, item_key):
        out = []
        for r in self.requests_to(path):
            if r.status != 200 or not r.body:
                continue
            for rs in r.body.get(SIGNALS[path], []):
                resource = attrs(rs.get("resource", {}).get("attributes"))
                for ss in rs.get(scope_key, []):
                    for item in ss.get(item_key, []):
                        out.append((resource, item))
        return out

    def spans(self):
        """Every span accepted: (resource attributes as a dict, span)."""
        return self._items("/v1/traces", "scopeSpans", "spans")

    def logs(self):
        return self._items("/v1/logs", "scopeLogs", "logRecords")

    def metrics(self):
        return self._items("/v1/metrics", "scopeMetrics", "metrics")

    def find_span(self, service=None, **want):
        """The spans whose fields (name, kind, ...) equal WANT, with attributes
        given as attr_<key with dots as __>, of SERVICE when given."""
        out = []
        for res, s in self.spans():
            if service and res.get("service.name") != service:
                continue
            a = attrs(s.get("attributes"))
            ok = True
            for k, v in want.items():
                if k.startswith("attr_"):
                    ok = ok and a.get(k[5:].replace("__", ".")) == v
                else:
                    ok = ok and s.get(k) == v
            if ok:
                out.append((res, s))
        return out
