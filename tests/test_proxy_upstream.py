"""The proxy's keep-alive connections to its upstreams (src/proxy/upstream.c),
against the real cloisterd (one proxy thread, at most 2 connections and 1
idle connection per upstream) and a real upstream on raw sockets that
counts its connections and misbehaves on request: it closes a reused
connection on the next request without answering (a GET is retried once on
a fresh connection, a POST answers 502 and is never sent twice), closes
an idle one, or sends stray bytes on an idle one (the proxy closes it and
never reuses it)."""
import socket
import threading
import time

import pytest
import requests

from conftest import Server, free_port, manifest

DOMAIN = "localhost"


class CountingUpstream:
    """An HTTP/1.1 upstream on loopback that answers each request 200 with
    "conn=<id> <method> <path>" (keep-alive), records (conn id, method,
    path) of every request it reads, and counts the connections it accepted
    and has open. Modes: "normal"; "close_reused": a connection's second
    request is read, recorded and the connection closed without an answer;
    "hold": requests wait for .release before they are answered."""

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "normal"
        self.release = threading.Event()
        self.requests = []  # (conn_id, method, path)
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.closed_by_peer = set()  # connection ids the proxy closed
        self.conns = {}  # id -> socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                cid = self.accepted
                self.open += 1
                self.max_open = max(self.max_open, self.open)
                self.conns[cid] = s
            threading.Thread(target=self._serve, args=(s, cid), daemon=True).start()

    def _serve(self, s, cid):
        buf = b""
        served = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        with self.lock:
                            self.closed_by_peer.add(cid)
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, value = line.split(":", 1)
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += s.recv(65536)
                buf = buf[length:]
                with self.lock:
                    self.requests.append((cid, method, path))
                    mode = self.mode
                if mode == "close_reused" and served > 0:
                    return
                if mode == "hold":
                    self.release.wait(30)
                body = f"conn={cid} {method} {path}".encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
                          + body)
                served += 1
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
                self.conns.pop(cid, None)
            s.close()

    def send_on(self, cid, data):
        with self.lock:
            s = self.conns[cid]
        s.sendall(data)

    def close_conn(self, cid):
        with self.lock:
            s = self.conns[cid]
        s.shutdown(socket.SHUT_RDWR)

    def snapshot(self):
        with self.lock:
            return list(self.requests), self.accepted, self.open, self.max_open, set(self.closed_by_peer)

    def reset(self, mode="normal"):
        with self.lock:
            self.mode = mode
            self.requests = []
            self.max_open = self.open
        self.release.clear()

    def stop(self):
        self.stopping = True
        self.release.set()
        self.sock.close()


def wait_for(pred, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class World:
    def __init__(self, server, up, http_port):
        self.s = server
        self.up = up
        self.http_port = http_port
        self.token = None
        self.session = requests.Session()  # one client connection: one proxy thread anyway

    def request(self, method, path, **kw):
        return self.session.request(method, f"http://127.0.0.1:{self.http_port}{path}",
                                    headers={"Host": f"pool.{DOMAIN}", "Authorization": f"Bearer {self.token}"},
                                    timeout=20, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = CountingUpstream()
    http_port, https_port = free_port(), free_port()
    s = Server(tmp_path_factory.mktemp("pool") / "data",
               extra_args=["--proxy-listen", f"127.0.0.1:{https_port}", "--proxy-http-listen", f"127.0.0.1:{http_port}",
                           "--domain", DOMAIN, "--proxy-threads", "1", "--proxy-upstream-connections", "2",
                           "--proxy-upstream-idle", "1"]).start()
    items = [
        manifest("Group", "devs", {}),
        manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "alice-all", {"rules": [
            {"effect": "allow", "condition": {"match": '"devs" in ctx.user.groups'}}]}),
        manifest("Service", "pool", {"upstream": {"url": f"http://127.0.0.1:{up.port}"}, "policies": ["alice-all"]}),
    ]
    r = s.request("POST", "/v1/apply", json={"items": items})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/tokens", json={"credential": "alice-cli"})
    r = s.request("POST", "/v1/auth/token", token="", json={"token": r.json()["token"]})
    assert r.status_code == 200, r.text
    w = World(s, up, http_port)
    w.token = r.json()["access_token"]
    wait_for(lambda: w.request("GET", "/ready").status_code == 200, "the Service to be served")
    yield w
    s.stop()
    up.stop()


def served_on(r):
    """The upstream connection id that answered R."""
    assert r.status_code == 200, r.text
    return int(r.text.split()[0].split("=")[1])


def test_a_get_on_a_reused_connection_the_upstream_closed_is_retried_once(world):
    w = world
    w.up.reset("close_reused")
    first = served_on(w.request("GET", "/a"))
    second = served_on(w.request("GET", "/b"))  # the kept connection is closed by the upstream on this request
    assert second != first
    reqs, *_ = w.up.snapshot()
    assert [(c, p) for (c, m, p) in reqs if p == "/b"] == [(first, "/b"), (second, "/b")]  # tried, then once more


def test_a_post_on_a_reused_connection_the_upstream_closed_is_never_retried(world):
    w = world
    w.up.reset("close_reused")
    served_on(w.request("GET", "/warm"))
    r = w.request("POST", "/submit", data=b"pay once")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "bad_gateway"
    reqs, *_ = w.up.snapshot()
    assert [m for (c, m, p) in reqs if p == "/submit"] == ["POST"]  # sent once, not again
    w.up.reset("normal")
    served_on(w.request("POST", "/submit-again", data=b"x"))  # a fresh connection serves the next


def test_an_idle_connection_the_upstream_closes_is_dropped(world):
    w = world
    w.up.reset("normal")
    first = served_on(w.request("GET", "/one"))
    w.up.close_conn(first)
    wait_for(lambda: first not in w.up.conns, "the upstream to close its connection")
    # a POST is never retried: it succeeds only because the closed connection was dropped
    second = served_on(w.request("POST", "/two", data=b"x"))
    assert second != first


def test_bytes_on_an_idle_connection_close_it_and_it_is_not_reused(world):
    w = world
    w.up.reset("normal")
    first = served_on(w.request("GET", "/before"))
    assert served_on(w.request("GET", "/again")) == first  # kept alive and reused
    sent = time.time()
    w.up.send_on(first, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
    wait_for(lambda: first in w.up.snapshot()[4], "the proxy to close the connection that got stray bytes")
    assert time.time() - sent < 1.5, "closed by the stray bytes, not by the idle timeout (2 s)"
    r = w.request("GET", "/after")
    assert served_on(r) != first
    assert "stray" not in r.text


def test_connection_caps_hold(world):
    """At most 2 connections to the upstream at once (--proxy-upstream-connections 2);
    more requests wait for one; at most 1 kept idle afterwards
    (--proxy-upstream-idle 1)."""
    w = world
    w.up.reset("hold")
    _, accepted_before, *_ = w.up.snapshot()
    results = []

    def one(i):
        r = requests.get(f"http://127.0.0.1:{w.http_port}/held/{i}",
                         headers={"Host": f"pool.{DOMAIN}", "Authorization": f"Bearer {w.token}"}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: len(w.up.snapshot()[0]) >= 2, "two held requests at the upstream")
    # the other four reach the proxy over loopback within this second: a
    # third connection would show up here if the cap did not hold
    deadline = time.time() + 1.0
    while time.time() < deadline:
        reqs, accepted, open_, max_open, _ = w.up.snapshot()
        assert open_ <= 2 and len(reqs) <= 2, (reqs, open_)
        time.sleep(0.02)
    w.up.release.set()
    for t in threads:
        t.join(30)
    assert results == [200] * 6
    reqs, accepted, open_, max_open, _ = w.up.snapshot()
    assert len(reqs) == 6 and max_open <= 2, (reqs, max_open)
    assert len({c for (c, m, p) in reqs}) <= 2  # the waiting requests went over the same two connections
    wait_for(lambda: w.up.snapshot()[2] <= 1, "the second connection to be closed (1 idle kept)")
