"""The table of scripts/bench-cpu.sh from the JSON reports it leaves in OUT.

    python3 scripts/bench-table.py OUT PRESET "MACHINE"

One report per side and build (`borscht-PRESET-avx2.json`), or one per round
(`borscht-PRESET-avx2-round1.json`, ...): then each cell is the median over the rounds
and each ratio the median of the rounds' ratios, with their range beside it.
"""
import datetime
import glob
import json
import os
import statistics
import sys

out, preset, host = sys.argv[1:]
LEVELS = ("avx512", "avx2")


def reports(side, level):
    """The reports of one side and build, in round order (a single report: one round)."""
    single = f"{out}/{side}-{preset}-{level}.json"
    if os.path.exists(single):
        return [json.load(open(single))]
    paths = sorted(glob.glob(f"{out}/{side}-{preset}-{level}-round*.json"),
                   key=lambda p: int(p.rsplit("round", 1)[1].split(".")[0]))
    if not paths:
        sys.exit(f"no {side} reports for {preset} {level} in {out}")
    return [json.load(open(p)) for p in paths]


runs = {level: (reports("borscht", level), reports("reference", level)) for level in LEVELS}
rounds = len(runs["avx512"][0])
first = sorted(glob.glob(f"{out}/borscht-{preset}-avx512*.json"))[0]
measured = datetime.date.fromtimestamp(os.path.getmtime(first))
spread = f"; {rounds} rounds: medians over them, ratio = median of the rounds' ratios (their range)" if rounds > 1 else ""
print(f"{host}, preset {preset}, {measured} (median seconds; ratio = reference / borscht{spread})\n")
print("| key | borscht AVX-512 | reference | ratio | borscht AVX2 | reference AVX2 | ratio |")
print("|---|---|---|---|---|---|---|")
for key in runs["avx512"][1][0]:
    if key == "torch" or key not in runs["avx512"][0][0]:
        continue
    cells = []
    for level in LEVELS:
        ours_rounds, ref_rounds = runs[level]
        ours = [r[key][0] for r in ours_rounds]
        ref = [r[key][0] for r in ref_rounds]
        ratios = [b / a for a, b in zip(ours, ref)]
        ratio = f"{statistics.median(ratios):.2f}x"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        cells += [f"{statistics.median(ours):.4g}", f"{statistics.median(ref):.4g}", ratio]
    print(f"| {key} | " + " | ".join(cells) + " |")
for level in LEVELS:
    ours, ref = runs[level]
    print(f"\n{level}: borscht {ours[0]['simd']}, reference torch {ref[0]['torch']}")
