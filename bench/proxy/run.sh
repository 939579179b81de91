#!/usr/bin/env bash
# Proxy benchmark: Cloister's identity-aware proxy beside nginx and HAProxy,
# in one run, all proxying to the same static upstream (an nginx, 2 workers,
# serving a 612-byte index.html on loopback; upstream keep-alive everywhere):
#   nginx       nginx proxy_pass, no auth (keepalive 64, proxy_http_version 1.1)
#   nginx-log   the same nginx proxy_pass writing an access log line per request
#               (combined format, buffer=512k flush=1s: buffered, not synced,
#               not chained, kept on the machine): what a log costs nginx,
#               beside Cloister's durable, chained, shipped records
#   haproxy     HAProxy 2.6, no auth (http-reuse always)
#   nginx-auth  nginx auth_request: each request first makes a subrequest, over
#               a keep-alive pool, to an auth server that answers 204 when an
#               Authorization header is present (401 otherwise) -- a server
#               block of that same nginx: the cheapest honest auth server
#   cloister    Cloister's proxy: the access token verified, a 10-rule policy
#               decided and an access record written on every request
# each with 1 and with 2 workers (nginx worker_processes, HAProxy nbthread,
# cloisterd --proxy-threads: one instance of each per worker count, all
# started once), over plain HTTP and over TLS 1.3 (the peers: a self-signed
# P-256 certificate made here, nginx told to offer TLS 1.3 as HAProxy and
# Cloister do; Cloister: its cluster CA's; wrk verifies neither; the
# protocol and cipher each one negotiates are printed).
# wrk -c50 keep-alive (-t1 for 1 worker, -t2 for 2), the same request bytes
# everywhere (Host: static.localhost and the same Authorization: Bearer).
# The machine's speed swings within seconds, so the configurations are
# measured in ROUNDS interleaved rounds (each: every configuration once, a 1 s
# warm-up then DURATION seconds) and the tables give medians.
#
# Beside req/s, p50 and p99: the CPU each request costs (user + system time
# of the serving processes over the measured run, divided by its requests):
# the nginx workers, the HAProxy process, and each Cloister role (proxy, api,
# audit, kms, runner and the supervisor) on its own. Then syscalls per request
# of each proxy at 1 worker (strace -c -f attached to the serving processes
# during a separate 3 s run: strace slows everything, the ratio is what
# counts), and the memory an idle keep-alive connection costs (IDLE_CONNS
# idle connections to nginx and to Cloister, one worker each; VmRSS before
# and after).
#
# Reading the output: the table, then per worker count and protocol the
# ratios DESIGN.md and issue 15 set targets for -- cloister / nginx
# proxy_pass req/s >= 1.0 (must, 1 worker), cloister / the faster of nginx and
# HAProxy >= 1.0 (aim), cloister p99 / nginx p99 <= 1.2 -- with, for
# information, cloister / nginx auth_request and / nginx with its access log
# (neither is a target: the targets are against nginx with no log) -- then CPU per
# request per role, syscalls per request, KiB per idle connection (<= 8), and
# a SUMMARY line. A row marked "!" had non-2xx answers or socket errors in
# some round: its figures do not count.
#
# Usage: bench/proxy/run.sh [DURATION [ROUNDS]]   (seconds per measured run,
#   default 5; rounds, default 3)
#   BUILD=dir (release build dir, default build-bench-proxy); BASELINE=dir (a
#   release build of another commit, e.g. from a `git worktree`: measured the
#   same way beside BUILD, with the ratios BUILD / BASELINE); IDLE_CONNS=n
#   (default 10000), BENCH_KEEP=1 keeps the work dir (configs, logs, wrk output).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/lib.sh"
cd "$bench_top"
secs=${1:-5}
rounds=${2:-3}
build=${BUILD:-build-bench-proxy}
idle_conns=${IDLE_CONNS:-10000}
py=/usr/bin/python3

"$bench_top/scripts/setup.sh" # nginx, HAProxy, wrk, strace, openssl
# 10,000 idle connections need as many descriptors in the servers (which
# inherit this limit) and in the client: as high as this shell may go
if [ "$(ulimit -Hn)" = unlimited ]; then ulimit -n 65536; else ulimit -n "$(ulimit -Hn)"; fi
nofile=$(ulimit -n)

work=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench-proxy.XXXXXX")
peer_pids=()     # nginx masters and HAProxy processes
cloister_pids=() # the cloisterd supervisors, one per worker count
cloister_works=()
cleanup() {
    set +e # every step runs, whatever the one before returned
    local p
    for p in "${peer_pids[@]}" "${cloister_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${peer_pids[@]}" "${cloister_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${BENCH_KEEP:-}" ]; then
        echo "work dir kept: $work (cloisterd: ${cloister_works[*]})" >&2
    else
        rm -rf "$work" "${cloister_works[@]}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { $py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
up_port=$(free_port)

# ---- the static upstream and the peers ----------------------------------------
mkdir -p "$work/www" "$work/tmp"
{ echo "<!DOCTYPE html><html><head><title>bench</title></head><body>"; head -c 1000 /dev/zero | tr '\0' 'x'; } |
    head -c 611 >"$work/www/index.html"
echo >>"$work/www/index.html" # 612 bytes
chmod 755 "$work" "$work/www" # nginx's workers run as nobody
chmod 644 "$work/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

# wait_port PORT PID WHAT LOG: until PORT answers, or PID died (then LOG is shown)
wait_port() {
    local _
    for _ in $(seq 1 200); do
        curl -sk -o /dev/null "http://127.0.0.1:$1/" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    echo "$3 did not start:" >&2
    cat "$4" >&2
    exit 1
}

# nginx_start NAME WORKERS HTTP-BLOCK CHECK-PORT: nginx (its own master, WORKERS
# workers) with everything inside $work
nginx_start() {
    cat >"$work/$1.conf" <<EOF
worker_processes $2;
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
$3
}
EOF
    nginx -e "$work/$1-error.log" -p "$work" -c "$work/$1.conf" &
    peer_pids+=($!)
    wait_port "$4" "$!" "nginx $1" "$work/$1-error.log"
}

# haproxy_start NAME THREADS HTTP-PORT TLS-PORT
haproxy_start() {
    cat >"$work/$1.cfg" <<EOF
global
    nbthread $2
    maxconn $((nofile / 2 - 100))
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend plain
    bind 127.0.0.1:$3
    default_backend static
frontend tls
    bind 127.0.0.1:$4 ssl crt $work/haproxy.pem
    default_backend static
backend static
    server up 127.0.0.1:$up_port
EOF
    haproxy -f "$work/$1.cfg" -db >"$work/$1.log" 2>&1 &
    peer_pids+=($!)
    wait_port "$3" "$!" "haproxy $1" "$work/$1.log"
}

declare -A url serving # url[ID]: what wrk fetches; serving[ID]: "role=pid ..." whose CPU counts
nginx_start upstream 2 "
    open_file_cache max=64;
    server { listen 127.0.0.1:$up_port; root $work/www; }" "$up_port"

pass="proxy_pass http://static; proxy_http_version 1.1; proxy_set_header Connection \"\";"
auth="auth_request /_auth;
        location = /_auth {
            internal;
            proxy_pass http://authserver/check; proxy_http_version 1.1; proxy_set_header Connection \"\";
            proxy_pass_request_body off; proxy_set_header Content-Length \"\";
        }"
# TLS 1.3 like the others (Debian's nginx 1.22 offers only up to TLS 1.2 unless told)
tls="ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
for w in 1 2; do
    auth_port=$(free_port) a=$(free_port) b=$(free_port) at=$(free_port) bt=$(free_port) l=$(free_port) lt=$(free_port)
    logged="access_log $work/nginx$w-access.log combined buffer=512k flush=1s;"
    nginx_start "nginx$w" "$w" "
    upstream static { server 127.0.0.1:$up_port; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
    upstream authserver { server 127.0.0.1:$auth_port; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
    # the auth server: 204 when the request carries an Authorization header
    server { listen 127.0.0.1:$auth_port;
        location = /check { if (\$http_authorization = \"\") { return 401; } return 204; } }
    server { listen 127.0.0.1:$a; location / { $pass } }
    server { listen 127.0.0.1:$b; location / { $pass } $auth }
    server { listen 127.0.0.1:$at ssl; $tls location / { $pass } }
    server { listen 127.0.0.1:$bt ssl; $tls location / { $pass } $auth }
    server { listen 127.0.0.1:$l; $logged location / { $pass } }
    server { listen 127.0.0.1:$lt ssl; $tls $logged location / { $pass } }" "$a"
    workers=$(pgrep -P "${peer_pids[-1]}" | sed 's/^/nginx=/' | paste -sd' ')
    url[nginx-$w-http]=http://127.0.0.1:$a/index.html url[nginx-$w-tls]=https://127.0.0.1:$at/index.html
    url[nginx-auth-$w-http]=http://127.0.0.1:$b/index.html url[nginx-auth-$w-tls]=https://127.0.0.1:$bt/index.html
    url[nginx-log-$w-http]=http://127.0.0.1:$l/index.html url[nginx-log-$w-tls]=https://127.0.0.1:$lt/index.html
    for p in http tls; do serving[nginx-$w-$p]=$workers serving[nginx-auth-$w-$p]=$workers serving[nginx-log-$w-$p]=$workers; done
    [ "$w" = 1 ] && { nginx1_http=$a nginx1_worker=${workers#nginx=}; }

    h=$(free_port) ht=$(free_port)
    haproxy_start "haproxy$w" "$w" "$h" "$ht"
    url[haproxy-$w-http]=http://127.0.0.1:$h/index.html url[haproxy-$w-tls]=https://127.0.0.1:$ht/index.html
    serving[haproxy-$w-http]="haproxy=${peer_pids[-1]}" serving[haproxy-$w-tls]="haproxy=${peer_pids[-1]}"
done

# ---- Cloister -----------------------------------------------------------------
# cloister_usable BUILD: builds BUILD's cloisterd and CLI; prints why it cannot
# be measured (nothing when it can) and returns 1 when the build itself failed
cloister_usable() {
    if ! bench_build "$1" src/daemon/cloisterd src/cli/cloister; then
        # bench_build hides ninja's output (errors included): show them
        ninja -C "$1" src/daemon/cloisterd src/cli/cloister 2>&1 | grep -E "error|undefined reference" | head -n 15 >&2 || true
        echo "the build of $1 failed (errors above)"
        return 1
    elif ! "$1/src/daemon/cloisterd" --proxy-threads 1 --help >/dev/null 2>&1; then
        echo "proxy role not available: $1/src/daemon/cloisterd does not accept --proxy-threads"
    fi
}
cl_failed=""
cl_skip=$(cloister_usable "$build") || cl_failed=1
# status URL [curl args]: the status code of one GET
status() { curl -sk -o /dev/null -w '%{http_code}' "${@:2}" "$1"; }
# role_pids SUPERVISOR: "role=pid ..." for the supervisor and each role process
role_pids() {
    local p out="cloisterd=$1"
    for p in $(pgrep -P "$1"); do out+=" $(cat "/proc/$p/comm" 2>/dev/null)=$p"; done
    echo "$out"
}
# cloister_start NAME BUILD WORKERS: BUILD's cloisterd with WORKERS proxy
# threads, configured by proxy_bench_configure; sets url[NAME-WORKERS-*],
# serving[...], token_NAME_WORKERS (the access token it issued) and
# renew[NAME-WORKERS] (how to get another: API URL, CA, credential)
cloister_start() {
    local name=$1 b=$2 w=$3 pp ph code _
    pp=$(free_port) ph=$(free_port)
    bench_start_cloisterd "$b" --proxy-listen "127.0.0.1:$pp" --proxy-http-listen "127.0.0.1:$ph" \
        --proxy-threads "$w" --domain localhost
    trap cleanup EXIT # bench_start_cloisterd set its own; ours stops every instance
    cloister_pids+=("$bench_pid") cloister_works+=("$BENCH_WORK")
    bench_pid="" # cleanup stops it
    export CLOISTER_SERVER=$BENCH_URL CLOISTER_CA=$BENCH_CA XDG_CONFIG_HOME=$work/config-$name-$w
    cli=$b/src/cli/cloister
    proxy_bench_configure "$work" "$up_port" # sets $token
    printf -v "token_${name}_$w" %s "$token"
    renew[$name-$w]="$BENCH_URL $BENCH_CA $credential"
    url[$name-$w-http]=http://127.0.0.1:$ph/index.html url[$name-$w-tls]=https://127.0.0.1:$pp/index.html
    local h=(-H "Host: static.localhost" -H "Authorization: Bearer $token")
    # the configuration reaches the proxy asynchronously
    code=000
    for _ in $(seq 1 300); do
        code=$(status "${url[$name-$w-http]}" "${h[@]}")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    if [ "$code" != 200 ]; then
        echo "$name ($w workers): the proxy never answered 200 for GET /index.html (last status $code); cloisterd's log:" >&2
        tail -n 30 "$BENCH_WORK/cloisterd.log" >&2
        exit 1
    fi
    [ "$(status "${url[$name-$w-tls]}" "${h[@]}")" = 200 ] ||
        { echo "$name: the HTTPS proxy listener does not answer 200" >&2; exit 1; }
    # the policy is really decided: /admin is denied, no token is refused
    local c_admin c_anon
    c_admin=$(status "http://127.0.0.1:$ph/admin/x" "${h[@]}")
    c_anon=$(status "${url[$name-$w-http]}" -H "Host: static.localhost")
    [ "$c_admin" = 403 ] && [ "$c_anon" != 200 ] ||
        echo "warning: $name answered $c_admin to GET /admin/x (want 403) and $c_anon without a token" >&2
    serving[$name-$w-http]=$(role_pids "${cloister_pids[-1]}")
    serving[$name-$w-tls]=${serving[$name-$w-http]}
}
cloisters=()
declare -A renew
# renew_tokens: each Cloister instance's access token exchanged again (a
# token lasts 15 minutes; a run of many rounds lasts longer)
renew_tokens() {
    local k
    for k in "${!renew[@]}"; do
        # shellcheck disable=SC2086 # URL, CA and credential, split on purpose
        printf -v "token_${k%-*}_${k##*-}" %s "$(proxy_bench_token ${renew[$k]})"
    done
}
if [ -z "$cl_skip" ]; then
    cloisters+=(cloister)
    for w in 1 2; do cloister_start cloister "$build" "$w"; done
    if [ -n "${BASELINE:-}" ]; then
        baseline_skip=$(cloister_usable "$BASELINE") || true
        if [ -z "$baseline_skip" ]; then
            cloisters+=(baseline)
            for w in 1 2; do cloister_start baseline "$BASELINE" "$w"; done
        else
            echo "baseline not measured: $baseline_skip" >&2
        fi
    fi
else
    # a stand-in as long as a real access token (an ES256 JWT, 434 characters)
    token_cloister_1=$(head -c 400 /dev/urandom | base64 -w0 | tr '+/' '-_' | head -c 434)
fi
# every configuration gets the same request bytes: the peers ignore the token
# (they get Cloister's); each Cloister instance gets the token it issued (the
# same length and claims)
headers_for() { # ID: the -H arguments of wrk/curl for configuration ID
    local name=${1%-*-*} w=${1%-*}
    w=${w##*-}
    local t=token_cloister_1
    case $name in cloister | baseline) t="token_${name}_$w" ;; esac
    printf '%s\n' -H "Host: static.localhost" -H "Authorization: Bearer ${!t}"
}

# the peers are what they say: the file arrives, auth_request refuses without Authorization
for id in "${!url[@]}"; do
    [[ $id == cloister-* || $id == baseline-* ]] && continue
    mapfile -t h < <(headers_for "$id")
    got=$(curl -sk -o /dev/null -w '%{http_code} %{size_download}' "${h[@]}" "${url[$id]}")
    [ "$got" = "200 612" ] || { echo "$id: ${url[$id]} answered '$got', not '200 612'" >&2; exit 1; }
done
[ "$(status "${url[nginx-auth-1-http]}" -H "Host: static.localhost")" = 401 ] ||
    { echo "nginx: auth_request lets a request without Authorization through" >&2; exit 1; }

# ---- throughput, latency and CPU ----------------------------------------------
# cpu_ticks "role=pid ...": "role=ticks ..." (utime + stime of each process, all its threads)
cpu_ticks() {
    local rp out=""
    for rp in $1; do
        out+=" ${rp%%=*}=$(awk '{print $14 + $15}' "/proc/${rp#*=}/stat" 2>/dev/null || echo 0)"
    done
    echo "$out"
}
# measure ID ROUND: a 1 s warm-up, then DURATION seconds into $work/ID.ROUND.txt,
# with the serving processes' CPU ticks before and after in $work/ID.ROUND.cpu
measure() {
    local threads=1 h
    [[ $1 == *-2-* ]] && threads=2
    mapfile -t h < <(headers_for "$1")
    wrk -t"$threads" -c50 -d1s "${h[@]}" "${url[$1]}" >/dev/null
    cpu_ticks "${serving[$1]}" >"$work/$1.$2.cpu"
    wrk -t"$threads" -c50 -d"${secs}s" --latency "${h[@]}" "${url[$1]}" >"$work/$1.$2.txt"
    cpu_ticks "${serving[$1]}" >>"$work/$1.$2.cpu"
}
peers=(nginx nginx-log haproxy nginx-auth "${cloisters[@]}")
ids=()
for w in 1 2; do for p in http tls; do for c in "${peers[@]}"; do ids+=("$c-$w-$p"); done; done; done
echo "== wrk -c50 keep-alive (-t1 at 1 worker, -t2 at 2), 1 s warm-up + ${secs}s each, $rounds interleaved rounds, medians"
echo "   upstream: nginx (2 workers), a static 612-byte file; $(nproc) cores, the clients and servers share them"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other load on the machine skews all rows)"
# what each TLS listener negotiates with the OpenSSL wrk uses: the rows compare like with like
negotiated() { openssl s_client -connect "$1" -servername static.localhost </dev/null 2>/dev/null | sed -n 's/^New, \(.*\), Cipher is \(.*\)/\1 \2/p'; }
tls_seen=""
for c in "${peers[@]}"; do
    hp=${url[$c-1-tls]#https://}
    tls_seen+="$c $(negotiated "${hp%%/*}"); "
done
echo "   TLS negotiated: ${tls_seen%; }"
for r in $(seq 1 "$rounds"); do
    echo "   round $r of $rounds: ${#ids[@]} configurations"
    renew_tokens
    for id in "${ids[@]}"; do measure "$id" "$r"; done
done

# ---- syscalls per request (1 worker) ------------------------------------------
# strace_run ID: syscalls per request while wrk runs 3 s against ID, strace -c -f
# attached to the serving processes (for Cloister, the proxy role: the others
# are counted in its CPU table, not here); prints "ID calls requests"
strace_run() {
    local pids=() rp h
    for rp in ${serving[$1]}; do
        case ${rp%%=*} in nginx | haproxy | proxy) pids+=(-p "${rp#*=}") ;; esac
    done
    mapfile -t h < <(headers_for "$1")
    strace -f -c -o "$work/$1.strace" "${pids[@]}" 2>/dev/null &
    local sp=$!
    sleep 0.5 # strace attaches asynchronously; a request made before it counts nowhere
    wrk -t1 -c50 -d3s "${h[@]}" "${url[$1]}" >"$work/$1.strace-wrk.txt"
    kill -INT "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    echo "$1 $(awk '$NF == "total" {print $4}' "$work/$1.strace") \
$(awk '/requests in/ {print $1}' "$work/$1.strace-wrk.txt")"
}
: >"$work/syscalls.txt"
renew_tokens
for c in "${peers[@]}"; do
    for p in http tls; do strace_run "$c-1-$p" >>"$work/syscalls.txt"; done
done

# ---- the report ---------------------------------------------------------------
echo
report=$($py - "$work" "$rounds" "$(getconf CLK_TCK)" "${ids[@]}" <<'EOF'
import re, statistics, sys
work, rounds, hz, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
label = {"nginx": "nginx proxy_pass, no auth", "nginx-log": "nginx proxy_pass + access_log",
         "haproxy": "HAProxy, no auth",
         "nginx-auth": "nginx auth_request (204 auth)", "cloister": "cloister: token + 10 rules + log",
         "baseline": "baseline build: the same"}
baseline = any(i.startswith("baseline-") for i in ids)

def us(v):  # a wrk latency ("1.23ms") in microseconds
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", v)
    return float(m[1]) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m[2]]

res = {}
for i in ids:
    runs = []
    for r in range(1, rounds + 1):
        t = open(f"{work}/{i}.{r}.txt").read()
        lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M))
        reqs = int(re.search(r"(\d+) requests in", t)[1])
        cpu = {}  # role -> ticks over the run (several nginx workers share a name: summed)
        before, after = open(f"{work}/{i}.{r}.cpu").read().splitlines()
        for sign, line in ((-1, before), (1, after)):
            for kv in line.split():
                k, v = kv.split("=")
                cpu[k] = cpu.get(k, 0) + sign * int(v)
        runs.append({"rate": float(re.search(r"Requests/sec:\s+([0-9.]+)", t)[1]), "p50": us(lat["50"]),
                     "p99": us(lat["99"]), "bad": bool(re.search(r"Non-2xx|Socket errors", t)),
                     "cpu": {k: v * 1e6 / hz / reqs for k, v in cpu.items()}})
    med = lambda f: statistics.median(x[f] for x in runs)
    roles = runs[0]["cpu"].keys()
    res[i] = {"rate": med("rate"), "p50": med("p50"), "p99": med("p99"), "bad": any(x["bad"] for x in runs),
              "cpu": {k: statistics.median(x["cpu"][k] for x in runs) for k in roles},
              "rates": [x["rate"] for x in runs]}

print("%-7s %-5s %-34s %9s %9s %9s %10s   %s" % ("workers", "proto", "configuration", "req/s", "p50 ms", "p99 ms",
                                                 "CPU us/req", "req/s per round"))
for i in ids:
    c, w, p = i.rsplit("-", 2)
    x = res[i]
    print("%-7s %-5s %-34s %9.0f %9.2f %9.2f %10.1f   %s" % (w, p, label[c] + ("!" if x["bad"] else ""), x["rate"],
          x["p50"] / 1e3, x["p99"] / 1e3, sum(x["cpu"].values()), " ".join("%.0f" % v for v in x["rates"])))

summary = []
if any(i.startswith("cloister-") for i in ids):
    print()
    print("%-7s %-5s %12s %12s %12s %12s %12s %12s" % ("workers", "proto", "/proxy_pass", "/faster peer",
                                                       "/auth_req", "/nginx+log", "p99/nginx", "p99/faster") + (
                                                       "  %12s %12s" % (
                                                  "/baseline", "CPU/baseline") if baseline else ""))
    for w in "12":
        for p in ("http", "tls"):
            cl, ng, hp, au, nl = (res[f"{c}-{w}-{p}"] for c in ("cloister", "nginx", "haproxy", "nginx-auth",
                                                                  "nginx-log"))
            faster = ng if ng["rate"] >= hp["rate"] else hp
            r = (cl["rate"] / ng["rate"], cl["rate"] / faster["rate"], cl["rate"] / au["rate"],
                 cl["rate"] / nl["rate"], cl["p99"] / ng["p99"], cl["p99"] / faster["p99"])
            extra = ""
            if baseline:
                b = res[f"baseline-{w}-{p}"]
                extra = "  %12.2f %12.2f" % (cl["rate"] / b["rate"], sum(cl["cpu"].values()) / sum(b["cpu"].values()))
            print("%-7s %-5s %12.2f %12.2f %12.2f %12.2f %12.2f %12.2f" % ((w, p) + r) + extra)
            summary.append("%sw %s %.2f/%.2f p99 %.2f" % (w, p, r[0], r[1], r[4]))
    print("targets: req/s / nginx proxy_pass >= 1.0 and p99 / nginx <= 1.2 at 1 worker (must);"
          " / the faster of nginx and HAProxy >= 1.0 at 1 and 2 workers (aim)")
    print()
    print("CPU us per request, each Cloister role (medians)")
    roles = ["proxy", "api", "audit", "kms", "runner", "cloisterd"]
    print("%-9s %-7s %-5s " % ("build", "workers", "proto") + " ".join("%9s" % r for r in roles) + " %9s" % "total")
    for c in ("cloister", "baseline") if baseline else ("cloister",):
        for w in "12":
            for p in ("http", "tls"):
                cpu = res[f"{c}-{w}-{p}"]["cpu"]
                print("%-9s %-7s %-5s " % (c, w, p) + " ".join("%9.1f" % cpu.get(r, 0) for r in roles) +
                      " %9.1f" % sum(cpu.values()))

print()
print("syscalls per request at 1 worker (strace -c -f on the serving processes; Cloister: its proxy role)")
for line in open(f"{work}/syscalls.txt"):
    f = line.split()
    if len(f) == 3 and f[1] and f[2] and int(f[2]) > 0:
        print("  %-40s %6.1f  (%s calls, %s requests)" % (f[0], int(f[1]) / int(f[2]), f[1], f[2]))
    else:
        print("  %-40s n/a (strace or wrk gave no figure)" % f[0])
print("SUMMARYLINE " + "; ".join(summary))
EOF
)
echo "$report" | grep -v '^SUMMARYLINE '
summary=$(echo "$report" | sed -n 's/^SUMMARYLINE //p')

# ---- memory per idle keep-alive connection ------------------------------------
# idle ID LABEL PID PORT TOKEN: opens $idle_conns idle connections to PORT, prints
# what PID's RSS did (and keeps the figures in $work/idle-ID.json)
idle() {
    local out
    out=$($py bench/proxy/idle-conns.py 127.0.0.1 "$4" "$idle_conns" "$3" /index.html \
        "Host: static.localhost" "Authorization: Bearer $5")
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
idle nginx "nginx proxy_pass (worker $nginx1_worker)" "$nginx1_worker" "$nginx1_http" "$token_cloister_1"
if [ -z "$cl_skip" ]; then
    proxy_pid=""
    for rp in ${serving[cloister-1-http]}; do [ "${rp%%=*}" = proxy ] && proxy_pid=${rp#*=}; done
    if [ -n "$proxy_pid" ]; then
        cloister1_http=${url[cloister-1-http]#http://127.0.0.1:}
        idle cloister "cloister proxy role (pid $proxy_pid)" "$proxy_pid" "${cloister1_http%%/*}" "$token_cloister_1"
        echo "(target for cloister: <= 8 KiB per connection)"
        summary+="; KiB per idle connection $(kib cloister) (aim <= 8; nginx $(kib nginx))"
    else
        echo "cloister: no role process of cloisterd is named proxy; idle connections not measured"
    fi
else
    echo "cloister: skipped ($cl_skip)"
fi

echo
if [ -z "$cl_skip" ]; then
    echo "SUMMARY cloister / nginx proxy_pass / the faster peer, req/s: $summary"
else
    echo "SUMMARY cloister: $cl_skip; peers measured (table above); nginx idle KiB/conn $(kib nginx)"
fi
[ -z "$cl_failed" ]
