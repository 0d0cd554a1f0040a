#!/usr/bin/env bash
# Teaches the demo model ten dishes it does not know (data/teaching/new-dishes.tsv), through
# a running `borscht serve` as an operator would: users' examples, a fine-tune from the
# admin routes while recognitions are served, promotion. Prints the report docs/teaching.md
# quotes. Not part of the test suite (minutes of CPU).
#   SETTINGS='{"epochs":4,"lr":5e-4,"freeze":"image-embeddings","include_base":true}' scripts/measure-teaching.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$REPO_ROOT/scripts/demo-model/icon-sets.sh"
cd "$REPO_ROOT"
WORK="${WORK:-/tmp/borscht-teaching}"
DEFAULT_SETTINGS='{"epochs":4,"lr":5e-4,"batch_size":10,"freeze":"image-embeddings","include_base":true,"val_fraction":0.1}'
SETTINGS="${SETTINGS:-$DEFAULT_SETTINGS}"
PORT="${PORT:-8091}"
cargo build --release -q -p borscht
BIN=target/release/borscht
rm -rf "$WORK" && mkdir -p "$WORK"
draw() {
  "$BIN" prepare-demo-data --node-modules "$cache/node_modules" --foods "$foods" \
    --mapping data/teaching/new-dishes.tsv --size 64 --out "$WORK/$1" --styles "$2" --per-style "$3" --seed "$4"
}
# What the users send (ten of each dish are sent), and pictures the run never sees: other
# renderings of the same four styles, and two styles it is not taught.
draw teach twemoji,noto,fluent-emoji-flat,fluent-emoji-high-contrast 3 11
draw test-same twemoji,noto,fluent-emoji-flat,fluent-emoji-high-contrast 1 12
draw test-new emojione,fxemoji 2 13
TOKEN="measure-$RANDOM$RANDOM"
"$BIN" serve --model models/demo --addr "127.0.0.1:$PORT" --dataset "$WORK/dataset" --models-dir "$WORK/models" \
  --admin-token "$TOKEN" --finetune-base-csv data/demo/food.csv --api-requests-per-minute 0 \
  --web-dir "$WORK/no-web-app" 2> "$WORK/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$PORT/readyz" > /dev/null; do sleep 0.5; done
python3 scripts/measure-teaching.py --base "http://127.0.0.1:$PORT" --token "$TOKEN" --data "$WORK" \
  --known data/demo/food.csv --settings "$SETTINGS" --out "$WORK/report.json" \
  --label "$(nproc)-core $(uname -m) CPU, $(date -u +%Y-%m-%d)"
