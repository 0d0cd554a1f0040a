# Sourced by the GPU-machine scripts (gpu-check.sh, gpu-profile.sh, gpu-train-demo.sh):
# sets `bin` to the CUDA build (BORSCHT_BIN, target/cuda/release/borscht, or the carried
# target/cuda/borscht.xz unpacked) and LD_LIBRARY_PATH to the CUDA 13 libraries (cublas,
# cublasLt, curand, nvrtc) of the machine's PyTorch environment.
# shellcheck shell=bash
bin="${BORSCHT_BIN:-target/cuda/release/borscht}"
if [ ! -x "$bin" ] && [ -e target/cuda/borscht.xz ]; then
  bin=/tmp/borscht-cuda
  xz -d -c target/cuda/borscht.xz >"$bin" && chmod +x "$bin"
fi
for lib in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib; do
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

# gpu_work_dirs WORK DEFAULT_DEST: sets `out` to the empty working folder WORK and `dest`
# to where the results' archive goes ($OUT, else DEFAULT_DEST), and records the GPU in
# $out/gpu.txt.
gpu_work_dirs() {
  out=$1
  dest="${OUT:-$2}"
  rm -rf "$out" && mkdir -p "$out" "$dest"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
}
