"""The audit log end to end: every API write and refusal becomes an entry,
the CLI verifies the signed tree and names the first bad index after any
tampering with the storage, a kill -9 of the audit role during heavy writes
loses no acknowledged write's entry, entries carry the role that appended
them, secrets never reach entries, and the API's
parameters are parsed strictly."""
import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from conftest import ROOT, Server, free_port, manifest, run_cli, wait_for


def cli(server, *args):
    return run_cli(server, *args, env_extra={"CLOISTER_TOKEN": server.token})


def all_entries(server):
    size = server.request("GET", "/v1/audit/checkpoint").json()["size"]
    out = []
    for start in range(0, size, 1000):
        r = server.request("GET", f"/v1/audit/entries?start={start}&end={min(size, start + 1000)}")
        assert r.status_code == 200, r.text
        out += [json.loads(e["entry"]) for e in r.json()["entries"]]
    return out


def test_every_write_and_refusal_is_an_entry(server):
    s = server
    assert s.request("POST", "/v1/groups", json=manifest("Group", "auditors", {})).status_code == 201
    r = s.request("PUT", "/v1/groups/auditors", json=manifest("Group", "auditors", {"policies": []}))
    assert r.status_code == 200, r.text
    assert s.request("POST", "/v1/apply", json={"items": [manifest("Group", "g2", {}),
                                                          manifest("Group", "g3", {})]}).status_code == 200
    assert s.request("DELETE", "/v1/groups/g3").status_code == 200
    assert s.request("GET", "/v1/groups", token="clst_" + "A" * 43).status_code == 401

    def seen():
        got = [(e["action"], e["resource"]["kind"], e["resource"]["name"], e["outcome"]) for e in all_entries(s)]
        return got if ("api.access", None, None, "denied") in got else None
    got = wait_for(seen)
    for want in [("resource.create", "Group", "auditors", "success"),
                 ("resource.update", "Group", "auditors", "success"),
                 ("resource.create", "Group", "g2", "success"),
                 ("resource.create", "Group", "g3", "success"),
                 ("resource.delete", "Group", "g3", "success")]:
        assert want in got, (want, got)
    admin_writes = [e for e in all_entries(s) if e["action"].startswith("resource.")]
    assert all(e["actor"]["user"] == "admin" and e["actor"]["ip"] == "127.0.0.1" for e in admin_writes)
    # the CLI agrees, and filters
    p = cli(s, "-o", "json", "audit", "show", "--action", "resource.delete", "--user", "admin")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert [(e["resource"]["name"]) for e in shown] == ["g3"]
    p = cli(s, "audit", "verify")
    assert p.returncode == 0, p.stderr


def test_a_write_whose_client_left_is_still_audited(shared_server):
    """A write the store applies after its client went away (an HTTP/2
    client that gave up and closed: its stream is gone before the answer)
    is audited like any other: the test holds the store's write lock while
    the client waits, lets it go only once the client has left, and finds
    the resource created and its resource.create entry."""
    s = shared_server
    name = "left-before-the-answer"
    db = sqlite3.connect(str(s.data_dir / "api" / "store.db"), timeout=10, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # the api role's write waits on the lock (its busy timeout is 5 s)
    try:
        p = subprocess.run(["curl", "-sS", "--http2", "--cacert", s.ca, "-m", "1", "-X", "POST",
                            "-H", f"Authorization: Bearer {s.token}", "-H", "Content-Type: application/json",
                            "-d", json.dumps(manifest("Group", name, {})), f"{s.url}/v1/groups"],
                           capture_output=True, text=True)
        assert p.returncode == 28, p  # curl gave up (timeout) and closed the connection, unanswered
    finally:
        db.execute("ROLLBACK")
        db.close()
    wait_for(lambda: s.request("GET", f"/v1/groups/{name}").status_code == 200)
    created = wait_for(lambda: [e for e in all_entries(s) if e["action"] == "resource.create"
                                and e["resource"]["name"] == name])
    assert created[0]["outcome"] == "success" and created[0]["actor"]["user"] == "admin"


def test_entries_are_canonical_and_secrets_never_appear(server):
    s = server
    secret_value = "s3cr3t-" + os.urandom(8).hex()
    r = s.request("POST", "/v1/secrets", json=manifest("Secret", "wiki-token", {"data": {"token": secret_value}}))
    assert r.status_code == 201, r.text
    wait_for(lambda: any(e["resource"]["name"] == "wiki-token" for e in all_entries(s)))
    size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
    raw = s.request("GET", f"/v1/audit/entries?start=0&end={size}").json()["entries"]
    for e in raw:
        text = e["entry"]
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    blob = (s.data_dir / "audit" / "audit.db").read_bytes() + (s.data_dir / "audit" / "audit.db-wal").read_bytes()
    for secret in (secret_value, s.token, s.token[5:]):
        assert secret.encode() not in blob
        assert all(secret not in e["entry"] for e in raw)
    log = s.read_log()
    assert secret_value not in log
    assert "PRIVATE KEY" not in log


def test_api_parameters_are_strict(shared_server):
    s = shared_server
    s.request("POST", "/v1/groups", json=manifest("Group", "param-probe", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 1)
    for path in ("/v1/audit/entries", "/v1/audit/entries?start=0", "/v1/audit/entries?start=0&end=1&x=1",
                 "/v1/audit/entries?start=01&end=2", "/v1/audit/entries?start=-1&end=2",
                 "/v1/audit/entries?start=0&end=1001", "/v1/audit/entries?start=5&end=5",
                 "/v1/audit/entries?start=0&start=0&end=1", "/v1/audit/entries?start=0&end=1%00",
                 "/v1/audit/proof/inclusion?index=0", "/v1/audit/proof/inclusion?index=9&size=9",
                 "/v1/audit/proof/inclusion?index=0&size=99999999", "/v1/audit/proof/consistency?from=0&to=1",
                 "/v1/audit/proof/consistency?from=2&to=1", "/v1/audit/proof/consistency?from=1&to=18446744073709551617"):
        r = s.request("GET", path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid"
    assert s.request("GET", "/v1/audit/checkpoint?size=1").status_code == 400
    assert s.request("GET", "/v1/audit/nothing").status_code == 404
    assert s.request("POST", "/v1/audit/checkpoint").status_code == 405
    assert s.request("GET", "/v1/audit/checkpoint", token="").status_code == 401


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 2.1.3.2, independently of the C code."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def test_proofs_verify_independently(shared_server):
    s = shared_server
    for i in range(5):
        s.request("POST", "/v1/groups", json=manifest("Group", f"proof-{i}", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 5)
    cp = s.request("GET", "/v1/audit/checkpoint").json()
    size = cp["size"]
    root = base64.b64decode(cp["checkpoint"].split("\n")[2])
    entries = s.request("GET", f"/v1/audit/entries?start=0&end={size}").json()["entries"]
    for e in entries:
        leaf = hashlib.sha256(b"\x00" + e["entry"].encode()).digest()
        p = s.request("GET", f"/v1/audit/proof/inclusion?index={e['index']}&size={size}").json()
        assert verify_inclusion(e["index"], size, leaf, [base64.b64decode(x) for x in p["proof"]], root)
    # the published key is the one in the data dir
    assert cp["key"] == (s.data_dir / "audit.pub").read_text().strip()


def tamper(db_path, how, size):
    db = sqlite3.connect(db_path)
    rows = dict(db.execute("SELECT idx, data FROM entries"))
    if how == "change":
        # the first entry naming admin: which index that is depends on the order of start-up events
        bad = min(i for i, data in rows.items() if b'"admin"' in data)
        db.execute("UPDATE entries SET data = ? WHERE idx = ?", (rows[bad].replace(b'"admin"', b'"mallory"'), bad))
    elif how == "delete":
        db.execute("DELETE FROM entries WHERE idx = 4")
        bad = 4
    elif how == "reorder":
        db.execute("UPDATE entries SET data = ? WHERE idx = 2", (rows[5],))
        db.execute("UPDATE entries SET data = ? WHERE idx = 5", (rows[2],))
        bad = 2
    elif how == "append":
        db.execute("INSERT INTO entries (idx, data) VALUES (?, ?)", (size, rows[0]))
        bad = size
    elif how == "truncate":
        db.execute("DELETE FROM entries WHERE idx >= 6")
        bad = 6
    db.commit()
    db.close()
    return bad


@pytest.mark.parametrize("how", ["change", "delete", "reorder", "append", "truncate"])
def test_tampering_is_caught_and_named(server, how):
    s = server
    for i in range(8):
        assert s.request("POST", "/v1/groups", json=manifest("Group", f"t-{i}", {})).status_code == 201
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 8)
    p = cli(s, "audit", "verify")
    assert p.returncode == 0, p.stderr
    size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
    bad = tamper(s.data_dir / "audit" / "audit.db", how, size)
    p = cli(s, "audit", "verify")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"failed at entry {bad}:" in p.stderr, p.stderr


def test_rewritten_history_is_caught_by_the_saved_checkpoint(server, tmp_path):
    """Even a tree rebuilt and re-signed with the real key (a new log in the
    same data dir) fails against the checkpoint the auditor saved."""
    s = server
    for i in range(4):
        s.request("POST", "/v1/groups", json=manifest("Group", f"h-{i}", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 4)
    assert cli(s, "audit", "checkpoint").returncode == 0
    s.stop()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(str(s.data_dir / "audit" / "audit.db") + suffix)
        except FileNotFoundError:
            pass
    s.start()
    for i in range(6):
        s.request("POST", "/v1/groups", json=manifest("Group", f"h2-{i}", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 6)
    p = cli(s, "audit", "verify")
    assert p.returncode == 1
    assert "history rewritten" in p.stderr and "failed at entry 0:" in p.stderr, p.stderr
    p = cli(s, "audit", "checkpoint")
    assert p.returncode == 1 and "not consistent" in p.stderr, p.stderr


def test_kill9_of_the_audit_role_loses_no_acknowledged_entry(server):
    """API writes go on while the audit role is killed with SIGKILL (only the
    roles may append, so the load comes through the API): every write the
    API acknowledged has its entry once the role is back, whatever the role
    had acknowledged to the API's event queue before it died."""
    s = server
    acked, lock, stop = set(), threading.Lock(), threading.Event()

    def writer(k):
        n = 0
        session = requests.Session()
        while not stop.is_set():
            name = f"k9-{k}-{n}"
            n += 1
            try:
                r = session.post(s.url + "/v1/groups", json=manifest("Group", name, {}), verify=s.ca, timeout=30,
                                 headers={"Authorization": f"Bearer {s.token}"})
            except requests.RequestException:
                continue
            if r.status_code == 201:
                with lock:
                    acked.add(name)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 20)
    # a checkpoint published (and saved by an auditor) during the writes
    p = cli(s, "audit", "checkpoint")
    assert p.returncode == 0, p.stderr
    before = len(acked)
    os.kill(s.role_pid("audit"), signal.SIGKILL)
    # writes go on being acknowledged while the audit role is down and restarting
    wait_for(lambda: len(acked) >= before + 20)
    stop.set()
    for t in threads:
        t.join()
    assert before > 0 and len(acked) > before, (before, len(acked))
    s.wait_healthy()

    def missing():
        stored = {e["resource"]["name"] for e in all_entries(s) if e["action"] == "resource.create"}
        return not (acked - stored)
    wait_for(missing, timeout=30)
    p = cli(s, "audit", "verify")
    assert p.returncode == 0, p.stderr
    assert "consistent with the saved checkpoint" in p.stdout
    assert "killed by" in s.read_log()
    assert "cloister_audit_events_dropped_total 0" in s.request("GET", "/metrics").text


def test_export_bundle_verifies_offline(shared_server, tmp_path):
    s = shared_server
    for i in range(3):
        s.request("POST", "/v1/groups", json=manifest("Group", f"export-{i}", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 3)
    out = tmp_path / "bundle.json"
    p = cli(s, "audit", "export", "--from", "0", "--to", "3", "--out", str(out))
    assert p.returncode == 0, p.stderr
    b = json.loads(out.read_text())
    assert len(b["entries"]) == 3 and b["checkpoint"].startswith("localhost/cloister/audit\n")
    pub = str(s.data_dir / "audit.pub")
    p = run_cli(s, "audit", "verify", "--bundle", str(out), "--key", pub, env_extra={"CLOISTER_SERVER": "https://127.0.0.1:1"})
    assert p.returncode == 0, p.stderr
    b["entries"][1]["entry"] = b["entries"][1]["entry"].replace('"time":"2', '"time":"1')
    out.write_text(json.dumps(b))
    p = run_cli(s, "audit", "verify", "--bundle", str(out), "--key", pub)
    assert p.returncode == 1 and "failed at entry 1:" in p.stderr, p.stderr


def doc_block(marker):
    text = (ROOT / "docs" / "audit.md").read_text()
    after = text.split(f"<!-- test:{marker} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_docs_independent_verification_steps(shared_server, tmp_path):
    """Runs exactly the shell and Python steps of docs/audit.md."""
    s = shared_server
    s.request("POST", "/v1/groups", json=manifest("Group", "docs-probe", {}))
    wait_for(lambda: s.request("GET", "/v1/audit/checkpoint").json()["size"] >= 1)
    env = dict(os.environ, SERVER=s.url, CA=s.ca, TOKEN=s.token, DATA_DIR=str(s.data_dir))
    p = subprocess.run(["bash", "-c", doc_block("sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Signature Verified Successfully" in p.stdout
    p = subprocess.run(["/usr/bin/python3", "-c", doc_block("py")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "checkpoint OK" in p.stdout and "inclusion OK" in p.stdout
    # the same steps refuse a changed entry and a forged checkpoint
    (tmp_path / "entry.json").write_text((tmp_path / "entry.json").read_text().replace('"time":"2', '"time":"1'))
    p = subprocess.run(["/usr/bin/python3", "-c", doc_block("py")], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode != 0 and "not in the signed tree" in p.stderr
    note = (tmp_path / "checkpoint.note").read_text().split("\n")
    note[1] = str(int(note[1]) + 1)
    (tmp_path / "checkpoint.note").write_text("\n".join(note))
    p = subprocess.run(["/usr/bin/python3", "-c", doc_block("py")], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode != 0 and "InvalidSignature" in p.stderr


def test_events_wait_while_the_audit_role_is_unavailable(server):
    """Writes are answered while the audit role is frozen; their events are
    queued, delivered once it is back, and none is dropped."""
    s = server
    pid = s.role_pid("audit")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.time()
        for i in range(3):
            assert s.request("POST", "/v1/groups", json=manifest("Group", f"frozen-{i}", {})).status_code == 201
        assert time.time() - started < 5
        # reads of the log wait for the role, but never hold up the API's event loops
        answers = []
        readers = [threading.Thread(target=lambda: answers.append(s.request("GET", "/v1/audit/checkpoint").status_code))
                   for _ in range(4)]
        for t in readers:
            t.start()
        time.sleep(0.3)
        started = time.time()
        assert s.request("GET", "/v1/whoami").status_code == 200
        assert time.time() - started < 1
        for t in readers:
            t.join()
        assert answers == [503] * 4
    finally:
        os.kill(pid, signal.SIGCONT)
    names = wait_for(lambda: {e["resource"]["name"] for e in all_entries(s)} >= {f"frozen-{i}" for i in range(3)})
    assert names
    metrics = s.request("GET", "/metrics").text
    assert "cloister_audit_events_dropped_total 0" in metrics


def test_large_entries_page_by_bytes(tmp_path):
    """Pages stop at 1 MiB of entries with more=true; the CLI goes on. The
    large entries are the API's refusals of 1000-byte paths to a caller
    without rights (api_authorize() decides before the path is parsed),
    each naming its path (only the roles append; the caps on one entry are
    unit-tested)."""
    s = Server(tmp_path / "data").start()
    try:
        r = s.request("POST", "/v1/apply", json={"items": [
            manifest("User", "no-rights", {"type": "human", "groups": []}),
            manifest("Credential", "no-rights-cli", {"user": "no-rights", "type": "authToken"})]})
        assert r.status_code == 200, r.text
        tok = s.request("POST", "/v1/tokens", json={"credential": "no-rights-cli"}).json()["token"]
        with requests.Session() as session:
            for i in range(900):
                r = session.get(f"{s.url}/v1/audit/segments/{i:04d}{'x' * 996}", headers={"Authorization": f"Bearer {tok}"},
                                verify=s.ca, timeout=30)
                assert r.status_code in (400, 403), r.text

        def big_enough():
            size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
            page = s.request("GET", f"/v1/audit/entries?start=0&end={min(size, 1000)}").json()
            return page if page["more"] else None
        page = wait_for(big_enough, timeout=30)
        assert 0 < len(page["entries"]) < 1000
        assert sum(len(e["entry"]) for e in page["entries"]) <= 1024 * 1024
        assert all(json.loads(e["entry"])["appender"] in ("api", "proxy", "kms") for e in page["entries"])
        size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
        p = cli(s, "audit", "verify")
        assert p.returncode == 0, p.stderr
        assert int(p.stdout.split("verified ", 1)[1].split()[0]) >= size > 100, p.stdout
    finally:
        s.stop()
