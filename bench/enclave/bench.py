"""Enclave figures against a running cloisterd (bench/enclave/run.sh sets it
up): launch to ready of agent-mode replicas, and the latency a request pays
for the aTLS hop (the same workload behind the proxy as an Enclave and as a
plain upstream on the host, one client, keep-alive).

Each launch is an Enclave of one replica applied through the API (the
runner's socket answers only the api role, whose controller launches it);
launch to ready runs from the runner creating the replica's directory (just
before it launches the sandbox) until the agent completes a verified aTLS
handshake. Apply to ready, which adds the wait for the controller's next
pass (once a second), is printed beside it.

usage: bench.py DATA_DIR PROXY_PORT TOKEN BUNDLE HOST_UPSTREAM_PORT LAUNCHES REQUESTS
(the API from CLOISTER_SERVER, CLOISTER_CA and CLOISTER_TOKEN, the admin's)"""
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import time
import urllib.parse

data, proxy_port, token, bundle, up_port, launches, n_req = sys.argv[1:8]
proxy_port, up_port, launches, n_req = int(proxy_port), int(up_port), int(launches), int(n_req)
api = urllib.parse.urlsplit(os.environ["CLOISTER_SERVER"])
api_tls = ssl.create_default_context(cafile=os.environ["CLOISTER_CA"])


def call(method, path, body=None):
    c = http.client.HTTPSConnection(api.hostname, api.port, context=api_tls, timeout=30)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["CLOISTER_TOKEN"]})
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"{}")
    c.close()
    return out


def handshake(path):
    dirfd = os.open(os.path.dirname(path), os.O_PATH)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t = ctx.wrap_socket(s)
    cert = t.getpeercert(binary_form=True)
    t.close()
    return cert


def wait_for(cond, what, limit=30):
    end = time.perf_counter() + limit
    while not cond():
        if time.perf_counter() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.0005)


ready, applied = [], []
for i in range(launches):
    name = f"bench-{i}"
    replica = os.path.join(data, "runner", f"{name}-1")
    t_apply = time.perf_counter()
    status, item = call("POST", "/v1/apply", {"items": [{
        "apiVersion": "cloister.dev/v1", "kind": "Enclave", "metadata": {"name": name},
        "spec": {"bundle": bundle, "attestationPolicy": "bench"}}]})
    assert status in (200, 201), item
    wait_for(lambda: os.path.isdir(replica), f"the runner to launch {name}-1")
    t0 = time.perf_counter()
    atls = os.path.join(replica, "atls.sock")
    while True:
        try:
            if handshake(atls):
                break
        except (OSError, ssl.SSLError):
            time.sleep(0.001)
    t1 = time.perf_counter()
    ready.append((t1 - t0) * 1000)
    applied.append((t1 - t_apply) * 1000)
    status, item = call("DELETE", f"/v1/enclaves/{name}")
    assert status == 200, item
    wait_for(lambda: not os.path.exists(replica), f"the controller to stop {name}-1")
ready.sort()
applied.sort()
print(f"launch to aTLS ready (agent: key, evidence, certificate): median {statistics.median(ready):.1f} ms, "
      f"p90 {ready[int(0.9 * (len(ready) - 1))]:.1f} ms over {launches} launches")
print(f"Enclave applied through the API to aTLS ready (the controller passes once a second): median "
      f"{statistics.median(applied):.1f} ms, p90 {applied[int(0.9 * (len(applied) - 1))]:.1f} ms")


def latencies(host):
    c = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    out = []
    for i in range(n_req + 20):
        t0 = time.perf_counter()
        c.request("GET", "/", headers={"Host": host, "Authorization": f"Bearer {token}"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, (host, r.status)
        if i >= 20:  # warm-up: pools, bridges
            out.append((time.perf_counter() - t0) * 1000)
    c.close()
    out.sort()
    return statistics.median(out), out[int(0.99 * (len(out) - 1))]


e50, e99 = latencies("scorer.localhost")
d50, d99 = latencies("direct.localhost")
print(f"through the proxy, same workload: enclave (aTLS hop) p50 {e50:.3f} ms p99 {e99:.3f} ms; "
      f"plain upstream p50 {d50:.3f} ms p99 {d99:.3f} ms")
print(f"SUMMARY launch to ready {statistics.median(ready):.1f} ms median (target <= 50 ms, the workload's own start "
      f"excluded); aTLS hop adds {e50 - d50:.3f} ms at p50, {e99 - d99:.3f} ms at p99")
