#!/usr/bin/env bash
# Held-out runs of the demo model's recipe (scripts/train-demo-model.sh: RUDOLPH trained
# without the noto style, then evaluated on its 124 pictures) on a GPU machine, several side
# by side: recipe experiments that take 45 minutes each on our 2-core CPU. Carry the CUDA
# build (see gpu-check.sh) and run from the repository root:
#
#   run(command="VARIANTS='base;noise30 --code-noise 0.3' bash scripts/gpu-train-demo.sh",
#       carry=["target/cuda/borscht.xz"])
#
# VARIANTS: `;`-separated, each a name and the `borscht train` options it adds to the
# recipe. DEADLINE (seconds, default 470): runs still training then are stopped, so that
# the call returns what finished. Writes each run's metrics and logs into
# $OUT/gpu-train.tar.gz and prints a summary line per run. DEVICE=cpu EPOCHS=1 tries it here.
set -uo pipefail
source scripts/gpu-env.sh
gpu_work_dirs /tmp/gpu-train runs/gpu-train
deadline=$(( $(date +%s) + ${DEADLINE:-470} ))

# The same CSVs and recipe as train-demo-model.sh.
source scripts/demo-model/recipe.sh
demo_all_csv | grep -v "images/noto/" > "$out/without-held-out.csv"
{ head -1 data/demo/food.csv; grep ",images/noto/" data/demo/food.csv; } > "$out/held-out.csv"

run_variant() { # name options...
  local name=$1; shift
  local start; start=$(date +%s)
  local recipe; demo_recipe models/demo/bpe.model models/demo/vqgan "${EPOCHS:-30}"
  "$bin" train --device "${DEVICE:-cuda}" --csv "$out/without-held-out.csv" --images data/demo --out "$out/$name" \
    "${recipe[@]}" --validate-every 0 "$@" >"$out/$name.train.log" 2>&1
  echo "train rc=$? $(( $(date +%s) - start )) s" >>"$out/$name.train.log"
  "$bin" evaluate --device "${DEVICE:-cuda}" --model "$out/$name" --csv "$out/held-out.csv" --images data/demo \
    >"$out/$name.metrics.json" 2>"$out/$name.eval.log"
  echo "evaluate rc=$? $(( $(date +%s) - start )) s" >>"$out/$name.train.log"
}

IFS=';' read -ra variants <<<"${VARIANTS:-base}"
names=()
for variant in "${variants[@]}"; do
  read -ra words <<<"$variant"
  names+=("${words[0]}")
  run_variant "${words[@]}" &
done
while [ -n "$(jobs -r)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 20
  for name in "${names[@]}"; do
    # The step log is written at each checkpoint (every 500 steps and at each epoch's end).
    printf '%s: step %s | ' "$name" "$(tail -1 "$out/$name/train_log.csv" 2>/dev/null | cut -d, -f1)"
  done
  echo
done
pkill -INT -f "$out/" 2>/dev/null # Ctrl-C: a run saves its checkpoint and stops
wait

for name in "${names[@]}"; do
  printf '%-12s %s | %s\n' "$name" "$(tail -2 "$out/$name.train.log" | tr '\n' ' ')" \
    "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("top-1 %.1f %%, kcal MAE %.0f, caption fit %.1f %%, image fit %.1f %%" % (100*d["dish_top1"], float("nan") if d["kcal_mae"] is None else d["kcal_mae"], 100*d["caption_fit_accuracy"], 100*d["image_fit_accuracy"]))' "$out/$name.metrics.json" 2>/dev/null || echo 'no metrics')"
done | tee "$out/summary.txt"
tar czf "$dest/gpu-train.tar.gz" -C "$out" --exclude='*.safetensors' --exclude='*.csv' .
