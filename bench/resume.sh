#!/usr/bin/env bash
# The CPU cost of keep-alive clients that pause between requests: each pause is longer
# than `idle_release_ms`, so every request after the first finds its connection
# released and starts it again. An alternating A/B of two binaries, nginx in the same
# run for reference:
#
#   bench/resume.sh OLD_BINARY NEW_BINARY       # 300 clients, 80 ms pauses, 4 rounds of 8 s
#   CLIENTS=1000 PAUSE_MS=200 bench/resume.sh A B
#
# Each proxy runs the default config with `idle_release_ms = 20`, access log off, one
# worker, pinned to CPU 1; the clients (one Python process) and the nginx origin share
# CPU 0. Prints, per row, the medians of requests served and CPU µs per request (user +
# system time of the proxy over the requests the clients completed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
a=$(realpath "${1:?usage: bench/resume.sh OLD_BINARY NEW_BINARY}"); b=$(realpath "${2:?}")
ROUNDS=${ROUNDS:-4}; DURATION=${DURATION:-8}; CLIENTS=${CLIENTS:-300}; PAUSE_MS=${PAUSE_MS:-80}
BASE_PORT=${BASE_PORT:-19280}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; ngx=$((BASE_PORT+1)); port_a=$((BASE_PORT+2)); port_b=$((BASE_PORT+3))

nginx_conf origin "server { listen 127.0.0.1:$origin; location = / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &
nginx_conf proxy "upstream origin { server 127.0.0.1:$origin; keepalive 256; }
  server { listen 127.0.0.1:$ngx; location / {
    proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c "$PROXY_CPU" nginx -c "$run/proxy.conf" & ngx_pid=$!

start_sluice a "$a" "$port_a" "$origin" $'access_log = false\nidle_release_ms = 20'; pid_a=$!
start_sluice b "$b" "$port_b" "$origin" $'access_log = false\nidle_release_ms = 20'; pid_b=$!
wait_ports "$origin" "$ngx" "$port_a" "$port_b"

# clients PORT: CLIENTS keep-alive connections, each sending GET / then pausing
# PAUSE_MS, for DURATION seconds; prints the number of responses read.
clients() {
  taskset -c "$LOAD_CPU" python3 - "$1" "$CLIENTS" "$PAUSE_MS" "$DURATION" <<'PY'
import asyncio, sys
port, clients, pause, duration = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000, float(sys.argv[4])
async def client(stop, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while asyncio.get_running_loop().time() < stop:
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        counts[0] += 1
        await asyncio.sleep(pause)
    writer.close()
async def main():
    counts = [0]
    stop = asyncio.get_running_loop().time() + duration
    await asyncio.gather(*(client(stop, counts) for _ in range(clients)))
    print(counts[0])
asyncio.run(main())
PY
}

declare -A served cpu
measure() { # row pid port
  local before after reqs
  before=$(cpu_ticks "$2")
  reqs=$(clients "$3")
  after=$(cpu_ticks "$2")
  served[$1]+=" $reqs"
  cpu[$1]+=" $(awk -v t=$((after - before)) -v r="$reqs" 'BEGIN {printf "%.2f", t * 10000 / r}')"
}
for i in $(seq "$ROUNDS"); do
  order="a b nginx"; [ $((i % 2)) = 0 ] && order="b a nginx"
  for row in $order; do
    case $row in a) measure a "$pid_a" "$port_a";; b) measure b "$pid_b" "$port_b";; nginx) measure nginx "$ngx_pid" "$ngx";; esac
  done
done
printf '%-6s %10s %12s %9s\n' row requests 'cpu us/req' 'cpu/nginx'
n=$(median <<<"${cpu[nginx]}")
for row in a b nginx; do
  c=$(median <<<"${cpu[$row]}")
  printf '%-6s %10s %12s %9s\n' "$row" "$(median <<<"${served[$row]}")" "$c" "$(awk -v c="$c" -v n="$n" 'BEGIN {printf "%.2f", c / n}')"
done
echo "a = $a"; echo "b = $b"
