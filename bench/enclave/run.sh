#!/usr/bin/env bash
# Enclave figures (issue 9's benchmark): launch to ready of an agent-mode
# replica (an Enclave applied through the API, whose controller has the
# runner launch it; from the runner's launch, the agent gets its evidence,
# makes its certificate and completes a verified aTLS handshake; the
# workload's own start is not waited for), and the latency the aTLS hop adds to a request
# through the proxy (the same python workload as an Enclave and as a plain
# upstream on the host, one client, keep-alive, sequential requests).
# Usage: bench/enclave/run.sh [launches] [requests]   (default 20, 2000)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
launches=${1:-20}
requests=${2:-2000}
build=${BUILD:-build}
bench_build "$build" src/daemon/cloisterd src/cli/cloister src/agent/cloister-agent
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ph=$(free_port)
bench_start_cloisterd "$build" --proxy-http-listen "127.0.0.1:$ph" --proxy-listen "127.0.0.1:$(free_port)"

bundle="$BENCH_WORK/bundle"
mkdir -p "$bundle"
cat >"$bundle/app.py" <<'APP'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
import sys
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), H).serve_forever()
APP
printf 'command: ["/usr/bin/python3", "app.py"]\nport: 8080\n' >"$bundle/enclave.yaml"
chmod 755 "$bundle" "$BENCH_WORK"
up=$(free_port)
/usr/bin/python3 "$bundle/app.py" "$up" &
up_pid=$!
trap 'kill $up_pid 2>/dev/null; bench_stop_cloisterd' EXIT

export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$BENCH_WORK/config
cli=$build/src/cli/cloister
pcr0=$("$cli" enclave measure "$bundle")
cat >"$BENCH_WORK/m.yaml" <<EOF2
apiVersion: cloister.dev/v1
kind: AttestationPolicy
metadata: {name: bench}
spec: {types: [sandbox], allowSandbox: true, maxAgeSeconds: 300, referenceValues: {pcr0: ["$pcr0"]}}
---
apiVersion: cloister.dev/v1
kind: Enclave
metadata: {name: scorer}
spec: {bundle: "$bundle", attestationPolicy: bench}
---
apiVersion: cloister.dev/v1
kind: Policy
metadata: {name: bench}
spec: {rules: [{effect: allow, condition: {match: 'ctx.user.name == "bench"'}}]}
---
apiVersion: cloister.dev/v1
kind: User
metadata: {name: bench}
spec: {type: human}
---
apiVersion: cloister.dev/v1
kind: Credential
metadata: {name: bench}
spec: {user: bench, type: authToken}
---
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: scorer}
spec: {upstream: {enclave: scorer}, policies: [bench]}
---
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: direct}
spec: {upstream: {url: "http://127.0.0.1:$up"}, policies: [bench]}
EOF2
"$cli" apply -f "$BENCH_WORK/m.yaml" >/dev/null
cred=$("$cli" token create bench -o json | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
token=$(curl -fsS --cacert "$BENCH_CA" -X POST "$BENCH_URL/v1/auth/token" -d "{\"token\":\"$cred\"}" |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
for _ in $(seq 1 300); do # the replica starts and the proxy learns of it
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: scorer.localhost" -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$ph/")" = 200 ] && break
    sleep 0.1
done
/usr/bin/python3 "$bench_top/bench/enclave/bench.py" "$BENCH_DATA" "$ph" "$token" "$bundle" "$up" "$launches" "$requests"
