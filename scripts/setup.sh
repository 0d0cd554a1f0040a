#!/usr/bin/env bash
# Set-up command 1: install every tool, build everything, start Borscht on
# http://127.0.0.1:8080 (override with BORSCHT_ADDR=0.0.0.0:8080 for phones on your network).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$REPO_ROOT/scripts/install-tools.sh"
"$REPO_ROOT/scripts/build-web.sh"
cd "$REPO_ROOT"
exec cargo run --release -p borscht -- serve --web-dir frontend/dist "$@"
