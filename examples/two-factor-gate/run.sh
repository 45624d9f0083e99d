#!/usr/bin/env bash
# An internal web app behind a two-factor gate: the demo origin on 127.0.0.1:9101,
# Sluice in front with TLS on https://localhost:8443 (http://localhost:8080 redirects
# there) and the totp-gate plugin asking for a password and a one-time code.
# Generates a demo user, its TOTP secret, a session secret and a self-signed
# certificate into .run/ (kept between runs). Ctrl-C stops everything.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
run="$here/.run"
mkdir -p "$run/plugins"

python3 -c 'import argon2, pyotp' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check "argon2-cffi==23.1.0" "pyotp==2.9.0"
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

"$root/scripts/build-guests.sh" plugins >/dev/null
cargo build --release -p sluice -p echo-origin --manifest-path "$root/Cargo.toml"
cp "$root/target/plugins/totp-gate.wasm" "$run/plugins/.totp-gate.wasm.tmp"
mv "$run/plugins/.totp-gate.wasm.tmp" "$run/plugins/totp-gate.wasm"

# The demo user, made once: a random password and TOTP secret.
if [[ ! -f "$run/user.json" ]]; then
    python3 - "$run/user.json" <<'PY'
import json, secrets, sys
import argon2, pyotp
password = secrets.token_urlsafe(12)
user = {
    "name": "demo",
    "password": password,
    "password_hash": argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(password),
    "totp_secret": pyotp.random_base32(32),
}
with open(sys.argv[1], "w") as f:
    json.dump(user, f)
PY
    chmod 600 "$run/user.json"
fi
[[ -f "$run/session.secret" ]] || { openssl rand -base64 32 >"$run/session.secret"; chmod 600 "$run/session.secret"; }
if [[ ! -f "$run/cert.pem" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null
    chmod 600 "$run/key.pem"
fi

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$run/user.json" "$1"; }
cat >"$run/sluice.toml" <<TOML
# Written by examples/two-factor-gate/run.sh.
[server]
listen = "127.0.0.1:8080"
tls_listen = "127.0.0.1:8443"
https_redirect = true

[[certificates]]
cert = "cert.pem"
key = "key.pem"

[plugins]
dir = "plugins"

[upstreams.intranet]
servers = ["127.0.0.1:9101"]

[[routes]]
path = "/"
upstream = "intranet"

  [[routes.plugins]]
  name = "totp-gate"
  config = { session_secret = "$(cat "$run/session.secret")", users = [ { name = "$(field name)", password_hash = "$(field password_hash)", totp_secret = "$(field totp_secret)" } ] }
TOML

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
"$root/target/release/echo-origin" 127.0.0.1:9101=intranet &
pids+=($!)

secret="$(field totp_secret)"
cat <<MSG

Internal app behind a two-factor gate: https://localhost:8443/  (self-signed certificate)

  user name:    $(field name)
  password:     $(field password)
  TOTP secret:  $secret
  otpauth URI:  otpauth://totp/Sluice:demo?secret=$secret&issuer=Sluice

Add the secret to an authenticator app (or print the current code with
  python3 -c 'import pyotp; print(pyotp.TOTP("$secret").now())'
), open the address, accept the certificate, sign in with the password, then the
code. The app shows the request it received: x-authenticated-user is "demo".
Sign out with:  curl -sk -X POST https://localhost:8443/.sluice/login/logout -b 'sluice_session=...'

MSG
"$root/target/release/sluice" run --config "$run/sluice.toml" &
pids+=($!)
wait "${pids[1]}"
