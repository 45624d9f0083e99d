#!/usr/bin/env bash
# Builds js-auth.wasm (a Sluice plugin in JavaScript) into OUT_DIR (default: target/examples).
# Installs componentize-js (pinned in package.json) on first use.
# Usage: examples/js-plugin/build.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/examples}"
cd "$here"
command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
if [[ ! -x node_modules/.bin/componentize-js ]]; then
    npm install --silent --no-audit --no-fund
fi
mkdir -p "$out"
tmp="$(mktemp "$out/.js-auth.wasm.XXXXXX")"
# `-d http fetch-event` leaves out the wasi:http import a default build adds (the proxy
# offers plugins no network); the proxy refuses a component that imports it.
node_modules/.bin/componentize-js auth.js --wit "$repo/wit" -n plugin -d http fetch-event -o "$tmp" >/dev/null
chmod 644 "$tmp"
mv -f "$tmp" "$out/js-auth.wasm"
echo "$out/js-auth.wasm"
