#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests (Debian's postgresql package).
#   pg-test.sh start [--tcp] initdb a new cluster in a new temp dir (as the postgres
#                           user when run as root: initdb refuses root), listening
#                           only on a Unix socket in that dir; prints its URL,
#                           postgresql:///cloister?host=DIR&user=cloister
#                           (role cloister may create databases). With --tcp it
#                           listens on a free loopback port instead (as replicas
#                           on other machines would reach it):
#                           postgresql:///cloister?host=127.0.0.1&port=N&user=cloister
#   pg-test.sh stop URL     stops that cluster and removes its dir.
#   pg-test.sh run CMD…     runs CMD with CLOISTER_TEST_POSTGRES_URL set (to the
#                           cluster it starts, or the one already in that variable);
#                           if no PostgreSQL can be started, runs CMD without it
#                           (the tests then skip, saying why).
set -euo pipefail

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] && [ -x "$d/initdb" ] || { echo "pg-test: no PostgreSQL server (apt install postgresql)" >&2; return 1; }
    echo "$d"
}

as_pg() { # runs "$@" as the cluster's owner
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local bin dir listen="''" host port=5432
    bin=$(bindir) || return 1
    dir=$(mktemp -d /tmp/cloister-pg-XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    host=$dir
    if [ "${1:-}" = --tcp ]; then
        port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        listen=127.0.0.1
        host=127.0.0.1
    fi
    echo "$port" >"$dir/port"
    if ! as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
        ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=$listen -p $port -k $dir -c max_connections=200 -c fsync=on" start >/dev/null; then
        echo "pg-test: cannot start PostgreSQL in $dir:" >&2
        cat "$dir/initdb.log" "$dir/server.log" >&2 2>/dev/null || true
        rm -rf "$dir"
        return 1
    fi
    as_pg "$bin/psql" -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE cloister LOGIN CREATEDB" -c "CREATE DATABASE cloister OWNER cloister" >/dev/null
    if [ "$host" = "$dir" ]; then
        echo "postgresql:///cloister?host=$dir&user=cloister"
    else
        echo "postgresql:///cloister?host=$host&port=$port&user=cloister"
    fi
}

stop() {
    local url=$1 dir bin port
    dir=${url#*host=}
    dir=${dir%%&*}
    if [ "$dir" = 127.0.0.1 ]; then # a --tcp cluster: the dir that holds its port
        port=${url#*port=}
        port=${port%%&*}
        dir=$(grep -lx -- "$port" /tmp/cloister-pg-*/port 2>/dev/null | head -1)
        dir=${dir%/port}
    fi
    case "$dir" in /tmp/cloister-pg-*) ;; *) echo "pg-test: not a cluster of pg-test.sh: $url" >&2; return 1 ;; esac
    bin=$(bindir) || return 1
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) stop "${2:?usage: pg-test.sh stop URL}" ;;
run)
    shift
    if [ -n "${CLOISTER_TEST_POSTGRES_URL:-}" ]; then exec "$@"; fi
    if url=$(start); then
        rc=0
        CLOISTER_TEST_POSTGRES_URL=$url "$@" || rc=$?
        stop "$url"
        exit $rc
    fi
    exec "$@"
    ;;
*) echo "usage: pg-test.sh start | stop URL | run CMD..." >&2; exit 2 ;;
esac
