#!/usr/bin/env bash
# What a plugin that reads request bodies costs, side by side in one run:
#
#   bench/bodies.sh [BINARY]               # 3 alternating rounds x 5 s, 64 connections
#   ROUNDS=5 BODY_BYTES=16384 bench/bodies.sh
#
# Every request is a POST with a JSON body of BODY_BYTES (1024) bytes. Rows (every proxy
# one worker pinned to CPU 1; wrk and the nginx origin share CPU 0; no access logs):
#   nginx       nginx as a plain reverse proxy
#   plain       Sluice, a route without plugins (the body streams)
#   head-fresh  Sluice, a plugin with only `on-request` (api-key), fresh instances
#   json-fresh  Sluice, the body-check fixture: `on-request-body` parses the JSON and
#               checks a field, fresh instances
#   json-reuse  the same, reused instances
# Prints median req/s, p99, CPU µs per request (user + system of the proxy process) and
# the ratio to the plain row.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin=$(realpath "${1:-$root/target/release/sluice}")
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}; BODY_BYTES=${BODY_BYTES:-1024}
BASE_PORT=${BASE_PORT:-19380}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
[ -f "$root/target/plugins/api-key.wasm" ] || "$root/scripts/build-guests.sh" plugins >/dev/null
[ -f "$root/target/fixtures/body-check.wasm" ] || "$root/scripts/build-guests.sh" fixtures >/dev/null

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; port=$((BASE_PORT+1))

nginx_conf origin "server { listen 127.0.0.1:$origin; client_max_body_size 4m; location / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &
declare -A row_port row_pid
rows="nginx plain head-fresh json-fresh json-reuse"
nginx_conf nginx "upstream origin { server 127.0.0.1:$origin; keepalive 256; }
  server { listen 127.0.0.1:$port; client_max_body_size 4m; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
row_port[nginx]=$port; port=$((port+1))
taskset -c "$PROXY_CPU" nginx -c "$run/nginx.conf" & row_pid[nginx]=$!

# sluice_row NAME INSTANCE PLUGIN_TOML
sluice_row() {
  mkdir -p "$run/$1-plugins"
  cp "$root/target/plugins/api-key.wasm" "$root/target/fixtures/body-check.wasm" "$run/$1-plugins/"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[plugins]\ndir = "%s/%s-plugins"\ncache_dir = "%s/cache"\ninstance = "%s"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\nname = "api"\npath = "/"\nupstream = "app"\n%s\n' \
    "$port" "$run" "$1" "$run" "$2" "$origin" "$3" >"$run/$1.toml"
  taskset -c "$PROXY_CPU" "$bin" run --config "$run/$1.toml" 2>>"$run/$1.err" &
  row_pid[$1]=$!; row_port[$1]=$port; port=$((port+1))
}
apikey='[[routes.plugins]]
name = "api-key"
config = { keys = ["k-123"], strip = false }'
json='[[routes.plugins]]
name = "body-check"
config = { require_field = "user", quiet = true }'
sluice_row plain fresh ""
sluice_row head-fresh fresh "$apikey"
sluice_row json-fresh fresh "$json"
sluice_row json-reuse reuse "$json"

# A JSON object of BODY_BYTES bytes with the field the plugin checks.
pad=$((BODY_BYTES - 24)); [ "$pad" -gt 0 ] || pad=1
printf 'wrk.method = "POST"\nwrk.body = "{\\"user\\": \\"ann\\", \\"pad\\": \\"" .. string.rep("x", %d) .. "\\"}"\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["x-api-key"] = "k-123"\n' \
  "$pad" >"$run/post.lua"
body=$(printf '{"user": "ann", "pad": "%s"}' "$(head -c "$pad" /dev/zero | tr '\0' x)")
for r in $rows; do
  for _ in $(seq 200); do
    curl -sf -o /dev/null -H 'x-api-key: k-123' -H 'content-type: application/json' --data "$body" "http://127.0.0.1:${row_port[$r]}/" && break; sleep 0.1
  done
done

declare -A rps p99 cpu
measure_rounds -s "$run/post.lua"
echo "POST, JSON body of $BODY_BYTES bytes"
print_rows plain
echo "binary = $bin"
