"""Unambiguous HTTP framing (issue 14 item 4): the proxy and the API refuse
with 400 every request whose body length or authority two parsers could read
differently, before anything of it reaches the upstream or a handler; bodies
over the limit get a 413 JSON answer on HTTP/1.1 and HTTP/2 alike.

The attacker speaks raw bytes (HTTP/1.1 on plain and TLS sockets) and raw
HTTP/2 frames (python-h2 with its own header checks off). The upstream is
echo_upstream.py, which records everything it receives: for every refused
request it must have received nothing. The cases are written here as data,
after the classes of the public aws/http-desync-guardian test suite."""
import json
import re
import socket
import ssl
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import manifest, raw_exchange as exchange, start_with_proxy, statuses
from echo_upstream import EchoUpstream

DOMAIN = "localhost"
HOST = f"wiki.{DOMAIN}"
BIG = 20 * 1024 * 1024

# (name, header lines, body): each one a request two HTTP parsers can frame
# differently; every one must be answered 400 and reach nobody
AMBIGUOUS = [
    ("te-te", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ("te-te-identity", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"),
    ("te-identity-te", "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ("te-trailing-space", "Transfer-Encoding: chunked \r\n", b"0\r\n\r\n"),
    ("te-trailing-tab", "Transfer-Encoding: chunked\t\r\n", b"0\r\n\r\n"),
    ("te-xchunked", "Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    ("te-chunkedx", "Transfer-Encoding: chunkedx\r\n", b"0\r\n\r\n"),
    ("te-list", "Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    ("te-list-identity", "Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    ("te-quoted", 'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"),
    ("te-folded", "Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    ("cl-te", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ("te-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n"),
    ("cl-cl-equal", "Content-Length: 4\r\nContent-Length: 4\r\n", b"abcd"),
    ("cl-cl-differ", "Content-Length: 4\r\nContent-Length: 40\r\n", b"abcd"),
    ("cl-list", "Content-Length: 4, 4\r\n", b"abcd"),
    ("cl-plus", "Content-Length: +4\r\n", b"abcd"),
    ("cl-underscore", "Content_Length: 4\r\n", b""),
    ("te-underscore", "Transfer_Encoding: chunked\r\n", b""),
    ("cl-dot", "Content.Length: 4\r\n", b""),
    ("te-dot", "Transfer.Encoding: chunked\r\n", b""),
    ("cl-underscore-beside-cl", "Content-Length: 4\r\nContent_Length: 0\r\n", b"abcd"),
    ("host-host", f"Host: vault.{DOMAIN}\r\n", b""),
]

# (name, extra HTTP/2 fields): the same questions over HTTP/2
AMBIGUOUS_H2 = [
    ("host-differs", [("host", f"vault.{DOMAIN}")]),
    ("host-host", [("host", HOST), ("host", f"vault.{DOMAIN}")]),
    ("te", [("transfer-encoding", "chunked")]),
    ("cl-te", [("content-length", "0"), ("transfer-encoding", "chunked")]),
    ("te-obfuscated", [("transfer-encoding", "chunked ")]),
    ("cl-alias", [("content_length", "0")]),
    ("te-alias", [("transfer_encoding", "chunked")]),
    ("cl-cl-equal", [("content-length", "0"), ("content-length", "0")]),
    ("cl-cl-differ", [("content-length", "0"), ("content-length", "7")]),
]

# (name, request head bytes): heads h2o 2.2.5's parser refuses outright, which
# it answers with a bare text/plain 400 of its own; each one must get the
# listener's JSON 400 naming the problem, then the close, and reach nobody. REQUEST_LINE is followed by the fields.
REQUEST_LINE = "POST /submit HTTP/1.1\r\n"
UNPARSABLE = [
    ("space-before-colon", "Content-Length : 4\r\n", "before its colon"),
    ("tab-before-colon", "Transfer-Encoding\t: chunked\r\n", "before its colon"),
    ("space-in-name", "Content Length: 4\r\n", "before its colon"),
    ("ctl-in-name", "X-A\x01b: 1\r\n", "not allowed in a header name"),
    ("ctl-in-value", "X-A: a\x01b\r\n", "control character"),
    ("nul-in-value", "X-A: a\x00b\r\n", "control character"),
    ("del-in-value", "X-A: a\x7fb\r\n", "control character"),
    ("bare-cr", "X-A: a\rContent-Length: 4\r\n", "bare CR"),
    ("no-colon", "Content-Length 4\r\n", "without a colon"),
    ("empty-name", ": 4\r\n", "empty name"),
]
BAD_REQUEST_LINES = [
    ("http-version", "POST /submit HTTX/1.1\r\n"),
    ("two-spaces", "POST  /submit HTTP/1.1\r\n"),
    ("extra-word", "POST /submit HTTP/1.1 x\r\n"),
    ("ctl-in-target", "POST /sub\x01mit HTTP/1.1\r\n"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    up = EchoUpstream()
    up_port = up.start()
    s, http_port, https_port = start_with_proxy(tmp_path_factory.mktemp("framing") / "data", DOMAIN)
    c = SimpleNamespace(s=s, up=up, http_port=http_port, https_port=https_port, token=None)
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "alice", {"type": "human", "email": "alice@example.com"}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "alice-all", {"rules": [
            {"effect": "allow", "condition": {"match": 'ctx.user.name == "alice"'}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["alice-all"]}),
        manifest("Service", "vault", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                      "policies": ["alice-all"]}),
        manifest("Service", "matrix", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                       "policies": ["alice-all"], "allowPathParameters": True}),
    ]})
    assert r.status_code == 200, r.text
    tok = s.request("POST", "/v1/tokens", json={"credential": "alice-cli"}).json()["token"]
    r = s.request("POST", "/v1/auth/token", token="", json={"token": tok})
    assert r.status_code == 200, r.text
    c.token = r.json()["access_token"]
    # the proxy serves once its configuration stream carries the Services
    deadline = time.time() + 15
    while first_response(exchange(c.http_port, get("/ready", c.token)))[0] != 200:
        assert time.time() < deadline, "the proxy never served the wiki"
        time.sleep(0.05)
    yield c
    s.stop()
    up.stop()


def first_response(raw):
    """(status, headers {lower name: value}, body) of the first HTTP/1.1 response in RAW."""
    m = re.match(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n", raw)
    if not m:
        return None, {}, b""
    headers = {}
    for line in m.group(2).decode("latin-1").split("\r\n"):
        if line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    rest = raw[m.end():]
    if "content-length" in headers:
        return int(m.group(1)), headers, rest[:int(headers["content-length"])]
    return int(m.group(1)), headers, rest


def all_responses(raw):
    """Every HTTP/1.1 response in RAW, each (status, headers, body); each
    must carry a Content-Length but the last."""
    out = []
    while raw:
        status, headers, body = first_response(raw)
        if status is None:
            break
        out.append((status, headers, body))
        end = raw.index(b"\r\n\r\n") + 4 + len(body)
        raw = raw[end:]
    return out


def assert_refused_after(raw, words, code="invalid"):
    """RAW holds 200 answers, then one JSON 400 naming WORDS, then nothing."""
    got = all_responses(raw)
    assert [r[0] for r in got[:-1]] == [200] * (len(got) - 1) and got and got[-1][0] == 400, raw[:800]
    status, headers, body = got[-1]
    assert headers.get("content-type") == "application/json", headers
    e = error_of(body)
    assert e["code"] == code and words in e["message"], e


def get(path, token, host=HOST):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Connection: close\r\n\r\n").encode()


def error_of(body):
    e = json.loads(body)["error"]
    assert e["code"] and e["message"], e
    return e


def assert_refused_400(raw, name):
    status, headers, body = first_response(raw)
    assert status == 400, (name, raw[:400])
    assert headers.get("content-type") == "application/json", (name, headers)
    e = error_of(body)
    assert e["code"] in ("invalid", "bad_request"), (name, e)
    # nothing after the refused request is answered: its bytes are not trusted
    assert statuses(raw) == [400], (name, raw[:600])
    return e


# ---- HTTP/1.1 through the proxy's plain listener ----

@pytest.mark.parametrize("name,head,body", AMBIGUOUS, ids=[c[0] for c in AMBIGUOUS])
def test_proxy_refuses_ambiguous_framing(cluster, name, head, body):
    c = cluster
    c.up.clear()
    req = (f"POST /submit HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n{head}\r\n").encode() + body
    smuggled = get("/admin", c.token)  # what a desync would turn into a request of its own
    e = assert_refused_400(exchange(c.http_port, req + smuggled), name)
    assert "ambiguous" in e["message"] or "framing" in e["message"] or "Transfer-Encoding" in e["message"], e
    assert c.up.requests == [], (name, c.up.requests)


def test_proxy_refusal_names_the_problem(cluster):
    c = cluster
    cases = {"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n": "both Content-Length and Transfer-Encoding",
             "Content-Length: 4\r\nContent-Length: 4\r\n": "more than one Content-Length",
             "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n": "more than one Transfer-Encoding",
             "Content_Length: 4\r\n": "aliases Content-Length",
             "Transfer_Encoding: chunked\r\n": "aliases Transfer-Encoding",
             f"Host: vault.{DOMAIN}\r\n": "more than one Host",
             "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n": "more than one Transfer-Encoding"}
    for head, words in cases.items():
        req = (f"POST /x HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n{head}\r\n0\r\n\r\n").encode()
        status, _, body = first_response(exchange(c.http_port, req))
        assert status == 400 and words in body.decode(), (head, body)
        assert json.loads(body)["error"]["code"] == "invalid" and json.loads(body)["requestId"]


def test_legitimate_bodies_still_reach_the_upstream(cluster):
    c = cluster
    c.up.clear()
    chunked = (f"POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
               f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").encode()
    assert first_response(exchange(c.http_port, chunked))[0] == 200
    with_cl = (f"POST /cl HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
               f"Content-Length: 5\r\nConnection: close\r\n\r\nhello").encode()
    assert first_response(exchange(c.http_port, with_cl))[0] == 200
    got = {r["target"]: r for r in c.up.requests}
    assert set(got) == {"/chunked", "/cl"}, c.up.requests
    assert got["/chunked"]["body"] == b"hello world" and got["/cl"]["body"] == b"hello"
    for r in got.values():
        assert "ambiguous" not in r


def test_expect_100_continue_is_read_as_sent(cluster):
    c = cluster
    c.up.clear()
    req = (f"POST /expect HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
           f"Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").encode()
    assert statuses(exchange(c.http_port, req)) == [100, 200]
    assert [(r["target"], r["body"]) for r in c.up.requests] == [("/expect", b"hello")]


def test_plain_connections_stay_http1(cluster):
    """No Upgrade: h2c (nor prior knowledge) on the plain listener: HTTP/2
    there would bypass the HTTP/1 head check and the body guard."""
    c = cluster
    c.up.clear()
    req = (f"GET /h2c HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
           f"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
           f"Content-Length: 0\r\nContent-Length: 0\r\n\r\n").encode()
    assert statuses(exchange(c.http_port, req)) == [400]
    assert exchange(c.http_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")[:4] != b"\x00\x00\x12\x04"  # no SETTINGS
    assert c.up.requests == []


def test_keep_alive_goes_on_after_a_good_request(cluster):
    """A pipelined pair of unambiguous requests is answered twice: the checker
    reads the head of each request, not the first one again."""
    c = cluster
    c.up.clear()
    one = (f"POST /one HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
           f"Content-Length: 3\r\n\r\nabc").encode()
    raw = exchange(c.http_port, one + get("/two", c.token))
    assert statuses(raw) == [200, 200], raw[:600]
    assert [r["target"] for r in c.up.requests] == ["/one", "/two"]


def test_path_parameters_are_refused_unless_the_service_opts_in(cluster):
    c = cluster
    c.up.clear()
    for path in ("/;x/admin", "/a;b/c", "/a%3Bb/c"):
        status, _, body = first_response(exchange(c.http_port, get(path, c.token)))
        assert status == 400 and "spec.allowPathParameters" in error_of(body)["message"], (path, body)
    assert c.up.requests == []
    # the query may carry ';' freely
    assert first_response(exchange(c.http_port, get("/a?x=1;y=2", c.token)))[0] == 200
    c.up.clear()
    status, _, _ = first_response(exchange(c.http_port, get("/a;v=1/b", c.token, host=f"matrix.{DOMAIN}")))
    assert status == 200
    assert [r["target"] for r in c.up.requests] == ["/a;v=1/b"]


# ---- HTTP/1.1 over TLS to the API ----

@pytest.mark.parametrize("name,head,body", AMBIGUOUS, ids=[c[0] for c in AMBIGUOUS])
def test_api_refuses_ambiguous_framing(cluster, name, head, body):
    s = cluster.s
    req = (f"POST /v1/groups HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nAuthorization: Bearer {s.token}\r\n"
           f"Content-Type: application/json\r\n{head}\r\n").encode() + body
    follow = (f"GET /v1/groups HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nAuthorization: Bearer {s.token}\r\n"
              f"Connection: close\r\n\r\n").encode()
    e = assert_refused_400(exchange(s.port, req + follow, tls_ca=s.ca), name)
    assert e["code"] == "bad_request", e


# ---- HTTP/2 (python-h2) ----

def h2_exchange(port, ca, headers, body=None, send_all=True):
    """One HTTP/2 request on a fresh TLS connection with exactly HEADERS and,
    when BODY is given, that body in DATA frames as flow control allows
    (stopping early when SEND_ALL is false and the answer came). Returns
    (status, response body, reset error code or None)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(
                client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                normalize_outbound_headers=False))
            conn.initiate_connection()
            conn.send_headers(1, headers, end_stream=body is None)
            s.sendall(conn.data_to_send())
            status, out, reset, ended = None, b"", None, False
            sent = 0
            while True:
                while body is not None and sent < len(body) and not ended:
                    try:
                        window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                    except h2.exceptions.StreamClosedError:
                        break
                    if window <= 0:
                        break
                    n = min(window, len(body) - sent)
                    conn.send_data(1, body[sent:sent + n], end_stream=sent + n == len(body))
                    sent += n
                    s.sendall(conn.data_to_send())
                data = s.recv(65536)
                if not data:
                    return status, out, reset
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = int(dict(ev.headers)[":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        out += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended = True
                        if not send_all or body is None or sent == len(body):
                            s.sendall(conn.data_to_send())
                            return status, out, reset
                    elif isinstance(ev, h2.events.StreamReset):
                        reset = ev.error_code
                        return status, out, reset
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        return status, out, ("goaway", ev.error_code)
                s.sendall(conn.data_to_send())


def h2_base(c, authority=HOST, path="/h2", method="GET"):
    return [(":method", method), (":scheme", "https"), (":path", path), (":authority", authority),
            ("authorization", f"Bearer {c.token}")]


@pytest.mark.parametrize("name,extra", AMBIGUOUS_H2, ids=[c[0] for c in AMBIGUOUS_H2])
def test_http2_ambiguous_requests_are_refused_by_the_proxy(cluster, name, extra):
    c = cluster
    c.up.clear()
    status, body, reset = h2_exchange(c.https_port, c.s.ca, h2_base(c) + extra)
    assert status == 400 and reset in (None, 0), (name, status, body, reset)
    assert error_of(body)["code"] == "invalid"
    assert c.up.requests == [], (name, c.up.requests)


@pytest.mark.parametrize("name,extra", AMBIGUOUS_H2, ids=[c[0] for c in AMBIGUOUS_H2])
def test_http2_ambiguous_requests_are_refused_by_the_api(cluster, name, extra):
    s = cluster.s
    authority = f"127.0.0.1:{s.port}"
    extra = [(k, authority if v == HOST else v) for k, v in extra]
    headers = [(":method", "GET"), (":scheme", "https"), (":path", "/v1/groups"), (":authority", authority),
               ("authorization", f"Bearer {s.token}")] + extra
    status, body, _ = h2_exchange(s.port, s.ca, headers)
    assert status == 400 and error_of(body)["code"] == "bad_request", (name, status, body)


def test_http2_path_parameters_and_the_legitimate_request(cluster):
    c = cluster
    c.up.clear()
    status, body, _ = h2_exchange(c.https_port, c.s.ca, h2_base(c, path="/;x/admin"))
    assert status == 400 and "spec.allowPathParameters" in error_of(body)["message"]
    assert c.up.requests == []
    status, _, _ = h2_exchange(c.https_port, c.s.ca, h2_base(c))
    assert status == 200
    status, _, _ = h2_exchange(c.https_port, c.s.ca, h2_base(c, method="POST") + [("content-length", "5")],
                               body=b"hello")
    assert status == 200
    # a host field that names :authority is no conflict; the upstream sees one Host
    status, _, _ = h2_exchange(c.https_port, c.s.ca, h2_base(c) + [("host", HOST)])
    assert status == 200
    assert [(r["target"], r["body"]) for r in c.up.requests] == [("/h2", b""), ("/h2", b"hello"), ("/h2", b"")]
    assert all("ambiguous" not in r for r in c.up.requests)


@pytest.mark.parametrize("values", [("5", "5"), ("5", "9"), ("9", "5")], ids=["equal", "differ", "differ-last"])
def test_http2_repeated_content_length_with_a_body_is_refused(cluster, values):
    """h2o 2.2.5 keeps the last content-length only; the guard decodes the
    header block itself and the request is answered 400 at once, before its
    body (which matches one of the values, or none) is read."""
    c = cluster
    s = c.s
    c.up.clear()
    cls = [("content-length", v) for v in values]
    status, body, reset = h2_exchange(c.https_port, s.ca, h2_base(c, method="POST") + cls, body=b"hello",
                                      send_all=False)
    assert status == 400 and reset in (None, 0), (status, body, reset)
    e = error_of(body)
    assert e["code"] == "invalid" and "more than one Content-Length" in e["message"], e
    authority = f"127.0.0.1:{s.port}"
    headers = [(":method", "POST"), (":scheme", "https"), (":path", "/v1/groups"), (":authority", authority),
               ("authorization", f"Bearer {s.token}"), ("content-type", "application/json")] + cls
    status, body, reset = h2_exchange(s.port, s.ca, headers, body=b'{"a":', send_all=False)
    assert status == 400 and reset in (None, 0), (status, body, reset)
    e = error_of(body)
    assert e["code"] == "bad_request" and "more than one Content-Length" in e["message"], e
    assert c.up.requests == []


def h2_session(port, ca):
    """A python-h2 client connection over TLS: (socket, H2Connection)."""
    import h2.config
    import h2.connection
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


def h2_request(tls, conn, headers, body=None):
    """Sends one request on CONN's next stream and reads until it ends:
    (status, response body, reset code or None)."""
    import h2.events
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=body is None)
    if body is not None:
        conn.send_data(sid, body, end_stream=True)
    tls.sendall(conn.data_to_send())
    status, out = None, b""
    while True:
        data = tls.recv(65536)
        assert data, "connection closed"
        for ev in conn.receive_data(data):
            if getattr(ev, "stream_id", sid) != sid:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                out += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                tls.sendall(conn.data_to_send())
                return status, out, None
            elif isinstance(ev, h2.events.StreamReset):
                return status, out, ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise AssertionError(f"connection ended: {ev}")
        tls.sendall(conn.data_to_send())


def test_http2_dynamic_table_stays_in_step_across_requests(cluster):
    """One connection, many requests whose header blocks lean on HPACK's
    dynamic table (indexed fields, evictions, a block large enough to need
    CONTINUATION frames), with ambiguous requests among them: every valid
    request reaches the upstream with its fields exactly as sent, every
    ambiguous one is refused, and the connection serves on."""
    c = cluster
    c.up.clear()
    tls, conn = h2_session(c.https_port, c.s.ca)
    try:
        big = [(f"x-field-{i}", f"{i}-" + "v" * 600) for i in range(40)]  # ~25 kB: CONTINUATION frames
        expected = []
        for round_ in range(6):
            extra = [("x-round", str(round_)), ("x-same", "s" * 300)] + [
                (f"x-evict-{round_}-{i}", "e" * 200) for i in range(8)]  # overflows 4096 bytes: evictions
            if round_ == 3:
                extra += big
            headers = h2_base(c, path=f"/dyn/{round_}", method="POST") + [("content-length", "5")] + extra
            status, body, reset = h2_request(tls, conn, headers, body=b"hello")
            assert (status, reset) == (200, None), (round_, status, body)
            expected.append((f"/dyn/{round_}", extra))
            # content-length is now in the dynamic table: a second one is refused
            dup = h2_base(c, path=f"/dup/{round_}", method="POST") + [("content-length", "5"),
                                                                        ("content-length", "5")] + extra
            status, body, reset = h2_request(tls, conn, dup, body=b"hello")
            assert status == 400 and "more than one Content-Length" in error_of(body)["message"], (status, body)
    finally:
        tls.close()
    got = {r["target"]: r for r in c.up.requests}
    assert sorted(got) == sorted(t for t, _ in expected), sorted(got)
    for target, extra in expected:
        sent = [(k.lower(), v) for k, v in got[target]["headers"]
                if k.lower().startswith(("x-field-", "x-round", "x-same", "x-evict-"))]
        assert sent == extra, (target, sent[:3])
        assert got[target]["body"] == b"hello"


def test_http2_dynamic_table_on_the_api(cluster):
    """The same on the API: big, indexed, evicted and continued header
    blocks on one connection, valid ones answered 200 and a repeated
    content-length 400, the connection serving on."""
    s = cluster.s
    tls, conn = h2_session(s.port, s.ca)
    try:
        base = [(":method", "GET"), (":scheme", "https"), (":path", "/v1/groups"),
                (":authority", f"127.0.0.1:{s.port}"), ("authorization", f"Bearer {s.token}")]
        for round_ in range(5):
            extra = [(f"x-evict-{round_}-{i}", "e" * 200) for i in range(8)]
            if round_ == 2:
                extra += [(f"x-field-{i}", "v" * 600) for i in range(30)]  # CONTINUATION frames
            status, body, _ = h2_request(tls, conn, base + [("content-length", "0")] + extra)
            assert status == 200, (round_, status, body)
            status, body, _ = h2_request(tls, conn, base + [("content-length", "0"), ("content-length", "0")] + extra)
            assert status == 400 and error_of(body)["code"] == "bad_request", (round_, status, body)
    finally:
        tls.close()


def test_valid_clients_pass(cluster, tmp_path):
    """curl over HTTP/2 and HTTP/1.1, to the API and through the proxy."""
    c = cluster
    s = c.s
    c.up.clear()
    for version in ("--http2", "--http1.1"):
        out = subprocess.run(["curl", "-sS", version, "--cacert", s.ca, "-H", f"Authorization: Bearer {s.token}",
                              "-w", "\n%{http_code} %{http_version}", s.url + "/v1/groups"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.rsplit("\n", 1)[1] == f"200 {version[6:]}", (out.stdout[-300:], out.stderr)
        out = subprocess.run(["curl", "-sS", version, "--cacert", s.ca, "--resolve",
                              f"{HOST}:{c.https_port}:127.0.0.1", "-H", f"Authorization: Bearer {c.token}",
                              "--data-binary", "hello", "-w", "\n%{http_code} %{http_version}",
                              f"https://{HOST}:{c.https_port}/curl{version[6:]}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.rsplit("\n", 1)[1] == f"200 {version[6:]}", (out.stdout[-300:], out.stderr)
    assert [(r["target"], r["body"]) for r in c.up.requests] == [("/curl2", b"hello"), ("/curl1.1", b"hello")]


# ---- HTTP/1.1 heads h2o cannot parse: 400, then the close ----

def unparsable_cases():
    for name, field, words in UNPARSABLE:
        yield name, REQUEST_LINE, field, words
    for name, line in BAD_REQUEST_LINES:
        yield "line-" + name, line, "", "invalid request line"


UNPARSABLE_CASES = list(unparsable_cases())


@pytest.mark.parametrize("name,line,field,words", UNPARSABLE_CASES, ids=[c[0] for c in UNPARSABLE_CASES])
def test_proxy_answers_unparsable_heads(cluster, name, line, field, words):
    c = cluster
    c.up.clear()
    req = (f"{line}Host: {HOST}\r\nAuthorization: Bearer {c.token}\r\n{field}Content-Length: 4\r\n\r\nabcd"
           ).encode("latin-1")
    e = assert_refused_400(exchange(c.http_port, req + get("/after", c.token)), name)
    assert e["code"] == "invalid" and words in e["message"], (name, e)
    assert c.up.requests == [], (name, c.up.requests)


@pytest.mark.parametrize("name,line,field,words", UNPARSABLE_CASES, ids=[c[0] for c in UNPARSABLE_CASES])
def test_api_answers_unparsable_heads(cluster, name, line, field, words):
    s = cluster.s
    req = (f"{line.replace('/submit', '/v1/groups')}Host: 127.0.0.1:{s.port}\r\n"
           f"Authorization: Bearer {s.token}\r\n{field}Content-Length: 2\r\n\r\n{{}}").encode("latin-1")
    follow = (f"GET /v1/groups HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nAuthorization: Bearer {s.token}\r\n"
              f"Connection: close\r\n\r\n").encode()
    e = assert_refused_400(exchange(s.port, req + follow, tls_ca=s.ca), name)
    assert e["code"] == "bad_request" and words in e["message"], (name, e)


@pytest.mark.parametrize("first", ["get", "content-length", "chunked"])
def test_unparsable_head_pipelined_after_a_good_request(cluster, first):
    """The good request is answered, then the unparsable one with 400, then
    the connection closes: nothing after it is read as a request."""
    c = cluster
    c.up.clear()
    head = f"POST /first HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
    good = {"get": get("/first", c.token).replace(b"Connection: close\r\n", b""),
            "content-length": (head + "Content-Length: 5\r\n\r\nhello").encode(),
            "chunked": (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()}[first]
    bad = f"GET /bad HTTP/1.1\r\nHost: {HOST}\r\nX-A : 1\r\n\r\n".encode()
    raw = exchange(c.http_port, good + bad + get("/never", c.token))
    assert statuses(raw) == [200, 400], raw[:800]
    assert_refused_after(raw, "before its colon")
    assert [r["target"] for r in c.up.requests] == ["/first"]


def test_unparsable_head_later_on_a_kept_alive_connection(cluster):
    """After an answered request, the next head read on the connection is
    checked too (h2o sets its read callback anew for every request)."""
    c = cluster
    c.up.clear()
    with socket.create_connection(("127.0.0.1", c.http_port), timeout=10) as sk:
        for round_ in range(2):
            sk.sendall(get(f"/kept/{round_}", c.token).replace(b"Connection: close\r\n", b""))
            raw = b""
            while first_response(raw)[0] is None or len(first_response(raw)[2]) < int(
                    first_response(raw)[1].get("content-length", 0)):
                chunk = sk.recv(65536)
                assert chunk, raw
                raw += chunk
            assert first_response(raw)[0] == 200, raw[:300]
        sk.sendall(f"GET /bad HTTP/1.1\r\nHost: {HOST}\r\nX-A\t: 1\r\n\r\n".encode())
        raw = b""
        while chunk := sk.recv(65536):
            raw += chunk
    assert statuses(raw) == [400], raw[:400]
    assert_refused_after(raw, "before its colon")
    assert [r["target"] for r in c.up.requests] == ["/kept/0", "/kept/1"]


def test_a_body_longer_than_a_head_may_be_stays_a_body(cluster):
    """A body past the longest head h2o reads (408 KiB), sent in many writes,
    is a body, not a head too long; the request pipelined behind it is
    served."""
    c = cluster
    c.up.clear()
    body = b"0123456789\r\n" * 50000  # 600 kB
    head = (f"POST /big HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", c.http_port), timeout=10) as sk:
        sk.sendall(head)
        for i in range(0, len(body), 4096):
            sk.sendall(body[i:i + 4096])
        sk.sendall(get("/after", c.token))
        raw = b""
        while chunk := sk.recv(65536):
            raw += chunk
    assert statuses(raw) == [200, 200], raw[:400]
    assert [(r["target"], len(r["body"])) for r in c.up.requests] == [("/big", len(body)), ("/after", 0)]


def test_a_body_read_after_the_handshake_stays_a_body(cluster):
    """Over TLS the head (and the start of its body) may be in the input
    when the connection is handed to HTTP/1: what comes after is body, not
    a head to check (a body whose later reads started with `{` once got the
    400 for an unparsable head)."""
    s = cluster.s
    body = b"[" + b"{}," * 200000 + b"{}]"
    head = (f"POST /v1/apply HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nAuthorization: Bearer {s.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    ctx = ssl.create_default_context(cafile=s.ca)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw_sock, \
                ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as sk:
            sk.sendall(head + body)
            raw = b""
            while chunk := sk.recv(65536):
                raw += chunk
        status, _, answer = first_response(raw)
        assert status is not None, raw[:300]
        assert b"cannot be parsed" not in answer and b"ambiguous" not in answer, answer[:300]


def test_unparsable_head_after_a_slow_start(cluster):
    """A head that parses as far as it goes and turns unparsable in a later
    read is answered too (h2o resumes its parse where it stopped: the
    stand-in is at least as long)."""
    c = cluster
    c.up.clear()
    with socket.create_connection(("127.0.0.1", c.http_port), timeout=5) as sk:
        # two writes, which the server may read apart or together: both ways
        # must end in the 400
        sk.sendall(f"GET /slow HTTP/1.1\r\nHost: {HOST}\r\nX-Long: {'a' * 3000}".encode())
        sk.sendall(b"\x01\r\n\r\n")
        raw = b""
        while chunk := sk.recv(65536):
            raw += chunk
    assert statuses(raw) == [400], raw[:400]
    assert "control character" in error_of(first_response(raw)[2])["message"]
    assert c.up.requests == []


# ---- 413 for a 20 MB body, JSON, on both protocols ----

def big_head(path, host, token, framing):
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n").encode()


def assert_413(status, body, what):
    assert status == 413, (what, status, body[:300])
    assert error_of(body)["code"] == "too_large", (what, body)


def test_http1_big_body_is_413_json(cluster):
    c = cluster
    s = c.s
    c.up.clear()
    # Content-Length announced: answered before the body is read
    raw = exchange(s.port, big_head("/v1/groups", f"127.0.0.1:{s.port}", s.token, f"Content-Length: {BIG}\r\n")
                   + b"{" * 65536, tls_ca=s.ca)
    assert_413(*first_response(raw)[::2], "api, content-length")
    raw = exchange(c.http_port, big_head("/upload", HOST, c.token, f"Content-Length: {BIG}\r\n") + b"x" * 65536)
    assert_413(*first_response(raw)[::2], "proxy, content-length")
    # chunked: answered once the body passes the limit
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    raw = exchange(c.http_port, big_head("/upload", HOST, c.token, "Transfer-Encoding: chunked\r\n") + chunk * 20)
    assert_413(*first_response(raw)[::2], "proxy, chunked")
    assert c.up.requests == []


def h2_big(c, port, authority, path, token, with_length):
    headers = [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", authority),
               ("authorization", f"Bearer {token}"), ("content-type", "application/json")]
    if with_length:
        headers.append(("content-length", str(BIG)))
    return h2_exchange(port, c.s.ca, headers, body=b"x" * BIG, send_all=False)


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_http2_big_body_is_413_json(cluster, with_length):
    c = cluster
    s = c.s
    c.up.clear()
    status, body, reset = h2_big(c, s.port, f"127.0.0.1:{s.port}", "/v1/groups", s.token, with_length)
    assert reset in (None, 0), reset  # never REFUSED_STREAM, which invites a retry
    assert_413(status, body, "api")
    status, body, reset = h2_big(c, c.https_port, HOST, "/upload", c.token, with_length)
    assert reset in (None, 0), reset
    assert_413(status, body, "proxy")
    assert c.up.requests == []


def test_curl_gets_one_413_over_http2(cluster, tmp_path):
    """curl uploading 20 MB over HTTP/2 gets the 413 once (a refused stream
    made it retry five times and report a dead connection)."""
    s = cluster.s
    f = tmp_path / "big.json"
    f.write_bytes(b"x" * BIG)
    out = subprocess.run(["curl", "-sS", "--http2", "--cacert", s.ca, "-H", f"Authorization: Bearer {s.token}",
                          "-H", "Content-Type: application/json", "--data-binary", f"@{f}", "-w",
                          "\n%{http_code} %{http_version} %{num_connects}", s.url + "/v1/groups"],
                         capture_output=True, text=True, timeout=60)
    body, _, tail = out.stdout.rpartition("\n")
    assert tail.split() == ["413", "2", "1"], (out.stdout[-300:], out.stderr)
    assert json.loads(body)["error"]["code"] == "too_large"


def test_http2_connection_serves_on_after_a_413(cluster):
    """The 413 is one stream's answer: the connection stays up, later DATA of
    the refused stream is dropped, and the next request on it is served."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    s = cluster.s
    authority = f"127.0.0.1:{s.port}"
    ctx = ssl.create_default_context(cafile=s.ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":path", "/v1/groups"),
                                  (":authority", authority), ("authorization", f"Bearer {s.token}"),
                                  ("content-length", str(BIG))])
            conn.send_data(1, b"x" * 16384)  # within the first window; more of the body after the answer
            tls.sendall(conn.data_to_send())
            got = {}
            while 3 not in got or "ended" not in got[3]:
                data = tls.recv(65536)
                assert data, got
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        got.setdefault(ev.stream_id, {})["status"] = dict(ev.headers)[":status"]
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        got.setdefault(ev.stream_id, {}).setdefault("body", b"")
                        got[ev.stream_id]["body"] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded):
                        got[ev.stream_id]["ended"] = True
                        if ev.stream_id == 1:  # answered: more body, then the next request
                            if conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                                try:
                                    conn.send_data(1, b"x" * 16384)
                                except h2.exceptions.StreamClosedError:
                                    pass
                            conn.send_headers(3, [(":method", "GET"), (":scheme", "https"), (":path", "/healthz"),
                                                  (":authority", authority)], end_stream=True)
                    elif isinstance(ev, h2.events.StreamReset):
                        assert ev.stream_id == 1 and ev.error_code == 0, ev  # NO_ERROR: stop sending
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        raise AssertionError(f"connection ended: {ev}")
                tls.sendall(conn.data_to_send())
    assert got[1]["status"] == "413" and json.loads(got[1]["body"])["error"]["code"] == "too_large"
    assert got[3]["status"] == "200"
