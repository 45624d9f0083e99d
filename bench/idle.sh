#!/usr/bin/env bash
# Memory held by idle keep-alive client connections, Sluice beside nginx in one run:
# CONNS clients each make one request (HTTP/1.1, then HTTP/2 with prior knowledge),
# read the whole response and stay connected without a word. The figure is the growth
# of the proxy's RSS divided by CONNS, taken HOLD_S seconds after the last request.
# A last HTTP/2 row is hyper's HTTP/2 server answering by itself (bench's `h2-floor`):
# what any hyper-based server's idle HTTP/2 connection holds. Also prints Sluice's idle
# RSS with the quickstart plugins loaded, from a cold and from a warm compile cache.
#
#   bench/idle.sh
#   CONNS=10000 HOLD_S=3 bench/idle.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS=${CONNS:-5000}; HOLD_S=${HOLD_S:-3}; BASE_PORT=${BASE_PORT:-19380}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
"$root/scripts/build-guests.sh" plugins >/dev/null
cargo build --release -q -p sluice -p echo-origin --manifest-path "$root/Cargo.toml"
cargo build --release -q -p sluice-bench --bin h2-floor --manifest-path "$root/Cargo.toml"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
SLUICE=${SLUICE:-$root/target/release/sluice}

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT
"$root/target/release/echo-origin" "127.0.0.1:$origin=origin" >/dev/null 2>&1 &
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; echo "nothing answers on $1"; exit 1; }

# hold PID PORT PROTO: open CONNS idle connections, print KiB of RSS per connection.
hold() {
  python3 - "$1" "$2" "$3" "$CONNS" "$HOLD_S" <<'PY'
import socket, sys, time
pid, port, proto, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
def h1(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data: data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length: body += s.recv(65536)
def h2(s):
    # Preface, empty SETTINGS, then GET / on stream 1: :method GET, :scheme http,
    # :path / from the static table and a literal :authority; then ACK the server's SETTINGS.
    authority = b"127.0.0.1"
    block = b"\x82\x86\x84\x41" + bytes([len(authority)]) + authority
    frame = lambda typ, flags, sid, payload: len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big") + payload
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 5, 1, block) + frame(4, 1, 0, b""))
    buf = b""
    while True:
        while len(buf) < 9: buf += s.recv(65536)
        length, typ, flags, sid = int.from_bytes(buf[:3], "big"), buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
        while len(buf) < 9 + length: buf += s.recv(65536)
        buf = buf[9 + length:]
        if sid == 1 and typ in (0, 1) and flags & 1: return
conns = []
start = rss()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    (h1 if proto == "h1" else h2)(s)
    conns.append(s)
time.sleep(hold)
held = rss()
print(f"{(held - start) / n:.2f}")
for s in conns: s.close()
PY
}

row() { printf '%-8s %-6s %12s\n' "$@"; }
echo "## Idle keep-alive connections ($CONNS, ${HOLD_S} s after the last request)"
row proxy proto "KiB per conn"

nginx_conf idle "upstream app { server 127.0.0.1:$origin; keepalive 64; }
  server { listen 127.0.0.1:$((BASE_PORT + 1)); listen 127.0.0.1:$((BASE_PORT + 2)) http2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$run/idle.conf" &
wait_port $((BASE_PORT + 1))
npid=$(cat "$run/idle.pid")
row nginx h1 "$(hold "$npid" $((BASE_PORT + 1)) h1)"
row nginx h2 "$(hold "$npid" $((BASE_PORT + 2)) h2)"

sport=$((BASE_PORT + 3))
printf '[server]\nlisten = "127.0.0.1:%s"\naccess_log = false\nmax_connections = 30000\nidle_timeout_ms = 120000\n' "$sport" > "$run/sluice.toml"
mkdir -p "$run/no-plugins"
printf '[plugins]\ndir = "%s"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\npath = "/"\nupstream = "app"\n' "$run/no-plugins" "$origin" >> "$run/sluice.toml"
"$SLUICE" run --config "$run/sluice.toml" 2>"$run/sluice.log" &
spid=$!
wait_port "$sport"
row sluice h1 "$(hold "$spid" "$sport" h1)"
row sluice h2 "$(hold "$spid" "$sport" h2)"
kill "$spid"; wait "$spid" 2>/dev/null || true

# hyper's HTTP/2 server alone, answering itself: the floor under Sluice's h2 row.
fport=$((BASE_PORT + 5))
"$root/target/release/h2-floor" "127.0.0.1:$fport" &
fpid=$!
for _ in $(seq 100); do curl -sf --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$fport/" && break; sleep 0.1; done
row hyper-h2 h2 "$(hold "$fpid" "$fport" h2)"
kill "$fpid"; wait "$fpid" 2>/dev/null || true

echo "## Idle RSS with the quickstart plugins loaded"
mkdir -p "$run/qs-plugins"; cp "$root"/target/plugins/{api-key,rewrite,router}.wasm "$run/qs-plugins/"
sed -e "s|^listen = .*|listen = \"127.0.0.1:$((BASE_PORT + 4))\"|" \
    -e "s|^dir = .*|dir = \"$run/qs-plugins\"\ncache_dir = \"$run/cache\"|" \
    "$root/examples/quickstart/sluice.toml" > "$run/quickstart.toml"
for start in cold warm; do
  "$SLUICE" run --config "$run/quickstart.toml" 2>"$run/qs-$start.log" &
  qpid=$!
  for _ in $(seq 600); do grep -q "listening" "$run/qs-$start.log" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  printf '%-8s %6s MiB\n' "$start" "$(( $(rss_kib $qpid) / 1024 ))"
  kill "$qpid"; wait "$qpid" 2>/dev/null || true
done
