#!/usr/bin/env bash
# Builds py-auth.wasm (a Sluice plugin in Python) into OUT_DIR (default: target/examples).
# Installs componentize-py if it is missing. Usage: examples/python-plugin/build.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/target/examples}"
version=0.25.1
installed="$(python3 -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)"
if [[ "$installed" != "$version" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$version"
fi
# Through the interpreter, not the console script: a fresh install may not be on PATH yet.
componentize_py() {
    python3 -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}
mkdir -p "$out"
cd "$here"
tmp="$(mktemp "$out/.py-auth.wasm.XXXXXX")"
componentize_py -d "$repo/wit" -w plugin componentize app -o "$tmp" >/dev/null
chmod 644 "$tmp"
mv -f "$tmp" "$out/py-auth.wasm"
echo "$out/py-auth.wasm"
