#!/usr/bin/env bash
# Plugin benchmark (docs/plugins.md): the proxy's throughput on one Service
# three ways, in one run, against the same static upstream (an nginx, 1
# worker, a 612-byte index.html on loopback):
#   a. no plugin            (Service static: token verified, 10-rule policy)
#   b. a no-op plugin in process      (request_headers: noop, trusted)
#   c. a no-op plugin out of process  (request_headers: noop-sandboxed, in a
#      sandbox the runner launches, one round trip on a Unix socket per request)
# wrk -t1 -c50, HTTP/1.1 keep-alive, plain HTTP; ROUNDS interleaved rounds
# (a, b, c, a, b, c, ...) of a 1 s warm-up then DURATION seconds each, and
# the median of each configuration (a crowded machine moves single runs a
# lot); the proxy with 1 worker thread.
#
# Reading the output: req/s, p50 and p99 per configuration, then the ratios
# b/a and c/a (what a plugin costs). A row marked "!" had non-2xx answers or
# socket errors: its figures do not count.
#
# Usage: bench/plugins/run.sh [DURATION]   (seconds per measured run, default 5)
#   ROUNDS=n (default 3), BUILD=dir (release build dir, default build-bench-proxy), BENCH_KEEP=1
#   keeps the work dir.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../proxy/lib.sh"
cd "$bench_top"
secs=${1:-5}
rounds=${ROUNDS:-3}
build=${BUILD:-build-bench-proxy}
py=/usr/bin/python3

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-plugins.XXXXXX")
cleanup() {
    set +e
    [ -z "${bench_nginx_pid:-}" ] || { kill -TERM "$bench_nginx_pid"; wait "$bench_nginx_pid"; } 2>/dev/null
    [ -z "${bench_pid:-}" ] || bench_stop_cloisterd
    if [ -n "${BENCH_KEEP:-}" ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_build "$build" src/daemon/cloisterd src/cli/cloister src/plugin/cloister-plugin-sandbox plugins/testing/noop.so

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port) ph=$(free_port)

# ---- the static upstream ------------------------------------------------------
mkdir -p "$work/www" "$work/plugins"
{ echo "<!DOCTYPE html><html><head><title>bench</title></head><body>"; head -c 1000 /dev/zero | tr '\0' 'x'; } |
    head -c 611 >"$work/www/index.html"
echo >>"$work/www/index.html"
chmod 755 "$work" "$work/www" "$work/plugins"
chmod 644 "$work/www/index.html"
bench_nginx_start "$work" "server { listen 127.0.0.1:$up_port; root $work/www; }"

# ---- the plugin directory and cloisterd ---------------------------------------
cp "$build/plugins/testing/noop.so" "$work/plugins/noop.so"
cp "$build/plugins/testing/noop.so" "$work/plugins/noop-sandboxed.so"
chmod 755 "$work/plugins"/*.so
bench_start_cloisterd "$build" --proxy-http-listen "127.0.0.1:$ph" --proxy-threads 1 --domain localhost \
    --plugin-dir "$work/plugins" --plugin-trusted noop
trap cleanup EXIT
export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$work/config
cli=$build/src/cli/cloister
proxy_bench_configure "$work" "$up_port"
cat >"$work/plugins.yaml" <<YAML
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: inproc}
spec:
  upstream: {url: "http://127.0.0.1:$up_port"}
  policies: [bench-rules]
  plugins: [{name: noop, phase: request_headers}]
---
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: sandboxed}
spec:
  upstream: {url: "http://127.0.0.1:$up_port"}
  policies: [bench-rules]
  plugins: [{name: noop-sandboxed, phase: request_headers, timeoutMs: 1000}]
YAML
"$cli" apply -f "$work/plugins.yaml" >/dev/null

declare -A label=([a]="a. no plugin" [b]="b. no-op plugin, in process" [c]="c. no-op plugin, out of process")
declare -A host=([a]=static.localhost [b]=inproc.localhost [c]=sandboxed.localhost)
url="http://127.0.0.1:$ph/index.html"
for id in a b c; do
    code=000
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: ${host[$id]}" -H "Authorization: Bearer $token" "$url")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ] || { echo "${label[$id]}: the proxy answers $code, not 200" >&2; tail -n 30 "$BENCH_WORK/cloisterd.log" >&2; exit 1; }
done

measure() { # measure ID ROUND
    local h=(-H "Host: ${host[$1]}" -H "Authorization: Bearer $token")
    wrk -t1 -c50 -d1s "${h[@]}" "$url" >/dev/null
    wrk -t1 -c50 -d"${secs}s" --latency "${h[@]}" "$url" >"$work/$1-$2.txt"
}
rate() { awk '/^Requests\/sec/ {print $2}' "$work/$1.txt"; }
latency() {
    awk -v p="$2%" '$1 == p {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        print v * (u == "s" ? 1000000 : u == "ms" ? 1000 : u == "m" ? 60000000 : 1)}' "$work/$1.txt"
}
bad() { grep -qE "Non-2xx|Socket errors" "$work/$1.txt"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "== wrk -t1 -c50 keep-alive, $rounds interleaved rounds of ${secs}s each (1 s warm-up before each); medians;"
echo "   proxy: 1 worker; upstream: nginx, a static 612-byte file"
echo "   $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews all rows)"
for r in $(seq 1 "$rounds"); do
    for id in a b c; do
        echo "   round $r: ${label[$id]}"
        measure "$id" "$r"
    done
done
echo
printf "%-36s %10s %10s %10s   %s\n" configuration "req/s" p50 p99 "req/s of each round"
declare -A med
for id in a b c; do
    mark=" " rates="" p50s="" p99s=""
    for r in $(seq 1 "$rounds"); do
        bad "$id-$r" && mark="!"
        rates+="$(rate "$id-$r") " p50s+="$(latency "$id-$r" 50) " p99s+="$(latency "$id-$r" 99) "
    done
    med[$id]=$(echo $rates | tr ' ' '\n' | median)
    printf "%-36s %10.0f %7.2f ms %7.2f ms   %s\n" "${label[$id]}$mark" "${med[$id]}" \
        "$(echo "$(echo $p50s | tr ' ' '\n' | median) / 1000" | bc -l)" \
        "$(echo "$(echo $p99s | tr ' ' '\n' | median) / 1000" | bc -l)" "$rates"
done
echo
ra=${med[a]} rb=${med[b]} rc=${med[c]}
printf "ratio in process / none:      %.3f\n" "$(echo "$rb / $ra" | bc -l)"
printf "ratio out of process / none:  %.3f\n" "$(echo "$rc / $ra" | bc -l)"
printf "SUMMARY plugins: none %.0f req/s, in process %.0f (%.2fx), out of process %.0f (%.2fx)\n" \
    "$ra" "$rb" "$(echo "$rb / $ra" | bc -l)" "$rc" "$(echo "$rc / $ra" | bc -l)"
