"""What this CPU runs natively: its model name, the vector ISA PyTorch uses, and whether bf16 is native.

bf16 arithmetic without hardware support (AVX-512 BF16 or AMX on x86, the BF16 extension on Arm) is
emulated by oneDNN and PyTorch and runs several times slower than fp32, so fast scoring and bf16
training ask here before they use it. Detection follows PyTorch and oneDNN: the CPU's feature flags
(``torch.cpu.get_capabilities``, else ``/proc/cpuinfo``), capped as oneDNN and ATen are capped by
``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY``.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import torch

__all__ = ["CpuInfo", "cpu_info"]

# ONEDNN_MAX_CPU_ISA values at or above the first ISA with native bf16 (oneDNN's cpu_isa_t names).
_ONEDNN_BF16_ISAS = {
    "ALL",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
}
_ISA_NAMES = {"AVX512": "AVX-512", "AVX2": "AVX2", "DEFAULT": "no AVX2", "NO AVX": "no AVX"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as PyTorch sees it: model name, vector ISA and whether bf16 is native (and why not)."""

    model: str
    isa: str  # the ATen kernels' ISA: "AVX-512", "AVX2", "SVE256", ...
    native_bf16: bool
    reason: str  # why bf16 is (or is not) native: the flag found, or what is missing or capped

    def describe(self) -> str:
        """One line for logs and benchmark headers, e.g. ``AMD EPYC (AVX2, no native bf16)``."""
        return f"{self.model} ({self.isa}, {'native bf16' if self.native_bf16 else 'no native bf16'})"

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "isa": self.isa, "native_bf16": self.native_bf16, "reason": self.reason}


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_flags(info: dict[str, str]) -> set[str]:
    """The CPU's feature flags: /proc/cpuinfo's with PyTorch's view added (torch >= 2.6 has one)."""
    flags = set((info.get("flags") or info.get("features") or "").split())
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            flags |= {name for name, on in get().items() if on is True}
        except RuntimeError:
            pass
    return flags


def _model_name(info: dict[str, str]) -> str:
    return info.get("model name") or info.get("cpu model") or platform.processor() or platform.machine() or "unknown"


def _native_bf16(flags: set[str], isa: str) -> tuple[bool, str]:
    """Whether bf16 arithmetic is native here, and the reason, as oneDNN and ATen would run it."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        if not found:
            return False, "the CPU has neither AVX512-BF16 nor AMX-BF16: bf16 is emulated"
        cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()
        if cap not in _ONEDNN_BF16_ISAS:
            return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN below its bf16 instructions"
        if isa != "AVX-512":
            return False, f"ATen runs {isa} kernels (ATEN_CPU_CAPABILITY), which emulate bf16"
        return True, f"the CPU has {' and '.join(found)}"
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, "the CPU has the Arm BF16 extension"
        return False, "the CPU lacks the Arm BF16 extension: bf16 is emulated"
    return False, f"no native bf16 is known for {machine or 'this architecture'}"


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CpuInfo (cached: the CPU does not change while the process runs)."""
    info = _proc_cpuinfo()
    isa_raw = torch.backends.cpu.get_cpu_capability()
    isa = _ISA_NAMES.get(isa_raw, isa_raw)
    native, reason = _native_bf16(_cpu_flags(info), isa)
    return CpuInfo(_model_name(info), isa, native, reason)
