#!/usr/bin/env bash
# What the auth plugins cost per request under load, side by side:
#
#   bench/auth.sh [BINARY]             # 3 alternating rounds x 5 s, 64 connections
#
# Rows (each a Sluice process, one worker pinned to CPU 1; wrk and the nginx origin on
# CPU 0; no access logs; every request carries a valid credential, so each passes):
#   plain                  a route without plugins
#   jwt-rs256-{fresh,reuse}  the jwt plugin, an RS256 token against an inline JWKS
#   jwt-es256-{fresh,reuse}  the same with an ES256 token
#   waf-{fresh,reuse}        the waf plugin (built-in rules) on the same GET
#   gate-{fresh,reuse}       totp-gate with a signed-in session (memory state)
# Tokens and keys from tests/tools/jwt_tokens.py; the gate's session from a real sign-in
# (tests/tools/password_hashes.py, pyotp) on each row. basic-auth is left out: every
# request is a password hash (~25-70 ms), which `hook-cost` measures.
# Prints median req/s, p99, CPU µs per request of the proxy and the ratio to plain.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin=$(realpath "${1:-$root/target/release/sluice}")
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}
BASE_PORT=${BASE_PORT:-19580}; PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
python3 -c 'import jwt, argon2, bcrypt, pyotp' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check "pyjwt[crypto]==2.10.1" "bcrypt==4.2.1" "argon2-cffi==23.1.0" "pyotp==2.9.0"
for p in jwt waf totp-gate; do
  [ -f "$root/target/plugins/$p.wasm" ] || "$root/scripts/build-guests.sh" plugins >/dev/null
done

run=$(mktemp -d); trap 'for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$run"' EXIT
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
origin=$BASE_PORT; port=$((BASE_PORT+1))
nginx_conf origin "server { listen 127.0.0.1:$origin; location / { return 200 \"hello\\n\"; } }"
taskset -c "$LOAD_CPU" nginx -c "$run/origin.conf" &

python3 "$root/tests/tools/jwt_tokens.py" https://idp.example >"$run/jwt.json"
python3 "$root/tests/tools/password_hashes.py" >"$run/users.json"
secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
j() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
jwks_toml=$(python3 - "$run/jwt.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["jwks"]
def toml(v):
    if isinstance(v, dict): return "{ " + ", ".join(f'"{k}" = {toml(x)}' for k, x in v.items()) + " }"
    if isinstance(v, list): return "[" + ", ".join(toml(x) for x in v) + "]"
    return json.dumps(v)
print(toml(d))
PY
)
hash=$(j "$run/users.json" 'd["bob"][1]'); password=$(j "$run/users.json" 'd["bob"][0]')

declare -A row_port row_pid
rows="plain jwt-rs256-fresh jwt-rs256-reuse jwt-es256-fresh jwt-es256-reuse waf-fresh waf-reuse gate-fresh gate-reuse"
# sluice_row NAME INSTANCE PLUGIN_TOML
sluice_row() {
  mkdir -p "$run/$1-plugins"
  cp "$root/target/plugins/jwt.wasm" "$root/target/plugins/waf.wasm" "$root/target/plugins/totp-gate.wasm" "$run/$1-plugins/"
  printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\naccess_log = false\n[plugins]\ndir = "%s/%s-plugins"\ncache_dir = "%s/cache"\ninstance = "%s"\n[upstreams.app]\nservers = ["127.0.0.1:%s"]\n[[routes]]\nname = "api"\npath = "/"\nupstream = "app"\n%s\n' \
    "$port" "$run" "$1" "$run" "$2" "$origin" "$3" >"$run/$1.toml"
  taskset -c "$PROXY_CPU" "$bin" run --config "$run/$1.toml" 2>>"$run/$1.err" &
  row_pid[$1]=$!; row_port[$1]=$port; port=$((port+1))
}
jwt="[[routes.plugins]]
name = \"jwt\"
config = { algorithms = [\"RS256\", \"ES256\"], jwks = $jwks_toml, issuer = \"https://idp.example\", audience = \"api\", claims_to_headers = { sub = \"x-user-id\" } }"
waf='[[routes.plugins]]
name = "waf"'
gate="[[routes.plugins]]
name = \"totp-gate\"
config = { session_secret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\", users = [ { name = \"bob\", password_hash = '$hash', totp_secret = \"$secret\" } ] }"
sluice_row plain fresh ""
for mode in fresh reuse; do
  sluice_row "jwt-rs256-$mode" "$mode" "$jwt"
  sluice_row "jwt-es256-$mode" "$mode" "$jwt"
  sluice_row "waf-$mode" "$mode" "$waf"
  sluice_row "gate-$mode" "$mode" "$gate"
done
for r in $rows; do
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:${row_port[$r]}/" && break; sleep 0.1; done
done

# Each row's credential: a token, or a session from signing in on that proxy.
rs=$(j "$run/jwt.json" 'd["tokens"]["valid_RS256"]'); es=$(j "$run/jwt.json" 'd["tokens"]["valid_ES256"]')
for r in $rows; do
  case $r in
    jwt-rs256-*) printf 'wrk.headers["authorization"] = "Bearer %s"\n' "$rs" >"$run/$r.lua" ;;
    jwt-es256-*) printf 'wrk.headers["authorization"] = "Bearer %s"\n' "$es" >"$run/$r.lua" ;;
    gate-*)
      base="http://127.0.0.1:${row_port[$r]}/.sluice/login"
      curl -s -c "$run/$r.jar" -o /dev/null --data-urlencode username=bob --data-urlencode "password=$password" --data-urlencode next=/ "$base"
      code=$(python3 -c "import pyotp; print(pyotp.TOTP('$secret').now())")
      curl -s -b "$run/$r.jar" -c "$run/$r.jar" -o /dev/null --data-urlencode "code=$code" --data-urlencode next=/ "$base/code"
      session=$(awk '$6 == "sluice_session" {print $7}' "$run/$r.jar")
      [ -n "$session" ] || { echo "no session on $r" >&2; exit 1; }
      printf 'wrk.headers["cookie"] = "sluice_session=%s"\n' "$session" >"$run/$r.lua" ;;
    *) printf '\n' >"$run/$r.lua" ;;
  esac
done

declare -A rps p99 cpu
for i in $(seq "$ROUNDS"); do
  order=$rows; [ $((i % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$rows" | tac | tr '\n' ' ')
  for r in $order; do measure_row "$r" -s "$run/$r.lua"; done
done
print_rows plain
echo "binary = $bin"
