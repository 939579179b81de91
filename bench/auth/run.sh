#!/usr/bin/env bash
# Auth token rates: ES256 access-token issue, cold verification and cached
# verification (bench-auth, release build), beside the floor every ES256
# implementation shares, measured in the same run: `openssl speed ecdsap256`
# signs/s and verifies/s. The ratio says how much of each operation is ours
# (JSON, base64url, claims checks) rather than the curve arithmetic.
# Usage: bench/auth/run.sh [seconds per measurement]   (default 2)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
secs=${1:-2}
build=${BENCH_BUILD:-$top/build-bench-auth}
[ -f "$build/build.ninja" ] || meson setup "$build" --buildtype=release -Dtests=false >/dev/null
ninja -C "$build" -j2 src/auth/bench-auth >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "== cloister auth library (ops/s, us/op)"
"$build/src/auth/bench-auth" "$secs" | tee "$out"
echo "== peer: openssl speed -seconds $secs ecdsap256"
speed=$(openssl speed -seconds "$secs" ecdsap256 2>/dev/null | awk '/256 bits ecdsa/ {print $(NF-1), $NF}')
sign=${speed% *}
verify=${speed#* }
echo "sign $sign/s  verify $verify/s"
awk -v s="$sign" -v v="$verify" '
    $1 == "issue" {i = $2} $1 == "verify-cold" {c = $2} $1 == "verify-cached" {h = $2}
    END {printf "\nSUMMARY issue %.0f/s (%.2fx of openssl sign)  verify cold %.0f/s (%.2fx of openssl verify)  cached %.0f/s (%.1fx cold)\n", i, i / s, c, c / v, h, h / c}' "$out"
