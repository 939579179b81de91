#!/usr/bin/env bash
# Proxy benchmark: Cloister's identity-aware proxy beside nginx, in one run,
# all proxying to the same static upstream (an nginx, 1 worker, serving a
# 612-byte index.html on loopback, upstream keep-alive pools everywhere):
#   a. nginx proxy_pass, no auth (1 worker; keepalive 64, proxy_http_version 1.1)
#   b. nginx auth_request (same nginx, same single worker): each request first
#      makes a subrequest, over a keep-alive pool, to an auth server that
#      answers 204 when an Authorization header is present (401 otherwise) --
#      a server block of that same nginx: the cheapest honest auth server
#      nginx can call
#   c. Cloister's proxy (--proxy-threads 1): the access token verified and a
#      10-rule policy decided on every request
# each over plain HTTP and over TLS (nginx: a self-signed P-256 cert made
# here; Cloister: its cluster CA's cert; wrk verifies neither). wrk -t1 -c50,
# HTTP/1.1 keep-alive, a 2 s warm-up then DURATION seconds, the same request
# bytes for every configuration (Host: static.localhost and the same
# Authorization: Bearer header).
# Then the memory an idle keep-alive connection costs: 10,000 of them opened
# (one request answered on each, then left idle) to nginx proxy_pass and to
# Cloister's proxy over plain HTTP; the serving process's VmRSS before and after.
#
# Reading the output: one table (req/s, p50, p99 per configuration), then the
# ratios DESIGN.md sets targets for -- cloister/proxy_pass req/s >= 1.0,
# cloister/auth_request req/s >= 4, cloister p99 / proxy_pass p99 <= 1.2 --
# then KiB per idle connection (target <= 8 KiB for Cloister), and a SUMMARY
# line. A row marked "!" had non-2xx answers or socket errors: its figures do
# not count. Without a proxy role in the build (cloisterd does not accept
# --proxy-threads) the Cloister rows say "proxy role not available".
#
# Usage: bench/proxy/run.sh [DURATION]   (seconds per measured run, default 10)
#   BUILD=dir (release build dir, default build-bench-proxy), IDLE_CONNS=n
#   (default 10000), BENCH_KEEP=1 keeps the work dir (configs, logs, wrk output).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib.sh"
cd "$bench_top"
secs=${1:-10}
build=${BUILD:-build-bench-proxy}
idle_conns=${IDLE_CONNS:-10000}
py=/usr/bin/python3

"$bench_top/scripts/setup.sh" # nginx, wrk, openssl: the nginx half needs nothing else
# 10,000 idle connections need as many descriptors in the servers (which
# inherit this limit) and in the client: as high as this shell may go
if [ "$(ulimit -Hn)" = unlimited ]; then ulimit -n 65536; else ulimit -n "$(ulimit -Hn)"; fi
nofile=$(ulimit -n)

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-proxy.XXXXXX")
nginx_pids=()
cleanup() {
    set +e # every step runs, whatever the one before returned
    local p
    for p in "${nginx_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${nginx_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "${bench_pid:-}" ] || bench_stop_cloisterd
    if [ -n "${BENCH_KEEP:-}" ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port) auth_port=$(free_port)
a_port=$(free_port) b_port=$(free_port) a_tls_port=$(free_port) b_tls_port=$(free_port)

# ---- the static upstream and nginx ------------------------------------------
mkdir -p "$work/www" "$work/tmp"
{ echo "<!DOCTYPE html><html><head><title>bench</title></head><body>"; head -c 1000 /dev/zero | tr '\0' 'x'; } |
    head -c 611 >"$work/www/index.html"
echo >>"$work/www/index.html" # 612 bytes
chmod 755 "$work" "$work/www" # nginx's workers run as nobody
chmod 644 "$work/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# nginx_conf NAME HTTP-BLOCK: a whole nginx.conf with everything inside $work
nginx_conf() {
    cat >"$work/$1.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1-error.log warn;
worker_rlimit_nofile $nofile;
events { worker_connections $((nofile - 100)); }
http {
    access_log off;
    server_tokens off;
    default_type text/html;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
$2
}
EOF
}

# start_nginx NAME PORT: runs nginx (its own master and one worker) with
# $work/NAME.conf and waits until PORT answers
start_nginx() {
    nginx -e "$work/$1-error.log" -p "$work" -c "$work/$1.conf" &
    nginx_pids+=($!)
    local _
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$2/" && return 0
        kill -0 "${nginx_pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "nginx $1 did not start:" >&2
    cat "$work/$1-error.log" >&2
    exit 1
}

nginx_conf upstream "
    open_file_cache max=64;
    server { listen 127.0.0.1:$up_port; root $work/www; }"
start_nginx upstream "$up_port"

pass="proxy_pass http://static; proxy_http_version 1.1; proxy_set_header Connection \"\";"
auth="auth_request /_auth;
        location = /_auth {
            internal;
            proxy_pass http://authserver/check; proxy_http_version 1.1; proxy_set_header Connection \"\";
            proxy_pass_request_body off; proxy_set_header Content-Length \"\";
        }"
tls="ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;"
nginx_conf proxy "
    upstream static { server 127.0.0.1:$up_port; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
    upstream authserver { server 127.0.0.1:$auth_port; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
    # the auth server: 204 when the request carries an Authorization header
    server { listen 127.0.0.1:$auth_port;
        location = /check { if (\$http_authorization = \"\") { return 401; } return 204; } }
    server { listen 127.0.0.1:$a_port; location / { $pass } }
    server { listen 127.0.0.1:$b_port; location / { $pass } $auth }
    server { listen 127.0.0.1:$a_tls_port ssl; $tls location / { $pass } }
    server { listen 127.0.0.1:$b_tls_port ssl; $tls location / { $pass } $auth }"
start_nginx proxy "$a_port"
nginx_proxy_pid=${nginx_pids[-1]}

# ---- Cloister -----------------------------------------------------------------
cl_skip="" cl_failed=""
if ! bench_build "$build" src/daemon/cloisterd src/cli/cloister; then
    # bench_build hides ninja's output (errors included): show them
    ninja -C "$build" src/daemon/cloisterd src/cli/cloister 2>&1 | grep -E "error|undefined reference" | head -n 15 >&2 || true
    cl_skip="the build of $build failed (errors above)"
    cl_failed=1
elif ! "$build/src/daemon/cloisterd" --proxy-threads 1 --help >/dev/null 2>&1; then
    cl_skip="proxy role not available: $build/src/daemon/cloisterd does not accept --proxy-threads"
fi
pp=$(free_port) ph=$(free_port)
if [ -z "$cl_skip" ]; then
    bench_start_cloisterd "$build" --proxy-listen "127.0.0.1:$pp" --proxy-http-listen "127.0.0.1:$ph" \
        --proxy-threads 1 --domain localhost
    trap cleanup EXIT # bench_start_cloisterd set its own; ours calls it
    export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$work/config
    cli=$build/src/cli/cloister
    proxy_bench_configure "$work" "$up_port"
else
    # a stand-in as long as a real access token (an ES256 JWT, 434 characters)
    token=$(head -c 400 /dev/urandom | base64 -w0 | tr '+/' '-_' | head -c 434)
fi
hdrs=(-H "Host: static.localhost" -H "Authorization: Bearer $token")

# status URL [curl args]: the status code of one GET with the bench's headers
status() { curl -sk -o /dev/null -w '%{http_code}' "${@:2}" "$1"; }

if [ -z "$cl_skip" ]; then
    # the configuration reaches the proxy asynchronously
    code=000
    for _ in $(seq 1 300); do
        code=$(status "http://127.0.0.1:$ph/index.html" "${hdrs[@]}")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    if [ "$code" != 200 ]; then
        echo "cloister: the proxy never answered 200 for GET /index.html (last status $code); cloisterd's log:" >&2
        tail -n 30 "$BENCH_WORK/cloisterd.log" >&2
        exit 1
    fi
    [ "$(status "https://127.0.0.1:$pp/index.html" "${hdrs[@]}")" = 200 ] ||
        { echo "cloister: the HTTPS proxy listener does not answer 200" >&2; exit 1; }
    # the policy is really decided: /admin is denied, no token is refused
    c_admin=$(status "http://127.0.0.1:$ph/admin/x" "${hdrs[@]}")
    c_anon=$(status "http://127.0.0.1:$ph/index.html" -H "Host: static.localhost")
    [ "$c_admin" = 403 ] && [ "$c_anon" != 200 ] ||
        echo "warning: cloister answered $c_admin to GET /admin/x (want 403) and $c_anon without a token" >&2
fi
# nginx is what it says: the file arrives through a and b, b refuses without Authorization
for u in "http://127.0.0.1:$a_port" "http://127.0.0.1:$b_port" "https://127.0.0.1:$a_tls_port" \
    "https://127.0.0.1:$b_tls_port"; do
    got=$(curl -sk -o /dev/null -w '%{http_code} %{size_download}' "${hdrs[@]}" "$u/index.html")
    [ "$got" = "200 612" ] || { echo "nginx: $u/index.html answered '$got', not '200 612'" >&2; exit 1; }
done
[ "$(status "http://127.0.0.1:$b_port/index.html" -H "Host: static.localhost")" = 401 ] ||
    { echo "nginx: auth_request lets a request without Authorization through" >&2; exit 1; }

# ---- throughput and latency -------------------------------------------------
# measure ID URL: a 2 s warm-up, then DURATION seconds into $work/ID.txt
measure() {
    wrk -t1 -c50 -d2s "${hdrs[@]}" "$2" >/dev/null
    wrk -t1 -c50 -d"${secs}s" --latency "${hdrs[@]}" "$2" >"$work/$1.txt"
}
rate() { awk '/^Requests\/sec/ {print $2}' "$work/$1.txt"; }
# latency ID PCT: in microseconds
latency() {
    awk -v p="$2%" '$1 == p {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        print v * (u == "s" ? 1000000 : u == "ms" ? 1000 : u == "m" ? 60000000 : 1)}' "$work/$1.txt"
}
bad() { grep -qE "Non-2xx|Socket errors" "$work/$1.txt"; }

declare -A label=([a]="a. nginx proxy_pass, no auth" [b]="b. nginx auth_request (204 auth server)"
    [c]="c. cloister proxy, token + 10 rules")
declare -A url=(
    [a-http]="http://127.0.0.1:$a_port/index.html" [a-tls]="https://127.0.0.1:$a_tls_port/index.html"
    [b-http]="http://127.0.0.1:$b_port/index.html" [b-tls]="https://127.0.0.1:$b_tls_port/index.html"
    [c-http]="http://127.0.0.1:$ph/index.html" [c-tls]="https://127.0.0.1:$pp/index.html")
runs=(a-http b-http a-tls b-tls)
[ -n "$cl_skip" ] || runs=(a-http b-http c-http a-tls b-tls c-tls)
echo "== wrk -t1 -c50 keep-alive, 2 s warm-up + ${secs}s each; 1 worker per proxy; upstream: nginx, a static 612-byte file"
echo "   $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews all rows)"
for id in "${runs[@]}"; do
    echo "   measuring ${label[${id%-*}]} over ${id#*-}: ${url[$id]}"
    measure "$id" "${url[$id]}"
done

ms() { echo "$1 / 1000" | bc -l; }
ratio() { echo "$1 / $2" | bc -l; }
echo
printf "%-42s %-5s %10s %10s %10s\n" configuration proto "req/s" p50 p99
for id in a-http b-http c-http a-tls b-tls c-tls; do
    cfg=${id%-*} proto=${id#*-}
    if [ ! -f "$work/$id.txt" ]; then
        printf "%-42s %-5s %s\n" "${label[$cfg]}" "$proto" "skipped: $cl_skip"
        continue
    fi
    mark=" "
    bad "$id" && mark="!"
    printf "%-42s %-5s %10.0f %7.2f ms %7.2f ms\n" "${label[$cfg]}$mark" "$proto" "$(rate "$id")" \
        "$(ms "$(latency "$id" 50)")" "$(ms "$(latency "$id" 99)")"
done
for id in "${runs[@]}"; do
    bad "$id" && echo "! $id: $(grep -E 'Non-2xx|Socket errors' "$work/$id.txt" | tr -s ' ' | paste -sd ';')"
done
echo "(b's auth server: a server block of the same nginx and worker, reached over an upstream keep-alive"
echo " pool, answering 204 when Authorization is present, 401 otherwise)"

echo
summary=""
if [ -z "$cl_skip" ]; then
    printf "%-42s %7s %7s   %s\n" ratio http tls target
    for r in pass auth p99; do
        vals=()
        for proto in http tls; do
            case $r in
            pass) v=$(ratio "$(rate "c-$proto")" "$(rate "a-$proto")") ;;
            auth) v=$(ratio "$(rate "c-$proto")" "$(rate "b-$proto")") ;;
            p99) v=$(ratio "$(latency "c-$proto" 99)" "$(latency "a-$proto" 99)") ;;
            esac
            vals+=("$v")
        done
        case $r in
        pass) what="cloister / nginx proxy_pass, req/s" short="req/s / proxy_pass" target=">= 1.0" ;;
        auth) what="cloister / nginx auth_request, req/s" short="req/s / auth_request" target=">= 4" ;;
        p99) what="cloister p99 / nginx proxy_pass p99" short="p99 / proxy_pass p99" target="<= 1.2" ;;
        esac
        printf "%-42s %7.2f %7.2f   %s\n" "$what" "${vals[0]}" "${vals[1]}" "$target"
        summary+=$(printf " %s %.2f/%.2f (aim %s);" "$short" "${vals[0]}" "${vals[1]}" "$target")
    done
else
    echo "ratios: none ($cl_skip)"
fi

# ---- memory per idle keep-alive connection ----------------------------------
# idle ID LABEL PID PORT: opens $idle_conns idle connections to PORT, prints
# what PID's RSS did (and keeps the figures in $work/idle-ID.json)
idle() {
    local out
    out=$($py bench/proxy/idle-conns.py 127.0.0.1 "$4" "$idle_conns" "$3" /index.html \
        "Host: static.localhost" "Authorization: Bearer $token")
    echo "$out" >"$work/idle-$1.json"
    $py -c 'import json, sys
d = json.loads(sys.argv[2])
per = "%.2f KiB per connection" % d["kib_per_conn"] if d["kib_per_conn"] is not None else "no connection held"
print("%-34s %5d open (%d failed), VmRSS %d -> %d KiB: %s" % (sys.argv[1], d["open"], d["failed"],
      d["rss_before_kib"], d["rss_after_kib"], per))' "$2" "$out"
}
kib() { $py -c 'import json, sys; v = json.load(open(sys.argv[1]))["kib_per_conn"]; print("n/a" if v is None else v)' \
    "$work/idle-$1.json"; }
echo
echo "== $idle_conns idle keep-alive connections over plain HTTP (one request answered on each, then left open)"
nginx_worker=$(pgrep -P "$nginx_proxy_pid" | head -n 1)
idle nginx "nginx proxy_pass (worker $nginx_worker)" "$nginx_worker" "$a_port"
if [ -z "$cl_skip" ]; then
    proxy_pid=""
    for p in $(pgrep -P "$bench_pid"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = proxy ] && proxy_pid=$p
    done
    if [ -n "$proxy_pid" ]; then
        idle cloister "cloister proxy role (pid $proxy_pid)" "$proxy_pid" "$ph"
        echo "(target for cloister: <= 8 KiB per connection)"
        summary+=" KiB per idle connection $(kib cloister) (aim <= 8; nginx $(kib nginx))"
    else
        echo "cloister: no child of cloisterd ($bench_pid) is named proxy; idle connections not measured"
        summary+=" KiB per idle connection n/a (no proxy role process; nginx $(kib nginx))"
    fi
else
    echo "cloister: skipped ($cl_skip)"
fi

echo
if [ -z "$cl_skip" ]; then
    echo "SUMMARY cloister, http/tls:$summary"
else
    printf "SUMMARY cloister: %s; nginx req/s http proxy_pass %.0f auth_request %.0f, tls proxy_pass %.0f auth_request %.0f; nginx idle KiB/conn %s\n" \
        "$cl_skip" "$(rate a-http)" "$(rate b-http)" "$(rate a-tls)" "$(rate b-tls)" "$(kib nginx)"
fi
[ -z "$cl_failed" ]
