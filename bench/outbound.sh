#!/usr/bin/env bash
# What a plugin's outbound call costs, against nginx's `auth_request` doing the same
# work (a subrequest to an auth service, then the request proxied), side by side:
#
#   bench/outbound.sh [BINARY]             # 3 alternating rounds x 5 s, 64 connections
#
# Rows (every proxy one worker pinned to CPU 1; wrk and the nginx origin, which answers
# both `/auth` and the app, share CPU 0; no access logs):
#   nginx-plain  nginx as a plain reverse proxy
#   nginx-auth   nginx with `auth_request` to the origin's `/auth`
#   plain        Sluice, a route without plugins
#   call-fresh   Sluice, the outbound-call fixture: GET /auth on the `auth` upstream,
#                a 2xx lets the request on to the app; fresh instances
#   call-reuse   the same, reused instances
#   fauth-fresh  Sluice, the forward-auth plugin (plugins/): GET /auth with the
#                request's Authorization and Cookie and X-Forwarded-*; fresh instances
#   fauth-reuse  the same, reused instances
# Prints median req/s, p99, CPU µs per request (user + system of the proxy process) and
# the ratio to the plain row.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin=$(realpath "${1:-$root/target/release/sluice}")
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}
BASE_PORT=${BASE_PORT:-19480}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
[ -f "$root/target/fixtures/outbound-call.wasm" ] || "$root/scripts/build-guests.sh" fixtures >/dev/null
[ -f "$root/target/plugins/forward-auth.wasm" ] || "$root/scripts/build-guests.sh" plugins >/dev/null

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; port=$((BASE_PORT+1))

nginx_conf origin "server { listen 127.0.0.1:$origin; location = /auth { return 204; } location / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &
declare -A row_port row_pid
rows="nginx-plain nginx-auth plain call-fresh call-reuse fauth-fresh fauth-reuse"
upstream="upstream origin { server 127.0.0.1:$origin; keepalive 256; }"
pass="proxy_http_version 1.1; proxy_set_header Connection \"\";"
nginx_conf nginx-plain "$upstream server { listen 127.0.0.1:$port; location / { proxy_pass http://origin; $pass } }"
row_port[nginx-plain]=$port; port=$((port+1))
taskset -c "$PROXY_CPU" nginx -c "$run/nginx-plain.conf" & row_pid[nginx-plain]=$!
nginx_conf nginx-auth "$upstream server { listen 127.0.0.1:$port;
  location / { auth_request /_auth; proxy_pass http://origin; $pass }
  location = /_auth { internal; proxy_pass http://origin/auth; $pass proxy_pass_request_body off; proxy_set_header Content-Length \"\"; } }"
row_port[nginx-auth]=$port; port=$((port+1))
taskset -c "$PROXY_CPU" nginx -c "$run/nginx-auth.conf" & row_pid[nginx-auth]=$!

# sluice_row NAME INSTANCE PLUGIN_TOML
sluice_row() {
  mkdir -p "$run/$1-plugins"
  cp "$root/target/fixtures/outbound-call.wasm" "$root/target/plugins/forward-auth.wasm" "$run/$1-plugins/"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[plugins]\ndir = "%s/%s-plugins"\ncache_dir = "%s/cache"\ninstance = "%s"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[upstreams.auth]\nservers = ["127.0.0.1:%s"]\n[[routes]]\nname = "api"\npath = "/"\nupstream = "app"\n%s\n' \
    "$port" "$run" "$1" "$run" "$2" "$origin" "$origin" "$3" >"$run/$1.toml"
  taskset -c "$PROXY_CPU" "$bin" run --config "$run/$1.toml" 2>>"$run/$1.err" &
  row_pid[$1]=$!; row_port[$1]=$port; port=$((port+1))
}
call='[[routes.plugins]]
name = "outbound-call"
config = { upstream = "auth", pass_on_2xx = true }
outbound = ["auth"]'
sluice_row plain fresh ""
sluice_row call-fresh fresh "$call"
sluice_row call-reuse reuse "$call"
fauth='[[routes.plugins]]
name = "forward-auth"
config = { upstream = "auth", path = "/auth", method = "GET" }
outbound = ["auth"]'
sluice_row fauth-fresh fresh "$fauth"
sluice_row fauth-reuse reuse "$fauth"

for r in $rows; do
  for _ in $(seq 200); do
    curl -sf -o /dev/null -H 'x-call-path: /auth' "http://127.0.0.1:${row_port[$r]}/" && break; sleep 0.1
  done
done
printf 'wrk.headers["x-call-path"] = "/auth"\nwrk.headers["authorization"] = "Bearer t-1"\n' >"$run/auth.lua"

declare -A rps p99 cpu
measure_rounds -s "$run/auth.lua"
print_rows plain
echo "binary = $bin"
