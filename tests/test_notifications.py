"""Notifications (issue 17): a dataset upload notifies the other members of
its workspace; the watch stream delivers a new one within a second; read
marks; no user sees or marks another's; webhooks per the Standard Webhooks
spec, verified here independently (hmac), retried with backoff after 500s,
and a receiver that hangs does not slow the API. Everything against one
real `cloisterd --dev` and real HTTP receivers on loopback."""
import base64
import hashlib
import hmac
import http.server
import json
import queue
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import CLOISTER, audited, free_port, manifest, run_cli, sanitizer_env, wait_for

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(not AGE, reason="the age tool is not installed (scripts/setup.sh)")

USERS = ("alice", "bob", "carol", "dave")


@pytest.fixture(scope="module")
def world(shared_server, tmp_path_factory):
    """Users with tokens and CLI logins; workspace cohort of alice, bob and carol (dave is not a member)."""
    s = shared_server
    base = tmp_path_factory.mktemp("notify")
    docs = []
    for u in USERS:
        docs += [manifest("User", u, {"type": "human"}),
                 manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    w = {"s": s, "base": base, "tokens": {}, "config": {}}
    for u in USERS:
        w["tokens"][u] = s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"}).json()["token"]
        w["config"][u] = base / f"{u}-config"
        p = run_cli(s, "login", "--token", w["tokens"][u], config_home=w["config"][u])
        assert p.returncode == 0, p.stderr
    r = s.request("POST", "/v1/workspaces", json=manifest("Workspace", "cohort", {"members": ["alice", "bob", "carol"]}))
    assert r.status_code == 201, r.text
    w["recipient"] = r.json()["status"]["recipient"]
    return w


def api(w, user, method, path, **kw):
    return w["s"].request(method, path, token=w["tokens"][user], **kw)


def cli(w, user, *args):
    return run_cli(w["s"], *args, config_home=w["config"][user])


def upload(w, user, name):
    """USER creates Dataset NAME in cohort and uploads an age file encrypted to the workspace."""
    plain = w["base"] / f"{name}.csv"
    plain.write_text("id,v\n1,2\n")
    enc = w["base"] / f"{name}.age"
    subprocess.run([AGE, "-r", w["recipient"], "-o", str(enc), str(plain)], check=True)
    data = enc.read_bytes()
    r = api(w, user, "POST", "/v1/datasets", json=manifest("Dataset", name, {
        "workspace": "cohort", "schema": [{"name": "id", "type": "integer"}, {"name": "v", "type": "integer"}]}))
    assert r.status_code == 201, r.text
    r = api(w, user, "PUT", f"/v1/datasets/{name}/data?offset=0", data=data,
            headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    r = api(w, user, "POST", f"/v1/datasets/{name}/data",
            json={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    assert r.status_code == 200, r.text


def notifications(w, user, query=""):
    r = api(w, user, "GET", "/v1/notifications" + query)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def about(w, user, name):
    return [n for n in notifications(w, user) if n["name"] == name]


def test_a_dataset_upload_notifies_the_other_members_only(world):
    upload(world, "alice", "patients")
    for u in ("bob", "carol"):
        got = wait_for(lambda: about(world, u, "patients"), what=f"{u}'s notification")
        assert len(got) == 1
        n = got[0]
        assert n["type"] == "dataset.added" and n["kind"] == "Dataset" and n["read"] is False
        assert n["details"]["workspace"] == "cohort" and n["details"]["uploadedBy"] == "alice"
        assert n["createdAt"].endswith("Z") and n["id"]
    # the uploader and a non-member get nothing (the writer has stored the others': no later arrival)
    assert about(world, "alice", "patients") == []
    assert about(world, "dave", "patients") == []
    entry = audited(world["s"], "notification.create", lambda e: e["resource"]["name"] == "patients")[0]
    assert sorted(entry["details"]["users"]) == ["bob", "carol"] and entry["details"]["type"] == "dataset.added"


class SSE:
    """A watch stream read on a thread: each event (type, data, arrival time) goes to a queue."""

    def __init__(self, w, user, query="?watch=1"):
        self.r = api(w, user, "GET", "/v1/notifications" + query, stream=True)
        assert self.r.status_code == 200, self.r.text
        assert self.r.headers["Content-Type"].startswith("text/event-stream")
        self.events, self.ready = queue.Queue(), threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(10), "the stream never said it was watching"

    def _read(self):
        event, data = None, None
        try:
            for line in self.r.iter_lines(decode_unicode=True):
                if line == ": watching":
                    self.ready.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and event:
                    self.events.put((event, data, time.monotonic()))
                    event, data = None, None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError, AttributeError):
            pass

    def next(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no matching event on the stream"
            ev = self.events.get(timeout=left)
            if pred(ev):
                return ev

    def close(self):
        # the reader thread is blocked in a read: cut the connection under it (not SSLSocket's
        # shutdown, which would want a TLS exchange) rather than wait for the read to time out
        fp = self.r.raw._fp
        if fp is not None and fp.fp is not None:  # else the server ended it: nothing blocks
            socket.socket.shutdown(fp.fp.raw._sock, socket.SHUT_RDWR)
        self.r.close()


def test_the_watch_stream_delivers_a_new_notification_within_a_second(world):
    bob, dave = SSE(world, "bob"), SSE(world, "dave")
    try:
        t0 = time.monotonic()
        upload(world, "carol", "visits")  # answered once the Dataset says the upload is committed
        committed = time.monotonic()
        ev, data, at = bob.next(lambda e: e[0] == "ADDED" and e[1]["name"] == "visits")
        assert data["type"] == "dataset.added" and data["details"]["uploadedBy"] == "carol"
        assert at - committed < 1.0, f"the stream took {at - committed:.3f}s after the commit"
        assert at - t0 < 3.0
        # the same notification in the list, and nothing of it on a non-member's stream
        assert [n["id"] for n in about(world, "bob", "visits")] == [data["id"]]
        assert dave.events.empty()
        # marking it read is a MODIFIED event on the owner's stream
        r = api(world, "bob", "POST", "/v1/notifications/read", json={"ids": [data["id"]]})
        assert r.status_code == 200, r.text
        ev, mod, _ = bob.next(lambda e: e[0] == "MODIFIED" and e[1]["id"] == data["id"])
        assert mod["read"] is True and mod["readAt"].endswith("Z")
        assert dave.events.empty()
    finally:
        bob.close()
        dave.close()


def test_a_revoked_session_ends_the_stream(world):
    s = world["s"]
    tokens = s.request("POST", "/v1/auth/token", token="", json={"token": world["tokens"]["dave"]}).json()
    access, sid = tokens["access_token"], tokens["session"]
    stream = SSE({"s": s, "tokens": {"dave": access}}, "dave")
    try:
        assert s.request("DELETE", f"/v1/sessions/{sid}", token=access).status_code == 200
        ev, data, _ = stream.next(lambda e: e[0] == "ERROR", timeout=15)
        assert data["error"]["code"] == "unauthenticated", data
    finally:
        stream.close()


def test_read_marks_and_unread_filter(world):
    upload(world, "alice", "labs")
    n = wait_for(lambda: about(world, "carol", "labs"), what="carol's notification")[0]
    unread = [x["id"] for x in notifications(world, "carol", "?unread=1")]
    assert n["id"] in unread
    r = api(world, "carol", "POST", "/v1/notifications/read", json={"ids": [n["id"]]})
    assert r.status_code == 200 and r.json()["read"] == [n["id"]], r.text
    assert n["id"] not in [x["id"] for x in notifications(world, "carol", "?unread=1")]
    got = about(world, "carol", "labs")[0]
    assert got["read"] is True and got["readAt"]
    # marking again changes nothing and is no error
    r = api(world, "carol", "POST", "/v1/notifications/read", json={"ids": [n["id"]]})
    assert r.status_code == 200
    assert about(world, "carol", "labs")[0]["readAt"] == got["readAt"]
    audited(world["s"], "notification.read",
            lambda e: e["actor"]["user"] == "carol" and e["details"]["ids"] == [n["id"]])
    # the CLI shows them and marks them
    p = cli(world, "bob", "notifications", "--unread")
    assert p.returncode == 0, p.stderr
    bobs = about(world, "bob", "labs")[0]
    assert bobs["id"] in p.stdout and "dataset.added" in p.stdout
    p = cli(world, "bob", "notifications", "read", bobs["id"])
    assert p.returncode == 0, p.stderr
    assert about(world, "bob", "labs")[0]["read"] is True
    p = cli(world, "bob", "-o", "json", "notifications")
    assert p.returncode == 0, p.stderr
    assert bobs["id"] in [x["id"] for x in json.loads(p.stdout)["items"]]


def metric(w, name):
    for line in w["s"].request("GET", "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} on /metrics")


def test_the_cli_watches_new_ones(world):
    before = metric(world, "cloister_api_streams_open")
    env = sanitizer_env()
    env.update(XDG_CONFIG_HOME=str(world["config"]["carol"]), CLOISTER_SERVER=world["s"].url,
               CLOISTER_CA=world["s"].ca)
    env.pop("CLOISTER_TOKEN", None)
    p = subprocess.Popen([str(CLOISTER), "-o", "json", "notifications", "--watch"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
    try:
        wait_for(lambda: metric(world, "cloister_api_streams_open") > before, what="the CLI's stream")
        upload(world, "bob", "cli-watch")
        got = json.loads(lines.get(timeout=10))
        assert got["type"] == "dataset.added" and got["name"] == "cli-watch" and got["details"]["uploadedBy"] == "bob"
    finally:
        p.terminate()
        p.wait(10)


def test_one_user_cannot_see_or_mark_anothers(world):
    upload(world, "bob", "scans")
    alices = wait_for(lambda: about(world, "alice", "scans"), what="alice's notification")[0]
    # dave (no policy at all) lists only his own, and cannot mark alice's: 404 as for an unknown id
    assert alices["id"] not in [x["id"] for x in notifications(world, "dave")]
    r = api(world, "dave", "POST", "/v1/notifications/read", json={"ids": [alices["id"]]})
    assert r.status_code == 404 and alices["id"] in r.json()["error"]["message"], r.text
    # not even mixed with one of his own ids: nothing of the request is marked
    r = api(world, "carol", "POST", "/v1/notifications/read",
            json={"ids": [about(world, "carol", "scans")[0]["id"], alices["id"]]})
    assert r.status_code == 404
    assert about(world, "carol", "scans")[0]["read"] is False
    assert about(world, "alice", "scans")[0]["read"] is False
    # an admin has no way into them either: the list is the caller's own
    assert alices["id"] not in [x["id"] for x in world["s"].request("GET", "/v1/notifications").json()["items"]]
    assert world["s"].request("GET", f"/v1/notifications/{alices['id']}").status_code == 404


def test_bodies_and_ids_are_capped(world):
    for body in ({}, {"ids": []}, {"ids": "x"}, {"ids": ["Not_An_Id"]}, {"ids": ["a"], "more": 1},
                 {"ids": ["a"] * 501}):
        r = api(world, "bob", "POST", "/v1/notifications/read", json=body)
        assert r.status_code in (400, 413), (body, r.text)
    r = api(world, "bob", "POST", "/v1/notifications/read", data=b'{"ids": ["' + b"a" * 40000 + b'"]}',
            headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert api(world, "bob", "DELETE", "/v1/notifications").status_code == 405
    assert world["s"].request("GET", "/v1/notifications", token="").status_code == 401
    for hooks in (["ftp://127.0.0.1/x"], ["http://user:pw@127.0.0.1/"], ["not a url"],
                  [f"http://127.0.0.1:{p}/" for p in range(1, 6)], "http://127.0.0.1/"):
        r = api(world, "bob", "PUT", "/v1/notifications/webhooks", json={"webhooks": hooks})
        assert r.status_code == 400, (hooks, r.text)


class Receiver:
    """A webhook receiver on loopback: answers each POST with the next of STATUSES (then 200), or
    holds it until released when HANG; records (headers, body, monotonic time)."""

    def __init__(self, statuses=(), hang=False, port=0):
        self.statuses, self.hang = list(statuses), hang
        self.got, self.release = queue.Queue(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.put((dict((k.lower(), v) for k, v in self.headers.items()), body, time.monotonic()))
                if outer.hang:
                    outer.release.wait(30)
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next(self, timeout=15):
        return self.got.get(timeout=timeout)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def verify(secret, headers, body):
    """The Standard Webhooks check, written here from the spec: HMAC-SHA256 under the base64 key after
    whsec_ of "id.timestamp.body", base64, among the space-separated "v1,<sig>" of webhook-signature."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(int(ts) - time.time()) < 300, "the timestamp is not now"
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    sigs = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ") if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in sigs)


def set_hooks(w, user, urls):
    r = api(w, user, "PUT", "/v1/notifications/webhooks", json={"webhooks": urls})
    assert r.status_code == 200, r.text


def secret_of(w, user, rotate=False):
    r = api(w, user, "POST", "/v1/notifications/webhook-secret" + ("?rotate=1" if rotate else ""))
    assert r.status_code == 200, r.text
    return r.json()["secret"]


def test_a_webhook_is_signed_per_standard_webhooks(world):
    rx = Receiver()
    try:
        set_hooks(world, "bob", [rx.url])
        assert api(world, "bob", "GET", "/v1/notifications/webhooks").json() == {"webhooks": [rx.url]}
        secret = secret_of(world, "bob")
        assert secret == secret_of(world, "bob")  # kept, not made again
        p = cli(world, "bob", "notifications", "webhook-secret")
        assert p.returncode == 0 and p.stdout.strip() == secret, p.stderr
        upload(world, "alice", "genomes")
        headers, body, _ = rx.next()
        assert verify(secret, headers, body)
        assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), headers, body)
        assert not verify(secret, headers, body + b" ")
        msg = json.loads(body)
        assert msg["type"] == "dataset.added" and msg["data"]["name"] == "genomes"
        assert msg["data"]["id"] == headers["webhook-id"] and msg["timestamp"].endswith("Z")
        assert headers["content-type"] == "application/json"
        n = wait_for(lambda: [x for x in about(world, "bob", "genomes")
                              if x.get("deliveries", [{}])[0].get("state") == "delivered"], what="delivered state")[0]
        d = n["deliveries"][0]
        assert d["url"] == rx.url and d["attempts"] == 1 and d["lastStatus"] == 200 and d["deliveredAt"]
        # the secret is stored sealed: not in the store's file, the log or the audit log
        raw = base64.b64decode(secret[6:])
        for path in world["s"].data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert secret.encode() not in data and raw not in data, path
        assert secret not in world["s"].read_log()
        # nobody else gets it: another user's call makes their own secret
        assert secret_of(world, "carol") != secret
        # a rotation makes a new one, which signs from then on
        new = secret_of(world, "bob", rotate=True)
        assert new != secret and new == secret_of(world, "bob")
    finally:
        set_hooks(world, "bob", [])
        rx.close()


def test_a_failing_receiver_gets_the_delivery_on_the_third_attempt(world):
    rx = Receiver(statuses=[500, 500])
    try:
        set_hooks(world, "carol", [rx.url])
        secret = secret_of(world, "carol")
        names = [f'cloister_webhook_deliveries_total{{outcome="{o}"}}' for o in ("retried", "ok", "failed")] + \
            ['cloister_notifications_total{outcome="created"}']
        before = {m: metric(world, m) for m in names}
        upload(world, "alice", "xrays")
        attempts = [rx.next() for _ in range(3)]
        ids = {h["webhook-id"] for h, _, _ in attempts}
        assert len(ids) == 1, "every attempt carries the same webhook-id"
        assert all(verify(secret, h, b) for h, b, _ in attempts)
        gaps = [attempts[i + 1][2] - attempts[i][2] for i in range(2)]
        assert 0.9 <= gaps[0] < 1.9 and 1.9 <= gaps[1] < 3.5, gaps  # the backoff: 1 s, then 2 s
        n = wait_for(lambda: [x for x in about(world, "carol", "xrays")
                              if x.get("deliveries", [{}])[0].get("state") == "delivered"], what="delivered")[0]
        d = n["deliveries"][0]
        assert d["attempts"] == 3 and d["lastStatus"] == 200 and d["deliveredAt"], d
        assert rx.got.empty()
        # two attempts retried, one ok, none failed; notifications for bob and carol
        assert [metric(world, m) - before[m] for m in names] == [2, 1, 0, 2]
    finally:
        set_hooks(world, "carol", [])
        rx.close()


def test_a_receiver_that_hangs_does_not_slow_the_api(world):
    rx = Receiver(hang=True)
    try:
        set_hooks(world, "bob", [rx.url])
        secret_of(world, "bob")
        baseline = []
        for _ in range(10):
            t = time.monotonic()
            assert api(world, "bob", "GET", "/v1/notifications").status_code == 200
            baseline.append(time.monotonic() - t)
        upload(world, "carol", "hanging")
        rx.next()  # the delivery is now held by the receiver
        slowest = 0
        for _ in range(20):
            t = time.monotonic()
            assert api(world, "bob", "GET", "/v1/notifications").status_code == 200
            assert api(world, "alice", "GET", "/v1/whoami").status_code == 200
            slowest = max(slowest, time.monotonic() - t)
        assert slowest < max(0.5, 5 * max(baseline)), (slowest, baseline)
        n = about(world, "bob", "hanging")[0]
        assert n["deliveries"][0]["state"] == "pending"
    finally:
        set_hooks(world, "bob", [])
        rx.close()


def test_a_refused_key_release_notifies_the_admins(world):
    s = world["s"]
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Key", "plain-key", {"purpose": "encrypt"})]})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/kms/keys/plain-key/release", json={
        "type": "sandbox", "evidence": base64.b64encode(b"evidence").decode(),
        "publicKey": base64.b64encode(b"key").decode()})
    assert r.status_code == 403, r.text
    got = wait_for(lambda: [n for n in s.request("GET", "/v1/notifications").json()["items"]
                            if n["type"] == "key-release.refused" and n["name"] == "plain-key"], what="admin's")
    assert got[0]["kind"] == "Key" and "spec.release" in got[0]["details"]["reason"]
    assert got[0]["details"]["requestedBy"] == "admin"
    assert not [n for n in notifications(world, "alice") if n["type"] == "key-release.refused"]


def test_deliveries_left_retrying_resume_after_a_restart(server, tmp_path):
    """A receiver that refuses connections: the delivery is retrying when cloisterd stops; once it is
    back (and the receiver listens), the same message is delivered."""
    s = server
    docs = []
    for u in ("erin", "frank"):
        docs += [manifest("User", u, {"type": "human"}),
                 manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    w = {"s": s, "base": tmp_path, "tokens": {u: s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"})
                                               .json()["token"] for u in ("erin", "frank")}}
    r = s.request("POST", "/v1/workspaces", json=manifest("Workspace", "cohort", {"members": ["erin", "frank"]}))
    assert r.status_code == 201, r.text
    w["recipient"] = r.json()["status"]["recipient"]
    port = free_port()
    set_hooks(w, "frank", [f"http://127.0.0.1:{port}/hook"])
    secret = secret_of(w, "frank")
    upload(w, "erin", "survey")
    n = wait_for(lambda: [x for x in about(w, "frank", "survey") if x["deliveries"][0]["attempts"] >= 1],
                 what="a failed attempt")[0]
    d = n["deliveries"][0]
    assert d["state"] == "retrying" and d["lastStatus"] == 0 and d["lastError"] and d["nextAttemptAt"], d
    s.stop()
    rx = Receiver(port=port)
    try:
        s.start()
        headers, body, _ = rx.next(timeout=30)
        assert headers["webhook-id"] == n["id"] and verify(secret, headers, body)
        got = wait_for(lambda: [x for x in about(w, "frank", "survey")
                                if x["deliveries"][0]["state"] == "delivered"], what="delivered")[0]
        assert got["deliveries"][0]["attempts"] >= 2
    finally:
        rx.close()
