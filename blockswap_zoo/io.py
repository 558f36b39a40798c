"""Atomic file writes (a reader never sees a half-written file, and a crash leaves the old one), and
cleaning up after a failed download (nothing it created is left behind)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "missing_dirs", "remove_failed_download"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first (what a download would create)."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_failed_download(created: list[Path], partial: Path | None = None) -> None:
    """After a failed download, remove its partial file (if in a folder it created) and the folders it
    created (``missing_dirs`` before it started), each only if left empty."""
    if partial is not None and partial.parent in created:  # a folder that was there before is left to its owner
        partial.unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()  # only empty folders: never a file we did not write
        except OSError:
            return
