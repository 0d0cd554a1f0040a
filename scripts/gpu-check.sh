#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (it has the NVIDIA driver and PyTorch's
# CUDA 13 libraries, but no Rust toolchain): carry the binary built by
# scripts/build-cuda.sh and run this from the repository root, e.g. with the device tool:
#
#   run(command="bash scripts/gpu-check.sh", carry=["target/cuda/release/borscht"])
#
# Writes device-check and bench JSON (and the logs) under $OUT (default runs/gpu).
set -uo pipefail
bin="${BORSCHT_BIN:-target/cuda/release/borscht}"
out="${OUT:-runs/gpu}"
mkdir -p "$out"
# cublas, cublasLt, curand, nvrtc 13 from the machine's PyTorch environment.
for lib in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib; do
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

status=0
# Correctness first: the reference fixtures on the GPU, per dtype.
for dtype in f32 bf16 f16; do
  "$bin" device-check --device cuda --dtype "$dtype" >"$out/device-check-$dtype.json" 2>"$out/device-check-$dtype.log" || status=1
  tail -c 600 "$out/device-check-$dtype.json"
done
# Then speed: the 350M preset in bf16 (the reference ran fp16), then the tiny preset.
"$bin" bench --preset 350M --device cuda --dtype bf16 --runs 5 >"$out/bench-350M-bf16.json" 2>"$out/bench-350M-bf16.log" || status=1
tail -12 "$out/bench-350M-bf16.log"
"$bin" bench --preset tiny --device cuda --runs 5 >"$out/bench-tiny-cuda.json" 2>"$out/bench-tiny-cuda.log" || status=1
tail -10 "$out/bench-tiny-cuda.log"
exit $status
