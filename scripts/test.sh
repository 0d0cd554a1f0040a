#!/usr/bin/env bash
# Set-up command 2: the whole test suite (unit, fixture, server and real-browser tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$REPO_ROOT/scripts/install-tools.sh"
# The nvcc install-tools.sh put there, for the CUDA kernels' compile check.
export BORSCHT_NVCC="${BORSCHT_NVCC:-$(ls "$BORSCHT_TOOLS_DIR"/nvcc13/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)}"
cd "$REPO_ROOT"
echo "== format"
cargo fmt --all --check
echo "== web app"
"$REPO_ROOT/scripts/build-web.sh"
echo "== tests"
cargo test --workspace --exclude borscht-frontend --no-fail-fast "$@"
