#!/usr/bin/env bash
# The run command: installs what is missing, builds, serves the demo wiki
# (examples/wiki) on 127.0.0.1:9000, starts `cloisterd --dev`, logs the CLI in
# as the bootstrap admin, applies examples/quickstart.yaml, sends one request
# as alice through the identity-aware proxy, and stays in the foreground until
# Ctrl-C (which stops cloisterd and the wiki cleanly).
# Environment: CLOISTER_DATA_DIR (default ./cloister-data, or
#              /var/lib/cloister-dev for root when the checkout is not open to
#              the roles' users, e.g. under /root),
#              CLOISTER_API_LISTEN (default 127.0.0.1:7443),
#              CLOISTER_PROXY_LISTEN (default 127.0.0.1:8443).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/setup.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null

# Started as root, each role runs as its own system user and must be able to
# pass through every folder above the data dir: a checkout under /root (0700)
# keeps its data in /var/lib/cloister-dev instead.
traversable() { # DIR: whether every folder from / down to DIR lets others through
    local d=$1
    while [ "$d" != / ]; do
        [ "$(( 0$(stat -c %a "$d") & 01 ))" -ne 0 ] || return 1
        d=$(dirname "$d")
    done
}
default_data=$top/cloister-data
if [ "$(id -u)" = 0 ] && ! traversable "$top"; then
    default_data=/var/lib/cloister-dev
    echo "note: $top is not open to the roles' users; keeping the data in $default_data"
fi
data=${CLOISTER_DATA_DIR:-$default_data}
listen=${CLOISTER_API_LISTEN:-127.0.0.1:7443}
proxy=${CLOISTER_PROXY_LISTEN:-127.0.0.1:8443}
# the demo upstream the quickstart's Service points at
wiki_pid=
if /usr/bin/python3 -m http.server 9000 --bind 127.0.0.1 --directory "$top/examples/wiki" >/dev/null 2>&1 &
then wiki_pid=$!; fi
build/src/daemon/cloisterd --dev --data-dir "$data" --api-listen "$listen" --proxy-listen "$proxy" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; [ -z "$wiki_pid" ] || kill $wiki_pid 2>/dev/null; wait $pid; exit $?' INT TERM

for _ in $(seq 1 100); do
    if [ -f "$data/ca.pem" ] && curl -fsS --cacert "$data/ca.pem" "https://$listen/readyz" >/dev/null 2>&1; then
        break
    fi
    kill -0 $pid 2>/dev/null || { echo "cloisterd failed to start" >&2; exit 1; }
    sleep 0.1
done

cli="$top/build/src/cli/cloister"
"$cli" --server "https://$listen" --ca "$data/ca.pem" login --token "$(cat "$data/admin.token")"
"$cli" apply -f examples/quickstart.yaml

# alice logs in with her credential token and reaches the wiki through the proxy
alice_token=$("$cli" token create alice-cli -o json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
access=$(curl -fsS --cacert "$data/ca.pem" -X POST "https://$listen/v1/auth/token" -d "{\"token\":\"$alice_token\"}" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
echo "$access" >"$data/alice.access" && chmod 600 "$data/alice.access"
for _ in $(seq 1 50); do # the proxy receives the quickstart from the API's stream
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$data/ca.pem" -H "Host: wiki.localhost" \
        -H "Authorization: Bearer $access" "https://$proxy/") || true
    [ "$code" = 200 ] && break
    sleep 0.1
done
echo "GET https://wiki.localhost/ as alice through the proxy: $code"
echo "GET https://wiki.localhost/admin/ as alice through the proxy: $(curl -s -o /dev/null -w '%{http_code}' \
    --cacert "$data/ca.pem" -H "Host: wiki.localhost" -H "Authorization: Bearer $access" "https://$proxy/admin/")"

cat <<MSG

Cloister is running (development mode, data in $data).
The CLI is logged in as admin; try:
  $cli whoami
  $cli get services
  $cli get policy devs-read -o yaml
  curl --cacert $data/ca.pem -H "Authorization: Bearer \$(cat $data/admin.token)" https://$listen/v1/users
The wiki behind the proxy, as alice (allowed) and without a token (refused):
  curl --cacert $data/ca.pem -H "Host: wiki.localhost" \\
       -H "Authorization: Bearer \$(cat $data/alice.access)" https://${proxy}/
  curl --cacert $data/ca.pem -H "Host: wiki.localhost" https://${proxy}/
Press Ctrl-C to stop.
MSG
wait $pid
