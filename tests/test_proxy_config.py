"""The proxy's configuration stream (GET /v1/proxy/config) and its bootstrap
identity: who may read it, what the snapshot holds (and never holds), how
fast changes arrive, injected Secret values, resuming with ?since=."""
import base64
import json
import os
import queue
import sqlite3
import threading
import time

import pytest
import requests

from conftest import Server, free_port, manifest

STREAM = "/v1/proxy/config"
CONFIG_KINDS = ["Service", "Policy", "User", "Group", "Credential", "Session", "Enclave", "AttestationPolicy"]


class SSE:
    """A Server-Sent Events stream read on a thread: events go to a queue as
    (name, data) with data parsed from JSON, comments as (":", text); every
    raw line is kept."""

    def __init__(self, server, path=STREAM, token=None):
        tok = server.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        self.resp = requests.get(server.url + path, headers=headers, verify=server.ca, stream=True, timeout=(10, 60))
        self.events = queue.Queue()
        self.raw = []
        self.ended = threading.Event()
        if self.resp.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        name, data = None, []
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                self.raw.append(line)
                if line.startswith(":"):
                    self.events.put((":", line[1:].strip()))
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and name:
                    assert len(data) == 1, (name, data)  # one line of JSON per event
                    self.events.put((name, json.loads(data[0])))
                    name, data = None, []
        except (requests.RequestException, OSError, AttributeError):
            pass  # closed by the test
        finally:
            self.ended.set()

    def next(self, timeout=5, comments=False):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"no event within {timeout}s; raw so far: {self.raw[-10:]}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev[0] != ":" or comments:
                return ev

    def wait_for(self, predicate, timeout=5):
        """The first event for which PREDICATE(name, data) holds, and the time it took."""
        start = time.time()
        seen = []
        while True:
            left = timeout - (time.time() - start)
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; seen {[n for n, _ in seen]}")
            name, data = self.next(timeout=left)
            seen.append((name, data))
            if predicate(name, data):
                return (name, data), time.time() - start

    def raw_text(self):
        return "\n".join(self.raw)

    def close(self):
        self.resp.close()


def stream(server, path=STREAM, token=None):
    s = SSE(server, path, token)
    assert s.resp.status_code == 200, s.resp.text
    return s


def proxy_token(server):
    return (server.data_dir / "proxy" / "proxy.token").read_text().strip()


def new_token(server, user, policies=(), user_policies=()):
    """A user (with USER_POLICIES) and a credential (with POLICIES); returns its token."""
    r = server.request("POST", "/v1/apply", json={"items": [
        manifest("User", user, {"type": "workload", "policies": list(user_policies)}),
        manifest("Credential", user, {"user": user, "policies": list(policies)}),
    ]})
    assert r.status_code == 200, r.text
    r = server.request("POST", "/v1/tokens", json={"credential": user})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def keys_anywhere(value, key):
    if isinstance(value, dict):
        return (key in value) or any(keys_anywhere(v, key) for v in value.values())
    if isinstance(value, list):
        return any(keys_anywhere(v, key) for v in value)
    return False


def stored_digests(server):
    """Every token and refresh-token digest the store holds, read from its file."""
    db = sqlite3.connect(f"file:{server.data_dir / 'api' / 'store.db'}?mode=ro", uri=True)
    try:
        out = set()
        for (doc,) in db.execute("SELECT doc FROM resources WHERE kind IN ('Credential', 'Session')"):
            status = json.loads(doc).get("status", {})
            for k in ("tokenDigest", "refreshDigest"):
                if status.get(k):
                    out.add(status[k])
            out.update(status.get("previousRefreshDigests", []))
        return out
    finally:
        db.close()


def handoff_key(data):
    """The key of a `handoff` object: standard base64 of 32 bytes."""
    assert sorted(data) == ["key"]
    return base64.b64decode(data["key"], validate=True)


def login(server, token=None):
    r = requests.post(server.url + "/v1/auth/token", json={"token": token or server.token}, verify=server.ca,
                      timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_first_start_writes_a_working_proxy_token(shared_server):
    s = shared_server
    path = s.data_dir / "proxy" / "proxy.token"
    assert os.stat(path).st_mode & 0o777 == 0o600
    tok = proxy_token(s)
    assert tok.startswith("clst_") and tok != s.token
    who = s.request("GET", "/v1/whoami", token=tok).json()
    assert who["user"] == "cloister-proxy" and who["type"] == "workload" and who["credential"] == "cloister-proxy"
    user = s.request("GET", "/v1/users/cloister-proxy").json()
    assert user["spec"]["policies"] == ["cloister-proxy"]
    pol = s.request("GET", "/v1/policies/cloister-proxy").json()
    # the stream is decided by identity, not by policy: the policy grants nothing
    assert [r["condition"]["match"] for r in pol["spec"]["rules"]] == ["false"]
    for plural, doc in (("users", user), ("policies", pol)):
        doc.pop("status", None)
        # protected from every API caller, the admin included
        r = s.request("PUT", f"/v1/{plural}/{doc['metadata']['name']}", json=doc)
        assert r.status_code == 403 and "protected bootstrap object" in r.text, r.text
        # valid documents: the same under another name is accepted
        copy = {**doc, "metadata": {"name": "proxy-copy"}}
        r = s.request("POST", f"/v1/{plural}", json=copy)
        assert r.status_code == 201, r.text
        assert s.request("DELETE", f"/v1/{plural}/proxy-copy").status_code == 200
    # the credential token works directly, and exchanged for an access token
    ev = stream(s, token=tok)
    assert ev.next()[0] == "snapshot"
    ev.close()
    access = login(s, tok)["access_token"]
    ev = stream(s, token=access)
    assert ev.next()[0] == "snapshot"
    ev.close()
    # and it reads nothing else: no hidden superuser
    assert s.request("GET", "/v1/users", token=tok).status_code == 403
    assert s.request("GET", "/v1/secrets", token=tok).status_code == 403


def test_a_lost_proxy_token_is_replaced_and_the_old_one_revoked(tmp_path):
    # its own proxy listener: the module's shared server may hold the default one
    server = Server(tmp_path / "data", extra_args=["--proxy-listen", f"127.0.0.1:{free_port()}"]).start()
    try:
        old = proxy_token(server)
        admin = server.token
        server.stop()
        (server.data_dir / "proxy" / "proxy.token").unlink()
        server.start()
        new = proxy_token(server)
        assert new != old and server.token == admin
        assert os.stat(server.data_dir / "proxy" / "proxy.token").st_mode & 0o777 == 0o600
        assert server.request("GET", "/v1/whoami", token=old).status_code == 401
        assert server.request("GET", "/v1/whoami", token=new).json()["user"] == "cloister-proxy"
    finally:
        server.stop()


def test_who_may_read_the_stream(shared_server):
    s = shared_server
    r = requests.get(s.url + STREAM, verify=s.ca, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    tok = new_token(s, "no-policy")
    r = s.request("GET", STREAM, token=tok)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "watch ProxyConfig" in r.json()["error"]["message"]
    # not even the admins' allow-everything policy opens it: the proxy's identity alone
    r = s.request("GET", STREAM)
    assert r.status_code == 403 and "proxy's workload identity" in r.json()["error"]["message"], r.text
    tok = proxy_token(s)
    ev = stream(s, token=tok)
    assert ev.resp.headers["content-type"] == "text/event-stream"
    assert ev.next()[0] == "snapshot"
    ev.close()
    r = s.request("POST", STREAM, token=tok)
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert s.request("GET", "/v1/proxy/other", token=tok).status_code == 404
    assert s.request("GET", STREAM + "?since=abc", token=tok).status_code == 400
    assert s.request("GET", STREAM + "?since=-1", token=tok).status_code == 400


def test_snapshot_holds_the_configuration_and_no_digest(shared_server):
    s = shared_server
    login(s)  # a Session with refresh digests in its status
    ev = stream(s, token=proxy_token(s))
    name, snap = ev.next()
    assert name == "snapshot"
    assert isinstance(snap["revision"], int) and snap["revision"] > 0
    assert snap["issuer"] == "https://api.localhost" and snap["audience"] == "cloister"
    assert sorted(snap["objects"]) == sorted(CONFIG_KINDS)
    names = {k: {d["metadata"]["name"] for d in v} for k, v in snap["objects"].items()}
    assert {"admin", "cloister-proxy"} <= names["User"]
    assert {"cloister-admins", "cloister-proxy"} <= names["Policy"]
    assert "admins" in names["Group"]
    assert {"admin-bootstrap", "cloister-proxy"} <= names["Credential"]
    assert names["Session"]
    for kind, docs in snap["objects"].items():
        assert all(d["kind"] == kind for d in docs)
    jwks = requests.get(s.url + "/.well-known/jwks.json", verify=s.ca, timeout=30).json()
    assert snap["jwks"] == jwks and jwks["keys"]
    assert isinstance(snap["secrets"], dict)
    assert len(handoff_key(snap["handoff"])) == 32
    # a Credential's status only with what sessions are decided by; no other status
    for cred in snap["objects"]["Credential"]:
        assert set(cred.get("status", {})) <= {"userUid", "tokenGeneration"}, cred
    assert not keys_anywhere({k: v for k, v in snap["objects"].items() if k != "Credential"}, "status")
    raw = ev.raw_text()
    ev.close()
    for word in ("tokenDigest", "refreshDigest", "previousRefreshDigests"):
        assert word not in raw
    digests = stored_digests(s)
    assert digests
    for d in digests:
        assert d not in raw


def test_changes_arrive_within_a_second(shared_server):
    s = shared_server
    ev = stream(s, token=proxy_token(s))
    _, snap = ev.next()
    rev = snap["revision"]
    t0 = time.time()
    assert s.request("POST", "/v1/groups", json=manifest("Group", "streamed", {})).status_code == 201
    (_, ch), _ = ev.wait_for(lambda n, d: n == "change" and d["object"]["metadata"]["name"] == "streamed")
    assert time.time() - t0 < 1.0
    assert ch["type"] == "ADDED" and ch["object"]["kind"] == "Group" and ch["revision"] > rev
    assert sorted(ch) == ["object", "revision", "type"]

    sid = login(s)["session"]
    (_, ch), _ = ev.wait_for(lambda n, d: n == "change" and d["object"]["metadata"]["name"] == sid)
    assert ch["type"] == "ADDED" and "status" not in ch["object"]
    t0 = time.time()
    assert s.request("DELETE", f"/v1/sessions/{sid}").status_code == 200
    (_, ch), _ = ev.wait_for(lambda n, d: n == "change" and d["type"] == "DELETED"
                             and d["object"]["metadata"]["name"] == sid)
    assert time.time() - t0 < 1.0
    assert ch["object"]["kind"] == "Session" and ch["object"]["metadata"]["name"] == sid
    assert "status" not in ch["object"]

    # changes come in revision order, and a new signing key is pushed
    s.request("DELETE", "/v1/groups/streamed")
    assert s.request("POST", "/v1/auth/keys/rotate").status_code == 200
    kid = s.request("GET", "/.well-known/jwks.json").json()["keys"][0]["kid"]
    (_, jwks), _ = ev.wait_for(lambda n, d: n == "jwks")
    assert kid in [k["kid"] for k in jwks["keys"]]
    ev.close()
    revs = [json.loads(line[6:])["revision"] for line in ev.raw if line.startswith("data: {\"type\"")]
    assert revs == sorted(revs) and len(revs) >= 4
    for word in ("tokenDigest", "refreshDigest"):
        assert word not in ev.raw_text()


def test_injected_secret_values_reach_the_proxy_and_nothing_else(shared_server):
    s = shared_server
    r = s.request("POST", "/v1/apply", json={"items": [
        manifest("Secret", "wiki-upstream", {"data": {"token": "inject-me-4711", "other": "not-referenced-0815"}}),
        manifest("Secret", "unreferenced", {"data": {"v": "never-streamed-1234"}}),
        manifest("Service", "wiki-inject", {"upstream": {"url": "http://127.0.0.1:9"},
                                            "inject": {"secret": "wiki-upstream", "key": "token", "as": "bearer"}}),
    ]})
    assert r.status_code == 200, r.text
    ev = stream(s, token=proxy_token(s))
    _, snap = ev.next()
    assert snap["secrets"]["wiki-upstream/token"] == "inject-me-4711"
    assert "wiki-upstream/other" not in snap["secrets"]
    got = s.request("GET", "/v1/secrets/wiki-upstream")
    assert got.status_code == 200 and "inject-me-4711" not in got.text

    # a new value is pushed; a Service that starts injecting another one too
    t0 = time.time()
    r = s.request("PUT", "/v1/secrets/wiki-upstream",
                  json=manifest("Secret", "wiki-upstream", {"data": {"token": "rotated-4712", "other": "not-referenced-0815"}}))
    assert r.status_code == 200, r.text
    (_, sec), _ = ev.wait_for(lambda n, d: n == "secrets")
    assert time.time() - t0 < 1.0
    assert sec == {"wiki-upstream/token": "rotated-4712"}
    r = s.request("PUT", "/v1/services/wiki-inject", json=manifest(
        "Service", "wiki-inject", {"upstream": {"url": "http://127.0.0.1:9"},
                                   "inject": {"secret": "wiki-upstream", "key": "other", "as": "header",
                                              "header": "X-Api-Key"}}))
    assert r.status_code == 200, r.text
    (_, sec), _ = ev.wait_for(lambda n, d: n == "secrets")
    assert sec == {"wiki-upstream/other": "not-referenced-0815"}
    # a change of an unreferenced Secret sends nothing about it
    s.request("PUT", "/v1/secrets/unreferenced", json=manifest("Secret", "unreferenced", {"data": {"v": "still-never-5678"}}))
    assert s.request("POST", "/v1/groups", json=manifest("Group", "after-secrets", {})).status_code == 201
    ev.wait_for(lambda n, d: n == "change" and d["object"]["metadata"]["name"] == "after-secrets")
    ev.close()
    raw = ev.raw_text()
    for never in ("never-streamed-1234", "still-never-5678"):
        assert never not in raw
    assert '"kind":"Secret"' not in raw.replace(" ", "")
    s.request("DELETE", "/v1/services/wiki-inject")


def test_since_resumes_or_starts_over(shared_server):
    s = shared_server
    tok = proxy_token(s)
    ev = stream(s, token=tok)
    _, snap = ev.next()
    ev.close()
    rev = snap["revision"]
    assert s.request("POST", "/v1/groups", json=manifest("Group", "while-away", {})).status_code == 201
    ev = stream(s, STREAM + f"?since={rev}", token=tok)
    name, ch = ev.next()
    assert name == "change", (name, ch)
    assert ch["object"]["metadata"]["name"] == "while-away" and ch["revision"] > rev
    # the keys and the secrets the resumed stream starts from
    names = [ev.next()[0], ev.next()[0]]
    assert names == ["jwks", "secrets"]
    # and the handoff key, which only a snapshot carries otherwise
    name, data = ev.next()
    assert name == "handoff" and len(handoff_key(data)) == 32
    ev.close()
    assert all(not line.startswith("event: snapshot") for line in ev.raw)
    # a revision this store never had: a fresh snapshot
    ev = stream(s, STREAM + "?since=999999999", token=tok)
    name, snap2 = ev.next()
    assert name == "snapshot" and snap2["revision"] > rev
    assert "while-away" in {d["metadata"]["name"] for d in snap2["objects"]["Group"]}
    ev.close()


def test_keep_alive_comments_on_a_quiet_stream(shared_server):
    ev = stream(shared_server, token=proxy_token(shared_server))
    ev.next()
    t0 = time.time()
    while True:
        name, data = ev.next(timeout=6, comments=True)
        if name == ":":
            break
    assert data == "keep-alive" and time.time() - t0 < 5.5
    # past the caller's re-check (every 5 s) the proxy's own stream goes on: the next event
    # is another keep-alive, not an error
    name, data = ev.next(timeout=6, comments=True)
    assert (name, data) == (":", "keep-alive") and time.time() - t0 > 5, (name, data)
    ev.close()


def test_a_revoked_caller_loses_its_stream(shared_server):
    s = shared_server
    # the proxy's identity through a session; the session is revoked under the stream
    session = login(s, proxy_token(s))
    ev = stream(s, token=session["access_token"])
    assert ev.next()[0] == "snapshot"
    assert s.request("DELETE", f"/v1/sessions/{session['session']}").status_code == 200
    (_, err), took = ev.wait_for(lambda n, d: n == "error", timeout=8)
    assert err["error"]["code"] == "unauthenticated"
    assert ev.ended.wait(5)


def test_opening_a_stream_is_audited(shared_server):
    s = shared_server
    ev = stream(s, token=proxy_token(s))
    ev.next()
    ev.close()

    def entries():
        size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
        out = []
        for start in range(0, size, 1000):
            r = s.request("GET", f"/v1/audit/entries?start={start}&end={min(size, start + 1000)}")
            out += [json.loads(e["entry"]) for e in r.json()["entries"]]
        return out

    deadline = time.time() + 15
    while time.time() < deadline:
        got = [e for e in entries() if e["action"] == "proxy.config.watch"]
        if any(e["actor"].get("user") == "cloister-proxy" and e["outcome"] == "success" for e in got):
            break
        time.sleep(0.2)
    else:
        pytest.fail("no proxy.config.watch entry for cloister-proxy")


def test_the_handoff_key_is_streamed_and_kept_across_restarts(tmp_path):
    server = Server(tmp_path / "data", extra_args=["--proxy-listen", f"127.0.0.1:{free_port()}"]).start()
    path = server.data_dir / "auth" / "handoff.key"
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(path.parent).st_mode & 0o777 == 0o700
        tok = proxy_token(server)
        ev = stream(server, token=tok)
        name, snap = ev.next()
        ev.close()
        key = handoff_key(snap["handoff"])
        assert key == path.read_bytes() and len(key) == 32
        assert snap["handoff"]["key"] not in server.read_log()

        server.stop()
        server.start()
        # a proxy resuming after the restart gets the same key without a snapshot
        ev = stream(server, STREAM + f"?since={snap['revision']}", token=tok)
        (_, data), _ = ev.wait_for(lambda n, d: n == "handoff")
        ev.close()
        assert handoff_key(data) == key
        assert all(not line.startswith("event: snapshot") for line in ev.raw)
        ev = stream(server, token=tok)
        name, snap2 = ev.next()
        ev.close()
        assert name == "snapshot" and handoff_key(snap2["handoff"]) == key
        assert snap["handoff"]["key"] not in server.read_log()

        # a key others may read is refused, and the api role does not start
        server.stop()
        os.chmod(path, 0o644)
        server.start(wait=False)
        deadline = time.time() + 30
        while "refusing the browser login handoff key" not in server.read_log():
            assert time.time() < deadline, server.read_log()[-3000:]
            time.sleep(0.1)
        try:
            refused = requests.get(server.url + "/readyz", verify=server.ca, timeout=5).status_code != 200
        except requests.ConnectionError:
            refused = True
        assert refused
    finally:
        server.stop(expect_clean=False)
