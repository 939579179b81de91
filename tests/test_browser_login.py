"""Browser login through the identity-aware proxy, end to end (journey 2):
a browser without a session reaches a service host through the proxy, is
sent to the API's /v1/auth/login with its URL as rd, on to the real OpenID
provider (npm's oidc-provider, see test_oidc.py), back to the API's OIDC
callback, from there to the service host's /.cloister/callback with a
sealed handoff, and the proxy sets the service host's own session cookie.
Every redirect is followed by hand. Refusals: a replayed handoff, a handoff
presented at another host, a tampered one, and return URLs that do not
name a service host (no open redirect)."""
import hashlib
import hmac
import html
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from conftest import Server, audit_entries, free_port, manifest
from echo_upstream import EchoUpstream
from test_oidc import CLIENT_SECRET, Provider, browser, make_pki, node_modules, to_callback  # noqa: F401

DOMAIN = "localhost"
BIND_HEX = "ab" * 32  # what the proxy adds: hex SHA-256 of its login cookie
BIND = "&bind=" + BIND_HEX


def rd_url(rd):
    """The rd as the API reads it back (login_rd.url): scheme in lower case,
    the fragment dropped, "/" for an empty path."""
    scheme, rest = rd.split("://", 1)
    rest = rest.split("#", 1)[0]
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, path = rest[:cut], rest[cut:]
    return f"{scheme.lower()}://{authority}{'/' if not path.startswith('/') else ''}{path}"


def link_mac(server, rd, bind=BIND_HEX, exp=None):
    """The exp and mac the proxy adds to a login link for RD and BIND (what
    a test holding the handoff key can make; an attacker cannot):
    HMAC-SHA256 over rd, bind and exp under HKDF-SHA256(handoff key, info
    "cloister-login-link-v1")."""
    key = (server.data_dir / "auth" / "handoff.key").read_bytes()
    prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
    mac_key = hmac.new(prk, b"cloister-login-link-v1\x01", hashlib.sha256).digest()
    exp = int(time.time()) + 300 if exp is None else exp
    msg = rd_url(rd).encode() + b"\0" + bind.encode() + b"\0" + str(exp).encode()
    return f"&exp={exp}&mac={hmac.new(mac_key, msg, hashlib.sha256).hexdigest()}"


def signed(server, rd, bind=BIND_HEX):
    """The query of a login link for RD as the proxy issues it."""
    return "rd=" + quote(rd, safe="") + "&bind=" + bind + link_mac(server, rd, bind)


class Env:
    def __init__(self, server, upstream, provider, http_port, verify):
        self.s = server
        self.up = upstream
        self.idp = provider
        self.http_port = http_port
        self.verify = verify  # the cluster CA and the provider's CA
        self.login_cookie = None  # the proxy's cloister_login cookie of the login in progress

    @property
    def host(self):
        """The authority a browser sends for http://wiki.localhost:<proxy port>/."""
        return f"wiki.{DOMAIN}:{self.http_port}"

    def proxy(self, path, host=None, cookie=None, html=True):
        """A browser's GET on the proxy's plain-HTTP listener: to 127.0.0.1
        with the service host in Host (no DNS needed)."""
        h = {"Host": host or self.host}
        if html:
            h["Accept"] = "text/html,application/xhtml+xml"
        if cookie is None and path.startswith("/.cloister/callback") and self.login_cookie:
            cookie = f"cloister_login={self.login_cookie}"  # the browser that started the login
        if cookie:
            h["Cookie"] = cookie
        return requests.get(f"http://127.0.0.1:{self.http_port}{path}", headers=h, allow_redirects=False, timeout=30)

    def follow(self, url):
        """Follows a Location that names a service host, as the browser would
        (the host goes into the Host header)."""
        u = urlsplit(url)
        assert u.scheme == "http", url
        return self.proxy(u.path + ("?" + u.query if u.query else ""), host=u.netloc)

    def api(self, path_and_query):
        return requests.get(self.s.url + path_and_query, verify=self.verify, allow_redirects=False, timeout=30)


def page_message(r):
    """The reason an error page for a browser gives (the proxy answers a
    browser with HTML: docs/proxy.md "Error pages")."""
    assert r.headers["Content-Type"].startswith("text/html"), r.text
    return html.unescape(re.search(r"</h1><p>(.*?)</p>", r.text, re.S).group(1))


def start_cluster(d, https_port=None):
    """Starts an echo upstream, cloisterd in D (its proxy on a plain-HTTP
    port too, services under DOMAIN) and the OpenID provider. Returns
    (server, upstream, upstream port, provider, proxy HTTP port, the CA
    bundle of both, the manifests of the provider's client secret and
    IdentityProvider "test")."""
    up = EchoUpstream()
    up_port = up.start()
    http_port = free_port()
    s = Server(d / "data", extra_args=["--proxy-listen", f"127.0.0.1:{https_port or free_port()}",
                                       "--proxy-http-listen", f"127.0.0.1:{http_port}", "--domain", DOMAIN]).start()
    ca = make_pki(d)
    provider = Provider(d, "a", s.port)
    bundle = d / "bundle.pem"
    bundle.write_text(Path(s.ca).read_text().strip() + "\n" + ca.read_text())
    idp = [manifest("Secret", "oidc-client", {"data": {"secret": CLIENT_SECRET}}),
           manifest("IdentityProvider", "test", {
               "type": "oidc", "issuer": provider.issuer, "clientId": "cloister",
               "clientSecret": {"secret": "oidc-client", "key": "secret"}, "scopes": ["openid", "email", "groups"],
               "createUsers": True, "ca": ca.read_text()})]
    return s, up, up_port, provider, http_port, str(bundle), idp


@pytest.fixture(scope="module")
def env(node_modules, tmp_path_factory):  # noqa: F811
    s, up, up_port, provider, http_port, bundle, idp = start_cluster(tmp_path_factory.mktemp("browser-login"))
    r = s.request("POST", "/v1/apply", json={"items": idp + [
        manifest("Group", "devs", {}),
        manifest("Policy", "devs-read", {"rules": [
            {"effect": "allow", "priority": 0,
             "condition": {"match": '"devs" in ctx.user.groups && ctx.request.http.method in ["GET", "HEAD"]'}}]}),
        manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["devs-read"]}),
        manifest("Service", "vault", {"upstream": {"url": f"http://127.0.0.1:{up_port}"}, "policies": ["devs-read"],
                                      "hosts": ["vault.internal.example"]}),
    ]})
    assert r.status_code == 200, r.text
    e = Env(s, up, provider, http_port, bundle)
    # the proxy has the configuration (and the handoff key) once it routes wiki
    deadline = time.time() + 15
    while e.proxy("/", html=False).status_code != 401:
        assert time.time() < deadline, "the proxy never served wiki"
        time.sleep(0.1)
    yield e
    provider.stop()
    s.stop()
    up.stop()


def login_to_handoff(e, path="/docs/page?x=1&y=%20z", host=None):
    """Plays the browser from an unauthenticated GET of PATH on the service
    host to the API's answer at the end of the login; returns that answer
    (302 to the service host's /.cloister/callback)."""
    r = e.proxy(path, host=host)
    assert r.status_code == 302, r.text
    login = r.headers["Location"]
    assert login.startswith(f"{e.s.url}/v1/auth/login?rd="), login
    query = parse_qs(urlsplit(login).query)
    assert query["rd"] == [f"http://{host or e.host}{path}"]
    # the login is bound to this browser: a secret cookie, only its hash in the URL
    state = set_cookies(r)["cloister_login"]
    assert query["bind"] == [hashlib.sha256(state["value"].encode()).hexdigest()]
    assert state["path"] == "/.cloister/" and state["httponly"] and state["samesite"] == "Lax"
    # the link is the proxy's: a mac over rd, bind and exp, the API checks it
    assert set(query) == {"rd", "bind", "exp", "mac"} and len(query["mac"][0]) == 64, login
    assert 0 < int(query["exp"][0]) - time.time() <= 600
    e.login_cookie = state["value"]
    return login_at_api(e, login[len(e.s.url):])


def login_at_api(e, path_and_query, login="alice"):
    """Plays the browser from the API's login link PATH_AND_QUERY through the
    provider (as user LOGIN) to the API's answer at the end of the login."""
    r = e.api(path_and_query)
    assert r.status_code == 302, r.text
    auth_url = r.headers["Location"]
    assert auth_url.startswith(e.idp.issuer + "/"), auth_url
    http = browser({"verify": e.verify})
    cb = to_callback(http, auth_url, login)
    assert cb.startswith(f"{e.s.url}/v1/auth/oidc/callback?"), cb
    r = http.get(cb, allow_redirects=False, verify=e.verify, timeout=30)
    assert r.status_code == 302, r.text
    assert "Set-Cookie" not in r.headers  # the API host gets no cookie: only the service host sets one
    return r


def handoff_url(r):
    return r.headers["Location"]


def set_cookies(r):
    """The Set-Cookie headers of R by name: {value, path, httponly, samesite, raw}."""
    out = {}
    for raw in r.raw.headers.getlist("Set-Cookie"):
        parts = [p.strip() for p in raw.split(";")]
        name, value = parts[0].split("=", 1)
        attrs = {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else True) for p in parts[1:]}
        out[name] = {"value": value, "path": attrs.get("path"), "httponly": attrs.get("httponly", False),
                     "samesite": attrs.get("samesite"), "raw": raw}
    return out


def cookie_of(r):
    c = set_cookies(r)["cloister_session"]
    assert c["value"]
    assert set_cookies(r)["cloister_login"]["value"] == ""  # the login's cookie is cleared
    return c["raw"], c["value"]


def test_browser_logs_in_through_the_proxy(env):
    e = env
    e.up.clear()
    path = "/docs/page?x=1&y=%20z"
    r = login_to_handoff(e, path)
    loc = handoff_url(r)
    assert loc.startswith(f"http://{e.host}/.cloister/callback?handoff="), loc
    assert r.json()["user"] == "alice" and r.json()["service"] == "wiki"
    h = parse_qs(urlsplit(loc).query)["handoff"][0]
    assert "=" not in h and "+" not in h and "/" not in h  # base64url, no padding

    # the proxy opens the handoff, sets its own cookie and sends the browser on
    r = e.follow(loc)
    assert r.status_code == 302, r.text
    assert r.headers["Location"] == path
    set_cookie, token = cookie_of(r)
    attrs = [a.strip() for a in set_cookie.split(";")[1:]]
    assert "HttpOnly" in attrs and "SameSite=Lax" in attrs and "Path=/" in attrs
    assert "Secure" not in attrs  # plain HTTP listener; Secure over HTTPS
    assert not any(a.lower().startswith("domain=") for a in attrs)  # host-only: this service host alone
    assert e.up.requests == []

    # the cookie is a session: the upstream sees the OIDC user and never the cookie
    r = e.proxy(path, cookie=f"theme=dark; cloister_session={token}")
    assert r.status_code == 200, r.text
    rec = [x for x in e.up.requests if "ambiguous" not in x]
    assert len(rec) == 1
    headers = rec[0]["headers"]
    values = lambda name: [v for k, v in headers if k.lower() == name]  # noqa: E731
    assert rec[0]["target"] == path
    assert values("x-cloister-user") == ["alice"]
    assert values("x-cloister-email") == ["alice@example.com"]
    assert values("cookie") == ["theme=dark"]
    assert token not in str(rec[0])
    # it is an OIDC session of the API, usable as the access token it is
    who = e.s.request("GET", "/v1/whoami", token=token).json()
    assert who["user"] == "alice"

    # audited as auth.handoff, without the token; never logged
    deadline = time.time() + 15
    while not (got := [x for x in audit_entries(e.s, "auth.handoff") if x.get("actor", {}).get("user") == "alice"]):
        assert time.time() < deadline, "no auth.handoff audit entry"
        time.sleep(0.3)
    assert got[-1]["outcome"] == "success"
    assert token not in json.dumps(got) and h not in json.dumps(got)
    assert token not in e.s.read_log()


def test_replayed_handoff_is_refused(env):
    e = env
    loc = handoff_url(login_to_handoff(e, "/replay"))
    r = e.follow(loc)
    assert r.status_code == 302 and "cloister_session" in set_cookies(r)
    r = e.follow(loc)
    assert r.status_code == 400, r.text
    assert "Set-Cookie" not in r.headers
    assert "already used" in page_message(r)


def test_handoff_for_another_host_is_refused(env):
    e = env
    loc = handoff_url(login_to_handoff(e, "/elsewhere"))
    u = urlsplit(loc)
    target = f"{u.path}?{u.query}"
    for other in (f"vault.{DOMAIN}:{e.http_port}", f"vault.internal.example:{e.http_port}",
                  f"wiki.{DOMAIN}:1", f"wiki.{DOMAIN}"):
        r = e.proxy(target, host=other)
        assert r.status_code == 400, (other, r.text)
        assert "Set-Cookie" not in r.headers
        assert "another host" in page_message(r)
    # refused there, it was not spent: the host it was sealed for still takes it
    r = e.proxy(target)
    assert r.status_code == 302 and r.headers["Location"] == "/elsewhere"


def test_tampered_handoff_is_refused(env):
    e = env
    loc = handoff_url(login_to_handoff(e, "/tampered"))
    u = urlsplit(loc)
    h = parse_qs(u.query)["handoff"][0]
    for i in (0, 5, len(h) // 2, len(h) - 10):
        flipped = h[:i] + ("B" if h[i] == "A" else "A") + h[i + 1:]
        r = e.proxy(f"{u.path}?handoff={flipped}")
        assert r.status_code == 400, (i, r.text)
        assert "Set-Cookie" not in r.headers
    for bad in ("", "handoff=", "handoff=" + "A" * 100, "handoff=" + h[:-1]):
        r = e.proxy(f"{u.path}?{bad}")
        assert r.status_code == 400 and "Set-Cookie" not in r.headers, (bad, r.text)
    # the untouched one still works
    r = e.follow(loc)
    assert r.status_code == 302 and r.headers["Location"] == "/tampered"


def test_login_at_an_extra_host_of_a_service(env):
    e = env
    host = f"vault.internal.example:{e.http_port}"
    loc = handoff_url(login_to_handoff(e, "/v", host=host))
    assert loc.startswith(f"http://{host}/.cloister/callback?handoff=")
    r = e.follow(loc)
    assert r.status_code == 302 and r.headers["Location"] == "/v"
    _, token = cookie_of(r)
    r = e.proxy("/v", host=host, cookie=f"cloister_session={token}")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("rd,word", [
    ("https://evil.example/", "evil.example"),
    ("https://wiki.localhost.evil.example/", "wiki.localhost.evil.example"),
    ("https://wiki.localhost@evil.example/", "user"),
    ("https://evil.example\\@wiki.localhost/", "backslash"),
    ("http://wiki.localhost//evil.example/", "//"),
    ("/relative", "absolute"),
    ("javascript:alert(1)//wiki.localhost/", "absolute"),
    ("ftp://wiki.localhost/", "absolute"),
    ("https://[::1]/", "DNS name"),
    ("https://wiki.localhost/a\r\nSet-Cookie: x=y", "printable"),
    ("https://wiki.localhost/" + "a" * 3000, "2048"),
])
def test_return_urls_off_the_service_hosts_are_refused(env, rd, word):
    e = env
    for path in ("/v1/auth/login", "/v1/auth/oidc/test/login"):
        r = e.api(f"{path}?rd={quote(rd, safe='')}")
        assert r.status_code == 400, (path, rd, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid" and "rd" in err["message"] and word in err["message"], err
        assert "Location" not in r.headers


def test_return_url_checks(env):
    e = env
    # host case and port do not matter; the path and query are kept
    r = e.api("/v1/auth/login?" + signed(e.s, "HTTPS://WIKI.LOCALHOST:8443/x?y=1"))
    assert r.status_code == 302 and r.headers["Location"].startswith(e.idp.issuer)
    assert e.api("/v1/auth/login?rd=%zz").status_code == 400
    # a service's extra host, and the login of a named provider
    r = e.api("/v1/auth/oidc/test/login?" + signed(e.s, "https://vault.internal.example/"))
    assert r.status_code == 302 and r.headers["Location"].startswith(e.idp.issuer)
    # rd is a browser's; a CLI login has none
    r = e.api("/v1/auth/oidc/test/login?" + signed(e.s, "https://wiki.localhost/") +
              "&cli_redirect=" + quote("http://127.0.0.1:9/cb", safe="") + "&cli_challenge=" + "A" * 43)
    assert r.status_code == 400 and "cli_redirect" in r.json()["error"]["message"]
    assert requests.post(e.s.url + "/v1/auth/login", verify=e.verify, timeout=30).status_code == 405
    assert e.api("/v1/auth/loginx").status_code == 404


def test_several_providers_get_a_page_to_choose(env):
    e = env
    ca = (e.s.data_dir.parent / "idp-ca.pem").read_text()
    r = e.s.request("POST", "/v1/apply", json={"items": [manifest("IdentityProvider", "second", {
        "type": "oidc", "issuer": e.idp.issuer, "clientId": "cloister",
        "clientSecret": {"secret": "oidc-client", "key": "secret"}, "ca": ca})]})
    assert r.status_code == 200, r.text
    try:
        rd = "http://wiki.localhost/p?q=<b>&r=\"s\""
        link = signed(e.s, rd)
        r = e.api("/v1/auth/login?" + link)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Cache-Control"] == "no-store"
        assert "<b>" not in r.text and '"s"' not in r.text
        for idp in ("second", "test"):
            assert f'href="/v1/auth/oidc/{idp}/login?rd=' in r.text
        hrefs = [html.unescape(x.split('"')[0]) for x in r.text.split('href="')[1:]]
        assert len(hrefs) == 2
        for href in hrefs:
            assert parse_qs(urlsplit(href).query)["rd"] == [rd], href
            assert "&" + "&".join(urlsplit(href).query.split("&")[1:]) == "&" + link.split("&", 1)[1], href
            # each link starts that provider's login with the same rd
            got = e.api(href)
            assert got.status_code == 302 and got.headers["Location"].startswith(e.idp.issuer)
        # the page lists providers for a bad rd neither
        assert e.api("/v1/auth/login?rd=" + quote("https://evil.example/", safe="")).status_code == 400
    finally:
        e.s.request("DELETE", "/v1/identityproviders/second")


def test_no_provider_is_a_404(server):
    s = server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Service", "wiki", {"upstream": {"url": "http://127.0.0.1:9"}})]})
    assert r.status_code == 200, r.text
    r = requests.get(s.url + "/v1/auth/login?" + signed(s, "https://wiki.localhost:8443/"), verify=s.ca,
                     allow_redirects=False, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"] == {"code": "not_found", "message":
                                 "no identity provider is configured; API clients send a bearer token"}
    # the handoff key: 32 bytes, mode 0600 in the 0700 auth dir
    key = s.data_dir / "auth" / "handoff.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    assert (s.data_dir / "auth").stat().st_mode & 0o777 == 0o700


def test_handoff_only_finishes_in_the_browser_that_started_the_login(env):
    """Login CSRF: an attacker who logs in himself and sends a victim his
    handoff URL gets nothing: the handoff needs the login cookie of the
    browser that started the login."""
    e = env
    loc = handoff_url(login_to_handoff(e, "/mine"))
    u = urlsplit(loc)
    target = f"{u.path}?{u.query}"
    other_browser = "cloister_login=" + "0" * 32
    for cookie in ("theme=dark", other_browser, "cloister_login=" + e.login_cookie[:-1] + "x"):
        r = e.proxy(target, cookie=cookie)
        assert r.status_code == 400, (cookie, r.text)
        assert "another browser" in page_message(r)
        assert "cloister_session" not in set_cookies(r)
    r = e.follow(loc)  # the browser that started it still finishes it
    assert r.status_code == 302 and r.headers["Location"] == "/mine"
    # a login at the API with rd but without the browser binding is refused
    rd = quote(f"http://{e.host}/x", safe="")
    r = e.api(f"/v1/auth/login?rd={rd}")
    assert r.status_code == 400 and "bind" in r.json()["error"]["message"]
