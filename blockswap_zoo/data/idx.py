"""Reader for the IDX files Fashion-MNIST (and MNIST) ship in: a tiny binary header, then uint8 data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

__all__ = ["IdxFormatError", "read_idx"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


class IdxFormatError(ValueError):
    """A file that is not a valid (optionally gzipped) IDX file."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array, checking the header against the size."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise IdxFormatError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IdxFormatError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(f"{path}: header says shape {shape} ({expected} bytes) but {len(raw) - header} follow")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
