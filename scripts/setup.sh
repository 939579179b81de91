#!/usr/bin/env bash
# Installs every Debian package listed in scripts/debian-packages.txt that is
# not installed yet and, run as root, creates the roles' system users
# (cloister-api, -proxy, -kms, -audit, -runner: no home, no login shell),
# which cloisterd started as root otherwise creates on its first start. Debian's
# prometheus and haproxy services are stopped and disabled (tests and benchmarks
# run their own).
# Idempotent: with everything present it changes nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# a line "a | b" is met by any one of them installed; otherwise a is installed
mapfile -t wanted < <(grep -vE '^\s*(#|$)' "$here/debian-packages.txt")
missing=()
for line in "${wanted[@]}"; do
    met=
    IFS='|' read -ra alternatives <<<"$line"
    for p in "${alternatives[@]}"; do
        p=$(echo $p)
        installed "$p" && met=1
    done
    [ -n "$met" ] || missing+=("$(echo ${alternatives[0]})")
done

if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm: NodeSource's nodejs package carries it (and conflicts with Debian's npm
# package); Debian's own nodejs does not, so then Debian's npm is installed.
if ! command -v npm >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends npm
fi

# Debian's prometheus and haproxy packages enable a service (prometheus on :9090);
# the tests and benchmarks start their own instances (loopback, free ports, their
# own files), so the packaged ones stay off.
for service in prometheus haproxy; do
    installed "$service" || continue
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$service" ]; then
        $sudo "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        $sudo update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done

if [ "$(id -u)" -eq 0 ]; then
    for role in api proxy kms audit runner; do
        getent passwd "cloister-$role" >/dev/null && continue
        echo "setup: creating system user cloister-$role" >&2
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            "cloister-$role"
    done
fi
