"""The access log's segments (docs/audit.md, "Access-log segments"): each
proxy thread appends its records to a hash-chained segment file in the
proxy's subtree and ships the same bytes, with the chain head as a
proxy.access audit entry, to the audit role, which keeps its own copy.
`cloister audit show` reads the records from the audit role's copy and
`cloister audit verify` recomputes every chain against the committed heads,
naming the segment, the index and the requestId of a changed, removed or
reordered record. A failClosed Service's request is forwarded only once
its admission record (status 0) is committed. A slow disk holds up the
proxy's access-log writer thread, not the requests."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import access_records, audit_entries, manifest, run_cli, wait_for
from proxied import Proxied


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Proxied(tmp_path_factory.mktemp("segments") / "data")
    g.apply(manifest("Service", "ledger", {"upstream": {"url": f"http://127.0.0.1:{g.up.port}"},
                                           "policies": ["devs-read"], "failClosed": True}))
    yield g
    g.stop()


def cli(g, *args):
    """Runs the CLI as the admin; returns the CompletedProcess."""
    return run_cli(g.s, *args, env_extra={"CLOISTER_TOKEN": g.s.token})


def upstream_request_id(r):
    """The request id the upstream received (the echo upstream answers the headers it got)."""
    return next(v for (k, v) in r.json()["headers"] if k.lower() == "x-cloister-request-id")


def committed(g, rid, status=None):
    """The records of request RID the log's heads commit, polled until one (with STATUS, if given) is there."""
    deadline = time.time() + 15
    while not (got := [rec for (_, rec) in access_records(g.s)
                       if rec["requestId"] == rid and status in (None, rec["status"])]):
        assert time.time() < deadline, f"request {rid} is not in the access log"
        time.sleep(0.2)
    return got


def segment_files(g, rid):
    """(the audit role's copy, the proxy's own file) of the segment holding request RID, and the record's index."""
    for (e, rec) in access_records(g.s):
        if rec["requestId"] == rid:
            d = e["details"]
            lines = (g.s.data_dir / "audit" / "access" / d["segment"]).read_bytes().splitlines(keepends=True)
            index = next(i for (i, line) in enumerate(lines) if rid.encode() in line)
            return (g.s.data_dir / "audit" / "access" / d["segment"], g.s.data_dir / "proxy" / "access" / d["segment"],
                    index)
    raise AssertionError(f"{rid} not committed")


def test_proxied_requests_appear_in_audit_show_from_segments(gw):
    rs = [gw.get(f"/docs/segment-{i}", gw.alice) for i in range(3)]
    assert all(r.status_code == 200 for r in rs)
    ids = [upstream_request_id(r) for r in rs]
    for rid in ids:
        committed(gw, rid)
    out = cli(gw, "audit", "show", "--service", "wiki", "-o", "json")
    assert out.returncode == 0, out.stderr
    got = {x["requestId"]: x for x in json.loads(out.stdout) if x.get("action") == "proxy.access"}
    for (i, rid) in enumerate(ids):
        assert got[rid]["path"] == f"/docs/segment-{i}" and got[rid]["status"] == 200
        assert got[rid]["user"] == "alice" and got[rid]["decision"] == "allow"
    # the proxy wrote the same records to its own file, in its own subtree
    (audit_copy, proxy_file, index) = segment_files(gw, ids[0])
    assert proxy_file.read_bytes().startswith(audit_copy.read_bytes()[:200])
    assert ids[0].encode() in proxy_file.read_bytes().splitlines()[index]
    # every entry names its segment's head after the records it commits
    head = next(e for (e, rec) in access_records(gw.s) if rec["requestId"] == ids[0])["details"]
    assert len(head["head"]) == 64 and head["records"] >= head["first"] + head["count"]
    out = cli(gw, "audit", "verify")
    assert out.returncode == 0 and out.stdout.startswith("verified ") and " access records in " in out.stdout, out


def test_fail_closed_record_is_committed_before_the_response(gw):
    deadline = time.time() + 10
    while (r := gw.get("/docs/ledger-warm", gw.alice, host="ledger.localhost")).status_code != 200:
        assert time.time() < deadline, r.text
        time.sleep(0.05)
    for i in range(3):
        r = gw.get(f"/docs/ledger-{i}", gw.alice, host="ledger.localhost")
        assert r.status_code == 200, r.text
        rid = upstream_request_id(r)
        # read once, right after the answer: no waiting for the once-a-second flush
        admitted = [rec for (_, rec) in access_records(gw.s) if rec["requestId"] == rid]
        assert admitted and admitted[0]["status"] == 0 and admitted[0]["decision"] == "allow", admitted
        assert admitted[0]["service"] == "ledger" and admitted[0]["path"] == f"/docs/ledger-{i}"
        # and the answered record follows it
        assert committed(gw, rid, status=200)[0]["bytes"] > 0


def verify_fails(g, *expect):
    out = cli(g, "audit", "verify")
    assert out.returncode == 1, out
    for x in expect:
        assert x in out.stderr, out.stderr
    return out.stderr


def test_a_changed_record_is_found_by_verify(gw):
    r = gw.get("/docs/to-be-changed", gw.alice)
    rid = upstream_request_id(r)
    committed(gw, rid)
    (path, _, index) = segment_files(gw, rid)
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    segment = path.name
    assert index > 0 or index + 1 < len(lines)  # the removal or the swap below is exercised
    try:
        # a record changed in place: the path of the request
        lines[index] = lines[index].replace(b"/docs/to-be-changed", b"/docs/to-be-hidden!")
        path.write_bytes(b"".join(lines))
        err = verify_fails(gw, f"segment {segment}, record {index} (requestId {rid})", "changed")
        # a record removed: the one after it no longer follows
        if index + 1 < len(original.splitlines()):
            removed = original.splitlines(keepends=True)
            nxt = json.loads(removed[index + 1][65:])[1]
            del removed[index]
            path.write_bytes(b"".join(removed))
            verify_fails(gw, f"segment {segment}, record {index} (requestId {nxt})")
        # two records swapped
        if index > 0:
            swapped = original.splitlines(keepends=True)
            swapped[index - 1], swapped[index] = swapped[index], swapped[index - 1]
            path.write_bytes(b"".join(swapped))
            verify_fails(gw, f"segment {segment}, record {index - 1} (requestId {rid})")
        # records cut off the end
        path.write_bytes(b"".join(original.splitlines(keepends=True)[:index]))
        verify_fails(gw, f"segment {segment}, record {index}", "missing")
        assert "verification failed" in err
    finally:
        path.write_bytes(original)
    out = cli(gw, "audit", "verify")
    assert out.returncode == 0, out


def test_a_slow_disk_holds_up_the_log_writer_not_the_requests(gw):
    """Every write of the proxy's access-log writer thread is made to take
    3 s (strace's fault injection, attached to that thread alone):
    meanwhile requests keep being answered at once (the loop keeps its
    records pending while the writer holds its other buffer, less than the
    128 KiB that would make it wait, instead of waiting for the disk), and
    their records reach the log in order once the disk catches up."""
    proxy = gw.s.role_pid("proxy")
    tid = next(int(t.name) for t in Path(f"/proc/{proxy}/task").iterdir()
               if (t / "comm").read_text().strip() == "proxy-accesslog")
    trace = gw.s.data_dir.parent / "writer.strace"
    tracer = subprocess.Popen(["strace", "-p", str(tid), "-e", "trace=write",
                               "-e", "inject=write:delay_enter=3000000", "-o", str(trace)],
                              stderr=subprocess.PIPE, text=True)
    ids, slowest = [], 0.0
    try:
        assert "attached" in tracer.stderr.readline(), "strace did not attach to the writer thread"
        # through the first flush (<= 1 s) and its 3 s write, a request every 15 ms at most: at most 300
        # records (about 80 KB) wait meanwhile, less than a buffer
        end = time.monotonic() + 4.5
        while time.monotonic() < end:
            started = time.monotonic()
            r = gw.get(f"/docs/slow-disk-{len(ids)}", gw.alice)
            slowest = max(slowest, time.monotonic() - started)
            assert r.status_code == 200, r.text
            ids.append(upstream_request_id(r))
            time.sleep(max(0.0, started + 0.015 - time.monotonic()))
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    assert "write(" in trace.read_text(), "the writer never reached the slowed write"
    assert slowest < 1.0, f"a request waited {slowest:.2f} s for the disk"
    # each proxy thread has its segment (a request id starts with its thread's prefix), committed in order:
    # once a thread's last record is committed, all of its records are
    threads = {rid[:16] for rid in ids}
    for thread in threads:
        committed(gw, [x for x in ids if x.startswith(thread)][-1])
    order = [rec["requestId"] for (_, rec) in access_records(gw.s) if rec["requestId"] in set(ids)]
    for thread in threads:
        assert [x for x in order if x.startswith(thread)] == [x for x in ids if x.startswith(thread)], \
            "a thread's records are in the order of its requests"
    out = cli(gw, "audit", "verify")
    assert out.returncode == 0 and out.stdout.startswith("verified "), out


def test_the_log_writer_and_the_audit_role_run_behind_the_requests(gw):
    """The threads that deliver what requests leave behind (the access-log
    writer, audit delivery, the whole audit role) run at nice 10
    (basic/background.h), the proxy's event loops at 0: on a busy machine
    the requests go first."""
    def nice(pid, tid):
        return int((Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]).split()[16])

    def threads(role):
        pid = gw.s.role_pid(role)
        return {int(t.name): ((t / "comm").read_text().strip(), nice(pid, t.name))
                for t in Path(f"/proc/{pid}/task").iterdir()}

    proxy = threads("proxy")
    assert [n for (comm, n) in proxy.values() if comm == "proxy-accesslog"] == [10], proxy
    assert 10 in [n for (comm, n) in proxy.values() if comm == "proxy"], "audit delivery runs behind"
    assert 0 in [n for (comm, n) in proxy.values() if comm == "proxy"], "the event loops run at 0"
    assert {n for (_, n) in threads("audit").values()} == {10}
    api = gw.s.role_pid("api")
    assert threads("api")[api][1] == 0, "the api role's own threads keep their priority"


class SyncTrace:
    """strace of every thread of process PID, its fdatasync calls with their files' paths (-y): started on
    entering once strace attached; .text once left."""

    def __init__(self, pid, path):
        self.pid, self.path, self.text = pid, path, None

    def __enter__(self):
        self.tracer = subprocess.Popen(["strace", "-f", "-y", "-p", str(self.pid), "-e", "trace=fdatasync",
                                        "-o", str(self.path)], stderr=subprocess.PIPE, text=True)
        assert "attached" in self.tracer.stderr.readline(), f"strace did not attach to {self.pid}"
        return self

    def __exit__(self, *exc):
        self.tracer.terminate()
        self.tracer.wait(timeout=10)
        self.text = self.path.read_text()

    def synced(self, directory):
        """The files under DIRECTORY this trace saw synced."""
        return {line.split("<", 1)[1].split(">", 1)[0].rsplit("/", 1)[1]
                for line in self.text.splitlines()
                if "fdatasync(" in line and f"{directory}/" in line and "= 0" in line}


def test_a_head_is_appended_once_the_role_synced_its_bytes_and_the_proxy_syncs_no_spool(gw):
    """A record is durable once the head that commits it is appended: the
    audit role syncs its copy of the segment before it appends the head,
    and the proxy, whose spool the role took, never syncs its file (a
    segment the role holds whole is removed before its pages are written
    back, so the records reach the disk once)."""
    work = gw.s.data_dir.parent
    with SyncTrace(gw.s.role_pid("audit"), work / "audit.strace") as role, \
            SyncTrace(gw.s.role_pid("proxy"), work / "proxy.strace") as proxy:
        r = gw.get("/docs/synced-0", gw.alice)
        assert r.status_code == 200, r.text
        rid = upstream_request_id(r)
        committed(gw, rid)
    segment = segment_of(gw, rid)
    assert segment in role.synced(gw.s.data_dir / "audit" / "access"), role.text
    assert not proxy.synced(gw.s.data_dir / "proxy" / "access"), proxy.text


def head_entries(g, segment):
    """The proxy.access entries committing heads of SEGMENT, in log order."""
    return [e for e in audit_entries(g.s, "proxy.access") if e["details"].get("segment") == segment]


def segment_of(g, rid):
    return next(e["details"]["segment"] for (e, rec) in access_records(g.s) if rec["requestId"] == rid)


def test_a_segment_the_audit_role_holds_whole_leaves_the_proxys_spool(gw):
    """The proxy's segment file is a spool: once a segment is rotated (2 MiB)
    and the audit role has stored its last bytes and appended its closing
    head, the proxy removes its file; the role's copy verifies, and the
    thread goes on in its next segment, whose file the proxy keeps. The
    segment's heads, at most one a second besides the closing one, each
    commit every record since the one before."""
    session = requests.Session()  # one connection: one proxy thread, one segment
    headers = {"Host": "wiki.localhost", "Authorization": f"Bearer {gw.alice}"}
    url = f"http://127.0.0.1:{gw.http_port}/docs/{'r' * 1000}-"  # ~1.3 KB per line

    def get(i):
        r = session.get(f"{url}{i}", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return upstream_request_id(r)

    first = get(0)
    committed(gw, first)
    segment = segment_of(gw, first)
    spool = gw.s.data_dir / "proxy" / "access"
    assert (spool / segment).exists()
    last = first
    for i in range(1, 2000):  # 2 MiB are ~1,650 such lines: the segment closes on the way
        last = get(i)
    committed(gw, last)
    closing = [e for e in head_entries(gw, segment) if e["details"]["closed"]]
    assert len(closing) == 1, head_entries(gw, segment)
    # flushes of a full buffer between heads store bytes only: each head commits every record since the last
    covered = 0
    for e in head_entries(gw, segment):
        d = e["details"]
        assert d["first"] == covered and d["first"] + d["count"] == d["records"], head_entries(gw, segment)
        covered = d["records"]
    held = gw.s.data_dir / "audit" / "access" / segment
    assert held.stat().st_size > 2 * 1024 * 1024 - 4096
    assert len(held.read_bytes().splitlines()) == closing[0]["details"]["records"]
    # removed by the proxy's delivery thread right after the role's answer
    wait_for(lambda: not (spool / segment).exists(), 10, f"the proxy to remove {segment}, held whole by the role")
    following = segment_of(gw, last)
    assert following != segment and following.startswith(segment[:16]) and (spool / following).exists()
    out = cli(gw, "audit", "verify")
    assert out.returncode == 0, out


def test_other_bytes_at_a_stored_offset_are_refused_and_the_proxy_keeps_its_file(tmp_path_factory):
    """The audit role acknowledges bytes it already holds only when they are
    the same (a retried delivery): other bytes at a stored offset are refused
    (409), so the proxy keeps its own file of that segment, synced (the only
    good copy), even once the segment is closed at shutdown, and verify
    names the segment."""
    g = Proxied(tmp_path_factory.mktemp("segments-planted") / "data")
    stopped = False
    try:
        session = requests.Session()
        headers = {"Host": "wiki.localhost", "Authorization": f"Bearer {g.alice}"}
        url = f"http://127.0.0.1:{g.http_port}/docs/planted-"
        r = session.get(url + "0", headers=headers, timeout=10)
        first = upstream_request_id(r)
        committed(g, first)
        segment = segment_of(g, first)
        held = g.s.data_dir / "audit" / "access" / segment
        # what the role holds is changed in place (same owner), longer than what the proxy has sent so far
        held.write_bytes(b"0" * 64 + b' ["planted"]\n' + b"x" * (held.stat().st_size + 200) + b"\n")
        with SyncTrace(g.s.role_pid("proxy"), g.s.data_dir.parent / "proxy.strace") as proxy:
            r = session.get(url + "1", headers=headers, timeout=10)
            second = upstream_request_id(r)
            wait_for(lambda: "the audit role refused an access-log segment's bytes" in g.s.read_log(), 15,
                     "the role to refuse other bytes at an offset it holds")
        assert segment in proxy.synced(g.s.data_dir / "proxy" / "access"), proxy.text
        assert "the segment already holds other bytes at this offset" in g.s.read_log()
        out = run_cli(g.s, "audit", "verify", env_extra={"CLOISTER_TOKEN": g.s.token})
        assert out.returncode == 1 and f"segment {segment}, record 0" in out.stderr, out
        g.stop()
        stopped = True
        kept = g.s.data_dir / "proxy" / "access" / segment
        assert kept.exists() and second.encode() in kept.read_bytes(), "the proxy's file is the only good copy"
    finally:
        if not stopped:
            g.stop()


def test_records_of_the_last_second_before_a_stop_reach_the_audit_role(tmp_path_factory):
    """On SIGTERM the supervisor stops the audit role last, once the other
    roles have exited: the proxy's pending records (flushed at most a second
    after they are written) are delivered with each segment's closing head
    instead of being logged in the log's place, and the proxy's spool is
    left empty."""
    g = Proxied(tmp_path_factory.mktemp("segments-stop") / "data")
    try:
        rid = upstream_request_id(g.get("/docs/just-before-the-stop", g.alice))
        g.s.stop()  # at once: the record is still pending in its thread
        log = g.s.read_log()
        log = log[log.rindex("stopping every role"):]
        assert "audit event not delivered" not in log and "cannot deliver audit events" not in log, log[-3000:]
        assert list((g.s.data_dir / "proxy" / "access").iterdir()) == []
        g.s.start()
        got = [rec for (_, rec) in access_records(g.s) if rec["requestId"] == rid]
        assert [rec["path"] for rec in got] == ["/docs/just-before-the-stop"]
        segment = segment_of(g, rid)
        assert head_entries(g, segment)[-1]["details"]["closed"] is True
        out = run_cli(g.s, "audit", "verify", env_extra={"CLOISTER_TOKEN": g.s.token})
        assert out.returncode == 0, out
    finally:
        g.stop()


def test_an_earlier_runs_spool_reaches_the_audit_role_after_a_crash(tmp_path_factory):
    """Records in the proxy's spool that the audit role never got (here: the
    role stopped by SIGSTOP, then the whole daemon killed with SIGKILL) are
    handed over when the proxy starts again: the segment whole, a torn last
    line cut off, with a closing head recomputed from its records (marked
    recovered). `audit show` lists each record once, verify passes and the
    spool file goes."""
    g = Proxied(tmp_path_factory.mktemp("segments-crash") / "data")
    try:
        session = requests.Session()  # one connection: one proxy thread, one segment
        headers = {"Host": "wiki.localhost", "Authorization": f"Bearer {g.alice}"}

        def get(path):
            r = session.get(f"http://127.0.0.1:{g.http_port}{path}", headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            return upstream_request_id(r)

        before = get("/docs/before-the-crash")
        committed(g, before)
        segment = segment_of(g, before)
        spool = g.s.data_dir / "proxy" / "access" / segment
        audit = g.s.role_pid("audit")
        os.kill(audit, signal.SIGSTOP)
        try:
            held = [get(f"/docs/held-{i}") for i in range(3)]
            # written to the spool within a second; the audit role cannot take them
            wait_for(lambda: all(rid.encode() in spool.read_bytes() for rid in held), 10,
                     "the records in the proxy's spool file")
            with open(spool, "ab") as f:  # a write the crash cut short
                f.write(b"0" * 64 + b' ["2026-12-07T00:00:00.000Z","torn')
            g.s.kill9()
        finally:
            try:
                os.kill(audit, signal.SIGCONT)
            except ProcessLookupError:
                pass
        g.s.start()
        wait_for(lambda: not spool.exists(), 15, "the proxy to hand over its earlier run's segment and remove it")
        heads = head_entries(g, segment)
        assert heads[-1]["details"]["closed"] is True and heads[-1]["details"]["recovered"] is True, heads
        copy = (g.s.data_dir / "audit" / "access" / segment).read_bytes()
        assert heads[-1]["details"]["records"] == len(copy.splitlines()) and b"torn" not in copy, heads
        assert "cut a torn last record" in g.s.read_log()
        got = [rec["requestId"] for (_, rec) in access_records(g.s)]
        assert [got.count(rid) for rid in [before, *held]] == [1, 1, 1, 1], got
        out = cli(g, "audit", "show", "--service", "wiki", "-o", "json")
        shown = [x["requestId"] for x in json.loads(out.stdout) if x.get("action") == "proxy.access"]
        assert [shown.count(rid) for rid in [before, *held]] == [1, 1, 1, 1], shown
        out = run_cli(g.s, "audit", "verify", env_extra={"CLOISTER_TOKEN": g.s.token})
        assert out.returncode == 0, out
    finally:
        g.stop()


def test_segments_past_their_retention_are_removed_and_named_in_the_log(tmp_path_factory):
    """With --access-retention-days 1 the audit role removes the segments
    not written for a day (here: one whose file time is set two days back)
    at start and hourly, after appending an audit.access.prune entry of its
    own naming them; verify then counts them as removed past their
    retention, while a segment removed without such an entry still fails
    it."""
    g = Proxied(tmp_path_factory.mktemp("segments-retention") / "data")
    try:
        old = upstream_request_id(g.get("/docs/two-days-ago", g.alice))
        committed(g, old)
        old_segment = segment_of(g, old)
        g.s.stop()  # its segment is closed and delivered whole
        held = g.s.data_dir / "audit" / "access" / old_segment
        two_days_ago = time.time() - 2 * 86400
        os.utime(held, (two_days_ago, two_days_ago))
        g.s.extra_args += ["--access-retention-days", "1"]
        g.s.start()
        wait_for(lambda: not held.exists(), 15, "the segment past its retention to be removed")
        prunes = audit_entries(g.s, "audit.access.prune")
        assert len(prunes) == 1 and prunes[0]["appender"] == "audit", prunes
        assert prunes[0]["details"]["segments"] == [old_segment] and prunes[0]["details"]["retentionDays"] == 1
        recent = upstream_request_id(g.wait_status("/docs/today", g.alice, 200))
        committed(g, recent)
        out = run_cli(g.s, "audit", "verify", env_extra={"CLOISTER_TOKEN": g.s.token})
        assert out.returncode == 0 and "(and 1 removed past their retention)" in out.stdout, out
        # a segment removed by anyone else is still found missing
        (g.s.data_dir / "audit" / "access" / segment_of(g, recent)).unlink()
        out = run_cli(g.s, "audit", "verify", env_extra={"CLOISTER_TOKEN": g.s.token})
        assert out.returncode == 1 and "is missing from the audit role (removed)" in out.stderr, out
    finally:
        g.stop()
