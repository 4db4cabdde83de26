"""A small safetensors reader and writer in numpy (no torch, no `safetensors` package).

Format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
`{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the byte buffer that follows;
an optional `__metadata__` entry holds strings), then the buffer, little-endian, row-major.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOATS = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 << 20


def _fail(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: not a valid safetensors file: {what}")


def read_safetensors(path: str | os.PathLike, *, float32: bool = True) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file; floating tensors become float32 unless `float32=False`.

    Every header entry is checked (dtype, shape, offsets inside the file, sizes matching the
    shape, no overlaps); a bad entry fails naming the file and the tensor."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _fail(path, f"{len(raw)} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        size = os.fstat(f.fileno()).st_size
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise _fail(path, f"header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _fail(path, f"header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise _fail(path, "header is not a JSON object")
        buffer = np.memmap(f, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(path, f"tensor {name!r} has a malformed header entry {entry!r} ({e!r})") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if any(d < 0 for d in shape) or not 0 <= begin <= end or end - begin != nbytes:
            raise _fail(path, f"tensor {name!r}: offsets {[begin, end]} do not hold shape {shape} of {entry['dtype']}")
        if end > buffer.size:
            raise _fail(path, f"tensor {name!r} ends at byte {end} of a {buffer.size}-byte buffer: file truncated")
        spans.append((begin, end, name))
        array = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape)
        convert = float32 and entry["dtype"] in FLOATS
        tensors[name] = np.array(array, dtype=np.float32 if convert else dtype)  # a copy, off the mapped file
    spans.sort()
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            raise _fail(path, f"tensors {a!r} and {b!r} overlap")
    return tensors


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write `tensors` (numpy arrays of the DTYPES above) as a safetensors file."""
    header, offset, blobs = {}, 0, []
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name; valid: {sorted(DTYPES)}")
        blob = array.astype(dtype).tobytes()
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the buffer to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
