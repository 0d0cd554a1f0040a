#!/usr/bin/env bash
# Kernel times of one 350M bench key on a GPU machine (Nsight Compute, one metric, so each
# kernel runs once): which kernels the time goes to. Carry the binary as for
# scripts/gpu-check.sh. ONLY picks the key (forward_16_rows), PRESET the preset (350M).
# The bench's warm-up run and its setup (random weights, one VQGAN encoding) are counted
# too. Writes $OUT/ncu.csv and prints the 25 costliest kernels.
set -uo pipefail
out="${OUT:-runs/gpu}"
mkdir -p "$out"
source scripts/gpu-env.sh
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout 240 "$ncu" --metrics gpu__time_duration.sum --csv \
  "$bin" bench --preset "${PRESET:-350M}" --device cuda --dtype bf16 --runs 1 --only "${ONLY:-forward_16_rows}" \
  >"$out/ncu.csv" 2>"$out/ncu.log"
echo "ncu exit $?"
tail -3 "$out/ncu.log"
python3 - "$out/ncu.csv" <<'PY'
import collections, csv, sys
lines = open(sys.argv[1]).read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
if start is None:
    sys.exit("no kernel rows:\n" + "\n".join(lines[:20]))
rows = list(csv.DictReader(lines[start:]))
total, count = collections.Counter(), collections.Counter()
for r in rows:
    name = r["Kernel Name"][:90]
    value = float(r["Metric Value"].replace(",", ""))
    scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}.get(r["Metric Unit"], 1e-6)
    total[name] += value * scale
    count[name] += 1
all_ms = sum(total.values())
print(f"{len(rows)} kernels, {all_ms:.1f} ms of GPU time in all")
for name, ms in total.most_common(25):
    print(f"{ms:9.2f} ms {count[name]:6d}x  {name}")
PY
