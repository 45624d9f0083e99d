#!/usr/bin/env bash
# The deployment build: the `dist` profile (whole-program LTO) guided by a profile of
# real traffic (PGO). Three steps, about 20 minutes on two cores:
#   1. an instrumented proxy is built (target/pgo-train);
#   2. it serves the quickstart a training load on loopback: HTTP/1.1 (small, 16 KiB
#      and 1 MiB bodies, keep-alive and not), the plugin route, and h2c;
#   3. the proxy is built again with what step 2 counted (target/pgo).
# Prints the path of the result: target/pgo/<host triple>/dist/sluice.
# Safe to run again. Needs wrk and curl (wrk is installed with apt when missing).
#
#   scripts/build-dist.sh
#   BASE_PORT=19480 TRAIN_S=6 scripts/build-dist.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BASE_PORT=${BASE_PORT:-19480}
TRAIN_S=${TRAIN_S:-6}

rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
triple=$(rustc -vV | awk '/^host:/ {print $2}')
profdata="$(rustc --print sysroot)/lib/rustlib/$triple/bin/llvm-profdata"

"$root/scripts/build-guests.sh" plugins >/dev/null
cargo build --release -q -p echo-origin
# --target keeps the flags off build scripts and proc macros.
RUSTFLAGS="-Cprofile-generate=$root/target/pgo-train/raw" \
  cargo build --profile dist -q -p sluice --target "$triple" --target-dir target/pgo-train

run=$(mktemp -d)
trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$run"' EXIT
rm -rf target/pgo-train/raw
# The quickstart, moved to BASE_PORT.. and logging to a file.
proxy=$BASE_PORT app1=$((BASE_PORT + 1)) app2=$((BASE_PORT + 2)) canary=$((BASE_PORT + 3))
target/release/echo-origin "127.0.0.1:$app1=app-1" "127.0.0.1:$app2=app-2" "127.0.0.1:$canary=canary" >/dev/null 2>&1 &
mkdir -p "$run/plugins"
for name in api-key rate-limit rewrite router; do cp "target/plugins/$name.wasm" "$run/plugins/"; done
sed -e "s|127.0.0.1:8080\"|127.0.0.1:$proxy\"\nworkers = 1\naccess_log_path = \"$run/access.log\"|" \
  -e "s|127.0.0.1:9001|127.0.0.1:$app1|; s|127.0.0.1:9002|127.0.0.1:$app2|; s|127.0.0.1:9003|127.0.0.1:$canary|" \
  -e "s|^dir = \"plugins\"|dir = \"$run/plugins\"|" \
  examples/quickstart/sluice.toml >"$run/sluice.toml"
target/pgo-train/"$triple"/dist/sluice run --config "$run/sluice.toml" 2>"$run/sluice.err" &
sluice=$!
url="http://127.0.0.1:$proxy"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
wait_ports "$proxy"
curl -sf -o /dev/null "$url/" || { echo "the instrumented proxy did not serve:" >&2; cat "$run/sluice.err" >&2; exit 1; }
wrk -t1 -c64 -d"${TRAIN_S}s" "$url/" >/dev/null
wrk -t1 -c64 -d"${TRAIN_S}s" "$url/download?bytes=16384" >/dev/null
wrk -t1 -c8 -d2s "$url/download?bytes=1048576" >/dev/null
wrk -t1 -c8 -d2s -H 'Connection: close' "$url/" >/dev/null
wrk -t1 -c16 -d2s -H 'x-api-key: k-123' "$url/api/users" >/dev/null
# One request per connection: some curl releases fail a reused h2c connection.
for i in $(seq 300); do
  curl -sf --http2-prior-knowledge -o /dev/null "$url/$i"
  curl -sf --http2-prior-knowledge -o /dev/null "$url/download?bytes=16384&$i"
done
kill -TERM "$sluice"
wait "$sluice" || true
# The profile counts what ran; a load that failed would train the wrong paths.
served=$(wc -l <"$run/access.log")
[ "$served" -ge 10000 ] || { echo "training served only $served requests" >&2; exit 1; }

"$profdata" merge -o target/pgo-train/merged.profdata target/pgo-train/raw
# The profile's hash in the flags: a new profile rebuilds every crate that uses it.
sum=$(sha256sum target/pgo-train/merged.profdata | cut -c1-12)
mkdir -p target/pgo && rm -f target/pgo/*.profdata
cp target/pgo-train/merged.profdata "target/pgo/$sum.profdata"
RUSTFLAGS="-Cprofile-use=$root/target/pgo/$sum.profdata" \
  cargo build --profile dist -q -p sluice --target "$triple" --target-dir target/pgo
echo "target/pgo/$triple/dist/sluice"
