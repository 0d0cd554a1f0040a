#!/usr/bin/env bash
# Builds `borscht` with feature `cuda` on a machine without a GPU (none of ours has one):
# the CUDA 13.0 toolkit comes from PyPI wheels, and libcuda (the driver, present only on
# a GPU machine) is replaced at link time by a stub that merely names the driver calls
# cudarc makes. The binary then runs on the GPU machine, whose driver provides the real
# libcuda; LD_LIBRARY_PATH must reach its cublas, cublasLt, curand and nvrtc 13.
#
#   scripts/build-cuda.sh            -> target/cuda/release/borscht (about 15 min cold)
#
# Idempotent: the wheels and the stub are made once, cargo rebuilds what changed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
say() { printf '\033[1m[cuda]\033[0m %s\n' "$*"; }

venv="$BORSCHT_TOOLS_DIR/cuda13"
# 13.0.48 compiler wheels are broken (cicc misplaced); 13.0 keeps the PTX loadable by
# the GPU machine's CUDA 13.0 driver.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-cublas==13.0.*" "nvidia-curand<10.5"
)
stamp="$venv/.wheels-$(printf '%s ' "${wheels[@]}" | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  say "CUDA 13.0 toolkit wheels into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "${wheels[@]}"
  touch "$stamp"
fi
toolkit="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"

# Unversioned names for the linker, and the driver stub.
link_dir="$BORSCHT_TOOLS_DIR/cuda13-link"
mkdir -p "$link_dir"
for lib in cublas cublasLt curand nvrtc cudart; do
  real="$(ls "$toolkit"/lib/lib"$lib".so.* 2>/dev/null | sort | head -1 || true)"
  [ -n "$real" ] || { echo "no lib$lib in $toolkit/lib" >&2; exit 1; }
  ln -sf "$real" "$link_dir/lib$lib.so"
done
# The CPU build never downloads cudarc (an optional dependency); its source names the calls.
(cd "$REPO_ROOT" && cargo fetch -q)
cudarc_src="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-"$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO_ROOT/Cargo.lock")" | head -1)"
if [ ! -e "$link_dir/libcuda.so.1" ] || [ "$cudarc_src/src/driver/sys/mod.rs" -nt "$link_dir/libcuda.so.1" ]; then
  say "stub libcuda.so.1 from the driver calls in $cudarc_src"
  grep -oP '^\s+fn \Kcu[A-Za-z0-9_]+(?=\()' "$cudarc_src/src/driver/sys/mod.rs" | sort -u |
    awk '{ printf "int %s(void) { return 999; /* CUDA_ERROR_UNKNOWN: never called */ }\n", $1 }' >"$link_dir/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link_dir/libcuda.so.1" "$link_dir/stub.c"
  ln -sf libcuda.so.1 "$link_dir/libcuda.so"
fi

export CUDA_HOME="$toolkit" CUDA_PATH="$toolkit" CUDA_ROOT="$toolkit"
export PATH="$toolkit/bin:$PATH"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$link_dir${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$link_dir"
export CARGO_TARGET_DIR="$REPO_ROOT/target/cuda"
say "cargo build --release --features cuda (nvcc $(nvcc --version | tail -1))"
cd "$REPO_ROOT"
cargo build --release -p borscht --features cuda --bin borscht
strip "$CARGO_TARGET_DIR/release/borscht"
say "built $CARGO_TARGET_DIR/release/borscht ($(du -h "$CARGO_TARGET_DIR/release/borscht" | cut -f1))"
