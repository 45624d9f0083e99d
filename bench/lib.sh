# Helpers shared by the bench scripts (sourced; `run` must name the run directory).

# nginx_conf NAME BODY: $run/NAME.conf, one foreground worker, no access log, BODY in `http`.
nginx_conf() {
  mkdir -p "$run/tmp"
  cat >"$run/$1.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $run/$1.pid; error_log $run/$1.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s; client_max_body_size 4m;
  client_body_temp_path $run/tmp; proxy_temp_path $run/tmp; fastcgi_temp_path $run/tmp; uwsgi_temp_path $run/tmp; scgi_temp_path $run/tmp;
  $2 }
CONF
}

# nginx_proxy_conf PORT ORIGIN_PORT: $run/proxy.conf, nginx as the reference proxy: the
# forwarding headers an app expects, a keep-alive upstream pool and a buffered access log
# in the combined format plus the request time (what Sluice's default line carries).
nginx_proxy_conf() {
  nginx_conf proxy "log_format p '\$remote_addr - - [\$time_local] \"\$request\" \$status \$body_bytes_sent \"\$http_referer\" \"\$http_user_agent\" \$request_time';
  upstream origin { server 127.0.0.1:$2; keepalive 256; }
  server { listen 127.0.0.1:$1; access_log $run/nginx-access.log p buffer=64k flush=1s; location / {
    proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }"
}

# cpu_ticks PID: user + system CPU of a process, in clock ticks (10 ms).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# user_ticks PID: user-space CPU of a process alone, in clock ticks.
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }

# median: of the numbers on standard input (space or newline separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# start_sluice NAME BINARY PORT ORIGIN_PORT SERVER_LINES: $run/NAME.toml (one worker, one
# route to the origin, SERVER_LINES added to `[server]`), run pinned to PROXY_CPU in the
# background; `$!` is its PID.
start_sluice() {
  mkdir -p "$run/$1-plugins"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n%s\n[plugins]\ndir = "%s/%s-plugins"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\npath = "/"\nupstream = "app"\n' \
    "$3" "$5" "$run" "$1" "$4" >"$run/$1.toml"
  taskset -c "$PROXY_CPU" "$2" run --config "$run/$1.toml" 2>>"$run/$1.err" &
}

# wait_ports PORT...: until each answers `GET /`, at most 10 s each.
wait_ports() {
  for port in "$@"; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  done
}

# measure_row ROW [WRK_ARGS...]: one wrk run (DURATION s, CONNS connections, on
# LOAD_CPU) against URL_PATH (default `/`) on row_port[ROW]; appends its req/s, p99 (ms) and the CPU µs
# per request of row_pid[ROW] to rps[ROW], p99[ROW] and cpu[ROW] (associative arrays
# the caller declares). Warns when the row answered anything but 2xx.
measure_row() {
  local row=$1; shift
  local pid=${row_pid[$row]} before after out reqs
  before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" timeout $((DURATION + 10)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
    "$@" "http://127.0.0.1:${row_port[$row]}${URL_PATH:-/}")
  after=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  if grep -q 'Non-2xx' <<<"$out"; then echo "row $row answered non-2xx: $(grep Non-2xx <<<"$out")" >&2; fi
  rps[$row]+=" $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  p99[$row]+=" $(awk '$1 == "99%" {v=$2; if (v ~ /us$/) v=v/1000; else if (v ~ /ms$/) v=v+0; else if (v ~ /s$/) v=v*1000; print v}' <<<"$out")"
  cpu[$row]+=" $(awk -v t=$((after - before)) -v r="$reqs" 'BEGIN {printf "%.2f", t * 10000 / r}')"
}

# measure_rounds [WRK_ARGS...]: ROUNDS rounds of measure_row over every row of $rows,
# the order reversed every other round (so no row always runs first).
measure_rounds() {
  local i r order
  for i in $(seq "$ROUNDS"); do
    order=$rows; [ $((i % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$rows" | tac | tr '\n' ' ')
    for r in $order; do measure_row "$r" "$@"; done
  done
}

# print_rows BASE_ROW: the median req/s, p99 and CPU per request of every row, and its
# CPU as a ratio to BASE_ROW's.
print_rows() {
  local base c r
  base=$(median <<<"${cpu[$1]}")
  printf '%-13s %10s %8s %12s %15s\n' row 'req/s' 'p99 ms' 'cpu us/req' "cpu/$1"
  for r in $rows; do
    c=$(median <<<"${cpu[$r]}")
    printf '%-13s %10s %8s %12s %15s\n' "$r" "$(median <<<"${rps[$r]}")" "$(median <<<"${p99[$r]}")" "$c" "$(awk -v c="$c" -v n="$base" 'BEGIN {printf "%.2f", c / n}')"
  done
}
