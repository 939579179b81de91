"""Self-service, in the browser and in the terminal, against the real
cloisterd and a real upstream (echo_upstream.py): the proxy's and the API's
errors as HTML pages for a browser and as JSON for curl on the same URLs
(403 with the policy's explanation and remediation, 404, 502, 503; echoed
text escaped; a strict CSP whose style hash matches), sign-out at
/.cloister/logout, the proxy's answer to a credential token, and the CLI:
`cloister services`, `cloister token access`, `cloister connect` carrying
requests through the proxy and stopping within a second of the session's
revocation."""
import base64
import hashlib
import json
import re
import select
import subprocess
import time

import pytest
import requests

from conftest import CLOISTER, free_port, manifest, ok, run_cli, sanitizer_env, start_with_proxy
from echo_upstream import EchoUpstream

DOMAIN = "localhost"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
EXPLANATION = "The admin area is for operators <script>alert(1)</script> only."
REMEDIATION = "Ask the ops team (#ops) for the operators group."


class World:
    def __init__(self, server, upstream, http_port, https_port, config_home):
        self.s = server
        self.up = upstream
        self.http_port = http_port
        self.https_port = https_port
        self.config_home = config_home
        self.credential_tokens = {}

    def get(self, path, host=f"wiki.{DOMAIN}", token=None, browser=False, method="GET", headers=None, **kw):
        h = {"Host": host}
        if token and browser:
            h["Cookie"] = f"cloister_session={token}"
        elif token:
            h["Authorization"] = f"Bearer {token}"
        if browser:
            h["Accept"] = BROWSER_ACCEPT
        h.update(headers or {})
        return requests.request(method, f"http://127.0.0.1:{self.http_port}{path}", headers=h, timeout=10,
                                allow_redirects=False, **kw)

    def credential_token(self, credential):
        # minted once: minting again ends the sessions the previous token opened
        if credential not in self.credential_tokens:
            r = self.s.request("POST", "/v1/tokens", json={"credential": credential})
            assert r.status_code == 201, r.text
            self.credential_tokens[credential] = r.json()["token"]
        return self.credential_tokens[credential]

    def login(self, credential):
        """A new session, once the proxy knows it (its change reaches the proxy within a second)."""
        r = self.s.request("POST", "/v1/auth/token", token="", json={"token": self.credential_token(credential)})
        assert r.status_code == 200, r.text
        self.wait_status("/", r.json()["access_token"], 200)
        return r.json()

    def cli(self, *args):
        return run_cli(self.s, *args, config_home=self.config_home)

    def wait_status(self, path, token, want, timeout=5, **kw):
        deadline = time.time() + timeout
        r = None
        while time.time() < deadline:
            r = self.get(path, token=token, **kw)
            if r.status_code == want:
                return r
            time.sleep(0.05)
        raise AssertionError(f"{path}: wanted {want}, last {r.status_code if r is not None else None}: "
                             f"{r.text if r is not None else ''}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = EchoUpstream()
    up_port = up.start()
    base = tmp_path_factory.mktemp("selfservice")
    s, http_port, https_port = start_with_proxy(base / "data", DOMAIN)
    w = World(s, up, http_port, https_port, base / "alice-config")
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Group", "devs", {}),
        manifest("Group", "operators", {}),
        manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "devs-use", {"rules": [
            {"effect": "allow", "condition": {"match": '"devs" in ctx.user.groups'}}]}),
        manifest("Policy", "operators-only", {
            "explanation": EXPLANATION, "remediation": REMEDIATION,
            "rules": [{"name": "admin-area", "effect": "deny", "priority": -1, "condition": {"all": [
                {"match": 'ctx.request.http.path.startsWith("/admin")'},
                {"match": '!("operators" in ctx.user.groups)'}]}}]}),
        manifest("Policy", "admins-use", {"rules": [
            {"effect": "allow", "condition": {"match": '"admins" in ctx.user.groups'}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                     "policies": ["devs-use", "operators-only"]}),
        manifest("Service", "broken", {"upstream": {"url": f"http://127.0.0.1:{free_port()}"},
                                       "policies": ["devs-use"]}),
        manifest("Service", "ghost", {"upstream": {"enclave": "ghost"}, "policies": ["devs-use"]}),
        manifest("Service", "admin-console", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                              "policies": ["admins-use"]}),
    ]})
    assert r.status_code == 200, r.text
    ok(w.cli("login", "--token", w.credential_token("alice-cli")))
    w.login("alice-cli")
    yield w
    s.stop()
    up.stop()


def check_page(r, status):
    """R is an error page of STATUS: HTML, escaped, no script, the strict CSP
    whose hash is the page's one style, the request id shown."""
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = r.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; style-src 'sha256-"), csp
    assert "frame-ancestors 'none'" in csp
    styles = re.findall(r"<style>(.*?)</style>", r.text, re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert "<script" not in r.text.lower()
    assert not re.search(r"\son[a-z]+=", r.text, re.I)  # no inline handlers
    assert not re.search(r"<(link|img|iframe|object|embed)\b", r.text, re.I)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    rid = r.headers.get("x-cloister-request-id")
    if rid:
        assert f"<code>{rid}</code>" in r.text
    return r.text


def check_json(r, status, code):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["error"]["code"] == code
    return body


def test_403_page_shows_the_explanation_not_the_policy_and_json_is_unchanged(world):
    w = world
    tok = w.login("alice-cli")["access_token"]
    w.up.clear()
    page = check_page(w.get("/admin/users", token=tok, browser=True), 403)
    assert "Access denied" in page
    assert "The admin area is for operators &lt;script&gt;alert(1)&lt;/script&gt; only." in page
    assert "Ask the ops team (#ops) for the operators group." in page
    assert "operators-only" not in page and "admin-area" not in page  # no policy internals
    assert 'href="/.cloister/logout"' in page
    body = check_json(w.get("/admin/users", token=tok), 403, "forbidden")
    assert "operators-only" in body["error"]["message"]  # API clients: as before
    assert body["requestId"]
    assert not w.up.requests


def test_404_502_503_pages_for_a_browser_json_for_curl(world):
    w = world
    tok = w.login("alice-cli")["access_token"]
    # 404: an unknown host, echoed escaped
    r = w.get("/", host="nowhere.localhost", browser=True)
    assert "nowhere.localhost" in check_page(r, 404)
    check_json(w.get("/", host="nowhere.localhost"), 404, "not_found")
    # 502: the upstream refuses connections; no bare "connection failed"
    r = w.get("/x", host=f"broken.{DOMAIN}", token=tok, browser=True)
    page = check_page(r, 502)
    assert "could not be reached" in page and 'href="/.cloister/logout"' in page
    r = w.get("/x", host=f"broken.{DOMAIN}", token=tok)
    body = check_json(r, 502, "bad_gateway")
    assert "broken" in body["error"]["message"] and body["requestId"] == r.headers["x-cloister-request-id"]
    # 503: an enclave with no running replica
    page = check_page(w.get("/", host=f"ghost.{DOMAIN}", token=tok, browser=True), 503)
    assert "ghost" in page
    check_json(w.get("/", host=f"ghost.{DOMAIN}", token=tok), 503, "unavailable")


def test_echoed_script_is_escaped(world):
    w = world
    tok = w.login("alice-cli")["access_token"]
    # a path the proxy refuses and names: its text is escaped
    r = w.get("/%3Cscript%3Ealert(1)%3C/script%3E%2f..", token=tok, browser=True)
    assert r.status_code == 400, r.text
    check_page(r, 400)
    r = w.get("/", host="x<script>.localhost", browser=True)
    assert r.status_code in (400, 404)
    page = check_page(r, r.status_code)
    assert "<script>" not in page


def test_401_without_login_for_a_non_navigation_and_the_api_pages(world):
    w = world
    # a browser's POST cannot be sent to log in: it gets a page, a client JSON
    r = w.get("/", method="POST", browser=True)
    assert "Sign-in required" in check_page(r, 401)
    check_json(w.get("/", method="POST"), 401, "unauthenticated")
    # the API: the same negotiation
    r = w.s.request("GET", "/v1/services/nope", headers={"Accept": BROWSER_ACCEPT})
    assert "Service nope not found" in check_page(r, 404)
    assert w.s.request("GET", "/v1/services/nope").json()["error"]["code"] == "not_found"


def test_credential_token_is_told_how_to_exchange_it(world):
    w = world
    r = w.get("/", token=w.credential_token("alice-cli"))
    body = check_json(r, 401, "unauthenticated")
    msg = body["error"]["message"]
    assert "credential token" in msg and "POST /v1/auth/token" in msg and "cloister login --token" in msg
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "malformed" not in msg


def test_sign_out_revokes_the_session_and_clears_the_cookie(world):
    w = world
    session = w.login("alice-cli")
    tok = session["access_token"]
    r = w.get("/.cloister/logout", token=tok, browser=True)
    page = check_page(r, 200)
    assert '<form method="post" action="/.cloister/logout">' in page
    # another site cannot sign anyone out
    r = w.get("/.cloister/logout", method="POST", token=tok, browser=True,
              headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert w.get("/", token=tok).status_code == 200
    r = w.get("/.cloister/logout", method="POST", token=tok, browser=True,
              headers={"Origin": f"http://wiki.{DOMAIN}", "Sec-Fetch-Site": "same-origin"})
    page = check_page(r, 200)
    assert "You are signed out: your session has ended." in page
    assert re.search(r"cloister_session=; Path=/; Max-Age=0", r.headers["Set-Cookie"])
    # the session is gone at the API and, within a second, at the proxy
    sessions = w.s.request("GET", "/v1/sessions").json()["items"]
    assert session["session"] not in [x["metadata"]["name"] for x in sessions]
    w.wait_status("/", tok, 401, timeout=1.0)
    # without a session: nothing to end, still an answer (JSON for a client)
    r = w.get("/.cloister/logout", method="POST")
    assert r.status_code == 200 and r.json()["revoked"] is False
    assert "Max-Age=0" in r.headers["Set-Cookie"]


def test_cli_services_lists_what_alice_may_reach(world):
    w = world
    items = json.loads(ok(w.cli("services", "-o", "json")).stdout)
    names = {x["name"] for x in items}
    assert {"wiki", "broken", "ghost"} <= names and "admin-console" not in names
    wiki = next(x for x in items if x["name"] == "wiki")
    assert wiki["url"] == f"https://wiki.{DOMAIN}:{w.https_port}/"
    assert wiki["connect"]["cli"] == "cloister connect wiki"
    out = ok(w.cli("services")).stdout
    assert f"https://wiki.{DOMAIN}:{w.https_port}/" in out and "admin-console" not in out
    # the admin sees the admins' service
    r = w.s.request("GET", "/v1/me/services")
    assert "admin-console" in {x["name"] for x in r.json()["items"]}


def test_token_access_prints_a_token_the_proxy_accepts(world):
    w = world
    tok = ok(w.cli("token", "access")).stdout.strip()
    assert tok.count(".") == 2 and not tok.startswith("clst_")
    w.up.clear()
    # as a user would: curl (it resolves *.localhost to loopback itself)
    p = subprocess.run(["curl", "-sS", "--cacert", w.s.ca, "-H", f"Authorization: Bearer {tok}",
                        f"https://wiki.{DOMAIN}:{w.https_port}/hello"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert ["x-cloister-user", "alice"] in [[k.lower(), v] for k, v in json.loads(p.stdout)["headers"]]
    # still fresh: the same token, no refresh
    assert ok(w.cli("token", "access")).stdout.strip() == tok


def read_line(proc, timeout):
    deadline = time.time() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.time()
        assert left > 0, f"no line from connect: {buf!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            assert chunk, f"connect ended: {proc.stderr.read()!r}"
            buf += chunk
    return buf.decode()


def test_connect_carries_requests_and_stops_within_a_second_of_revocation(world, tmp_path):
    w = world
    # a session of its own for connect (the other tests' login stays)
    home = tmp_path / "connect-config"
    ok(run_cli(w.s, "login", "--token", w.credential_token("alice-cli"), config_home=home))
    saved = json.loads((home / "cloister" / "session.json").read_text())
    w.wait_status("/", saved["access_token"], 200)  # the new session has reached the proxy
    env = sanitizer_env()
    env.update({"XDG_CONFIG_HOME": str(home), "CLOISTER_SERVER": w.s.url, "CLOISTER_CA": w.s.ca})
    env.pop("CLOISTER_TOKEN", None)
    proc = subprocess.Popen([str(CLOISTER), "connect", "wiki", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        line = read_line(proc, 15)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        local = f"http://127.0.0.1:{port}"
        w.up.clear()
        r = requests.get(f"{local}/docs/page?x=1", timeout=10)
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["target"] == "/docs/page?x=1"
        hdrs = [[k.lower(), v] for k, v in rec["headers"]]
        assert ["x-cloister-user", "alice"] in hdrs
        # bodies stream both ways: a sized one, a chunked one, a large answer
        body = bytes(range(256)) * 400
        r = requests.post(f"{local}/upload", data=body, timeout=10)
        assert r.status_code == 200 and r.json()["body"].encode("latin-1") == body
        r = requests.post(f"{local}/chunked", data=iter([b"abc", b"def" * 1000, b"g"]), timeout=10)
        assert r.status_code == 200 and r.json()["body"] == "abc" + "def" * 1000 + "g"
        r = requests.get(f"{local}/big?n=3000000", timeout=20)
        assert r.status_code == 200 and len(r.content) == 3000000
        # the proxy's own refusal passes through as it is
        r = requests.get(f"{local}/admin/x", timeout=10, headers={"Accept": BROWSER_ACCEPT})
        assert r.status_code == 403 and r.headers["Content-Type"].startswith("text/html")
        # revoke connect's session: within a second nothing goes through
        sid = saved["session"]
        assert w.s.request("DELETE", f"/v1/sessions/{sid}").status_code in (200, 204)
        started = time.time()
        while True:
            try:
                status = requests.get(f"{local}/docs/page", timeout=2).status_code
            except requests.ConnectionError:
                status = "closed"
            if status != 200:
                break
            assert time.time() - started <= 1.0, "connect still forwards a second after the revocation"
            time.sleep(0.02)
        assert status in (401, "closed")
        elapsed = time.time() - started
        assert elapsed <= 1.0
        print(f"connect refused {elapsed * 1000:.0f} ms after the revocation ({status})")
        assert proc.wait(timeout=10) == 1
        err = proc.stderr.read().decode()
        assert "your session has ended" in err, err
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{local}/docs/page", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for marker in ("ERROR: AddressSanitizer", "runtime error:"):
        assert marker not in err


def test_connect_refuses_what_it_should(world):
    w = world
    p = w.cli("connect", "admin-console")
    assert p.returncode == 1 and "not among those you may reach" in p.stderr
    p = w.cli("connect", "wiki", "--listen", "0.0.0.0:0")
    assert p.returncode == 2 and "loopback" in p.stderr


def test_cloister_logout_revokes_the_cli_session_at_the_proxy(world, tmp_path):
    w = world
    home = tmp_path / "logout-config"
    ok(run_cli(w.s, "login", "--token", w.credential_token("alice-cli"), config_home=home))
    saved = json.loads((home / "cloister" / "session.json").read_text())
    w.wait_status("/", saved["access_token"], 200)
    assert "logged out" in ok(run_cli(w.s, "logout", config_home=home)).stdout
    assert not (home / "cloister" / "session.json").exists()
    w.wait_status("/", saved["access_token"], 401, timeout=1.0)
    p = run_cli(w.s, "token", "access", config_home=home)
    assert p.returncode == 1 and "not logged in" in p.stderr
