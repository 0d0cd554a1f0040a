#!/usr/bin/env bash
# How well each VQGAN's codes tell dishes apart across drawing styles: every training
# picture of the demo data (the recipe's folders and DEMO_EXTRA_FOLDERS) encoded, then each
# style held out in turn and its pictures matched to their nearest other-style picture by
# bag of codes (scripts/demo-model/baselines.py). Prints one line per VQGAN and style, and
# each VQGAN's mean over the styles.
#
#   scripts/demo-model/compare-vqgans.sh models/demo/vqgan runs/vq/perceptual
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
source scripts/demo-model/recipe.sh
BIN=${BORSCHT_BIN:-target/release/borscht}
PYTHON=${PYTHON:-$BORSCHT_TOOLS_DIR/reference/bin/python}  # numpy and Pillow (scripts/bench-cpu.sh makes it)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
demo_all_csv > "$work/all.csv"
styles=$(tail -n +2 "$work/all.csv" | sed -E 's|.*images/([^/]+)/.*|\1|' | sort -u)
tail -n +2 "$work/all.csv" | cut -d, -f7 | sed 's|^|data/demo/|' > "$work/paths.txt"
for vqgan in "$@"; do
  # shellcheck disable=SC2046
  "$BIN" vqgan encode --vqgan "$vqgan" --size 64 --image $(cat "$work/paths.txt") --out "$work/codes.npy" > /dev/null
  total=0 count=0
  for style in $styles; do
    head -1 "$work/all.csv" > "$work/held.csv"
    grep "images/$style/" "$work/all.csv" >> "$work/held.csv"
    grep -v "images/$style/" "$work/all.csv" > "$work/train.csv"
    share=$("$PYTHON" scripts/demo-model/baselines.py "$work/all.csv" "$work/train.csv" "$work/held.csv" "$work/codes.npy" --codes-only |
      sed -nE 's/^1-nearest neighbour, bag of image codes: ([0-9.]+)%$/\1/p')
    echo "$vqgan $style $share%"
    total=$(echo "$total + $share" | bc -l) count=$((count + 1))
  done
  printf '%s mean over %d styles: %.1f%%\n' "$vqgan" "$count" "$(echo "$total / $count" | bc -l)"
done
