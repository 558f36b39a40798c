"""Keep freed memory in the process while a CPU job allocates many large tensors (glibc only).

glibc returns freed blocks of tens of MiB to the kernel, so every fresh network on the CPU faults
its activations in again, page by page: about 30,000 page faults per WRN-40-2 candidate in exact
mode, against 4,600 with ``retain_freed_memory``, and 5% of the time (``python
benchmarks/search_speed.py --ablation``). PyTorch's CPU tuning guides get the same effect by
preloading jemalloc or tcmalloc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# After the context: where glibc's own adjustment ends up once blocks of 32 MiB have been freed
# (mmap threshold 32 MiB, trim threshold twice that). Its initial 128 KiB, set by hand, would turn
# that adjustment off at its slowest point.
_AFTER_MMAP_THRESHOLD = 32 * 1024 * 1024
_AFTER_TRIM_THRESHOLD = 2 * _AFTER_MMAP_THRESHOLD
# Blocks below the mmap threshold come from the heap: 1 GiB where glibc accepts it (2.36 does),
# else 32 MiB, the largest that glibc's manual promises on 64-bit systems.
_MMAP_THRESHOLDS = (1 << 30, 32 * 1024 * 1024)
_NO_TRIM = 2**31 - 1
_state = {"depth": 0, "ok": False}  # the settings are per process; so is the nesting depth


@functools.cache  # looked up once per process, not on every scoring run
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def retain_freed_memory() -> Iterator[bool]:
    """Serve large blocks from the heap and never trim it for the duration; yields whether it could.

    On exit the free memory goes back to the kernel (malloc_trim) and the thresholds become those
    glibc's automatic adjustment reaches for large blocks (which stays off, as after any mallopt
    call). Elsewhere than glibc Linux it does nothing.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    if _state["depth"]:  # nested (a search inside a caller's context): the outermost one sets and restores
        _state["depth"] += 1
        try:
            yield bool(_state["ok"])
        finally:
            _state["depth"] -= 1
        return
    ok = any(libc.mallopt(_M_MMAP_THRESHOLD, t) for t in _MMAP_THRESHOLDS)
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM)) and ok
    _state.update(depth=1, ok=ok)
    try:
        yield ok
    finally:
        _state["depth"] = 0
        libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
        libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
        libc.malloc_trim(0)
