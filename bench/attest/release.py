"""Key releases per second end to end: a fresh challenge, sandbox evidence
from the runner binding it and a fresh P-256 key, and the release of a data
key as a JWE, against a running cloisterd (from bench/lib.sh's environment)."""
import base64
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

url, ca, data, seconds = os.environ["BENCH_URL"], os.environ["BENCH_CA"], os.environ["BENCH_DATA"], float(sys.argv[1])
session = requests.Session()
session.headers["Authorization"] = "Bearer " + os.environ["CLOISTER_TOKEN"]


def runner(method, path, body=None):
    c = http.client.HTTPConnection("localhost")
    c.sock = socket.socket(socket.AF_UNIX)
    c.sock.connect(os.path.join(data, "run", "runner.sock"))
    c.request(method, path, body=json.dumps(body) if body else None)
    r = c.getresponse()
    return json.loads(r.read())


bundle = tempfile.mkdtemp(prefix="cloister-bench-bundle-")
os.chmod(bundle, 0o755)
with open(os.path.join(bundle, "enclave.yaml"), "w") as f:
    f.write('command: ["/bin/sleep", "3600"]\n')
pcr0 = runner("POST", "/v1/sandboxes", {"name": "bench", "bundle": bundle})["pcrs"]["0"]
meta = lambda k, n, spec: {"apiVersion": "cloister.dev/v1", "kind": k, "metadata": {"name": n}, "spec": spec}  # noqa
r = session.post(url + "/v1/apply", verify=ca, json={"items": [
    meta("AttestationPolicy", "bench", {"types": ["sandbox"], "allowSandbox": True, "referenceValues": {"pcr0": [pcr0]}}),
    meta("Key", "bench", {"purpose": "encrypt", "release": {"attestationPolicy": "bench"}})]})
r.raise_for_status()

latencies, end = [], time.time() + seconds
while time.time() < end:
    start = time.perf_counter()
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    nonce = session.post(url + "/v1/attest/challenge", verify=ca).json()["nonce"]
    ev = runner("POST", "/v1/evidence", {"name": "bench", "nonce": nonce, "public_key": der.hex()})
    r = session.post(url + "/v1/kms/keys/bench/release", verify=ca,
                     json={"type": "sandbox", "evidence": ev["document"], "publicKey": base64.b64encode(der).decode()})
    if r.status_code != 200:
        sys.exit(f"release refused: {r.text}")
    latencies.append(time.perf_counter() - start)
runner("DELETE", "/v1/sandboxes/bench")
os.remove(os.path.join(bundle, "enclave.yaml"))
os.rmdir(bundle)
latencies.sort()
print("releases %d  per second %.0f  median %.2f ms  p99 %.2f ms  (challenge + evidence + verify + policy + data key + JWE,"
      " one client)" % (len(latencies), len(latencies) / seconds, statistics.median(latencies) * 1e3,
                         latencies[int(len(latencies) * 0.99)] * 1e3))
