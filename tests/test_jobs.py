"""Jobs and signed approvals (issue 17) against one real server: alice and bob
each own a dataset uploaded with the CLI, carol is a member who owns nothing,
dave is no member. The digest is recomputed here independently (RFC 8785 by
hand + hashlib) from what each party knows itself; approvals are signed by
the CLI or by Python's `cryptography` (interop); forged and replayed
approvals are refused and audited; a change of the query clears them."""
import base64
import hashlib
import json
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import CLOISTER, audited, manifest, ok, run_cli, workspace_world, world_cli

USERS = ("alice", "bob", "carol", "dave", "erin")
QUERY = ("SELECT p.city, count(*) AS n, sum(v.cost) AS cost FROM patients p JOIN visits v ON v.patient = p.id "
         "WHERE p.city <> 'Z\u00fcrich\t\"x\"' GROUP BY p.city ORDER BY p.city")


def jcs(v):
    """RFC 8785 canonical JSON, written out here rather than taken from a library."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        assert abs(v) < 2 ** 53
        return str(v)
    if isinstance(v, str):
        named = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
        return '"' + "".join(named.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in v) + '"'
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    assert isinstance(v, dict)
    keys = sorted(v, key=lambda k: k.encode("utf-16-be"))  # UTF-16 code units, as RFC 8785 3.2.3 says
    return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in keys) + "}"


def approval_message(digest_hex):
    return b"cloister job approval v1\n" + digest_hex.encode() + b"\n"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A measured bundle the server takes as the job engine (CLOISTER_JOB_BUNDLE), and its PCR0."""
    b = tmp_path_factory.mktemp("engine-bundle")
    (b / "enclave.yaml").write_text('command: ["/bin/true"]\nport: 8080\n')
    (b / "cloister-job").write_bytes(b"stands for the engine executable\n")
    p = subprocess.run([str(CLOISTER), "enclave", "measure", str(b)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return b, p.stdout.split()[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, engine):
    """The server, users with keys registered (erin has none), workspace cohort (alice, bob, carol),
    alice's dataset patients and bob's visits uploaded with the CLI."""
    files = {"patients": "id,city\n1,Lyon\n2,Paris\n3,Lyon\n", "visits": "patient,cost\n1,10\n1,5\n2,7\n3,1\n",
             "tiny": "x\n1\n"}
    w = workspace_world(tmp_path_factory, "jobs", {u: u != "erin" for u in USERS},
                        {"cohort": ["alice", "bob", "carol"], "lab": ["alice", "erin"]},
                        [(u, ds, ws, files[ds]) for u, ds, ws in
                         (("alice", "patients", "cohort"), ("bob", "visits", "cohort"), ("alice", "tiny", "lab"))],
                        env={"CLOISTER_JOB_BUNDLE": str(engine[0])})
    w["engine"] = engine[1]
    yield w
    w["s"].stop()


cli = world_cli


def job(w, name):
    r = w["s"].request("GET", f"/v1/jobs/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def own_keys(w, user):
    """The public halves USER's own machine holds (not what the server says)."""
    return json.loads(ok(cli(w, user, "keys", "show", "-o", "json")).stdout)


def approval_key(w, user):
    pem = (w["config"][user] / "cloister" / "keys" / "approval-key.pem").read_bytes()
    return serialization.load_pem_private_key(pem, password=None)


def post_approval(w, user, name, signature, **extra):
    return w["s"].request("POST", f"/v1/jobs/{name}/approvals", token=w["tokens"][user],
                          json={"signature": base64.b64encode(signature).decode(), **extra})


def propose(w, user, name, query=QUERY, *extra):
    return cli(w, user, "job", "propose", name, "--workspace", "cohort", "--query", query, "--input", "patients",
               "--input", "visits", *extra)


@pytest.fixture(scope="module")
def by_city(world):
    ok(propose(world, "alice", "by-city", QUERY, "--recipient", "alice", "--recipient", "bob"))
    return job(world, "by-city")


def test_the_digest_is_recomputed_here_from_what_each_party_knows(world, by_city):
    s, st = world["s"], by_city["status"]
    sums = {d: s.request("GET", f"/v1/datasets/{d}").json()["status"]["sha256"] for d in ("patients", "visits")}
    # the sha256 of the ciphertext as downloaded, not as the server states it
    for d in sums:
        data = s.request("GET", f"/v1/datasets/{d}/data").content
        assert hashlib.sha256(data).hexdigest() == sums[d]
    expected = {"apiVersion": "cloister.dev/v1", "workspace": "cohort", "query": QUERY,
                "inputs": [{"name": "patients", "sha256": sums["patients"]}, {"name": "visits", "sha256": sums["visits"]}],
                "recipients": [own_keys(world, "alice")["recipient"], own_keys(world, "bob")["recipient"]],
                "engine": {"pcr0": world["engine"]}, "maxRuns": 1, "notAfter": None}
    assert st["digestInput"] == expected
    assert hashlib.sha256(jcs(expected).encode()).hexdigest() == st["digest"]
    assert st["requiredApprovers"] == ["alice", "bob"] and st["missingApprovers"] == ["alice", "bob"]
    assert st["state"] == "pending" and st["approvals"] == [] and st["author"] == "alice"
    assert audited(s, "resource.create", lambda e: e["resource"]["kind"] == "Job" and e["resource"]["name"] == "by-city")


def test_show_prints_what_an_approver_signs(world, by_city):
    out = ok(cli(world, "carol", "job", "show", "by-city")).stdout
    st = by_city["status"]
    for text in ("Z\u00fcrich", "patients  sha256 " + st["digestInput"]["inputs"][0]["sha256"],
                 "alice  " + st["digestInput"]["recipients"][0], world["engine"], st["digest"],
                 "missing:     alice, bob", "state:      pending"):
        assert text in out, (text, out)


def test_show_prints_a_long_query_whole_line_by_line(world):
    query = "SELECT p.city,\n       count(*) AS n\nFROM patients p\nWHERE p.city NOT IN ('" + "x" * 20000 + "')\nGROUP BY p.city"
    ok(propose(world, "alice", "long-query", query))
    out = ok(cli(world, "bob", "job", "show", "long-query")).stdout
    assert "\n".join("    " + line for line in query.split("\n")) in out


def test_approvals_count_only_from_required_approvers_with_their_own_key(world, by_city):
    s = world["s"]
    digest = by_city["status"]["digest"]
    # a run before any approval is refused naming who is missing (the author's run: jobs-run's endpoint)
    r = s.request("POST", "/v1/jobs/by-city/runs", token=world["tokens"]["alice"], json={})
    assert r.status_code == 409 and "waiting for alice, bob" in r.json()["error"]["message"], r.text
    # carol is a member who owns no input: her approval would not count, so it is refused
    p = cli(world, "carol", "job", "approve", "by-city")
    assert p.returncode == 1 and "carol is not a required approver" in p.stderr, p.stderr
    assert audited(s, "job.approve", lambda e: e["actor"]["user"] == "carol" and e["outcome"] == "denied")
    # bob approves with the CLI, which recomputed the digest itself, with the engine he measured himself
    p = cli(world, "bob", "job", "approve", "by-city", "--pcr0", "0" * 96)
    assert p.returncode == 1 and "not the " + "0" * 96 + " you expect" in p.stderr, p.stderr
    p = ok(cli(world, "bob", "job", "approve", "by-city", "--pcr0", world["engine"]))
    assert digest in p.stdout
    st = job(world, "by-city")["status"]
    assert [a["user"] for a in st["approvals"]] == ["bob"] and st["missingApprovers"] == ["alice"]
    assert st["state"] == "pending"
    r = s.request("POST", "/v1/jobs/by-city/runs", token=world["tokens"]["alice"], json={})
    assert r.status_code == 409 and "waiting for alice " in r.json()["error"]["message"], r.text
    assert "carol" not in r.json()["error"]["message"]
    # the signature bob's CLI made verifies with his public key alone
    pub = base64.b64decode(own_keys(world, "bob")["approval"])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    Ed25519PublicKey.from_public_bytes(pub).verify(base64.b64decode(st["approvals"][0]["signature"]),
                                                  approval_message(digest))
    # alice signs with Python's cryptography over the same message: the server accepts it (interop)
    r = post_approval(world, "alice", "by-city", approval_key(world, "alice").sign(approval_message(digest)))
    assert r.status_code == 200, r.text
    st = r.json()["status"]
    assert st["state"] == "approved" and st["missingApprovers"] == []
    assert audited(s, "job.approve", lambda e: e["actor"]["user"] == "alice" and e["outcome"] == "success"
                   and e["details"]["digest"] == digest)


def test_forged_and_replayed_approvals_are_refused_and_audited(world, by_city):
    s = world["s"]
    ok(propose(world, "alice", "other", "SELECT count(*) FROM patients"))
    ok(cli(world, "bob", "job", "approve", "other"))
    other = job(world, "other")["status"]
    bobs_other = base64.b64decode(other["approvals"][0]["signature"])
    target = job(world, "by-city")["status"]["digest"]
    forged = {
        "another job's signature": ("bob", bobs_other),
        "a key not registered to the approver": ("bob", Ed25519PrivateKey.generate().sign(approval_message(target))),
        "bob's signature sent by alice": ("alice", approval_key(world, "bob").sign(approval_message(target))),
        "a signature over a changed digest": ("bob", approval_key(world, "bob").sign(approval_message("0" * 64))),
    }
    for why, (user, sig) in forged.items():
        r = post_approval(world, user, "by-city", sig)
        assert r.status_code == 403, (why, r.text)
        assert "does not verify" in r.json()["error"]["message"], why
    entries = audited(s, "job.approve", lambda e: e["outcome"] == "denied" and "does not verify" in e["details"]["reason"])
    assert len(entries) >= len(forged)
    # nothing of it was recorded
    assert [a["user"] for a in job(world, "by-city")["status"]["approvals"]] == ["bob", "alice"]
    # a client that names the digest it reviewed hears that the job changed
    r = post_approval(world, "bob", "by-city", bobs_other, digest=other["digest"])
    assert r.status_code == 409 and target in r.json()["error"]["message"], r.text


def test_changing_the_query_clears_approvals_and_old_signatures_no_longer_verify(world, by_city):
    before = job(world, "by-city")["status"]
    assert before["state"] == "approved"
    old_bob = base64.b64decode(before["approvals"][0]["signature"])
    p = ok(propose(world, "alice", "by-city", QUERY + " LIMIT 10", "--recipient", "alice", "--recipient", "bob"))
    assert "changed" in p.stdout
    after = job(world, "by-city")["status"]
    assert after["digest"] != before["digest"] and after["digestInput"]["query"].endswith("LIMIT 10")
    assert after["approvals"] == [] and after["missingApprovers"] == ["alice", "bob"] and after["state"] == "pending"
    assert hashlib.sha256(jcs(after["digestInput"]).encode()).hexdigest() == after["digest"]
    r = post_approval(world, "bob", "by-city", old_bob)
    assert r.status_code == 403 and "does not verify" in r.json()["error"]["message"]


def test_reject_revoke_and_veto(world, by_city):
    s = world["s"]
    ok(propose(world, "alice", "signoff", "SELECT city FROM patients"))
    p = ok(cli(world, "bob", "job", "reject", "signoff", "--reason", "city is too identifying"))
    st = job(world, "signoff")["status"]
    assert st["state"] == "rejected" and st["rejections"][0]["user"] == "bob"
    assert st["rejections"][0]["reason"] == "city is too identifying"
    # approving afterwards replaces bob's rejection; revoking withdraws the approval
    ok(cli(world, "bob", "job", "approve", "signoff"))
    ok(cli(world, "alice", "job", "approve", "signoff"))
    st = job(world, "signoff")["status"]
    assert st["state"] == "approved" and st["rejections"] == []
    ok(cli(world, "bob", "job", "revoke", "signoff"))
    st = job(world, "signoff")["status"]
    assert [a["user"] for a in st["approvals"]] == ["alice"] and st["missingApprovers"] == ["bob"]
    p = cli(world, "bob", "job", "revoke", "signoff")
    assert p.returncode == 1 and "no approval" in p.stderr
    # carol owns no input: no veto; alice owns one: her veto stops the job
    p = cli(world, "carol", "job", "veto", "signoff", "--reason", "no")
    assert p.returncode == 1 and "owner of one of its inputs" in p.stderr, p.stderr
    ok(cli(world, "bob", "job", "approve", "signoff"))
    assert job(world, "signoff")["status"]["state"] == "approved"
    ok(cli(world, "alice", "job", "veto", "signoff", "--reason", "changed my mind"))
    st = job(world, "signoff")["status"]
    assert st["state"] == "rejected" and st["vetoes"][0]["user"] == "alice"
    assert [a["user"] for a in st["approvals"]] == ["bob"]
    for action in ("job.reject", "job.revoke", "job.veto"):
        assert audited(s, action, lambda e: e["resource"]["name"] == "signoff" and e["outcome"] == "success")


def test_only_members_propose_and_see_jobs_and_recipients_need_keys(world, by_city):
    s, t = world["s"], world["tokens"]
    p = propose(world, "dave", "sneaky", "SELECT 1")
    assert p.returncode == 1
    assert s.request("GET", "/v1/jobs/by-city", token=t["dave"]).status_code == 403
    assert s.request("GET", "/v1/jobs", token=t["dave"]).status_code == 403  # a member of no workspace
    assert "by-city" in {j["metadata"]["name"] for j in s.request("GET", "/v1/jobs", token=t["carol"]).json()["items"]}
    # bob may not change alice's job
    spec = dict(job(world, "by-city")["spec"], query="SELECT * FROM patients")
    r = s.request("PUT", "/v1/jobs/by-city", token=t["bob"], json=manifest("Job", "by-city", spec))
    assert r.status_code == 403, r.text
    # every member is a recipient by default; erin registered no age key
    p = cli(world, "alice", "job", "propose", "lab-job", "--workspace", "lab", "--query", "SELECT x FROM tiny",
            "--input", "tiny")
    assert p.returncode == 1 and "user erin has no registered age key" in p.stderr, p.stderr
    # an input of another workspace, or a recipient who is no member
    p = cli(world, "alice", "job", "propose", "mixed", "--workspace", "cohort", "--query", "SELECT 1",
            "--input", "tiny")
    assert p.returncode == 1 and "Dataset tiny belongs to another workspace" in p.stderr, p.stderr
    p = propose(world, "alice", "leak", "SELECT 1", "--recipient", "dave")
    assert p.returncode == 1 and "dave is not a member" in p.stderr, p.stderr
    # a query that would not read as it runs (Trojan Source): refused before anyone is asked to sign it
    p = propose(world, "alice", "trojan", "SELECT city FROM patients -- \u202e; DROP")
    assert p.returncode == 1 and "holds U+202E" in p.stderr, p.stderr
    # GET /v1/jobs/engine is the engine's measurement: no Job may take its name
    p = propose(world, "alice", "engine", "SELECT 1")
    assert p.returncode == 1 and "the name engine is reserved" in p.stderr, p.stderr
    assert "pcr0" in s.request("GET", "/v1/jobs/engine").json()
    p = propose(world, "alice", "late", "SELECT 1", "--not-after", "2020-01-01T00:00:00Z")
    assert p.returncode == 1 and "2020-01-01T00:00:00Z has passed" in p.stderr, p.stderr
    # each refused proposal is an audit entry naming why
    assert audited(s, "api.access", lambda e: e["outcome"] == "denied" and e["details"].get("api", {}).get("name") == "leak")
    lines = ok(cli(world, "carol", "job", "list")).stdout.splitlines()
    assert lines[0].split()[:5] == ["NAME", "WORKSPACE", "STATE", "INPUTS", "MISSING"], lines
    assert any(l.split()[:2] == ["by-city", "cohort"] for l in lines), lines


def notified(w, user, type_, name, pred=lambda n: True):
    """USER's notifications of TYPE_ about Job NAME, once there is one (they are stored by a writer thread)."""
    deadline = time.time() + 10
    while True:
        r = w["s"].request("GET", "/v1/notifications", token=w["tokens"][user])
        assert r.status_code == 200, r.text
        got = [n for n in r.json()["items"] if n["type"] == type_ and n["kind"] == "Job" and n["name"] == name and pred(n)]
        if got:
            return got
        assert time.time() < deadline, f"no {type_} notification about {name} for {user}"
        time.sleep(0.1)


def test_those_involved_are_notified(world):
    ok(propose(world, "alice", "notes", "SELECT count(*) FROM visits"))
    digest = job(world, "notes")["status"]["digest"]
    for u in ("alice", "bob"):  # every required approver is asked, with the digest to check
        assert notified(world, u, "job.approval-requested", "notes")[0]["details"]["digest"] == digest
    ok(cli(world, "bob", "job", "approve", "notes"))
    ok(cli(world, "alice", "job", "approve", "notes"))
    for u in ("alice", "bob"):
        notified(world, u, "job.approved", "notes")
    ok(cli(world, "bob", "job", "veto", "notes", "--reason", "not this week"))
    assert notified(world, "alice", "job.vetoed", "notes")[0]["details"] == {"digest": digest, "by": "bob",
                                                                              "reason": "not this week"}
    ok(propose(world, "alice", "notes", "SELECT count(*) FROM patients"))  # a new digest asks again
    new = job(world, "notes")["status"]["digest"]
    notified(world, "bob", "job.approval-requested", "notes", lambda n: n["details"]["digest"] == new)
    ok(cli(world, "bob", "job", "reject", "notes", "--reason", "too broad"))
    notified(world, "alice", "job.rejected", "notes", lambda n: n["details"]["reason"] == "too broad")
    # carol is neither author nor required approver
    r = world["s"].request("GET", "/v1/notifications", token=world["tokens"]["carol"])
    assert not [n for n in r.json()["items"] if n["kind"] == "Job"]


def test_a_refresh_keeps_approvals_unless_what_the_digest_covers_changed(world):
    ok(propose(world, "alice", "refresh", "SELECT count(*) FROM patients"))  # every member a recipient
    ok(cli(world, "bob", "job", "approve", "refresh"))
    before = job(world, "refresh")["status"]
    assert before["digestInput"]["recipients"][2] == own_keys(world, "carol")["recipient"]
    # the same proposal again: the same digest, bob's approval kept
    ok(propose(world, "alice", "refresh", "SELECT count(*) FROM patients"))
    same = job(world, "refresh")["status"]
    assert same["digest"] == before["digest"] and [a["user"] for a in same["approvals"]] == ["bob"]
    # carol, a recipient, replaces her keys: the next refresh is a new digest and clears the approval
    ok(cli(world, "carol", "keys", "init", "--force"))
    ok(cli(world, "carol", "keys", "register"))
    # until the job is refreshed, an approver's CLI sees the stale key and refuses to sign
    p = cli(world, "alice", "job", "approve", "refresh")
    assert p.returncode == 1 and 'differs from this machine\'s in "recipients"' in p.stderr, p.stderr
    ok(propose(world, "alice", "refresh", "SELECT count(*) FROM patients"))
    after = job(world, "refresh")["status"]
    assert after["digestInput"]["recipients"][2] == own_keys(world, "carol")["recipient"]
    assert after["digest"] != before["digest"] and after["approvals"] == [] and after["state"] == "pending"
    assert hashlib.sha256(jcs(after["digestInput"]).encode()).hexdigest() == after["digest"]
    # bob uploads visits again (a new encryption: another sha256): the next refresh is a new digest too
    ok(cli(world, "bob", "job", "approve", "refresh"))
    # the job still names visits as an input: the delete names it and needs --force
    p = cli(world, "bob", "delete", "dataset", "visits")
    assert p.returncode == 1 and "Job/refresh (spec.inputs)" in p.stderr, p.stderr
    ok(cli(world, "bob", "delete", "dataset", "visits", "--force"))
    ok(cli(world, "bob", "dataset", "upload", "visits", "--workspace", "cohort", "--file", str(world["base"] / "visits.csv")))
    p = cli(world, "alice", "job", "approve", "refresh")
    assert p.returncode == 1 and 'differs from this machine\'s in "inputs"' in p.stderr, p.stderr
    ok(propose(world, "alice", "refresh", "SELECT count(*) FROM patients"))
    again = job(world, "refresh")["status"]
    assert again["digestInput"]["inputs"][1]["sha256"] != after["digestInput"]["inputs"][1]["sha256"]
    assert again["digest"] != after["digest"] and again["approvals"] == []


def test_with_approvals_all_every_member_approves_and_only_owners_veto(world):
    ok(run_cli(world["s"], "workspace", "create", "council", "--member", "alice", "--member", "bob", "--member",
               "carol", "--approvals", "all", env_extra={"CLOISTER_TOKEN": world["s"].token},
               config_home=world["base"] / "admin-config"))
    f = world["base"] / "minutes.csv"
    f.write_text("id,topic\n1,budget\n")
    ok(cli(world, "bob", "dataset", "upload", "minutes", "--workspace", "council", "--file", str(f)))
    ok(cli(world, "alice", "job", "propose", "topics", "--workspace", "council", "--query", "SELECT topic FROM minutes",
           "--input", "minutes"))
    st = job(world, "topics")["status"]
    assert st["requiredApprovers"] == ["alice", "bob", "carol"] and st["inputOwners"] == ["bob"]
    for u in ("carol", "bob"):
        ok(cli(world, u, "job", "approve", "topics"))
    assert job(world, "topics")["status"]["missingApprovers"] == ["alice"]
    p = cli(world, "carol", "job", "veto", "topics", "--reason", "no")  # she approves, but owns nothing to veto
    assert p.returncode == 1 and "owner of one of its inputs" in p.stderr, p.stderr
    ok(cli(world, "alice", "job", "approve", "topics"))
    assert job(world, "topics")["status"]["state"] == "approved"


def test_apply_proposes_too_and_the_same_manifest_changes_nothing(world):
    f = world["base"] / "job.yaml"
    f.write_text("apiVersion: cloister.dev/v1\nkind: Job\nmetadata: {name: applied}\n"
                 "spec: {workspace: cohort, query: 'SELECT id FROM patients', inputs: [patients], maxRuns: 2}\n")
    p = ok(cli(world, "alice", "apply", "-f", str(f)))
    assert "job/applied created" in p.stdout.lower(), p.stdout
    st = job(world, "applied")["status"]
    assert st["digestInput"]["maxRuns"] == 2 and st["requiredApprovers"] == ["alice"]
    assert hashlib.sha256(jcs(st["digestInput"]).encode()).hexdigest() == st["digest"]
    ok(cli(world, "alice", "job", "approve", "applied"))
    p = ok(cli(world, "alice", "apply", "-f", str(f)))
    assert "unchanged" in p.stdout, p.stdout
    assert job(world, "applied")["status"]["state"] == "approved"
