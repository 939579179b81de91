#!/usr/bin/env bash
# Builds the CEL micro-benchmark in a release build and runs it.
# Usage: bench/cel/run.sh [BUILD_DIR]   (default: build-bench-cel)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-bench-cel}
[ -d "$build" ] || meson setup "$build" "$root" --buildtype=release -Dtests=false >/dev/null
ninja -C "$build" -j2 src/cel/bench-cel >/dev/null
"$build/src/cel/bench-cel"
