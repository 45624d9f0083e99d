#!/usr/bin/env bash
# Builds the guest (WebAssembly component) workspaces and copies the results to
#   target/plugins/NAME.wasm   shipped plugins (plugins/)
#   target/fixtures/NAME.wasm  test-only plugins (tests/fixtures/)
# Usage: scripts/build-guests.sh [plugins|fixtures|all]   (default: all)
# Runs from any directory; safe to run again (cargo rebuilds only what changed).
set -euo pipefail

what="${1:-all}"
case "$what" in
plugins | fixtures | all) ;;
*)
    echo "usage: $0 [plugins|fixtures|all]" >&2
    exit 2
    ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="$repo/target"
triple=wasm32-wasip2
stack_flag="-C link-arg=-zstack-size=65536"

if ! rustup target list --installed | grep -qx "$triple"; then
    rustup target add "$triple"
fi

# RUSTFLAGS from the environment replaces the per-target rustflags in each workspace's
# .cargo/config.toml; keep the stack-size flag in that case.
if [[ -n "${RUSTFLAGS:-}" && "$RUSTFLAGS" != *"-zstack-size="* ]]; then
    export RUSTFLAGS="$RUSTFLAGS $stack_flag"
fi

# build_workspace DIR OUT_SUBDIR: builds DIR's members, copies each to target/OUT_SUBDIR.
build_workspace() {
    local dir="$repo/$1" out="$target_dir/$2"
    # cd so that DIR/.cargo/config.toml (stack size) applies.
    (cd "$dir" && cargo build --release --target "$triple" --target-dir "$target_dir")

    mkdir -p "$out"
    local member lib src tmp
    # Members are the directory names listed in the workspace manifest.
    for member in $(sed -n '/^members *= *\[/,/\]/p' "$dir/Cargo.toml" | grep -o '"[^"]*"' | tr -d '"'); do
        lib="${member//-/_}"
        src="$target_dir/$triple/release/$lib.wasm"
        if [[ ! -f "$src" ]]; then
            echo "error: $src was not built" >&2
            exit 1
        fi
        # Unchanged files are left alone (a watcher would see a needless reload);
        # others are copied then renamed, so a watcher never sees a half-written file.
        if ! cmp -s "$src" "$out/$member.wasm"; then
            tmp="$(mktemp "$out/.$member.wasm.XXXXXX")"
            cp "$src" "$tmp"
            chmod 644 "$tmp"
            mv -f "$tmp" "$out/$member.wasm"
        fi
        echo "$out/$member.wasm"
    done
}

if [[ "$what" == plugins || "$what" == all ]]; then
    build_workspace plugins plugins
fi
if [[ "$what" == fixtures || "$what" == all ]]; then
    build_workspace tests/fixtures fixtures
fi
