"""The portal (issue 18) in Debian's Chromium, driven by python3-selenium and chromium-driver: one cloisterd
with its proxy, a real OpenID provider (npm's oidc-provider) and a workspace whose datasets alice and bob
uploaded with the CLI. alice and bob log in through the proxy's browser login (the provider's login played
as in test_browser_login.py) and each browser gets its own cloister_session cookie for portal.localhost.

Shown: the app's files come with the strict CSP and their headers, the API is reached through the portal only
with the CSRF header from the portal's origin; alice sees her services and not the admins'; a policy change
removes a tile within 2 s (the page follows /v1/me/services?watch=1); the policy check explains a denial;
alice and bob make keys in their browsers (WebCrypto Ed25519 and X25519, non-extractable, in IndexedDB),
register them, alice proposes a job, both approve it with signatures made in the browser, and alice runs it
to success; the bell counts the approval request; the audit page verifies the checkpoint with WebCrypto;
revoking the browser's own session sends its next request to login. No page logs a console error or a CSP
violation (an inline script injected on purpose is refused, to show the listener works). A screenshot of
every page is kept in <build>/test-logs/portal/ (CLOISTER_BUILD's), or in the test's tmp_path without one."""
import base64
import gzip
import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from conftest import manifest, ok, run_cli
from test_browser_login import Env, cookie_of, login_at_api, set_cookies, start_cluster
from test_oidc import node_modules  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver", reason="python3-selenium is needed (scripts/debian-packages.txt)")
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CSV_A = "id,city,age\n1,Lyon,30\n2,Paris,41\n3,Lyon,52\n"
CSV_B = "patient,cost\n1,10\n2,5\n3,7\n1,3\n"
QUERY = "SELECT p.city, sum(v.cost) AS cost FROM patients p JOIN visits v ON v.patient = p.id GROUP BY p.city"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# CDP-injected before any page script: records CSP violations and console errors for the test to read
WATCH = """
window.__problems = [];
document.addEventListener('securitypolicyviolation',
  e => window.__problems.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('error', e => window.__problems.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__problems.push('unhandled: ' + e.reason));
"""


def artifacts_dir(tmp_path_factory):
    build = os.environ.get("CLOISTER_BUILD")
    d = Path(build) / "test-logs" / "portal" if build else tmp_path_factory.mktemp("portal-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def portal_dist():
    build = os.environ.get("CLOISTER_BUILD")
    d = Path(build) / "portal" if build else None
    if not d or not (d / "index.html").exists():
        pytest.skip("the portal is not built (meson builds <build>/portal when node and npm are present)")
    return d


class Portal:
    """The cluster: the server, the proxy's plain-HTTP port, the CLI homes, and the login helper."""

    def __init__(self, env, d):
        self.e = env
        self.s = env.s
        self.d = d
        self.host = f"portal.localhost:{env.http_port}"
        self.url = f"http://{self.host}"

    def cli(self, user, *args):
        return run_cli(self.s, *args, config_home=self.d / f"{user}-config")

    def login(self, user):
        """A browser login as USER at the portal (the provider's form played as test_browser_login does);
        returns the cloister_session cookie value the proxy set for portal.localhost."""
        r = self.e.proxy("/", host=self.host)
        assert r.status_code == 302, r.text
        self.e.login_cookie = set_cookies(r)["cloister_login"]["value"]
        r = login_at_api(self.e, r.headers["Location"][len(self.s.url):], login=user)
        r = self.e.follow(r.headers["Location"])
        assert r.status_code == 302, r.text
        return cookie_of(r)[1]


@pytest.fixture(scope="module")
def cluster(node_modules, tmp_path_factory):  # noqa: F811
    portal_dist()
    d = tmp_path_factory.mktemp("portal")
    s, up, up_port, provider, http_port, bundle, idp = start_cluster(d)
    upstream = {"url": f"http://127.0.0.1:{up_port}"}
    allow = lambda name, cond: manifest("Policy", name, {"rules": [  # noqa: E731
        {"name": name, "effect": "allow", "priority": 0, "condition": {"match": cond}}]})
    docs = idp + [
        manifest("Group", "devs", {"policies": ["audit-readers", "enclave-readers"]}),
        manifest("Group", "admins-tools", {}),
        allow("signed-in", "true"),
        allow("devs-read", '"devs" in ctx.user.groups'),
        allow("tools-only", '"admins-tools" in ctx.user.groups'),
        allow("audit-readers", 'ctx.request.api.kind == "AuditLog" && ctx.request.api.verb == "get"'),
        allow("enclave-readers", 'ctx.request.api.kind == "Enclave" && ctx.request.api.verb in ["get", "list"]'),
        manifest("Service", "portal", {"upstream": {"portal": True}, "policies": ["signed-in"]}),
        manifest("Service", "wiki", {"upstream": upstream, "policies": ["devs-read"]}),
        manifest("Service", "docs", {"upstream": upstream, "policies": ["devs-read"]}),
        manifest("Service", "grafana", {"upstream": upstream, "policies": ["tools-only"]}),
    ]
    for u in ("alice", "bob"):
        docs += [manifest("User", u, {"type": "human", "email": f"{u}@example.com", "groups": ["devs"]}),
                 manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    p = Portal(Env(s, up, provider, http_port, bundle), d)
    # the datasets, uploaded with the CLI (each encrypted to the workspace key and its owner)
    for u in ("alice", "bob"):
        token = s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"}).json()["token"]
        for args in (("login", "--token", token), ("keys", "init"), ("keys", "register")):
            ok(p.cli(u, *args))
    ok(run_cli(s, "workspace", "create", "cohort", "--member", "alice", "--member", "bob",
               env_extra={"CLOISTER_TOKEN": s.token}, config_home=d / "admin-config"))
    for owner, name, text in (("alice", "patients", CSV_A), ("bob", "visits", CSV_B)):
        (d / f"{name}.csv").write_text(text)
        ok(p.cli(owner, "dataset", "upload", name, "--workspace", "cohort", "--file", str(d / f"{name}.csv")))
    deadline = time.time() + 15
    while p.e.proxy("/", host=p.host, html=False).status_code != 401:
        assert time.time() < deadline, "the proxy never served the portal"
        time.sleep(0.1)
    yield p
    provider.stop()
    s.stop()
    up.stop()


class Browser:
    """One Chromium (its own profile: its own cookies and IndexedDB) signed in as a user."""

    def __init__(self, portal, user, shots, profile):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  f"--user-data-dir={profile}", "--window-size=1280,900", "--no-first-run"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.d = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=opts)
        self.p = portal
        self.user = user
        self.shots = shots
        self.d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        self.cookie = portal.login(user)
        self.d.execute_cdp_cmd("Network.enable", {})
        self.d.execute_cdp_cmd("Network.setCookie", {"name": "cloister_session", "value": self.cookie,
                                                     "domain": "portal.localhost", "path": "/", "httpOnly": True,
                                                     "sameSite": "Lax"})

    def go(self, page):
        self.d.get(f"{self.p.url}/#/{page}")
        self.wait(lambda: self.d.find_elements(By.CSS_SELECTOR, f'main[data-page="{page.split("/")[0]}"]'))

    def wait(self, cond, timeout=10, what="the page"):
        deadline = time.time() + timeout
        while True:
            try:
                v = cond()
            except StaleElementReferenceException:  # the page re-rendered under the condition: look again
                v = None
            if v:
                return v
            assert time.time() < deadline, f"{what} did not come within {timeout}s ({self.user}):\n{self.text()}"
            time.sleep(0.05)

    def css(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def shot(self, name):
        self.d.save_screenshot(str(self.shots / f"{self.user}-{name}.png"))

    def problems(self):
        """Console errors and CSP violations since the last call (both logs drained)."""
        found = [f"{e['level']}: {e['message']}" for e in self.d.get_log("browser") if e["level"] == "SEVERE"]
        found += self.d.execute_script("const p = window.__problems || []; window.__problems = []; return p;")
        return found

    def fill(self, name, value):
        el = self.d.find_element(By.CSS_SELECTOR, f'[name="{name}"]')
        el.clear()
        el.send_keys(value)

    def quit(self):
        self.d.quit()


@pytest.fixture(scope="module")
def browsers(cluster, tmp_path_factory):
    shots = artifacts_dir(tmp_path_factory)
    made = {}
    try:
        for u in ("alice", "bob"):
            made[u] = Browser(cluster, u, shots, tmp_path_factory.mktemp(f"chromium-{u}"))
        yield made
    finally:
        for b in made.values():
            b.quit()


def test_the_app_is_built_small_and_served_with_its_security_headers(cluster):
    js = (portal_dist() / "app.js").read_bytes()
    size = len(gzip.compress(js, 9))
    print(f"\nportal app.js: {len(js)} bytes, {size} bytes gzipped ({size / 1024:.1f} KiB of the 100 KiB budget)")
    assert size <= 100 * 1024
    cookie = cluster.login("alice")
    for path, media in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css")):
        r = requests.get(f"http://127.0.0.1:{cluster.e.http_port}{path}", timeout=10,
                         headers={"Host": cluster.host, "Cookie": f"cloister_session={cookie}"})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(media), (path, r.status_code, r.text)
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["X-Frame-Options"] == "DENY"
    index = requests.get(f"http://127.0.0.1:{cluster.e.http_port}/", timeout=10,
                         headers={"Host": cluster.host, "Cookie": f"cloister_session={cookie}"}).text
    assert "<script" in index and "<script>" not in index and "style=" not in index  # no inline script or style

    def call(path, **headers):
        return requests.get(f"http://127.0.0.1:{cluster.e.http_port}{path}", timeout=10,
                            headers={"Host": cluster.host, "Cookie": f"cloister_session={cookie}", **headers})
    # the API through the portal: as alice, only with the CSRF header and from the portal's own origin
    r = call("/v1/whoami", **{"x-cloister-csrf": "1", "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and r.json()["user"] == "alice", r.text
    assert call("/v1/whoami").status_code == 403
    assert call("/v1/whoami", **{"x-cloister-csrf": "1", "Sec-Fetch-Site": "same-site"}).status_code == 403
    # what policy lets alice reach, and not the admins' tools
    names = [s["name"] for s in call("/v1/me/services", **{"x-cloister-csrf": "1"}).json()["items"]]
    assert names == ["docs", "portal", "wiki"], names
    # a page that does not exist, a path that escapes: 404; the app's files only by GET
    assert call("/../etc/passwd").status_code in (400, 404)
    assert call("/.hidden").status_code == 404
    assert requests.post(f"http://127.0.0.1:{cluster.e.http_port}/", timeout=10,
                         headers={"Host": cluster.host, "Cookie": f"cloister_session={cookie}"}).status_code == 405


def test_services_follow_policy_and_the_check_explains_a_denial(cluster, browsers):
    a = browsers["alice"]
    a.go("services")
    a.wait(lambda: len(a.css(".tile")) == 2, what="alice's tiles")
    tiles = {t.get_attribute("data-service"): t.text for t in a.css(".tile")}
    assert set(tiles) == {"wiki", "docs"}, tiles  # not grafana (admins' tools), not the portal itself
    assert f"http://wiki.localhost:{cluster.e.http_port}/" in tiles["wiki"]
    assert "curl -H \"Authorization: Bearer $(cloister token access)\"" in tiles["wiki"]
    assert "cloister connect wiki" in tiles["wiki"]
    a.shot("services")
    # a policy change: wiki no longer open to devs; its tile goes within 2 s, without a reload
    a.d.execute_script("window.__sameDocument = true")
    svc = cluster.s.request("GET", "/v1/services/wiki").json()
    svc["spec"]["policies"] = ["tools-only"]
    changed = time.time()
    assert cluster.s.request("PUT", "/v1/services/wiki", json=svc).status_code == 200
    a.wait(lambda: [t.get_attribute("data-service") for t in a.css(".tile")] == ["docs"], timeout=2,
           what="the tile's removal")
    print(f"\nwiki's tile removed {time.time() - changed:.2f}s after the policy change")
    assert a.d.execute_script("return window.__sameDocument") is True  # followed a stream, not reloaded
    # why was I denied: the check names the default deny for grafana
    a.go("why")
    a.fill("service", "grafana")
    a.d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    a.wait(lambda: a.css(".decision .verdict"))
    assert a.css(".decision .verdict")[0].text == "deny"
    assert "default deny" in a.text()
    a.shot("why")
    assert a.problems() == []


def test_the_csp_refuses_an_inline_script(cluster, browsers):
    a = browsers["alice"]
    a.go("services")
    a.d.execute_script("const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
                       "document.body.append(s);")
    a.wait(lambda: a.d.execute_script("return (window.__problems || []).length"), what="a CSP violation")
    assert a.d.execute_script("return window.__inline") is None
    assert any("CSP violation: script-src" in p for p in a.problems())


def test_two_browsers_propose_approve_and_run_a_job(cluster, browsers):
    a, b = browsers["alice"], browsers["bob"]
    for x in (a, b):  # keys made in the browser; only the public halves reach the server
        x.go("keys")
        x.css(".make-keys")[0].click()
        x.wait(lambda: x.css(".browser-keys") and x.css(".browser-keys")[0].text == "registered", what="keys")
        keys = cluster.s.request("GET", f"/v1/users/{x.user}/keys").json()["publicKeys"]
        assert len(base64.b64decode(keys["approval"])) == 32 and keys["recipient"].startswith("age1")
        extractable = x.d.execute_async_script("""
            const [user, done] = arguments;
            const open = indexedDB.open('cloister-portal', 1);
            open.onsuccess = () => { const g = open.result.transaction('keys').objectStore('keys').get(user);
              g.onsuccess = () => done([g.result.approval.privateKey.extractable, g.result.recipient.privateKey.extractable,
                                        g.result.approval.privateKey.algorithm.name]); };""", x.user)
        assert extractable == [False, False, "Ed25519"]
        x.shot("keys")
    b.go("notifications")  # bob reads what he has (the datasets added): the bell follows
    b.wait(lambda: b.css(".notifications li"), what="bob's notifications")
    b.css(".read-all")[0].click()
    b.wait(lambda: b.css(".bell .unread")[0].text == "0", what="bob's notifications read")
    a.go("workspaces")
    a.wait(lambda: a.css('[data-dataset="visits"]'))
    a.shot("workspaces")
    a.go("jobs")
    for name, value in (("name", "by-city"), ("workspace", "cohort"), ("query", QUERY), ("inputs", "patients visits"),
                        ("recipients", "alice bob")):
        a.fill(name, value)
    a.d.find_element(By.CSS_SELECTOR, ".propose button[type=submit]").click()
    a.wait(lambda: a.css('.job[data-job="by-city"] .digest') and a.css(".digest")[0].text, what="the proposed job")
    job = cluster.s.request("GET", "/v1/jobs/by-city").json()
    assert a.css(".digest")[0].text == job["status"]["digest"]
    assert a.css(".query")[0].text == QUERY
    # bob's bell: the approval request, with a deep link to the job
    b.wait(lambda: b.css(".bell .unread")[0].text == "1", what="bob's notification")
    b.wait(lambda: b.css(".notifications .unread a"))
    link = b.css(".notifications .unread a")[0]
    assert "job.approval-requested" in link.text and link.get_attribute("href").endswith("#/jobs/by-city")
    b.shot("notifications")
    link.click()
    b.wait(lambda: b.css('.job[data-job="by-city"]'), what="the deep link")
    b.wait(lambda: b.css(".bell .unread")[0].text == "0", what="the notification read")
    for x in (a, b):
        x.go("jobs/by-city")
        x.wait(lambda: x.css(".approve"))
        x.css(".approve")[0].click()
        x.wait(lambda: x.user not in cluster.s.request("GET", "/v1/jobs/by-city").json()["status"].get(
            "missingApprovers", [x.user]), what="the approval")
    job = cluster.s.request("GET", "/v1/jobs/by-city").json()
    assert job["status"]["state"] == "approved", job["status"]
    # the signatures were made by the browsers' registered keys (the server verified them; check again here)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    msg = f"cloister job approval v1\n{job['status']['digest']}\n".encode()
    for ap in job["status"]["approvals"]:
        pub = cluster.s.request("GET", f"/v1/users/{ap['user']}/keys").json()["publicKeys"]["approval"]
        Ed25519PublicKey.from_public_bytes(base64.b64decode(pub)).verify(base64.b64decode(ap["signature"]), msg)
    a.go("jobs/by-city")
    a.wait(lambda: a.css(".run"))
    a.css(".run")[0].click()
    deadline = time.time() + 60
    while True:
        state = cluster.s.request("GET", "/v1/jobs/by-city").json()["status"].get("state")
        if state in ("succeeded", "failed"):
            break
        assert time.time() < deadline, f"the run did not end ({state})"
        time.sleep(0.2)
    assert state == "succeeded", cluster.s.request("GET", "/v1/jobs/by-city").json()["status"]
    a.css(".refresh")[0].click()
    a.wait(lambda: a.css('.runs [data-state="succeeded"]'), what="the run on the page")
    a.shot("job")
    assert a.problems() == [] and b.problems() == []


def test_a_tampered_digest_input_is_refused_in_the_browser(cluster, browsers):
    """The browser recomputes the digest input itself: a recipient whose registered key changed after the
    proposal is not what was proposed, and the browser refuses to sign."""
    a = browsers["alice"]
    ok(cluster.cli("bob", "keys", "register"))  # bob's CLI key replaces his browser's recipient
    try:
        a.go("jobs/by-city")
        a.wait(lambda: a.css(".approve"))
        a.css(".approve")[0].click()
        a.wait(lambda: a.css(".job .error"), what="the refusal")
        assert "refusing to sign: the digest input's recipients" in a.css(".job .error")[0].text
    finally:
        b = browsers["bob"]
        b.go("keys")
        b.css(".make-keys")[0].click()
        b.wait(lambda: b.css(".browser-keys")[0].text == "registered")
    assert a.problems() == []


def test_an_owner_rejects_a_job_in_the_browser(cluster, browsers):
    a, b = browsers["alice"], browsers["bob"]
    a.go("jobs")
    for name, value in (("name", "by-age"), ("workspace", "cohort"), ("query", "SELECT age FROM patients"),
                        ("inputs", "patients visits")):
        a.fill(name, value)
    a.d.find_element(By.CSS_SELECTOR, ".propose button[type=submit]").click()
    a.wait(lambda: a.css('.job[data-job="by-age"] .digest'), what="the proposed job")
    b.go("jobs/by-age")
    b.wait(lambda: b.css(".reject"))
    b.fill("reason", "ages alone are too identifying")
    b.css(".reject")[0].click()
    b.wait(lambda: b.css('.job[data-state="rejected"]'), what="the rejection")
    status = cluster.s.request("GET", "/v1/jobs/by-age").json()["status"]
    assert status["state"] == "rejected", status
    assert "ages alone are too identifying" in json.dumps(status["rejections"])
    b.shot("job-rejected")
    assert a.problems() == [] and b.problems() == []


def test_audit_page_verifies_the_checkpoint_and_enclaves_list(cluster, browsers):
    a = browsers["alice"]
    a.go("audit")
    a.wait(lambda: a.css(".checkpoint.verified"), what="the verified checkpoint")
    key = (cluster.s.data_dir / "audit.pub").read_text().strip()
    keyid = key.split("+")[1]
    assert f"key {keyid}" in a.css(".checkpoint")[0].text
    assert a.css(".entries li")
    a.shot("audit")
    a.go("enclaves")
    a.wait(lambda: a.css("table") or a.css(".error"))
    a.shot("enclaves")
    a.go("sessions")
    a.wait(lambda: a.css("[data-session]"))
    a.shot("sessions")
    assert a.problems() == []


def test_revoking_the_browsers_session_sends_it_to_login(cluster, browsers):
    a = browsers["alice"]
    sid = json.loads(base64.urlsafe_b64decode(a.cookie.split(".")[1] + "=="))["sid"]
    a.go("sessions")
    a.wait(lambda: a.css(f'[data-session="{sid}"] .revoke'), what="the browser's own session")
    a.css(f'[data-session="{sid}"] .revoke')[0].click()
    # the next request is a 401; the app reloads and the proxy sends the browser to log in (a request for
    # the API's login link with the portal as rd; whatever the browser then makes of the test CA's certificate)
    login = f"{cluster.s.url}/v1/auth/login?"
    sent = []

    def sent_to_login():
        for entry in a.d.get_log("performance"):
            m = json.loads(entry["message"])["message"]
            if m["method"] == "Network.requestWillBeSent":
                sent.append(m["params"]["request"]["url"])
            elif m["method"] == "Network.responseReceived":
                sent.append(f'{m["params"]["response"]["status"]} {m["params"]["response"]["url"]}')
        return any(u.startswith(login) and parse_qs(urlsplit(u).query).get("rd") == [f"{cluster.url}/"] for u in sent)
    try:
        a.wait(sent_to_login, what="the login")
    except AssertionError as e:
        raise AssertionError(f"{e}\nrequests: {sent[-30:]}\nat: {a.d.current_url}") from None
