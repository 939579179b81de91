#!/usr/bin/env bash
# KMS benchmark, with its peer measured in the same run:
#  1. bulk AES-256-GCM throughput of the KMS primitive beside
#     `openssl speed -evp aes-256-gcm` on 16 KiB blocks (target >= 80 %);
#  2. small-payload encryptions/s through the REST API (HTTPS keep-alive,
#     wrk), each one a round trip to the kms role (target >= 10,000/s).
# Usage: bench/kms/run.sh [seconds]   (default 5; BUILD=dir picks the release build dir, default build)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
secs=${1:-5}
build=${BUILD:-build}
bench_build "$build" src/daemon/cloisterd src/kms/bench-kms

echo "== bulk AES-256-GCM, 16 KiB blocks: best of 3 interleaved runs of ${secs}s each"
# both divide by the CPU time they used (openssl speed's default); interleaved
# and best-of-3, so that a burst of load elsewhere on the machine does not
# decide the ratio
ours=0 ref=0
for _ in 1 2 3; do
    o=$("$build"/src/kms/bench-kms 16384 "$secs" | awk '{print $2}')
    # openssl speed prints "aes-256-gcm ... <n>k" in 1000s of bytes/s for the 16384-byte column
    r_k=$(openssl speed -evp aes-256-gcm -bytes 16384 -seconds "$secs" 2>/dev/null |
        awk '/^(aes-256-gcm|AES-256-GCM)/ {v=$NF} END {print v}')
    r=$(echo "${r_k%k} * 1000" | bc -l)
    ours=$(echo "if ($o > $ours) $o else $ours" | bc -l)
    ref=$(echo "if ($r > $ref) $r else $ref" | bc -l)
done
printf "cloister kms : %8.1f MB/s\nopenssl speed: %8.1f MB/s\n" "$(echo "$ours / 1000000" | bc -l)" \
    "$(echo "$ref / 1000000" | bc -l)"
bulk_ratio=$(echo "100 * $ours / $ref" | bc -l)

bench_start_cloisterd "$build" --api-threads 2
pid=$bench_pid
work=$BENCH_WORK
url=$BENCH_URL
curl -fsS --cacert "$BENCH_CA" -H "Authorization: Bearer $CLOISTER_TOKEN" "$url/v1/keys" \
    -d '{"apiVersion":"cloister.dev/v1","kind":"Key","metadata":{"name":"bench"},"spec":{"purpose":"encrypt"}}' >/dev/null

# CPU ticks used by the roles (api, kms, audit), to tell the server's cost
# per operation apart from the load other processes put on the machine
role_ticks() { local t=0; for p in $(pgrep -P $pid); do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
echo "== small payloads: POST /v1/kms/encrypt (32 bytes), wrk -t2 -c32 -d${secs}s"
before=$(role_ticks)
wrk -t2 -c32 -d"${secs}s" --latency -s bench/kms/encrypt.lua "$url" >"$work/encrypt.txt"
after=$(role_ticks)
grep -E "Requests/sec|non-2xx| 50%| 99%" "$work/encrypt.txt"
ops=$(awk '/Requests\/sec/ {print $2}' "$work/encrypt.txt")
n=$(awk '/requests in/ {print $1}' "$work/encrypt.txt")
us=$(echo "($after - $before) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)
printf "server CPU per operation (api + kms + audit roles): %.0f us; %d cores could serve %.0f/s\n" "$us" \
    "$(nproc)" "$(echo "$(nproc) * 1000000 / $us" | bc -l)"

printf "\nSUMMARY bulk AES-256-GCM %.0f%% of openssl speed (aim >= 80%%)  API encrypt ops/s %.0f (aim >= 10000)\n" \
    "$bulk_ratio" "$ops"
