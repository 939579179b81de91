#!/usr/bin/env bash
# Sandbox launch to ready (namespaces, mounts, seccomp, exec) beside
# bubblewrap setting up the same namespaces and binds, in one run.
# Usage: bench/sandbox/run.sh [launches]   (default 200)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
n=${1:-200}
bench_build build bench/sandbox/bench-sandbox
echo "== cloister sandbox_launch, /bin/true"
ours=$(build/bench/sandbox/bench-sandbox "$n")
echo "$ours"
echo "== peer: bwrap with the same namespaces and read-only /usr, /tmp, /proc, /dev, /bin/true"
start=$(date +%s%N)
for _ in $(seq 1 "$n"); do
    bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib \
        --symlink usr/lib64 /lib64 --tmpfs /tmp --proc /proc --dev /dev /bin/true
done
end=$(date +%s%N)
peer=$(echo "($end - $start) / $n / 1000000" | bc -l)
printf "bwrap mean %.2f ms per launch (wall clock, including its exit)\n" "$peer"
median=$(awk '{print $3}' <<<"$ours")
printf "\nSUMMARY sandbox launch to ready %.2f ms median (%.2fx bwrap's %.2f ms); target <= 50 ms\n" "$median" \
    "$(echo "$median / $peer" | bc -l)" "$peer"
