#!/usr/bin/env bash
# Control-plane store benchmark: durable creates/s and gets/s through the REST
# API over HTTPS keep-alive (wrk) on each store driver in one run (SQLite, then
# a throwaway PostgreSQL of scripts/pg-test.sh on the same disk, fsync on,
# synchronous_commit on, reached over TCP on loopback as a replica would),
# the same of the store alone without HTTP (bench-store-throughput: 64
# writer threads, one create per transaction),
# beside sqlite3's own durable insert rate on the same disk (one transaction
# per row, WAL, synchronous=FULL: what a server without group commit could do
# at best), and the change-visibility latency between two store handles on
# one PostgreSQL database (two api replicas).
# Usage: bench/api/run.sh [seconds]   (default 10)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
secs=${1:-10}
bench_build build src/daemon/cloisterd src/store/bench-store-latency src/store/bench-store-throughput
bench_start_cloisterd build --api-threads 2

rate() { awk '/Requests\/sec/ {print $2}' "$1"; }

# the three runs against the cloisterd now up; their outputs are named after STORE
run_store() {
    local store=$1
    curl -fsS --cacert "$BENCH_CA" -H "Authorization: Bearer $CLOISTER_TOKEN" "$BENCH_URL/v1/groups" \
        -d '{"apiVersion":"cloister.dev/v1","kind":"Group","metadata":{"name":"bench-target"},"spec":{}}' >/dev/null
    echo "== $store: durable creates of a kind no policy depends on (POST /v1/attestationpolicies), wrk -t2 -c64 -d${secs}s"
    BENCH_RUN=a BENCH_KIND=attestationpolicies wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/create.lua \
        "$BENCH_URL" >"$BENCH_WORK/create-$store.txt"
    grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/create-$store.txt"
    echo "== $store: durable creates of Groups, policy inputs (POST /v1/groups), wrk -t2 -c64 -d${secs}s"
    BENCH_RUN=c BENCH_KIND=groups wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/create.lua "$BENCH_URL" \
        >"$BENCH_WORK/create-groups-$store.txt"
    grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/create-groups-$store.txt"
    echo "== $store: gets (GET /v1/groups/NAME), wrk -t2 -c64 -d${secs}s"
    wrk -t2 -c64 -d"${secs}s" --latency -s bench/api/get.lua "$BENCH_URL" >"$BENCH_WORK/get-$store.txt"
    grep -E "Requests/sec|non-2xx| 50%| 99%" "$BENCH_WORK/get-$store.txt"
    local count
    count=$(curl -fsS --cacert "$BENCH_CA" -H "Authorization: Bearer $CLOISTER_TOKEN" "$BENCH_URL/v1/groups" |
        /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
    echo "groups stored after the run: $count"
}

run_store sqlite

# the same on PostgreSQL: a new data dir whose store is a throwaway cluster (loopback TCP)
pg_url=$(scripts/pg-test.sh start --tcp)
trap 'bench_stop_cloisterd; scripts/pg-test.sh stop "$pg_url"' EXIT
bench_pause_cloisterd
BENCH_DATA="$BENCH_WORK/data-pg"
BENCH_CA="$BENCH_DATA/ca.pem"
bench_cloisterd_args+=(--store "$pg_url")
bench_resume_cloisterd
run_store postgres
bench_pause_cloisterd

echo "== the store alone (no HTTP): 64 writer threads, one durable create per transaction, then 2 reader threads"
store_dir=$(mktemp -d "$BENCH_WORK/store-alone.XXXXXX")
store_sqlite=$(build/src/store/bench-store-throughput "$store_dir/store.db" "$secs" 2>/dev/null)
echo "sqlite   $store_sqlite"
psql -XAtq "$pg_url" -c "CREATE DATABASE alone" >/dev/null
store_pg=$(build/src/store/bench-store-throughput "${pg_url/\/cloister?//alone?}" "$secs" 2>/dev/null)
echo "postgres $store_pg"

echo "== postgres: change visibility between two store handles on one database"
psql -XAtq "$pg_url" -c "CREATE DATABASE latency" >/dev/null
latency=$(build/src/store/bench-store-latency "${pg_url/\/cloister?//latency?}" 1000 2>/dev/null)
echo "$latency"

echo "== reference: sqlite3, one durable transaction per insert (WAL, synchronous=FULL), same disk"
ref=$(bench_sqlite3_durable_inserts "$BENCH_WORK" 2000)
printf "sqlite3 durable inserts/s: %.0f\n" "$ref"

echo
for store in sqlite postgres; do
    c=$(rate "$BENCH_WORK/create-$store.txt")
    cg=$(rate "$BENCH_WORK/create-groups-$store.txt")
    g=$(rate "$BENCH_WORK/get-$store.txt")
    printf "SUMMARY %-8s creates/s %.0f (%.2fx sqlite3 per-transaction inserts; aim 5000)  Group creates/s %.0f (each rebuilds the policy set)  gets/s %.0f (aim 30000)\n" \
        "$store" "$c" "$(echo "$c / $ref" | bc -l)" "$cg" "$g"
done
echo "SUMMARY sqlite   $store_sqlite"
echo "SUMMARY postgres $store_pg"
echo "SUMMARY postgres $latency"
echo "SUMMARY load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
