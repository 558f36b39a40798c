"""One writer per run or report directory: an advisory lock (``flock``) on the directory itself, so nothing is
added to it and a killed holder releases it at once. A second writer is refused with the holder's PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DirectoryBusyError", "lock_directory"]


class DirectoryBusyError(FileExistsError):
    """Another process writes the directory now."""


@contextlib.contextmanager
def lock_directory(path: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``path`` (created if missing, removed again if this call created it and left it empty) for
    writing until the block ends; raise :class:`DirectoryBusyError` naming the holder if another process
    holds it."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            who = f"process {holder}" if holder else "another process"
            raise DirectoryBusyError(
                f"{path} is being written by {who} (another {what}); wait for it to finish or stop it "
                f"(kill {holder or 'PID'}), or use another --out"
            ) from None
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        for p in created:  # only folders this call made, and only while empty
            try:
                p.rmdir()
            except OSError:
                break


def _holder_pid(fd: int) -> int | None:
    """The PID holding a flock on ``fd``'s inode, read from /proc/locks (Linux); None where unknown."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and device in fields and "->" not in fields:
            try:
                return int(fields[fields.index(device) - 1])
            except ValueError:
                return None
    return None
