#!/usr/bin/env bash
# Control-plane store benchmark: durable creates/s and gets/s through the REST
# API over HTTPS keep-alive (wrk), beside sqlite3's own durable insert rate on
# the same disk (one transaction per row, WAL, synchronous=FULL: what a
# server without group commit could do at best).
# Usage: bench/api/run.sh [seconds]   (default 10)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
secs=${1:-10}
scripts/setup.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build src/daemon/cloisterd >/dev/null

work=$(mktemp -d "$top/build/bench-api.XXXXXX")
port=$((20000 + RANDOM % 20000))
build/src/daemon/cloisterd --dev --data-dir "$work/data" --api-listen "127.0.0.1:$port" --api-threads 2 \
    >"$work/cloisterd.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    curl -fsS --cacert "$work/data/ca.pem" "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
export CLOISTER_TOKEN=$(cat "$work/data/admin.token")
url="https://127.0.0.1:$port"
curl -fsS --cacert "$work/data/ca.pem" -H "Authorization: Bearer $CLOISTER_TOKEN" "$url/v1/groups" \
    -d '{"apiVersion":"cloister.dev/v1","kind":"Group","metadata":{"name":"bench-target"},"spec":{}}' >/dev/null

rate() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99() { awk '/ 99%/ {print $2}' "$1"; }

echo "== cloister: durable creates (POST /v1/groups), wrk -t2 -c64 -d${secs}s"
BENCH_RUN=c wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/create.lua "$url" >"$work/create.txt"
grep -E "Requests/sec|non-2xx| 50%| 99%" "$work/create.txt"
echo "== cloister: gets (GET /v1/groups/NAME), wrk -t2 -c64 -d${secs}s"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/get.lua "$url" >"$work/get.txt"
grep -E "Requests/sec|non-2xx| 50%| 99%" "$work/get.txt"
count=$(curl -fsS --cacert "$work/data/ca.pem" -H "Authorization: Bearer $CLOISTER_TOKEN" "$url/v1/groups" |
    /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
echo "groups stored after the run: $count"

echo "== reference: sqlite3, one durable transaction per insert (WAL, synchronous=FULL), same disk"
n=2000
{
    echo "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
    echo "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);"
    for i in $(seq 1 $n); do echo "INSERT INTO t VALUES ('k$i', '{\"spec\":{}}');"; done
} >"$work/ref.sql"
start=$(date +%s.%N)
sqlite3 "$work/ref.db" <"$work/ref.sql" >/dev/null
end=$(date +%s.%N)
ref=$(echo "$n / ($end - $start)" | bc -l)
printf "sqlite3 durable inserts/s: %.0f\n" "$ref"

c=$(rate "$work/create.txt")
g=$(rate "$work/get.txt")
printf "\nSUMMARY creates/s %.0f (%.2fx sqlite3 per-transaction inserts; aim 5000)  gets/s %.0f (aim 30000)\n" \
    "$c" "$(echo "$c / $ref" | bc -l)" "$g"
