"""Where candidates are scored: in this process or in a pool of worker processes, and with how many
torch threads. On a CPU each worker gets its share of the cores; on a GPU the workers share the device,
which pays only under NVIDIA's Multi-Process Service (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from .block_pool import BlockPool
from .cpu.native_kernels import cpu_kernels
from .scoring import Candidate, Job, ScoreConfig, _prepare, _score_job, _scoring_memory, _uses_cpu_kernels

__all__ = ["mps_control_pipe", "resolve_workers", "score_candidates"]


def _cores_busy_elsewhere(window: float = 0.1) -> float | None:
    """How many cores other processes keep busy, from /proc/stat over ``window`` seconds (we sleep)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(window)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def _auto_threads(device: str, current: int) -> int:
    """Torch's thread count, or 1 on a CPU whose other processes already keep the cores busy.

    Measured now, not from the load average, which counts this process's own recent work too.
    """
    if torch.device(device).type != "cpu":
        return current
    busy = _cores_busy_elsewhere()
    return 1 if busy is not None and busy >= (os.cpu_count() or 1) - 0.5 else current


def _score_jobs(
    jobs: Sequence[Job], images: torch.Tensor, labels: torch.Tensor, cfg: ScoreConfig, num_classes: int, in_chans: int
) -> Iterator[Candidate]:
    previous = torch.get_num_threads()
    threads = cfg.num_threads or _auto_threads(cfg.device, previous)
    torch.set_num_threads(threads)
    try:
        images, labels = _prepare(images, labels, cfg)
        pool = BlockPool()
        with _scoring_memory(cfg.device):
            for job in jobs:
                yield _score_job(job, images, labels, cfg, num_classes, in_chans, pool)
    finally:
        torch.set_num_threads(previous)


# A GPU candidate is bound by the host, so several processes keep the GPU busier, but only through MPS:
# without it the GPU time-slices between processes.
_WORKER: dict[str, object] = {}
DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"


def mps_control_pipe() -> Path:
    """Where a running MPS control daemon has its pipe: ``$CUDA_MPS_PIPE_DIRECTORY/control``, as CUDA looks."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_MPS_PIPE_DIRECTORY) / "control"


AUTO_MAX_WORKERS = 8  # the most `auto` starts; 8 under MPS on an H100 were as fast as 16
AUTO_MIN_CANDIDATES_PER_WORKER = 20  # fewer, and starting a process (importing torch) costs more than it saves


def _usable_cores() -> int:
    """The cores this process may run on (its affinity mask, as under taskset or a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(
    workers: int | str, device: str, candidates: int, world: int = 1, threads: int | None = None
) -> int:
    """The number of scoring processes: ``workers`` itself, or for ``"auto"``:

    - on a CPU, one per usable core (or per ``threads`` cores; at most 8, and at least 20 candidates
      each): on 2 cores, 2 workers of 1 thread scored exact mode 1.07x and 1.15x faster than 1 process
      of 2 threads in two runs, and the 200-candidate Quick start search took 28-31 s, not 34-35 (docs/benchmarks.md);
    - on a GPU, 8 (at most one per core) where an MPS daemon serves it, else 1 (see ``_warn_without_mps``);
    - 1 under torchrun (``world`` > 1), whose ranks are the processes.
    """
    if isinstance(workers, str) and workers.strip().lower() == "auto":
        if world > 1:
            return 1
        cores = _usable_cores()
        if torch.device(device).type == "cuda":
            return min(AUTO_MAX_WORKERS, cores) if mps_control_pipe().exists() else 1
        per_core = max(1, cores // (threads or 1))
        return max(1, min(per_core, AUTO_MAX_WORKERS, candidates // AUTO_MIN_CANDIDATES_PER_WORKER))
    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise ValueError(f"workers must be a whole number >= 1 or 'auto', got {workers!r}") from None
    if n < 1:
        raise ValueError(f"workers must be >= 1 (1: score in this process), got {workers}")
    return n


def _warn_without_mps(workers: int, device: str) -> None:
    """Warn when worker processes will share a GPU that no MPS daemon serves (they gain little then)."""
    if workers > 1 and torch.device(device).type == "cuda" and not mps_control_pipe().exists():
        warnings.warn(
            f"{workers} worker processes will share {device} without NVIDIA MPS (no {mps_control_pipe()}): "
            "the GPU then runs one process at a time, about as fast as 1 worker. Start MPS first "
            "(`nvidia-cuda-mps-control -d`; CUDA_MPS_PIPE_DIRECTORY if it is not the default) or use 1 worker.",
            stacklevel=3,
        )


def _worker_init(
    images: torch.Tensor, labels: torch.Tensor, cfg: ScoreConfig, num_classes: int, in_chans: int, kernels: bool
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    if not kernels:  # the parent could not build them: no worker tries again (or warns again)
        os.environ["BLOCKSWAP_ZOO_NATIVE"] = "0"
    torch.set_num_threads(cfg.num_threads or 1)
    memory = contextlib.ExitStack()  # for the worker's lifetime
    memory.enter_context(_scoring_memory(cfg.device))
    _WORKER["memory"] = memory
    images, labels = _prepare(images, labels, cfg)  # once per worker, not once per candidate
    _WORKER.update(images=images, labels=labels, cfg=cfg, num_classes=num_classes, in_chans=in_chans, pool=BlockPool())


def _worker_score(job: Job) -> Candidate:
    w = _WORKER
    return _score_job(job, w["images"], w["labels"], w["cfg"], w["num_classes"], w["in_chans"], w["pool"])  # type: ignore[arg-type]


def score_candidates(
    jobs: Sequence[Job],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ScoreConfig,
    num_classes: int,
    in_chans: int,
    workers: int = 1,
    on_result: Callable[[Candidate], None] | None = None,
) -> list[Candidate]:
    """Score ``jobs`` in this process (workers=1) or in ``workers`` spawned processes; results in job order.

    ``on_result`` is called as each candidate finishes (for progress and incremental saving).
    """
    results: list[Candidate] = []
    if workers <= 1:
        it: Iterator[Candidate] = _score_jobs(jobs, images, labels, cfg, num_classes, in_chans)
        for c in it:
            results.append(c)
            if on_result:
                on_result(c)
        return results
    import multiprocessing as mp

    _warn_without_mps(workers, cfg.device)
    threads = cfg.num_threads or max(1, _usable_cores() // workers)
    wcfg = ScoreConfig(**{**cfg.to_dict(), "num_threads": threads})  # type: ignore[arg-type]
    ctx = mp.get_context("spawn")
    # exact mode's CPU kernels are built (or found in the cache) here, once, before the workers load them
    kernels = not _uses_cpu_kernels(cfg) or cpu_kernels() is not None
    init_args = (images.cpu(), labels.cpu(), wcfg, num_classes, in_chans, kernels)  # workers move them to their device
    with ctx.Pool(workers, _worker_init, init_args) as pool:
        for c in pool.imap_unordered(_worker_score, jobs):
            results.append(c)
            if on_result:
                on_result(c)
    order = {j[0]: k for k, j in enumerate(jobs)}
    return sorted(results, key=lambda c: order[c.index])
