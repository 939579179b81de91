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
import subprocess
import threading
import time

import pytest
import requests

from conftest import audited, manifest, run_cli

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(not AGE, reason="the age tool is not installed (scripts/setup.sh)")

USERS = ("alice", "bob", "carol", "dave")


def wait_for(pred, timeout=15, what="condition"):
    """Polls PRED until it returns something truthy; returns it."""
    deadline = time.time() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


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
