"""Which machine a latency figure belongs to: the device, its threads, the torch build, the dtype and batch."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

import torch

__all__ = ["DTYPES", "LatencyError", "MeasureSetting", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("eager",)


class LatencyError(ValueError):
    """A latency budget, table or setting that cannot be used as asked."""


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise LatencyError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None


def _cpu_identity() -> tuple[str, str]:
    """CPU model with its family/model/stepping (two "AMD EPYC" can differ ten-fold) and the kernels' ISA."""
    from ..cpu_info import _proc_cpuinfo, cpu_info

    info = _proc_cpuinfo()
    ids = "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
    c = cpu_info()
    return f"{c.model} (family/model/stepping {ids})", f"{c.isa}, {'native' if c.native_bf16 else 'no native'} bf16"


@dataclass(frozen=True)
class MeasureSetting:
    """Where and how latencies are measured; tables and records are keyed by it."""

    device_type: str  # cpu | cuda
    device_name: str  # CPU model with family/model/stepping, or the GPU's name
    isa: str  # CPU: the ATen ISA and bf16 support; CUDA: the compute capability
    threads: int  # torch's intra-op threads (CPU); 0 on CUDA
    torch: str
    backend: str
    dtype: str
    batch: int

    @classmethod
    def here(
        cls, device: str = "cpu", batch: int = 1, dtype: str = "float32", backend: str = "eager"
    ) -> MeasureSetting:
        """This process's setting on ``device`` (cpu, cuda, cuda:N)."""
        if batch < 1:
            raise LatencyError(f"batch must be >= 1, got {batch}")
        resolve_dtype(dtype)
        if backend not in BACKENDS:
            raise LatencyError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        dev = torch.device(device)
        if dev.type == "cpu":
            name, isa = _cpu_identity()
            return cls("cpu", name, isa, torch.get_num_threads(), torch.__version__, backend, dtype, batch)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise LatencyError(f"device {device!r}: CUDA is not available here; measure on --device cpu")
            major, minor = torch.cuda.get_device_capability(dev)
            name = torch.cuda.get_device_name(dev)
            return cls("cuda", name, f"sm_{major}{minor}", 0, torch.__version__, backend, dtype, batch)
        raise LatencyError(f"device {device!r}: latency is measured on cpu or cuda")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line for tables, logs and docs."""
        where = (
            f"{self.device_name}, {self.isa}, {self.threads} threads"
            if self.device_type == "cpu"
            else (f"{self.device_name} ({self.isa})")
        )
        return f"{where}; torch {self.torch} {self.backend}, {self.dtype}, batch {self.batch}"

    def file_name(self) -> str:
        """A table's file name: readable, and unique to the setting (a hash of all of it)."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower().split("(")[0]).strip("-")[:32]
        return f"{self.device_type}-{slug}-b{self.batch}-{self.dtype}-{digest}.json"
