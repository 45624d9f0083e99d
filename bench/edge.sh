#!/usr/bin/env bash
# Edge hardening figures, measured in one run:
#  1. latency of a plugin-free route while 200 connections flood a route whose plugin
#     loops for ever — with the default guard (concurrency cap + circuit breaker) and
#     with it turned off (the behaviour before it existed);
#  2. RSS per slow-reading connection (CONNS clients that each start a large download
#     and then stop reading), and RSS after they are gone;
#  3. time for SILENT connections that never send a byte to be closed after the
#     header timeout.
#
#   bench/edge.sh
#   CONNS=500 SILENT=5000 bench/edge.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS=${CONNS:-1000}; SILENT=${SILENT:-10000}; DURATION=${DURATION:-10}; BASE_PORT=${BASE_PORT:-19280}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
"$root/scripts/build-guests.sh" fixtures >/dev/null
cargo build --release -q -p sluice -p echo-origin --manifest-path "$root/Cargo.toml"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
origin=$BASE_PORT
"$root/target/release/echo-origin" "127.0.0.1:$origin=origin" >/dev/null 2>&1 &
mkdir -p "$run/plugins"; cp "$root/target/fixtures/loop-forever.wasm" "$run/plugins/"
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

start_proxy() { # name port extra-plugins-toml extra-server-toml
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\naccess_log = false\nmax_connections = 30000\n%s' "$2" "$4"
    printf '[plugins]\ndir = "%s"\n%s' "$run/plugins" "$3"
    printf '[upstreams.app]\nservers = ["127.0.0.1:%s"]\nmax_idle_per_server = 2000\n' "$origin"
    printf '[[routes]]\npath = "/"\nupstream = "app"\n'
    printf '[[routes]]\npath = "/loop/"\nupstream = "app"\n  [[routes.plugins]]\n  name = "loop-forever"\n'
  } > "$run/$1.toml"
  "$root/target/release/sluice" run --config "$run/$1.toml" 2>"$run/$1.log" &
  echo $! > "$run/$1.pid"
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$2/" && return; sleep 0.1; done
  echo "proxy $1 did not start"; cat "$run/$1.log"; exit 1
}
stop_proxy() { kill "$(cat "$run/$1.pid")" 2>/dev/null || true; sleep 0.5; }

echo "## 1. plugin-free route during a 200-connection flood on a looping plugin"
printf '%-12s %10s %10s %10s   %s\n' row p50_ms p99_ms max_ms flood
port=$((BASE_PORT + 1))
# Rows: the free route alone; during a flood of plain proxied requests (what any
# 200-connection flood costs); during the loop flood with the guard off, then on.
for row in alone plain-flood guard-off guard-on; do
  plugins=""; [ $row = guard-off ] && plugins=$'breaker_faults = 0\nmax_concurrent_calls = 100000\n'
  start_proxy "flood-$row" $port "$plugins" ""
  flood_pid=""
  case $row in
    alone) ;;
    plain-flood) wrk -t1 -c200 -d"$((DURATION + 2))s" --timeout 10s "http://127.0.0.1:$port/flood" > "$run/flood-$row.wrk" & flood_pid=$! ;;
    *) wrk -t1 -c200 -d"$((DURATION + 2))s" --timeout 10s "http://127.0.0.1:$port/loop/" > "$run/flood-$row.wrk" & flood_pid=$! ;;
  esac
  sleep 1
  wrk -t1 -c1 -d"${DURATION}s" --latency "http://127.0.0.1:$port/" > "$run/free-$row.wrk"
  [ -n "$flood_pid" ] && { wait "$flood_pid" || true; }
  python3 - "$run/free-$row.wrk" "$run/flood-$row.wrk" "$row" <<'PY'
import sys, re, os
free = open(sys.argv[1]).read()
flood = open(sys.argv[2]).read() if os.path.exists(sys.argv[2]) else ""
def ms(v): return float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000
p50 = ms(re.search(r'50%\s+(\S+)', free).group(1)); p99 = ms(re.search(r'99%\s+(\S+)', free).group(1))
mx = ms(re.search(r'Latency\s+\S+\s+\S+\s+(\S+)', free).group(1))
note = ""
if flood:
    rps = float(re.search(r'Requests/sec:\s+(\S+)', flood).group(1))
    non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', flood)
    note = f"flood {rps:.0f} req/s, {int(non2xx.group(1)) if non2xx else 0} not 2xx"
print(f"{sys.argv[3]:<12} {p50:>10.2f} {p99:>10.2f} {mx:>10.2f}   {note}")
PY
  stop_proxy "flood-$row"
  port=$((port + 1))
done

echo "## 2. RSS with $CONNS slow readers (each starts a 100 MB download, reads 4 KiB, stops)"
start_proxy slow $port "" $'send_timeout_ms = 60000\n'
pid=$(cat "$run/slow.pid")
idle=$(rss_mib "$pid")
python3 - "$port" "$CONNS" "$pid" "$idle" <<'PY'
import socket, sys, time
port, n, pid, idle = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /download?bytes=100000000 HTTP/1.1\r\nHost: b\r\n\r\n")
    s.recv(4096)
    socks.append(s)
time.sleep(3)
held = rss()
for s in socks: s.close()
time.sleep(3)
after = rss()
print(f"idle {idle} MiB, with {n} slow readers {held:.0f} MiB ({(held - idle) * 1024 / n:.0f} KiB per connection), 3 s after they close {after:.0f} MiB")
PY
stop_proxy slow
port=$((port + 1))

echo "## 3. $SILENT silent connections (header_read_timeout_ms = 2000)"
start_proxy silent $port "" $'header_read_timeout_ms = 2000\n'
python3 - "$port" "$SILENT" <<'PY'
import socket, sys, time, selectors
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
opened = time.monotonic()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
connected = time.monotonic() - opened
last_due = connected + 2.0  # the last connection's header deadline, from the first open
t0 = time.monotonic()
ok = socket.create_connection(("127.0.0.1", port), timeout=5)
ok.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
first = ok.recv(64); served_ms = (time.monotonic() - t0) * 1000
left, deadline = n, time.monotonic() + 60
while left and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        try: data = key.fileobj.recv(4096)
        except OSError: data = b""
        if not data:
            sel.unregister(key.fileobj); key.fileobj.close(); left -= 1
done = time.monotonic() - opened
print(f"opened in {connected:.2f} s; a normal request meanwhile: {first[:12]!r} in {served_ms:.1f} ms; "
      f"all closed {done:.2f} s after the first opened, {(done - last_due) * 1000:.0f} ms after the last one was due; still open: {left}")
PY
stop_proxy silent
