"""cloisterd --dev on PostgreSQL (--store postgresql://…): a real server
started once per session by the conftest fixture `postgres` (Debian's postgresql, initdb as the postgres
user into a temp dir, a Unix socket there). The quickstart works, conflicting
updates: exactly one wins, and a PostgreSQL restart while writes stream loses
no acknowledged write."""
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, Server, pg_ctl, psql, run_cli


@pytest.fixture
def pg_server(tmp_path, pg_database):
    s = Server(tmp_path / "data", extra_args=["--store", pg_database]).start()
    yield s, pg_database
    s.stop()


def service(name, url="http://127.0.0.1:9000", rv=None):
    meta = {"name": name}
    if rv:
        meta["resourceVersion"] = rv
    return {"apiVersion": "cloister.dev/v1", "kind": "Service", "metadata": meta, "spec": {"upstream": {"url": url}}}


def test_quickstart_on_postgres(pg_server, tmp_path):
    s, url = pg_server
    assert run_cli(s, "login", "--token", s.token).returncode == 0
    p = run_cli(s, "apply", "-f", str(ROOT / "examples" / "quickstart.yaml"))
    assert p.returncode == 0 and "service/wiki created" in p.stdout, p.stdout + p.stderr
    assert s.request("GET", "/v1/services/wiki").json()["spec"]["upstream"]["url"] == "http://127.0.0.1:9000"
    # it is PostgreSQL that holds it, with its change and the schema's version and epoch
    assert psql(url, "SELECT count(*) FROM resources WHERE kind = 'Service' AND name = 'wiki'") == "1"
    assert psql(url, "SELECT type FROM changes WHERE kind = 'Service' AND name = 'wiki' ORDER BY rv LIMIT 1") == "0"
    assert psql(url, "SELECT value FROM cloister_meta WHERE key = 'schema_version'") == "1"
    assert len(psql(url, "SELECT value FROM cloister_meta WHERE key = 'epoch'")) == 16
    head = int(psql(url, "SELECT rv FROM revision"))
    listed = s.request("GET", "/v1/services").json()
    assert int(listed["metadata"]["resourceVersion"]) == head
    # the password never reaches a log (there is none here; the redaction is unit-tested): the URL's host is fine
    assert "password" not in s.read_log()


def test_conflicting_updates_exactly_one_wins(pg_server):
    s, _ = pg_server
    r = s.request("POST", "/v1/services", json=service("race"))
    assert r.status_code == 201, r.text
    for round_ in range(10):
        rv = s.request("GET", "/v1/services/race").json()["metadata"]["resourceVersion"]
        codes = []
        barrier = threading.Barrier(2)

        def put(upstream):
            barrier.wait()
            codes.append(s.request("PUT", "/v1/services/race", json=service("race", upstream, rv)).status_code)

        threads = [threading.Thread(target=put, args=(f"http://127.0.0.1:{9000 + i + 2 * round_}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 409], codes


def test_postgres_restart_while_writes_stream_loses_no_acknowledged_write(pg_server, postgres):
    s, url = pg_server
    acked, failed, stop = [], [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            name = f"stream-{i}"
            try:
                r = s.request("POST", "/v1/services", json=service(name))
                (acked if r.status_code == 201 else failed).append((name, r.status_code))
            except requests.RequestException as e:
                failed.append((name, str(e)))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.time() + 30
        while len(acked) < 20:
            assert time.time() < deadline and t.is_alive(), failed
            time.sleep(0.05)
        before = len(acked)
        pid_file = Path(postgres.split("host=")[1].split("&")[0]) / "data" / "postmaster.pid"
        old_pid = pid_file.read_text().split()[0]
        pg_ctl(postgres, "restart")
        assert pid_file.read_text().split()[0] != old_pid, "PostgreSQL restarted"
        deadline = time.time() + 60
        while len(acked) < before + 20:  # the writes go on after the restart
            assert time.time() < deadline, f"no writes after the restart: {failed[-3:]}\n{s.read_log()[-3000:]}"
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    stored = set(psql(url, "SELECT name FROM resources WHERE kind = 'Service' AND name LIKE 'stream-%'").split())
    missing = [n for n, _ in acked if n not in stored]
    assert not missing, f"acknowledged but lost: {missing}"
    # a write refused across the restart was refused clearly (a 5xx, never a 2xx without commit)
    assert all(isinstance(code, int) and code >= 500 for _, code in failed), failed
    # the API reads again and its revision caught up with the database
    listed = s.request("GET", "/v1/services").json()
    assert {i["metadata"]["name"] for i in listed["items"]} >= {n for n, _ in acked}
    assert int(listed["metadata"]["resourceVersion"]) == int(psql(url, "SELECT rv FROM revision"))
    print(f"{len(acked)} writes acknowledged, {len(failed)} refused across the restart")
