#!/usr/bin/env bash
# Set-up command 2: the whole test suite (unit, fixture, server and real-browser tests).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$REPO_ROOT/scripts/install-tools.sh"
cd "$REPO_ROOT"
echo "== format"
cargo fmt --all --check
echo "== web app"
"$REPO_ROOT/scripts/build-web.sh"
echo "== tests"
cargo test --workspace --exclude borscht-frontend --no-fail-fast "$@"
