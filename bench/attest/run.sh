#!/usr/bin/env bash
# Attestation verification speed per evidence type, beside `openssl speed`
# for the signature checks each one cannot avoid, in one run:
#   nitro:   5 ECDSA P-384 verifications (document, three intermediates, leaf)
#   sev-snp: 1 ECDSA P-384 and 3 RSA-4096 verifications (report, VCEK, ASK, ARK)
#   tdx:     4 ECDSA P-256 verifications (quote, QE report, PCK chain)
# The ratio is our median over that floor: the rest is parsing and X.509.
# Then key releases per second end to end (bench/attest/release.py, its
# sandbox evidence signed by bench-evidence with the runner's own code and
# platform key) beside openssl speed's ECDH P-256 rate (each release makes
# one ECDH for its JWE).
# Usage: bench/attest/run.sh [release seconds]   (default 10)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
release_secs=${1:-10}
bench_build build bench/attest/bench-attest bench/attest/bench-evidence src/daemon/cloisterd
export CLOISTER_VECTORS=${CLOISTER_VECTORS:-$bench_top/../shared/vectors}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "== cloister attest_verify (release build)"
build/bench/attest/bench-attest | tee "$out"
echo "== peer: openssl speed -seconds 2 ecdsap384 ecdsap256 rsa4096 (verifications/s)"
speed=$(openssl speed -seconds 2 ecdsap384 ecdsap256 rsa4096 2>/dev/null)
p384=$(awk '/384 bits ecdsa/ {print $NF}' <<<"$speed")
p256=$(awk '/256 bits ecdsa/ {print $NF}' <<<"$speed")
rsa=$(awk '/^rsa 4096/ {print $NF}' <<<"$speed")
echo "P-384 $p384/s  P-256 $p256/s  RSA-4096 $rsa/s"
median() { awk -v t="$1" '$1 == t {print $3}' "$out"; }
echo "== key releases, end to end, ${release_secs}s"
bench_start_cloisterd build
export BENCH_URL BENCH_CA BENCH_DATA
release=$(/usr/bin/python3 bench/attest/release.py "$release_secs" build/bench/attest/bench-evidence build/src/daemon/cloisterd)
echo "$release"
ecdh=$(openssl speed -seconds 2 ecdhp256 2>/dev/null | awk '/256 bits ecdh/ {print $NF}')
echo "peer: openssl speed ecdhp256 $ecdh ops/s"

awk -v n="$(median nitro)" -v s="$(median sev-snp)" -v t="$(median tdx)" -v p384="$p384" -v p256="$p256" -v rsa="$rsa" 'BEGIN {
    fn = 5 * 1000 / p384; fs = 1000 / p384 + 3 * 1000 / rsa; ft = 4 * 1000 / p256
    printf "\nSUMMARY nitro %.2f ms (%.2fx its %.2f ms signature floor)  sev-snp %.2f ms (%.2fx of %.2f ms)  tdx %.2f ms (%.2fx of %.2f ms); target <= 5 ms each\n", n, n / fn, fn, s, s / fs, fs, t, t / ft, ft
}'
echo "SUMMARY key releases/s $(awk '{print $5}' <<<"$release") (median $(awk '{print $7}' <<<"$release") ms)"
