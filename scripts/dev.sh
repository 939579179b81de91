#!/usr/bin/env bash
# The run command: installs what is missing, builds, starts `cloisterd --dev`,
# logs the CLI in as the bootstrap admin, applies examples/quickstart.yaml and
# stays in the foreground until Ctrl-C (which stops cloisterd cleanly).
# Environment: CLOISTER_DATA_DIR (default ./cloister-data),
#              CLOISTER_API_LISTEN (default 127.0.0.1:7443).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/setup.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null

data=${CLOISTER_DATA_DIR:-$top/cloister-data}
listen=${CLOISTER_API_LISTEN:-127.0.0.1:7443}
build/src/daemon/cloisterd --dev --data-dir "$data" --api-listen "$listen" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid; exit $?' INT TERM

for _ in $(seq 1 100); do
    if [ -f "$data/ca.pem" ] && curl -fsS --cacert "$data/ca.pem" "https://$listen/healthz" >/dev/null 2>&1; then
        break
    fi
    kill -0 $pid 2>/dev/null || { echo "cloisterd failed to start" >&2; exit 1; }
    sleep 0.1
done

cli="$top/build/src/cli/cloister"
"$cli" --server "https://$listen" --ca "$data/ca.pem" login --token "$(cat "$data/admin.token")"
"$cli" apply -f examples/quickstart.yaml
cat <<MSG

Cloister is running (development mode, data in $data).
The CLI is logged in as admin; try:
  $cli whoami
  $cli get services
  $cli get policy devs-read -o yaml
  curl --cacert $data/ca.pem -H "Authorization: Bearer \$(cat $data/admin.token)" https://$listen/v1/users
Press Ctrl-C to stop.
MSG
wait $pid
