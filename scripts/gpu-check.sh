#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (it has the NVIDIA driver and PyTorch's
# CUDA 13 libraries, but no Rust toolchain): carry the binary built by
# scripts/build-cuda.sh, compressed so that it and the repository fit the 64 MiB the
# device tool carries, and run this from the repository root:
#
#   xz -T2 -6 -k -c target/cuda/release/borscht > target/cuda/borscht.xz
#   scripts/device-tree.sh shrink      # the tree alone is about 61 MiB
#   run(command="bash scripts/gpu-check.sh", carry=["target/cuda/borscht.xz"])
#   scripts/device-tree.sh restore
#
# An earlier build carried as target/cuda/borscht-base.xz is timed too, for comparison.
#
# Checks first (reference fixtures per dtype, the demo model's answers against the CPU's),
# then speed (the 350M preset in bf16 and f16, the tiny preset, the server under load).
# Writes JSON and logs into $OUT/gpu-check.tar.gz (the device tool brings back at most 8
# files; default folder runs/gpu) and ends with a summary table.
set -uo pipefail
source scripts/gpu-env.sh
gpu_work_dirs /tmp/gpu-check runs/gpu

status=0
step() { printf '\n== %s\n' "$*"; }

# 1. The reference fixtures on the GPU, per transformer dtype.
for dtype in f32 bf16 f16; do
  step "device-check $dtype"
  "$bin" device-check --device cuda --dtype "$dtype" >"$out/device-check-$dtype.json" 2>"$out/device-check-$dtype.log" || status=1
  grep -v "^ *[0-9]*: \|BoolStorage\|^$" "$out/device-check-$dtype.log" | tail -3
done

# 2. The demo model end to end: the same evaluation (the 124 noto pictures, seed 0) on the
#    GPU and on this machine's CPU, whose answers it must give.
csv=/tmp/noto.csv
{ head -1 data/demo/food.csv; grep ',images/noto/' data/demo/food.csv; } >"$csv"
for device in cuda cpu; do
  step "evaluate the demo model on $device"
  /usr/bin/time -f '%e s' "$bin" evaluate --device "$device" --csv "$csv" --images data/demo --json \
    >"$out/evaluate-$device.json" 2>"$out/evaluate-$device.log" || status=1
  tail -3 "$out/evaluate-$device.log"
done

# 3. Speed: the 350M preset (the reference ran fp16), then the tiny one.
for dtype in bf16 f16; do
  step "bench 350M $dtype"
  "$bin" bench --preset 350M --device cuda --dtype "$dtype" --runs 5 >"$out/bench-350M-$dtype.json" 2>"$out/bench-350M-$dtype.log" || status=1
  tail -9 "$out/bench-350M-$dtype.log"
done
# An earlier build to compare with on the same machine, when one is carried.
if [ -e target/cuda/borscht-base.xz ]; then
  step "bench 350M bf16, earlier build"
  xz -d -c target/cuda/borscht-base.xz >/tmp/borscht-base && chmod +x /tmp/borscht-base
  /tmp/borscht-base bench --preset 350M --device cuda --dtype bf16 --runs 5 >"$out/bench-350M-bf16-before.json" 2>"$out/bench-350M-bf16-before.log" || status=1
  tail -9 "$out/bench-350M-bf16-before.log"
fi
step "bench tiny f32"
"$bin" bench --preset tiny --device cuda --runs 5 >"$out/bench-tiny-cuda.json" 2>"$out/bench-tiny-cuda.log" || status=1
tail -9 "$out/bench-tiny-cuda.log"

# 4. The server on the GPU under load (demo model, 8 WebSocket clients).
step "serve --device cuda + loadtest"
"$bin" serve --device cuda --addr 127.0.0.1:8099 >"$out/serve.log" 2>&1 &
server=$!
for _ in $(seq 60); do curl -sf http://127.0.0.1:8099/readyz >/dev/null && break; sleep 1; done
"$bin" loadtest --url ws://127.0.0.1:8099/ws --image data/demo/images/noto/1f33d-0.png --clients 8 --requests 4 \
  >"$out/loadtest.txt" 2>&1 || status=1
"$bin" loadtest --url ws://127.0.0.1:8099/ws --image data/demo/images/noto/1f33d-0.png --clients 32 --requests 4 \
  >>"$out/loadtest.txt" 2>&1 || status=1
cat "$out/loadtest.txt"
kill "$server"

step "summary"
python3 scripts/gpu-summary.py "$out" | tee "$out/summary.txt" || status=1
tar czf "$dest/gpu-check.tar.gz" -C "$out" .
exit $status
