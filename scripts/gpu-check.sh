#!/usr/bin/env bash
# The one prepared script for a GPU machine that has the NVIDIA driver and PyTorch's
# CUDA 13 libraries but no Rust toolchain: copy the binary built by scripts/build-cuda.sh
# there, compressed so that it and the repository fit a 64 MiB upload, and run this from
# the repository root:
#
#   xz -T2 -6 -k -c target/cuda/release/borscht > target/cuda/borscht.xz
#   scripts/device-tree.sh shrink      # the tree alone is about 61 MiB
#   # copy the tree with target/cuda/borscht.xz (and target/cuda/borscht-base.xz), then there:
#   bash scripts/gpu-check.sh
#   scripts/device-tree.sh restore
#
# An earlier build carried as target/cuda/borscht-base.xz is timed too, in the same call
# (GPU machines of one kind differ by up to 40 %).
#
# In order of importance, each step bounded in time so that what ran comes back:
# 1. device-check per dtype: the reference fixtures, every fused CUDA kernel against
#    candle's ops and the CPU (forward and backward), static decoding steps against
#    ordinary ones, replayed CUDA graphs against the same steps run eagerly;
# 2. the 350M bench in bf16 with this build and the earlier one;
# 3. the server under load: 64 WebSocket clients, 16 captions a request, random 350M
#    weights (`--model random:350M`), then the demo model;
# 4. what each lever gives: the bench with CUDA graphs off, and with our kernels off;
# 5. the demo model's answers on the GPU against this machine's CPU, the 350M bench in
#    f16, the tiny preset;
# 6. a fine-tune inside the server (teaching), timed.
# Writes JSON and logs into $OUT/gpu-check.tar.gz (default folder runs/gpu) and ends with
# a summary table (scripts/gpu-summary.py).
set -uo pipefail
source scripts/gpu-env.sh
gpu_work_dirs /tmp/gpu-check runs/gpu

status=0
# Each step starts by saving what the earlier ones wrote: a call cut short by its time
# limit still brings that back.
save() { tar czf "$dest/gpu-check.tar.gz" -C "$out" .; }
step() { save; printf '\n== %s (%s s)\n' "$*" "$SECONDS"; }
# bounded SECONDS CMD...: runs CMD, killed after SECONDS.
bounded() { local limit=$1; shift; timeout --kill-after=5 "$limit" "$@"; }

# 1. The reference fixtures, kernels, static steps and graphs, per transformer dtype.
for dtype in bf16 f32 f16; do
  step "device-check $dtype"
  bounded 90 "$bin" device-check --device cuda --dtype "$dtype" >"$out/device-check-$dtype.json" 2>"$out/device-check-$dtype.log" || status=1
  grep -v "^ *[0-9]*: \|BoolStorage\|^$" "$out/device-check-$dtype.log" | tail -3
done

# 2. Speed: the 350M preset in bf16, this build and the earlier one.
step "bench 350M bf16"
bounded 150 "$bin" bench --preset 350M --device cuda --dtype bf16 --runs 5 >"$out/bench-350M-bf16.json" 2>"$out/bench-350M-bf16.log" || status=1
tail -20 "$out/bench-350M-bf16.log"
if [ -e target/cuda/borscht-base.xz ]; then
  step "bench 350M bf16, earlier build"
  xz -d -c target/cuda/borscht-base.xz >/tmp/borscht-base && chmod +x /tmp/borscht-base
  bounded 120 /tmp/borscht-base bench --preset 350M --device cuda --dtype bf16 --runs 5 \
    >"$out/bench-350M-bf16-before.json" 2>"$out/bench-350M-bf16-before.log" || status=1
  tail -14 "$out/bench-350M-bf16-before.log"
fi

# 3. The server on the GPU under load.
serve_and_load() { # NAME CLIENTS REQUESTS N SERVE-ARGS...
  local name=$1 clients=$2 requests=$3 n=$4; shift 4
  step "serve $* + loadtest $clients clients"
  "$bin" serve --device cuda --addr 127.0.0.1:8099 "$@" >"$out/serve-$name.log" 2>&1 &
  local server=$!
  for _ in $(seq 90); do curl -sf http://127.0.0.1:8099/readyz >/dev/null && break; kill -0 "$server" 2>/dev/null || break; sleep 1; done
  # A first round warms the server up (kernels loaded, graphs captured).
  bounded 60 "$bin" loadtest --url ws://127.0.0.1:8099/ws --image data/demo/images/noto/1f33d-0.png \
    --clients 8 --requests 2 --n "$n" >/dev/null 2>&1
  bounded 90 "$bin" loadtest --url ws://127.0.0.1:8099/ws --image data/demo/images/noto/1f33d-0.png \
    --clients "$clients" --requests "$requests" --n "$n" >"$out/loadtest-$name.json" 2>"$out/loadtest-$name.log" || status=1
  cat "$out/loadtest-$name.json"
  curl -s http://127.0.0.1:8099/metrics | grep -E "^borscht_(batch|recognize)" | head -12 >"$out/metrics-$name.txt"
  kill "$server"; wait "$server" 2>/dev/null
}
serve_and_load 350M-bf16 64 8 16 --model random:350M --dtype bf16 --max-batch 8 --queue-capacity 256 --max-requests-per-ip 256
serve_and_load demo 32 4 12 --max-requests-per-ip 256

# 4. What each lever gives, on the decoding keys.
keys=captions_16,rerank_by_image_16,codebooks_4,decode_step_16,decode_step_16_static
step "bench 350M bf16, CUDA graphs off"
BORSCHT_CUDA_GRAPHS=0 bounded 90 "$bin" bench --preset 350M --device cuda --dtype bf16 --runs 5 --only "$keys" \
  >"$out/bench-350M-bf16-no-graphs.json" 2>"$out/bench-350M-bf16-no-graphs.log" || status=1
tail -6 "$out/bench-350M-bf16-no-graphs.log"
step "bench 350M bf16, our kernels and graphs off"
BORSCHT_CUDA_GRAPHS=0 BORSCHT_CUDA_KERNELS=0 bounded 90 "$bin" bench --preset 350M --device cuda --dtype bf16 --runs 5 --only "$keys" \
  >"$out/bench-350M-bf16-no-kernels.json" 2>"$out/bench-350M-bf16-no-kernels.log" || status=1
tail -6 "$out/bench-350M-bf16-no-kernels.log"

# 5. The demo model end to end on the GPU and on this machine's CPU (the same 124 noto
#    pictures, seed 0), the f16 and tiny benches.
csv=/tmp/noto.csv
{ head -1 data/demo/food.csv; grep ',images/noto/' data/demo/food.csv; } >"$csv"
for device in cuda cpu; do
  step "evaluate the demo model on $device"
  bounded 120 "$bin" evaluate --device "$device" --csv "$csv" --images data/demo --json \
    >"$out/evaluate-$device.json" 2>"$out/evaluate-$device.log" || status=1
  tail -2 "$out/evaluate-$device.log"
done
step "bench 350M f16"
bounded 120 "$bin" bench --preset 350M --device cuda --dtype f16 --runs 5 >"$out/bench-350M-f16.json" 2>"$out/bench-350M-f16.log" || status=1
tail -20 "$out/bench-350M-f16.log"
step "bench tiny f32"
bounded 60 "$bin" bench --preset tiny --device cuda --runs 5 >"$out/bench-tiny-cuda.json" 2>"$out/bench-tiny-cuda.log" || status=1

# 6. Teaching on the GPU: a fine-tune through the server's admin routes, as on the CPU in
#    docs/teaching.md (the demo data as the base set, twenty pictures sent as examples).
step "fine-tune inside the server on cuda"
rm -rf /tmp/teach && "$bin" serve --device cuda --addr 127.0.0.1:8099 --dataset /tmp/teach/dataset \
  --models-dir /tmp/teach/models --admin-token gpu-check --finetune-base-csv data/demo/food.csv \
  --api-requests-per-minute 0 >"$out/serve-teach.log" 2>&1 &
server=$!
for _ in $(seq 90); do curl -sf http://127.0.0.1:8099/readyz >/dev/null && break; sleep 1; done
bounded 240 python3 scripts/gpu-teach.py http://127.0.0.1:8099 gpu-check >"$out/finetune-cuda.json" || status=1
cat "$out/finetune-cuda.json"
kill "$server"; wait "$server" 2>/dev/null

step "summary"
python3 scripts/gpu-summary.py "$out" | tee "$out/summary.txt" || status=1
save
exit $status
