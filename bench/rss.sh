#!/usr/bin/env bash
# Memory under concurrency: RSS of the proxy while CONNS requests are in flight at once
# (each waits SLOW_MS at the origin), for the plain proxy and for the three-plugin
# quickstart chain in fresh and reuse mode, measured in one run.
#
#   bench/rss.sh                     # 1000 connections, 10 s, origin answers after 100 ms
#   CONNS=2000 DURATION=20 bench/rss.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS=${CONNS:-1000}; DURATION=${DURATION:-10}; SLOW_MS=${SLOW_MS:-100}; BASE_PORT=${BASE_PORT:-19180}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
"$root/scripts/build-guests.sh" plugins >/dev/null
cargo build --release -q -p sluice -p echo-origin --manifest-path "$root/Cargo.toml"
SLUICE=${SLUICE:-$root/target/release/sluice}
ulimit -n 65536 2>/dev/null || true

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
"$root/target/release/echo-origin" "127.0.0.1:$BASE_PORT=origin" >/dev/null 2>&1 &
mkdir -p "$run/plugins"; cp "$root"/target/plugins/{api-key,rewrite,router}.wasm "$run/plugins/"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
measure() { # name port mode with_chain
  local name=$1 port=$2
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\naccess_log = false\nmax_connections = 20000\n' "$port"
    printf '[plugins]\ndir = "%s"\ninstance = "%s"\nmax_instances = %s\n' "$run/plugins" "$3" $((CONNS * 3))
    printf '[upstreams.app]\nservers = ["127.0.0.1:%s"]\nmax_idle_per_server = %s\n' "$BASE_PORT" "$CONNS"
    printf '[upstreams.canary]\nservers = ["127.0.0.1:%s"]\n' "$BASE_PORT"
    printf '[[routes]]\npath = "/"\nupstream = "app"\n'
    if [ "$4" = 1 ]; then cat <<'TOML'
[[routes]]
path = "/api/"
upstream = "app"
  [[routes.plugins]]
  name = "api-key"
  config = { keys = ["k-123"], header = "x-api-key" }
  [[routes.plugins]]
  name = "rewrite"
  config = { strip_prefix = "/api", set_request_headers = { "x-tenant" = "acme" }, set_response_headers = { "x-served-by" = "sluice" } }
  [[routes.plugins]]
  name = "router"
  config = { rules = [ { header = "x-canary", equals = "1", upstream = "canary" } ] }
TOML
    fi
  } > "$run/$name.toml"
  "$SLUICE" run --config "$run/$name.toml" 2>"$run/$name.log" &
  local pid=$!
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  local path="/slow?ms=$SLOW_MS"; [ "$4" = 1 ] && path="/api/slow?ms=$SLOW_MS"
  local idle; idle=$(rss_kib $pid)
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s -H 'x-api-key: k-123' "http://127.0.0.1:$port$path" > "$run/$name.wrk" &
  local wrk_pid=$! peak=0 r
  while kill -0 $wrk_pid 2>/dev/null; do
    r=$(rss_kib $pid); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.25
  done
  sleep 1
  local after; after=$(rss_kib $pid)
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' "$run/$name.wrk")
  local errs; errs=$(awk '/Non-2xx|Socket errors/ {gsub(/^ +/, ""); s=s $0 "; "} END {print (s==""?"none":s)}' "$run/$name.wrk")
  printf '%-12s %10s %10s %10s %10s  %s\n' "$name" "$((idle / 1024))" "$((peak / 1024))" "$((after / 1024))" "$rps" "$errs"
  kill $pid; wait $pid 2>/dev/null || true
}
printf '%-12s %10s %10s %10s %10s  %s\n' target idle_MiB peak_MiB after_MiB rps errors
measure plain $((BASE_PORT + 1)) fresh 0
measure chain-fresh $((BASE_PORT + 2)) fresh 1
measure chain-reuse $((BASE_PORT + 3)) reuse 1
