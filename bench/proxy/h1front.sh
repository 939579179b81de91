#!/usr/bin/env bash
# The proxy's HTTP/1 server side: libh2o's (h2o: CLOISTER_PROXY_HTTP1=h2o)
# against Cloister's own front end (h1front, the default: src/httpd/h1front.c), with
# nginx proxy_pass beside them, in ROUNDS interleaved rounds (nginx, h2o,
# h1front, nginx, ...) so that the machine's drift hits them alike. The
# setup of run.sh: one static nginx upstream (1 worker, 612 bytes), the
# Service `static` with the 10-rule policy and a token (proxy/lib.sh),
# --proxy-threads 1; wrk -t1 -c50 keep-alive over plain HTTP, a 2 s warm-up
# then DURATION seconds. Per run: req/s, p99, the proxy role's CPU per
# request; then, outside the timed run, the system calls per request of the
# serving process (every thread), counted by strace -c over a 3 s wrk run
# (strace slows the process: the count per request is what is read).
# Prints each run, the medians, and the ratios against nginx within the run.
#
# Usage: bench/proxy/h1front.sh [DURATION] (seconds per run, default 10)
#   BUILD=dir (release build, default build-bench-proxy), ROUNDS=n (default 3),
#   BENCH_KEEP=1.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib.sh"
cd "$bench_top"
secs=${1:-10}
build=${BUILD:-build-bench-proxy}
rounds=${ROUNDS:-3}
py=/usr/bin/python3

"$bench_top/scripts/setup.sh"
bench_build "$build" src/daemon/cloisterd src/cli/cloister
command -v strace >/dev/null || { echo "strace is needed for the system call counts" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-h1front.XXXXXX")
nginx_pid= px_pid=
cleanup() {
    set +e
    [ -z "$nginx_pid" ] || { kill -TERM "$nginx_pid"; wait "$nginx_pid"; }
    [ -z "$px_pid" ] || { kill -TERM "$px_pid"; wait "$px_pid"; }
    [ -z "${bench_pid:-}" ] || bench_stop_cloisterd
    if [ -n "${BENCH_KEEP:-}" ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port) nx_port=$(free_port) ph=$(free_port) pp=$(free_port)

# ---- the upstream; nginx proxy_pass in a process of its own -----------------
mkdir -p "$work/www" "$work/px"
head -c 612 /dev/zero | tr '\0' 'x' >"$work/www/index.html"
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/index.html"
bench_nginx_start "$work" "    server { listen 127.0.0.1:$up_port; root $work/www; }"
nginx_pid=$bench_nginx_pid
bench_nginx_start "$work/px" "
    upstream up { server 127.0.0.1:$up_port; keepalive 64; }
    server { listen 127.0.0.1:$nx_port;
             location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
px_pid=$bench_nginx_pid
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$nx_port/" && break; sleep 0.05; done

# ---- cloisterd, configured once ---------------------------------------------
bench_start_cloisterd "$build" --proxy-listen "127.0.0.1:$pp" --proxy-http-listen "127.0.0.1:$ph" \
    --proxy-threads 1 --domain localhost
trap cleanup EXIT
export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$work/config
cli=$build/src/cli/cloister
proxy_bench_configure "$work" "$up_port"
hdrs=(-H "Host: static.localhost" -H "Authorization: Bearer $token")

# serve CONFIG: the URL wrk measures, cloisterd restarted with that HTTP/1
# server once its proxy answers 200
serve() {
    if [ "$1" = nginx ]; then
        url="http://127.0.0.1:$nx_port/index.html"
        return 0
    fi
    url="http://127.0.0.1:$ph/index.html"
    bench_pause_cloisterd
    export CLOISTER_PROXY_HTTP1=$1
    bench_resume_cloisterd
    local code=000
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "${hdrs[@]}" "$url")
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    echo "$1: the proxy never answered 200 (last $code)" >&2
    tail -n 20 "$BENCH_WORK/cloisterd.log" >&2
    exit 1
}
# server_pid CONFIG: the process serving the measured connections
server_pid() {
    if [ "$1" = nginx ]; then pgrep -P "$px_pid" | head -n 1; else pgrep -P "$bench_pid" -x proxy | head -n 1; fi
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# syscalls CONFIG: system calls per request of its serving process (every
# thread) over a 3 s wrk run under strace -c
syscalls() {
    local pid tids=() t n calls
    pid=$(server_pid "$1")
    for t in /proc/"$pid"/task/*; do tids+=(-p "${t##*/}"); done
    strace -c -f -o "$work/strace.txt" "${tids[@]}" 2>/dev/null &
    local st=$!
    sleep 0.5
    wrk -t1 -c50 -d3s "${hdrs[@]}" "$url" >"$work/strace-wrk.txt"
    kill -INT "$st"
    wait "$st" 2>/dev/null || true
    n=$(awk '/requests in/ {print $1}' "$work/strace-wrk.txt")
    calls=$(awk '$NF == "total" {print $(NF - 2)}' "$work/strace.txt")
    echo "$calls $n" | awk '{printf "%.2f\n", $2 ? $1 / $2 : 0}'
}
configs=(nginx h2o h1front)
echo "== wrk -t1 -c50 keep-alive, 2 s warm-up + ${secs}s per run, $rounds rounds of: ${configs[*]}"
echo "   $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
        serve "$c"
        pid=$(server_pid "$c")
        wrk -t1 -c50 -d2s "${hdrs[@]}" "$url" >/dev/null
        t0=$(cpu_ticks "$pid")
        wrk -t1 -c50 -d"${secs}s" --latency "${hdrs[@]}" "$url" >"$work/$c-$r.txt"
        t1=$(cpu_ticks "$pid")
        n=$(awk '/requests in/ {print $1}' "$work/$c-$r.txt")
        echo "$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) )) $n" | awk '{printf "%.1f\n", $1 / $2}' >"$work/$c-$r.cpu"
        syscalls "$c" >"$work/$c-$r.sys"
        bad=""
        ! grep -qE "Non-2xx|Socket errors" "$work/$c-$r.txt" || bad=" (! non-2xx or socket errors: not counted)"
        printf "   round %d %-8s %8.0f req/s  p99 %-9s %6.1f µs CPU/request %6.2f syscalls/request%s\n" "$r" "$c" \
            "$(awk '/^Requests\/sec/ {print $2}' "$work/$c-$r.txt")" \
            "$(awk '$1 == "99%" {print $2}' "$work/$c-$r.txt")" "$(cat "$work/$c-$r.cpu")" "$(cat "$work/$c-$r.sys")" "$bad"
    done
    printf "   round %d ratios to nginx: h2o %.3f, h1front %.3f\n" "$r" \
        "$(echo "$(awk '/^Requests\/sec/ {print $2}' "$work/h2o-$r.txt") / $(awk '/^Requests\/sec/ {print $2}' "$work/nginx-$r.txt")" | bc -l)" \
        "$(echo "$(awk '/^Requests\/sec/ {print $2}' "$work/h1front-$r.txt") / $(awk '/^Requests\/sec/ {print $2}' "$work/nginx-$r.txt")" | bc -l)"
done

# median C FIELD: over the rounds, of req/s (rate), p99 in µs (p99), CPU µs
# per request (cpu) or system calls per request (sys)
median() {
    for f in "$work/$1"-*.txt; do
        [[ $f == */strace-wrk.txt ]] && continue
        grep -qE "Non-2xx|Socket errors" "$f" && continue
        case $2 in
        cpu) cat "${f%.txt}.cpu" ;;
        sys) cat "${f%.txt}.sys" ;;
        rate) awk '/^Requests\/sec/ {print $2}' "$f" ;;
        *) awk '$1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                print v * (u == "s" ? 1000000 : u == "ms" ? 1000 : 1)}' "$f" ;;
        esac
    done | sort -n | awk '{a[NR] = $1} END {print NR ? a[int((NR + 1) / 2)] : 0}'
}
echo
printf "%-8s %12s %10s %16s %18s\n" config "req/s (med)" "p99 (med)" "CPU/request (med)" "syscalls/req (med)"
for c in "${configs[@]}"; do
    printf "%-8s %12.0f %7.2f ms %13.1f µs %18.2f\n" "$c" "$(median "$c" rate)" \
        "$(echo "$(median "$c" p99) / 1000" | bc -l)" "$(median "$c" cpu)" "$(median "$c" sys)"
done
printf "SUMMARY proxy http1: h2o/nginx %.3f, h1front/nginx %.3f, h1front/h2o CPU per request %.3f\n" \
    "$(echo "$(median h2o rate) / $(median nginx rate)" | bc -l)" \
    "$(echo "$(median h1front rate) / $(median nginx rate)" | bc -l)" \
    "$(echo "$(median h1front cpu) / $(median h2o cpu)" | bc -l)"
