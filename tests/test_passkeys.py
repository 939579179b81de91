"""Local login without an identity provider (issue 18): `cloister user invite` prints a one-time link, the
invited user registers a passkey (WebAuthn, ES256) on the API's page, and signs in with it into the same
kind of session an OIDC login opens (the proxy's handoff included).

Two authenticators play the user. In Python, an authenticator made here with `cryptography` (P-256) and
`cbor2` crafts each WebAuthn message by hand, so that every refusal is hit precisely: wrong origin, wrong
type, wrong rpIdHash, no user presence or verification, a bad signature, an algorithm other than ES256, a
replayed assertion, a counter that did not increase, a foreign credential, expired, reused and revoked
invitations. In Debian's Chromium (python3-selenium and chromium-driver, as tests/test_portal.py drives it),
the virtual authenticator of the DevTools protocol (WebAuthn.addVirtualAuthenticator: ctap2, internal,
resident keys, user verification) registers and signs in through the real pages, from a service host the
proxy sent the browser away from back to it; a replayed and a foreign assertion are refused there too."""
import base64
import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cbor2
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Server, audited, free_port, manifest, run_cli
from echo_upstream import EchoUpstream
from test_browser_login import Env, cookie_of, set_cookies

DOMAIN = "localhost"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Authenticator:
    """A WebAuthn authenticator in Python: one P-256 credential, messages made by hand."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cred_id = os.urandom(16)
        self.count = 0
        self.user_handle = None

    def cose_key(self, alg=-7):
        n = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: alg, -1: 1, -2: n.x.to_bytes(32, "big"), -3: n.y.to_bytes(32, "big")})

    def auth_data(self, rp_id, flags, count, attested=False, alg=-7):
        out = hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + count.to_bytes(4, "big")
        if attested:
            out += bytes(16) + len(self.cred_id).to_bytes(2, "big") + self.cred_id + self.cose_key(alg)
        return out

    @staticmethod
    def client_data(typ, challenge, origin, **extra):
        return json.dumps({"type": typ, "challenge": challenge, "origin": origin, "crossOrigin": False,
                           **extra}).encode()

    def create(self, options, origin, typ="webauthn.create", rp_id=None, flags=0x45, alg=-7, fmt="none"):
        """The registration body for OPTIONS (the server's creation options); flags UP|UV|AT by default."""
        pk = options["publicKey"]
        self.user_handle = unb64u(pk["user"]["id"])
        cd = self.client_data(typ, pk["challenge"], origin)
        ad = self.auth_data(rp_id or pk["rp"]["id"], flags, self.count, attested=True, alg=alg)
        stmt = {}
        if fmt == "packed":
            sig = self.key.sign(ad + hashlib.sha256(cd).digest(), ec.ECDSA(hashes.SHA256()))
            stmt = {"alg": alg, "sig": sig}
        att = cbor2.dumps({"fmt": fmt, "attStmt": stmt, "authData": ad})
        return {"id": b64u(self.cred_id), "clientDataJSON": b64u(cd), "attestationObject": b64u(att)}

    def get(self, options, origin, typ="webauthn.get", rp_id=None, flags=0x05, count=None, sign_with=None):
        """The assertion body for OPTIONS (the server's request options); flags UP|UV by default; the
        counter moves on by one unless COUNT is given."""
        pk = options["publicKey"]
        if count is None:
            self.count += 1
            count = self.count
        cd = self.client_data(typ, pk["challenge"], origin)
        ad = self.auth_data(rp_id or pk["rpId"], flags, count)
        sig = (sign_with or self.key).sign(ad + hashlib.sha256(cd).digest(), ec.ECDSA(hashes.SHA256()))
        return {"id": b64u(self.cred_id), "clientDataJSON": b64u(cd), "authenticatorData": b64u(ad),
                "signature": b64u(sig), "userHandle": b64u(self.user_handle) if self.user_handle else None}


class Cluster:
    def __init__(self, env):
        self.e = env
        self.s = env.s
        self.origin = f"https://api.{DOMAIN}:{self.s.port}"

    def post(self, path, body, origin=None):
        """A call of the passkey pages' script: from the API's origin."""
        return requests.post(f"{self.s.url}/v1/auth/passkey/{path}", json=body, verify=self.s.ca, timeout=30,
                             headers={"Origin": origin or self.origin})

    def invite(self, name, *extra):
        p = run_cli(self.s, "user", "invite", name, *extra, env_extra={"CLOISTER_TOKEN": self.s.token})
        assert p.returncode == 0, p.stderr
        url = p.stdout.strip()
        assert url.startswith(f"{self.origin}/v1/auth/passkey/register#clsi_"), url
        return url.split("#", 1)[1]

    def register(self, name, auth=None):
        auth = auth or Authenticator()
        token = self.invite(name)
        r = self.post("register/begin", {"invite": token})
        assert r.status_code == 200, r.text
        r = self.post("register/finish", {"invite": token, **auth.create(r.json(), self.origin)})
        assert r.status_code == 201, r.text
        return auth

    def begin_login(self, query=""):
        r = self.post("login/begin" + query, {})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("passkeys")
    up = EchoUpstream()
    up_port = up.start()
    http_port = free_port()
    s = Server(d / "data", extra_args=["--proxy-listen", f"127.0.0.1:{free_port()}", "--proxy-http-listen",
                                       f"127.0.0.1:{http_port}", "--domain", DOMAIN]).start()
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Policy", "signed-in", {"rules": [{"effect": "allow", "priority": 0, "condition": {"match": "true"}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["signed-in"]}),
        manifest("Service", "portal", {"upstream": {"portal": True}, "policies": ["signed-in"]}),
    ]})
    assert r.status_code == 200, r.text
    e = Env(s, up, None, http_port, s.ca)
    deadline = time.time() + 15
    while e.proxy("/", html=False).status_code != 401:
        assert time.time() < deadline, "the proxy never served wiki"
        time.sleep(0.1)
    yield Cluster(e)
    s.stop()
    up.stop()


def test_invite_register_sign_in_and_the_session(cluster):
    c = cluster
    token = c.invite("alice", "--email", "alice@example.com")
    user = c.s.request("GET", "/v1/users/alice").json()
    assert user["spec"]["email"] == "alice@example.com"
    assert "inviteDigest" not in user.get("status", {})  # only its digest is kept, and never shown
    assert user["status"]["invite"]["createdBy"] == "admin"
    audited(c.s, "user.invite", lambda x: x["resource"]["name"] == "alice" and x["outcome"] == "success")

    r = c.post("register/begin", {"invite": token})
    assert r.status_code == 200, r.text
    opts = r.json()["publicKey"]
    assert opts["rp"]["id"] == f"api.{DOMAIN}" and opts["pubKeyCredParams"] == [{"type": "public-key", "alg": -7}]
    assert opts["authenticatorSelection"]["userVerification"] == "required" and opts["attestation"] == "none"
    assert unb64u(opts["user"]["id"]).decode() == user["metadata"]["uid"]  # the user handle is the uid
    auth = Authenticator()
    r = c.post("register/finish", {"invite": token, **auth.create(r.json(), c.origin, fmt="packed")})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "packed"  # self-attestation, checked with the new key
    listed = c.s.request("GET", "/v1/users/alice/passkeys").json()["passkeys"]
    assert [p["id"] for p in listed] == [b64u(auth.cred_id)] and listed[0]["algorithm"] == "ES256"
    # the invitation was spent
    r = c.post("register/begin", {"invite": token})
    assert r.status_code == 401 and "used or revoked" in r.json()["error"]["message"], r.text

    r = c.post("login/finish", auth.get(c.begin_login(), c.origin))
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "alice" and "redirect" not in r.json()
    cookie = set_cookies(r)["cloister_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and "Secure" in cookie["raw"]
    who = c.s.request("GET", "/v1/whoami", token=cookie["value"])
    assert who.status_code == 200 and who.json()["user"] == "alice", who.text
    sid = r.json()["session"]
    session = c.s.request("GET", f"/v1/sessions/{sid}").json()
    assert session["spec"]["authMethod"] == "passkey" and session["spec"]["userUid"] == user["metadata"]["uid"]
    audited(c.s, "auth.login", lambda x: x["actor"].get("session") == sid and x["details"]["method"] == "passkey")
    stored = c.s.request("GET", "/v1/users/alice/passkeys").json()["passkeys"][0]
    assert stored["signCount"] == auth.count and stored["lastUsedAt"]


def test_sign_in_from_a_service_ends_with_the_proxys_handoff(cluster):
    c = cluster
    auth = c.register("bob")
    e = c.e
    r = e.proxy("/page?x=1")
    assert r.status_code == 302, r.text
    e.login_cookie = set_cookies(r)["cloister_login"]["value"]
    login = r.headers["Location"]
    r = requests.get(login, verify=c.s.ca, allow_redirects=False, timeout=30)
    # no identity provider: the login link goes on to the passkey page, the proxy's parameters kept
    assert r.status_code == 302, r.text
    page = r.headers["Location"]
    # at the RP's origin: WebAuthn works only there
    assert page.startswith(f"{c.origin}/v1/auth/passkey/login?rd="), page
    page = page[len(c.origin):]
    r = requests.get(c.s.url + page, verify=c.s.ca, allow_redirects=False, timeout=30,
                     headers={"Host": f"api.{DOMAIN}:{c.s.port}"})
    assert r.status_code == 200 and "<script src=\"/v1/auth/passkey/passkey.js\"" in r.text
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp

    query = page[len("/v1/auth/passkey/login"):]
    r = c.post("login/finish", auth.get(c.begin_login(query), c.origin))
    assert r.status_code == 200, r.text
    assert "Set-Cookie" not in r.headers  # the API host gets no cookie: the service host sets one
    back = r.json()["redirect"]
    assert back.startswith(f"http://{e.host}/.cloister/callback?handoff="), back
    r = e.follow(back)
    assert r.status_code == 302 and r.headers["Location"] == "/page?x=1", r.text
    _, session = cookie_of(r)
    r = e.proxy("/page?x=1", cookie=f"cloister_session={session}")
    assert r.status_code == 200, r.text
    assert ["x-cloister-user", "bob"] in [[k.lower(), v] for k, v in json.loads(r.text)["headers"]], r.text
    # a handoff made for this browser does not work in another (no login cookie)
    r = c.post("login/finish", auth.get(c.begin_login(query), c.origin))
    e.login_cookie = None
    assert e.proxy(urlsplit(r.json()["redirect"]).path + "?" + urlsplit(r.json()["redirect"]).query).status_code == 400


def refused(r, status, words):
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert words in msg, msg
    return msg


def test_registration_refusals(cluster):
    c = cluster
    token = c.invite("carol")

    def attempt(words, status=401, **kw):
        r = c.post("register/begin", {"invite": token})
        assert r.status_code == 200, r.text
        origin = kw.pop("origin", c.origin)
        return refused(c.post("register/finish", {"invite": token, **Authenticator().create(r.json(), origin, **kw)}),
                       status, words)

    attempt("origin", origin="https://evil.localhost")
    attempt("origin", origin=f"https://api.{DOMAIN}:{c.s.port + 1}")
    attempt("type is not webauthn.create", typ="webauthn.get")
    attempt("rpIdHash", rp_id="evil.example")
    attempt("user presence", flags=0x44)  # UV|AT, no UP
    attempt("verify the user", flags=0x41)  # UP|AT, no UV
    attempt("only ES256", status=400, alg=-8)  # EdDSA
    attempt("only ES256", status=400, alg=-257)  # RS256
    attempt("attestation format", status=400, fmt="tpm")
    # a registration started for one invitation cannot finish with another's token
    other = c.invite("dave")
    r = c.post("register/begin", {"invite": token})
    refused(c.post("register/finish", {"invite": other, **Authenticator().create(r.json(), c.origin)}), 401,
            "another invitation")
    # the challenge is single use
    r = c.post("register/begin", {"invite": token})
    body = {"invite": token, **Authenticator().create(r.json(), c.origin)}
    assert c.post("register/finish", body).status_code == 201
    refused(c.post("register/finish", body), 401, "already used")
    # a page on another site cannot drive the ceremony (login CSRF)
    refused(c.post("login/begin", {}, origin="https://wiki.localhost"), 403, "Origin")
    # sizes are capped before anything is parsed
    refused(c.post("register/finish", {"invite": token, "clientDataJSON": "A" * 6000, "attestationObject": "A"}), 400,
            "longer than")
    audited(c.s, "auth.passkey.register", lambda x: x["outcome"] == "denied" and "rpIdHash" in x["details"]["reason"])


def test_assertion_refusals(cluster):
    c = cluster
    auth = c.register("erin")

    def attempt(status, words, **kw):
        origin = kw.pop("origin", c.origin)
        return refused(c.post("login/finish", auth.get(c.begin_login(), origin, **kw)), status, words)

    attempt(401, "origin", origin="https://wiki.localhost")
    attempt(401, "type is not webauthn.get", typ="webauthn.create")
    attempt(401, "rpIdHash", rp_id="evil.example")
    attempt(401, "user presence", flags=0x04)
    attempt(401, "verify the user", flags=0x01)
    attempt(401, "signature does not verify", sign_with=ec.generate_private_key(ec.SECP256R1()))
    # a captured assertion sent again: its challenge is spent
    body = auth.get(c.begin_login(), c.origin)
    assert c.post("login/finish", body).status_code == 200
    refused(c.post("login/finish", body), 401, "already used")
    # the counter must move on: the same or a lower one is a cloned authenticator
    attempt(401, "cloned", count=auth.count)
    attempt(401, "cloned", count=1)
    audited(c.s, "auth.login", lambda x: x["outcome"] == "denied" and "cloned" in (x["details"].get("reason") or ""))
    # a credential nobody registered, and one whose user handle names someone else
    refused(c.post("login/finish", Authenticator().get(c.begin_login(), c.origin)), 401, "not registered")
    body = auth.get(c.begin_login(), c.origin)
    body["userHandle"] = b64u(b"someone-else")
    refused(c.post("login/finish", body), 401, "user handle")
    # still usable after all that
    assert c.post("login/finish", auth.get(c.begin_login(), c.origin)).status_code == 200


def test_invitations_expire_are_revoked_and_passkeys_deleted(cluster, tmp_path):
    c = cluster
    token = c.invite("frank")
    p = run_cli(c.s, "user", "invite", "frank", "--revoke", env_extra={"CLOISTER_TOKEN": c.s.token})
    assert p.returncode == 0 and "revoked" in p.stdout, p.stderr
    refused(c.post("register/begin", {"invite": token}), 401, "used or revoked")
    # a new invitation replaces the previous one
    old = c.invite("frank")
    new = c.invite("frank")
    refused(c.post("register/begin", {"invite": old}), 401, "used or revoked")
    r = c.post("register/begin", {"invite": new})
    assert r.status_code == 200
    # an invitation older than 24 hours: its expiry moved into the past in the store, server stopped
    c.s.stop()
    db = sqlite3.connect(c.s.data_dir / "api" / "store.db")
    (text,) = db.execute("SELECT doc FROM resources WHERE kind = 'User' AND name = 'frank'").fetchone()
    doc = json.loads(text)
    doc["status"]["invite"]["expiresAt"] = "2020-01-01T00:00:00Z"
    db.execute("UPDATE resources SET doc = ? WHERE kind = 'User' AND name = 'frank'", (json.dumps(doc),))
    db.commit()
    db.close()
    c.s.start()
    refused(c.post("register/begin", {"invite": new}), 401, "expired")
    # a user lists and deletes their passkeys; the admin needs `invite` on the User to delete them
    auth = c.register("frank")
    listed = run_cli(c.s, "user", "passkeys", "frank", "-o", "json", env_extra={"CLOISTER_TOKEN": c.s.token})
    assert json.loads(listed.stdout)["passkeys"][0]["id"] == b64u(auth.cred_id)
    p = run_cli(c.s, "user", "passkeys", "frank", "--delete", b64u(auth.cred_id),
                env_extra={"CLOISTER_TOKEN": c.s.token})
    assert p.returncode == 0 and "deleted" in p.stdout, p.stderr
    refused(c.post("login/finish", auth.get(c.begin_login(), c.origin)), 401, "not registered")
    # not a malformed token: a refusal that says what to do
    refused(c.post("register/begin", {"invite": "nope"}), 400, "invitation token")


def test_inviting_is_decided_by_policy(cluster):
    c = cluster
    r = c.s.request("POST", "/v1/apply", json={"items": [
        manifest("User", "gina", {"type": "human"}),
        manifest("Credential", "gina-cli", {"user": "gina", "type": "authToken"})]})
    assert r.status_code == 200, r.text
    tok = c.s.request("POST", "/v1/tokens", json={"credential": "gina-cli"}).json()["token"]
    r = c.s.request("POST", "/v1/users/henry/invite", token=tok, json={})
    assert r.status_code == 403 and "invite User/henry" in r.json()["error"]["message"], r.text
    # gina sees her own (empty) passkeys, not another user's
    assert c.s.request("GET", "/v1/users/gina/passkeys", token=tok).json()["passkeys"] == []
    assert c.s.request("GET", "/v1/users/alice/passkeys", token=tok).status_code == 403


# ---- Chromium's virtual authenticator through the real pages ----

webdriver = None


def chromium():
    global webdriver
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (scripts/debian-packages.txt)")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="python3-selenium is needed (scripts/debian-packages.txt)")
    return webdriver


def spki_hash(cert_pem):
    """base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as --ignore-certificate-errors-spki-list takes it."""
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# CDP-injected before any page script (as tests/test_portal.py does): records CSP violations and errors
WATCH = """
window.__problems = [];
document.addEventListener('securitypolicyviolation',
  e => window.__problems.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('error', e => window.__problems.push('error: ' + e.message));
"""


class Browser:
    """Chromium with a virtual authenticator (CDP WebAuthn domain), its API certificate trusted by SPKI pin."""

    def __init__(self, cluster, profile):
        wd = chromium()
        from selenium.webdriver.chrome.service import Service as ChromeService
        opts = wd.ChromeOptions()
        opts.binary_location = CHROMIUM
        pin = spki_hash((cluster.s.data_dir / "tls" / "api.pem").read_bytes())
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  f"--user-data-dir={profile}", "--no-first-run"):
            opts.add_argument(a)
        opts.add_argument(f"--ignore-certificate-errors-spki-list={pin}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = wd.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=opts)
        self.d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        self.d.execute_cdp_cmd("WebAuthn.enable", {"enableUI": False})
        self.auth = self.d.execute_cdp_cmd("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]

    def credentials(self):
        return self.d.execute_cdp_cmd("WebAuthn.getCredentials", {"authenticatorId": self.auth})["credentials"]

    def click_and_wait(self, timeout=20, leaves=False):
        """Clicks the page's button and waits for the ceremony's end: ("done"
        or "error", the status line), or ("left", the URL) once the page sent
        the browser on. LEAVES: the page is expected to send the browser on
        (a sign-in with a return URL shows "done" just before it goes), so
        only an error or leaving ends the wait."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        deadline = time.time() + 10
        while not (go := self.d.find_elements(By.ID, "go")) or not go[0].is_enabled():
            assert time.time() < deadline, "the page's button never became usable"
            time.sleep(0.05)
        go[0].click()
        deadline = time.time() + timeout
        while True:
            if "/v1/auth/passkey/" not in self.d.current_url:  # the page sent the browser on
                return "left", self.d.current_url
            try:  # the state and the status line read together, from one document
                state, text = self.d.execute_script(
                    "const s = document.getElementById('status');"
                    "return [document.body ? document.body.dataset.state : '', s ? s.textContent : null]")
            except WebDriverException:  # the document is being replaced (the page sends the browser on)
                state, text = None, None
            if text is not None and (state == "error" or (state == "done" and not leaves)):
                return state, text
            assert time.time() < deadline, f"the ceremony did not end (state {state}, at {self.d.current_url})"
            time.sleep(0.05)

    def page_source(self):
        """The document's source, or "" while it is being replaced."""
        from selenium.common.exceptions import WebDriverException
        try:
            return self.d.page_source
        except WebDriverException:
            return ""

    def problems(self):
        return self.d.execute_script("return window.__problems || []")

    def quit(self):
        self.d.quit()


def screenshots(tmp_path):
    build = os.environ.get("CLOISTER_BUILD")
    d = Path(build) / "test-logs" / "passkeys" if build else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def browser(cluster, tmp_path):
    b = Browser(cluster, tmp_path / "chromium")
    yield b
    b.quit()


def test_chromium_virtual_authenticator_invite_register_sign_in(cluster, browser, tmp_path):
    c = cluster
    e = c.e
    token = c.invite("ivan")
    browser.d.get(f"{c.origin}/v1/auth/passkey/register#{token}")
    state, text = browser.click_and_wait()
    assert state == "done" and "registered for ivan" in text, text
    assert browser.problems() == []  # no CSP violation, no script error
    browser.d.save_screenshot(str(screenshots(tmp_path) / "passkey-registered.png"))
    # the link again (a new document: the same path with a fragment would not load the page again): spent
    browser.d.get("about:blank")
    browser.d.get(f"{c.origin}/v1/auth/passkey/register#{token}")
    state, text = browser.click_and_wait()
    assert state == "error" and "used or revoked" in text, text
    assert "#" not in browser.d.current_url  # the token left the address bar
    creds = browser.credentials()
    assert len(creds) == 1 and creds[0]["isResidentCredential"] and creds[0]["rpId"] == f"api.{DOMAIN}"
    stored = c.s.request("GET", "/v1/users/ivan/passkeys").json()["passkeys"]
    assert [p["id"] for p in stored] == [creds[0]["credentialId"].replace("+", "-").replace("/", "_").rstrip("=")]

    # a protected page: the proxy sends the browser to log in, the passkey signs in, the page is reached
    browser.d.get(f"http://{e.host}/hello?from=chromium")
    assert browser.d.current_url.startswith(f"{c.origin}/v1/auth/passkey/login?rd="), browser.d.current_url
    state, _ = browser.click_and_wait(leaves=True)
    assert state == "left"
    deadline = time.time() + 15
    while "/hello" not in browser.d.current_url or "x-cloister-user" not in browser.page_source().lower():
        assert time.time() < deadline, f"the service page never came: {browser.d.current_url}"
        time.sleep(0.1)
    assert re.search(r'"x-cloister-user",\s*"ivan"', browser.page_source(), re.I), browser.page_source()
    browser.d.save_screenshot(str(screenshots(tmp_path) / "passkey-signed-in-service.png"))
    count = c.s.request("GET", "/v1/users/ivan/passkeys").json()["passkeys"][0]["signCount"]
    assert count >= 1
    # the portal, another host: signed in there with the passkey too, its app shows ivan's services
    if not (Path(os.environ.get("CLOISTER_BUILD", "/nonexistent")) / "portal" / "index.html").exists():
        return  # the portal is built only where node and npm are (meson), as tests/test_portal.py says
    browser.d.get(f"http://portal.{DOMAIN}:{e.http_port}/")
    assert browser.d.current_url.startswith(f"{c.origin}/v1/auth/passkey/login?rd="), browser.d.current_url
    assert browser.click_and_wait(leaves=True)[0] == "left"
    from selenium.webdriver.common.by import By
    deadline = time.time() + 15
    while not browser.d.find_elements(By.CSS_SELECTOR, 'main[data-page="services"]') or \
            "wiki" not in browser.d.find_element(By.TAG_NAME, "main").text:
        assert time.time() < deadline, f"the portal never showed ivan's services: {browser.page_source()[:500]}"
        time.sleep(0.1)
    browser.d.save_screenshot(str(screenshots(tmp_path) / "passkey-signed-in-portal.png"))
    assert c.s.request("GET", "/v1/users/ivan/passkeys").json()["passkeys"][0]["signCount"] > count


def test_chromium_replayed_and_foreign_assertions_refused(cluster, browser, tmp_path):
    c = cluster
    token = c.invite("judy")
    browser.d.get(f"{c.origin}/v1/auth/passkey/register#{token}")
    assert browser.click_and_wait()[0] == "done"
    # the page's call captured as it leaves the browser, then sent again
    browser.d.get(f"{c.origin}/v1/auth/passkey/login")
    browser.d.execute_script("""
      window.__sent = [];
      const f = window.fetch;
      window.fetch = (u, o) => { window.__sent.push([u, o && o.body]); return f(u, o); };""")
    state, text = browser.click_and_wait()
    assert state == "done" and "judy" in text, text
    sent = browser.d.execute_script("return window.__sent")
    finish = [json.loads(b) for u, b in sent if u.endswith("login/finish")][0]
    refused(c.post("login/finish", finish), 401, "already used")

    # a foreign assertion: another browser's authenticator holds a passkey for this site that is not registered
    # (any more: kim's, deleted), and the server refuses it
    other = Browser(c, tmp_path / "other")
    try:
        t2 = c.invite("kim")
        other.d.get(f"{c.origin}/v1/auth/passkey/register#{t2}")
        assert other.click_and_wait()[0] == "done"
        run_cli(c.s, "user", "passkeys", "kim", "--delete",
                c.s.request("GET", "/v1/users/kim/passkeys").json()["passkeys"][0]["id"],
                env_extra={"CLOISTER_TOKEN": c.s.token})
        other.d.get(f"{c.origin}/v1/auth/passkey/login")
        state, text = other.click_and_wait()
        assert state == "error" and "not registered" in text, text
    finally:
        other.quit()
    # a counter set back in the authenticator: refused as a cloned authenticator
    cred = browser.credentials()[0]
    browser.d.execute_cdp_cmd("WebAuthn.removeCredential", {"authenticatorId": browser.auth,
                                                            "credentialId": cred["credentialId"]})
    cred["signCount"] = 0
    browser.d.execute_cdp_cmd("WebAuthn.addCredential", {"authenticatorId": browser.auth, "credential": cred})
    browser.d.get(f"{c.origin}/v1/auth/passkey/login")
    state, text = browser.click_and_wait()
    assert state == "error" and "cloned" in text, text


def test_with_an_identity_provider_the_login_page_offers_both(cluster):
    """Last in the module: an IdentityProvider beside the passkeys makes /v1/auth/login a page of choices."""
    c = cluster
    r = c.s.request("POST", "/v1/apply", json={"items": [
        manifest("Secret", "idp-client", {"data": {"secret": "s3cret"}}),
        manifest("IdentityProvider", "corp", {"type": "oidc", "issuer": "https://idp.example.com", "clientId": "c",
                                              "clientSecret": {"secret": "idp-client", "key": "secret"}})]})
    assert r.status_code == 200, r.text
    try:
        c.e.login_cookie = None
        r = c.e.proxy("/x")
        assert r.status_code == 302, r.text
        page = requests.get(r.headers["Location"], verify=c.s.ca, allow_redirects=False, timeout=30)
        assert page.status_code == 200, page.text
        links = re.findall(r'href="([^"]+)"', page.text)
        query = urlsplit(r.headers["Location"]).query
        assert any(h.startswith("/v1/auth/oidc/corp/login?rd=") for h in links), links
        passkey = [h for h in links if h.startswith(f"{c.origin}/v1/auth/passkey/login?rd=")]
        assert len(passkey) == 1 and parse_qs(urlsplit(passkey[0].replace("&amp;", "&")).query) == parse_qs(query)
    finally:
        c.s.request("DELETE", "/v1/identityproviders/corp")
