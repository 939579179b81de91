#!/usr/bin/env bash
# Audit log benchmark, with its references measured on the same disk in the
# same run:
#   - durable appends/s through the audit role's socket (clients send batches,
#     the role group-commits and acknowledges after the commit); aim >= 50,000.
#     The socket answers only cloisterd's own roles, so bench-audit runs the
#     audit role's code itself, on cloisterd's data dir while cloisterd is
#     stopped, with a role table in which the bench is the api role
#   - durable appends/s of the storage layer alone, in batches of 10,000
#   - inclusion and consistency proof latency at 1,000,000 entries
#   - verify speed: `cloister audit verify` end to end over HTTPS, and the
#     recompute alone (hash every entry, rebuild the tree)
#   - references: write+fdatasync/s, and sqlite3 with one durable transaction
#     per insert (what an append log without group commit could do at best)
# Usage: bench/audit/run.sh [seconds] [entries]   (defaults 5 and 1000000)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
secs=${1:-5}
entries=${2:-1000000}
build=${BENCH_BUILD:-build}
bench_build "$build" src/daemon/cloisterd src/cli/cloister bench/audit/bench-audit
bench_start_cloisterd "$build"
work=$BENCH_WORK

echo "== cloister audit role: durable appends through its socket, ${secs}s"
bench_pause_cloisterd
"$build/bench/audit/bench-audit" socket "$BENCH_DATA" "$secs" 4 1000 | tee "$work/socket.txt"
bench_resume_cloisterd

echo "== cloister audit verify, end to end over HTTPS"
export XDG_CONFIG_HOME="$work/config" CLOISTER_SERVER="$BENCH_URL" CLOISTER_CA="$BENCH_CA"
start=$(date +%s.%N)
"$build/src/cli/cloister" audit verify --key "$work/data/audit.pub" | tee "$work/verify.txt"
end=$(date +%s.%N)
n=$(awk '{print $2}' "$work/verify.txt")
verify_rate=$(echo "$n / ($end - $start)" | bc -l)
printf "cli_verify_per_s %.0f entries/s (%s entries in %.2fs)\n" "$verify_rate" "$n" "$(echo "$end - $start" | bc -l)"

echo "== storage layer: $entries entries in batches of 10000, then proofs and recompute at that size"
"$build/bench/audit/bench-audit" log "$work" "$entries" 10000 | tee "$work/log.txt"

echo "== references on the same disk"
"$build/bench/audit/bench-audit" fsync "$work" 2000 | tee "$work/fsync.txt"
ref=$(bench_sqlite3_durable_inserts "$work" 2000)
printf "sqlite3_durable_inserts_per_s %.0f (one transaction per insert, WAL, synchronous=FULL)\n" "$ref"

role=$(awk '{print $2}' "$work/socket.txt")
store=$(awk '/storage_appends_per_s/ {print $2}' "$work/log.txt")
fs=$(awk '{print $2}' "$work/fsync.txt")
printf "\nSUMMARY role appends/s %.0f (aim 50000; %.0fx sqlite3 per-transaction inserts, %.0fx fsync/s)  storage appends/s %.0f\n" \
    "$role" "$(echo "$role / $ref" | bc -l)" "$(echo "$role / $fs" | bc -l)" "$store"
grep -E "inclusion_proof_us|consistency_proof_us|verify_recompute_per_s" "$work/log.txt" | sed 's/^/SUMMARY /'
printf "SUMMARY cli_verify_per_s %.0f\n" "$verify_rate"
