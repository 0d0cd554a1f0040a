#!/usr/bin/env bash
# `borscht bench` beside the reference (rudolph on torch) in one run on this CPU, twice:
# with the AVX-512 kernels (where the CPU has them) and with the AVX2 code a machine
# without AVX-512 runs (a build without the `avx512` feature; torch held to AVX2 by its
# own switches). Prints a table of medians and ratios; the JSON reports stay in OUT.
#
#   scripts/bench-cpu.sh [--preset tiny|350M] [--runs 5] [--rounds 1] [--only KEY,...] [--out bench-results/cpu-DATE]
#
# With --rounds N the four runs (ours and the reference, each build) are repeated N times
# in turn, and the table gives each key's median over the rounds and the median of the
# rounds' ratios: a slow spell of a shared machine then falls on both sides of a ratio
# instead of on one half of the table.
#
# Builds both binaries (release) and the reference venv on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh

preset=tiny runs=5 rounds=1 only="" out="bench-results/cpu-$(date -u +%F)"
while (($#)); do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--preset tiny|350M] [--runs N] [--rounds N] [--only KEY,...] [--out DIR]" >&2; exit 2 ;;
  esac
done
say() { printf '\033[1m[bench-cpu]\033[0m %s\n' "$*" >&2; }

# The reference packages, as scripts/fixtures/requirements.txt says, made again when it changes.
venv="$BORSCHT_TOOLS_DIR/reference"
stamp="$venv/.requirements-$(sha1sum scripts/fixtures/requirements.txt | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  say "reference venv (torch, rudolph, rudalle, taming, youtokentome) into $venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip install -q)
  "${pip[@]}" -r scripts/fixtures/requirements.txt
  "${pip[@]}" --no-deps rudolph==0.0.1rc4 rudalle==1.1.3 taming-transformers==0.0.1 transformers==4.10.3
  "${pip[@]}" Cython wheel
  "${pip[@]}" --no-build-isolation youtokentome==1.0.6
  touch "$stamp"
fi

# Two builds side by side: one without the AVX-512 code (kept as borscht-avx2), then the
# default one (cargo keeps both builds' artifacts, so switching back is a copy).
say "building borscht (release, without and with avx512)"
cargo build -q --release -p borscht --no-default-features
cp target/release/borscht target/release/borscht-avx2
cargo build -q --release -p borscht
mkdir -p "$out"
host="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"

bench() { # NAME BINARY SUFFIX
  say "$1$3: borscht bench --preset $preset --runs $runs"
  "$2" bench --preset "$preset" --runs "$runs" ${only:+--only "$only"} >"$out/borscht-$preset-$1$3.json"
}
reference() { # NAME SUFFIX [ENV...]
  local name="$1" suffix="$2"; shift 2
  say "$name$suffix: the reference, same preset and runs"
  env TQDM_DISABLE=1 "$@" "$venv/bin/python" scripts/fixtures/bench_presets.py --preset "$preset" --runs "$runs" \
    ${only:+--only "$only"} >"$out/reference-$preset-$name$suffix.json"
}
# The table reads every report of this preset in OUT: earlier ones (another number of
# rounds) would mix in.
rm -f "$out"/{borscht,reference}-"$preset"-avx{512,2}{,-round*}.json
for round in $(seq 1 "$rounds"); do
  suffix=""
  ((rounds == 1)) || suffix="-round$round"
  bench avx512 target/release/borscht "$suffix"
  reference avx512 "$suffix"
  bench avx2 target/release/borscht-avx2 "$suffix"
  # torch's own kernels, MKL's and oneDNN's each have a switch that caps the instruction set.
  reference avx2 "$suffix" ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
done

python3 scripts/bench-table.py "$out" "$preset" "$host"
