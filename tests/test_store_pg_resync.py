"""cloisterd --store postgresql://… when the database goes away or is
replaced under it (the session's PostgreSQL of the conftest fixture
`postgres`): requests during an outage are a 503 naming the store, the API
reconnects and its watchers catch up with what another connection wrote
meanwhile; a database replaced by an older copy is a new epoch, and every
watcher (watch streams, the proxy's configuration stream) starts again from
a full list; kill -9 during a create stream loses no acknowledged create."""
import json
import re
import subprocess
import threading
import time
import uuid

import requests

from conftest import Server, pg_ctl, pg_new_database, psql
from test_daemon import assert_all_present, write_until_stopped
from test_notifications import wait_for as wait_until
from test_proxy_config import proxy_token, stream
from test_store_pg import pg_server, service  # noqa: F401 (pg_server: a fixture)


def names(items):
    return {i["metadata"]["name"] for i in items}


def api_ok(s, method, path, **kw):
    """The response once the API answers METHOD PATH with a 2xx (the store is back)."""
    def attempt():
        try:
            r = s.request(method, path, **kw)
        except requests.RequestException:
            return None
        return r if r.status_code < 300 else None
    return wait_until(attempt, 60, f"{method} {path} answered 2xx")


class Watch:
    """GET /v1/services?watch=1 from revision REV, read on a thread into a list of (event, data)."""

    def __init__(self, s, rev):
        self.resp = s.request("GET", f"/v1/services?watch=1&resourceVersion={rev}", stream=True)
        assert self.resp.status_code == 200, self.resp.text
        self.events, self.ended = [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        name = None
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    self.events.append((name, json.loads(line[6:])))
                    name = None
        except (requests.RequestException, OSError, AttributeError):
            pass
        finally:
            self.ended.set()

    def added(self):
        return {d["object"]["metadata"]["name"] for n, d in self.events if n == "ADDED"}

    def close(self):
        self.resp.close()


def insert_service_elsewhere(url, name):
    """Writes Service NAME as another api replica would, on a connection of
    its own: the row, its change, the head and the notification in one
    transaction (psql)."""
    sql = f"""
BEGIN;
WITH r AS (UPDATE revision SET rv = rv + 1 WHERE id = 1 RETURNING rv),
d AS (SELECT rv, json_build_object('apiVersion', 'cloister.dev/v1', 'kind', 'Service',
        'metadata', json_build_object('name', '{name}', 'uid', '{uuid.uuid4()}', 'resourceVersion', rv::text,
            'createdAt', '2026-12-06T00:00:00.000Z', 'updatedAt', '2026-12-06T00:00:00.000Z'),
        'spec', json_build_object('upstream', json_build_object('url', 'http://127.0.0.1:9001')))::text AS doc FROM r),
i AS (INSERT INTO resources (kind, name, rv, doc) SELECT 'Service', '{name}', rv, doc FROM d)
INSERT INTO changes (rv, type, kind, name, doc) SELECT rv, 0, 'Service', '{name}', doc FROM d;
SELECT pg_notify('cloister_changes', rv::text) FROM revision;
COMMIT;"""
    subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", url], input=sql, capture_output=True, text=True,
                   check=True, timeout=60)


def test_postgres_down_answers_503_naming_the_store_then_watchers_catch_up(pg_server, postgres):
    s, url = pg_server
    assert s.request("POST", "/v1/services", json=service("before")).status_code == 201
    rev = s.request("GET", "/v1/services").json()["metadata"]["resourceVersion"]
    watch = Watch(s, rev)
    proxy = stream(s, token=proxy_token(s))
    assert proxy.next()[0] == "snapshot"
    pg_ctl(postgres, "stop")
    try:
        t0 = time.time()
        r = s.request("GET", "/v1/services/before")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "store_unavailable" and "PostgreSQL store cannot be reached" in err["message"], err
        r = s.request("POST", "/v1/services", json=service("during"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
        print(f"503s answered within {time.time() - t0:.1f}s")
        assert s.proc.poll() is None, "cloisterd still runs"
    finally:
        pg_ctl(postgres, "start")
    # another replica's write, on its own connection, before this API reconnected
    insert_service_elsewhere(url, "by-another")
    assert api_ok(s, "GET", "/v1/services/by-another").json()["metadata"]["name"] == "by-another"
    wait_until(lambda: "by-another" in watch.added(), 10, f"the watch stream saw it: {watch.events}")
    proxy.wait_for(lambda n, d: n == "change" and d["object"]["metadata"]["name"] == "by-another", timeout=10)
    assert not watch.ended.is_set(), "the watch stream outlived the outage"
    # writes go on; the refused one was not written
    assert api_ok(s, "POST", "/v1/services", json=service("after")).status_code == 201
    wait_until(lambda: "after" in watch.added(), 10, "the watch stream saw the write after the restart")
    assert "during" not in names(s.request("GET", "/v1/services").json()["items"])
    watch.close()
    proxy.resp.close()
    assert "store: lost the connection to PostgreSQL; reconnecting" in s.read_log()


def test_a_database_replaced_by_an_older_copy_makes_every_watcher_list_again(pg_server, postgres, tmp_path):
    s, url = pg_server
    assert s.request("POST", "/v1/services", json=service("kept")).status_code == 201
    # a copy of the database as it is now (a backup), restored into another database
    dump = tmp_path / "store.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), url], check=True, capture_output=True, timeout=120)
    copy = pg_new_database(postgres)
    subprocess.run(["pg_restore", "--no-owner", "-d", copy, str(dump)], check=True, capture_output=True,
                   timeout=120)
    for name in ("lost-1", "lost-2"):
        assert s.request("POST", "/v1/services", json=service(name)).status_code == 201
    listed = s.request("GET", "/v1/services").json()
    old_head = int(listed["metadata"]["resourceVersion"])
    watch = Watch(s, old_head)
    proxy = stream(s, token=proxy_token(s))
    name, snap = proxy.next()
    assert name == "snapshot" and {"kept", "lost-1"} <= names(snap["objects"]["Service"])
    # the copy takes the database's place: same schema row, older head, another database
    db = url.split("postgresql:///")[1].split("?")[0]
    swapped = time.time()
    psql(postgres, f"DROP DATABASE {db} WITH (FORCE)")
    psql(postgres, f"ALTER DATABASE {copy.split('postgresql:///')[1].split('?')[0]} RENAME TO {db}")
    # the watch stream is told its revisions no longer apply
    wait_until(lambda: any(n == "ERROR" for n, _ in watch.events), 30, f"a resync signal: {watch.events}")
    err = [d for n, d in watch.events if n == "ERROR"][0]["error"]
    assert err["code"] == "gone" and "reset or replaced" in err["message"], err
    # the proxy's stream starts again from a full list of the new database
    (_, snap), _ = proxy.wait_for(lambda n, d: n == "snapshot", timeout=30)
    assert "kept" in names(snap["objects"]["Service"]) and "lost-1" not in names(snap["objects"]["Service"])
    print(f"the proxy's stream had the new snapshot within {time.time() - swapped:.2f}s of the swap")
    listed = api_ok(s, "GET", "/v1/services").json()
    assert names(listed["items"]) >= {"kept"} and not names(listed["items"]) & {"lost-1", "lost-2"}
    # the new database passes the old head: the proxy follows it change by change, a new watch too
    new_rev = listed["metadata"]["resourceVersion"]
    watch2 = Watch(s, new_rev)
    i = 0
    while int(s.request("GET", "/v1/services").json()["metadata"]["resourceVersion"]) <= old_head + 1:
        assert api_ok(s, "POST", "/v1/services", json=service(f"new-{i}")).status_code == 201
        i += 1
    proxy.wait_for(lambda n, d: n == "change" and d["object"]["metadata"]["name"] == f"new-{i - 1}", timeout=10)
    wait_until(lambda: {f"new-{k}" for k in range(i)} <= watch2.added(), 10, f"the new watch: {watch2.events}")
    assert not watch2.added() & {"lost-1", "lost-2"}
    watch.close()
    watch2.close()
    proxy.resp.close()
    assert "the PostgreSQL store was reset or replaced (a new epoch)" in s.read_log()


def test_kill9_during_a_create_stream_loses_no_acknowledged_create(tmp_path, pg_database):
    s = Server(tmp_path / "data", extra_args=["--store", pg_database]).start()
    acked, stop = [], threading.Event()
    writers = [threading.Thread(target=write_until_stopped, args=(s, f"k{k}", acked, stop)) for k in range(4)]
    for t in writers:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 100, 60, "100 creates acknowledged")
        s.kill9()
        before = len(acked)
    finally:
        stop.set()
        for t in writers:
            t.join()
    s.start()
    try:
        assert_all_present(s, acked[:before])
        stored = set(psql(pg_database, "SELECT name FROM resources WHERE kind = 'Group'").split())
        assert not [n for n in acked[:before] if n not in stored]
        print(f"{before} creates acknowledged before kill -9, all there after the restart")
    finally:
        s.stop()


def test_the_proxy_stream_resumes_only_in_the_same_epoch(pg_server):
    s, _ = pg_server
    tok = proxy_token(s)
    first = stream(s, token=tok)
    name, snap = first.next()
    first.resp.close()
    assert name == "snapshot" and re.fullmatch("[0-9a-f]{16}", snap["epoch"]), snap.get("epoch")
    since = f"/v1/proxy/config?since={snap['revision']}"
    same = stream(s, f"{since}&epoch={snap['epoch']}", token=tok)
    assert same.next()[0] != "snapshot", "resumed: the changes, then jwks, secrets and handoff"
    same.resp.close()
    other = stream(s, f"{since}&epoch={int(snap['epoch'], 16) ^ 1:016x}", token=tok)
    name, again = other.next()
    assert name == "snapshot" and again["epoch"] == snap["epoch"], "another epoch's revision is not resumed"
    other.resp.close()
    r = s.request("GET", f"{since}&epoch=XYZ", token=tok)
    assert r.status_code == 400 and "epoch" in r.json()["error"]["message"], r.text
