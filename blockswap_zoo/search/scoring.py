"""Scoring candidates: build each genotype with a per-candidate init seed and apply a proxy.

Two modes. ``exact``: fp32 on the whole minibatch: the values of the definition (to fp32 rounding).
``fast``: a sub-batch of the same minibatch, in bf16 autocast where the CPU runs bf16 natively
(``cpu_info``) and in fp32 where bf16 would be emulated, which is slower than fp32; chosen by
measurement (``benchmarks/search_speed.py`` reports its speed and how often its winner is in exact
mode's top 5). Both initialise the network on the CPU (the same weights on every device), with
parameters that need no gradient, so the only backward work is between the loss and the probes. On
the CPU both run channels_last with the layers of ``cpu.layers`` and keep freed memory in the process.
A scoring loop builds each network from the blocks of the one before (``block_pool``): the same
weights as a fresh build, with less Python work per candidate.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.profiler import record_function

from ..cpu_info import cpu_info
from ..genotype import Genotype
from ..models import build_model
from ..numerics import strict_fp32
from . import proxies
from .block_pool import BlockPool
from .cpu.allocator import retain_freed_memory
from .cpu.layers import adapt_for_cpu_scoring, fisher_term_fast, scoring_copy
from .cpu.native_kernels import cpu_kernels
from .proxies import get_proxy

__all__ = [
    "MODES",
    "Candidate",
    "ScoreConfig",
    "candidate_seed",
    "describe_config",
    "fisher_per_block",
    "fisher_potential",
    "mode_config",
    "resolve_mode",
    "score_genotype",
]


@dataclass(frozen=True)
class ScoreConfig:
    """How candidates are scored: proxy, precision, sub-batch, layout, device and threads."""

    proxy: str = "fisher"
    autocast: str | None = None  # None (fp32) or "bfloat16" / "float16"
    batch_size: int | None = None  # None: the whole minibatch
    channels_last: bool = True
    device: str = "cpu"
    # torch threads per process; None: torch's default, or 1 on a CPU that other jobs keep busy
    # (2 threads are ~1.7x faster than 1 on 2 idle cores, but up to 10x slower on 2 busy ones).
    num_threads: int | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.autocast is None else getattr(torch, self.autocast)

    @property
    def autocast_precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the arithmetic the network runs in."""
        return {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.autocast]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


MODES: dict[str, dict[str, object]] = {
    # fp32, whole minibatch: the definition's values. channels_last on CPUs only, where batch norm is
    # ExactStatsBatchNorm2d (PyTorch's channels_last batch norm put Fisher potential 6e-3 from float64,
    # NCHW 3.9e-4: benchmarks/search_speed.py --ablation); GPUs keep NCHW, the published search's layout.
    "exact": {"autocast": None, "batch_size": None, "channels_last": True},
    # bf16 autocast (fp32 on a CPU without native bf16), channels_last, the first 64 images of the same
    # minibatch (benchmarks/search_speed.py).
    "fast": {"autocast": "bfloat16", "batch_size": 64, "channels_last": True},
}


def resolve_mode(mode: str, device: str) -> str:
    """``auto``: fast mode on CPUs (in bf16 or fp32, as ``mode_config`` picks by the CPU), exact mode on GPUs,
    where bf16 scored no faster (H200: exact 0.065, fast 0.070 s/candidate, docs/benchmarks.md) and exact mode gives the
    definition's values. Other modes pass through."""
    if mode != "auto":
        return mode
    return "exact" if torch.device(device).type == "cuda" else "fast"


def mode_config(mode: str, proxy: str = "fisher", device: str = "cpu", num_threads: int | None = None) -> ScoreConfig:
    """The ScoreConfig of a named mode (exact or fast) for ``proxy`` on ``device``.

    Fast mode on a CPU without native bf16 (``cpu_info``) stays fp32: emulated bf16 is slower than fp32
    there, and the sub-batch alone makes it faster than exact mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; choose one of {', '.join(MODES)}")
    opts = dict(MODES[mode])
    on_cuda = torch.device(device).type == "cuda"
    if proxy != "fisher":
        # the ablation proxies run in fp32 (synflow needs float64 range anyway)
        opts["autocast"], opts["channels_last"] = None, False
    if opts["autocast"] == "bfloat16" and not on_cuda and not cpu_info().native_bf16:
        opts["autocast"] = None
    if on_cuda and opts["autocast"] == "bfloat16":
        opts["batch_size"] = None  # on a GPU the whole batch costs about the same as half of it
    if on_cuda and opts["autocast"] is None:
        opts["channels_last"] = False
    return ScoreConfig(proxy=proxy, device=device, num_threads=num_threads, **opts)  # type: ignore[arg-type]


def describe_config(mode: str, cfg: ScoreConfig) -> str:
    """What scoring with ``cfg`` runs and why, in one line, e.g. ``fast mode: fp32 on the first 64 images``."""
    precision = cfg.autocast_precision + ("" if cfg.autocast is None else " autocast")
    images = "the whole minibatch" if cfg.batch_size is None else f"the first {cfg.batch_size} images"
    line = f"{mode} mode: {precision} on {images}, {'channels_last' if cfg.channels_last else 'NCHW'}"
    if _uses_cpu_kernels(cfg):
        line += " with the C kernels" if cpu_kernels() is not None else " (C kernels unavailable: PyTorch's layers)"
    if mode == "fast" and torch.device(cfg.device).type == "cpu" and cfg.proxy == "fisher":
        info = cpu_info()
        line += f"; {'bf16' if info.native_bf16 else 'fp32'} because {info.reason} ({info.model}, {info.isa})"
    return line


def candidate_seed(search_seed: int, index: int) -> int:
    """The init seed of candidate ``index`` of a search: independent of how candidates are split up."""
    digest = hashlib.sha256(f"blockswap-init:{search_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Candidate:
    """One scored candidate: its index in the search, genotype, costs, init seed, score and time."""

    index: int
    genotype: str
    params: int
    macs: int
    seed: int
    score: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["score"] = self.score if math.isfinite(self.score) else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        score = d.get("score")
        return cls(
            int(d["index"]),
            str(d["genotype"]),
            int(d["params"]),
            int(d["macs"]),
            int(d["seed"]),
            float("nan") if score is None else float(score),
            float(d.get("seconds", 0.0)),
        )


def _uses_cpu_kernels(cfg: ScoreConfig) -> bool:
    """Whether scoring with ``cfg`` runs the C kernels of ``cpu.layers`` (fp32 channels_last on a CPU)."""
    return cfg.channels_last and cfg.autocast is None and torch.device(cfg.device).type == "cpu"


def _prepare(images: torch.Tensor, labels: torch.Tensor, cfg: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.batch_size is not None:
        images, labels = images[: cfg.batch_size], labels[: cfg.batch_size]
    images = images.to(cfg.device, torch.float32)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(cfg.device)


def _to_device(model: nn.Module, device: str, fmt: torch.memory_format) -> nn.Module:
    """``model.to(device, memory_format=fmt)``; on the CPU, where the network was built, only the 4-d
    tensors change layout, without Module.to's walk (a few ms of a candidate's Python work).

    As Module.to, by ``Tensor.to``: unlike ``contiguous``, it also restrides a tensor that is both
    layouts at once (a 1-channel stem's weight), and the layout a convolution picks follows those strides.
    """
    if torch.device(device).type != "cpu":
        return model.to(device, memory_format=fmt)  # type: ignore[call-overload]  # stubs lack memory_format
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type != "cpu":
            return model.to(device, memory_format=fmt)  # type: ignore[call-overload]  # as above
        if t.dim() == 4:
            t.data = t.data.to(memory_format=fmt)
    return model


def score_genotype(
    genotype: Genotype,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    cfg: ScoreConfig,
    num_classes: int,
    in_chans: int,
    prepared: bool = False,
    pool: BlockPool | None = None,
) -> float:
    """Build ``genotype`` with init ``seed`` on cfg.device and return its proxy score on the minibatch.

    With a ``pool`` the network reuses the blocks of the pool's previous one (same weights, fewer
    modules to construct; ``block_pool``); that network must not be used afterwards.
    """
    if not prepared:
        images, labels = _prepare(images, labels, cfg)
    # The record_function ranges name the phases for benchmarks/profile_search_scoring.py.
    with record_function("score/build"):
        torch.manual_seed(seed)
        # Initialised on the CPU, whatever the device: CPU and CUDA generators draw different numbers
        # from one seed, and a search must pick the same winner on every device.
        if pool is None:
            model: nn.Module = build_model(genotype, num_classes=num_classes, in_chans=in_chans)
        else:
            model = pool.build(genotype, num_classes=num_classes, in_chans=in_chans)
        model.requires_grad_(False)
        if cfg.channels_last and torch.device(cfg.device).type == "cpu":
            fp32 = _uses_cpu_kernels(cfg)  # under autocast the fp32 C kernels are not built at all
            adapt_for_cpu_scoring(model, exact_batch_norm=fp32, fuse_norm_act=fp32, grouped_conv_kernel=fp32)
    with record_function("score/to_device"):
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = _to_device(model, cfg.device, fmt)
    with strict_fp32() if cfg.autocast is None else contextlib.nullcontext():  # no TF32 in fp32 modes
        if cfg.proxy == "fisher":
            return proxies.fisher_potential(model, images, labels, cfg.autocast_dtype, term=fisher_term_fast)
        return get_proxy(cfg.proxy)(model, images, labels)


def fisher_per_block(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast_dtype: torch.dtype | None = None
) -> list[float]:
    """``proxies.fisher_per_block`` of a user's model, computed as the search's exact mode computes it where
    it can: an fp32 CPU model with NCHW images is scored as a channels_last copy with the CPU layers and
    kernels (``cpu.layers.scoring_copy``: exact mode's values bit for bit, the model left as it is); any
    other model as it is, with the Fisher-term kernel where the tensors allow it."""
    model, images = _fast_path(model, images, autocast_dtype)
    return proxies.fisher_per_block(model, images, labels, autocast_dtype, term=fisher_term_fast)


def fisher_potential(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast_dtype: torch.dtype | None = None
) -> float:
    """BlockSwap's Fisher potential of a user's model on one minibatch, computed as ``fisher_per_block`` does."""
    model, images = _fast_path(model, images, autocast_dtype)
    return proxies.fisher_potential(model, images, labels, autocast_dtype, term=fisher_term_fast)


def _fast_path(
    model: nn.Module, images: torch.Tensor, autocast_dtype: torch.dtype | None
) -> tuple[nn.Module, torch.Tensor]:
    """Exact mode's CPU copy of ``model`` and layout of ``images`` where it applies, else both as they are."""
    fast = scoring_copy(model, images) if autocast_dtype is None else None
    return (model, images) if fast is None else fast


Job = tuple[int, str, int, int, int]  # index, compact genotype, params, macs, seed


def _scoring_memory(device: str) -> contextlib.AbstractContextManager:
    """On a CPU, keep freed memory in the process while scoring (``allocator``); elsewhere nothing."""
    return retain_freed_memory() if torch.device(device).type == "cpu" else contextlib.nullcontext()


def _score_job(
    job: Job,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: ScoreConfig,
    num_classes: int,
    in_chans: int,
    pool: BlockPool,
) -> Candidate:
    """Score one job on an already prepared minibatch."""
    index, text, params, macs, seed = job
    t0 = time.perf_counter()
    score = score_genotype(Genotype.from_string(text), images, labels, seed, cfg, num_classes, in_chans, True, pool)
    return Candidate(index, text, params, macs, seed, score, time.perf_counter() - t0)
