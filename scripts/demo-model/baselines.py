"""How far simple look-alike matching gets on the held-out style, and whether that style
brings image codes the training rows never show: the context for the demo model card's
held-out numbers. Needs numpy and Pillow.

    borscht vqgan encode --vqgan models/demo/vqgan --size 64 \
        --image $(tail -n +2 ALL.csv | cut -d, -f7 | sed 's|^|data/demo/|') --out codes.npy
    python3 scripts/demo-model/baselines.py ALL.csv TRAIN.csv HELD_OUT.csv codes.npy [--codes-only]

ALL, TRAIN and HELD_OUT are the CSVs train-demo-model.sh writes (all.csv,
without-held-out.csv, held-out.csv); codes.npy holds ALL's rows in order. --codes-only skips the pixel and colour matches
(scripts/demo-model/compare-vqgans.sh compares VQGANs by their codes).
"""
import collections
import csv
import sys

import numpy as np
from PIL import Image


def rows(csv_path):
    """(image path under data/demo, dish name) of each row."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        return [("data/demo/" + row["path"], row["name"]) for row in csv.DictReader(f)]


all_csv, train_csv, held_csv, codes_path = sys.argv[1:5]
everything = rows(all_csv)
codes = np.load(codes_path)
if len(codes) != len(everything):
    sys.exit(f"{codes_path}: {len(codes)} rows of codes for the {len(everything)} rows of {all_csv}")
paths = [p for p, _ in everything]
dish = np.array([d for _, d in everything])
train_paths = {p for p, _ in rows(train_csv)}
held_paths = {p for p, _ in rows(held_csv)}
train = [i for i, p in enumerate(paths) if p in train_paths]
held = [i for i, p in enumerate(paths) if p in held_paths]
print(f"{len(train)} training pictures, {len(held)} held out")

seen = collections.Counter(codes[train].ravel().tolist())
held_codes = codes[held].ravel().tolist()
for times in (1, 20, 100):
    share = np.mean([seen[c] >= times for c in held_codes])
    print(f"held-out code positions whose code the training rows show >= {times} times: {share:.1%}")


def nearest_neighbour(features, what):
    """Top-1 dish of the training picture with the most similar (cosine) features."""
    features = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-9)
    nearest = np.argmax(features[held] @ features[train].T, axis=1)
    print(f"1-nearest neighbour, {what}: {np.mean(dish[train][nearest] == dish[held]):.1%}")


bag = np.zeros((len(paths), int(codes.max()) + 1))
for i, row in enumerate(codes):
    np.add.at(bag[i], row, 1)
nearest_neighbour(bag, "bag of image codes")
if "--codes-only" in sys.argv[5:]:
    sys.exit(0)

pictures = [Image.open(p).convert("RGB") for p in paths]
small = np.stack([np.asarray(p.resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel() for p in pictures])
nearest_neighbour(small - small.mean(axis=1, keepdims=True), "pixels at 16x16, mean removed")
levels = np.stack([np.asarray(p, dtype=np.int64) // 64 for p in pictures])  # 4 levels a channel
bins = levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]
histograms = np.stack([np.bincount(b.ravel(), minlength=64) for b in bins]).astype(np.float64)
nearest_neighbour(np.sqrt(histograms), "colour histogram (64 bins)")
