#!/usr/bin/env bash
# Builds the plugins, the proxy and the demo origin, then runs the quickstart:
# the proxy on 127.0.0.1:8080 in front of demo origins on 9001-9003.
# Safe to run again. Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/build-guests.sh" plugins
cargo build --release -p sluice -p echo-origin

site="$root/examples/quickstart"
mkdir -p "$site/plugins"
for name in api-key rate-limit rewrite router; do
  cp "$root/target/plugins/$name.wasm" "$site/plugins/.$name.wasm.tmp"
  mv "$site/plugins/.$name.wasm.tmp" "$site/plugins/$name.wasm"
done

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
"$root/target/release/echo-origin" 127.0.0.1:9001=app-1 127.0.0.1:9002=app-2 127.0.0.1:9003=canary &
pids+=($!)

cat <<'MSG'

Sluice quickstart on http://127.0.0.1:8080 - try:
  curl -s localhost:8080/api/users -H 'x-api-key: k-123'                 # reaches app as GET /users
  curl -si localhost:8080/api/users                                      # 401, no upstream sees it
  curl -s localhost:8080/api/users -H 'x-api-key: k-123' -H 'x-canary: 1' # reaches the canary
  curl -s localhost:8080/ -H 'Host: static.example.com'                  # round robin app-1/app-2
  curl -s --http2-prior-knowledge localhost:8080/                        # h2c on the same port
  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/limited/; done; echo  # 5 x 200, then 429

MSG
"$root/target/release/sluice" run --config "$site/sluice.toml" &
pids+=($!)
wait "${pids[1]}"
