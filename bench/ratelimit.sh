#!/usr/bin/env bash
# What a rate limit costs per request, side by side in one run:
#
#   bench/ratelimit.sh [BINARY]            # 3 alternating rounds x 5 s, 64 connections
#   ROUNDS=5 DURATION=8 bench/ratelimit.sh target/pgo/x86_64-unknown-linux-gnu/dist/sluice
#   ROWS="nginx-limit apikey-reuse rl-reuse" ROUNDS=9 bench/ratelimit.sh   # some rows only
#
# Rows (every proxy one worker pinned to CPU 1; wrk, the nginx origin and redis-server
# share CPU 0; no access logs; every request carries a valid x-api-key):
#   nginx        nginx as a plain reverse proxy
#   nginx-limit  the same with `limit_req` (a zone per client address, never exceeded)
#   plain        Sluice, a route without plugins
#   apikey-*     Sluice, the route with `api-key` alone, fresh and reuse instances
#   rl-*         Sluice, the route with `rate-limit` alone (memory backend), fresh and reuse
#   rl-redis     Sluice, `rate-limit` on a local redis-server, fresh instances
# The limit is never reached (a million requests per second), so every row measures
# the check, not the 429. Prints median req/s, p99, CPU µs per request (user + system of
# the proxy process) and the ratio to the nginx-limit row.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin=$(realpath "${1:-$root/target/release/sluice}")
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}
BASE_PORT=${BASE_PORT:-19280}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
command -v redis-server >/dev/null || [ -x /usr/sbin/redis-server ] || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
for p in api-key rate-limit; do
  [ -f "$root/target/plugins/$p.wasm" ] || "$root/scripts/build-guests.sh" plugins >/dev/null
done

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; redis_port=$((BASE_PORT+1)); port=$((BASE_PORT+2))

nginx_conf origin "server { listen 127.0.0.1:$origin; location / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &
taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null &

proxy_block="upstream origin { server 127.0.0.1:$origin; keepalive 256; }"
proxy_loc="proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Real-IP \$remote_addr; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
declare -A row_port row_pid
all_rows="nginx nginx-limit plain apikey-fresh apikey-reuse rl-fresh rl-reuse rl-redis"
rows=${ROWS:-$all_rows}   # the rows measured; nginx-limit is the baseline, keep it

nginx_conf nginx "$proxy_block server { listen 127.0.0.1:$port; location / { $proxy_loc } }"
nginx_conf nginx-limit "$proxy_block limit_req_zone \$binary_remote_addr zone=rl:10m rate=1000000r/s;
  server { listen 127.0.0.1:$((port+1)); location / { limit_req zone=rl burst=1000000 nodelay; $proxy_loc } }"
for r in nginx nginx-limit; do
  row_port[$r]=$port; port=$((port+1))
  taskset -c "$PROXY_CPU" nginx -c "$run/$r.conf" & row_pid[$r]=$!
done

# sluice_row NAME INSTANCE STATE PLUGIN_TOML
sluice_row() {
  mkdir -p "$run/$1-plugins"
  cp "$root/target/plugins/api-key.wasm" "$root/target/plugins/rate-limit.wasm" "$run/$1-plugins/"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n%s\n[plugins]\ndir = "%s/%s-plugins"\ncache_dir = "%s/cache"\ninstance = "%s"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\nname = "api"\npath = "/"\nupstream = "app"\n%s\n' \
    "$port" "$3" "$run" "$1" "$run" "$2" "$origin" "$4" >"$run/$1.toml"
  taskset -c "$PROXY_CPU" "$bin" run --config "$run/$1.toml" 2>>"$run/$1.err" &
  row_pid[$1]=$!; row_port[$1]=$port; port=$((port+1))
}
apikey='[[routes.plugins]]
name = "api-key"
config = { keys = ["k-123"], strip = false }'
limit='[[routes.plugins]]
name = "rate-limit"
config = { key = "ip", requests = 1000000, per_s = 1 }'
redis_state="[state]
backend = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
sluice_row plain fresh "" ""
sluice_row apikey-fresh fresh "" "$apikey"
sluice_row apikey-reuse reuse "" "$apikey"
sluice_row rl-fresh fresh "" "$limit"
sluice_row rl-reuse reuse "" "$limit"
sluice_row rl-redis fresh "$redis_state" "$limit"
for r in $all_rows; do
  for _ in $(seq 200); do
    curl -sf -o /dev/null -H 'x-api-key: k-123' "http://127.0.0.1:${row_port[$r]}/" && break; sleep 0.1
  done
done

declare -A rps p99 cpu
measure_rounds -H 'x-api-key: k-123'
print_rows nginx-limit
echo "binary = $bin"
