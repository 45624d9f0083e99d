#!/usr/bin/env bash
# Load benchmark, side by side in one run: the origin direct, Sluice without
# plugins, Sluice with the three-plugin chain (api-key, rewrite, router) in fresh
# mode (init-once snapshots, the default), fresh with `init` per instance
# (`snapshot = false`, the lifecycle before snapshots) and reuse mode, and
# nginx as a reverse proxy when installed. Reports req/s, p50/p99 and CPU µs per
# request of the proxy process, as medians over rounds, plus ratios.
#
#   bench/run.sh                      # 3 rounds x 10 s, 64 connections
#   ROUNDS=5 DURATION=20 CONNS=128 bench/run.sh
#
# Placement (2-core box): the proxy gets 1 worker pinned to CPU 1; wrk and the
# origin share CPU 0. Needs wrk (installed with apt when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-64}; BASE_PORT=${BASE_PORT:-19080}
PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
"$root/scripts/build-guests.sh" plugins >/dev/null
cargo build --release -q -p sluice -p echo-origin -p sluice-bench --manifest-path "$root/Cargo.toml"

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
origin_port=$BASE_PORT; plain_port=$((BASE_PORT+1)); chain_port=$((BASE_PORT+2)); nginx_port=$((BASE_PORT+3)); reuse_port=$((BASE_PORT+4)); initper_port=$((BASE_PORT+5))
have_nginx=0; command -v nginx >/dev/null && have_nginx=1

nginx_conf() { # name body
  mkdir -p "$run/tmp-$1"
  cat > "$run/$1.conf" <<CONF
worker_processes 1; master_process off; daemon off;
pid $run/$1.pid;
error_log $run/$1.err warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $run/tmp-$1; proxy_temp_path $run/tmp-$1; fastcgi_temp_path $run/tmp-$1; uwsgi_temp_path $run/tmp-$1; scgi_temp_path $run/tmp-$1;
  $2
}
CONF
}
# Origin: nginx answering "hello" when installed (cheapest), else the demo origin.
if [ $have_nginx = 1 ]; then
  nginx_conf origin "server { listen 127.0.0.1:$origin_port; location / { return 200 \"hello\\n\"; } }"
  taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" 2>/dev/null &
  nginx_conf proxy "upstream origin { server 127.0.0.1:$origin_port; keepalive 256; }
  server { listen 127.0.0.1:$nginx_port; location / {
    proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }"
  taskset -c "$PROXY_CPU" nginx -c "$run/proxy.conf" 2>/dev/null & nginx_pid=$!
else
  taskset -c "$LOAD_CPU" "$root/target/release/echo-origin" "127.0.0.1:$origin_port=origin" >/dev/null 2>&1 &
fi

mkdir -p "$run/plugins"; cp "$root"/target/plugins/{api-key,rewrite,router}.wasm "$run/plugins/"
write_config() { # port with_chain instance_mode snapshot
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\naccess_log = false\nworkers = 1\n[plugins]\ndir = "%s"\ninstance = "%s"\nsnapshot = %s\n' "$1" "$run/plugins" "${3:-fresh}" "${4:-true}"
    printf '[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[upstreams.canary]\nservers = ["127.0.0.1:%s"]\n' "$origin_port" "$origin_port"
    printf '[[routes]]\npath = "/"\nupstream = "app"\n'
    if [ "$2" = 1 ]; then cat <<'TOML'
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
  } > "$run/sluice-$1.toml"
}
write_config $plain_port 0; write_config $chain_port 1; write_config $reuse_port 1 reuse; write_config $initper_port 1 fresh false
taskset -c "$PROXY_CPU" "$root/target/release/sluice" run --config "$run/sluice-$plain_port.toml" 2>"$run/plain.log" & plain_pid=$!
taskset -c "$PROXY_CPU" "$root/target/release/sluice" run --config "$run/sluice-$chain_port.toml" 2>"$run/chain.log" & chain_pid=$!
taskset -c "$PROXY_CPU" "$root/target/release/sluice" run --config "$run/sluice-$reuse_port.toml" 2>"$run/reuse.log" & reuse_pid=$!
taskset -c "$PROXY_CPU" "$root/target/release/sluice" run --config "$run/sluice-$initper_port.toml" 2>"$run/initper.log" & initper_pid=$!
ports="$origin_port $plain_port $chain_port $reuse_port $initper_port"; [ $have_nginx = 1 ] && ports="$ports $nginx_port"
for port in $ports; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
curl -sf -o /dev/null -H 'x-api-key: k-123' "http://127.0.0.1:$chain_port/api/" || { echo "chain route not answering"; cat "$run/chain.log"; exit 1; }


cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# target -> "url pid header"
targets="direct plain chain initper reuse"; [ $have_nginx = 1 ] && targets="$targets nginx"
declare -A url pid hdr
url[direct]="http://127.0.0.1:$origin_port/"; pid[direct]=""
url[plain]="http://127.0.0.1:$plain_port/"; pid[plain]=$plain_pid
url[chain]="http://127.0.0.1:$chain_port/api/"; pid[chain]=$chain_pid; hdr[chain]="x-api-key: k-123"
url[reuse]="http://127.0.0.1:$reuse_port/api/"; pid[reuse]=$reuse_pid; hdr[reuse]="x-api-key: k-123"
url[initper]="http://127.0.0.1:$initper_port/api/"; pid[initper]=$initper_pid; hdr[initper]="x-api-key: k-123"
url[nginx]="http://127.0.0.1:$nginx_port/"; pid[nginx]=${nginx_pid:-}
hz=$(getconf CLK_TCK)

for round in $(seq "$ROUNDS"); do
  order=$targets; [ $((round % 2)) = 0 ] && order=$(echo "$targets" | tr ' ' '\n' | tac | tr '\n' ' ')
  for t in $order; do
    p=${pid[$t]:-}; before=0; [ -n "$p" ] && before=$(cpu_ticks "$p")
    args=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)
    [ -n "${hdr[$t]:-}" ] && args+=(-H "${hdr[$t]}")
    taskset -c "$LOAD_CPU" timeout $((DURATION + 30)) wrk "${args[@]}" "${url[$t]}" > "$run/wrk-$t-$round.txt"
    after=0; [ -n "$p" ] && after=$(cpu_ticks "$p")
    echo "$((after - before))" > "$run/cpu-$t-$round.txt"
  done
done

# Per target: median rps, p50, p99, CPU µs/req of the proxy process (none for direct).
printf '%-8s %10s %8s %8s %12s %8s\n' target rps_med p50_ms p99_ms cpu_us/req errors
for t in $targets; do
  for round in $(seq "$ROUNDS"); do
    f="$run/wrk-$t-$round.txt"
    rps=$(awk '/Requests\/sec/ {print $2}' "$f")
    reqs=$(awk '/requests in/ {print $1}' "$f")
    p50=$(awk '$1=="50%" {print $2}' "$f"); p99=$(awk '$1=="99%" {print $2}' "$f")
    errs=$(awk '/Non-2xx|Socket errors/ {gsub(/^ +/, ""); s=s $0 ";"} END {print (s==""?"0":s)}' "$f" | tr -d '\n' | tr ' ' '_')
    ticks=$(cat "$run/cpu-$t-$round.txt")
    echo "$rps $p50 $p99 $reqs $ticks $errs"
  done > "$run/rows-$t.txt"
  python3 - "$run/rows-$t.txt" "$t" "$hz" "${pid[$t]:-}" <<'PY'
import sys, statistics
rows=[l.split(maxsplit=5) for l in open(sys.argv[1]) if l.strip()]
def ms(v):
    return float(v[:-2]) if v.endswith('ms') else float(v[:-2])/1000 if v.endswith('us') else float(v[:-1])*1000
rps=statistics.median(float(r[0]) for r in rows)
p50=statistics.median(ms(r[1]) for r in rows); p99=statistics.median(ms(r[2]) for r in rows)
hz=float(sys.argv[3]); has_pid=sys.argv[4]!=''
cpu=statistics.median(int(r[4])/hz*1e6/int(r[3]) for r in rows) if has_pid else float('nan')
errs=';'.join(sorted(set(r[5].strip() for r in rows)))
print(f"{sys.argv[2]:<8} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>12.1f} {errs:>8}")
PY
done | tee "$run/table.txt"
python3 - "$run/table.txt" <<'PY'
import sys
rows={l.split()[0]: l.split() for l in open(sys.argv[1]) if l.strip()}
for name in ('chain', 'initper', 'reuse'):
    if 'plain' in rows and name in rows:
        plain, chain = float(rows['plain'][4]), float(rows[name][4])
        print(f"{name}: adds {chain-plain:.1f} µs CPU per request over plain ({chain/plain:.2f}x); rps = {float(rows[name][1])/float(rows['plain'][1]):.2f}x plain")
if 'nginx' in rows and 'plain' in rows:
    print(f"plain rps = {float(rows['plain'][1])/float(rows['nginx'][1]):.2f}x nginx; CPU per request = {float(rows['plain'][4])/float(rows['nginx'][4]):.2f}x nginx")
PY
echo; echo "per-hook cost (in-process, one thread):"
"$root/target/release/hook-cost" "$root/target/plugins" 45000
