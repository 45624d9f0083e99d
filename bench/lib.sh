# Helpers shared by the bench scripts (sourced; `run` must name the run directory).

# nginx_conf NAME BODY: $run/NAME.conf, one foreground worker, no access log, BODY in `http`.
nginx_conf() {
  mkdir -p "$run/tmp"
  cat >"$run/$1.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $run/$1.pid; error_log $run/$1.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $run/tmp; proxy_temp_path $run/tmp; fastcgi_temp_path $run/tmp; uwsgi_temp_path $run/tmp; scgi_temp_path $run/tmp;
  $2 }
CONF
}

# cpu_ticks PID: user + system CPU of a process, in clock ticks (10 ms).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# median: of the numbers on standard input (space or newline separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
