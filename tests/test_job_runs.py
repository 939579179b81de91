"""Job runs (issue 17, the run) against one real server with the real engine bundle: alice and bob each own a
dataset, carol is a member who owns nothing. A join + group-by proposed by alice is refused before any approval
and after bob's alone (naming who is missing); once both approved it runs in an attested sandbox, the kms role
releases the inputs' file keys after its own checks, and the result decrypted by alice equals sqlite3 on the
plaintext CSVs; bob decrypts it with the age tool, carol cannot. A second run of a maxRuns 1 job, a vetoed job, a
sandbox whose PCR0 the workspace's policy does not accept, and hostile queries get nothing; no plaintext reaches
the data dir; the receipts are in the audit log, which verifies."""
import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import audit_entries, audited, manifest, ok, run_cli, workspace_world, world_cli
from test_runner import channel, launch, remove

MARK_CITY = "Qx7MarkerLyonZ"     # plaintext markers: must never reach the data dir
MARK_NOTE = "Vy3SecretNoteW"
PATIENTS = "id,city,age\n" + "".join(f"{i},{[MARK_CITY, 'Paris', 'Nice'][i % 3]},{20 + i % 50}\n" for i in range(1, 301))
VISITS = "patient,cost,note\n" + "".join(f"{1 + i % 300},{i % 17},{MARK_NOTE}{i % 5}\n" for i in range(900))
QUERY = ("SELECT p.city, count(*) AS visits, sum(v.cost) AS cost FROM patients p JOIN visits v ON v.patient = p.id "
         "GROUP BY p.city ORDER BY p.city")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = workspace_world(tmp_path_factory, "job-runs", {"alice": True, "bob": True, "carol": True},
                        {"cohort": ["alice", "bob", "carol"]},
                        [("alice", "patients", "cohort", PATIENTS), ("bob", "visits", "cohort", VISITS)],
                        env={"CLOISTER_JOB_SECONDS": "20"})
    yield w
    w["s"].stop()


def cli(w, user, *args):
    return world_cli(w, user, *args)


def job(w, name):
    r = w["s"].request("GET", f"/v1/jobs/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def propose(w, name, query=QUERY, *extra):
    return ok(cli(w, "alice", "job", "propose", name, "--workspace", "cohort", "--query", query, "--input", "patients",
                  "--input", "visits", *extra))


def approve_all(w, name):
    for u in ("alice", "bob"):
        ok(cli(w, u, "job", "approve", name))


def start_run(w, name, user="alice"):
    return w["s"].request("POST", f"/v1/jobs/{name}/runs", token=w["tokens"][user], json={})


def sqlite3_answer(w, query):
    """The same query on the plaintext CSVs with the sqlite3 tool, as CSV with a header row."""
    tool = shutil.which("sqlite3")
    assert tool, "the sqlite3 tool is needed (Debian package sqlite3)"
    script = (".mode csv\n.headers on\n"
              "CREATE TABLE patients(id INTEGER, city TEXT, age INTEGER);\n"
              "CREATE TABLE visits(patient INTEGER, cost INTEGER, note TEXT);\n"
              f".import --skip 1 {w['base'] / 'patients.csv'} patients\n"
              f".import --skip 1 {w['base'] / 'visits.csv'} visits\n"
              f"{query};\n")
    p = subprocess.run([tool, ":memory:"], input=script, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return list(csv.reader(io.StringIO(p.stdout)))


def test_a_run_is_refused_until_every_owner_approved_and_names_who_is_missing(world):
    propose(world, "by-city", QUERY, "--recipient", "alice", "--recipient", "bob")
    r = start_run(world, "by-city")
    assert r.status_code == 409 and "alice" in r.json()["error"]["message"] and "bob" in r.json()["error"]["message"]
    ok(cli(world, "bob", "job", "approve", "by-city"))
    r = start_run(world, "by-city")
    msg = r.json()["error"]["message"]
    assert r.status_code == 409 and "waiting for alice" in msg and "bob" not in msg.split("waiting for")[1], msg
    # carol owns nothing: her approval is refused and does not count
    assert cli(world, "carol", "job", "approve", "by-city").returncode != 0
    assert start_run(world, "by-city").status_code == 409
    # only the author runs it
    ok(cli(world, "alice", "job", "approve", "by-city"))
    r = start_run(world, "by-city", user="bob")
    assert r.status_code == 403 and "run Job/by-city by user bob" in r.json()["error"]["message"]
    audited(world["s"], "job.run", lambda e: e["outcome"] == "denied" and e["resource"]["name"] == "by-city")


def wait_notified(w, user, type_, name):
    """USER's notification of TYPE_ about Job NAME, once it is there (a writer thread stores them)."""
    deadline = time.time() + 10
    while True:
        items = w["s"].request("GET", "/v1/notifications", token=w["tokens"][user]).json()["items"]
        got = [n for n in items if n["type"] == type_ and n["name"] == name]
        if got:
            return got
        assert time.time() < deadline, f"no {type_} notification about {name} for {user}"
        time.sleep(0.1)


def test_the_approved_job_runs_and_its_result_equals_sqlite3(world):
    p = ok(cli(world, "alice", "job", "run", "by-city", "--wait"))
    assert "succeeded" in p.stdout, p.stdout
    out = world["base"] / "by-city.csv"
    ok(cli(world, "alice", "job", "result", "by-city", "-o", str(out)))
    got = list(csv.reader(io.StringIO(out.read_text())))
    assert got == sqlite3_answer(world, QUERY)
    run = job(world, "by-city")["status"]["runs"][-1]
    assert run["state"] == "succeeded" and run["released"] is True and run["result"]["rows"] == 3
    # the receipt: the audit entry at the index the run names
    entry = world["s"].request("GET", f"/v1/audit/entries?start={run['receipt']}&end={run['receipt'] + 1}").json()
    receipt = json.loads(entry["entries"][0]["entry"])
    st = job(world, "by-city")["status"]
    assert receipt["action"] == "job.run.receipt" and receipt["details"]["digest"] == st["digest"]
    assert receipt["details"]["result"]["sha256"] == run["result"]["sha256"]
    assert receipt["details"]["evidenceSha256"] == run["evidenceSha256"]
    assert [i["sha256"] for i in receipt["details"]["inputs"]] == [i["sha256"] for i in st["digestInput"]["inputs"]]
    assert sorted(a["user"] for a in receipt["details"]["approvals"]) == ["alice", "bob"]
    # the kms role decided the release itself, and said so
    audited(world["s"], "kms.job.release", lambda e: e["outcome"] == "success" and e["resource"]["name"] == "by-city")
    assert f'"receipt":{run["receipt"]}' in ok(cli(world, "alice", "job", "show", "by-city")).stdout
    # the kms role counted the run in its own files, under the digest
    assert (world["s"].data_dir / "kms" / "job-runs" / st["digest"]).read_text().strip() == "1"
    # those concerned heard of it
    for user in ("alice", "bob"):
        wait_notified(world, user, "job.run.succeeded", "by-city")


def test_a_recipient_decrypts_with_the_age_tool_and_a_non_recipient_cannot(world):
    age = shutil.which("age")
    assert age, "the age tool is needed (Debian package age)"
    data = world["s"].request("GET", "/v1/jobs/by-city/result", token=world["tokens"]["carol"])
    assert data.status_code == 200
    f = world["base"] / "by-city.age"
    f.write_bytes(data.content)
    bob_key = world["config"]["bob"] / "cloister" / "keys" / "age-identity.txt"
    p = subprocess.run([age, "-d", "-i", str(bob_key), str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert list(csv.reader(io.StringIO(p.stdout))) == sqlite3_answer(world, QUERY)
    carol_key = world["config"]["carol"] / "cloister" / "keys" / "age-identity.txt"
    assert subprocess.run([age, "-d", "-i", str(carol_key), str(f)], capture_output=True).returncode != 0
    r = cli(world, "carol", "job", "result", "by-city", "-o", str(world["base"] / "carol.csv"))
    assert r.returncode != 0 and not (world["base"] / "carol.csv").exists()


def test_a_second_run_of_a_max_runs_1_job_is_refused(world):
    r = start_run(world, "by-city")
    assert r.status_code == 409 and "maxRuns" in r.json()["error"]["message"], r.text
    # a new proposal with more runs is a new digest: approved anew, it runs (the kms role counts per digest)
    propose(world, "again", "SELECT count(*) AS again FROM patients")
    approve_all(world, "again")
    ok(cli(world, "alice", "job", "run", "again", "--wait"))
    first = job(world, "again")["status"]["digest"]
    assert start_run(world, "again").status_code == 409
    propose(world, "again", "SELECT count(*) AS again FROM patients", "--max-runs", "2")
    assert start_run(world, "again").status_code == 409  # the approvals were cleared
    approve_all(world, "again")
    ok(cli(world, "alice", "job", "run", "again", "--wait"))
    st = job(world, "again")["status"]
    assert [r["state"] for r in st["runs"]] == ["succeeded", "succeeded"] and st["digest"] != first
    runs_dir = world["s"].data_dir / "kms" / "job-runs"
    assert (runs_dir / first).read_text().strip() == "1" and (runs_dir / st["digest"]).read_text().strip() == "1"


def test_a_veto_after_approval_stops_the_run(world):
    propose(world, "vetoed", "SELECT count(*) AS vetoed FROM visits")
    approve_all(world, "vetoed")
    ok(cli(world, "bob", "job", "veto", "vetoed", "--reason", "not this quarter"))
    r = start_run(world, "vetoed")
    assert r.status_code == 409 and "vetoed by bob" in r.json()["error"]["message"], r.text


def test_a_sandbox_the_workspace_policy_does_not_accept_gets_nothing(world):
    s = world["s"]
    policy = manifest("AttestationPolicy", "other-engine",
                      {"types": ["sandbox"], "allowSandbox": True, "maxAgeSeconds": 300,
                       "referenceValues": {"pcr0": ["ab" * 48]}})
    assert s.request("POST", "/v1/attestationpolicies", json=policy).status_code in (200, 201)
    ws = s.request("GET", "/v1/workspaces/cohort").json()
    ws["spec"]["attestationPolicy"] = "other-engine"
    r = s.request("PUT", "/v1/workspaces/cohort", json=ws)
    assert r.status_code == 200, r.text
    try:
        propose(world, "pinned", "SELECT count(*) AS pinned FROM patients")
        approve_all(world, "pinned")
        p = cli(world, "alice", "job", "run", "pinned", "--wait")
        assert p.returncode != 0 and "key release refused" in p.stdout + p.stderr, (p.stdout, p.stderr)
        run = job(world, "pinned")["status"]["runs"][-1]
        assert run["state"] == "failed" and run["released"] is False and "pcr0" in run["reason"], run
        audited(s, "kms.job.release", lambda e: e["outcome"] == "denied" and e["resource"]["name"] == "pinned")
        wait_notified(world, "bob", "key-release.refused", "pinned")
        assert s.request("GET", "/v1/jobs/pinned/result").status_code == 404
    finally:
        ws = s.request("GET", "/v1/workspaces/cohort").json()
        del ws["spec"]["attestationPolicy"]
        assert s.request("PUT", "/v1/workspaces/cohort", json=ws).status_code == 200


def test_an_engine_changed_behind_the_server_s_back_gets_nothing(world):
    """The runner measures the bundle at each launch: a copy changed after the server measured it runs with
    another PCR0, which the kms role refuses by itself (the digest names the engine it was approved for)."""
    propose(world, "tampered", "SELECT count(*) AS tampered FROM visits")
    approve_all(world, "tampered")
    yaml_path = world["s"].data_dir / "runner" / "job-engine" / "enclave.yaml"
    original = yaml_path.read_bytes()
    yaml_path.write_bytes(original + b"# changed\n")
    try:
        p = cli(world, "alice", "job", "run", "tampered", "--wait")
    finally:
        yaml_path.write_bytes(original)
    assert p.returncode != 0, p.stdout
    run = job(world, "tampered")["status"]["runs"][-1]
    assert run["state"] == "failed" and "pcr0: the sandbox's PCR0" in run["reason"] and not run["released"], run
    audited(world["s"], "kms.job.release", lambda e: e["outcome"] == "denied" and e["details"]["check"] == "pcr0")


def test_only_a_job_sandbox_reaches_a_run_s_keys_and_inputs(world, tmp_path):
    """An ordinary Enclave's agent cannot ask for a job's keys or inputs on its channel, and the API serves a
    run's calls to the runner's identity only: not to a member, not to an admin."""
    s = world["s"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "enclave.yaml").write_text('command: ["/bin/sleep", "600"]\n')
    bundle.chmod(0o755)
    replica, _ = launch(s, "plain", bundle)
    try:
        status, ans = channel(s, replica["name"], "POST", "/v1/job/release",
                              {"type": "sandbox", "evidence": "AA==", "publicKey": "AA=="})
        assert status == 403 and "runs no job" in ans["error"]["message"], ans
        status, ans = channel(s, replica["name"], "POST", "/v1/job/input", {"name": "patients", "offset": 0})
        assert status == 403, ans
    finally:
        remove(s, "plain")
    for token in (world["tokens"]["alice"], s.token):
        r = s.request("POST", "/v1/job-runs/by-city/1/release", token=token,
                      json={"type": "sandbox", "evidence": "AA==", "publicKey": "AA=="})
        assert r.status_code == 403 and "cloister-runner" in r.json()["error"]["message"], r.text
        r = s.request("GET", "/v1/job-runs/by-city/1/inputs/patients?offset=0", token=token)
        assert r.status_code == 403, r.text
    audited(s, "api.access", lambda e: e["outcome"] == "denied" and e["details"].get("api", {}).get("verb") == "run-io")


@pytest.mark.parametrize("name,query,reason", [
    ("q-attach", "ATTACH DATABASE '/tmp/evil.db' AS evil", "ATTACH"),
    ("q-readfile", "SELECT readfile('/etc/passwd')", "readfile"),
    ("q-extension", "SELECT load_extension('/tmp/evil.so')", "load_extension"),
    ("q-pragma", "PRAGMA writable_schema = 1", "PRAGMA"),
    ("q-endless", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
     "time limit"),
    ("q-rows", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", "row limit"),
    ("q-error", "SELECT nosuch FROM patients", "no such column"),
])
def test_hostile_and_failing_queries_end_as_failed_runs_with_nothing_of_a_result(world, name, query, reason):
    propose(world, name, query)
    approve_all(world, name)
    p = cli(world, "alice", "job", "run", name, "--wait")
    assert p.returncode != 0, p.stdout
    run = job(world, name)["status"]["runs"][-1]
    assert run["state"] == "failed" and reason in run["reason"] and "result" not in run, run
    audited(world["s"], "job.run.failed", lambda e: e["resource"]["name"] == name and reason in e["details"]["reason"])
    assert world["s"].request("GET", f"/v1/jobs/{name}/result").status_code == 404


def agent_pids(job_name):
    """Host pids of the agents running a run of JOB_NAME (argv: --job NAME:RUN:DIGEST)."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
        if b"--job" in argv and any(a.startswith(job_name.encode() + b":") for a in argv):
            pids.append(int(d))
    return pids


def test_a_run_whose_sandbox_dies_ends_as_failed_within_seconds(world):
    name = "dies"
    propose(world, name, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    approve_all(world, name)
    assert start_run(world, name).status_code == 202
    deadline = time.time() + 15
    while not (pids := agent_pids(name)):
        assert time.time() < deadline, "the run's agent never started"
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    while (run := job(world, name)["status"]["runs"][-1])["state"] == "running":
        assert time.time() < killed + 12, "the run still shows running after its sandbox died"
        time.sleep(0.1)
    assert run["state"] == "failed" and "the sandbox ended" in run["reason"] and "result" not in run, run
    assert job(world, name)["status"]["state"] == "failed"
    audited(world["s"], "job.run.failed", lambda e: e["resource"]["name"] == name)
    wait_notified(world, "bob", "job.run.failed", name)


def test_no_plaintext_anywhere_under_the_data_dir(world):
    assert job(world, "by-city")["status"]["state"] == "succeeded"
    found = []
    for f in world["s"].data_dir.rglob("*"):
        if f.is_file() and not f.is_symlink():
            try:
                data = f.read_bytes()
            except (PermissionError, OSError):
                continue
            for mark in (MARK_CITY, MARK_NOTE):
                if mark.encode() in data:
                    found.append((str(f), mark))
    assert not found, found


def test_the_audit_log_verifies_and_covers_the_receipts(world):
    s = world["s"]
    run = job(world, "by-city")["status"]["runs"][-1]
    receipts = [r for r in audit_entries(s, "job.run.receipt") if r["resource"]["name"] == "by-city"]
    assert len(receipts) == 1 and receipts[0]["details"]["result"]["sha256"] == run["result"]["sha256"]
    # verify checks every entry up to a checkpoint taken after the receipt
    assert s.request("GET", "/v1/audit/checkpoint").json()["size"] > run["receipt"]
    p = run_cli(s, "audit", "verify", env_extra={"CLOISTER_TOKEN": s.token})
    assert p.returncode == 0, p.stderr
