#!/usr/bin/env bash
# Builds the web app (release, wasm-opt -Oz) into frontend/dist with Trunk.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
trunk_pin=$(sed -n 's/^wasm_bindgen = "\(.*\)"/\1/p' frontend/Trunk.toml)
if [ "$trunk_pin" != "$WASM_BINDGEN_VERSION" ]; then
  echo "frontend/Trunk.toml pins wasm-bindgen $trunk_pin but Cargo.lock has $WASM_BINDGEN_VERSION: make them equal" >&2
  exit 1
fi
# Trunk runs cargo offline: make sure every crate is in the local registry first.
cargo fetch --target wasm32-unknown-unknown >/dev/null
cd frontend
trunk build --release
wasm=$(ls dist/*_bg.wasm)
echo "web app built: $(du -k "$wasm" | cut -f1) KiB wasm, $(($(gzip -9 -c "$wasm" | wc -c) / 1024)) KiB gzipped"
