"""Reader for the IDX files Fashion-MNIST (and MNIST) ship in: a tiny binary header, then uint8 data."""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IdxFormatError", "read_idx"]

_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
}


MAX_IDX_BYTES = 1 << 32  # 4 GiB: MNIST-style files are tens of MB (Fashion-MNIST's train images: 47 MB)


class IdxFormatError(ValueError):
    """A file that is not a valid (optionally gzipped) IDX file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array, checking the header against the size.

    A gzipped file is decompressed as a stream, never past the size its header declares (a gzip bomb
    stops there), and the declared size is computed in Python integers (a header cannot overflow it).
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            return _read_idx_stream(f, path)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise IdxFormatError(f"{path}: cannot read ({e})") from None


def _read_idx_stream(f: io.BufferedIOBase, path: Path) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise IdxFormatError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[magic[2]])
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IdxFormatError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", dims)
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise IdxFormatError(f"{path}: header says shape {shape} ({expected:,} bytes), more than an IDX data set holds")
    data = f.read(expected + 1)  # one byte more than declared: a longer file is found out, a bomb is not expanded
    if len(data) != expected:
        follow = f"{len(data):,}" if len(data) <= expected else "more"
        raise IdxFormatError(f"{path}: header says shape {shape} ({expected:,} bytes) but {follow} bytes follow")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
