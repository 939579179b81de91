#!/usr/bin/env bash
# What trace context and OTLP export cost the proxy, in one run: the same
# cloisterd data dir (one Service to a static nginx upstream, a token, the
# 10-rule policy of run.sh) served in turn by
#   off   this build, export off: the trace stages still parse the client's
#         traceparent and write the upstream's (ids from the thread's
#         generator, no allocation of their own)
#   on    this build, export on (OTEL_EXPORTER_OTLP_ENDPOINT): a SERVER and a
#         CLIENT span and an access log record per request, batched, gzipped
#         and posted to a collector (an nginx answering 200 to every POST: the
#         cheapest honest collector, so what is measured is the proxy's side)
#   base  BASE_BUILD's cloisterd (optional: e.g. a release build of main,
#         before the trace stages), export off
#   old   OLD_BUILD's cloisterd (optional: e.g. a release build of another
#         revision of the exporter), export on
# each ROUNDS times in turn (base, off, on, old, base, off, on, old, ...) so that drift
# of the machine's load hits them alike: wrk -t1 -c50 keep-alive over plain
# HTTP, a 2 s warm-up then DURATION seconds, every request carrying a client
# traceparent. --proxy-threads 1. Prints each run, then per configuration
# the median req/s, p99 and the proxy role's CPU time per request (its loop
# and exporter thread: steadier than req/s on a loaded machine), and the
# ratios on/off and off/base (aim: on within 5 % of off).
#
# Usage: bench/proxy/trace.sh [DURATION] (seconds per run, default 10)
#   BUILD=dir (default build-bench-proxy), BASE_BUILD=dir and OLD_BUILD=dir
#   (release builds of other revisions, optional), ROUNDS=n (default 3),
#   BENCH_KEEP=1.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib.sh"
cd "$bench_top"
secs=${1:-10}
build=${BUILD:-build-bench-proxy}
base=${BASE_BUILD:-}
old=${OLD_BUILD:-}
rounds=${ROUNDS:-3}
py=/usr/bin/python3

"$bench_top/scripts/setup.sh"
bench_build "$build" src/daemon/cloisterd src/cli/cloister
[ -z "$base" ] || [ -x "$base/src/daemon/cloisterd" ] || { echo "BASE_BUILD=$base has no src/daemon/cloisterd" >&2; exit 2; }
[ -z "$old" ] || [ -x "$old/src/daemon/cloisterd" ] || { echo "OLD_BUILD=$old has no src/daemon/cloisterd" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-trace.XXXXXX")
nginx_pid=
cleanup() {
    set +e
    [ -z "$nginx_pid" ] || { kill -TERM "$nginx_pid"; wait "$nginx_pid"; }
    [ -z "${bench_pid:-}" ] || bench_stop_cloisterd
    if [ -n "${BENCH_KEEP:-}" ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port) otlp_port=$(free_port) ph=$(free_port) pp=$(free_port)

# ---- the upstream and the collector: one nginx, one worker ------------------
mkdir -p "$work/www"
head -c 612 /dev/zero | tr '\0' 'x' >"$work/www/index.html"
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/index.html"
bench_nginx_start "$work" "
    server { listen 127.0.0.1:$up_port; root $work/www; }
    server { listen 127.0.0.1:$otlp_port; client_max_body_size 64m;
             location / { default_type application/json; return 200 \"{}\"; } }"
nginx_pid=$bench_nginx_pid
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.05; done

# ---- cloisterd, configured once ---------------------------------------------
bench_start_cloisterd "$build" --proxy-listen "127.0.0.1:$pp" --proxy-http-listen "127.0.0.1:$ph" \
    --proxy-threads 1 --domain localhost
trap cleanup EXIT
export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$work/config
cli=$build/src/cli/cloister
proxy_bench_configure "$work" "$up_port"
hdrs=(-H "Host: static.localhost" -H "Authorization: Bearer $token"
    -H "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
url="http://127.0.0.1:$ph/index.html"

# serve CONFIG: cloisterd of that configuration on the same data dir, once
# its proxy answers 200
serve() {
    bench_pause_cloisterd
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_BSP_SCHEDULE_DELAY
    bench_cloisterd_build=$build
    case $1 in
    base) bench_cloisterd_build=$base ;;
    on) export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" ;;
    old)
        bench_cloisterd_build=$old
        export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
        ;;
    esac
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
# cpu_ticks: the proxy role's user + system CPU so far, in clock ticks (its
# event loop and, when exporting, its exporter thread)
cpu_ticks() {
    local pid
    pid=$(pgrep -P "$bench_pid" -x proxy | head -n 1)
    awk '{print $14 + $15}' "/proc/$pid/stat"
}
configs=(off on)
[ -z "$base" ] || configs=(base "${configs[@]}")
[ -z "$old" ] || configs+=(old)
echo "== wrk -t1 -c50 keep-alive, 2 s warm-up + ${secs}s per run, $rounds rounds of: ${configs[*]}"
echo "   $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
loads=()
for r in $(seq 1 "$rounds"); do
    for c in "${configs[@]}"; do
        serve "$c"
        wrk -t1 -c50 -d2s "${hdrs[@]}" "$url" >/dev/null
        t0=$(cpu_ticks)
        wrk -t1 -c50 -d"${secs}s" --latency "${hdrs[@]}" "$url" >"$work/$c-$r.txt"
        t1=$(cpu_ticks)
        # CPU per request: what the proxy spent, whatever else loads the machine
        n=$(awk '/requests in/ {print $1}' "$work/$c-$r.txt")
        echo "$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) )) $n" | awk '{printf "%.1f\n", $1 / $2}' >"$work/$c-$r.cpu"
        bad=""
        ! grep -qE "Non-2xx|Socket errors" "$work/$c-$r.txt" || bad=" (! non-2xx or socket errors: not counted)"
        printf "   round %d %-4s %8.0f req/s  p99 %-9s %6.1f µs CPU/request%s\n" "$r" "$c" \
            "$(awk '/^Requests\/sec/ {print $2}' "$work/$c-$r.txt")" \
            "$(awk '$1 == "99%" {print $2}' "$work/$c-$r.txt")" "$(cat "$work/$c-$r.cpu")" "$bad"
    done
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done
echo "   load average (1 min) after each round: ${loads[*]}"

# median C FIELD: the median over the rounds of req/s (rate), p99 in µs
# (p99) or CPU µs per request (cpu)
median() {
    for f in "$work/$1"-*.txt; do
        grep -qE "Non-2xx|Socket errors" "$f" && continue
        if [ "$2" = cpu ]; then
            cat "${f%.txt}.cpu"
        elif [ "$2" = rate ]; then
            awk '/^Requests\/sec/ {print $2}' "$f"
        else
            awk '$1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                print v * (u == "s" ? 1000000 : u == "ms" ? 1000 : 1)}' "$f"
        fi
    done | sort -n | awk '{a[NR] = $1} END {print NR ? a[int((NR + 1) / 2)] : 0}'
}
echo
printf "%-6s %12s %10s %16s\n" config "req/s (med)" "p99 (med)" "CPU/request (med)"
for c in "${configs[@]}"; do
    printf "%-6s %12.0f %7.2f ms %13.1f µs\n" "$c" "$(median "$c" rate)" "$(echo "$(median "$c" p99) / 1000" | bc -l)" \
        "$(median "$c" cpu)"
done
on_off=$(echo "$(median on rate) / $(median off rate)" | bc -l)
on_off_cpu=$(echo "$(median on cpu) / $(median off cpu)" | bc -l)
printf "\nexport on / off: req/s %.3f (aim >= 0.95), CPU per request %.3f\n" "$on_off" "$on_off_cpu"
summary=$(printf "on/off req/s %.3f cpu %.3f" "$on_off" "$on_off_cpu")
if [ -n "$base" ]; then
    off_base=$(echo "$(median off rate) / $(median base rate)" | bc -l)
    off_base_cpu=$(echo "$(median off cpu) / $(median base cpu)" | bc -l)
    printf "trace stages without export / base: req/s %.3f, CPU per request %.3f\n" "$off_base" "$off_base_cpu"
    summary+=$(printf ", off/base req/s %.3f cpu %.3f" "$off_base" "$off_base_cpu")
fi
if [ -n "$old" ]; then
    on_old=$(echo "$(median on rate) / $(median old rate)" | bc -l)
    on_old_cpu=$(echo "$(median on cpu) / $(median old cpu)" | bc -l)
    printf "export on, this build / OLD_BUILD: req/s %.3f, CPU per request %.3f\n" "$on_old" "$on_old_cpu"
    summary+=$(printf ", on/old req/s %.3f cpu %.3f" "$on_old" "$on_old_cpu")
fi
echo "SUMMARY proxy trace: $summary"
