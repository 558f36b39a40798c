"""Compile and load the package's C kernels (``kernels/*.c``) for exact-mode scoring on CPUs.

PyTorch has no fused training-mode batch norm + ReLU on CPUs (``kernels/norm_act.c``), oneDNN
runs grouped convolutions with 4 channels per group slowly (``kernels/grouped_conv.c``), and
PyTorch takes three sweeps for a block's Fisher potential term (``kernels/fisher.c``: one). All are
built into one library on first use with the system's C compiler for this machine's CPU and kept in
the cache (``blockswap_zoo.pretrained.cache_dir() / "kernels"``, keyed by sources, compiler, flags
and CPU). Where no compiler works, ``cpu_kernels`` returns None (with one warning) and scoring keeps
PyTorch's layers: the same values to fp32 rounding, slower. ``BLOCKSWAP_ZOO_NATIVE=0`` turns the
kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path

__all__ = ["KERNEL_SOURCES", "KernelBuildError", "build_library", "cpu_kernels"]

KERNEL_SOURCES = ("norm_act.c", "grouped_conv.c", "fisher.c")  # in kernels/, built together into libscoring_kernels

# Tried in order; later sets drop what some compilers lack (OpenMP, -march=native). -ffp-contract=off
# stays in all: norm_act.c needs the forward and backward passes to round alike. grouped_conv.c
# needs AVX2 and FMA (-march=native on a CPU that has them) and says so at run time.
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)
_COMMON_FLAGS = ["-ffp-contract=off", "-shared", "-fPIC"]
_I64, _PTR, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double  # pointers: tensors' data_ptr()


class KernelBuildError(RuntimeError):
    """No C compiler on this machine could build a kernel."""


def _compiler() -> str | None:
    """$CC, else the first of cc, gcc, clang on PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags where Linux lists them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = [line for line in lines if line.startswith(("flags", "model name", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep))) or f"{platform.machine()} {platform.processor()}"


def _cache_root() -> Path:
    from ...pretrained import cache_dir

    return cache_dir() / "kernels"


def build_library(name: str, sources: tuple[str, ...], cache: Path | None = None) -> Path:
    """The shared library ``lib<name>`` of ``sources`` (in kernels/): from the cache, or compiled into
    it (atomically). Raises KernelBuildError (with the compiler's last message) when no flag set compiles.
    """
    texts = [resources.files(__package__).joinpath("kernels").joinpath(src).read_bytes() for src in sources]
    source = b"\0".join(s.encode() + b"\0" + t for s, t in zip(sources, texts))
    cc = _compiler()
    if cc is None:
        raise KernelBuildError("no C compiler found (set CC, or install gcc or clang)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"cannot run the C compiler {cc}: {e}") from e
    root = cache if cache is not None else _cache_root()
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    last_error = ""
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            b"\0".join([source, cc.encode(), version.encode(), " ".join(flags + _COMMON_FLAGS).encode()])
            + _cpu_signature().encode()
        ).hexdigest()[:24]
        target = root / key / f"lib{name}{suffix}"
        if target.is_file():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            workdir = target.parent
        except OSError:  # an unwritable cache: build for this process only
            workdir = Path(tempfile.mkdtemp(prefix="blockswap_zoo_kernels_"))
            target = workdir / target.name
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            paths = [Path(tmp) / src for src in sources]
            for path, text in zip(paths, texts):
                path.write_bytes(text)
            out = Path(tmp) / target.name
            cmd = [cc, *flags, *_COMMON_FLAGS, *map(str, paths), "-o", str(out), "-lm"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                last_error = str(e)
                continue
            if done.returncode == 0 and out.is_file():
                os.replace(out, target)  # atomic: concurrent builders (worker processes) each write a whole file
                return target
            said = (done.stderr or done.stdout).strip().splitlines()
            last_error = said[-1] if said else f"exit status {done.returncode}"
    raise KernelBuildError(f"{cc} could not build {', '.join(sources)} in kernels/: {last_error}")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    fwd, bwd = lib.bn_relu_forward, lib.bn_relu_backward
    fwd.argtypes = [_PTR, _PTR, _I64, _I64, _PTR, _PTR, _F64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
    bwd.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
    conv = lib.grouped_conv4_forward
    conv.argtypes = [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64]
    lib.grouped_conv_supported.argtypes = []
    fisher = lib.fisher_term
    fisher.argtypes = [_PTR, _PTR, _I64, _I64, _I64, _PTR]
    for f in (fwd, bwd, conv, lib.grouped_conv_supported, fisher):
        f.restype = ctypes.c_int
    return lib


@functools.cache  # built and loaded once per process
def cpu_kernels() -> ctypes.CDLL | None:
    """The library of KERNEL_SOURCES, or None (with one warning) where it cannot be built."""
    if os.environ.get("BLOCKSWAP_ZOO_NATIVE", "1") == "0":
        return None
    try:
        path = build_library("scoring_kernels", KERNEL_SOURCES)
        return _bind(ctypes.CDLL(str(path)))
    except (KernelBuildError, OSError) as e:
        warnings.warn(
            f"fp32 channels_last scoring on the CPU (exact mode) runs without its C kernels (batch norm + "
            f"ReLU fused with residual adds, grouped convolutions, the Fisher potential sum), slower (docs/benchmarks.md), "
            f"with the same values to fp32 rounding: {e}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
