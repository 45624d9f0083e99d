#!/usr/bin/env bash
# What a cache hit costs, side by side with nginx `proxy_cache`, and how many upstream
# requests a burst of misses for one cold key makes:
#
#   bench/cache.sh [BINARY]          # 3 alternating rounds x 5 s, 64 connections
#
# Rows (one worker each, pinned to CPU 1; wrk and the nginx origin on CPU 0; no access
# logs), for `/` (6 bytes) and `/16k` (16 KiB), both answered by the origin without
# cache headers:
#   nginx-plain    nginx proxy_pass with a keep-alive upstream pool
#   nginx-cache    the same with proxy_cache (proxy_cache_valid 200 1h, files under the
#                  run directory, so hits read the page cache)
#   sluice-plain   a route without a cache
#   sluice-cache   a route with `cache = { zone = "main" }` (default_ttl_s = 3600)
# Prints median req/s, p99, CPU µs per request and the ratio to sluice-plain; then
# sends COALESCE (1000) concurrent requests, one connection each, for a cold key on
# sluice-cache whose origin answers after 300 ms, and prints how many reached it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin=$(realpath "${1:-$root/target/release/sluice}")
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}; COALESCE=${COALESCE:-1000}
BASE_PORT=${BASE_PORT:-19680}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; slow=$((BASE_PORT+1)); port=$((BASE_PORT+2))
mkdir -p "$run/www" "$run/nginx-cache"
head -c 16384 /dev/zero | tr '\0' x >"$run/www/16k"
nginx_conf origin "server { listen 127.0.0.1:$origin; root $run/www; location = / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &

declare -A row_port row_pid
rows="nginx-plain nginx-cache sluice-plain sluice-cache"
upstream_block="upstream origin { server 127.0.0.1:$origin; keepalive 256; }"
proxy_lines="proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";"
nginx_conf nginx-plain "$upstream_block server { listen 127.0.0.1:$port; location / { $proxy_lines } }"
taskset -c "$PROXY_CPU" nginx -c "$run/nginx-plain.conf" &
row_pid[nginx-plain]=$!; row_port[nginx-plain]=$port; port=$((port+1))
nginx_conf nginx-cache "$upstream_block proxy_cache_path $run/nginx-cache levels=1:2 keys_zone=main:64m max_size=256m inactive=1h use_temp_path=off;
  server { listen 127.0.0.1:$port; location / { $proxy_lines proxy_cache main; proxy_cache_valid 200 1h; proxy_cache_lock on; } }"
taskset -c "$PROXY_CPU" nginx -c "$run/nginx-cache.conf" &
row_pid[nginx-cache]=$!; row_port[nginx-cache]=$port; port=$((port+1))
# sluice_row NAME ROUTE_LINES EXTRA_TABLES
sluice_row() {
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[plugins]\ndir = "%s/plugins"\ncache_dir = "%s/compiled"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[upstreams.slow]\nservers = ["127.0.0.1:%s"]\n%s\n[[routes]]\npath = "/"\nupstream = "app"\n%s\n[[routes]]\npath = "/slow"\nupstream = "slow"\n%s\n' \
    "$port" "$run" "$run" "$origin" "$slow" "$3" "$2" "$2" >"$run/$1.toml"
  mkdir -p "$run/plugins"
  taskset -c "$PROXY_CPU" "$bin" run --config "$run/$1.toml" 2>>"$run/$1.err" &
  row_pid[$1]=$!; row_port[$1]=$port; port=$((port+1))
}
sluice_row sluice-plain "" ""
sluice_row sluice-cache 'cache = { zone = "main" }' $'[cache.zones.main]\nmax_mib = 64\ndefault_ttl_s = 3600'
for r in $rows; do
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:${row_port[$r]}/" && break; sleep 0.1; done
done
for r in nginx-cache sluice-cache; do
  for p in / /16k; do curl -s -o /dev/null "http://127.0.0.1:${row_port[$r]}$p"; done
  status=$(curl -s -D - -o /dev/null "http://127.0.0.1:${row_port[$r]}/16k" | tr -d '\r' | grep -i -E '^(cache-status|x-cache):' || true)
  [ "$r" = nginx-cache ] || [ -n "$status" ] || { echo "$r: no Cache-Status on a repeated GET" >&2; exit 1; }
done

declare -A rps p99 cpu
for path in / /16k; do
  rps=(); p99=(); cpu=()
  URL_PATH=$path measure_rounds
  echo "== $path"
  print_rows sluice-plain
done

# Coalescing: a slow origin that counts what reaches it.
cat >"$run/slow.py" <<'PY'
import http.server, sys, threading, time
hits = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        global hits
        if self.path == "/slow/hits":
            body = str(hits).encode()
        else:
            with lock:
                hits += 1
            time.sleep(0.3)
            body = b"cold\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store" if self.path == "/slow/hits" else "max-age=60")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.daemon_threads = True
s.request_queue_size = 4096
s.serve_forever()
PY
taskset -c "$LOAD_CPU" python3 "$run/slow.py" "$slow" &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$slow/slow/hits" && break; sleep 0.1; done
ulimit -n 8192
python3 - "${row_port[sluice-cache]}" "$COALESCE" <<'PY'
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /slow/cold HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 30)
    w.close()
    return data.split(b"\r\n", 1)[0]
async def main():
    lines = await asyncio.gather(*(one() for _ in range(n)))
    ok = sum(1 for l in lines if b" 200 " in l)
    print(f"coalescing: {n} concurrent requests for a cold key, {ok} answered 200")
asyncio.run(main())
PY
echo "coalescing: requests that reached the origin: $(curl -s "http://127.0.0.1:$slow/slow/hits")"
echo "binary = $bin"
