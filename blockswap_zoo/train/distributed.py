"""Distributed data-parallel plumbing for ``torchrun``: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "device_name",
    "rank_batch_size",
    "resolve_device",
    "setup",
    "shuffled_sampler",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def device_name(device: torch.device) -> str:
    """The hardware behind ``device`` in words: the GPU's name, or the CPU's model, ISA and bf16 support."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from ..cpu_info import cpu_info

    return cpu_info().describe()


def parse_device(device: str) -> torch.device:
    """A cpu or cuda device from its text (not ``auto``), whether or not this machine has it; ValueError else."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:<index>")
    return dev


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device if there is one, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_batch_size(batch_size: int, info: DistInfo) -> int:
    """Each process's share of a global batch (ValueError where it does not divide evenly)."""
    if batch_size % info.world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {info.world_size} processes")
    return batch_size // info.world_size


def shuffled_sampler(data: Any, info: DistInfo, seed: int) -> torch.utils.data.Sampler[int]:  # noqa: ANN401
    """A seeded shuffle of ``data``: split across the torchrun processes (dropping the uneven tail), or whole."""
    from torch.utils.data import DistributedSampler, RandomSampler

    if info.enabled:
        return DistributedSampler(data, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=True)
    return RandomSampler(data, generator=torch.Generator().manual_seed(seed))
