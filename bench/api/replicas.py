#!/usr/bin/env python3
"""Change visibility between two api replicas: two cloisterd processes with
roles [api, proxy] on one PostgreSQL database, with the kms, audit and runner
apart over mutual TLS (set up as tests/test_replicas.py does), a watch
(GET /v1/services?watch=1) open on replica 2, and N Service creates through
replica 1, one at a time. For each: the time from sending the create to the
watch's ADDED event on replica 2, and from the create's 201 to that event
(negative when the event came first). Prints p50 and p99 of both.

Usage: bench/api/replicas.py BUILD_DIR POSTGRES_URL [N]   (N default 500;
the URL is scripts/pg-test.sh's: postgresql:///cloister?host=DIR&user=cloister;
each run makes a database of its own there)"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    build, url = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    os.environ["CLOISTER_BUILD"] = str(Path(build).resolve())
    db = "replicas_" + os.urandom(4).hex()
    subprocess.run(["psql", "-XAtq", url, "-c", f"CREATE DATABASE {db}"], check=True, capture_output=True)
    url = url.replace("postgresql:///cloister?", f"postgresql:///{db}?")
    sys.path.insert(0, str(ROOT / "tests"))
    import requests
    from test_replicas import Replicas  # the same two-replica setup as the test

    with tempfile.TemporaryDirectory(prefix="cloister-replicas-") as tmp:
        os.chmod(tmp, 0o711)
        r = Replicas(Path(tmp), url)
        try:
            head = r.s[1].request("GET", "/v1/services").json()["metadata"]["resourceVersion"]
            seen, cond = {}, threading.Condition()
            watch = requests.get(f"{r.s[1].url}/v1/services?watch=1&resourceVersion={head}", stream=True,
                                 verify=r.s[1].ca, timeout=60,
                                 headers={"Authorization": f"Bearer {r.s[1].token}"})
            assert watch.status_code == 200, watch.text

            def reader():
                try:
                    for line in watch.iter_lines():
                        if line.startswith(b"data:"):
                            t = time.perf_counter()
                            ev = json.loads(line[5:])
                            with cond:
                                seen[ev["object"]["metadata"]["name"]] = t
                                cond.notify_all()
                except (requests.RequestException, AttributeError, ValueError):
                    pass  # the stream closed at the end

            threading.Thread(target=reader, daemon=True).start()
            from_send, from_ack = [], []
            run = os.urandom(3).hex()
            for i in range(n):
                name = f"vis-{run}-{i}"
                doc = {"apiVersion": "cloister.dev/v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"upstream": {"url": "http://127.0.0.1:9"}}}
                t0 = time.perf_counter()
                resp = r.s[0].request("POST", "/v1/services", json=doc)
                t1 = time.perf_counter()
                assert resp.status_code == 201, resp.text
                with cond:
                    assert cond.wait_for(lambda: name in seen, timeout=10), f"{name} never reached replica 2"
                    t2 = seen[name]
                from_send.append((t2 - t0) * 1000)
                from_ack.append((t2 - t1) * 1000)
            watch.close()
            print(f"change visibility between two api replicas, {n} creates on replica 1 watched on replica 2: "
                  f"from the request p50 {pct(from_send, 50):.2f} ms p99 {pct(from_send, 99):.2f} ms; "
                  f"from its 201 p50 {pct(from_ack, 50):.2f} ms p99 {pct(from_ack, 99):.2f} ms")
        finally:
            r.stop(kill=True)


if __name__ == "__main__":
    main()
