#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds the
# guest plugins and fixtures, the proxy, then runs every test. Safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== format"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
cargo fmt --all -- --check

echo "== shell scripts parse (the deployment and benchmark ones are too long to run here)"
for script in scripts/*.sh bench/*.sh examples/*/build.sh .ci/run; do bash -n "$script"; done

echo "== guest plugins and test fixtures (wasm32-wasip2)"
"$root/scripts/build-guests.sh" all

echo "== example plugins in Python and JavaScript"
"$root/examples/python-plugin/build.sh"
"$root/examples/js-plugin/build.sh"

echo "== SDK and plugin unit tests (native)"
cargo test --manifest-path sdk/Cargo.toml --target-dir "$root/target" -q
cargo test --manifest-path plugins/Cargo.toml --target-dir "$root/target" -q

echo "== proxy build"
cargo build --release --workspace --bins

echo "== host unit tests and end-to-end tests"
# The TLS tests drive `openssl s_client` as an old or CBC-only client.
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
# The state tests start their own redis-server (ephemeral port, no persistence).
command -v redis-server >/dev/null || [ -x /usr/sbin/redis-server ] || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}
# The totp-gate test renders its forms with headless Chromium.
command -v chromium >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
# The jwt, basic-auth and totp-gate tests make their tokens, hashes and codes with
# independent implementations.
python3 -c 'import jwt, cryptography, bcrypt, argon2, pyotp' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check \
        "pyjwt[crypto]==2.10.1" "bcrypt==4.2.1" "argon2-cffi==23.1.0" "pyotp==2.9.0"
cargo test --release --workspace

echo "== lint"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo clippy --release --workspace --all-targets -- -D warnings

echo "all tests passed"
