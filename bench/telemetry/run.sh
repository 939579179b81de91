#!/usr/bin/env bash
# What OTLP export costs per proxied request, the exporter alone (no proxy
# around it): bench-telemetry makes the records of one proxied request (two
# spans, an access log record: bench-telemetry.c) N times through the real
# exporter, posting to an nginx that answers 200 to every POST, with gzip and
# without (OTEL_EXPORTER_OTLP_COMPRESSION=none), ROUNDS times in turn. Prints
# each run and the medians of the CPU time per request: of the thread that
# makes the records, and of the whole process (the exporter's thread, its
# gzip and its requests included). bench/proxy/trace.sh measures the same
# inside the proxy.
#
# Usage: bench/telemetry/run.sh [N] (requests per run, default 200000)
#   BENCH_BUILD=dir (default build-bench-telemetry), ROUNDS=n (default 3)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$bench_top"
n=${1:-200000}
build=${BENCH_BUILD:-build-bench-telemetry}
rounds=${ROUNDS:-3}
bench_build "$build" bench/telemetry/bench-telemetry

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-telemetry.XXXXXX")
nginx_pid=
cleanup() {
    [ -z "$nginx_pid" ] || { kill -TERM "$nginx_pid"; wait "$nginx_pid"; } 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bench_nginx_start "$work" "
    server { listen 127.0.0.1:$port; client_max_body_size 64m; client_body_buffer_size 64m;
             location / { default_type application/json; return 200 \"{}\"; } }"
nginx_pid=$bench_nginx_pid
for _ in $(seq 1 100); do curl -s -o /dev/null -X POST "http://127.0.0.1:$port/" && break; sleep 0.05; done

echo "== $n requests' records per run (2 spans, 1 log record), $rounds rounds of: gzip none"
echo "   $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
    for c in gzip none; do
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port" OTEL_EXPORTER_OTLP_COMPRESSION=$c \
            OTEL_BSP_MAX_QUEUE_SIZE=1048576 "$build/bench/telemetry/bench-telemetry" "$n" 2>/dev/null >"$work/$c-$r.txt"
        read -r caller process dropped <"$work/$c-$r.txt"
        printf "   round %d %-4s caller %6.2f µs, process %6.2f µs per request, %s dropped\n" "$r" "$c" "$caller" \
            "$process" "$dropped"
    done
done
echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { # median CONFIG COLUMN
    cat "$work/$1"-*.txt | awk -v c="$2" '{print $c}' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'
}
echo
for c in gzip none; do
    printf "%-4s caller %6.2f µs, process (with the exporter) %6.2f µs per request (medians)\n" "$c" \
        "$(median "$c" 1)" "$(median "$c" 2)"
done
echo "SUMMARY telemetry per proxied request: gzip $(median gzip 2) us, none $(median none 2) us of CPU"
