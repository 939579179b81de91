"""The searchable access log: the proxy appends its access records to
hash-chained segments whose heads are proxy.access audit entries; `cloister
audit show --user/--service/--decision` reads the records each entry commits
and prints one line (or object) per request, and an entry committing a
denial is labelled `denied`, not `success` (docs/audit.md)."""
import json
import time

import pytest

from conftest import access_records, run_cli
from proxied import Proxied


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Proxied(tmp_path_factory.mktemp("access") / "data")
    yield g
    g.stop()


def cli(g, *args):
    """Runs the CLI as the admin; returns stdout (asserting exit 0)."""
    r = run_cli(g.s, *args, env_extra={"CLOISTER_TOKEN": g.s.token})
    assert r.returncode == 0, r.stderr
    return r.stdout


def records_with(g, request_ids):
    """The proxy.access entries committing each of REQUEST_IDS, once all are
    committed: {request id: (entry, record as a dict)}."""
    deadline = time.time() + 15
    while True:
        found = {rec["requestId"]: (e, rec) for (e, rec) in access_records(g.s) if rec["requestId"] in request_ids}
        if len(found) == len(request_ids):
            return found
        assert time.time() < deadline, f"not in the audit log: {set(request_ids) - set(found)}"
        time.sleep(0.2)


def request_id(r):
    """The request id the proxy gave R: in the denial's JSON, or as the upstream received it."""
    body = r.json()
    if "requestId" in body:
        return body["requestId"]
    return next(v for (k, v) in body["headers"] if k.lower() == "x-cloister-request-id")


def test_denials_are_found_by_user_and_decision(gw):
    denied = [gw.get(f"/admin/secret-{i}", gw.alice) for i in range(3)]
    assert all(r.status_code == 403 for r in denied)
    allowed = gw.get("/docs/alice-allowed", gw.alice)
    assert allowed.status_code == 200
    bob = gw.get("/docs/bob-denied", gw.bob)
    assert bob.status_code == 403
    ids = {request_id(r) for r in denied}
    found = records_with(gw, ids | {request_id(allowed), request_id(bob)})

    out = cli(gw, "audit", "show", "--user", "alice", "--decision", "deny")
    lines = [ln for ln in out.splitlines() if "proxy.access" in ln]
    for rid in ids:
        line = next(ln for ln in lines if rid in ln)
        assert " alice " in line and " wiki GET /admin/secret-" in line and " 403 deny " in line
        assert "policy=devs-read rule=no-admin" in line
    assert not any("alice-allowed" in ln or "bob-denied" in ln for ln in lines), out

    js = json.loads(cli(gw, "audit", "show", "--user", "alice", "--decision", "deny", "-o", "json"))
    got = {x["requestId"]: x for x in js if x.get("action") == "proxy.access"}
    assert ids <= set(got)
    assert all(x["user"] == "alice" and x["decision"] == "deny" for x in got.values())
    one = got[next(iter(ids))]
    assert one["service"] == "wiki" and one["method"] == "GET" and one["status"] == 403
    assert one["policy"] == "devs-read" and one["rule"] == "no-admin" and one["index"] >= 0
    assert one["time"] == found[one["requestId"]][1]["time"]


def test_allowed_requests_are_found_by_service(gw):
    allowed = [gw.get(f"/docs/page-{i}", gw.alice) for i in range(2)]
    assert all(r.status_code == 200 for r in allowed)
    ids = {request_id(r) for r in allowed}
    records_with(gw, ids)
    js = json.loads(cli(gw, "audit", "show", "--service", "wiki", "--decision", "allow", "-o", "json"))
    got = {x["requestId"]: x for x in js if x.get("action") == "proxy.access"}
    assert ids <= set(got)
    assert all(x["service"] == "wiki" and x["decision"] == "allow" and x["status"] == 200 for x in got.values())
    out = cli(gw, "audit", "show", "--service", "wiki")
    assert all(any(rid in ln and " 200 allow " in ln for ln in out.splitlines()) for rid in ids), out
    # another service's name finds none of them
    assert not any(rid in cli(gw, "audit", "show", "--service", "nosuch") for rid in ids)


def test_batch_outcome_says_denied_when_a_record_is_a_denial(gw):
    r = gw.get("/admin/outcome-deny", gw.alice)
    assert r.status_code == 403
    ok = gw.get("/docs/outcome-allow", gw.alice)
    assert ok.status_code == 200
    found = records_with(gw, {request_id(r), request_id(ok)})
    entry, rec = found[request_id(r)]
    assert rec["decision"] == "deny"
    assert entry["outcome"] == "denied" and entry["details"]["denied"] >= 1
    # every entry's outcome follows from the records it commits
    by_entry = {}
    for (e, rec) in access_records(gw.s):
        by_entry.setdefault(e["details"]["head"], (e, []))[1].append(rec["decision"])
    assert by_entry
    for (e, decisions) in by_entry.values():
        assert len(decisions) == e["details"]["count"]
        denied = sum(d in ("deny", "unauthenticated") for d in decisions)
        assert e["details"]["denied"] == denied
        want = "denied" if denied else "failure" if any(d in ("invalid", "error") for d in decisions) else "success"
        assert e["outcome"] == want, e
    # an unauthenticated request is a denial too
    anon = gw.get("/docs/anonymous")
    assert anon.status_code == 401
    records_with(gw, {request_id(anon)})
    hits = json.loads(cli(gw, "audit", "show", "--decision", "unauthenticated", "--service", "wiki", "-o", "json"))
    assert any(x["requestId"] == request_id(anon) and x["path"] == "/docs/anonymous" and x["user"] is None
               for x in hits), hits
    # the log still verifies with the new outcomes
    out = cli(gw, "audit", "verify")
    assert out.startswith("verified ")


def test_decision_filter_is_checked(gw):
    r = run_cli(gw.s, "audit", "show", "--decision", "maybe", env_extra={"CLOISTER_TOKEN": gw.s.token})
    assert r.returncode != 0 and "--decision takes allow, deny" in r.stderr
