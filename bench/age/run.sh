#!/usr/bin/env bash
# age encryption and decryption throughput: Cloister's age library (through
# `cloister age encrypt` and `cloister dataset decrypt`, a release build)
# beside the reference `age` tool, on the same file in the same run.
# Usage: bench/age/run.sh [BUILD_DIR]   (default: build-bench)
# Environment: AGE_BENCH_MIB (default 1024), AGE_BENCH_RUNS (default 3; the
# best run of each counts), TMPDIR (where the files live; tmpfs keeps the
# disk out of the figures: /dev/shm is used when it has room).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/lib.sh"
build=${1:-$root/build-bench}
mib=${AGE_BENCH_MIB:-1024}
runs=${AGE_BENCH_RUNS:-3}
bench_build "$build" src/cli/cloister
command -v age >/dev/null || { echo "error: the age tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }

base=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ "$(df -Pm /dev/shm | awk 'NR==2 {print $4}')" -gt $((mib * 3 + 512)) ]; then base=/dev/shm; fi
work=$(mktemp -d "$base/cloister-bench-age.XXXXXX")
trap 'rm -rf "$work"' EXIT
export XDG_CONFIG_HOME="$work/config"
cloister="$build/src/cli/cloister"
"$cloister" keys init >/dev/null 2>&1
ident="$XDG_CONFIG_HOME/cloister/keys/age-identity.txt"
recipient=$(sed -n 's/^# public key: //p' "$ident")
head -c $((mib << 20)) /dev/urandom >"$work/plain"

# seconds of the best of $runs runs of "$@"
best() {
    local b="" s e t
    for _ in $(seq 1 "$runs"); do
        s=$(date +%s.%N)
        "$@"
        e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc -l)
        if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
    done
    echo "$b"
}
enc_ours() { "$cloister" age encrypt -r "$recipient" "$work/plain" >"$work/ours.age"; }
enc_age() { age -r "$recipient" -o "$work/age.age" "$work/plain"; }
dec_ours() { "$cloister" dataset decrypt -i "$ident" "$work/age.age" >/dev/null; }
dec_age() { age -d -i "$ident" -o /dev/null "$work/ours.age"; }

t_enc_ours=$(best enc_ours)
t_enc_age=$(best enc_age)
# each decrypts the other's file: interop is part of the measurement
t_dec_ours=$(best dec_ours)
t_dec_age=$(best dec_age)
# the plaintext survives both ways
"$cloister" dataset decrypt -i "$ident" "$work/ours.age" | cmp -s - "$work/plain" || { echo "error: round trip differs" >&2; exit 1; }

rate() { echo "scale=1; $mib * 1.048576 / $1" | bc -l; }
echo "age v1, ${mib} MiB, X25519, best of $runs, files in $base ($(nproc) cores, $(age --version 2>/dev/null || echo age))"
printf '%-10s %12s %12s %8s\n' "" "cloister MB/s" "age MB/s" "ratio"
printf '%-10s %12s %12s %8s\n' encrypt "$(rate "$t_enc_ours")" "$(rate "$t_enc_age")" "$(echo "scale=2; $t_enc_age / $t_enc_ours" | bc -l)x"
printf '%-10s %12s %12s %8s\n' decrypt "$(rate "$t_dec_ours")" "$(rate "$t_dec_age")" "$(echo "scale=2; $t_dec_age / $t_dec_ours" | bc -l)x"
