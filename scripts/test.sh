#!/usr/bin/env bash
# The test command: installs what is missing, builds under AddressSanitizer and
# UndefinedBehaviorSanitizer with warnings as errors, runs every Criterion unit
# test, every libFuzzer target briefly on its seed corpus, and every pytest
# integration test against the real binaries. Ends with one line
# "N passed, M failed" over all suites; exits non-zero if anything failed.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

"$top/scripts/setup.sh" || { echo "setup failed"; exit 1; }

export CLOISTER_VECTORS=${CLOISTER_VECTORS:-$top/../shared/vectors}
fuzz_seconds=${CLOISTER_FUZZ_SECONDS:-15}
logs="$top/build-test/test-logs"
passed=0
failed=0
skipped=0

build() { # dir, meson options...
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
    fi
    ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -60 "$dir.ninja.log"; return 1; }
}

echo "== build (ASan+UBSan, -Werror)"
if ! build build-test --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true; then
    echo "0 passed, 1 failed"
    exit 1
fi
mkdir -p "$logs"

# one throwaway PostgreSQL for the store's tests on that driver (unit and
# integration); stopped on exit. Without one they skip, saying why.
if pg_url=$("$top/scripts/pg-test.sh" start); then
    export CLOISTER_TEST_POSTGRES_URL=$pg_url
    trap '"$top/scripts/pg-test.sh" stop "$pg_url"' EXIT
else
    echo "PostgreSQL could not be started: its store tests skip"
fi

echo "== unit tests (Criterion)"
meson test -C build-test --num-processes 2 --print-errorlogs -v >"$logs/unit.log" 2>&1
unit_rc=$?
# Criterion binaries count their tests; any other meson test (cel-conformance)
# counts as one.
read -r up uf < <(grep -aE 'Synthesis: Tested:' "$logs/unit.log" |
    sed -E 's/.*Passing: ([0-9]+) \| Failing: ([0-9]+) \| Crashing: ([0-9]+).*/\1 \2 \3/' |
    awk '{p += $1; f += $2 + $3} END {print p + 0, f + 0}')
criterion_bins=$(grep -acE 'Synthesis: Tested:' "$logs/unit.log")
meson_ok=$(awk '/^Ok:/ {print $2}' "$logs/unit.log")
meson_fail=$(awk '/^Fail:/ {print $2}' "$logs/unit.log")
others_ok=$(( ${meson_ok:-0} - criterion_bins ))
[ "$others_ok" -gt 0 ] && up=$((up + others_ok))
if [ "$unit_rc" -ne 0 ] && [ "$uf" -eq 0 ]; then
    uf=${meson_fail:-1} # a test died before its summary, or a non-Criterion test failed
    [ "$uf" -gt 0 ] || uf=1
fi
grep -aE '^\[----\]|^\[FAIL\]|Synthesis|^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$logs/unit.log" | tail -40
echo "unit: $up passed, $uf failed"
passed=$((passed + up))
failed=$((failed + uf))

echo "== fuzzers (libFuzzer, ${fuzz_seconds}s each)"
if CC=clang build build-fuzz --buildtype=debugoptimized -Dfuzz=true -Dtests=false \
    -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true; then
    for f in build-fuzz/fuzz-*; do
        [ -f "$f" ] && [ -x "$f" ] || continue
        name=$(basename "$f")
        corpus=$(ls -d src/*/corpus/"$name" 2>/dev/null | head -1)
        work=$(mktemp -d)
        [ -n "$corpus" ] && cp -r "$corpus"/. "$work"/
        if "$f" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
            -max_len=65536 -print_final_stats=1 "$work" >"$logs/$name.log" 2>&1; then
            echo "fuzz $name: ok ($(grep -aoE 'stat::number_of_executed_units: [0-9]+' "$logs/$name.log" | awk '{print $2}') runs)"
            passed=$((passed + 1))
        else
            echo "fuzz $name: FAILED"
            tail -30 "$logs/$name.log"
            failed=$((failed + 1))
        fi
        rm -rf "$work"
    done
else
    echo "fuzz build failed"
    failed=$((failed + 1))
fi

echo "== integration tests (pytest)"
export CLOISTER_BUILD="$top/build-test"
/usr/bin/python3 -m pytest tests -q -p no:cacheprovider --timeout=600 --junitxml="$logs/pytest.xml" 2>&1 | tail -40
read -r ip if is < <(/usr/bin/python3 - "$logs/pytest.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1, 0); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
k = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - k, f, k)
PY
)
echo "integration: $ip passed, $if failed, $is skipped"
passed=$((passed + ip))
failed=$((failed + if))
skipped=$((skipped + is))

echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
