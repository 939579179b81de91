"""OIDC login against a real OpenID provider: npm's oidc-provider, started on
loopback HTTPS by these fixtures (installed with `npm ci` from tests/oidc).
The browser is played by requests: it follows the redirects and submits the
provider's login and consent forms. Refusals: a wrong or replayed state, a
replayed code, a code from another login, a code from another issuer, and
a provider whose discovery names another issuer."""
import datetime
import html
import ipaddress
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import CLOISTER, free_port, manifest, run_cli, sanitizer_env

OIDC_DIR = Path(__file__).parent / "oidc"
CLIENT_SECRET = "oidc-test-client-secret"


@pytest.fixture(scope="session")
def node_modules():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the OpenID provider")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, check=True, capture_output=True,
                       timeout=300)
    return OIDC_DIR


def make_pki(d):
    """A CA and a certificate for 127.0.0.1 that it signs, as PEM files in D."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OIDC test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "idp-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "idp.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "idp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "idp-ca.pem"


class Provider:
    def __init__(self, d, name, cloister_port):
        self.port = free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        clients = d / f"{name}-clients.json"
        clients.write_text(json.dumps([{
            "client_id": "cloister", "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"https://127.0.0.1:{cloister_port}/v1/auth/oidc/callback"],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic"}]))
        self.log = open(d / f"{name}.log", "w")
        self.proc = subprocess.Popen(["node", "provider.js", str(self.port), str(d / "idp.pem"), str(d / "idp.key"),
                                      str(clients)], cwd=OIDC_DIR, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready and self.proc.stdout.readline().strip() == "ready", (d / f"{name}.log").read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def oidc(server, node_modules, tmp_path):
    """The server with IdentityProvider `test` (provider A, createUsers) and
    `other` (provider B); both providers know the client `cloister`."""
    d = tmp_path / "oidc"
    d.mkdir()
    ca = make_pki(d)
    a, b = Provider(d, "a", server.port), Provider(d, "b", server.port)
    bundle = d / "bundle.pem"
    bundle.write_text(Path(server.ca).read_text().strip() + "\n" + ca.read_text())

    def idp(name, issuer, **extra):
        return manifest("IdentityProvider", name, {
            "type": "oidc", "issuer": issuer, "clientId": "cloister",
            "clientSecret": {"secret": "oidc-client", "key": "secret"}, "scopes": ["openid", "email", "groups"],
            "createUsers": True, "ca": ca.read_text(), **extra})
    r = server.request("POST", "/v1/apply", json={"items": [
        manifest("Secret", "oidc-client", {"data": {"secret": CLIENT_SECRET}}),
        idp("test", a.issuer), idp("other", b.issuer), idp("liar", a.issuer + "/")]})
    assert r.status_code == 200, r.text
    yield {"server": server, "a": a, "b": b, "verify": str(bundle), "dir": d}
    a.stop()
    b.stop()


def browser(env):
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the bundle below
    s.verify = env["verify"]
    return s


def to_callback(http, url, login="alice"):
    """Plays the browser from URL through the provider's login and consent
    forms; returns the URL the provider sends the browser back to (not followed)."""
    for _ in range(20):
        r = http.get(url, allow_redirects=False, timeout=30)
        while r.status_code in (302, 303):
            url = urljoin(url, r.headers["Location"])
            if "/v1/auth/oidc/callback" in url:
                return url
            r = http.get(url, allow_redirects=False, timeout=30)
        assert r.status_code == 200, (url, r.status_code, r.text[:500])
        m = re.search(r'<form[^>]*action="([^"]+)"', r.text)
        assert m, r.text[:1000]
        action = urljoin(url, html.unescape(m.group(1)))
        data = {"prompt": "login", "login": login, "password": "any"} if 'name="login"' in r.text \
            else {"prompt": "consent"}
        r = http.post(action, data=data, allow_redirects=False, timeout=30)
        assert r.status_code in (302, 303), (r.status_code, r.text[:500])
        url = urljoin(action, r.headers["Location"])
        if "/v1/auth/oidc/callback" in url:
            return url
    raise AssertionError("the provider never sent the browser back")


def start(env, idp="test"):
    s = env["server"]
    r = requests.get(f"{s.url}/v1/auth/oidc/{idp}/login", verify=env["verify"], allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    return r.headers["Location"]


def test_browser_login_creates_the_user_and_sets_the_session_cookie(oidc):
    s = oidc["server"]
    http = browser(oidc)
    auth_url = start(oidc)
    q = parse_qs(urlparse(auth_url).query)
    assert auth_url.startswith(oidc["a"].issuer)
    assert q["code_challenge_method"] == ["S256"] and q["state"][0] and q["nonce"][0]
    assert q["scope"] == ["openid email groups"] and q["client_id"] == ["cloister"]
    cb = to_callback(http, auth_url)
    r = http.get(cb, allow_redirects=False, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "alice"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("cloister_session=")
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    who = s.request("GET", "/v1/whoami", token=token).json()
    assert "user" in who, who
    assert who["user"] == "alice" and who["groups"] == ["devs"] and who["email"] == "alice@example.com"
    sess = s.request("GET", f"/v1/sessions/{r.json()['session']}").json()
    assert sess["spec"]["authMethod"] == "oidc" and sess["spec"]["identityProvider"] == "test"
    user = s.request("GET", "/v1/users/alice").json()
    assert user["metadata"]["labels"]["cloister.dev/identity-provider"] == "test"
    # a second login maps to the same user
    cb = to_callback(http, start(oidc))
    assert http.get(cb, allow_redirects=False, timeout=30).json()["user"] == "alice"
    # logout revokes the session and points at the provider's end_session_endpoint
    r = s.request("POST", "/v1/auth/logout", token=token)
    assert r.status_code == 200, r.text
    end = r.json()["end_session_url"]
    assert end.startswith(oidc["a"].issuer + "/") and "client_id=cloister" in end
    assert s.request("GET", "/v1/whoami", token=token).status_code == 401


def test_wrong_state_is_refused(oidc):
    http = browser(oidc)
    cb = to_callback(http, start(oidc))
    q = parse_qs(urlparse(cb).query)
    forged = f"{cb.split('?')[0]}?code={q['code'][0]}&state={'A' * 43}"
    r = http.get(forged, allow_redirects=False, timeout=30)
    assert r.status_code == 400 and "state" in r.json()["error"]["message"]
    # the real state still works once, then never again
    assert http.get(cb, allow_redirects=False, timeout=30).status_code == 200
    r = http.get(cb, allow_redirects=False, timeout=30)
    assert r.status_code == 400, r.text


def test_replayed_code_is_refused(oidc):
    http = browser(oidc)
    cb1 = to_callback(http, start(oidc))
    assert http.get(cb1, allow_redirects=False, timeout=30).status_code == 200
    # the used code under the state of a fresh login: the provider refuses it
    auth_url = start(oidc)
    state2 = parse_qs(urlparse(auth_url).query)["state"][0]
    code1 = parse_qs(urlparse(cb1).query)["code"][0]
    r = http.get(f"{cb1.split('?')[0]}?code={code1}&state={state2}", allow_redirects=False, timeout=30)
    assert r.status_code == 401 and "refused the authorization code" in r.json()["error"]["message"], r.text


def test_code_of_another_login_is_refused(oidc):
    # login 1's code (bound to login 1's PKCE challenge and nonce) presented with login 2's state
    http = browser(oidc)
    cb1 = to_callback(http, start(oidc))
    auth2 = start(oidc)
    state2 = parse_qs(urlparse(auth2).query)["state"][0]
    code1 = parse_qs(urlparse(cb1).query)["code"][0]
    r = http.get(f"{cb1.split('?')[0]}?code={code1}&state={state2}", allow_redirects=False, timeout=30)
    assert r.status_code == 401, r.text


def test_code_from_another_issuer_is_refused(oidc):
    # the authorization request of a login at `test` (provider A), played at provider B
    http = browser(oidc)
    auth_a = start(oidc)
    auth_b = oidc["b"].issuer + urlparse(auth_a).path + "?" + urlparse(auth_a).query
    cb = to_callback(http, auth_b)
    assert parse_qs(urlparse(cb).query)["iss"] == [oidc["b"].issuer]
    r = http.get(cb, allow_redirects=False, timeout=30)
    assert r.status_code == 401, r.text
    assert "Set-Cookie" not in r.headers


def test_discovery_of_another_issuer_is_refused(oidc):
    r = requests.get(f"{oidc['server'].url}/v1/auth/oidc/liar/login", verify=oidc["verify"],
                     allow_redirects=False, timeout=30)
    assert r.status_code == 502 and "discovery" in r.json()["error"]["message"], r.text


def test_login_refusals_before_the_provider(oidc):
    s = oidc["server"]
    get = lambda p: requests.get(f"{s.url}{p}", verify=oidc["verify"], allow_redirects=False, timeout=30)
    assert get("/v1/auth/oidc/nobody/login").status_code == 404
    assert get("/v1/auth/oidc/test/login?cli_redirect=https%3A%2F%2Fevil.example%2F&cli_challenge=" + "A" * 43) \
        .status_code == 400
    assert get("/v1/auth/oidc/callback").status_code == 400
    assert get("/v1/auth/oidc/callback?state=x&code=y").status_code == 400


def test_cli_login_with_the_identity_provider(oidc, tmp_path):
    s = oidc["server"]
    env = sanitizer_env()
    env.update({"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "CLOISTER_SERVER": s.url, "CLOISTER_CA": s.ca})
    env.pop("CLOISTER_TOKEN", None)
    proc = subprocess.Popen([str(CLOISTER), "login", "--idp", "test"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready
        assert proc.stderr.readline().startswith("Open this URL in a browser")
        url = proc.stderr.readline().strip()
        http = browser(oidc)
        cb = to_callback(http, url, login="bob")
        r = http.get(cb, allow_redirects=False, timeout=30)
        assert r.status_code == 302, r.text
        loopback = r.headers["Location"]
        assert loopback.startswith("http://127.0.0.1:") and "code=" in loopback
        r = requests.get(loopback, timeout=30)
        assert r.status_code == 200 and "Logged in" in r.text
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == f"logged in to {s.url} as bob\n"
    saved = json.loads((tmp_path / "cfg" / "cloister" / "session.json").read_text())
    assert s.request("GET", "/v1/whoami", token=saved["access_token"]).json()["user"] == "bob"
    # the loopback code was single use
    code = parse_qs(urlparse(loopback).query)["code"][0]
    r = s.request("POST", "/v1/auth/oidc/exchange", token="", json={"code": code, "code_verifier": "A" * 43})
    assert r.status_code == 401
    # logout revokes it and names the provider's logout page
    r = run_cli(s, "logout", config_home=tmp_path / "cfg")
    assert r.returncode == 0 and "to log out at the identity provider too, open: " + oidc["a"].issuer in r.stderr
    assert s.request("GET", "/v1/whoami", token=saved["access_token"]).status_code == 401
