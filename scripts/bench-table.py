"""The table of scripts/bench-cpu.sh from the JSON reports it leaves in OUT.

    python3 scripts/bench-table.py OUT PRESET "MACHINE"
"""
import datetime
import json
import os
import sys

out, preset, host = sys.argv[1:]
measured = datetime.date.fromtimestamp(os.path.getmtime(f"{out}/borscht-{preset}-avx512.json"))
print(f"{host}, preset {preset}, {measured} (median seconds; ratio = reference / borscht)\n")
print("| key | borscht AVX-512 | reference | ratio | borscht AVX2 | reference AVX2 | ratio |")
print("|---|---|---|---|---|---|---|")
runs = {level: (json.load(open(f"{out}/borscht-{preset}-{level}.json")),
                json.load(open(f"{out}/reference-{preset}-{level}.json"))) for level in ("avx512", "avx2")}
for key, value in runs["avx512"][1].items():
    if key == "torch" or key not in runs["avx512"][0]:
        continue
    cells = []
    for level in ("avx512", "avx2"):
        ours, ref = runs[level][0][key][0], runs[level][1][key][0]
        cells += [f"{ours:.4g}", f"{ref:.4g}", f"{ref / ours:.2f}x"]
    print(f"| {key} | " + " | ".join(cells) + " |")
for level in ("avx512", "avx2"):
    ours, ref = runs[level]
    print(f"\n{level}: borscht {ours['simd']}, reference torch {ref['torch']}")
