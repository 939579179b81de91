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

# "WALL CPU": seconds of the best of $runs runs of "$@" by wall clock, and
# the CPU seconds (user + system) of that run: on a shared machine the CPU
# time is the steadier figure
best() {
    local b="" c="" out w u s TIMEFORMAT='%R %U %S'
    for _ in $(seq 1 "$runs"); do
        out=$( { time "$@" 2>/dev/null; } 2>&1 )
        read -r w u s <<<"$out"
        if [ -z "$b" ] || [ "$(echo "$w < $b" | bc -l)" = 1 ]; then b=$w; c=$(echo "$u + $s" | bc -l); fi
    done
    echo "$b $c"
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
ratio() { echo "scale=2; $2 / $1" | bc -l; }
row() { # NAME "OURS_WALL OURS_CPU" "AGE_WALL AGE_CPU"
    local ow oc aw ac
    read -r ow oc <<<"$2"
    read -r aw ac <<<"$3"
    printf '%-8s %10s %10s %7sx   %10s %10s %7sx\n' "$1" "$(rate "$ow")" "$(rate "$aw")" "$(ratio "$ow" "$aw")" \
        "$(rate "$oc")" "$(rate "$ac")" "$(ratio "$oc" "$ac")"
}
echo "age v1, ${mib} MiB, X25519, best of $runs, files in $base ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), age $(age --version 2>/dev/null))"
printf '%-8s %10s %10s %8s   %10s %10s %8s\n' "" "cloister" "age" "ratio" "cloister" "age" "ratio"
printf '%-8s %10s %10s %8s   %10s %10s %8s\n' "MB/s" "wall" "wall" "" "CPU" "CPU" ""
row encrypt "$t_enc_ours" "$t_enc_age"
row decrypt "$t_dec_ours" "$t_dec_age"
