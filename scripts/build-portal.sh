#!/bin/sh
# Builds the portal web app (portal/) into OUT: installs its npm packages
# exactly as package-lock.json pins them (npm ci, only when they changed),
# then bundles it with esbuild (portal/build.mjs). Used by meson; by hand:
#   scripts/build-portal.sh portal build/portal
set -eu
src=$(cd "$1" && pwd)
out=$2
stamp=$src/node_modules/.cloister-installed-lock   # the lock file node_modules was installed from
if ! cmp -s "$src/package-lock.json" "$stamp" 2>/dev/null; then
    (cd "$src" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$src/package-lock.json" "$stamp"
fi
node "$src/build.mjs" "$out"
