"""The REST API as users and attackers see it: authentication, every kind's
life cycle, optimistic concurrency, validation errors that write nothing,
caps on what a client sends, watch streams, health and metrics."""
import json
import os
import subprocess
import threading
import time

import pytest
import requests

from conftest import manifest

KINDS = {
    "users": ("User", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
    "groups": ("Group", {"policies": ["devs-read"]}),
    "services": ("Service", {"upstream": {"url": "http://127.0.0.1:9000"}, "policies": ["devs-read"]}),
    "policies": ("Policy", {"rules": [{"effect": "allow", "priority": 0, "condition": {"match": "true"}}]}),
    "credentials": ("Credential", {"user": "admin", "type": "authToken"}),  # a credential names a user that exists
    "identityproviders": ("IdentityProvider", {"type": "oidc", "issuer": "https://idp.example.com",
                                               "clientId": "cloister",
                                               "clientSecret": {"secret": "idp", "key": "secret"}}),
    "secrets": ("Secret", {"data": {"token": "s3cr3t-value-1234"}}),
}


def error_of(r):
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    return body["error"]


def test_health_is_public_and_metrics_need_a_credential(shared_server):
    r = requests.get(shared_server.url + "/readyz", verify=shared_server.ca)
    assert r.status_code == 200
    # every role of the table, each ready, nothing wrong
    assert r.json()["status"] == "ok" and r.json()["roles"]["api"] == "ready"
    assert set(r.json()["roles"].values()) == {"ready"} and r.json()["problems"] == []
    r = requests.get(shared_server.url + "/healthz", verify=shared_server.ca)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    shared_server.request("GET", "/v1/services")
    assert requests.get(shared_server.url + "/metrics", verify=shared_server.ca).status_code == 401
    m = shared_server.request("GET", "/metrics")  # the admin token
    assert m.status_code == 200
    assert m.headers["content-type"].startswith("text/plain")
    assert 'cloister_api_requests_total{route="/v1/{kind}",method="GET",status="200"}' in m.text
    assert "cloister_api_request_duration_seconds_bucket" in m.text


@pytest.mark.parametrize("auth,expect", [
    (None, "missing Authorization"),
    ("Basic YWRtaW46YWRtaW4=", "Bearer"),
    ("Bearer not-a-token", "malformed"),
    ("Bearer clst_" + "A" * 43, "unknown or revoked"),
])
def test_unauthenticated_requests_are_refused(shared_server, auth, expect):
    headers = {"Authorization": auth} if auth else {}
    r = requests.get(shared_server.url + "/v1/services", headers=headers, verify=shared_server.ca)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert expect in error_of(r)["message"]


def test_token_with_one_changed_character_is_refused(shared_server):
    tok = shared_server.token
    bad = tok[:-1] + ("A" if tok[-1] != "A" else "B")
    r = shared_server.request("GET", "/v1/whoami", token=bad)
    assert r.status_code == 401


def test_whoami_names_the_bootstrap_admin(shared_server):
    r = shared_server.request("GET", "/v1/whoami")
    assert r.status_code == 200
    assert r.json() == {"user": "admin", "type": "human", "email": "", "groups": ["admins"],
                        "credential": "admin-bootstrap"}


def test_bootstrap_identity_exists_and_hides_the_token_digest(shared_server):
    cred = shared_server.request("GET", "/v1/credentials/admin-bootstrap").json()
    assert cred["spec"]["user"] == "admin"
    assert "tokenDigest" not in json.dumps(cred)
    pol = shared_server.request("GET", "/v1/policies/cloister-admins").json()
    assert pol["spec"]["rules"][0]["effect"] == "allow"
    assert shared_server.request("GET", "/v1/groups/admins").status_code == 200
    mode = os.stat(shared_server.data_dir / "admin.token").st_mode & 0o777
    assert mode == 0o600


@pytest.mark.parametrize("plural", sorted(KINDS))
def test_life_cycle_of_every_kind(shared_server, plural):
    kind, spec = KINDS[plural]
    name = f"lc-{plural[:-1]}"
    s = shared_server
    r = s.request("POST", f"/v1/{plural}", json=manifest(kind, name, spec, labels={"team": "a"}))
    assert r.status_code == 201, r.text
    created = r.json()
    meta = created["metadata"]
    assert meta["name"] == name and meta["labels"] == {"team": "a"}
    assert len(meta["uid"]) == 36 and int(meta["resourceVersion"]) > 0
    assert meta["createdAt"].endswith("Z") and meta["updatedAt"].endswith("Z")

    # a second create of the same name is a conflict
    r = s.request("POST", f"/v1/{plural}", json=manifest(kind, name, spec))
    assert r.status_code == 409 and error_of(r)["code"] == "already_exists"

    got = s.request("GET", f"/v1/{plural}/{name}").json()
    assert got["metadata"]["uid"] == meta["uid"]
    listed = s.request("GET", f"/v1/{plural}").json()
    assert listed["kind"] == "List" and name in [i["metadata"]["name"] for i in listed["items"]]

    # replace with the current version succeeds; with the old one it conflicts
    updated = manifest(kind, name, spec, labels={"team": "b"}, resourceVersion=meta["resourceVersion"])
    r = s.request("PUT", f"/v1/{plural}/{name}", json=updated)
    assert r.status_code == 200, r.text
    assert int(r.json()["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert r.json()["metadata"]["createdAt"] == meta["createdAt"]
    r = s.request("PUT", f"/v1/{plural}/{name}", json=updated)
    assert r.status_code == 409 and error_of(r)["code"] == "conflict"

    r = s.request("DELETE", f"/v1/{plural}/{name}")
    assert r.status_code == 200 and r.json() == {"kind": kind, "name": name, "status": "deleted"}
    assert s.request("GET", f"/v1/{plural}/{name}").status_code == 404
    assert s.request("DELETE", f"/v1/{plural}/{name}").status_code == 404


def test_secret_values_are_write_only(shared_server):
    s = shared_server
    value = "very-secret-value-7f3a9c"
    r = s.request("POST", "/v1/secrets", json=manifest("Secret", "wiki-token", {"data": {"token": value, "user": "x"}}))
    assert r.status_code == 201
    for body in (r.text, s.request("GET", "/v1/secrets/wiki-token").text, s.request("GET", "/v1/secrets").text):
        assert value not in body
    got = s.request("GET", "/v1/secrets/wiki-token").json()
    assert got["status"]["keys"] == ["token", "user"]
    assert value not in s.read_log()


@pytest.mark.parametrize("doc,field", [
    (manifest("Service", "svc", {"upstream": {"url": "http://x"}, "upstrem": 1}), "spec.upstrem"),
    (manifest("Service", "svc", {"upstream": {"url": "http://x"}}, colour="red"), "metadata.colour"),
    (manifest("Policy", "p", {"rules": [{"effect": "maybe", "condition": {"match": "true"}}]}), "spec.rules[0].effect"),
    (manifest("User", "u", {"type": "robot"}), "spec.type"),
    (manifest("Credential", "c", {"type": "authToken"}), "spec.user"),
])
def test_invalid_documents_name_the_field_and_write_nothing(shared_server, doc, field):
    before = shared_server.request("GET", "/v1/services").json()["metadata"]["resourceVersion"]
    plural = {"Service": "services", "Policy": "policies", "User": "users", "Credential": "credentials"}[doc["kind"]]
    r = shared_server.request("POST", f"/v1/{plural}", json=doc)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["code"] == "invalid"
    assert err["field"] == field, err
    assert field in err["message"]
    assert shared_server.request("GET", f"/v1/{plural}/{doc['metadata']['name']}").status_code == 404
    assert shared_server.request("GET", "/v1/services").json()["metadata"]["resourceVersion"] == before


@pytest.mark.parametrize("name", ["Wiki", "wiki_1", "-wiki", "a" * 64, "wiki.example"])
def test_bad_names_are_refused(shared_server, name):
    r = shared_server.request("POST", "/v1/services", json=manifest("Service", name, {"upstream": {"url": "http://x"}}))
    assert r.status_code == 400
    assert error_of(r)["field"] == "metadata.name"


def test_unknown_kind_and_endpoint(shared_server):
    r = shared_server.request("GET", "/v1/widgets")
    assert r.status_code == 404 and "widgets" in error_of(r)["message"]
    r = shared_server.request("POST", "/v1/services", json={**manifest("Widget", "w", {})})
    assert r.status_code == 400
    r = shared_server.request("GET", "/v2/services")
    assert r.status_code == 404


def test_kind_and_name_must_match_the_url(shared_server):
    doc = manifest("User", "mismatch", {"type": "human"})
    r = shared_server.request("POST", "/v1/services", json=doc)
    assert r.status_code == 400 and "does not match" in error_of(r)["message"]
    shared_server.request("POST", "/v1/users", json=doc)
    r = shared_server.request("PUT", "/v1/users/other", json=doc)
    assert r.status_code == 400 and "does not match" in error_of(r)["message"]


def announce_huge_body(server):
    """Announces a 5 MiB body and sends none of it: the server must refuse
    from the headers alone instead of waiting for (and buffering) the body.
    Returns (status, body) of the answer."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=server.ca)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall((f"POST /v1/secrets HTTP/1.1\r\nHost: localhost\r\n"
                         f"Authorization: Bearer {server.token}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {5 * 1024 * 1024}\r\n\r\n").encode())
            raw = b""
            while chunk := tls.recv(4096):  # the server closes after refusing
                raw += chunk
            head, _, body = raw.partition(b"\r\n\r\n")
            return int(head.split()[1]), body


def test_body_caps_and_malformed_json(shared_server):
    s = shared_server
    big = manifest("Secret", "big", {"data": {"v": "x" * (1024 * 1024 + 10)}})
    r = s.request("POST", "/v1/secrets", json=big)
    assert r.status_code == 413 and error_of(r)["code"] == "too_large"
    status, body = announce_huge_body(s)  # refused by h2o itself, in our JSON
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large", body
    deep = '{"a":' * 40 + "1" + "}" * 40
    r = s.request("POST", "/v1/services", data=deep)
    assert r.status_code == 400 and "deeper" in error_of(r)["message"]
    r = s.request("POST", "/v1/services", data='{"kind":"Service","kind":"User"}')
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = s.request("POST", "/v1/services", data="{not json")
    assert r.status_code == 400
    r = s.request("POST", "/v1/services", data="[1,2]")
    assert r.status_code == 400
    assert s.request("GET", "/v1/secrets/big").status_code == 404


def test_oversized_headers_are_refused(shared_server):
    """h2o caps the request head (about 400 KiB); past it the request is never
    processed: the server answers 4xx or drops the connection."""
    try:
        r = requests.get(shared_server.url + "/v1/services", verify=shared_server.ca,
                         headers={"Authorization": "Bearer " + shared_server.token, "X-Big": "a" * 600000})
        assert r.status_code in (400, 413, 431)
    except requests.ConnectionError:
        pass
    assert shared_server.request("GET", "/healthz").status_code == 200


def test_apply_is_all_or_nothing(shared_server):
    s = shared_server
    good = manifest("Group", "apply-devs", {"policies": []})
    also_good = manifest("User", "apply-alice", {"groups": ["apply-devs"]})
    bad = manifest("Service", "apply-svc", {"upstream": {"url": "ftp://nope"}})
    r = s.request("POST", "/v1/apply", json={"items": [good, also_good, bad]})
    assert r.status_code == 400
    err = error_of(r)
    assert err["document"] == 2
    assert s.request("GET", "/v1/groups/apply-devs").status_code == 404
    assert s.request("GET", "/v1/users/apply-alice").status_code == 404

    r = s.request("POST", "/v1/apply", json={"items": [good, also_good]})
    assert r.status_code == 200, r.text
    assert [(i["name"], i["action"]) for i in r.json()["items"]] == [("apply-devs", "created"), ("apply-alice", "created")]
    r = s.request("POST", "/v1/apply", json={"items": [good, manifest("User", "apply-alice", {"groups": []})]})
    assert [i["action"] for i in r.json()["items"]] == ["unchanged", "configured"]

    # a conflict in the store (stale version) also writes nothing
    stale = manifest("Group", "apply-devs", {"policies": ["x"]}, resourceVersion="1")
    new = manifest("Group", "apply-new", {})
    r = s.request("POST", "/v1/apply", json={"items": [new, stale]})
    assert r.status_code == 409 and error_of(r)["document"] == 1
    assert s.request("GET", "/v1/groups/apply-new").status_code == 404


def test_watch_streams_current_state_then_changes(shared_server):
    s = shared_server
    s.request("POST", "/v1/groups", json=manifest("Group", "watch-before", {}))
    events = []
    done = threading.Event()

    def reader():
        with s.request("GET", "/v1/groups?watch=1", stream=True) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            event = {}
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event["type"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and event:
                    events.append(event)
                    event = {}
                    if any(e["data"]["object"]["metadata"]["name"] == "watch-gone" and e["type"] == "DELETED"
                           for e in events):
                        done.set()
                        return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.5)
    s.request("POST", "/v1/groups", json=manifest("Group", "watch-gone", {}))
    s.request("DELETE", "/v1/groups/watch-gone")
    assert done.wait(10), events
    names = [(e["type"], e["data"]["object"]["metadata"]["name"]) for e in events]
    assert ("ADDED", "watch-before") in names
    assert names[-2:] == [("ADDED", "watch-gone"), ("DELETED", "watch-gone")]


def test_watch_from_a_revision_replays_changes(shared_server):
    s = shared_server
    rev = s.request("GET", "/v1/users").json()["metadata"]["resourceVersion"]
    s.request("POST", "/v1/users", json=manifest("User", "replayed", {}))
    with s.request("GET", f"/v1/users?watch=1&resourceVersion={rev}", stream=True) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "replayed"
                break


def test_method_not_allowed_lists_the_allowed(shared_server):
    r = shared_server.request("PATCH", "/v1/services/x")
    assert r.status_code == 405
    r = shared_server.request("POST", "/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_http2_is_negotiated(shared_server):
    out = subprocess.run(["curl", "-s", "--http2", "--cacert", shared_server.ca, "-o", "/dev/null",
                          "-w", "%{http_version}", shared_server.url + "/healthz"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "2"


def test_logs_are_json_lines_without_the_token(shared_server):
    log = shared_server.read_log()
    assert shared_server.token not in log
    lines = [l for l in log.splitlines() if l.startswith("{")]
    assert lines
    for l in lines:
        entry = json.loads(l)
        assert {"time", "level", "role", "msg"} <= set(entry)


def test_keep_alive_survives_creates_and_errors(shared_server):
    """201s and 4xx answers keep the HTTP/1.1 connection open (no reconnect per write)."""
    import socket
    import ssl
    s = shared_server
    ctx = ssl.create_default_context(cafile=s.ca)
    bodies = [json.dumps(manifest("Group", "ka-1", {})), '{"bad": 1}', json.dumps(manifest("Group", "ka-2", {}))]
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.port), timeout=10), server_hostname="localhost") as tls:
        f = tls.makefile("rb")
        for body in bodies:
            tls.sendall((f"POST /v1/groups HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {s.token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
            status = f.readline().split()[1]
            headers = {}
            while (line := f.readline().strip()):
                k, v = line.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            f.read(int(headers["content-length"]))
            assert headers["connection"] == "keep-alive", (status, headers)
    assert s.request("GET", "/v1/groups/ka-2").status_code == 200


def test_writes_and_refusals_are_audit_events(shared_server):
    s = shared_server
    s.request("POST", "/v1/groups", json=manifest("Group", "audited", {}))
    s.request("DELETE", "/v1/groups/audited")
    s.request("GET", "/v1/groups", token="clst_" + "B" * 43)

    def audit_entries():
        """The audit log's entries (delivered asynchronously to the audit role)."""
        size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
        got = []
        for start in range(0, size, 1000):
            page = s.request("GET", f"/v1/audit/entries?start={start}&end={min(size, start + 1000)}").json()
            got += [json.loads(e["entry"]) for e in page["entries"]]
        return got

    deadline = time.time() + 15
    while True:
        events = audit_entries()
        denied = [e for e in events if e["action"] == "api.access" and e["outcome"] == "denied"]
        mine = [(e["action"], e["resource"]["name"], e["outcome"]) for e in events
                if e["resource"]["name"] == "audited"]
        if (len(mine) == 2 and denied) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert mine == [("resource.create", "audited", "success"), ("resource.delete", "audited", "success")]
    assert all(e["actor"]["user"] == "admin" and e["actor"]["ip"] == "127.0.0.1"
               for e in events if e["resource"]["name"] == "audited")
    assert denied and denied[-1]["details"]["status"] == 401
