#!/bin/sh
# make-bundle.sh EXE YAML DIR STAMP: makes the engine's bundle DIR (cloister-job
# and enclave.yaml) with fixed modes, since modes are part of its measurement.
set -eu
rm -rf "$3.new"
mkdir -p "$3.new"
cp "$1" "$3.new/cloister-job"
cp "$2" "$3.new/enclave.yaml"
chmod 0755 "$3.new" "$3.new/cloister-job"
chmod 0644 "$3.new/enclave.yaml"
rm -rf "$3"
mv "$3.new" "$3"
touch "$4"
