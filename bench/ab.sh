#!/usr/bin/env bash
# Alternating A/B of two Sluice binaries on the plain proxy path, with nginx (buffered
# access log on) as the reference row, all in one run:
#
#   bench/ab.sh OLD_BINARY NEW_BINARY        # 6 alternating rounds x 5 s, `/` and `/16k`
#   ROUNDS=10 DURATION=8 PATHS=/ bench/ab.sh A B
#   ROUNDS_SHOWN=1 bench/ab.sh A B           # also each round's CPU per request
#   BODY_BYTES=1024 PATHS=/ bench/ab.sh A B  # POSTs with a body of that many bytes
#
# Each proxy gets the default config with its access log to a file, one worker, pinned
# to CPU 1; wrk (one thread, 64 connections) and the nginx origin share CPU 0. Prints,
# per path and row, the medians of req/s, p99, CPU µs per request (user + system
# time of the proxy process over the requests wrk counted) and its user-space part.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
a=$(realpath "${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}"); b=$(realpath "${2:?}")
ROUNDS=${ROUNDS:-6}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}; PATHS=${PATHS:-"/ /16k"}
BASE_PORT=${BASE_PORT:-19180}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; ngx=$((BASE_PORT+1)); port_a=$((BASE_PORT+2)); port_b=$((BASE_PORT+3))

head -c 16384 /dev/zero | tr '\0' x >"$run/16k"
nginx_conf origin "server { listen 127.0.0.1:$origin; location = / { return 200 \"hello\\n\"; } location = /16k { root $run; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &
nginx_proxy_conf "$ngx" "$origin"
taskset -c "$PROXY_CPU" nginx -c "$run/proxy.conf" & ngx_pid=$!

start_sluice a "$a" "$port_a" "$origin" "access_log_path = \"$run/a-access.log\""; pid_a=$!
start_sluice b "$b" "$port_b" "$origin" "access_log_path = \"$run/b-access.log\""; pid_b=$!
wait_ports "$origin" "$ngx" "$port_a" "$port_b"

# With BODY_BYTES, every request is a POST carrying that many bytes.
script=()
if [ -n "${BODY_BYTES:-}" ]; then
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
    "$BODY_BYTES" >"$run/post.lua"
  script=(-s "$run/post.lua")
fi

declare -A rps p99 cpu user
measure() { # row pid port path
  local before after user_before user_after out reqs
  before=$(cpu_ticks "$2"); user_before=$(user_ticks "$2")
  out=$(taskset -c "$LOAD_CPU" timeout $((DURATION + 10)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" "http://127.0.0.1:$3$4")
  after=$(cpu_ticks "$2"); user_after=$(user_ticks "$2")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps[$1$4]+=" $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  p99[$1$4]+=" $(awk '$1 == "99%" {v=$2; if (v ~ /us$/) v=v/1000; else if (v ~ /ms$/) v=v+0; else if (v ~ /s$/) v=v*1000; print v}' <<<"$out")"
  cpu[$1$4]+=" $(awk -v t=$((after - before)) -v r="$reqs" 'BEGIN {printf "%.2f", t * 10000 / r}')"
  user[$1$4]+=" $(awk -v t=$((user_after - user_before)) -v r="$reqs" 'BEGIN {printf "%.2f", t * 10000 / r}')"
}
for path in $PATHS; do
  for i in $(seq "$ROUNDS"); do
    order="a b nginx"; [ $((i % 2)) = 0 ] && order="b a nginx"
    for row in $order; do
      case $row in a) measure a "$pid_a" "$port_a" "$path";; b) measure b "$pid_b" "$port_b" "$path";; nginx) measure nginx "$ngx_pid" "$ngx" "$path";; esac
    done
  done
done
printf '%-6s %-6s %10s %8s %12s %9s %13s\n' path row 'req/s' 'p99 ms' 'cpu us/req' 'cpu/nginx' 'user us/req'
for path in $PATHS; do
  n=$(median <<<"${cpu[nginx$path]}")
  for row in a b nginx; do
    c=$(median <<<"${cpu[$row$path]}")
    printf '%-6s %-6s %10s %8s %12s %9s %13s\n' "$path" "$row" "$(median <<<"${rps[$row$path]}")" "$(median <<<"${p99[$row$path]}")" "$c" "$(awk -v c="$c" -v n="$n" 'BEGIN {printf "%.2f", c / n}')" "$(median <<<"${user[$row$path]}")"
  done
done
if [ -n "${ROUNDS_SHOWN:-}" ]; then
  for path in $PATHS; do for row in a b nginx; do echo "cpu us/req per round, $path $row:${cpu[$row$path]}"; done; done
fi
echo "a = $a"; echo "b = $b"
