#!/usr/bin/env bash
# setup.sh DEST -- install the FHIR R4 validator the tests use (the npm
# package `fhir`, pinned by package-lock.json) into DEST/node_modules with
# `npm ci`. Does nothing when DEST already holds this lock file's install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: setup.sh DEST}
mkdir -p "$dest"
if [ -f "$dest/node_modules/fhir/package.json" ] && cmp -s "$here/package-lock.json" "$dest/package-lock.json"; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup.sh: npm is missing (.ci/deps installs nodejs and npm)" >&2; exit 1; }
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
test -f "$dest/node_modules/fhir/package.json"
