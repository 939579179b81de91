"""Issue 13, the proxy's findings, each as the attacker's steps, against the
real cloisterd, a real upstream (echo_upstream.py) and, for the browser
login, the npm oidc-provider (the fixtures and helpers of
test_browser_login.py):

- finding 5, login hijack: a Service writer whose Service's host reaches
  their own server crafts a login link with their own rd and bind; the API
  refuses it (the rd/bind pair must carry the proxy's mac), the proxy does
  not issue one for a port it does not serve, and the victim's handoff never
  reaches the attacker; the normal browser login still works.
- finding 10: an upstream's Set-Cookie of the proxy's own cookies is
  dropped (other cookies pass); a TLS connection opened (SNI) for one
  service cannot carry requests for another (421); the proxy's connection
  cap is below its descriptor limit, so a flood of connections leaves it
  serving (no EMFILE loop).
- finding 11: ctx.session.authMethod is the session's real method."""
import hashlib
import http.client
import json
import re
import select
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from conftest import Server, free_port, manifest, wait_for
from echo_upstream import EchoUpstream
from test_browser_login import (DOMAIN, Env, audit_entries, cookie_of, handoff_url, link_mac, login_at_api,
                                login_to_handoff, set_cookies, start_cluster)
from test_oidc import node_modules  # noqa: F401

ATTACKER_BIND = hashlib.sha256(b"the attacker's own login cookie").hexdigest()


def token_login(s, credential):
    """An access token of CREDENTIAL's user: the admin mints the credential's
    token, which opens a token session (authMethod "token")."""
    tok = s.request("POST", "/v1/tokens", json={"credential": credential})
    assert tok.status_code in (200, 201), tok.text
    r = s.request("POST", "/v1/auth/token", token="", json={"token": tok.json()["token"]})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


class Tenant(Env):
    """The browser-login environment, with the attacker's server, the HTTPS
    listener and a token user beside it."""

    def __init__(self, server, upstream, provider, http_port, verify, attacker, attacker_port, https_port):
        super().__init__(server, upstream, provider, http_port, verify)
        self.attacker = attacker  # the attacker's own server: whatever reaches it, they have
        self.attacker_port = attacker_port
        self.https_port = https_port
        self.tokens = {}

    def bearer(self, path, token, host=None):
        """An API client's GET on the proxy's plain-HTTP listener with TOKEN."""
        h = {"Host": host or self.host, "Authorization": f"Bearer {token}"}
        return requests.get(f"http://127.0.0.1:{self.http_port}{path}", headers=h, allow_redirects=False, timeout=30)

    def attacker_saw(self):
        return [r for r in self.attacker.requests if "ambiguous" not in r]


@pytest.fixture(scope="module")
def tenant(node_modules, tmp_path_factory):  # noqa: F811
    https_port = free_port()
    s, up, up_port, provider, http_port, bundle, idp = start_cluster(tmp_path_factory.mktemp("authz-proxy"),
                                                                      https_port)
    attacker = EchoUpstream()
    attacker_port = attacker.start()
    allow = lambda cond: {"rules": [{"effect": "allow", "priority": 0, "condition": {"match": cond}}]}  # noqa: E731
    r = s.request("POST", "/v1/apply", json={"items": idp + [
        manifest("Group", "devs", {}),
        manifest("Policy", "devs-read", allow('"devs" in ctx.user.groups && ctx.request.http.method in ["GET", "HEAD"]')),
        manifest("Policy", "sso-only", allow('ctx.session.authMethod == "oidc"')),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["devs-read"]}),
        manifest("Service", "vault", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["devs-read"]}),
        manifest("Service", "sso", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["sso-only"]}),
        # a token user of the devs, and the attacker: a Service writer
        manifest("User", "tina", {"type": "human", "groups": ["devs"]}),
        manifest("Credential", "tina-cli", {"user": "tina", "type": "authToken"}),
        manifest("Policy", "svcwriter", allow('ctx.request.api.kind == "Service" && '
                                              'ctx.request.api.verb in ["create", "update"]')),
        manifest("User", "svcwriter", {"type": "human", "policies": ["svcwriter"]}),
        manifest("Credential", "svcwriter-cli", {"user": "svcwriter", "type": "authToken"}),
    ]})
    assert r.status_code == 200, r.text
    t = Tenant(s, up, provider, http_port, bundle, attacker, attacker_port, https_port)
    t.tokens["tina"] = token_login(s, "tina-cli")
    t.tokens["svcwriter"] = token_login(s, "svcwriter-cli")
    deadline = time.time() + 15
    while t.bearer("/", t.tokens["tina"]).status_code != 200:
        assert time.time() < deadline, "the proxy never served wiki"
        time.sleep(0.1)
    yield t
    provider.stop()
    s.stop()
    up.stop()
    attacker.stop()


# ---- finding 5: a Service writer hijacks logins ----


def test_login_links_are_the_proxys_not_the_attackers(tenant):
    t = tenant
    s = t.s
    atk_port = t.attacker_port
    # 1. the attacker, a Service writer, adds a Service whose host reaches
    #    their own server: mallory.localhost on the port their server listens on
    r = s.request("POST", "/v1/services", token=t.tokens["svcwriter"], json=manifest(
        "Service", "mallory", {"upstream": {"url": f"http://127.0.0.1:{atk_port}"}}))
    assert r.status_code in (200, 201), r.text
    rd = f"http://mallory.{DOMAIN}:{atk_port}/steal"
    login = "/v1/auth/login?rd=" + quote(rd, safe="") + "&bind=" + ATTACKER_BIND

    # 2. a link with their own rd and bind: refused before any provider is involved
    for path in (login, login.replace("/v1/auth/login", "/v1/auth/oidc/test/login")):
        r = t.api(path)
        assert r.status_code == 400, r.text
        assert "mac" in r.json()["error"]["message"] and "Location" not in r.headers
        # a mac of their own making is no better, and is audited as a forged login link
        r = t.api(path + f"&exp={int(time.time()) + 300}&mac=" + "0" * 64)
        assert r.status_code == 400 and "not issued by the proxy" in r.json()["error"]["message"], r.text
        assert "Location" not in r.headers
    deadline = time.time() + 15
    while not [x for x in audit_entries(s, "auth.login") if x.get("outcome") == "denied"
               and "not issued by the proxy" in json.dumps(x)]:
        assert time.time() < deadline, "the forged login link is not in the audit log"
        time.sleep(0.3)

    # 3. nor does a real link of theirs help once its rd or bind is changed
    deadline = time.time() + 15
    while (r := t.proxy("/x", host=f"mallory.{DOMAIN}:{t.http_port}")).status_code == 404:
        assert time.time() < deadline, "the proxy never routed mallory"
        time.sleep(0.1)
    assert r.status_code == 302, r.text
    issued = parse_qs(urlsplit(r.headers["Location"]).query)
    real = {k: v[0] for k, v in issued.items()}
    for changed in ({"rd": rd}, {"bind": ATTACKER_BIND}, {"exp": str(int(real["exp"]) + 1)},
                    {"rd": f"http://wiki.{DOMAIN}:{t.http_port}/x"}):
        q = dict(real, **changed)
        r = t.api("/v1/auth/login?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in q.items()))
        assert r.status_code == 400 and "not issued by the proxy" in r.json()["error"]["message"], (changed, r.text)
    # an expired one, even with the proxy's mac
    r = t.api("/v1/auth/login?rd=" + quote(real["rd"], safe="") + "&bind=" + real["bind"] +
              link_mac(s, real["rd"], real["bind"], exp=int(time.time()) - 5))
    assert r.status_code == 400 and "expired" in r.json()["error"]["message"], r.text

    # 4. the proxy issues no link for a port it does not serve (the attacker's server)
    r = t.proxy("/steal", host=f"mallory.{DOMAIN}:{atk_port}")
    assert r.status_code == 421, r.text
    # a browser's refusal is a page (docs/proxy.md "Error pages")
    assert r.headers["Content-Type"].startswith("text/html") and "Wrong address" in r.text
    assert "Location" not in r.headers
    assert "cloister_login" not in set_cookies(r)

    # 5. the link the proxy does issue for their Service names the proxy: a
    #    victim who follows it logs in, and the handoff lands in the victim's
    #    browser at the proxy, which refuses it without the attacker's login
    #    cookie; the attacker's server sees nothing of it
    r = t.proxy("/steal", host=f"mallory.{DOMAIN}:{t.http_port}")
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{s.url}/v1/auth/login?"), r.text
    victim = login_at_api(t, r.headers["Location"][len(s.url):])  # the victim's browser, without the cookie
    loc = handoff_url(victim)
    assert loc.startswith(f"http://mallory.{DOMAIN}:{t.http_port}/.cloister/callback?"), loc
    u = urlsplit(loc)
    r = t.proxy(f"{u.path}?{u.query}", host=u.netloc, cookie="theme=dark")
    assert r.status_code == 400 and "another browser" in r.text, r.text
    assert "cloister_session" not in set_cookies(r)
    assert t.attacker_saw() == [], t.attacker_saw()

    # the legitimate login beside it still works
    loc = handoff_url(login_to_handoff(t, "/docs"))
    r = t.follow(loc)
    assert r.status_code == 302 and r.headers["Location"] == "/docs"
    _, token = cookie_of(r)
    r = t.proxy("/docs", cookie=f"cloister_session={token}")
    assert r.status_code == 200, r.text
    assert t.attacker_saw() == []


# ---- finding 10: upstream Set-Cookie of our cookies ----


def test_upstream_cannot_set_the_proxys_cookies(tenant):
    t = tenant
    ours = ["cloister_session=attacker-session; Path=/", "cloister_login=0123; Path=/.cloister/",
            "__Host-cloister_session=x; Secure; Path=/", "__Secure-cloister_login=x; Secure",
            "CLOISTER_SESSION=x; Domain=localhost", "cloister_session"]
    theirs = ["theme=dark; Path=/", "__Host-csrf=abc; Secure; Path=/", "cloister_sessionx=1", "x_cloister_login=2"]
    q = "&".join("c=" + quote(v, safe="") for v in ours + theirs)
    r = t.bearer(f"/set-cookie?{q}", t.tokens["tina"])
    assert r.status_code == 200, r.text
    got = r.raw.headers.getlist("Set-Cookie")
    assert got == theirs, got
    # the upstream did send them all: the proxy dropped ours
    assert t.up.requests and t.up.requests[-1]["target"].startswith("/set-cookie?")
    assert "dropped an upstream's Set-Cookie" in t.s.read_log()


# ---- finding 10: TLS SNI and Host naming different services ----


def tls_get(t, sni, host, token):
    """One HTTP/1.1 request over TLS with server_hostname SNI and Host HOST;
    returns (status, headers text, body)."""
    ctx = ssl.create_default_context(cafile=t.s.ca)
    with socket.create_connection(("127.0.0.1", t.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall((f"GET /sni HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                       "Accept: application/json\r\nConnection: close\r\n\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


def test_sni_and_host_must_name_the_same_service(tenant):
    t = tenant
    tok = t.tokens["tina"]
    t.up.clear()
    # a connection opened for wiki cannot carry a request for vault
    status, head, body = tls_get(t, f"wiki.{DOMAIN}", f"vault.{DOMAIN}:{t.https_port}", tok)
    assert status == 421, (head, body)
    assert "application/json" in head
    err = json.loads(body)["error"]
    assert err["code"] == "misdirected" and "SNI" in err["message"], err
    assert t.up.requests == []
    # the same service in another case, with or without the port, is fine
    for host in (f"wiki.{DOMAIN}:{t.https_port}", f"WIKI.{DOMAIN.upper()}:{t.https_port}", f"wiki.{DOMAIN}"):
        status, head, body = tls_get(t, f"wiki.{DOMAIN}", host, tok)
        assert status == 200, (host, head, body)
    status, _, _ = tls_get(t, f"vault.{DOMAIN}", f"vault.{DOMAIN}", tok)
    assert status == 200


# ---- finding 11: ctx.session.authMethod ----


def test_auth_method_is_the_sessions_real_method(tenant):
    t = tenant
    host = f"sso.{DOMAIN}:{t.http_port}"
    # the browser login (OIDC) is allowed by `ctx.session.authMethod == "oidc"`
    loc = handoff_url(login_to_handoff(t, "/home", host=host))
    r = t.follow(loc)
    assert r.status_code == 302, r.text
    _, oidc_token = cookie_of(r)
    r = t.proxy("/home", host=host, cookie=f"cloister_session={oidc_token}")
    assert r.status_code == 200, r.text
    # so is the same OIDC session's token sent as a bearer token (the method, not the transport)
    assert t.bearer("/home", oidc_token, host=host).status_code == 200
    # a token login of the same user is not OIDC: denied
    r = t.s.request("POST", "/v1/apply", json={"items": [
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"})]})
    assert r.status_code == 200, r.text
    token = token_login(t.s, "alice-cli")
    deadline = time.time() + 15
    while (r := t.bearer("/home", token, host=host)).status_code == 401:  # the session is on its way to the proxy
        assert time.time() < deadline, r.text
        time.sleep(0.1)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    # and the session documents say why: the method the API recorded
    sessions = {x["metadata"]["name"]: x["spec"]["authMethod"]
                for x in t.s.request("GET", "/v1/sessions").json()["items"]}
    assert "token" in sessions.values() and "oidc" in sessions.values()


# ---- finding 10: the proxy's connection cap below its descriptor limit ----

NOFILE = 256


@pytest.fixture
def low_fd(tmp_path):
    up = EchoUpstream()
    up_port = up.start()
    http_port = free_port()
    s = Server(tmp_path / "data", prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
               extra_args=["--proxy-http-listen", f"127.0.0.1:{http_port}", "--domain", DOMAIN]).start()
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "tina", {"type": "human"}),
        manifest("Credential", "tina-cli", {"user": "tina", "type": "authToken"}),
        manifest("Policy", "all", {"rules": [{"effect": "allow", "priority": 0,
                                              "condition": {"match": "true"}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["all"]}),
    ]})
    assert r.status_code == 200, r.text
    yield s, http_port, token_login(s, "tina-cli")
    s.stop()
    up.stop()


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def test_connection_flood_leaves_the_proxy_serving(low_fd):
    s, port, token = low_fd
    pid = s.role_pid("proxy")
    assert int(Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1].split()[0]) == NOFILE
    m = re.search(r'"msg":"proxy connection cap"[^\n]*"maxConnections":"(\d+)"[^\n]*"descriptorLimit":"(\d+)"',
                  s.read_log())
    assert m, s.read_log()[-3000:]
    cap = int(m.group(1))
    assert int(m.group(2)) == NOFILE and 0 < cap <= (NOFILE - 64) // 2

    def get(conn):
        conn.request("GET", "/ok", headers={"Host": f"wiki.{DOMAIN}", "Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        r.read()
        return r.status

    deadline = time.time() + 15
    while (first := http.client.HTTPConnection("127.0.0.1", port, timeout=10)) and get(first) != 200:
        assert time.time() < deadline, "the proxy never served wiki"
        first.close()
        time.sleep(0.1)
    # a flood of more connections than the descriptor limit: those over the
    # cap are closed at once, the rest are held
    cpu_before = cpu_seconds(pid)
    flood = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(NOFILE + 100)]
    closed = set()
    deadline = time.time() + 20
    while len(flood) - len(closed) > cap:
        assert time.time() < deadline, f"{len(flood) - len(closed)} connections held, cap {cap}"
        readable, _, _ = select.select([c for c in flood if c not in closed], [], [], 0.5)
        for c in readable:
            if c.recv(1) == b"":
                closed.add(c)
    # the connection opened before the flood is still served, and the proxy
    # is not spinning on accept() (an EMFILE loop burns a core)
    assert get(first) == 200
    assert cpu_seconds(pid) - cpu_before < 3.0
    for c in flood:
        c.close()
    first.close()
    # afterwards a new connection is served by the same process
    deadline = time.time() + 15
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            if get(conn) == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            pass
        assert time.time() < deadline, "the proxy did not serve after the flood"
        time.sleep(0.1)
    conn.close()
    assert s.role_pid("proxy") == pid
    assert "Too many open files" not in s.read_log()


class HoldingUpstream:
    """An upstream that reads each request and holds its answer until
    released (but for /ready, answered at once), counting the connections
    open to it and the most at once while held (once released, a connection
    the proxy closes may be counted a moment after the one that replaces it
    is accepted)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a connection came or went
        self.released = threading.Event()
        self.open = self.most = self.answered = 0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                if not self.released.is_set():
                    self.most = max(self.most, self.open)
                self.changed.notify_all()
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = c.recv(65536)
                    if not got:
                        return
                    buf += got
                (head, buf) = buf.split(b"\r\n\r\n", 1)
                if not head.startswith(b"GET /ready "):
                    self.released.wait(60)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                with self.lock:
                    self.answered += 1
        except OSError:
            pass
        finally:
            c.close()
            with self.lock:
                self.open -= 1
                self.changed.notify_all()

    def wait_open(self, n, timeout):
        """Waits until N connections are open to it at once."""
        with self.lock:
            assert self.changed.wait_for(lambda: self.open >= n, timeout), f"{self.open} connections open, not {n}"

    def stop(self):
        self.released.set()
        self.listener.close()


def h2_streams(port, ca, host, token, n):
    """Opens an HTTP/2 connection over TLS and sends N GETs at once; returns
    (socket, h2 connection) for h2_statuses()."""
    import h2.config
    import h2.connection
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname=host)
    assert sock.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for i in range(n):
        conn.send_headers(conn.get_next_available_stream_id(),
                          [(":method", "GET"), (":path", f"/held-{i}"), (":scheme", "https"), (":authority", host),
                           ("authorization", f"Bearer {token}")], end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_pinged(sock, conn, deadline):
    """Sends a PING on CONN and reads until its ACK: the proxy has taken
    every frame sent before it (h2o handles a connection's frames in
    order, each request as its HEADERS arrive)."""
    import h2.events
    conn.ping(b"cloister")
    sock.sendall(conn.data_to_send())
    while True:
        assert time.time() < deadline, "no PING ACK"
        data = sock.recv(65536)
        assert data, "the proxy closed the HTTP/2 connection"
        events = conn.receive_data(data)
        sock.sendall(conn.data_to_send())
        if any(isinstance(ev, h2.events.PingAckReceived) for ev in events):
            return


def connections_to(port):
    """The sockets on this machine connected (or connecting) to 127.0.0.1:PORT
    (not those closed and in TIME-WAIT)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "state", "syn-sent", "dst", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def h2_statuses(sock, conn, n, deadline):
    """The statuses of N streams answered on CONN, read until all ended."""
    import h2.events
    statuses, ended = {}, set()
    while len(ended) < n:
        assert time.time() < deadline, f"{len(ended)} of {n} streams answered: {statuses}"
        data = sock.recv(65536)
        assert data, "the proxy closed the HTTP/2 connection"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                statuses[ev.stream_id] = dict(ev.headers)[b":status"].decode()
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        sock.sendall(conn.data_to_send())
    return list(statuses.values())


def budget_server(tmp_path, nofile, upstreams):
    """A started Server under `prlimit --nofile=NOFILE` with one proxy thread
    on its own TLS port, serving each Service NAME of UPSTREAMS ({name:
    port}) to tina; returns (server, TLS port, tina's access token)."""
    tls_port = free_port()
    s = Server(tmp_path / "data", prefix=["prlimit", f"--nofile={nofile}:{nofile}", "--"],
               extra_args=["--proxy-listen", f"127.0.0.1:{tls_port}", "--proxy-threads", "1",
                           "--domain", DOMAIN]).start()
    try:
        r = s.request("POST", "/v1/apply", json={"items": [
            manifest("User", "tina", {"type": "human"}),
            manifest("Credential", "tina-cli", {"user": "tina", "type": "authToken"}),
            manifest("Policy", "all", {"rules": [{"effect": "allow", "priority": 0, "condition": {"match": "true"}}]}),
        ] + [manifest("Service", name, {"upstream": {"url": f"http://127.0.0.1:{port}"}, "policies": ["all"]})
             for (name, port) in upstreams.items()]})
        assert r.status_code == 200, r.text
        return s, tls_port, token_login(s, "tina-cli")
    except BaseException:
        s.stop()
        raise


def test_http2_streams_cannot_take_every_descriptor(tmp_path):
    """An HTTP/2 client's streams each need an upstream connection, but the
    proxy admits a client connection with one descriptor to spare for its
    upstream: a thread holds at most that many upstream connections over all
    origins (its budget). Two clients with 100 streams each to an upstream
    that holds its answers: the upstream never sees more connections at once
    than the budget, the streams over it wait instead of failing, and every
    one is answered once the upstream lets go."""
    up = HoldingUpstream()
    (s, tls_port, token) = budget_server(tmp_path, NOFILE, {"held": up.port})
    clients = []
    try:
        budget = int(re.search(r'"msg":"proxy connection cap"[^\n]*"maxConnections":"(\d+)"', s.read_log()).group(1))
        assert budget == (NOFILE - 64) // 2  # one proxy thread: the whole budget
        host = f"held.{DOMAIN}"
        wait_for(lambda: requests.get(f"https://127.0.0.1:{tls_port}/ready", verify=s.ca, timeout=10,
                                      headers={"Host": host, "Authorization": f"Bearer {token}"}).status_code == 200,
                 15, "the proxy to serve the Service")
        clients = [h2_streams(tls_port, s.ca, host, token, 100) for _ in range(2)]
        deadline = time.time() + 20
        for (sock, conn) in clients:  # every request has reached the proxy's upstream stage
            h2_pinged(sock, conn, deadline)
        opened = connections_to(up.port)
        assert opened == budget, f"the proxy holds {opened} connections to the upstream, budget {budget}"
        up.wait_open(budget, 20)  # and the upstream holds them all (accepted)
        with up.lock:
            most = up.most
            up.released.set()
        assert most == budget, f"the upstream saw {most} connections at once, budget {budget}"
        deadline = time.time() + 60
        statuses = [st for (sock, conn) in clients for st in h2_statuses(sock, conn, 100, deadline)]
        assert statuses == ["200"] * 200, statuses
    finally:
        for (sock, _) in clients:
            sock.close()
        s.stop()
        up.stop()


def test_a_request_over_the_budget_closes_another_upstreams_idle_connection(tmp_path):
    """A thread's upstream budget full of idle connections to one upstream
    (kept for reuse) does not hold up a request to another: the least
    recently used idle connection is closed for it at once, instead of the
    request waiting for the idle timeout (2 s)."""
    nofile = 160  # a budget of (160 - 64) / 2 = 48, under the 64 idle connections kept per upstream
    held, echo = HoldingUpstream(), EchoUpstream()
    (s, tls_port, token) = budget_server(tmp_path, nofile, {"held": held.port, "other": echo.start()})
    client = None
    try:
        budget = (nofile - 64) // 2

        def get(service, path):
            return requests.get(f"https://127.0.0.1:{tls_port}{path}", verify=s.ca, timeout=10,
                                headers={"Host": f"{service}.{DOMAIN}", "Authorization": f"Bearer {token}"})
        wait_for(lambda: get("held", "/ready").status_code == 200 and get("other", "/ready").status_code == 200, 15,
                 "the proxy to serve both Services")
        # the whole budget to the held upstream, then idle there
        client = h2_streams(tls_port, s.ca, f"held.{DOMAIN}", token, budget)
        h2_pinged(*client, time.time() + 20)
        assert connections_to(held.port) == budget
        held.released.set()
        assert h2_statuses(*client, budget, time.time() + 30) == ["200"] * budget
        started = time.time()
        assert get("other", "/after").status_code == 200
        took = time.time() - started
        assert took < 1.5, f"the request waited {took:.1f} s for the budget (an idle connection's timeout)"
        assert connections_to(held.port) < budget, "an idle connection to the other upstream was closed for it"
    finally:
        if client:
            client[0].close()
        s.stop()
        held.stop()
        echo.stop()
