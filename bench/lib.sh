# Shared by the benchmarks (source it from bench/<name>/run.sh).
#
# bench_build DIR TARGET...
#     installs what is missing, configures DIR as a release build when it is
#     not one yet, and builds TARGET...
# bench_start_cloisterd BUILD [cloisterd arguments...]
#     starts BUILD's cloisterd --dev on a free loopback port in a fresh data
#     dir under $TMPDIR (short: role sockets live there, and a Unix socket
#     path has at most 107 bytes) and waits until it is healthy. Sets BENCH_WORK (the temp
#     dir), BENCH_DATA, BENCH_URL, BENCH_CA, and exports CLOISTER_TOKEN (the
#     bootstrap admin). On exit it stops cloisterd and removes BENCH_WORK
#     unless BENCH_KEEP is set.
# bench_pause_cloisterd / bench_resume_cloisterd
#     stops cloisterd keeping its data dir (for a bench that runs a role's own
#     code on the role's files, as a process of its own role table), then
#     starts it again on that data dir with the same URL and arguments.
# bench_nginx_start WORK SERVERS
#     starts nginx in the background (one worker, no access log, its pid, logs
#     and temp files under WORK) serving the server blocks SERVERS (nginx
#     text); sets bench_nginx_pid. The caller stops it.
# bench_sqlite3_durable_inserts DIR N
#     prints sqlite3's rate (inserts/s) when each of N inserts is its own
#     durable transaction (WAL, synchronous=FULL) on the disk holding DIR: what
#     a store without group commit could do at best.

bench_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_build() {
    local dir=$1
    shift
    "$bench_top/scripts/setup.sh"
    [ -f "$dir/build.ninja" ] || meson setup "$dir" --buildtype=release >/dev/null
    ninja -C "$dir" "$@" >/dev/null
}

bench_stop_cloisterd() {
    if [ -n "${bench_pid:-}" ]; then
        kill -TERM "$bench_pid" 2>/dev/null
        wait "$bench_pid" 2>/dev/null
    fi
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$BENCH_WORK"
}

bench_start_cloisterd() {
    bench_cloisterd_build=$1
    shift
    bench_cloisterd_args=("$@")
    BENCH_WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloister-bench.XXXXXX")
    chmod 711 "$BENCH_WORK" # started as root, the roles' own users pass through it to the data dir
    BENCH_DATA="$BENCH_WORK/data"
    local port=$((20000 + RANDOM % 20000))
    BENCH_URL="https://127.0.0.1:$port"
    BENCH_CA="$BENCH_DATA/ca.pem"
    trap bench_stop_cloisterd EXIT
    bench_resume_cloisterd
}

bench_pause_cloisterd() {
    kill -TERM "$bench_pid" 2>/dev/null
    wait "$bench_pid" 2>/dev/null || true
    bench_pid=
}

bench_resume_cloisterd() {
    "$bench_cloisterd_build/src/daemon/cloisterd" --dev --data-dir "$BENCH_DATA" --api-listen "${BENCH_URL#https://}" \
        ${bench_cloisterd_args[@]+"${bench_cloisterd_args[@]}"} >>"$BENCH_WORK/cloisterd.log" 2>&1 &
    bench_pid=$!
    local _ code
    for _ in $(seq 1 300); do
        code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$BENCH_CA" "$BENCH_URL/readyz" 2>/dev/null) || true
        [ "$code" = 200 ] && break
        # a build older than /readyz (a baseline): its /healthz meant ready
        [ "$code" = 404 ] && curl -fsS --cacert "$BENCH_CA" "$BENCH_URL/healthz" >/dev/null 2>&1 && break
        kill -0 "$bench_pid" 2>/dev/null || { cat "$BENCH_WORK/cloisterd.log" >&2; return 1; }
        sleep 0.1
    done
    CLOISTER_TOKEN=$(cat "$BENCH_DATA/admin.token")
    export CLOISTER_TOKEN
}

bench_nginx_start() {
    local work=$1 servers=$2
    mkdir -p "$work/tmp"
    cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    keepalive_requests 100000000;
$servers
}
EOF
    nginx -e "$work/nginx-error.log" -p "$work" -c "$work/nginx.conf" &
    bench_nginx_pid=$!
}

bench_sqlite3_durable_inserts() {
    local dir=$1 n=$2 i
    {
        echo "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
        echo "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);"
        for i in $(seq 1 "$n"); do echo "INSERT INTO t VALUES ($i, '{\"spec\":{}}');"; done
    } >"$dir/ref.sql"
    local start end
    start=$(date +%s.%N)
    sqlite3 "$dir/ref.db" <"$dir/ref.sql" >/dev/null
    end=$(date +%s.%N)
    echo "$n / ($end - $start)" | bc -l
}
