#!/usr/bin/env bash
# Trains the bundled demo model from data/demo with our own commands, end to end:
# BPE vocabulary -> VQGAN -> RUDOLPH without one of the four icon styles, evaluated on it ->
# RUDOLPH on all styles, evaluated -> models/demo, text-to-image samples. About 100 minutes
# on a 2-core CPU.
#
#   scripts/train-demo-model.sh                 # everything
#   HELD_OUT=twemoji scripts/train-demo-model.sh
#   STEPS="rudolph" scripts/train-demo-model.sh # reuse runs/demo/{bpe.model,vqgan}
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

BIN=${BORSCHT_BIN:-target/release/borscht}
RUNS=${RUNS:-runs/demo}
HELD_OUT=${HELD_OUT:-noto}
EPOCHS=${EPOCHS:-30}
# Augmented renderings per picture (`train --augment`); the extra renderings in
# data/demo/extra do this job better (models/demo/README.md, "What was tried").
AUGMENT=${AUGMENT:-0}
STEPS=${STEPS:-"tokenizer vqgan rudolph"}
CONFIGS=scripts/demo-model
mkdir -p "$RUNS"
[ -x "$BIN" ] || cargo build --release -p borscht

has_step() { [[ " $STEPS " == *" $1 "* ]]; }

if has_step tokenizer; then
  # The captions exactly as training writes them (the article's format).
  tail -n +2 data/demo/food.csv | while IFS=, read -r _ protein fat carbs kcal name _; do
    echo "блюдо: $name; белков: $protein; жиров: $fat; углеводов: $carbs; ккал: $kcal;"
  done > "$RUNS/captions.txt"
  "$BIN" tokenizer-train --corpus "$RUNS/captions.txt" --vocab-size 512 --out "$RUNS/bpe.model"
fi

if has_step vqgan; then
  # Unsupervised: it sees every picture of data/demo/images (no labels), the held-out
  # style included; not data/demo/extra, which only RUDOLPH reads.
  # Nearest-code quantiser: sharp codes in a CPU-sized training (see train/vqgan.rs).
  # candle's matrix products may use both cores here (the default on 2 cores is one).
  CANDLE_NUM_THREADS=2 "$BIN" train-vqgan --data data/demo/images --out "$RUNS/vqgan" --config "$CONFIGS/vqgan.json" \
    --quantizer nearest --epochs 36 --batch-size 8 --seed 7
fi

source "$CONFIGS/recipe.sh"
train_rudolph() { # csv out
  demo_recipe "$RUNS/bpe.model" "$RUNS/vqgan" "$EPOCHS"
  "$BIN" train --csv "$1" --images data/demo --out "$2" "${recipe[@]}" --augment "$AUGMENT"
}

if has_step rudolph; then
  demo_all_csv > "$RUNS/all.csv"
  # Held out: the style's pictures (not their extra renderings, to compare with earlier runs).
  head -1 data/demo/food.csv > "$RUNS/held-out.csv"
  grep ",images/$HELD_OUT/" data/demo/food.csv >> "$RUNS/held-out.csv"
  grep -v "images/$HELD_OUT/" "$RUNS/all.csv" > "$RUNS/without-held-out.csv"
  # Both runs at once, one core each (2-core machines): same total work, less waiting.
  RAYON_NUM_THREADS=1 train_rudolph "$RUNS/without-held-out.csv" "$RUNS/held-out-model" > "$RUNS/held-out-train.log" 2>&1 &
  held_out=$!
  RAYON_NUM_THREADS=1 train_rudolph "$RUNS/all.csv" "$RUNS/full-model" > "$RUNS/full-train.log" 2>&1
  wait "$held_out"
  "$BIN" evaluate --model "$RUNS/held-out-model" --csv "$RUNS/held-out.csv" --images data/demo \
    --report "$RUNS/held-out-report.json" | tee "$RUNS/held-out-metrics.json"
  "$BIN" evaluate --model "$RUNS/full-model" --csv data/demo/food.csv --images data/demo \
    --report "$RUNS/full-report.json" | tee "$RUNS/full-metrics.json"

  # Ship the model directory (weights, tokenizer, VQGAN) without the training state.
  rm -rf models/demo.new && mkdir -p models/demo.new/vqgan
  cp "$RUNS/full-model/"{config.json,model.safetensors,bpe.model,dishes.json} models/demo.new/
  cp "$RUNS/full-model/vqgan/"{config.json,model.safetensors} models/demo.new/vqgan/
  cp "$RUNS/held-out-metrics.json" "$RUNS/full-metrics.json" models/demo.new/
  [ -f models/demo/README.md ] && cp models/demo/README.md models/demo.new/
  # The VQGAN's last reconstruction grid (originals above their codes' pictures), for the card.
  last_grid=$(ls "$RUNS/vqgan/reconstructions/"*.png 2>/dev/null | tail -1)
  [ -n "$last_grid" ] && cp "$last_grid" models/demo.new/vqgan-reconstructions.png
  rm -rf models/demo && mv models/demo.new models/demo

  # Text-to-image samples for the card: four drawings of each of four dishes, one row each.
  mkdir -p "$RUNS/samples"
  for dish in пицца банан помидор кукуруза; do
    "$BIN" generate --model models/demo --text "$dish" --n 4 --seed 1 --out "$RUNS/samples/$dish" --json
  done > "$RUNS/samples/generated.jsonl"
  python3 scripts/codes-to-npy.py "$RUNS/samples/generated.jsonl" "$RUNS/samples/codes.npy"
  "$BIN" vqgan decode --vqgan models/demo/vqgan --codes "$RUNS/samples/codes.npy" \
    --png models/demo/text-to-image-samples.png --columns 4
  # How sure its answers are: calibrated on food it never saw and on non-food photos.
  scripts/calibrate-demo-model.sh
  echo "models/demo updated; refresh the numbers in models/demo/README.md"
fi
