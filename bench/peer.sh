#!/usr/bin/env bash
# Runs Sluice as the extra target of a peer benchmark harness that sets
# BENCH_ORIGIN (host:port), BENCH_WORKERS and BENCH_RUN (its run directory, with the
# harness's TLS pair in tls/cert.pem and tls/key.pem).
#
#   bench/peer.sh BINARY HTTP_PORT [TLS_PORT]
#
# The default config (access log on, to a file in BENCH_RUN), one route to the
# origin, and with TLS_PORT a TLS listener (HTTP/2 and HTTP/1.1 by ALPN) serving the
# harness's certificate. SLUICE_CACHE=1 gives the route a response cache that keeps
# the origin's responses an hour (beside the harness's `nginx-cache` peer).
set -euo pipefail
bin=$1; port=$2; tls_port=${3:-}
run=${BENCH_RUN:?BENCH_RUN is not set}
mkdir -p "$run/sluice-plugins"
{
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = %s\naccess_log_path = "%s/sluice-access.log"\n' \
    "$port" "${BENCH_WORKERS:-1}" "$run"
  if [ -n "$tls_port" ]; then
    printf 'tls_listen = "127.0.0.1:%s"\n[[certificates]]\ncert = "%s/tls/cert.pem"\nkey = "%s/tls/key.pem"\n' \
      "$tls_port" "$run" "$run"
  fi
  printf '[plugins]\ndir = "%s/sluice-plugins"\n' "$run"
  printf '[upstreams.app]\nservers = ["%s"]\n[[routes]]\npath = "/"\nupstream = "app"\n' "${BENCH_ORIGIN:?}"
  if [ "${SLUICE_CACHE:-0}" = 1 ]; then
    printf 'cache = { zone = "main" }\n[cache.zones.main]\nmax_mib = 64\ndefault_ttl_s = 3600\n'
  fi
} >"$run/sluice.toml"
exec "$bin" run --config "$run/sluice.toml" 2>>"$run/sluice-stderr.log"
