#!/usr/bin/env bash
# The api's calls to the kms role, local beside remote, in one run:
# POST /v1/kms/encrypt (32 bytes) on one keep-alive connection (wrk -t1 -c1),
#  1. with every role in one `cloisterd --dev` (the kms on its Unix socket);
#  2. with the kms as its own process over mutual TLS on loopback
#     (`cloisterd --init`, then a kms process and one with the other roles,
#     as tests/test_roles_apart.py and docs/deployment.md do).
# One connection, so each operation waits for the one before it: the figures
# are the per-call latency of the api -> kms hop, not throughput under load.
# Usage: bench/kms/remote.sh [seconds]   (default 5; BUILD=dir picks the release build dir, default build)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
secs=${1:-5}
build=${BUILD:-build}
bench_build "$build" src/daemon/cloisterd
cloisterd=$build/src/daemon/cloisterd
key='{"apiVersion":"cloister.dev/v1","kind":"Key","metadata":{"name":"bench"},"spec":{"purpose":"encrypt"}}'

# encrypt URL CA LABEL: one connection for $secs seconds; prints "LABEL ops/s p50 p99"
encrypt() {
    local url=$1 ca=$2 label=$3 out
    curl -fsS --cacert "$ca" -H "Authorization: Bearer $CLOISTER_TOKEN" "$url/v1/keys" -d "$key" >/dev/null
    out=$(wrk -t1 -c1 -d"${secs}s" --latency -s bench/kms/encrypt.lua "$url")
    if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; return 1; fi
    printf "%-32s %8.0f ops/s   p50 %8s   p99 %8s\n" "$label" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}

echo "== POST /v1/kms/encrypt, one connection (wrk -t1 -c1 -d${secs}s)"
bench_start_cloisterd "$build"
local_line=$(encrypt "$BENCH_URL" "$BENCH_CA" "kms local (Unix socket)")
bench_pause_cloisterd

# the same roles apart: the kms in a process of its own, the others in one
work=$BENCH_WORK
pids=()
stop_apart() {
    [ ${#pids[@]} -eq 0 ] || { kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; }
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap stop_apart EXIT
kms_port=$((20000 + RANDOM % 20000)) audit_port=$((20000 + RANDOM % 20000)) api_port=$((20000 + RANDOM % 20000))
printf 'dataDir: %s\nkms: {seal: {mode: passphrase}}\n' "$work/init" >"$work/init.yaml"
"$cloisterd" --init --config "$work/init.yaml" </dev/null >/dev/null
cp -a "$work/init" "$work/kms"
cp -a "$work/init" "$work/front"
cat >"$work/kms.yaml" <<YAML
dataDir: $work/kms
roles: [kms]
kms: {listen: "127.0.0.1:$kms_port", seal: {mode: passphrase}}
peers: {audit: "https://127.0.0.1:$audit_port"}
YAML
cat >"$work/front.yaml" <<YAML
dataDir: $work/front
roles: [api, proxy, audit, runner]
api: {listen: "127.0.0.1:$api_port"}
proxy: {listen: "127.0.0.1:$((api_port + 1))"}
audit: {listen: "127.0.0.1:$audit_port"}
peers: {kms: "https://127.0.0.1:$kms_port"}
YAML
for m in front kms; do
    "$cloisterd" --config "$work/$m.yaml" >"$work/$m.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do grep -q '"every role is ready"' "$work/$m.log" && break; sleep 0.1; done
done
echo 'a passphrase of at least 8' |
    "$cloisterd" unseal --kms "https://127.0.0.1:$kms_port" --pki-dir "$work/init" --passphrase-fd 0 >/dev/null
url=https://127.0.0.1:$api_port
for _ in $(seq 1 300); do # ready once the api has seen the kms unsealed
    curl -fsS --cacert "$work/init/ca.pem" "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
CLOISTER_TOKEN=$(cat "$work/init/admin.token")
remote_line=$(encrypt "$url" "$work/init/ca.pem" "kms remote (mutual TLS)")
# the handshakes behind all those calls: the api's mutual-TLS connections to the kms
opened=$(curl -fsS --cacert "$work/init/ca.pem" -H "Authorization: Bearer $CLOISTER_TOKEN" "$url/metrics" |
    awk '/^cloister_peer_tls_connections_total\{role="kms"\}/ {print $2}')
echo "$local_line"
echo "$remote_line"
printf "\nSUMMARY %s\nSUMMARY %s (%s TLS connections to the kms in all)\n" "$local_line" "$remote_line" "$opened"
