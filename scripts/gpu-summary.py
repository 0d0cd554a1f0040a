#!/usr/bin/env python3
"""Summary of scripts/gpu-check.sh's output folder: the fixture checks, the demo model's
answers on the GPU against the CPU's (gpu-check.sh runs both), and the 350M timings
beside the reference's (NVIDIA H100, torch 2.11, fp16) and the
GPU engine's targets. Standard library only. Exits 1 when a check failed."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu")
failed = False


def load(name):
    path = out / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"{name}: missing or unreadable ({e})")
        return None


print("fixture checks (relative error to the reference; tolerance):")
for dtype in ("f32", "bf16", "f16"):
    report = load(f"device-check-{dtype}.json")
    if report is None:
        failed = True
        continue
    parts = [f"{c['what']} {c['relative_to_reference']:.2e} (<= {c['tolerance']:.0e})" for c in report["checks"]]
    parts.append(f"vqgan codes {report['vqgan_code_agreement']:.0%}")
    print(f"  {dtype:<5} {'ok  ' if report['ok'] else 'FAIL'} " + "; ".join(parts))
    failed |= not report["ok"]
    for group in ("kernels", "decoding"):
        for c in report.get(group, []):
            mark = "ok  " if c["ok"] else "FAIL"
            print(f"        {mark} {c['what']:<62} {c['relative_to_reference']:.2e} / cpu f32 {c['relative_to_cpu_f32']:.2e}")
    if "graphs_captured" in report:
        print(f"        CUDA graphs captured: {report['graphs_captured']}")

gpu, cpu = load("evaluate-cuda.json"), load("evaluate-cpu.json")
if gpu is not None and cpu is not None:
    print("demo model on the 124 noto pictures, cuda f32 vs cpu f32:")
    for key in ("dish_top1", "kcal_mae", "caption_fit_accuracy", "image_fit_accuracy", "zero_shot_accuracy"):
        print(f"  {key:<22} cuda {gpu[key]:8.4f}   cpu {cpu[key]:8.4f}")
    # Sampling may take another branch where two logits are within rounding of each
    # other; the answers must still agree almost everywhere.
    failed |= abs(gpu["dish_top1"] - cpu["dish_top1"]) > 0.05 or gpu["samples"] != cpu["samples"]
else:
    failed = True

# key: (reference seconds on the H100, what the target covers)
reference = {
    "captions_16": 1.34,
    "captions_16_rerank": 1.34 + 0.055,
    "captions_4_seed_settings": 1.37,
    "rerank_by_image_16": 0.055,
    "zs_clf_20": 0.062,
    "codebooks_4": 6.24,
    "vae_decode_4": 0.0076,
    "vae_encode_16": 0.0089,
    "train_step_bs10": 0.107,
    "decode_step_16": None,
    "decode_step_16_static": None,
    "forward_16_rows": None,
}
benches = {dtype: load(f"bench-350M-{dtype}.json") or {} for dtype in ("bf16", "f16")}
before = {}
if (out / "bench-350M-bf16-before.json").exists():
    before = load("bench-350M-bf16-before.json") or {}


def median(bench, key):
    return bench.get(key, [None])[0]


def best(key):
    """The faster of the bf16 and f16 medians, None when neither ran."""
    values = [v for v in (median(benches[d], key) for d in ("bf16", "f16")) if v is not None]
    return min(values, default=None)


def cell(value, width):
    return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"


print("350M preset on this GPU, median seconds (reference: torch fp16 on an H100):")
print(f"  {'key':<26}{'bf16':>10}{'f16':>10}{'bf16 before':>12}{'reference':>11}{'speed-up (best)':>17}")
for key, ref in reference.items():
    cells = cell(median(benches["bf16"], key), 10) + cell(median(benches["f16"], key), 10)
    cells += cell(median(before, key), 12)
    fastest = best(key)
    ratio = f"{ref / fastest:16.2f}x" if fastest and ref else f"{'-':>17}"
    peak = benches["bf16"].get(key, [None, None, None])
    peak = f"{peak[2] / 2**20:9.0f} MiB" if len(peak) > 2 and peak[2] is not None else ""
    print(f"  {key:<26}{cells}{ref if ref else float('nan'):11.4f}{ratio}{peak}")

for name in ("no-graphs", "no-kernels"):
    lever = load(f"bench-350M-bf16-{name}.json") if (out / f"bench-350M-bf16-{name}.json").exists() else None
    if lever:
        print(f"bf16 with {name}: " + ", ".join(f"{k} {v[0]:.4f}" for k, v in sorted(lever.items())))

for name in ("350M-bf16", "demo"):
    path = out / f"loadtest-{name}.json"
    if path.exists():
        try:
            r = json.loads(path.read_text())
            print(f"loadtest {name}: {r['completed']}/{r['clients'] * r['requests']} in {r['wall_s']:.1f} s, "
                  f"{r['throughput_rps']:.1f} requests/s, p50 {r['latency_p50_s']:.3f} s, p95 {r['latency_p95_s']:.3f} s, "
                  f"busy {r['busy']}, errors {r['errors']}")
        except (OSError, ValueError, KeyError) as e:
            print(f"loadtest {name}: unreadable ({e})")


targets = [
    ("16 captions + re-rank 16", ["captions_16_rerank"], 0.120),
    ("re-rank 16", ["rerank_by_image_16"], 0.030),
    ("zero-shot 20", ["zs_clf_20"], 0.030),
    ("VQGAN decode 4", ["vae_decode_4"], 0.0076),
    ("VQGAN encode 16", ["vae_encode_16"], 0.0089),
    ("text-to-image 4", ["codebooks_4"], 0.6),
    ("train step, batch 10", ["train_step_bs10"], 0.080),
]
print("targets:")
for name, keys, target in targets:
    parts = [best(k) for k in keys]
    if any(p is None for p in parts):
        print(f"  {name:<26} not measured")
        continue
    total = sum(parts)
    print(f"  {name:<26} {total:8.4f} s  target {target} s  {'met' if total <= target else 'NOT met'}")
sys.exit(1 if failed else 0)
