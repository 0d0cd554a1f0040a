#!/usr/bin/env bash
# A GPU machine gets the working tree (tracked and untracked-not-ignored files) plus
# the copied binaries, 64 MiB in all. The tracked tree is about 61 MiB, so with the CUDA
# binary it is over. The GPU checks need none of the training-only pictures, so for the
# call they are left out of the index (the files stay on disk) and ignored locally:
#
#   scripts/device-tree.sh shrink    # before the device calls
#   scripts/device-tree.sh restore   # after them, before any commit
#   scripts/device-tree.sh size      # MiB that a call would carry, without carried paths
#
# Training on the GPU (gpu-train-demo.sh) needs those pictures but neither the shipped
# weights nor the reference fixtures: `shrink training` and `restore training` leave
# those out instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${2:-}" = training ]; then
  dirs=(models/demo/model.safetensors backend/tests/fixtures)
else
  dirs=(data/demo/extra data/demo/more-styles data/demo/streamline)
fi
exclude=.git/info/exclude
size() { git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { printf "%.1f MiB tracked\n", s / 1048576 }'; }
case "${1:-}" in
  shrink)
    git rm -r -q --cached "${dirs[@]}"
    for d in "${dirs[@]}"; do grep -qxF "/$d" "$exclude" || echo "/$d" >>"$exclude"; done
    size ;;
  restore)
    git reset -q -- "${dirs[@]}"
    for d in "${dirs[@]}"; do sed -i "\|^/$d/\?\$|d" "$exclude"; done
    git status --short -- "${dirs[@]}"
    size ;;
  size) size ;;
  *) echo "usage: $0 shrink|restore|size [training]" >&2; exit 2 ;;
esac
