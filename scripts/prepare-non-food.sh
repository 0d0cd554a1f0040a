#!/usr/bin/env bash
# Rebuilds data/non-food (photos of anything but food, CC0 or public domain) from the
# scikit-image wheel on PyPI. The result is committed: calibration and the tests never need
# this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cache="${BORSCHT_DEMO_CACHE:-$HOME/.cache/borscht-demo}/skimage"
if [ ! -f "$cache/skimage/data/astronaut.png" ]; then
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    scikit-image==0.26.0 -d "$cache/pip"
  (cd "$cache" && python3 -m zipfile -e "$cache"/pip/scikit_image-0.26.0-*.whl .)
fi
cd "$REPO_ROOT"
rm -rf data/non-food
cargo run --release -q -p borscht -- prepare-non-food --skimage-data "$cache/skimage/data" --out data/non-food
