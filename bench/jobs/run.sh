#!/usr/bin/env bash
# Confidential-analytics jobs: a join + group-by over a pair of datasets of
# JOBS_BENCH_ROWS rows each (default 1 M), timed
#   - engine: the job engine alone (`cloister-job --manifest`, a release
#     build): SHA-256 of each ciphertext, age decryption, typed load into
#     in-memory SQLite, the query, the CSV result encrypted with age;
#   - sqlite3: the sqlite3 shell importing the same plaintext CSVs into
#     tables of the same types and running the same query;
#   - end to end: `cloister job run --wait` on the same two datasets uploaded
#     to a cloisterd --dev (release build) and approved: the run started,
#     the sandbox launched, the kms role's checks and the key release, the
#     ciphertexts fetched through the channel, the engine, the encrypted
#     result uploaded and committed, the receipt written to the audit log;
#   - overhead: the same on a one-row dataset (`SELECT x FROM one`): what a
#     run costs besides the engine's work (release + launch + transport);
# in the same run, best of JOBS_BENCH_RUNS (default 3), with the ratio.
# Usage: bench/jobs/run.sh [BUILD_DIR]   (default: build-bench)
# Each figure is one function (bench_engine, bench_sqlite3) adding a row to
# the table printed at the end; TMPDIR (or /dev/shm when it has room) holds
# the files.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/bench/lib.sh"
build=${1:-$root/build-bench}
rows=${JOBS_BENCH_ROWS:-1000000}
runs=${JOBS_BENCH_RUNS:-3}
bench_build "$build" src/job/cloister-job src/job/bundle.stamp src/cli/cloister src/daemon/cloisterd src/agent/cloister-agent
for tool in age age-keygen sqlite3 python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

base=${TMPDIR:-/tmp}
if [ -d /dev/shm ] && [ "$(df -Pm /dev/shm | awk 'NR==2 {print $4}')" -gt $((rows / 2000 + 512)) ]; then base=/dev/shm; fi
work=$(mktemp -d "$base/cloister-bench-jobs.XXXXXX")
trap 'rm -rf "$work"' EXIT
engine="$build/src/job/cloister-job-bundle/cloister-job"
query="SELECT p.city, count(*) AS visits, sum(v.cost) AS total, round(avg(p.age), 2) AS mean_age FROM patients p JOIN visits v ON v.patient = p.id GROUP BY p.city ORDER BY total DESC, p.city"

# ---- the data: two CSVs, each encrypted to an owner's identity, its file key unwrapped ----
age-keygen -o "$work/owner.txt" 2>/dev/null
age-keygen -o "$work/reader.txt" 2>/dev/null
owner=$(age-keygen -y "$work/owner.txt")
reader=$(age-keygen -y "$work/reader.txt")
awk -v n="$rows" 'BEGIN { srand(17); print "id,city,age";
    split("Lyon Paris Nice Lille Nantes Rennes Brest Metz Dijon Tours Reims Caen", c, " ");
    for (i = 1; i <= n; i++) printf "%d,%s,%d\n", i, c[int(rand() * 12) + 1], 18 + int(rand() * 72) }' >"$work/patients.csv"
awk -v n="$rows" 'BEGIN { srand(42); print "id,patient,cost";
    for (i = 1; i <= n; i++) printf "%d,%d,%.2f\n", i, 1 + int(rand() * n), rand() * 1000 }' >"$work/visits.csv"
for t in patients visits; do
    age -r "$owner" -o "$work/$t.age" "$work/$t.csv"
    python3 "$root/tests/age_file_key.py" "$work/owner.txt" "$work/$t.age" "$work/$t.key"
done
sha() { sha256sum "$1" | cut -d' ' -f1; }
cat >"$work/manifest.json" <<JSON
{"query": "$query",
 "inputs": [
  {"name": "patients", "table": "patients", "ciphertext": "$work/patients.age", "fileKey": "$work/patients.key",
   "sha256": "$(sha "$work/patients.age")",
   "schema": [{"name": "id", "type": "integer"}, {"name": "city", "type": "text"}, {"name": "age", "type": "integer"}]},
  {"name": "visits", "table": "visits", "ciphertext": "$work/visits.age", "fileKey": "$work/visits.key",
   "sha256": "$(sha "$work/visits.age")",
   "schema": [{"name": "id", "type": "integer"}, {"name": "patient", "type": "integer"}, {"name": "cost", "type": "real"}]}],
 "recipients": ["$reader"], "output": "$work/result.age",
 "limits": {"memoryMiB": 4096, "seconds": 600, "rows": 1000}}
JSON

# "WALL CPU": seconds of the best of $runs runs of "$@" by wall clock, and
# the CPU seconds (user + system) of that run
best() {
    local b="" c="" out w u s TIMEFORMAT='%R %U %S'
    for _ in $(seq 1 "$runs"); do
        out=$( { time "$@" >/dev/null 2>&1; } 2>&1 )
        read -r w u s <<<"$out"
        if [ -z "$b" ] || [ "$(echo "$w < $b" | bc -l)" = 1 ]; then b=$w; c=$(echo "$u + $s" | bc -l); fi
    done
    echo "$b $c"
}

figures=() # "NAME WALL CPU"
run_engine() { "$engine" --manifest "$work/manifest.json" | grep -q '"ok":true'; }
run_sqlite3() {
    sqlite3 :memory: "CREATE TABLE patients (id INTEGER, city TEXT, age INTEGER)" \
        "CREATE TABLE visits (id INTEGER, patient INTEGER, cost REAL)" \
        ".import --csv --skip 1 $work/patients.csv patients" ".import --csv --skip 1 $work/visits.csv visits" \
        ".headers on" ".mode csv" "$query"
}
bench_engine() {
    run_engine || { "$engine" --manifest "$work/manifest.json" >&2; echo "error: the engine failed" >&2; exit 1; }
    # the same answer as sqlite3's, decrypted with the age tool
    cmp -s <(age -d -i "$work/reader.txt" "$work/result.age") <(run_sqlite3) ||
        { echo "error: the engine's result differs from sqlite3's" >&2; exit 1; }
    figures+=("engine $(best run_engine)")
}
bench_sqlite3() { figures+=("sqlite3 $(best run_sqlite3)"); }

# ---- end to end through a server: upload, propose, approve once; then run ----
cloister="$build/src/cli/cloister"
e2e_setup() {
    bench_start_cloisterd "$build"
    trap 'bench_stop_cloisterd; rm -rf "$work"' EXIT
    export XDG_CONFIG_HOME="$BENCH_WORK/config" CLOISTER_SERVER="$BENCH_URL" CLOISTER_CA="$BENCH_CA"
    "$cloister" login --token "$CLOISTER_TOKEN" >/dev/null
    "$cloister" keys init >/dev/null
    "$cloister" keys register >/dev/null
    "$cloister" workspace create bench --member admin >/dev/null
    printf 'x\n1\n' >"$work/one.csv"
    "$cloister" dataset upload patients --workspace bench --file "$work/patients.csv" --schema id:integer,city:text,age:integer >/dev/null
    "$cloister" dataset upload visits --workspace bench --file "$work/visits.csv" --schema id:integer,patient:integer,cost:real >/dev/null
    "$cloister" dataset upload one --workspace bench --file "$work/one.csv" --schema x:integer >/dev/null
    "$cloister" job propose big --workspace bench --query "$query" --input patients --input visits \
        --max-runs $((runs + 1)) >/dev/null
    "$cloister" job propose tiny --workspace bench --query "SELECT x FROM one" --input one --max-runs $((runs + 1)) >/dev/null
    "$cloister" job approve big >/dev/null
    "$cloister" job approve tiny >/dev/null
}
run_e2e() { "$cloister" job run big --wait --timeout 1200 >/dev/null; }
run_tiny() { "$cloister" job run tiny --wait >/dev/null; }
bench_end_to_end() {
    # the first run checks the answer: the result decrypted here equals sqlite3's
    "$cloister" job run big --wait --timeout 1200 >/dev/null || { echo "error: the end-to-end run failed" >&2; exit 1; }
    "$cloister" job result big -o "$work/e2e.csv" >/dev/null
    cmp -s "$work/e2e.csv" <(run_sqlite3) || { echo "error: the end-to-end result differs from sqlite3's" >&2; exit 1; }
    figures+=("end-to-end $(best run_e2e)")
}
bench_overhead() { figures+=("overhead $(best run_tiny)"); }

bench_engine
bench_sqlite3
e2e_setup
bench_end_to_end
bench_overhead

echo "jobs: join + group-by over 2 x $rows rows ($(du -m "$work/patients.csv" | cut -f1) + $(du -m "$work/visits.csv" | cut -f1) MiB of CSV), best of $runs"
read -r _ ref_wall ref_cpu <<<"${figures[1]}"
printf '%-10s %10s %10s %12s %12s\n' "" "wall s" "CPU s" "vs sqlite3" "(CPU)"
# the CPU of end-to-end and overhead is the CLI's only (the server's work is on the wall clock)
for f in "${figures[@]}"; do
    read -r name wall cpu <<<"$f"
    printf '%-10s %10.2f %10.2f %11.2fx %11.2fx\n' "${name:0:10}" "$wall" "$cpu" "$(echo "scale=3; $wall / $ref_wall" | bc -l)" \
        "$(echo "scale=3; $cpu / $ref_cpu" | bc -l)"
done
