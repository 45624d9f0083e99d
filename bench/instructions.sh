#!/usr/bin/env bash
# User-space instructions per request on the plain proxy path, counted by callgrind:
# exact where the CPU-time figures of ab.sh move by several percent from run to run,
# so a change of 1 % shows. Each Sluice binary, nginx (buffered access log, as in
# ab.sh) and, when built, bench's relay-floor engines run in turn under callgrind;
# wrk (8 connections) sends `/` (or URL_PATH) through each, and the instructions the proxy's threads
# ran between a warm-up and the end of the measured run are divided by the requests.
# Kernel work (the same syscalls for all of them) is not counted.
#
#   bench/instructions.sh BINARY [BINARY...]
#   FLOOR="raw hyper-both" bench/instructions.sh target/release/sluice
#   URL_PATH=/16k bench/instructions.sh BINARY     # a 16 KiB body instead of `hello`
#
# Sluice runs with a one-slot plugin instance pool: the default pool reserves more
# address space than valgrind can map, and the plain path never touches it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: bench/instructions.sh BINARY [BINARY...]" >&2; exit 2; }
DURATION=${DURATION:-5}; CONNS=${CONNS:-8}; BASE_PORT=${BASE_PORT:-19280}
FLOOR=${FLOOR:-}; URL_PATH=${URL_PATH:-/}
for tool in wrk nginx valgrind; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nginx-light valgrind >/dev/null; }
done
if [ -n "$FLOOR" ]; then
  cargo build --release -q -p sluice-bench --bin relay-floor --manifest-path "$root/Cargo.toml"
fi

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; [ -n "${KEEP:-}" ] || rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; proxy_port=$((BASE_PORT + 1))
mkdir -p "$run/www"; head -c 16384 /dev/zero | tr '\0' x >"$run/www/16k"
nginx_conf origin "server { listen 127.0.0.1:$origin; root $run/www; location = / { return 200 \"hello\\n\"; } }"
nginx -c "$run/origin.conf" &
wait_ports "$origin"

# count NAME COMMAND...: starts COMMAND under callgrind (it must listen on $proxy_port),
# prints NAME and its instructions per request.
count() {
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$run/$name.cg" "$@" >"$run/$name.out" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$proxy_port$URL_PATH" && break; sleep 0.2; done
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$proxy_port$URL_PATH" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out reqs
  out=$(timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$proxy_port$URL_PATH")
  callgrind_control -d "$pid" >/dev/null 2>&1
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  kill "$pid"; sleep 1
  # The dump after zeroing is the first numbered part.
  awk -v r="$reqs" -v n="$name" '/^summary:/ {printf "%-14s %10d requests %12.0f instructions per request\n", n, r, $2 / r; exit}' "$run/$name.cg.1"
}

nginx_proxy_conf "$proxy_port" "$origin"
count nginx nginx -c "$run/proxy.conf"

i=0
for binary in "$@"; do
  i=$((i + 1))
  mkdir -p "$run/plugins-$i"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log_path = "%s/sluice-%s-access.log"\n[plugins]\ndir = "%s/plugins-%s"\nmax_instances = 1\nmemory_limit_mib = 1\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\npath = "/"\nupstream = "app"\n' \
    "$proxy_port" "$run" "$i" "$run" "$i" "$origin" >"$run/sluice-$i.toml"
  count "sluice-$i" "$(realpath "$binary")" run --config "$run/sluice-$i.toml"
  echo "  sluice-$i = $binary"
done
for engine in $FLOOR; do
  count "$engine" "$root/target/release/relay-floor" "$engine" "127.0.0.1:$proxy_port" "127.0.0.1:$origin" "$run/$engine-access.log"
done
