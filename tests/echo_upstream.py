"""A real upstream for the proxy's integration tests: an HTTP/1.1 server on a
loopback port that records exactly what it receives and echoes it back.

    up = EchoUpstream()            # or EchoUpstream(tls=True, cert=PEM, key=PEM)
    port = up.start()
    ...                            # send requests through the proxy to 127.0.0.1:port
    up.requests                    # what arrived, in order (a snapshot, see below)
    up.raw                         # {connection_id: bytes received on it}
    up.clear()
    up.stop()

It parses on raw sockets, strictly, by itself (not http.server, which repairs
and hides what it is sent). Each request is recorded as

    {"method", "target", "version", "headers": [(name, value), ...] in the order
     and with the duplicates received, "body": bytes, "connection_id": int}

(plus "trailers" when a chunked body carried some) and answered 200 with
`Content-Type: application/json` and that record as the JSON body (headers as
[name, value] pairs, the body as latin-1 text), with Content-Length; keep-alive
as HTTP/1.1 (or HTTP/1.0 + `Connection: keep-alive`) asks. Besides:

    /status/NNN       answers with status NNN (200..599; still the JSON record,
                      no body for 204 and 304)
    /big?n=BYTES      answers BYTES bytes of application/octet-stream: the
                      pattern BIG_PATTERN repeated (so a test can check offsets)
    /set-cookie?c=V   answers with a `Set-Cookie: V` header for each c (in
                      order; V percent-decoded), and the JSON record
    WebSocket         a GET with `Upgrade: websocket` and `Sec-WebSocket-Key` is
                      recorded, answered 101 with the right Sec-WebSocket-Accept,
                      then every data frame it receives (text, binary,
                      continuation) is sent back unmasked with the same opcode
                      and FIN, a ping is answered with a pong, a close is echoed
                      and the connection closed. Frames are also recorded in
                      `.frames` as {"connection_id", "opcode", "fin", "payload"}.

Anything it will not guess about -- both Content-Length and Transfer-Encoding,
a duplicate or invalid Content-Length, a Transfer-Encoding other than chunked,
a bare LF (or CR) line ending, an invalid chunk size, obsolete line folding,
space before a header colon, a missing or duplicate Host, control characters,
an unmasked WebSocket client frame -- is recorded as
{"ambiguous": "<why>", "connection_id": N}, answered 400 (before any upgrade)
and the connection closed: a test asserts the proxy never forwards such a thing
with `assert not [r for r in up.requests if "ambiguous" in r]`.

Standard library only; run `python3 tests/echo_upstream.py` for its self-test.
"""
import base64
import hashlib
import json
import re
import select
import socket
import ssl
import struct
import threading
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG_PATTERN = bytes(range(32, 127)) + b"\n"  # 96 bytes
MAX_HEAD = 64 * 1024  # request line + headers
MAX_BODY = 256 * 1024 * 1024
MAX_BIG = 4 * 1024 * 1024 * 1024

TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
VERSION_RE = re.compile(rb"^HTTP/[0-9]\.[0-9]$")
# field-value: VCHAR, obs-text, SP, HTAB
BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
CHUNK_SIZE_RE = re.compile(rb"^([0-9A-Fa-f]{1,15})(;[^\r\n]*)?$")

REASONS = {
    101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class Ambiguous(Exception):
    """The peer sent something this server refuses to interpret."""


class _Closed(Exception):
    """The peer closed the connection (or stop() did)."""


class _Conn:
    """One accepted connection: buffered reads that also feed .raw."""

    def __init__(self, upstream, sock, conn_id):
        self.up = upstream
        self.sock = sock
        self.id = conn_id
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.up._add_raw(self.id, data)
        self.buf += data

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def line(self, limit, what):
        """A CRLF-terminated line without its CRLF; a bare LF is ambiguous."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                if i == 0 or self.buf[i - 1] != 0x0D:
                    raise Ambiguous(f"bare LF line ending in {what}")
                out = bytes(self.buf[: i - 1])
                del self.buf[: i + 1]
                if b"\r" in out:
                    raise Ambiguous(f"bare CR in {what}")
                return out
            if len(self.buf) > limit:
                raise Ambiguous(f"{what} too long")
            self.fill()

    def send(self, data):
        self.sock.sendall(data)


class EchoUpstream:
    """See the module's docstring."""

    def __init__(self, tls=False, cert=None, key=None, host="127.0.0.1", port=0):
        if tls and not cert:
            raise ValueError("tls=True needs cert= (and key= unless the cert file holds it)")
        self.tls = tls
        self.host = host
        self.port = port
        self._ctx = None
        if tls:
            self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ctx.load_cert_chain(cert, key)
            self._ctx.set_alpn_protocols(["http/1.1"])
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests = []
        self._raw = {}
        self._frames = []
        self._socks = set()
        self._threads = set()
        self._next_id = 0
        self._listener = None
        self._acceptor = None
        self._stopping = threading.Event()

    # ---- what was received (snapshots, safe to read from any thread) ----
    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def raw(self):
        with self._lock:
            return {k: bytes(v) for k, v in self._raw.items()}

    @property
    def frames(self):
        with self._lock:
            return list(self._frames)

    def clear(self):
        with self._lock:
            self._requests.clear()
            self._raw.clear()
            self._frames.clear()

    def wait_for(self, n, timeout=5.0):
        """Waits until at least N requests are recorded; returns the snapshot."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._requests) >= n, timeout)
            return list(self._requests)

    def _record(self, rec):
        with self._changed:
            self._requests.append(rec)
            self._changed.notify_all()

    def _add_raw(self, conn_id, data):
        with self._lock:
            self._raw.setdefault(conn_id, bytearray()).extend(data)

    # ---- life cycle ----
    def start(self):
        """Listens and serves in background threads; returns the port."""
        ls = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(128)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"echo-upstream-{self.port}", daemon=True)
        self._acceptor.start()
        return self.port

    def stop(self):
        """Stops listening, closes every connection and joins the threads."""
        self._stopping.set()
        if self._acceptor:
            self._acceptor.join(5)
        if self._listener:
            self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)  # not SSLSocket's: no TLS state change
            except OSError:
                pass
        for t in threads:
            t.join(5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stopping.is_set():
            r, _, _ = select.select([self._listener], [], [], 0.1)
            if not r:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError:
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                conn_id = self._next_id
                self._next_id += 1
                self._raw[conn_id] = bytearray()
                self._socks.add(sock)
            t = threading.Thread(target=self._serve, args=(sock, conn_id), daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _serve(self, sock, conn_id):
        try:
            if self._ctx:
                sock.settimeout(10)
                tls = self._ctx.wrap_socket(sock, server_side=True)
                tls.settimeout(None)
                with self._lock:
                    self._socks.discard(sock)
                    self._socks.add(tls)
                sock = tls
            self._serve_http(_Conn(self, sock, conn_id))
        except (_Closed, OSError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self._socks.discard(sock)
                self._threads.discard(threading.current_thread())

    # ---- HTTP/1.1 ----
    def _serve_http(self, c):
        while not self._stopping.is_set():
            try:
                req = self._read_request(c)
            except Ambiguous as e:
                self._refuse(c, str(e))
                return
            if req is None:
                return
            if self._is_websocket(req):
                self._record(req)
                self._websocket(c, req)
                return
            self._record(req)
            keep = self._keep_alive(req)
            self._respond(c, req, keep)
            if not keep:
                return

    def _refuse(self, c, why, answer=None):
        """Records WHY, sends ANSWER (by default a 400) and closes gently."""
        self._record({"ambiguous": why, "connection_id": c.id})
        if answer is None:
            body = json.dumps({"ambiguous": why}).encode()
            answer = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        try:
            c.send(answer)
            # a lingering close: closing with unread input would send a reset that
            # can destroy the answer before the peer reads it
            socket.socket.shutdown(c.sock, socket.SHUT_WR)
            c.sock.settimeout(1)
            for _ in range(64):
                c.fill()
        except (_Closed, OSError, ssl.SSLError):
            pass

    def _read_request(self, c):
        """The next request on C as a record, or None when the peer closed
        cleanly between requests; raises Ambiguous."""
        # RFC 9112 2.2: a server SHOULD ignore empty lines before a request line
        while True:
            try:
                if not c.buf:
                    c.fill()
            except _Closed:
                return None
            line = c.line(MAX_HEAD, "request line")
            if line:
                break
        parts = line.split(b" ")
        if len(parts) != 3:
            raise Ambiguous("malformed request line")
        method, target, version = parts
        if not TOKEN_RE.match(method):
            raise Ambiguous("invalid method")
        if not target or re.search(rb"[^\x21-\x7e]", target):
            raise Ambiguous("invalid request target")
        if not VERSION_RE.match(version) or version not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise Ambiguous("unsupported HTTP version")

        headers = []
        size = len(line)
        while True:
            h = c.line(MAX_HEAD, "header section")
            size += len(h) + 2
            if size > MAX_HEAD:
                raise Ambiguous("header section too long")
            if not h:
                break
            if h[:1] in (b" ", b"\t"):
                raise Ambiguous("obsolete line folding")
            name, colon, value = h.partition(b":")
            if not colon:
                raise Ambiguous("header line without a colon")
            if not TOKEN_RE.match(name):
                raise Ambiguous("whitespace before a header colon" if name[-1:] in (b" ", b"\t")
                                else "invalid header name")
            value = value.strip(b" \t")
            if BAD_VALUE_RE.search(value):
                raise Ambiguous("control character in a header value")
            headers.append((name.decode("latin-1"), value.decode("latin-1")))

        def values(n):
            return [v for k, v in headers if k.lower() == n]

        rec = {"method": method.decode(), "target": target.decode(), "version": version.decode(),
               "headers": headers, "body": b"", "connection_id": c.id}
        hosts = values("host")
        if len(hosts) > 1:
            raise Ambiguous("duplicate Host")
        if version == b"HTTP/1.1" and not hosts:
            raise Ambiguous("missing Host")
        cls, tes = values("content-length"), values("transfer-encoding")
        if cls and tes:
            raise Ambiguous("both Content-Length and Transfer-Encoding")
        if len(cls) > 1:
            raise Ambiguous("duplicate Content-Length")
        if len(tes) > 1:
            raise Ambiguous("duplicate Transfer-Encoding")
        if tes and version == b"HTTP/1.0":
            raise Ambiguous("Transfer-Encoding in an HTTP/1.0 request")
        if tes and tes[0].lower() != "chunked":
            raise Ambiguous(f"unsupported Transfer-Encoding {tes[0]!r}")

        if any(v.lower() == "100-continue" for v in values("expect")) and (tes or (cls and cls[0] != "0")):
            c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if cls:
            if not re.fullmatch(r"[0-9]{1,15}", cls[0]):
                raise Ambiguous("invalid Content-Length")
            n = int(cls[0])
            if n > MAX_BODY:
                raise Ambiguous("body too large")
            rec["body"] = c.take(n)
        elif tes:
            rec["body"], trailers = self._read_chunked(c)
            if trailers:
                rec["trailers"] = trailers
        return rec

    def _read_chunked(self, c):
        body = bytearray()
        while True:
            line = c.line(4096, "chunk size line")
            m = CHUNK_SIZE_RE.match(line)
            if not m:
                raise Ambiguous("invalid chunk size")
            n = int(m.group(1), 16)
            if len(body) + n > MAX_BODY:
                raise Ambiguous("body too large")
            if n == 0:
                break
            body += c.take(n)
            if c.take(2) != b"\r\n":
                raise Ambiguous("chunk data not followed by CRLF")
        trailers = []
        while True:
            t = c.line(MAX_HEAD, "chunked trailer section")
            if not t:
                return bytes(body), trailers
            name, colon, value = t.partition(b":")
            if not colon or not TOKEN_RE.match(name):
                raise Ambiguous("invalid trailer line")
            trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))

    @staticmethod
    def _header(req, name):
        return [v for k, v in req["headers"] if k.lower() == name]

    def _keep_alive(self, req):
        tokens = {t.strip().lower() for v in self._header(req, "connection") for t in v.split(",")}
        if req["version"] == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    def _respond(self, c, req, keep):
        path = urlsplit(req["target"]).path if "://" in req["target"] else req["target"].split("?")[0]
        query = req["target"].partition("?")[2]
        status, ctype, body, big = 200, "application/json", None, 0
        cookies = parse_qs(query).get("c", []) if path == "/set-cookie" else []
        if any(BAD_VALUE_RE.search(v.encode("latin-1", "replace")) for v in cookies):
            status, cookies = 400, []
        m = re.fullmatch(r"/status/([0-9]{3})", path)
        if m and 200 <= int(m.group(1)) <= 599:
            status = int(m.group(1))
        elif path == "/big":
            try:
                big = int(parse_qs(query).get("n", ["0"])[0])
            except ValueError:
                big = -1
            if not 0 <= big <= MAX_BIG:
                status, big = 400, 0
            else:
                ctype = "application/octet-stream"
        if not big:
            rec = dict(req, headers=[list(h) for h in req["headers"]], body=req["body"].decode("latin-1"))
            if "trailers" in req:
                rec["trailers"] = [list(t) for t in req["trailers"]]
            body = json.dumps(rec).encode()
        length = big if big else len(body)
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        if status not in (204, 304):
            head += [f"Content-Type: {ctype}", f"Content-Length: {length}"]
        head += [f"Set-Cookie: {v}" for v in cookies]
        if not keep:
            head.append("Connection: close")
        elif req["version"] == "HTTP/1.0":
            head.append("Connection: keep-alive")
        head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if req["method"] == "HEAD" or status in (204, 304):
            c.send(head)
            return
        if not big:
            c.send(head + body)
            return
        c.send(head)
        block = BIG_PATTERN * (65536 // len(BIG_PATTERN))  # a whole number of patterns
        left = big
        while left:
            n = min(left, len(block))
            c.send(block[:n])
            left -= n

    # ---- WebSocket (RFC 6455) ----
    def _is_websocket(self, req):
        up = {t.strip().lower() for v in self._header(req, "upgrade") for t in v.split(",")}
        return req["method"] == "GET" and "websocket" in up and bool(self._header(req, "sec-websocket-key"))

    def _websocket(self, c, req):
        key = self._header(req, "sec-websocket-key")[0]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        c.send(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        while not self._stopping.is_set():
            b0, b1 = c.take(2)
            fin, rsv, opcode = b0 >> 7, (b0 >> 4) & 7, b0 & 0x0F
            masked, n = b1 >> 7, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", c.take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", c.take(8))[0]
            why = None
            if not masked:
                why = "websocket: unmasked client frame"
            elif rsv:
                why = "websocket: reserved bits set"
            elif opcode not in (0, 1, 2, 8, 9, 10):
                why = f"websocket: unknown opcode {opcode}"
            elif opcode >= 8 and (n > 125 or not fin):
                why = "websocket: invalid control frame"
            elif n > MAX_BODY:
                why = "websocket: frame too large"
            if why:
                self._refuse(c, why, self._frame(8, struct.pack("!H", 1002)))
                return
            mask = c.take(4)
            data = c.take(n)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 4096 else \
                (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
            with self._lock:
                self._frames.append({"connection_id": c.id, "opcode": opcode, "fin": bool(fin), "payload": payload})
            if opcode == 9:
                c.send(self._frame(10, payload))
            elif opcode == 10:
                pass
            elif opcode == 8:
                c.send(self._frame(8, payload))
                return
            else:
                c.send(self._frame(opcode, payload, fin))

    @staticmethod
    def _frame(opcode, payload, fin=True):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        return head + payload


# ---- self-test ---------------------------------------------------------------
def _selftest():
    import http.client
    import os
    import shutil
    import subprocess
    import tempfile

    def raw_exchange(port, data, ctx=None):
        """Sends DATA on a fresh connection; returns everything read until EOF."""
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(data)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
        s.close()
        return out

    def ws_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def ws_read(s):
        def take(n):
            out = b""
            while len(out) < n:
                d = s.recv(n - len(out))
                assert d, "connection closed inside a frame"
                out += d
            return out
        b0, b1 = take(2)
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", take(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", take(8))[0]
        return b0 >> 7, b0 & 0x0F, take(n)

    def check_http(up, port, conn_factory, ctx=None):
        up.clear()
        # keep-alive: two requests, one connection; order and duplicates of headers kept
        conn = conn_factory()
        conn.putrequest("GET", "/hello?x=1", skip_accept_encoding=True)
        conn.putheader("X-Dup", "one")
        conn.putheader("x-other", "  padded  ")
        conn.putheader("X-Dup", "two")
        conn.endheaders()
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200 and r.getheader("Content-Type") == "application/json"
        assert doc["method"] == "GET" and doc["target"] == "/hello?x=1" and doc["version"] == "HTTP/1.1"
        assert [h for h in doc["headers"] if h[0].lower() in ("x-dup", "x-other")] == \
            [["X-Dup", "one"], ["x-other", "padded"], ["X-Dup", "two"]], doc["headers"]
        conn.request("POST", "/p", body=b"\x00\xffbody", headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        doc2 = json.loads(r.read())
        assert doc2["body"] == "\x00\xffbody" and doc2["connection_id"] == doc["connection_id"]
        # chunked request body, with a trailer-free last chunk
        conn.request("PUT", "/c", body=iter([b"abc", b"", b"defg"]), encode_chunked=True)
        r = conn.getresponse()
        assert json.loads(r.read())["body"] == "abcdefg"
        conn.request("GET", "/status/404")
        r = conn.getresponse()
        assert r.status == 404 and json.loads(r.read())["target"] == "/status/404"
        conn.request("GET", "/status/204")
        r = conn.getresponse()
        assert r.status == 204 and r.read() == b""
        conn.request("GET", "/big?n=1000003")
        r = conn.getresponse()
        big = r.read()
        assert len(big) == 1000003 and big == (BIG_PATTERN * (1000003 // len(BIG_PATTERN) + 1))[:1000003]
        conn.request("HEAD", "/x")
        r = conn.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) > 0 and r.read() == b""
        conn.request("GET", "/last", headers={"Connection": "close"})
        r = conn.getresponse()
        assert r.getheader("Connection") == "close"
        r.read()
        conn.close()
        reqs = up.wait_for(8)
        assert len(reqs) == 8 and all("ambiguous" not in q for q in reqs), reqs
        assert {q["connection_id"] for q in reqs} == {doc["connection_id"]}
        assert reqs[1]["body"] == b"\x00\xffbody" and isinstance(reqs[1]["body"], bytes)
        raw = up.raw[doc["connection_id"]]
        assert raw.startswith(b"GET /hello?x=1 HTTP/1.1\r\n") and b"0\r\n\r\n" in raw, raw[:200]

        # pipelining, HTTP/1.0 (closes by default)
        out = raw_exchange(port, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.0\r\n\r\n", ctx)
        assert out.count(b"HTTP/1.1 200 OK\r\n") == 2 and b'"/b"' in out, out

        # what a proxy must never forward
        up.clear()
        cases = [
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             "both Content-Length and Transfer-Encoding"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
             "duplicate Content-Length"),
            (b"GET / HTTP/1.1\nHost: h\r\n\r\n", "bare LF line ending in request line"),
            (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", "bare LF line ending in header section"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "invalid chunk size"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", "invalid Content-Length"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", "obsolete line folding"),
            (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", "whitespace before a header colon"),
            (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing Host"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
             "unsupported Transfer-Encoding 'gzip, chunked'"),
        ]
        for data, why in cases:
            out = raw_exchange(port, data, ctx)  # returns only once the server closed
            assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out, (data, out)
        got = [q.get("ambiguous") for q in up.wait_for(len(cases))]
        assert got == [why for _, why in cases], got
        # a valid request before an ambiguous one on the same connection is recorded, then the refusal
        up.clear()
        out = raw_exchange(port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n"
                           b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", ctx)
        reqs = up.wait_for(2)
        assert reqs[0]["target"] == "/ok" and reqs[1]["ambiguous"] == "duplicate Content-Length", reqs

        # WebSocket: the RFC 6455 example key, frames echoed unmasked
        up.clear()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(1)
            assert d, head
            head += d
        assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        s.sendall(ws_frame(1, "héllo".encode()))
        assert ws_read(s) == (1, 1, "héllo".encode())
        s.sendall(ws_frame(2, bytes(range(256)) * 300))
        assert ws_read(s) == (1, 2, bytes(range(256)) * 300)
        s.sendall(ws_frame(1, b"part1", fin=False) + ws_frame(0, b"part2"))
        assert ws_read(s) == (0, 1, b"part1") and ws_read(s) == (1, 0, b"part2")
        s.sendall(ws_frame(9, b"p"))
        assert ws_read(s) == (1, 10, b"p")
        s.sendall(ws_frame(8, struct.pack("!H", 1000)))
        assert ws_read(s) == (1, 8, struct.pack("!H", 1000))
        assert s.recv(10) == b""
        s.close()
        reqs = up.wait_for(1)
        assert reqs[0]["target"] == "/ws" and [f["opcode"] for f in up.frames] == [1, 2, 1, 0, 9, 8]
        # an unmasked client frame is a protocol error
        up.clear()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  b"\x81\x02hi")
        out = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            out += d
        s.close()
        assert out.endswith(b"\x88\x02\x03\xea"), out
        assert up.wait_for(2)[1]["ambiguous"] == "websocket: unmasked client frame"

    # plain HTTP
    up = EchoUpstream()
    port = up.start()
    check_http(up, port, lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=5))
    # an idle keep-alive connection does not keep stop() waiting
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    idle_answer = http.client.HTTPResponse(idle)
    idle_answer.begin()
    idle_answer.read()
    up.stop()
    assert idle.recv(10) == b""
    idle.close()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        raise AssertionError("still listening after stop()")
    except ConnectionRefusedError:
        pass
    print("echo_upstream: HTTP ok")

    # HTTPS with a throw-away self-signed certificate
    if not shutil.which("openssl"):
        print("echo_upstream: openssl not found, HTTPS not tested")
        return
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        ctx = ssl.create_default_context(cafile=cert)
        with EchoUpstream(tls=True, cert=cert, key=key) as up:
            check_http(up, up.port,
                       lambda: http.client.HTTPSConnection("127.0.0.1", up.port, timeout=5, context=ctx), ctx)
    print("echo_upstream: HTTPS ok")


if __name__ == "__main__":
    _selftest()
