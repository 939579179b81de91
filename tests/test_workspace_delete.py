"""Deleting a Workspace destroys its KMS key (issue: "workspace deletion leaves the KMS key"), against the real
cloisterd --dev. The kms role's socket answers only the api and runner roles, so the witness of what its key ring
holds is the ring itself: <data-dir>/kms/keyring.json, the sealed ring the kms role rewrites (key names in the
clear, material wrapped under the root key). Shown: the key is in the ring while the Workspace lives; a delete
refused because datasets and jobs still name the workspace leaves it; a forced delete takes it out of the ring,
leaves the other workspaces' keys, and is audited (workspace.key.destroy by the caller, kms.key.destroy by the kms
role); a second delete is a plain 404; a job of the deleted workspace cannot run, naming the destroyed key (also
once the workspace is made again, with a new key); a destruction interrupted after the key went (the Workspace
changed meanwhile) leaves the Workspace, and deleting it again succeeds with the key "already gone"; a sealed kms
refuses the delete with 503 naming the kms role, and nothing changes."""
import json
import os
import re
import signal
import threading
import time

import pytest

from conftest import Server, audit_entries, audited, manifest, ok, workspace_world, world_cli
from test_jobs import engine  # noqa: F401 (a fixture: the measured stand-in engine bundle)
from test_kms import unseal

PATIENTS = "id,city\n1,Lyon\n2,Paris\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory, engine):  # noqa: F811
    w = workspace_world(tmp_path_factory, "ws-delete", {"alice": True, "bob": True},
                        {"cohort": ["alice", "bob"], "lab": ["alice"]},
                        [("alice", "patients", "cohort", PATIENTS)], env={"CLOISTER_JOB_BUNDLE": str(engine[0])})
    yield w
    w["s"].stop()


def ring_keys(s):
    """The key ring's keys as the kms role last wrote them: {name: versions}."""
    return json.loads((s.data_dir / "kms" / "keyring.json").read_text())["keys"]


def workspace_key(s, name):
    r = s.request("GET", f"/v1/workspaces/{name}")
    assert r.status_code == 200, r.text
    return r.json()["status"]["key"]


def test_a_deleted_workspace_s_key_leaves_the_kms_and_its_jobs_cannot_run(world):
    s = world["s"]
    key, other = workspace_key(s, "cohort"), workspace_key(s, "lab")
    ring = ring_keys(s)
    assert key.startswith("workspace_") and key in ring and other in ring
    assert all(v["material"] for v in ring[key]["versions"])
    ok(world_cli(world, "alice", "job", "propose", "count", "--workspace", "cohort", "--query",
                 "SELECT count(*) AS n FROM patients", "--input", "patients"))
    ok(world_cli(world, "alice", "job", "approve", "count"))
    assert s.request("GET", "/v1/jobs/count").json()["status"]["workspaceKey"] == key

    # still named by a dataset and a job: refused as before, and the key stays
    r = s.request("DELETE", "/v1/workspaces/cohort")
    assert r.status_code == 409 and r.json()["error"]["code"] == "referenced", r.text
    assert key in ring_keys(s)

    r = s.request("DELETE", "/v1/workspaces/cohort?force=1")
    assert r.status_code == 200, r.text
    ring = ring_keys(s)
    assert key not in ring and other in ring
    assert key not in (s.data_dir / "kms" / "keyring.json").read_text()
    deleted = audited(s, "resource.delete", lambda e: e["resource"] == {"kind": "Workspace", "name": "cohort"})
    destroyed = audited(s, "workspace.key.destroy", lambda e: e["resource"]["name"] == "cohort")
    assert len(destroyed) == 1 and destroyed[0]["outcome"] == "success"
    assert destroyed[0]["details"] == {"key": key, "result": "destroyed"}
    assert destroyed[0]["actor"]["user"] == deleted[0]["actor"]["user"] != ""
    assert audited(s, "kms.key.destroy", lambda e: e["details"] == {"key": key, "existed": True})

    # a second delete: nothing left to delete, and no second destruction
    r = s.request("DELETE", "/v1/workspaces/cohort?force=1")
    assert r.status_code == 404, r.text
    assert len([e for e in audit_entries(s, "workspace.key.destroy") if e["resource"]["name"] == "cohort"]) == 1

    # the job of the deleted workspace: its author lost her member's right to run it with the workspace (403);
    # granted it by a policy, she is refused naming the destroyed key, and nothing is launched
    r = s.request("POST", "/v1/jobs/count/runs", token=world["tokens"]["alice"], json={})
    assert r.status_code == 403, r.text
    rule = {"effect": "allow", "condition": {"match": 'ctx.request.api.verb == "run" && ctx.request.api.kind == "Job"'}}
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Policy", "run-jobs", {"rules": [rule]}),
                                                       manifest("User", "alice", {"type": "human",
                                                                                  "policies": ["run-jobs"]})]})
    assert r.status_code == 200, r.text
    r = s.request("POST", "/v1/jobs/count/runs", token=world["tokens"]["alice"], json={})
    assert r.status_code == 409, r.text
    msg = r.json()["error"]["message"]
    assert f"workspace cohort was deleted and its key {key} destroyed with it" in msg, msg
    # made again under the same name: a new key, and the old job still names the old one
    r = s.request("POST", "/v1/workspaces", json=manifest("Workspace", "cohort", {"members": ["alice", "bob"]}))
    assert r.status_code == 201, r.text
    new_key = r.json()["status"]["key"]
    assert new_key != key and new_key in ring_keys(s)
    r = s.request("POST", "/v1/jobs/count/runs", token=world["tokens"]["alice"], json={})
    assert r.status_code == 409, r.text
    msg = r.json()["error"]["message"]
    assert f"encrypted to workspace key {key}, destroyed when workspace cohort was deleted" in msg, msg
    assert new_key in msg
    assert "running" not in json.dumps(s.request("GET", "/v1/jobs/count").json()["status"].get("runs", []))


def kms_calls(s):
    text = s.request("GET", "/metrics").text
    return int(re.search(r"^cloister_api_kms_calls_total (\d+)$", text, re.M).group(1))


def test_a_destruction_cut_short_is_finished_by_deleting_again(world):
    """The key goes first: when the Workspace changed between the key's destruction and the delete (its
    compare-and-swap fails), the Workspace stays, without a usable key; deleting it again succeeds, the kms
    role finding the key already gone."""
    s = world["s"]
    r = s.request("POST", "/v1/workspaces", json=manifest("Workspace", "scratch", {"members": ["alice"]}))
    assert r.status_code == 201, r.text
    key = r.json()["status"]["key"]
    assert key in ring_keys(s)
    kms = s.role_pid("kms")
    before = kms_calls(s)
    answer = {}
    os.kill(kms, signal.SIGSTOP)
    try:
        t = threading.Thread(target=lambda: answer.update(r=s.request("DELETE", "/v1/workspaces/scratch")))
        t.start()
        deadline = time.time() + 10
        while kms_calls(s) == before:  # the delete read the Workspace and waits on the kms role
            assert time.time() < deadline, "the delete never reached the kms role"
            time.sleep(0.05)
        doc = s.request("GET", "/v1/workspaces/scratch").json()
        doc["spec"]["members"] = ["alice", "bob"]
        r = s.request("PUT", "/v1/workspaces/scratch", json=doc)
        assert r.status_code == 200, r.text
    finally:
        os.kill(kms, signal.SIGCONT)
    t.join(30)
    r = answer["r"]
    assert r.status_code == 409, r.text  # the Workspace changed since the delete read it
    assert key not in ring_keys(s)
    assert s.request("GET", "/v1/workspaces/scratch").json()["status"]["key"] == key

    r = s.request("DELETE", "/v1/workspaces/scratch")
    assert r.status_code == 200, r.text
    assert s.request("GET", "/v1/workspaces/scratch").status_code == 404
    entries = audited(s, "workspace.key.destroy",
                      lambda e: e["resource"]["name"] == "scratch" and e["details"]["result"] == "already gone")
    assert entries[0]["details"]["key"] == key and entries[0]["outcome"] == "success"
    assert audited(s, "kms.key.destroy", lambda e: e["details"] == {"key": key, "existed": False})


def test_a_sealed_kms_refuses_the_delete_with_503_and_nothing_changes(tmp_path):
    s = Server(tmp_path / "data", ["--seal", "passphrase"]).start()
    secret = "correct horse battery staple"
    try:
        assert unseal(s.data_dir, secret).returncode == 0
        r = s.request("POST", "/v1/workspaces", json=manifest("Workspace", "sealed-ws", {"members": ["alice"]}))
        assert r.status_code == 201, r.text
        key = r.json()["status"]["key"]
        s.stop()
        s.start()  # sealed again
        r = s.request("DELETE", "/v1/workspaces/sealed-ws")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "sealed" and "kms role" in err["message"], err
        assert "Workspace sealed-ws is not deleted" in err["message"] and key in err["message"], err
        assert s.request("GET", "/v1/workspaces/sealed-ws").status_code == 200
        assert key in ring_keys(s)
        assert audited(s, "workspace.key.destroy", lambda e: e["outcome"] == "failure")
        assert unseal(s.data_dir, secret).returncode == 0
        r = s.request("DELETE", "/v1/workspaces/sealed-ws")
        assert r.status_code == 200, r.text
        assert key not in ring_keys(s)
    finally:
        s.stop()
