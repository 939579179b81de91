"""Enclave limits and scaling on memory (issue 21): each replica runs under
its Enclave's memory and pids limits, held by cgroup v2 where the host
delegates it and by rlimits (with the runner's watch of resident memory)
otherwise; the status names the mechanism; a replica ended by its memory
limit says so in lastExit; the controller scales on the replicas' memory use;
lastExit and lastError outlive a restart of the api role; a Secret's value
without an attestationPolicy is refused at apply."""
import os
import signal
import subprocess
import time

from conftest import audited, manifest
from test_enclaves import apply, enclave, running, status, wait_for


def make_bundle(path, app, port=None):
    path.mkdir()
    (path / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\n' +
                                       (f"port: {port}\n" if port else ""))
    (path / "app.py").write_text(app)
    os.chmod(path, 0o755)
    return path


def host_delegates_memory():
    """Whether any cgroup v2 hierarchy of this host has the memory controller
    at all (without it the runner can only use rlimits)."""
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if " - cgroup2 " in line:
            try:
                if "memory" in open(os.path.join(f[4], "cgroup.controllers")).read().split():
                    return True
            except OSError:
                pass
    return False


def runner_log(server, replica):
    p = server.data_dir / "runner" / f"{replica}.log"
    return p.read_text() if p.exists() else ""


def log_line(server, replica, prefix, timeout=20):
    return wait_for(lambda: next((l for l in runner_log(server, replica).splitlines() if l.startswith(prefix)), None),
                    timeout=timeout, what=f"a line '{prefix}' from {replica}")


# prints its limits, then forks children that sleep until it has tried
# twice the pids limit, and reports how many forks the kernel refused
FORKS_APP = """\
import os, sys, time
print(open("/proc/self/limits").read(), flush=True)
kids = refused = 0
for i in range(int(sys.argv[1]) * 2):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    kids += 1
print(f"forked {kids} refused {refused}", flush=True)
time.sleep(3600)
"""


def test_the_status_names_the_mechanism_and_the_pids_limit_refuses_forks(server, tmp_path):
    b = make_bundle(tmp_path / "forks", FORKS_APP)
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py", "8"]\n')
    apply(server, enclave("forks", b, limits={"memoryMiB": 256, "pids": 8}))
    st = running(server, "forks", 1)
    rep = st["replicas"][0]
    mechanism = rep["limits"]["mechanism"]
    assert rep["limits"] == {"mechanism": mechanism, "memoryMiB": 256, "pids": 8}, rep
    if not host_delegates_memory():
        assert mechanism == "rlimit", rep
    if mechanism == "rlimit":
        # the workload runs under the address-space limit and the process cap
        assert log_line(server, "forks-1", "Max address space").split()[3] == str(256 << 20)
        assert log_line(server, "forks-1", "Max processes").split()[2] == "8"
    else:
        # the sandbox's host cgroup holds the limits
        cg = open(f"/proc/{rep['pid']}/cgroup").read().split("0::", 1)[1].split("\n")[0]
        mount = next(l.split()[4] for l in open("/proc/self/mountinfo") if " - cgroup2 " in l)
        assert open(f"{mount}{cg}/memory.max").read().strip() == str(256 << 20)
        assert open(f"{mount}{cg}/pids.max").read().strip() == "8"
    forked, refused = (int(x) for x in log_line(server, "forks-1", "forked").split()[1::2])
    # the agent and the workload count too: at most 6 children, the rest refused
    assert forked <= 6 and refused >= 10, (forked, refused)


# four children that each hold 48 MiB: within each one's address space, but
# 192 MiB together, above the sandbox's 128 MiB
HOG_APP = """\
import os, time
for i in range(4):
    if os.fork() == 0:
        hold = b"\\x01" * (48 << 20)
        time.sleep(3600)
        os._exit(0)
print("holding", flush=True)
time.sleep(3600)
"""


def test_a_replica_past_its_memory_limit_is_killed_and_says_so(server, tmp_path):
    b = make_bundle(tmp_path / "hog", HOG_APP)
    apply(server, enclave("hog", b, limits={"memoryMiB": 128}))

    def killed():
        reps = status(server, "hog").get("replicas", [])
        return reps[0] if reps and reps[0].get("lastExit", {}).get("reason") else None
    rep = wait_for(killed, timeout=30, what="a replica ended by its memory limit")
    mechanism = rep["limits"]["mechanism"]
    assert rep["lastExit"]["reason"] == ("oomKilled" if mechanism == "cgroup2" else "memoryLimit"), rep
    assert rep["lastExit"]["how"] == "signal" and rep["lastExit"]["signal"] == signal.SIGKILL, rep
    st = status(server, "hog")
    assert rep["lastExit"]["reason"] in st["lastEvent"] or st["restarts"] >= 1, st


# holds HOLD MiB for SECONDS after it starts, then lets go and idles
HOLD_APP = """\
import sys, time
hold = b"\\x01" * (int(sys.argv[1]) << 20)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
del hold
print("released", flush=True)
time.sleep(3600)
"""


def test_memory_above_the_threshold_adds_a_replica_and_below_removes_it(server, tmp_path):
    b = make_bundle(tmp_path / "mem", HOLD_APP)
    (b / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py", "96", "12"]\n')
    apply(server, enclave("mem", b, replicas={"min": 1, "max": 2}, limits={"memoryMiB": 160},
                          scaling={"memoryPercent": 50, "upAfterSeconds": 1, "downAfterSeconds": 2}))
    log_line(server, "mem-1", "holding")
    holding = time.time()
    # 96 MiB of 160 is 60 %: one replica more after a second above 50 %, plus
    # the runner's sample (200 ms) and a controller pass (1 s)
    wait_for(lambda: status(server, "mem").get("desired") == 2, timeout=10, what="a second replica on memory")
    assert time.time() - holding <= 1 + 4, time.time() - holding
    up = audited(server, "enclave.scaled", lambda e: e["details"]["to"] == 2)[0]["details"]
    assert up["from"] == 1 and up["inFlight"] == 0 and up["memoryPercent"] > 50, up
    running(server, "mem", 2)
    # both let go 12 s after their start: back to one after 2 s below
    wait_for(lambda: status(server, "mem").get("desired") == 1, timeout=40,
             what="scaled back down once the memory is released")
    down = audited(server, "enclave.scaled", lambda e: e["details"]["to"] == 1)[0]["details"]
    assert down["from"] == 2 and down["memoryPercent"] < 50, down
    assert "released" in runner_log(server, "mem-1") and "released" in runner_log(server, "mem-2")


def test_a_secrets_value_without_an_attestation_policy_is_refused_at_apply(server, tmp_path):
    b = make_bundle(tmp_path / "b", FORKS_APP)
    apply(server, manifest("Secret", "db", {"data": {"password": "x"}}))
    r = server.request("POST", "/v1/apply", json={"items": [
        enclave("nopolicy", b, secrets=[{"key": "model-key", "file": "k"},
                                        {"secret": "db", "key": "password", "file": "db"}])]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "spec.attestationPolicy" in err["message"] and "secrets[1]" in err["message"], err
    assert server.request("GET", "/v1/enclaves/nopolicy").status_code == 404
    # a Key alone is released under the Key's own policy: accepted without one
    apply(server, enclave("keyonly", b, secrets=[{"key": "model-key", "file": "k"}]))


SERVE_APP = """\
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


def test_last_exit_and_last_error_outlive_a_restart_of_the_api_role(server, tmp_path):
    b = make_bundle(tmp_path / "b", SERVE_APP, port=8080)
    apply(server, enclave("survivor", b, replicas={"min": 1, "max": 2}))
    agent = running(server, "survivor", 1)["replicas"][0]["pid"]
    # kill the workload (the agent's child): the agent reports it and exits
    workload = int(subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()[0])
    os.kill(workload, signal.SIGKILL)
    before = wait_for(lambda: (s := status(server, "survivor"))["restarts"] == 1 and s["ready"] == 1 and s,
                      timeout=15, what="a restart")["replicas"][0]
    assert before["lastExit"]["how"] == "exited" and before["lastExit"]["code"] == 128 + 9, before
    assert "signal 9" in before["lastError"], before
    old = server.role_pid("api")
    os.kill(old, signal.SIGKILL)

    def new_api():
        try:
            return server.role_pid("api") != old
        except AssertionError:  # between the old one and the new one
            return False
    wait_for(new_api, what="the api role started again")
    server.wait_healthy()
    # the new controller writes the status when it adds a replica
    apply(server, enclave("survivor", b, replicas={"min": 2, "max": 2}))
    after = running(server, "survivor", 2)["replicas"][0]
    assert after["lastExit"] == before["lastExit"] and after["lastError"] == before["lastError"], (before, after)
