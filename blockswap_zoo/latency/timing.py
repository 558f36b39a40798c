"""Timing one module's inference forward: warm-up, then the median of repeats, on CPU or CUDA."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .device import resolve_dtype

__all__ = ["Timing", "time_forward", "time_interleaved"]


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of one forward over ``repeats`` timed calls, and a spread: the interquartile range
    of calls (one run) or the range of the pass medians (interleaved runs)."""

    median_ms: float
    spread_ms: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_ms": round(self.median_ms, 6), "spread_ms": round(self.spread_ms, 6), "repeats": self.repeats}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    module: nn.Module,
    input_shape: tuple[int, ...],
    device: str = "cpu",
    dtype: str = "float32",
    min_calls: int = 20,
    min_seconds: float = 0.25,
    warmup_calls: int = 5,
) -> Timing:
    """Time ``module`` (eval mode, inference) on a random input of ``input_shape``: after warm-up, each call
    is timed alone (synchronised on CUDA) until ``min_calls`` calls and ``min_seconds`` have passed; the
    result is the median call, which a preempted or interrupted call does not move."""
    dev = torch.device(device)
    module = module.to(dev, resolve_dtype(dtype)).eval()
    x = torch.randn(input_shape, device=dev, dtype=resolve_dtype(dtype))
    samples: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup_calls):
            module(x)
        _sync(dev)
        start = time.perf_counter()
        while len(samples) < min_calls or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            module(x)
            _sync(dev)
            samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=4)
    return Timing(statistics.median(samples), q[2] - q[0], len(samples))


def time_interleaved(
    jobs: Sequence[tuple[nn.Module, tuple[int, ...]]],
    device: str = "cpu",
    dtype: str = "float32",
    passes: int = 3,
    min_seconds: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Timing]:
    """Time every (module, input shape) once per pass, ``passes`` times over, and keep each one's median
    over passes: a machine that speeds up or slows down while the list runs moves all of them alike."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    runs: list[list[Timing]] = [[] for _ in jobs]
    for p in range(passes):
        for i, (module, shape) in enumerate(jobs):
            if progress is not None:
                progress(p * len(jobs) + i, passes * len(jobs))
            runs[i].append(time_forward(module, shape, device, dtype, min_seconds=min_seconds))
    if progress is not None:
        progress(passes * len(jobs), passes * len(jobs))
    return [
        Timing(
            statistics.median(t.median_ms for t in ts),
            max(t.median_ms for t in ts) - min(t.median_ms for t in ts),
            sum(t.repeats for t in ts),
        )
        for ts in runs
    ]
