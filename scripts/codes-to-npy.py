"""Stacks the image codes of `borscht generate --json` lines into one int64 .npy [b, n]
(for `borscht vqgan decode`). Standard library only.

    python3 scripts/codes-to-npy.py generated.jsonl codes.npy
"""
import json
import struct
import sys

source, target = sys.argv[1], sys.argv[2]
rows = [codes for line in open(source, encoding="utf-8") if line.strip() for codes in json.loads(line)["codes"]]
if not rows or len({len(r) for r in rows}) != 1:
    sys.exit(f"{source}: expected image codes of one length, got {[len(r) for r in rows]}")
header = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d, %d), }" % (len(rows), len(rows[0]))
header += " " * (63 - (10 + len(header)) % 64) + "\n"  # the data starts 64-byte aligned
with open(target, "wb") as out:
    out.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
    out.write(struct.pack("<%dq" % (len(rows) * len(rows[0])), *[c for r in rows for c in r]))
