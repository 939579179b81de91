"""The Enclave resource and its controller, against the real cloisterd: an
applied Enclave gets its replicas launched by the runner with the bundle's
measurement as PCR0; a replica killed with SIGKILL is restarted and both
events are audited; scaling, spec changes, deletion and a bundle that does
not exist are reflected on the runner and in the status; no one but the api
role launches a sandbox, and the controller finds its own again after a
restart of the api role. The runner's side is observed from the host
(processes, mounts, each sandbox's own channel): only the api role may use
the runner's socket."""
import http.client
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLOISTER, manifest, run_cli, sanitizer_env, wait_for
from test_audit import all_entries
from test_runner import UnixHTTPConnection, ask

APP = """\
import http.server


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from the enclave\\n")


http.server.HTTPServer(("127.0.0.1", 8080), Hello).serve_forever()
"""


@pytest.fixture
def bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\nport: 8080\n')
    (b / "app.py").write_text(APP)
    os.chmod(b, 0o755)
    return b


def enclave(name, bundle, **spec):
    return manifest("Enclave", name, {"bundle": str(bundle), **spec})


def apply(server, *docs):
    r = server.request("POST", "/v1/apply", json={"items": list(docs)})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def status(server, name):
    r = server.request("GET", f"/v1/enclaves/{name}")
    assert r.status_code == 200, r.text
    return r.json().get("status", {})


def running(server, name, n):
    """The status once it shows N running replicas and ready == desired == N."""
    def check():
        st = status(server, name)
        reps = [r for r in st.get("replicas", []) if r["state"] == "running"]
        if st.get("ready") == n and st.get("desired") == n and len(reps) == n == len(st["replicas"]):
            return st
        return None
    return wait_for(check, what=f"{n} running replicas of {name} (last: {status(server, name)})")


def sandboxes(server):
    """The runner's sandboxes as the host sees them (only the api role may ask
    the runner itself): each a child process of the runner role, named by the
    channel its mounts bind from <runner_dir>/<name>/, with the PCRs its own
    channel's evidence reports."""
    runner_dir = str(server.data_dir / "runner")
    out = {}
    kids = subprocess.run(["pgrep", "-P", str(server.role_pid("runner"))], capture_output=True, text=True).stdout
    for pid in map(int, kids.split()):
        try:
            mounts = open(f"/proc/{pid}/mountinfo").read().split("\n")
        except OSError:
            continue  # the sandbox exited meanwhile (EINVAL when caught while exiting)
        for m in mounts:
            f = m.split()
            if len(f) > 4 and f[4] == "/run/cloister/channel.sock" and f[3].startswith(runner_dir + "/"):
                name = f[3][len(runner_dir) + 1:].split("/")[0]
                try:
                    code, ev = ask(server, name, {})
                except (OSError, http.client.HTTPException):  # a sandbox on its way out
                    continue
                if code == 200:
                    out[name] = {"pid": pid, "pcrs": ev["pcrs"]}
    return out


def measure(bundle):
    p = subprocess.run([str(CLOISTER), "enclave", "measure", str(bundle)], capture_output=True, text=True,
                       env=sanitizer_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def enclave_events(server, name, action=None):
    return [e for e in all_entries(server)
            if e["action"].startswith("enclave.replica.") and e["resource"] == {"kind": "Enclave", "name": name}
            and (action is None or e["action"] == action)]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_replicas_run_with_the_bundles_measurement(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 4}))
    st = running(server, "scorer", 2)
    assert st["pcr0"] == measure(bundle)
    assert [r["name"] for r in st["replicas"]] == ["scorer-1", "scorer-2"]
    assert st["restarts"] == 0 and all(r["restarts"] == 0 and r["startedAt"] for r in st["replicas"])
    on_runner = sandboxes(server)
    uid = server.request("GET", "/v1/enclaves/scorer").json()["metadata"]["uid"]
    assert uid
    for r in st["replicas"]:
        sb = on_runner[r["name"]]
        assert sb["pid"] == r["pid"] and alive(r["pid"])
        assert sb["pcrs"]["0"] == st["pcr0"]
    assert "replica scorer-" in st["lastEvent"] and st["lastEventAt"].endswith("Z")
    launched = wait_for(lambda: len(enclave_events(server, "scorer", "enclave.replica.launched")) == 2
                        and enclave_events(server, "scorer", "enclave.replica.launched"))
    assert {e["details"]["replica"] for e in launched} == {"scorer-1", "scorer-2"}
    assert all(e["outcome"] == "success" and e["actor"]["user"] == "system:controller"
               and e["details"]["pcr0"] == st["pcr0"] for e in launched)
    # the CLI's table shows readiness
    p = run_cli(server, "get", "enclaves", env_extra={"CLOISTER_TOKEN": server.token})
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "BUNDLE", "READY", "DESIRED", "RESTARTS"]
    cells = row.split()
    assert cells[0] == "scorer" and cells[1].startswith("/") and cells[2:5] == ["2", "2", "0"]  # long cells are cut


def test_a_killed_replica_is_restarted_and_audited(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 4}))
    st = running(server, "scorer", 2)
    victim = st["replicas"][0]
    other = st["replicas"][1]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted():
        s = status(server, "scorer")
        r = s["replicas"][0]
        return s if r["state"] == "running" and r["pid"] != victim["pid"] and r["restarts"] == 1 else None
    st2 = wait_for(restarted, timeout=10, what="the restart of scorer-1")
    assert st2["restarts"] == 1 and st2["ready"] == 2
    assert st2["replicas"][1]["pid"] == other["pid"] and st2["replicas"][1]["restarts"] == 0
    assert alive(st2["replicas"][0]["pid"]) and sandboxes(server)["scorer-1"]["pid"] == st2["replicas"][0]["pid"]
    crashed = wait_for(lambda: enclave_events(server, "scorer", "enclave.replica.crashed"))
    assert crashed[0]["details"]["replica"] == "scorer-1" and crashed[0]["details"]["pid"] == victim["pid"]
    assert crashed[0]["details"]["how"] == "signal 9" and crashed[0]["details"]["restartInMs"] == 250
    again = wait_for(lambda: enclave_events(server, "scorer", "enclave.replica.restarted"))
    assert again[0]["outcome"] == "success" and again[0]["details"]["pid"] == st2["replicas"][0]["pid"]
    assert again[0]["details"]["restarts"] == 1


def test_deleting_the_enclave_stops_its_sandboxes(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 2}))
    pids = [r["pid"] for r in running(server, "scorer", 2)["replicas"]]
    r = server.request("DELETE", "/v1/enclaves/scorer")
    assert r.status_code == 200, r.text
    wait_for(lambda: sandboxes(server) == {}, timeout=10, what="an empty runner")
    wait_for(lambda: not any(alive(p) for p in pids), timeout=5, what="the replicas' end")
    stopped = wait_for(lambda: len(enclave_events(server, "scorer", "enclave.replica.stopped")) == 2
                       and enclave_events(server, "scorer", "enclave.replica.stopped"))
    assert {e["details"]["reason"] for e in stopped} == {"its Enclave was deleted"}


def test_a_missing_bundle_is_a_status_error_and_the_daemon_stays_healthy(server, bundle, tmp_path):
    missing = tmp_path / "no-such-bundle"
    apply(server, enclave("ghost", missing))

    def failed():
        s = status(server, "ghost")
        return s if "cannot launch replica ghost-1" in s.get("lastEvent", "") else None
    st = wait_for(failed, timeout=10, what="a launch error in the status")
    assert "cannot measure the bundle" in st["lastEvent"] and str(missing) in st["lastEvent"]
    assert st["ready"] == 0 and st["desired"] == 1
    assert st["replicas"] == [{"name": "ghost-1", "pid": 0, "state": "starting", "restarts": 0}]
    time.sleep(2)  # a few retries with backoff
    assert server.request("GET", "/healthz").status_code == 200
    assert "ghost-1" not in sandboxes(server)
    failures = enclave_events(server, "ghost")
    assert failures and all(e["action"] == "enclave.replica.launched" and e["outcome"] == "failure"
                            for e in failures)
    assert len(failures) == 1  # audited once per streak of failures, not per retry
    assert "cannot measure the bundle" in failures[0]["details"]["error"]
    # a bundle with a broken enclave.yaml is refused the same way
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "enclave.yaml").write_text("command: python3\n")
    os.chmod(broken, 0o755)
    apply(server, enclave("broken", broken))
    wait_for(lambda: "command must be a list" in status(server, "broken").get("lastEvent", ""), timeout=10,
             what="the enclave.yaml error")
    # fixing the spec is taken at once, without waiting out the backoff
    apply(server, enclave("ghost", bundle))
    st = running(server, "ghost", 1)
    assert st["pcr0"] == measure(bundle) and "replica ghost-1 is ready" in st["lastEvent"]


def test_applying_the_same_spec_again_restarts_nothing(server, bundle):
    doc = enclave("scorer", bundle, replicas={"min": 2, "max": 4}, limits={"memoryMiB": 512})
    apply(server, doc)
    before = running(server, "scorer", 2)
    assert apply(server, doc)[0]["action"] == "unchanged"
    labelled = dict(doc, metadata={"name": "scorer", "labels": {"team": "ml"}})
    assert apply(server, labelled)[0]["action"] == "configured"
    time.sleep(2.5)  # more than two passes
    after = running(server, "scorer", 2)
    assert [r["pid"] for r in after["replicas"]] == [r["pid"] for r in before["replicas"]]
    assert [r["startedAt"] for r in after["replicas"]] == [r["startedAt"] for r in before["replicas"]]
    assert len(enclave_events(server, "scorer", "enclave.replica.launched")) == 2
    assert not enclave_events(server, "scorer", "enclave.replica.stopped")


def test_scaling_follows_the_bounds(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 1, "max": 4}))
    first = running(server, "scorer", 1)["replicas"][0]
    apply(server, enclave("scorer", bundle, replicas={"min": 3, "max": 4}))
    st = running(server, "scorer", 3)
    assert st["replicas"][0]["pid"] == first["pid"]  # scaling keeps the running ones
    assert set(sandboxes(server)) == {"scorer-1", "scorer-2", "scorer-3"}
    apply(server, enclave("scorer", bundle, replicas={"min": 1, "max": 1}))
    st = running(server, "scorer", 1)
    assert st["replicas"][0]["pid"] == first["pid"]
    wait_for(lambda: set(sandboxes(server)) == {"scorer-1"}, timeout=5, what="scale down on the runner")
    reasons = {e["details"]["replica"]: e["details"]["reason"]
               for e in enclave_events(server, "scorer", "enclave.replica.stopped")}
    assert reasons == {"scorer-2": "above the desired replicas", "scorer-3": "above the desired replicas"}


def test_a_spec_change_replaces_the_replicas_one_at_a_time(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 2}))
    old = {r["name"]: r["pid"] for r in running(server, "scorer", 2)["replicas"]}
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 2}, limits={"memoryMiB": 768}))

    def replaced():
        st = status(server, "scorer")
        new = {r["name"]: r["pid"] for r in st["replicas"] if r["state"] == "running"}
        done = len(new) == 2 == len(st["replicas"]) and not set(new.values()) & set(old.values())
        return st if done and len(enclave_events(server, "scorer", "enclave.replica.stopped")) == 3 else None
    st = wait_for(replaced, timeout=30, what="both replicas replaced and the surge gone")
    assert st["restarts"] == 0  # a replacement is not a crash
    stops = enclave_events(server, "scorer", "enclave.replica.stopped")
    assert [e["details"]["reason"] for e in stops] == ["the spec changed", "the spec changed",
                                                       "the update is done (the surge replica)"]
    # surge one, then one at a time: an old replica is stopped only once a new one is ready
    entries = [(e["action"], e["details"]["replica"]) for e in enclave_events(server, "scorer")][2:]
    assert entries == [("enclave.replica.launched", "scorer-3"),
                       ("enclave.replica.stopped", "scorer-1"), ("enclave.replica.launched", "scorer-1"),
                       ("enclave.replica.stopped", "scorer-2"), ("enclave.replica.launched", "scorer-2"),
                       ("enclave.replica.stopped", "scorer-3")]


def test_replicas_survive_a_restart_of_the_api_role(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 2}))
    os.kill(running(server, "scorer", 2)["replicas"][0]["pid"], signal.SIGKILL)
    before = wait_for(lambda: (s := status(server, "scorer"))["restarts"] == 1 and s["ready"] == 2 and s,
                      timeout=10, what="a restart")
    os.kill(server.role_pid("api"), signal.SIGKILL)
    time.sleep(1)
    server.wait_healthy()
    time.sleep(2.5)  # a few passes of the new controller
    after = running(server, "scorer", 2)
    assert [(r["pid"], r["startedAt"], r["restarts"]) for r in after["replicas"]] == \
        [(r["pid"], r["startedAt"], r["restarts"]) for r in before["replicas"]]
    assert after["restarts"] == 1
    assert len(enclave_events(server, "scorer", "enclave.replica.launched")) == 2


def test_no_one_but_the_api_role_launches_a_sandbox(server, bundle):
    """Sandboxes the controller did not launch cannot appear any more: the
    runner's socket answers the api role only, so a process that squats a
    replica's name (here the test itself) gets nothing, and the Enclave's
    replica then runs under its own name."""
    c = UnixHTTPConnection(str(server.data_dir / "run" / "runner.sock"))
    with pytest.raises((ConnectionResetError, BrokenPipeError, OSError)):
        c.request("POST", "/v1/sandboxes", body=json.dumps({"name": "taken-1", "bundle": str(bundle)}),
                  headers={"Content-Type": "application/json"})
        c.getresponse()
    assert "refused a local peer" in server.read_log()
    assert sandboxes(server) == {}
    apply(server, enclave("taken", bundle))
    st = running(server, "taken", 1)
    assert set(sandboxes(server)) == {"taken-1"} and sandboxes(server)["taken-1"]["pid"] == st["replicas"][0]["pid"]


def test_enclave_specs_are_validated(server, bundle):
    cases = [
        ({"bundle": "relative/path"}, "spec.bundle", "absolute path"),
        ({"bundle": str(bundle), "replicas": {"min": 3, "max": 2}}, "spec.replicas.max", "at least min"),
        ({"bundle": str(bundle), "replicas": {"min": 1, "max": 17}}, "spec.replicas.max", "between 1 and 16"),
        ({"bundle": str(bundle), "secrets": [{"key": "k", "file": "a/b"}]}, "spec.secrets[0].file", ""),
    ]
    for spec, path, message in cases:
        r = server.request("POST", "/v1/enclaves", json=manifest("Enclave", "bad", spec))
        assert r.status_code == 400, (spec, r.text)
        assert path in r.json()["error"]["message"] and message in r.json()["error"]["message"], r.text
    r = server.request("POST", "/v1/enclaves", json=manifest("Enclave", "defaults", {"bundle": str(bundle)}))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["replicas"] == {"min": 1, "max": 1}
    # status is the server's: a client's is ignored
    doc = manifest("Enclave", "defaults", {"bundle": str(bundle)})
    doc["status"] = {"ready": 99}
    assert server.request("PUT", "/v1/enclaves/defaults", json=doc).status_code == 200
    assert running(server, "defaults", 1)["ready"] == 1


def test_a_restarted_daemon_launches_the_replicas_again(server, bundle):
    apply(server, enclave("scorer", bundle, replicas={"min": 2, "max": 2}))
    before = running(server, "scorer", 2)
    server.stop()  # the runner stops its sandboxes
    assert not any(alive(r["pid"]) for r in before["replicas"])
    server.start()
    old = {r["pid"] for r in before["replicas"]}
    wait_for(lambda: not {r["pid"] for r in status(server, "scorer")["replicas"]} & old, timeout=10,
             what="new replicas")  # the stored status names the old ones until the first pass
    after = running(server, "scorer", 2)
    assert not {r["pid"] for r in after["replicas"]} & old
    assert after["restarts"] == 0  # a stop of the whole daemon is not a crash
    assert not enclave_events(server, "scorer", "enclave.replica.crashed")


def test_replicas_run_under_the_agent_with_the_memory_limit_on_the_workload(server, bundle):
    """Every replica is launched in agent mode (the agent measured in PCR3,
    its aTLS socket listed) and the agent gives the workload the Enclave's
    memory limit."""
    (bundle / "app.py").write_text("print(open('/proc/self/limits').read(), flush=True)\n" + APP)
    apply(server, enclave("limited", bundle, limits={"memoryMiB": 300}))
    deadline = time.time() + 30
    while time.time() < deadline and status(server, "limited").get("ready") != 1:
        time.sleep(0.2)
    assert status(server, "limited")["ready"] == 1
    log = server.data_dir / "runner" / "limited-1.log"
    deadline = time.time() + 15
    while time.time() < deadline and "Max address space" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    line = next(l for l in log.read_text().splitlines() if l.startswith("Max address space"))
    assert line.split()[3] == str(300 << 20), line
    assert (server.data_dir / "runner" / "limited-1" / "atls.sock").exists()
    assert int(sandboxes(server)["limited-1"]["pcrs"]["3"], 16) != 0  # the agent's measurement
