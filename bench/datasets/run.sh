#!/usr/bin/env bash
# Dataset upload benchmark, with its peer measured in the same run on the same
# file: `cloister dataset upload` (the CSV checked against its schema,
# encrypted on the client with age to the workspace and the uploader, sent
# over loopback HTTPS in parts, SHA-256 checked and made durable by the
# server) beside `curl -T` uploading the same CSV to nginx over loopback HTTPS
# (the dav module's PUT into a file: no check, no encryption, no fsync).
# `cloister age encrypt` of the same file alone shows how much of the upload
# is the client's encryption. The client's age speed beside the `age` tool is
# bench/age/run.sh.
# Usage: bench/datasets/run.sh [MiB]   (default 256; BUILD=dir picks the release build dir, default build)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
mib=${1:-256}
build=${BUILD:-build}
bench_build "$build" src/daemon/cloisterd src/cli/cloister
bench_start_cloisterd "$build"
work=$BENCH_WORK
cloister="$bench_top/$build/src/cli/cloister"
export XDG_CONFIG_HOME="$work/config" CLOISTER_SERVER="$BENCH_URL" CLOISTER_CA="$BENCH_CA"
"$cloister" login --token "$CLOISTER_TOKEN" >/dev/null
"$cloister" keys init >/dev/null
"$cloister" keys register >/dev/null
"$cloister" workspace create bench --member admin >/dev/null

echo "== a ${mib} MiB CSV (id integer, city text, age integer)"
/usr/bin/python3 - "$work/data.csv" "$mib" <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
cities = ["Lyon", "Oslo", "Porto", "Quito", "Riga", "Turin", "Utrecht", "Vigo"]
rng = random.Random(1)
with open(path, "w") as f:
    f.write("id,city,age\n")
    i, size, limit = 0, 12, mib << 20
    while size < limit:
        line = f"{i},{rng.choice(cities)},{rng.randint(18, 99)}\n"
        f.write(line)
        size += len(line)
        i += 1
PY
bytes=$(stat -c %s "$work/data.csv")

# ---- nginx: PUT over HTTPS into a file -----------------------------------------
port=$((20000 + RANDOM % 20000))
mkdir -p "$work/nginx/dav" "$work/nginx/tmp"
chmod 755 "$work" "$work/nginx"
chmod 777 "$work/nginx/dav" "$work/nginx/tmp" # its worker runs as nobody
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$work/nginx/key.pem" -out "$work/nginx/cert.pem" 2>/dev/null
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp;
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $work/nginx/cert.pem;
        ssl_certificate_key $work/nginx/key.pem;
        client_max_body_size 0;
        location / { root $work/nginx/dav; dav_methods PUT; }
    }
}
EOF
nginx -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
trap 'kill -TERM $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; bench_stop_cloisterd' EXIT
for _ in $(seq 1 100); do
    curl -s -o /dev/null --cacert "$work/nginx/cert.pem" "https://127.0.0.1:$port/" && break
    sleep 0.05
done

# "WALL CPU" seconds of one run of "$@": wall clock, and the CPU (user + system)
# of the client; the servers' CPU is not counted on either side
timed() {
    local out w u s TIMEFORMAT='%R %U %S'
    out=$( { time "$@" >/dev/null 2>"$work/last.err"; } 2>&1 ) || { cat "$work/last.err" >&2; exit 1; }
    read -r w u s <<<"$out"
    echo "$w $(echo "$u + $s" | bc -l)"
}
ours() { # each run a new dataset (timed() runs it in a subshell: the name comes from the clock)
    local name="bench-$(date +%s%N)"
    echo "$name" >"$work/last.dataset"
    "$cloister" dataset upload "$name" --workspace bench --file "$work/data.csv" --schema id:integer,city:text,age:integer
}
peer() { curl -fsS --cacert "$work/nginx/cert.pem" -T "$work/data.csv" "https://127.0.0.1:$port/data.csv"; }
enc() { "$cloister" age encrypt --self "$work/data.csv" >"$work/data.age"; }

best_ours="" best_peer="" best_enc=""
for _ in 1 2 3; do # interleaved, best of 3 by wall clock
    o=$(timed ours); p=$(timed peer); e=$(timed enc)
    [ -z "$best_ours" ] || [ "$(echo "${o% *} < ${best_ours% *}" | bc -l)" = 1 ] && best_ours=$o
    [ -z "$best_peer" ] || [ "$(echo "${p% *} < ${best_peer% *}" | bc -l)" = 1 ] && best_peer=$p
    [ -z "$best_enc" ] || [ "$(echo "${e% *} < ${best_enc% *}" | bc -l)" = 1 ] && best_enc=$e
done
[ "$(stat -c %s "$work/nginx/dav/data.csv")" = "$bytes" ] || { echo "nginx stored a different size" >&2; exit 1; }
"$cloister" get dataset "$(cat "$work/last.dataset")" -o json |
    /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["status"]["size"] > 0, d'

mbs() { echo "$bytes / 1048576 / $1" | bc -l; }
printf "cloister dataset upload: %.2fs  %.0f MiB/s  (client CPU %.2fs)\n" "${best_ours% *}" "$(mbs "${best_ours% *}")" "${best_ours#* }"
printf "curl -T to nginx (TLS):  %.2fs  %.0f MiB/s  (client CPU %.2fs)\n" "${best_peer% *}" "$(mbs "${best_peer% *}")" "${best_peer#* }"
printf "cloister age encrypt alone: %.2fs  %.0f MiB/s\n" "${best_enc% *}" "$(mbs "${best_enc% *}")"
printf "\nSUMMARY dataset upload %.0f MiB/s = %.2fx curl to nginx (%.0f MiB/s) on %d MiB; encryption alone %.0f MiB/s\n" \
    "$(mbs "${best_ours% *}")" "$(echo "${best_peer% *} / ${best_ours% *}" | bc -l)" "$(mbs "${best_peer% *}")" "$mib" \
    "$(mbs "${best_enc% *}")"
