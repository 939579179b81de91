"""The proxy's own HTTP/1.1 front end (src/httpd/h1front.c, the proxy's
HTTP/1 server unless CLOISTER_PROXY_HTTP1=h2o): what a client sees of its reads kept armed
and its parser, on the plain and TLS listeners, through the whole corridor
to a recording upstream (echo_upstream.py): pipelined requests answered in
order, a head split into many small writes, a chunked body with trailers,
Expect: 100-continue, a WebSocket upgrade handed on to h2o's server, a small
response over TLS in one record (head and body together), and the
deadlines: a slow head and an idle keep-alive connection are closed once
the proxy's request timeout (10 s) has passed. The other proxy tests run on
it too; one here checks that CLOISTER_PROXY_HTTP1=h2o still selects h2o's
server."""
import base64
import json
import os
import socket
import ssl
import time
from types import SimpleNamespace

import pytest

from conftest import Server, free_port, manifest, statuses
from echo_upstream import EchoUpstream
from test_framing import all_responses, first_response

DOMAIN = "localhost"
HOST = f"wiki.{DOMAIN}"
REQUEST_TIMEOUT_S = 10  # src/proxy/role.c REQUEST_TIMEOUT_MS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    up = EchoUpstream()
    up_port = up.start()
    http_port, https_port = free_port(), free_port()
    s = Server(tmp_path_factory.mktemp("h1front") / "data",
               extra_args=["--proxy-listen", f"127.0.0.1:{https_port}", "--proxy-http-listen",
                           f"127.0.0.1:{http_port}", "--domain", DOMAIN],
               ).start()
    c = SimpleNamespace(s=s, up=up, http_port=http_port, https_port=https_port, token=None)
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "alice", {"type": "human", "email": "alice@example.com"}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "alice-all", {"rules": [
            {"effect": "allow", "condition": {"match": 'ctx.user.name == "alice"'}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["alice-all"]}),
    ]})
    assert r.status_code == 200, r.text
    tok = s.request("POST", "/v1/tokens", json={"credential": "alice-cli"}).json()["token"]
    r = s.request("POST", "/v1/auth/token", token="", json={"token": tok})
    assert r.status_code == 200, r.text
    c.token = r.json()["access_token"]
    listening = [json.loads(line) for line in s.read_log().splitlines()
                 if '"msg":"listening"' in line and '"server":"proxy"' in line]
    assert [entry["http1"] for entry in listening] == ["h1front"], "the proxy serves HTTP/1 with the front end"
    deadline = time.time() + 15
    while True:
        got = all_responses(exchange(c, get("/ready", c.token, close=True)))
        if got and got[0][0] == 200:
            break
        assert time.time() < deadline, "the proxy never served the wiki"
        time.sleep(0.05)
    yield c
    s.stop()
    up.stop()


def get(path, token, close=False, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n{extra}"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def dial(c, tls=False, timeout=5):
    s = socket.create_connection(("127.0.0.1", c.https_port if tls else c.http_port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context(cafile=c.s.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname=HOST)
    return s


def read_until(s, done, timeout=5):
    """Bytes read from S until DONE(bytes) holds, the peer closes or TIMEOUT passes."""
    out = b""
    end = time.time() + timeout
    while not done(out) and time.time() < end:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        out += chunk
    return out


def exchange(c, data, tls=False):
    s = dial(c, tls)
    s.sendall(data)
    out = read_until(s, lambda b: False)
    s.close()
    return out


def one_complete_response(raw):
    status, headers, body = first_response(raw)
    return status is not None and len(body) == int(headers.get("content-length", -1))


def echoed(body):
    """The request the upstream saw, as it echoed it."""
    return json.loads(body)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_pipelined_requests_are_answered_in_order(cluster, tls):
    c = cluster
    c.up.clear()
    body = b"pipelined body"
    data = (get("/p/1", c.token)
            + (f"POST /p/2 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            + get("/p/3", c.token, close=True))
    got = all_responses(exchange(c, data, tls))
    assert [r[0] for r in got] == [200, 200, 200], got
    assert [echoed(r[2])["target"] for r in got] == ["/p/1", "/p/2", "/p/3"]
    assert echoed(got[1][2])["body"] == body.decode()
    assert [r[1].get("connection") for r in got] == ["keep-alive", "keep-alive", "close"]


def test_a_head_split_across_many_small_writes(cluster):
    c = cluster
    c.up.clear()
    data = (f"POST /split HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
            f"Content-Length: 5\r\nConnection: close\r\n\r\nhello").encode()
    s = dial(c)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(data), 3):
        s.sendall(data[i:i + 3])
        time.sleep(0.002)  # pieces, not one segment
    got = all_responses(read_until(s, lambda b: False))
    s.close()
    assert [r[0] for r in got] == [200], got
    assert echoed(got[0][2])["target"] == "/split" and echoed(got[0][2])["body"] == "hello"


def test_a_chunked_body_with_trailers(cluster):
    c = cluster
    c.up.clear()
    data = (f"POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n").encode()
    got = all_responses(exchange(c, data + get("/after-chunked", c.token, close=True)))
    assert [r[0] for r in got] == [200, 200], got
    rec = echoed(got[0][2])
    assert rec["body"] == "hello world"
    assert echoed(got[1][2])["target"] == "/after-chunked"


def test_expect_100_continue_waits_for_the_body(cluster):
    c = cluster
    c.up.clear()
    s = dial(c)
    s.sendall((f"PUT /expect HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
               "Expect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n").encode())
    interim = read_until(s, lambda b: b"\r\n\r\n" in b)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
    assert c.up.requests == []
    s.sendall(b"data")
    rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):] + read_until(s, lambda b: False)
    s.close()
    got = all_responses(rest)
    assert [r[0] for r in got] == [200], rest
    assert echoed(got[0][2])["body"] == "data"


def test_websocket_upgrade_is_handed_on(cluster):
    c = cluster
    c.up.clear()
    key = base64.b64encode(os.urandom(16)).decode()
    s = dial(c)
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {c.token}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = read_until(s, lambda b: b"\r\n\r\n" in b)
    s.close()
    assert statuses(head)[:1] == [101], head


def test_slow_head_and_idle_keep_alive_are_closed_at_the_deadline(cluster):
    c = cluster
    slow = dial(c, timeout=REQUEST_TIMEOUT_S + 10)
    slow.sendall(f"GET /slow HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # never finished
    idle = dial(c, timeout=REQUEST_TIMEOUT_S + 10)
    idle.sendall(get("/idle", c.token))
    answered = read_until(idle, one_complete_response)
    assert statuses(answered) == [200], answered
    start = time.time()
    # each read returns once the proxy closes; the socket timeout bounds the wait
    assert read_until(slow, lambda b: False, timeout=REQUEST_TIMEOUT_S + 10) == b"", "no answer to a slow head"
    assert read_until(idle, lambda b: False, timeout=REQUEST_TIMEOUT_S + 10) == b""
    waited = time.time() - start
    assert waited < REQUEST_TIMEOUT_S + 5, f"closed after {waited:.1f} s"
    slow.close()
    idle.close()


def test_h2o_http1_server_is_kept_as_a_fallback(tmp_path):
    http_port = free_port()
    s = Server(tmp_path / "data", extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}", "--domain", DOMAIN],
               env_extra={"CLOISTER_PROXY_HTTP1": "h2o"}).start()
    try:
        listening = [json.loads(line) for line in s.read_log().splitlines()
                     if '"msg":"listening"' in line and '"server":"proxy"' in line]
        assert [entry["http1"] for entry in listening] == ["h2o"], listening
        raw = exchange(SimpleNamespace(http_port=http_port),
                       b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert statuses(raw) == [200], raw
    finally:
        s.stop()


class RecordCountingTLS:
    """A TLS client (Python's ssl over memory BIOs) on a raw socket, which
    sees the records the server sends: their headers are read off the wire
    before the bytes go to the TLS engine."""

    def __init__(self, c):
        self.sock = socket.create_connection(("127.0.0.1", c.https_port), timeout=5)
        ctx = ssl.create_default_context(cafile=c.s.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        self.wire = b""  # bytes received and not yet split into records
        self.records = []  # (content type, length) of every record received
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self):
        chunk = self.sock.recv(65536)
        assert chunk, "the proxy closed the TLS connection"
        self.wire += chunk
        while len(self.wire) >= 5 and len(self.wire) >= 5 + int.from_bytes(self.wire[3:5], "big"):
            length = int.from_bytes(self.wire[3:5], "big")
            self.records.append((self.wire[0], length))
            self.incoming.write(self.wire[:5 + length])
            self.wire = self.wire[5 + length:]

    def request(self, data):
        """Sends DATA and returns (the whole response, the records it came in)."""
        self.tls.write(data)
        self._flush()
        before, out = len(self.records), b""
        deadline = time.time() + 5
        while not one_complete_response(out):
            assert time.time() < deadline, f"no complete response: {out[:200]!r}"
            try:
                out += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self._receive()
        return out, self.records[before:]


def test_a_small_response_over_tls_is_one_record(cluster):
    """The response head and its body are written as one TLS record when
    they fit one (h2o would make a record of each buffer): one encryption
    here and one decryption at the client per response, as nginx and
    HAProxy send it."""
    c = cluster
    client = RecordCountingTLS(c)
    try:
        client.request(get("/warm-up", c.token))  # TLS 1.3 session tickets come before the first answer
        raw, records = client.request(get("/small", c.token))
        status, headers, body = first_response(raw)
        assert status == 200 and body, raw[:300]
        head_len = len(raw) - len(body)
        assert head_len > 100 and len(raw) <= 16384, (head_len, len(raw))
        assert [t for t, _ in records] == [23], f"{len(raw)} bytes came in records {records}"
        assert records[0][1] >= len(raw), "the record holds the head and the body"
    finally:
        client.sock.close()
