#!/usr/bin/env bash
# TLS handshake cost, Sluice against nginx terminating TLS with the same ECDSA P-256
# certificate, side by side in one run. Each proxy is pinned to CPU 1, h2load (the
# client) and the origin to CPU 0. A batch is h2load opening CONNS new TLS connections
# (full handshakes, one HTTP/2 request each); batches repeat for DURATION seconds.
# Reports handshakes/s and the proxy's CPU µs per handshake, medians over ROUNDS.
#
#   bench/tls.sh                       # 3 rounds x 8 s, 50 connections per batch
#   ROUNDS=5 DURATION=10 bench/tls.sh
#
# Needs h2load (apt nghttp2-client), nginx and openssl; installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/bench/lib.sh"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8}; CONNS=${CONNS:-50}; BASE_PORT=${BASE_PORT:-19180}
for pkg in h2load:nghttp2-client nginx:nginx openssl:openssl; do
  command -v "${pkg%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${pkg#*:}" >/dev/null; }
done
cargo build --release -q -p sluice --manifest-path "$root/Cargo.toml"

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
origin=$BASE_PORT; sluice_tls=$((BASE_PORT+1)); nginx_tls=$((BASE_PORT+2)); sluice_http=$((BASE_PORT+3))
mkdir -p "$run/tls" "$run/tmp"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -keyout "$run/tls/key.pem" -out "$run/tls/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
nginx_conf origin "server { listen 127.0.0.1:$origin; location / { return 200 \"hello\\n\"; } }"
nginx_conf proxy "upstream origin { server 127.0.0.1:$origin; keepalive 64; }
  server { listen 127.0.0.1:$nginx_tls ssl http2; ssl_certificate $run/tls/cert.pem; ssl_certificate_key $run/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
taskset -c 0 nginx -c "$run/origin.conf" 2>/dev/null &
taskset -c 1 nginx -c "$run/proxy.conf" 2>/dev/null & nginx_pid=$!
BENCH_RUN=$run BENCH_ORIGIN=127.0.0.1:$origin BENCH_WORKERS=1 \
  taskset -c 1 "$root/bench/peer.sh" "$root/target/release/sluice" "$sluice_http" "$sluice_tls" & sluice_pid=$!
for _ in $(seq 1 100); do
  curl -sk "https://127.0.0.1:$sluice_tls/" >/dev/null 2>&1 && curl -sk "https://127.0.0.1:$nginx_tls/" >/dev/null 2>&1 && break
  sleep 0.1
done

# batch_run PID PORT -> "handshakes/s cpu_us_per_handshake"
batch_run() {
  local pid=$1 port=$2 t0 c0 c1 n=0 end
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N); end=$(( $(date +%s) + DURATION ))
  while [ "$(date +%s)" -lt "$end" ]; do
    taskset -c 0 h2load -t1 -c"$CONNS" -n"$CONNS" -m1 "https://127.0.0.1:$port/" >"$run/h2load.out" 2>&1 || true
    n=$(( n + $(awk '/^requests:/ { gsub(/,/,""); print $8 }' "$run/h2load.out") ))
  done
  c1=$(cpu_ticks "$pid")
  awk -v n="$n" -v t0="$t0" -v t1="$(date +%s.%N)" -v c="$((c1-c0))" \
    'BEGIN { printf "%.0f %.1f\n", n/(t1-t0), c*10000/n }'
}
declare -A hs cpu
for r in $(seq 1 "$ROUNDS"); do
  for target in sluice nginx; do
    if [ "$target" = sluice ]; then line=$(batch_run "$sluice_pid" "$sluice_tls"); else line=$(batch_run "$nginx_pid" "$nginx_tls"); fi
    hs[$target]+="${line%% *} "; cpu[$target]+="${line##* } "
    echo "round $r $target: ${line%% *} handshakes/s, ${line##* } µs CPU per handshake" >&2
  done
done
printf '%-8s %14s %22s\n' target handshakes/s "CPU µs/handshake"
for target in nginx sluice; do
  printf '%-8s %14s %22s\n' "$target" "$(echo "${hs[$target]}" | median)" "$(echo "${cpu[$target]}" | median)"
done
