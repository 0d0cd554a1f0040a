# Sourced by the other scripts: where our tools live and how they are pinned.
# shellcheck shell=bash
export BORSCHT_TOOLS_DIR="${BORSCHT_TOOLS_DIR:-$HOME/.cache/borscht-tools}"
export PATH="$HOME/.cargo/bin:$BORSCHT_TOOLS_DIR/node_modules/.bin:$PATH"
# EfficientNet-Lite0's weights (install-tools.sh), for train-vqgan --perceptual and its tests.
export BORSCHT_EFFICIENTNET_LITE0="${BORSCHT_EFFICIENTNET_LITE0:-$BORSCHT_TOOLS_DIR/efficientnet-lite0/efficientnet-lite0.safetensors}"
# Trunk must never look for updates or download tools (no network here).
export TRUNK_SKIP_VERSION_CHECK=true

TRUNK_VERSION=0.21.14
BINARYEN_VERSION=132.0.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The wasm-bindgen CLI must equal the crate version locked in Cargo.lock.
WASM_BINDGEN_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO_ROOT/Cargo.lock")"
export REPO_ROOT TRUNK_VERSION BINARYEN_VERSION WASM_BINDGEN_VERSION
