#!/usr/bin/env bash
# Rebuilds data/demo (the demo model's training set) from the registry packages named in
# data/demo/CREDITS.md. The result is committed, so training never needs this.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/demo-model/icon-sets.sh"
cd "$REPO_ROOT"
rm -rf data/demo/images data/demo/extra data/demo/more-styles data/demo/streamline data/demo/openclipart data/demo/game-icons data/demo/fluent-3d
prepare() {
  cargo run --release -q -p borscht -- prepare-demo-data --node-modules "$cache/node_modules" --foods "$foods" \
    --mapping data/demo/foods.tsv --size 64 "$@"
}
# Two renderings per style: what the VQGAN learns from and the held-out evaluation reads.
prepare --out data/demo --per-style 2 --seed 0
# Six more per style, with another seed, that only RUDOLPH trains on (more renderings of
# each dish teach it the dish rather than the picture).
prepare --out data/demo/extra --per-style 6 --seed 1
# Four more openly licensed drawing styles, eight renderings each, that only RUDOLPH trains
# on: three styles are little to learn what a dish looks like in a fourth.
prepare --out data/demo/more-styles --styles fluent-emoji,emojione,emojione-monotone,fxemoji --per-style 8 --seed 2
# One more style, streamline-emojis (24 of the dishes), in its own folder so that the sets
# above stay as they were drawn.
prepare --out data/demo/streamline --styles streamline-emojis --per-style 8 --seed 3
# openclipart's drawings (public domain), four renderings of each of the 139 files that
# data/demo/openclipart.tsv names: 41 of the dishes, many drawn by several artists.
prepare --out data/demo/openclipart --styles openclipart --openclipart "$openclipart" --per-style 4 --seed 5
# game-icons' silhouettes (CC-BY-3.0): the 58 icons data/demo/game-icons.tsv names, 45 of
# the dishes, eight renderings each.
prepare --out data/demo/game-icons --styles game-icons --per-style 8 --seed 6
# A raster style, Microsoft's Fluent Emoji 3D (shaded, lit renderings; 61 of the dishes),
# only on request: it did not help the held-out style (models/demo/README.md), so it is
# neither committed (.gitignore) nor in the recipe. Train with it:
#   WITH_FLUENT_3D=1 scripts/prepare-demo-data.sh
#   DEMO_EXTRA_FOLDERS=fluent-3d STEPS=rudolph scripts/train-demo-model.sh
if [ "${WITH_FLUENT_3D:-0}" = 1 ]; then
  prepare --out data/demo/fluent-3d --styles fluent-emoji-3d --per-style 8 --seed 4
fi
