"""Key releases per second end to end: a fresh challenge, sandbox evidence
binding it and a fresh P-256 key, and the release of a data key as a JWE,
against a running cloisterd (from bench/lib.sh's environment).

The runner's socket answers only the api role now, so the evidence is made
by bench-evidence, the runner's own signing code (attest_sandbox_issue())
with the runner's platform key read from the data dir, kept running beside
this script and asked over a pipe, as the runner was over its socket.

usage: release.py SECONDS BENCH_EVIDENCE CLOISTERD"""
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

url, ca, data, seconds = os.environ["BENCH_URL"], os.environ["BENCH_CA"], os.environ["BENCH_DATA"], float(sys.argv[1])
evidence_bin, cloisterd = sys.argv[2:4]
session = requests.Session()
session.headers["Authorization"] = "Bearer " + os.environ["CLOISTER_TOKEN"]


bundle = tempfile.mkdtemp(prefix="cloister-bench-bundle-")
os.chmod(bundle, 0o755)
with open(os.path.join(bundle, "enclave.yaml"), "w") as f:
    f.write('command: ["/bin/sleep", "3600"]\n')
issuer = subprocess.Popen([evidence_bin, data, bundle, cloisterd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
first = issuer.stdout.readline().split()
if first[:1] != ["pcr0"]:
    sys.exit("bench-evidence did not start")
pcr0 = first[1]


def evidence(nonce, der):
    issuer.stdin.write(f"{nonce} {der.hex()}\n")
    issuer.stdin.flush()
    doc = issuer.stdout.readline().strip()
    if not doc:
        sys.exit("bench-evidence stopped")
    return doc


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
    doc = evidence(nonce, der)
    r = session.post(url + "/v1/kms/keys/bench/release", verify=ca,
                     json={"type": "sandbox", "evidence": doc, "publicKey": base64.b64encode(der).decode()})
    if r.status_code != 200:
        sys.exit(f"release refused: {r.text}")
    latencies.append(time.perf_counter() - start)
issuer.stdin.close()
issuer.wait()
os.remove(os.path.join(bundle, "enclave.yaml"))
os.rmdir(bundle)
latencies.sort()
print("releases %d  per second %.0f  median %.2f ms  p99 %.2f ms  (challenge + evidence + verify + policy + data key + JWE,"
      " one client)" % (len(latencies), len(latencies) / seconds, statistics.median(latencies) * 1e3,
                         latencies[int(len(latencies) * 0.99)] * 1e3))
