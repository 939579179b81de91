#!/usr/bin/env bash
# Policy decision benchmark: Cloister's engine (release build, in-process)
# against Cedar (@cedar-policy/cedar-wasm) and cel-js (@marcbachmann/cel-js)
# in node, on the same rules and requests, for 10, 100 and 1,000 policies of
# 10 rules each. Prints each engine's decisions/s, median and p99, and our
# speed as a ratio to each peer.
# Usage: bench/policy/run.sh [BUILD_DIR] [SECONDS]   (default: build-bench-policy, 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build-bench-policy}
seconds=${2:-2}
[ -d "$build" ] || meson setup "$build" "$root" --buildtype=release -Dtests=false >/dev/null
ninja -C "$build" -j2 src/policy/bench-policy >/dev/null
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "node $(node --version), cedar-wasm $(node -p "require('$here/node_modules/@cedar-policy/cedar-wasm/package.json').version"), cel-js $(node -p "require('$here/node_modules/@marcbachmann/cel-js/package.json').version")"
for n in 10 100 1000; do
    "$build/src/policy/bench-policy" --policies "$n" --seconds "$seconds" --emit "$work/set-$n.json" >"$work/out-$n.jsonl"
    (cd "$here" && node peers.mjs "$work/set-$n.json" "$seconds") >>"$work/out-$n.jsonl"
done
cat "$work"/out-*.jsonl >"$work/all.jsonl"
node - "$work/all.jsonl" <<'JS'
const lines = require('fs').readFileSync(process.argv[2], 'utf8').trim().split('\n').map(JSON.parse)
const pad = (s, n) => String(s).padStart(n)
console.log(`${pad('policies', 8)} ${pad('rules', 6)} ${pad('engine', 9)} ${pad('decisions/s', 12)} ${pad('median µs', 10)} ${pad('p99 µs', 9)} ${pad('allowed %', 9)} ${pad('ours ×', 9)}`)
for (const n of [...new Set(lines.map(l => l.policies))].sort((a, b) => a - b)) {
  const group = lines.filter(l => l.policies === n)
  const ours = group.find(l => l.engine === 'cloister')
  for (const l of group) {
    const ratio = l.engine === 'cloister' ? '' : (ours.per_sec / l.per_sec).toFixed(1) + '×'
    console.log(`${pad(n, 8)} ${pad(l.rules, 6)} ${pad(l.engine, 9)} ${pad(l.per_sec, 12)} ${pad((l.median_ns / 1000).toFixed(2), 10)} ${pad((l.p99_ns / 1000).toFixed(2), 9)} ${pad(l.allowed_pct, 9)} ${pad(ratio, 9)}`)
  }
}
const t = lines.find(l => l.engine === 'cloister' && l.policies === 100)
console.log(`target: median ≤ 2 µs at 100 policies: ${(t.median_ns / 1000).toFixed(2)} µs ${t.median_ns <= 2000 ? 'MET' : 'MISSED'}`)
JS
