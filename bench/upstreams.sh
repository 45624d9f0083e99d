#!/usr/bin/env bash
# Balancing over 4 upstream servers, side by side in one run: Sluice (round robin and
# least-conn, with active health checks and passive ejection on) against nginx's
# `upstream` block (round robin and least_conn), plus Sluice with one server (the cost
# of balancing and health bookkeeping is the difference). Each proxy pinned to CPU 1,
# wrk and the four origins (one nginx, four ports) to CPU 0. Reports req/s and the
# proxy's CPU µs per request, medians over ROUNDS.
#
#   bench/upstreams.sh                 # 3 rounds x 8 s, 64 connections
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/bench/lib.sh"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}; CONNS=${CONNS:-64}; BASE_PORT=${BASE_PORT:-19280}
for pkg in wrk nginx; do command -v "$pkg" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null; }; done
cargo build --release -q -p sluice --manifest-path "$root/Cargo.toml"

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
o=$BASE_PORT; origins="127.0.0.1:$o 127.0.0.1:$((o+1)) 127.0.0.1:$((o+2)) 127.0.0.1:$((o+3))"
mkdir -p "$run/tmp" "$run/plugins"
listens=""; for a in $origins; do listens+="listen $a; "; done
nginx_conf origin "server { $listens location / { return 200 \"hello\\n\"; } }"
servers=""; for a in $origins; do servers+="server $a; "; done
loc="location / { proxy_pass http://\$up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; }"
nginx_conf nginx-rr "upstream rr { $servers keepalive 256; } server { listen 127.0.0.1:$((o+10)); set \$up rr; $loc }"
nginx_conf nginx-lc "upstream lc { least_conn; $servers keepalive 256; } server { listen 127.0.0.1:$((o+11)); set \$up lc; $loc }"
sluice_conf() { # port balance servers
  list=$(for a in $3; do printf '"%s", ' "$a"; done)
  cat >"$run/sluice-$1.toml" <<CONF
[server]
listen = "127.0.0.1:$1"
workers = 1
access_log = false
[plugins]
dir = "$run/plugins"
[upstreams.app]
balance = "$2"
servers = [${list%, }]
health = { path = "/", interval_ms = 1000 }
[[routes]]
upstream = "app"
CONF
}
sluice_conf $((o+20)) round-robin "$origins"
sluice_conf $((o+21)) least-conn "$origins"
sluice_conf $((o+22)) round-robin "127.0.0.1:$o"
taskset -c 0 nginx -c "$run/origin.conf" 2>/dev/null &
declare -A pid port
taskset -c 1 nginx -c "$run/nginx-rr.conf" 2>/dev/null & pid[nginx-rr]=$!; port[nginx-rr]=$((o+10))
taskset -c 1 nginx -c "$run/nginx-lc.conf" 2>/dev/null & pid[nginx-lc]=$!; port[nginx-lc]=$((o+11))
for spec in "sluice-rr:$((o+20))" "sluice-lc:$((o+21))" "sluice-1:$((o+22))"; do
  name=${spec%%:*}; p=${spec##*:}
  taskset -c 1 "$root/target/release/sluice" run --config "$run/sluice-$p.toml" 2>"$run/$name.log" & pid[$name]=$!; port[$name]=$p
done
targets="nginx-rr nginx-lc sluice-rr sluice-lc sluice-1"
for t in $targets; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${port[$t]}/" >/dev/null 2>&1 && break; sleep 0.1; done
done
declare -A rps cpu
for r in $(seq 1 "$ROUNDS"); do
  for t in $targets; do
    c0=$(cpu_ticks "${pid[$t]}")
    out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${port[$t]}/")
    c1=$(cpu_ticks "${pid[$t]}")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    x=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    u=$(awk -v c="$((c1-c0))" -v n="$n" 'BEGIN { printf "%.1f", c*10000/n }')
    rps[$t]+="$x "; cpu[$t]+="$u "
    echo "round $r $t: $x req/s, $u µs CPU/request" >&2
  done
done
printf '%-10s %10s %16s\n' target req/s "CPU µs/req"
for t in $targets; do printf '%-10s %10s %16s\n' "$t" "$(echo "${rps[$t]}" | median)" "$(echo "${cpu[$t]}" | median)"; done
