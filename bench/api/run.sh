#!/usr/bin/env bash
# Control-plane store benchmark: durable creates/s and gets/s through the REST
# API over HTTPS keep-alive (wrk), beside sqlite3's own durable insert rate on
# the same disk (one transaction per row, WAL, synchronous=FULL: what a
# server without group commit could do at best).
# Usage: bench/api/run.sh [seconds]   (default 10)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
secs=${1:-10}
bench_build build src/daemon/cloisterd
bench_start_cloisterd build --api-threads 2
curl -fsS --cacert "$BENCH_CA" -H "Authorization: Bearer $CLOISTER_TOKEN" "$BENCH_URL/v1/groups" \
    -d '{"apiVersion":"cloister.dev/v1","kind":"Group","metadata":{"name":"bench-target"},"spec":{}}' >/dev/null

rate() { awk '/Requests\/sec/ {print $2}' "$1"; }

echo "== cloister: durable creates of a kind no policy depends on (POST /v1/attestationpolicies), wrk -t2 -c64 -d${secs}s"
BENCH_RUN=a BENCH_KIND=attestationpolicies wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/create.lua "$BENCH_URL" \
    >"$BENCH_WORK/create.txt"
grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/create.txt"
echo "== cloister: durable creates of Groups, policy inputs (POST /v1/groups), wrk -t2 -c64 -d${secs}s"
BENCH_RUN=c BENCH_KIND=groups wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/create.lua "$BENCH_URL" \
    >"$BENCH_WORK/create-groups.txt"
grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/create-groups.txt"
echo "== cloister: gets (GET /v1/groups/NAME), wrk -t2 -c64 -d${secs}s"
wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/get.lua "$BENCH_URL" >"$BENCH_WORK/get.txt"
grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/get.txt"
count=$(curl -fsS --cacert "$BENCH_CA" -H "Authorization: Bearer $CLOISTER_TOKEN" "$BENCH_URL/v1/groups" |
    /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
echo "groups stored after the run: $count"

echo "== reference: sqlite3, one durable transaction per insert (WAL, synchronous=FULL), same disk"
ref=$(bench_sqlite3_durable_inserts "$BENCH_WORK" 2000)
printf "sqlite3 durable inserts/s: %.0f\n" "$ref"

c=$(rate "$BENCH_WORK/create.txt")
cg=$(rate "$BENCH_WORK/create-groups.txt")
g=$(rate "$BENCH_WORK/get.txt")
printf "\nSUMMARY creates/s %.0f (%.2fx sqlite3 per-transaction inserts; aim 5000)  Group creates/s %.0f (each rebuilds the policy set)  gets/s %.0f (aim 30000)\n" \
    "$c" "$(echo "$c / $ref" | bc -l)" "$cg" "$g"
