#!/usr/bin/env bash
# Calibrates the demo model's answers (models/demo/calibration.json) and measures them on
# pictures kept apart, for the model card:
# - food it never trained on: Microsoft's Fluent Emoji 3D renderings of its dishes
#   (data/demo/fluent-3d, drawn by `WITH_FLUENT_3D=1 scripts/prepare-demo-data.sh`, not
#   committed), the even renderings to calibrate, the odd ones to measure;
# - non-food: data/non-food/calibration and data/non-food/test (CC0 photos, 12 views
#   each), and generated noise, blotches and flat colours (other seeds for the test).
# Writes runs/calibration/ and models/demo/calibration.json, models/demo/honesty-metrics.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
if [ ! -f data/demo/fluent-3d/food.csv ]; then
  WITH_FLUENT_3D=1 scripts/prepare-demo-data.sh
fi
out=runs/calibration
mkdir -p "$out"
header=$(head -1 data/demo/fluent-3d/food.csv)
{ echo "$header"; grep -E -- '-[0246]\.png$' data/demo/fluent-3d/food.csv; } >"$out/calibration.csv"
{ echo "$header"; grep -E -- '-[1357]\.png$' data/demo/fluent-3d/food.csv; } >"$out/test.csv"
cargo build --release -q -p borscht
borscht=target/release/borscht
# A new calibration is fitted on the model's own answers, not on the old one's verdicts.
rm -f models/demo/calibration.json
"$borscht" evaluate --csv "$out/calibration.csv" --images data/demo/fluent-3d --non-food data/non-food/calibration \
  --views 12 --noise 10 --seed 1 --calibrate --report "$out/calibration-report.json" | tee "$out/calibration-summary.json"
"$borscht" evaluate --csv "$out/test.csv" --images data/demo/fluent-3d --non-food data/non-food/test \
  --views 12 --noise 10 --seed 2 --report "$out/test-report.json" | tee models/demo/honesty-metrics.json
