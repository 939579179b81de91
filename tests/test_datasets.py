"""Workspaces and datasets (issue 16, part 1) against one real server: the
workspace key made by the KMS, datasets encrypted on the client to the
workspace and to their owner, members' implicit rights, a non-member
refused, no plaintext anywhere under the data dir, and kill -9 of the api
role in the middle of an upload."""
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import audited, manifest, run_cli

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(not AGE, reason="the age tool is not installed (scripts/setup.sh)")

USERS = ("alice", "bob", "carol", "dave")
SECRETS = {"alice": "ZEBRAQUOKKA7731", "bob": "WOMBATNARWHAL4409"}  # values no file of the server may hold
PART = 4 * 1024 * 1024


def ok(p):
    assert p.returncode == 0, (p.stdout[-800:], p.stderr[-1500:])
    return p



@pytest.fixture(scope="module")
def world(shared_server, tmp_path_factory):
    """Users with their own keys registered, logged in through the CLI; workspace cohort (alice, bob, carol)."""
    s = shared_server
    base = tmp_path_factory.mktemp("clients")
    docs = []
    for u in USERS:
        docs += [manifest("User", u, {"type": "human"}), manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    w = {"s": s, "base": base, "tokens": {}, "config": {}}
    for u in USERS:
        w["tokens"][u] = s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"}).json()["token"]
        cfg = base / f"{u}-config"
        w["config"][u] = cfg
        ok(run_cli(s, "keys", "init", config_home=cfg))
        ok(run_cli(s, "login", "--token", w["tokens"][u], config_home=cfg))
        ok(run_cli(s, "keys", "register", config_home=cfg))
    p = ok(run_cli(s, "workspace", "create", "cohort", "--member", "alice", "--member", "bob", "--member", "carol",
                   env_extra={"CLOISTER_TOKEN": s.token}, config_home=base / "admin-config"))
    assert "age1" in p.stdout
    return w


def cli(w, user, *args):
    return run_cli(w["s"], *args, config_home=w["config"][user])


def identity(w, user):
    return w["config"][user] / "cloister" / "keys" / "age-identity.txt"


def csv_file(w, name, secret):
    p = w["base"] / f"{name}.csv"
    p.write_text(f"id,city,age\n1,{secret},42\n2,Lyon,37\n3,\"Paris, France\",\n")
    return p


def test_a_workspace_has_a_kms_made_recipient_its_members_may_read(world):
    s, t = world["s"], world["tokens"]
    ws = s.request("GET", "/v1/workspaces/cohort").json()
    rcpt = ws["status"]["recipient"]
    assert rcpt.startswith("age1") and ws["status"]["key"].startswith("workspace_")
    assert ws["spec"]["approvals"] == "owners"
    # the KMS holds the private half: nothing under the kms role's files is the recipient's secret,
    # and the key is not reachable through the Key API (its name is no resource name)
    assert s.request("GET", f"/v1/kms/keys/{ws['status']['key']}").status_code == 404
    for u in ("alice", "bob", "carol"):
        assert s.request("GET", "/v1/workspaces/cohort", token=t[u]).json()["status"]["recipient"] == rcpt
    r = s.request("GET", "/v1/workspaces/cohort", token=t["dave"])
    assert r.status_code == 403, r.text
    # a client cannot write the server-owned status
    doc = manifest("Workspace", "forged", {"members": ["alice"]})
    doc["status"] = {"recipient": "age1qqqq"}
    r = s.request("POST", "/v1/workspaces", json=doc)
    assert r.status_code == 201, r.text
    assert r.json()["status"]["recipient"] not in ("age1qqqq", rcpt)


@pytest.fixture(scope="module")
def uploaded(world):
    """alice's dataset patients and bob's visits, uploaded with the CLI; their sha256 by name."""
    s = world["s"]
    sums = {}
    for u, ds in (("alice", "patients"), ("bob", "visits")):
        p = ok(cli(world, u, "dataset", "upload", ds, "--workspace", "cohort", "--file", str(csv_file(world, ds, SECRETS[u])),
                   "--schema", "id:integer,city:text,age:integer"))
        assert "uploaded dataset" in p.stdout
        doc = s.request("GET", f"/v1/datasets/{ds}").json()
        assert doc["status"]["owner"] == u and doc["spec"]["workspace"] == "cohort"
        assert doc["spec"]["schema"][2] == {"name": "age", "type": "integer"}
        sums[ds] = doc["status"]["sha256"]
        assert set(doc["status"]) == {"owner", "sha256", "size", "uploadedAt"}
    return sums


def test_members_upload_and_each_decrypts_only_their_own(world, uploaded):
    s, sums = world["s"], uploaded
    for u, mine, other in (("alice", "patients", "visits"), ("bob", "visits", "patients")):
        for ds in (mine, other):
            out = world["base"] / f"{u}-{ds}.age"
            ok(cli(world, u, "dataset", "download", ds, "-o", str(out)))
            assert hashlib.sha256(out.read_bytes()).hexdigest() == sums[ds]
            assert out.read_bytes().startswith(b"age-encryption.org/v1\n")
            d = subprocess.run([AGE, "-d", "-i", str(identity(world, u)), str(out)], capture_output=True)
            if ds == mine:
                assert d.returncode == 0, d.stderr
                assert SECRETS[u].encode() in d.stdout and b"id,city,age\n" in d.stdout
            else:
                assert d.returncode != 0 and not d.stdout
    entries = audited(s, "dataset.upload", lambda e: e["resource"]["name"] == "patients")
    assert entries[-1]["outcome"] == "success" and entries[-1]["details"]["sha256"] == sums["patients"]
    assert audited(s, "dataset.download", lambda e: e["actor"]["user"] == "bob" and e["resource"]["name"] == "patients")


def test_a_member_who_owns_nothing_lists_and_reads_but_cannot_write(world, uploaded):
    s, t = world["s"], world["tokens"]
    r = s.request("GET", "/v1/datasets", token=t["carol"])
    assert r.status_code == 200, r.text
    assert {"patients", "visits"} <= {d["metadata"]["name"] for d in r.json()["items"]}
    assert s.request("GET", "/v1/datasets/patients", token=t["carol"]).status_code == 200
    r = s.request("GET", "/v1/datasets/patients/data", token=t["carol"])
    assert r.status_code == 200 and r.content.startswith(b"age-encryption.org/v1\n")
    # ... which her identity cannot open
    f = world["base"] / "carol.age"
    f.write_bytes(r.content)
    assert subprocess.run([AGE, "-d", "-i", str(identity(world, "carol")), str(f)], capture_output=True).returncode != 0
    # not the owner: no upload into, no delete of, someone else's dataset
    r = s.request("PUT", "/v1/datasets/patients/data?offset=0", token=t["carol"], data=b"age-encryption.org/v1\n-> X25519 a\n--- m\n")
    assert r.status_code == 403, r.text
    assert s.request("DELETE", "/v1/datasets/visits", token=t["alice"]).status_code == 403


def test_a_non_member_is_refused_and_audited(world, uploaded):
    s, t = world["s"], world["tokens"]
    calls = [("GET", "/v1/datasets", "list", ""), ("GET", "/v1/datasets/patients", "get", "patients"),
             ("GET", "/v1/datasets/patients/data", "get", "patients"),
             ("PUT", "/v1/datasets/patients/data?offset=0", "upload", "patients")]
    for method, path, verb, name in calls:
        r = s.request(method, path, token=t["dave"], data=b"age-encryption.org/v1\n-> X25519 a\n--- m\n" if method == "PUT" else None)
        assert r.status_code == 403, (path, r.text)
        assert "dave" in r.json()["error"]["message"]
    r = s.request("POST", "/v1/datasets", token=t["dave"],
                  json=manifest("Dataset", "sneaky", {"workspace": "cohort", "schema": [{"name": "x", "type": "text"}]}))
    assert r.status_code == 403, r.text
    p = cli(world, "dave", "dataset", "upload", "sneaky", "--workspace", "cohort", "--file",
            str(csv_file(world, "sneaky", "x")))
    assert p.returncode == 1 and "403" not in p.stdout
    denied = audited(s, "api.access", lambda e: e["outcome"] == "denied" and e.get("actor", {}).get("user") == "dave"
                     and e["details"].get("api", {}).get("kind") == "Dataset")
    assert {e["details"]["api"]["verb"] for e in denied} >= {"list", "get", "upload", "create"}


def test_members_are_managed_with_update_and_bind_on_the_workspace(world):
    s = world["s"]
    docs = [manifest("User", "wsadmin", {"type": "human", "policies": []}),
            manifest("Credential", "wsadmin-cli", {"user": "wsadmin", "type": "authToken"}),
            manifest("Policy", "wsadmin-rights", {"rules": [{"name": "update", "effect": "allow", "condition": {
                "match": 'ctx.request.api.kind == "Workspace" && ctx.request.api.verb in ["get", "update"]'}}]})]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    u = s.request("GET", "/v1/users/wsadmin").json()
    u["spec"]["policies"] = ["wsadmin-rights"]
    assert s.request("PUT", "/v1/users/wsadmin", json=manifest("User", "wsadmin", u["spec"])).status_code == 200
    tok = s.request("POST", "/v1/tokens", json={"credential": "wsadmin-cli"}).json()["token"]
    ws = s.request("GET", "/v1/workspaces/cohort", token=tok).json()
    spec = dict(ws["spec"], members=ws["spec"]["members"] + ["dave"])
    r = s.request("PUT", "/v1/workspaces/cohort", token=tok, json=manifest("Workspace", "cohort", spec))
    assert r.status_code == 403 and "bind Workspace/cohort" in r.json()["error"]["message"], r.text
    # removing a member needs update only; the recipient stays
    spec = dict(ws["spec"], members=["alice", "bob", "carol"], approvals="all")
    r = s.request("PUT", "/v1/workspaces/cohort", token=tok, json=manifest("Workspace", "cohort", spec))
    assert r.status_code == 200, r.text
    assert r.json()["status"]["recipient"] == ws["status"]["recipient"]
    # a member may not change the workspace
    spec["members"] = ["alice", "bob", "carol", "dave"]
    r = s.request("PUT", "/v1/workspaces/cohort", token=world["tokens"]["alice"], json=manifest("Workspace", "cohort", spec))
    assert r.status_code == 403


def test_without_a_schema_the_types_are_inferred(world):
    s = world["s"]
    f = world["base"] / "inferred.csv"
    f.write_text('n,score,label\n1,0.5,"a, quoted ""label"""\n2,,b\r\n-3,1e3,\n')
    ok(cli(world, "carol", "dataset", "upload", "inferred", "--workspace", "cohort", "--file", str(f)))
    doc = s.request("GET", "/v1/datasets/inferred").json()
    assert doc["spec"]["schema"] == [{"name": "n", "type": "integer"}, {"name": "score", "type": "real"},
                                     {"name": "label", "type": "text"}]
    assert doc["status"]["owner"] == "carol"
    d = world["base"] / "inferred.age"
    ok(cli(world, "carol", "dataset", "download", "inferred", "-o", str(d)))
    p = subprocess.run([AGE, "-d", "-i", str(identity(world, "carol")), str(d)], capture_output=True)
    assert p.returncode == 0 and p.stdout == f.read_bytes()
    assert s.request("DELETE", "/v1/datasets/inferred", token=world["tokens"]["carol"]).status_code == 200


def test_bad_uploads_are_refused(world):
    s, t = world["s"], world["tokens"]
    bad = world["base"] / "bad.csv"
    bad.write_text("id,city\n1,Paris\nx,Lyon\n")
    p = cli(world, "alice", "dataset", "upload", "bad", "--workspace", "cohort", "--file", str(bad), "--schema",
            "id:integer,city:text")
    assert p.returncode == 1 and "line 3" in p.stderr and "integer" in p.stderr
    assert s.request("GET", "/v1/datasets/bad").status_code == 404, "nothing created for a CSV that does not fit"
    bad.write_text("1,Paris\n")
    p = cli(world, "alice", "dataset", "upload", "bad", "--workspace", "cohort", "--file", str(bad), "--schema",
            "id:integer,city:text")
    assert p.returncode == 1 and "header" in p.stderr
    ds = manifest("Dataset", "raw", {"workspace": "cohort", "schema": [{"name": "x", "type": "text"}]})
    assert s.request("POST", "/v1/datasets", token=t["alice"], json=ds).status_code == 201
    r = s.request("PUT", "/v1/datasets/raw/data?offset=0", token=t["alice"], data=b"plain text, not an age file")
    assert r.status_code == 400 and "age" in r.json()["error"]["message"]
    for bad_header in (b"age-encryption.org/v1\n-> X25519 abc\n", b"age-encryption.org/v1\n--- mac\n",
                       b"age-encryption.org/v1\n-> scrypt salt 18\nbody\n--- mac\n"):
        r = s.request("PUT", "/v1/datasets/raw/data?offset=0", token=t["alice"], data=bad_header + b"payload")
        assert r.status_code == 400 and "header" in r.json()["error"]["message"], bad_header
    body = b"age-encryption.org/v1\n-> X25519 abc\nQUJD\n--- mac\npayload"
    assert s.request("PUT", "/v1/datasets/raw/data?offset=0", token=t["alice"], data=body).status_code == 200
    r = s.request("PUT", "/v1/datasets/raw/data?offset=99", token=t["alice"], data=b"x")
    assert r.status_code == 409 and f"offset={len(body)}" in r.json()["error"]["message"]
    r = s.request("POST", "/v1/datasets/raw/data", token=t["alice"], json={"sha256": "0" * 64, "size": len(body)})
    assert r.status_code == 400 and "again from offset 0" in r.json()["error"]["message"]
    assert "sha256" not in s.request("GET", "/v1/datasets/raw").json().get("status", {})
    ds["spec"]["workspace"] = "nowhere"
    r = s.request("POST", "/v1/datasets", json=dict(ds, metadata={"name": "lost"}))
    assert r.status_code == 400 and "does not exist" in r.text
    r = s.request("PUT", "/v1/datasets/raw", token=t["alice"], json=ds)
    assert r.status_code == 400 and "stays in its workspace" in r.text


def kill_api_and_wait(s):
    """kill -9 the api role; returns once the supervisor's new one serves."""
    pid = s.role_pid("api")
    os.kill(pid, 9)
    deadline = time.time() + 30
    while True:
        try:
            if s.role_pid("api") != pid and requests.get(s.url + "/readyz", verify=s.ca, timeout=2).status_code == 200:
                return
        except (AssertionError, requests.ConnectionError):
            pass
        assert time.time() < deadline, "the api role did not come back"
        time.sleep(0.1)


def test_kill9_of_the_api_role_mid_upload_loses_nothing_acknowledged(world, uploaded, tmp_path):
    s, t = world["s"], world["tokens"]
    plain = tmp_path / "big.csv"
    plain.write_bytes(b"n\n" + b"".join(b"%d\n" % i for i in range(1_500_000)))
    rcpt = s.request("GET", "/v1/workspaces/cohort").json()["status"]["recipient"]
    enc = tmp_path / "big.age"
    subprocess.run([AGE, "-r", rcpt, "-o", str(enc), str(plain)], check=True)
    data = enc.read_bytes()
    assert len(data) > PART
    ds = manifest("Dataset", "big", {"workspace": "cohort", "schema": [{"name": "n", "type": "integer"}]})
    assert s.request("POST", "/v1/datasets", token=t["bob"], json=ds).status_code == 201
    r = s.request("PUT", "/v1/datasets/big/data?offset=0", token=t["bob"], data=data[:PART])
    assert r.status_code == 200 and r.json()["offset"] == PART
    before = s.request("GET", "/v1/datasets/visits").json()["status"]
    kill_api_and_wait(s)
    # nothing half-written is visible: no data yet, and the acknowledged dataset is whole
    assert "sha256" not in s.request("GET", "/v1/datasets/big").json().get("status", {})
    assert s.request("GET", "/v1/datasets/big/data", token=t["bob"]).status_code == 404
    blobs = s.data_dir / "api" / "blobs" / "sha256"
    assert hashlib.sha256(data).hexdigest() not in os.listdir(blobs)
    assert s.request("GET", "/v1/datasets/visits").json()["status"] == before
    got = s.request("GET", "/v1/datasets/visits/data", token=t["bob"]).content
    assert hashlib.sha256(got).hexdigest() == before["sha256"]
    # the upload goes on from the last acknowledged offset
    for off in range(PART, len(data), PART):
        r = s.request("PUT", f"/v1/datasets/big/data?offset={off}", token=t["bob"], data=data[off:off + PART])
        assert r.status_code == 200 and r.json()["offset"] == min(off + PART, len(data)), r.text
    r = s.request("POST", "/v1/datasets/big/data", token=t["bob"],
                  json={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    assert r.status_code == 200, r.text
    assert s.request("GET", "/v1/datasets/big/data", token=t["carol"]).content == data


def test_kill9_during_a_commit_leaves_the_whole_dataset_or_none(world, uploaded, tmp_path):
    """Whenever the kill lands (before, during or after the commit), the
    Dataset either names a whole, durable blob or no data at all."""
    s, t = world["s"], world["tokens"]
    data = s.request("GET", "/v1/datasets/visits/data").content  # the same content as Dataset visits
    ds = manifest("Dataset", "racy", {"workspace": "cohort", "schema": [{"name": "n", "type": "integer"}]})
    assert s.request("POST", "/v1/datasets", token=t["bob"], json=ds).status_code == 201
    assert s.request("PUT", "/v1/datasets/racy/data?offset=0", token=t["bob"], data=data).status_code == 200
    sha = hashlib.sha256(data).hexdigest()

    def commit():
        try:
            s.request("POST", "/v1/datasets/racy/data", token=t["bob"], json={"sha256": sha, "size": len(data)})
        except requests.RequestException:
            pass
    th = threading.Thread(target=commit)
    th.start()
    kill_api_and_wait(s)
    th.join()
    status = s.request("GET", "/v1/datasets/racy").json().get("status", {})
    r = s.request("GET", "/v1/datasets/racy/data", token=t["bob"])
    if "sha256" in status:
        assert status["sha256"] == sha and r.status_code == 200 and r.content == data
    else:
        assert r.status_code == 404
    assert s.request("DELETE", "/v1/datasets/racy", token=t["bob"]).status_code == 200
    # visits has the same content: its blob stays
    assert hashlib.sha256(s.request("GET", "/v1/datasets/visits/data", token=t["bob"]).content).hexdigest() == sha


def test_no_plaintext_under_the_data_dir_and_delete_removes_the_blob(world, uploaded):
    s, t = world["s"], world["tokens"]
    seen = 0
    for root, _, files in os.walk(s.data_dir):
        for f in files:
            p = Path(root) / f
            if p.is_symlink() or not p.is_file():
                continue
            try:
                content = p.read_bytes()
            except FileNotFoundError:  # a journal SQLite removed meanwhile
                continue
            seen += 1
            for secret in SECRETS.values():
                assert secret.encode() not in content, f"{p} holds a plaintext value"
    assert seen > 5
    log = s.read_log()
    assert not any(secret in log for secret in SECRETS.values())
    sha = s.request("GET", "/v1/datasets/patients").json()["status"]["sha256"]
    blob = s.data_dir / "api" / "blobs" / "sha256" / sha
    assert blob.exists()
    r = s.request("DELETE", "/v1/datasets/patients", token=t["alice"])
    assert r.status_code == 200, r.text
    assert not blob.exists()
    assert s.request("GET", "/v1/datasets/patients/data", token=t["alice"]).status_code in (403, 404)
    assert audited(s, "resource.delete", lambda e: e["resource"] == {"kind": "Dataset", "name": "patients"})
