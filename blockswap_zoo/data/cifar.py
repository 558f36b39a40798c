"""CIFAR-10/100 in their official on-disk format (python-pickled batches), read without ``pickle.load``.

The official batches are pickles. Instead of trusting them (torchvision's CIFAR10 unpickles a
file after an md5 check, which protects only the official files), every batch - official or
locally written - goes through :class:`RestrictedUnpickler`, whose ``find_class`` resolves only
the handful of numpy names that rebuild a plain ``ndarray`` (``_reconstruct``, ``ndarray``,
``dtype``, ``_frombuffer``) (and ``_codecs.encode`` restricted to
latin-1, which protocol-2 pickles written by Python 3 use for bytes). Anything else - ``os.system``,
``builtins.eval``, any other global - is refused with :class:`UnsafePickleError`, so a crafted
file cannot run code. The allowed constructors refuse, before numpy allocates, any array larger
than the format holds (50,000 x 3,072 bytes) and arrays of objects, so a small file cannot ask for
terabytes. Downloads (when the network allows) use torchvision's downloader, which checks the
archive's md5.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CIFAR_LAYOUTS",
    "CifarFormatError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "download_cifar",
    "read_cifar",
    "safe_unpickle",
    "write_cifar_batch",
]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that asks for a global outside the allow-list (it could run code)."""


class CifarFormatError(ValueError):
    """A CIFAR batch that is unreadable or does not have the expected keys and shapes."""


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as rec  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as rec  # type: ignore[no-redef]
    return rec


def _frombuffer() -> Callable[..., Any]:
    try:
        from numpy._core.numeric import _frombuffer as fb  # type: ignore[attr-defined]  # numpy >= 2 (private)
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer as fb  # type: ignore[no-redef]
    return fb


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; only latin-1 is allowed."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise UnsafePickleError(f"pickle asked for _codecs.encode with encoding {encoding!r}; only latin-1 is allowed")
    return obj.encode("latin-1", errors)


MAX_ARRAY_BYTES = 50_000 * 3072  # the largest array the format holds: CIFAR-100's train batch, uint8


def _check_array(shape: Any, dtype: Any) -> None:  # noqa: ANN401 - whatever the pickle passes
    """Refuse, before numpy allocates it, an array larger than any CIFAR batch holds, or one of objects."""
    try:
        dims = [int(d) for d in (shape if isinstance(shape, tuple | list) else (shape,))]
        dt = np.dtype(dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise CifarFormatError(f"an array of shape {shape!r} and dtype {dtype!r} ({e})") from None
    if dt.hasobject:
        raise UnsafePickleError("refusing an array of Python objects: CIFAR batches hold numbers")
    if any(d < 0 for d in dims) or math.prod(dims) * dt.itemsize > MAX_ARRAY_BYTES:
        raise CifarFormatError(
            f"an array of shape {tuple(dims)} and dtype {dt}: more than a CIFAR batch holds ({MAX_ARRAY_BYTES:,} bytes)"
        )


class _BoundedArray(np.ndarray):
    """The ndarray an unpickled batch is built as: created and restored only within ``MAX_ARRAY_BYTES``."""

    def __new__(cls, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> _BoundedArray:  # noqa: ANN401
        _check_array(shape, dtype)
        return super().__new__(cls, shape, dtype, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:  # noqa: ANN401 - numpy's (version, shape, dtype, fortran, data)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CifarFormatError(f"an array state of the wrong form ({type(state).__name__})")
        _check_array(state[-4], state[-3])
        super().__setstate__(state)


def _bounded_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:  # noqa: ANN401
    if subtype is not _BoundedArray:
        raise UnsafePickleError(f"refusing to reconstruct {subtype!r}: CIFAR batches hold plain numpy arrays")
    _check_array(shape, dtype)
    return _reconstruct()(subtype, shape, dtype)


def _bounded_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:  # noqa: ANN401
    _check_array(shape, dtype)
    return _frombuffer()(buf, dtype, shape, order)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, strings, numbers and numpy arrays - nothing else."""

    _ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: _bounded_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): lambda: _bounded_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): lambda: _bounded_frombuffer,  # protocol 5
        ("numpy._core.numeric", "_frombuffer"): lambda: _bounded_frombuffer,
        ("numpy", "ndarray"): lambda: _BoundedArray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: CIFAR batches only need numpy arrays "
                "(the file is not a CIFAR batch, or it was crafted to run code)"
            )
        return factory()


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (bytes keys as the Python-2 originals have)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and which keys hold the labels and names."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    url: str
    archive: str
    archive_md5: str


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
        "label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        "fine_labels",
        "fine_label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise CifarFormatError(f"{path}: missing key {key!r} (keys: {sorted(str(k) for k in d)})")


def _load(path: Path) -> Any:
    try:
        return safe_unpickle(path.read_bytes())
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise  # missing, not corrupt: the caller says how to get the dataset
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise CifarFormatError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None


def read_cifar(root: str | Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split of ``cifar10``/``cifar100`` under ``root`` -> (uint8 N x 3 x 32 x 32, int64 labels, names)."""
    layout = CIFAR_LAYOUTS[name]
    folder = Path(root) / layout.folder
    files = layout.train if split == "train" else layout.test
    images, labels = [], []
    for f in files:
        d = _load(folder / f)
        data = np.asarray(_get(d, "data", folder / f))
        lab = np.asarray(_get(d, layout.label_key, folder / f), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise CifarFormatError(
                f"{folder / f}: expected uint8 data of shape (N, 3072) and N labels, "
                f"got {data.dtype} {data.shape} and {len(lab)} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    meta = _load(folder / layout.meta)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, layout.names_key, folder / layout.meta)]
    y = np.concatenate(labels)
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise CifarFormatError(f"{folder}: labels outside [0, {len(names)})")
    return np.ascontiguousarray(np.concatenate(images)), y, names


def download_cifar(root: str | Path, name: str) -> None:
    """Download and extract the official archive (md5-checked by torchvision's downloader)."""
    from torchvision.datasets.utils import download_and_extract_archive

    layout = CIFAR_LAYOUTS[name]
    download_and_extract_archive(layout.url, str(root), filename=layout.archive, md5=layout.archive_md5)


def write_cifar_batch(path: str | Path, data: np.ndarray, labels: list[int], label_key: str = "labels") -> None:
    """Write one batch in CIFAR's on-disk format (used to build small local datasets, e.g. in tests)."""
    from ..io import atomic_write_bytes

    d = {b"batch_label": b"local", b"data": np.ascontiguousarray(data, dtype=np.uint8), label_key.encode(): labels}
    atomic_write_bytes(path, pickle.dumps(d, protocol=2))
