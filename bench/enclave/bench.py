"""Enclave figures against a running cloisterd (bench/enclave/run.sh sets it
up): launch to ready of agent-mode replicas (POST /v1/sandboxes on the
runner until the agent completes a verified aTLS handshake), and the
latency a request pays for the aTLS hop (the same workload behind the proxy
as an Enclave and as a plain upstream on the host, one client, keep-alive).

usage: bench.py DATA_DIR PROXY_PORT TOKEN BUNDLE HOST_UPSTREAM_PORT LAUNCHES REQUESTS"""
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import time

data, proxy_port, token, bundle, up_port, launches, n_req = sys.argv[1:8]
proxy_port, up_port, launches, n_req = int(proxy_port), int(up_port), int(launches), int(n_req)
runner_sock = os.path.join(data, "run", "runner.sock")


class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("runner")
        self.path_ = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path_)


def runner(method, path, body=None):
    c = Unix(runner_sock)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
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


ready = []
for i in range(launches):
    name = f"bench-{i}"
    t0 = time.perf_counter()
    status, item = runner("POST", "/v1/sandboxes", {"name": name, "bundle": bundle, "agent": {"secrets": []}})
    assert status == 201, item
    atls = os.path.join(data, "runner", name, "atls.sock")
    while True:
        try:
            if handshake(atls):
                break
        except (OSError, ssl.SSLError):
            time.sleep(0.001)
    ready.append((time.perf_counter() - t0) * 1000)
    runner("DELETE", f"/v1/sandboxes/{name}")
ready.sort()
print(f"launch to aTLS ready (agent: key, evidence, certificate): median {statistics.median(ready):.1f} ms, "
      f"p90 {ready[int(0.9 * (len(ready) - 1))]:.1f} ms over {launches} launches")


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
