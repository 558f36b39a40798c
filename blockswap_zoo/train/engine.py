"""The train loop: teacher training (cross-entropy) and attention-transfer distillation, with
bf16 autocast / channels_last on GPU, on-device metrics (one host sync per epoch), atomic
per-epoch checkpoints, exact resume, DDP under torchrun, JSONL metrics and curves."""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_info import cpu_info
from ..data import DatasetInfo, DeviceLoader, get_dataset_info, image_folder, load_arrays
from ..io import atomic_write_text
from ..models import build_model
from ..numerics import training_flags
from ..sources import resolve_genotype
from . import distributed as D
from .artifacts import CHECKPOINT, load_model, model_config, write_curves, write_final, write_metrics
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .config import TrainConfig
from .evaluate import check_model_fits, run_eval
from .losses import attention_transfer, kd_loss

if TYPE_CHECKING:
    from ..models import SwapNet

__all__ = [
    "RunDirError",
    "TrainResult",
    "build_student",
    "load_teacher",
    "lr_lambda",
    "prepare_out_dir",
    "seed_everything",
    "train",
    "worker_seed",
]

RUN_FILES = (CHECKPOINT, "metrics.jsonl", "curves.png", "model.safetensors", "config.json", "config.yaml")
# Settings a resumed run may change: where the data is, how the run executes, is evaluated or shown, and its
# notes (extra); not what is trained. (max_steps shapes the LR schedule, loader the data order: both fixed.)
RESUME_MAY_CHANGE = frozenset(
    {"data_dir", "download", "device", "progress", "num_workers", "eval_every", "eval_batch_size", "eval_subset",
     "compile", "compile_mode", "amp", "channels_last", "deterministic", "extra"}
)  # fmt: skip


def _use_bf16(amp: str, dev: torch.device) -> bool:
    """Whether to train in bf16 autocast: ``bf16``, or ``auto`` on a GPU or a CPU with native bf16 (where it
    trains as well as fp32 at about twice the speed: docs/benchmarks.md). Warns when a CPU would emulate bf16."""
    use = amp == "bf16" or (amp == "auto" and (dev.type == "cuda" or cpu_info().native_bf16))
    if use and dev.type == "cpu" and not cpu_info().native_bf16:
        info = cpu_info()
        warnings.warn(
            f"--amp bf16 on {info.describe()}: {info.reason}, several times slower than fp32 here; "
            "train with --amp none (or auto: fp32 on CPUs without native bf16)",
            stacklevel=3,
        )
    return use


def compile_mode_for(compile: bool | None, mode: str, dev: torch.device, distributed: bool = False) -> str | None:
    """The torch.compile mode to train with, None for eager: as asked, else (``compile`` None) CUDA graphs
    on one GPU, where they pay, and eager on CPUs and under DDP; mode ``auto`` is reduce-overhead on GPUs."""
    use = compile if compile is not None else dev.type == "cuda" and not distributed
    if not use:
        return None
    return mode if mode != "auto" else "reduce-overhead" if dev.type == "cuda" else "default"


def _same_setting(key: str, saved: Any, now: Any) -> bool:  # noqa: ANN401
    """Whether a resumed run's setting is unchanged; a teacher given as a path matches the same file spelt otherwise."""
    if saved == now:
        return True
    if key == "teacher" and isinstance(saved, str) and isinstance(now, str) and Path(saved).exists():
        return Path(saved).resolve() == Path(now).resolve()
    return False


class RunDirError(FileExistsError):
    """The run directory is in the way (exists without --resume/--force) or cannot be resumed."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the final metrics, per-epoch history and the trained model."""

    out_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


def build_student(config: TrainConfig, info: DatasetInfo) -> nn.Module:
    """The model ``config.arch`` names, sized for the dataset's classes and channels."""
    return build_model(resolve_genotype(config.arch), info.num_classes, info.in_chans, config.drop_rate)


def load_teacher(spec: str, device: torch.device) -> nn.Module:
    """A frozen teacher in eval mode from a run directory, a checkpoint or a registered name."""
    teacher = load_model(spec)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval().to(device)


def lr_lambda(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warmup, then cosine to 0, step decay, or constant."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            span = max(total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
        if config.schedule == "step":
            return config.gamma ** (step // (config.step_size * steps_per_epoch))
        return 1.0

    return f


class _Forward(nn.Module):
    """model -> (logits, stage outputs): one module for DDP and torch.compile to wrap."""

    def __init__(self, model: nn.Module, with_features: bool) -> None:
        super().__init__()
        self.model, self.with_features = model, with_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.with_features:
            return self.model(x), []
        model = cast("SwapNet", self.model)  # the contract every model here has
        # (final features, stage outputs): the contract's answer unless intermediates_only
        final, feats = cast(tuple[torch.Tensor, list[torch.Tensor]], model.forward_intermediates(x))
        return model.forward_head(final), feats


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (a run's start; resume restores their states)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_out_dir(out: Path, resume: bool, force: bool, main: bool) -> bool:
    """Check (and with ``force``, clear) the run dir; returns whether a checkpoint is to be resumed.

    A directory holding only the ``config.yaml`` of a run stopped before its first epoch ended
    counts as empty: there is nothing to resume, and nothing of value to overwrite.
    """
    if resume and force:
        raise RunDirError("--resume and --force contradict each other: pass --resume to continue, --force to restart")
    ckpt = out / CHECKPOINT
    _check_dir_path(out)
    leftovers_only = out.exists() and {p.name for p in out.iterdir()} <= {"config.yaml"}
    if resume:
        if ckpt.is_file():
            return True
        if out.exists() and not leftovers_only:
            raise RunDirError(f"cannot resume: {ckpt} does not exist (pass --force to start {out} afresh)")
        return False
    if out.exists() and not leftovers_only:
        if not force:
            raise RunDirError(
                f"run directory {out} already exists; pass --resume to continue it or --force to overwrite"
            )
        if main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    return False


def _check_dir_path(out: Path) -> None:
    """Refuse a run directory path that is, or lies under, an existing file (instead of a NotADirectoryError)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies under {p}, which is a file"
                raise RunDirError(f"run directory {out} {what}, not a folder; pass --out a new or existing folder")
            return


def _train_loader(
    config: TrainConfig, info: DatasetInfo, dist: D.DistInfo, channels_last: bool
) -> tuple[DeviceLoader | _HostLoader, DeviceLoader | None, int, DatasetInfo]:
    """-> (loader, object with state_dict for checkpointing or None, number of training images, dataset info).

    The info returned names an image-folder dataset's classes after its class folders.
    """
    if config.loader == "device" and not info.in_memory:
        raise ValueError(
            f"--loader device keeps a dataset in memory, but {info.name} streams from an image folder; "
            "use --loader dataloader (or auto)"
        )
    use_device = info.in_memory and config.loader != "dataloader"
    if use_device:
        data = load_arrays(info.name, "train", config.data_dir, download=config.download)
        n = len(data) if config.subset is None else min(config.subset, len(data))
        loader = DeviceLoader(
            data.images[:n],
            data.labels[:n],
            info,
            config.batch_size,
            dist.device,
            seed=config.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            channels_last=channels_last,
        )
        return loader, loader, n, info
    from torch.utils.data import DataLoader, Dataset, Subset

    from ..data.transforms import PerSampleDataset, train_transform

    ds: Dataset
    if info.in_memory:
        data = load_arrays(info.name, "train", config.data_dir, download=config.download)
        ds = PerSampleDataset(data.images, data.labels, train_transform(info))
    else:
        ds = image_folder(info.name, "train", config.data_dir, train_transform(info))
        info = _with_folder_labels(info, ds.classes)
    if config.subset is not None:
        ds = Subset(ds, range(min(config.subset, len(ds))))  # type: ignore[arg-type]  # both datasets are sized
    sampler = D.shuffled_sampler(ds, dist, config.seed)
    host_loader = DataLoader(
        ds,
        batch_size=D.rank_batch_size(config.batch_size, dist),
        sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=dist.device.type == "cuda",
        drop_last=True,
        generator=torch.Generator(),  # seeds the workers; re-seeded per epoch by _HostLoader.set_epoch
        persistent_workers=False,  # fresh workers each epoch, seeded from (seed, epoch): resume is exact
    )
    return _HostLoader(host_loader, sampler, dist.device, channels_last, config.seed, dist.rank), None, len(ds), info


def _check_test_split(config: TrainConfig, info: DatasetInfo) -> None:
    """Open the test split the run evaluates on (in-memory splits are cached, so this loads them once)."""
    if info.in_memory:
        load_arrays(info.name, "test", config.data_dir, download=config.download)
    else:
        image_folder(info.name, "test", config.data_dir, None)


def _with_folder_labels(info: DatasetInfo, classes: list[str]) -> DatasetInfo:
    """``info`` with its label names taken from the class folders (ImageFolder's sorted ``classes``)."""
    if len(classes) > info.num_classes:
        raise ValueError(
            f"the {info.name} train folder has {len(classes)} class folders but {info.name} models have "
            f"{info.num_classes} outputs; keep at most {info.num_classes} class folders"
        )
    return replace(info, label_names=tuple(classes))


class _HostLoader:
    """A DataLoader whose batches are moved to the device; its shuffling and workers are re-seeded per epoch.

    Every random draw of an epoch (the order, each worker's augmentation) follows from (seed, epoch,
    rank) alone, so a run resumed at an epoch boundary draws what the uninterrupted run drew.
    """

    def __init__(
        self, loader: Any, sampler: Any, device: torch.device, channels_last: bool, seed: int, rank: int = 0
    ) -> None:
        self.loader, self.sampler, self.device, self.seed, self.epoch = loader, sampler, device, seed, 0
        self.rank = rank
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Seed the epoch's shuffle and worker RNGs from (seed, epoch, rank); call before iterating."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        elif getattr(self.sampler, "generator", None) is not None:
            self.sampler.generator.manual_seed(self.seed * 100_003 + epoch)
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(worker_seed(self.seed, epoch, self.rank))

    def __iter__(self):
        for x, y in self.loader:
            yield (
                x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt),
                y.to(self.device, non_blocking=True),
            )


def worker_seed(seed: int, epoch: int, rank: int) -> int:
    """The DataLoader's base seed for an epoch: distinct per epoch and rank, independent of the global RNG."""
    return int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ips]:>8.0f} img/s"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _progress_counter(progress: Any, task: Any, world_size: int) -> Callable[[int], None]:  # noqa: ANN401
    """A per-batch callback that advances the epoch's progress bar and shows the images per second."""
    t0, seen = time.perf_counter(), 0

    def advance(batch: int) -> None:
        nonlocal seen
        seen += batch * world_size
        progress.update(task, advance=1, ips=seen / max(time.perf_counter() - t0, 1e-9))

    return advance


def train(
    config: TrainConfig,
    model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (default: ``config.arch``) on ``config.dataset``; distil from ``teacher`` if given.

    Loss: cross-entropy (+ ``beta * sum_i AT_i`` with a teacher, + Hinton KD if ``kd_alpha`` > 0).
    With ``out_dir`` every epoch writes ``checkpoint.pt`` (resumable), ``metrics.jsonl`` and
    ``curves.png``; the end writes ``model.safetensors`` and ``config.json``.
    """
    dist = D.setup(config.device)
    with training_flags(config.deterministic, dist.device.type == "cuda"):  # the process's own flags come back
        return _train(config, dist, model, teacher, out_dir, resume, force, on_epoch_end)


def _train(
    config: TrainConfig,
    dist: D.DistInfo,
    model: nn.Module | None,
    teacher: nn.Module | None,
    out_dir: str | Path | None,
    resume: bool,
    force: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> TrainResult:
    dev = dist.device
    info = get_dataset_info(config.dataset)
    out = Path(out_dir) if out_dir is not None else None
    resuming = prepare_out_dir(out, resume, force, dist.is_main) if out is not None else False
    D.barrier()
    seed_everything(config.seed)

    amp = _use_bf16(config.amp, dev)
    # channels_last by default wherever bf16 runs: oneDNN's and cuDNN's fast bf16 convolutions want it
    channels_last = config.channels_last if config.channels_last is not None else dev.type == "cuda" or amp
    model, teacher = _place_models(config, info, dev, model, teacher, channels_last)
    loader, loader_state, n_train, info = _train_loader(config, info, dist, channels_last)
    _check_test_split(config, info)  # a missing or corrupt test split fails now, not after the first epoch
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{n_train} training images give no batch of {config.batch_size}; lower --batch-size")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer, scheduler = _optimizer(config, model, steps_per_epoch, total_steps)

    run_cfg = model_config(model, info, {"teacher": config.teacher, "train_config": config.to_dict()})
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if resuming:
        assert out is not None
        start_epoch, step, history = _resume(out, config, model, optimizer, scheduler, loader_state)
    if dist.is_main and out is not None:
        import yaml

        atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    stepper = _Stepper(config, dist, model, teacher, amp, optimizer, scheduler)
    eval_kwargs = dict(
        data_dir=config.data_dir,
        batch_size=config.eval_batch_size,
        subset=config.eval_subset,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=channels_last,
        num_workers=config.num_workers,
        download=config.download,
        amp=amp,
    )
    last_eval: dict[str, float] | None = None
    progress = _progress(config.progress and dist.is_main)
    run_start = time.perf_counter()
    with progress:
        task = progress.add_task("train", total=steps_per_epoch, ips=0.0)
        for epoch in range(start_epoch, config.epochs):
            if step >= total_steps:
                break
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            model.train()
            progress.reset(task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{config.epochs}", ips=0.0)
            t0 = time.perf_counter()
            sums, step = stepper.run_epoch(
                loader, step, total_steps, _progress_counter(progress, task, dist.world_size)
            )
            record = _epoch_record(epoch, step, optimizer, sums, time.perf_counter() - t0, teacher is not None)
            last_epoch = epoch + 1 == config.epochs or step >= total_steps
            if last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0):
                last_eval = run_eval(model, info, dev, **eval_kwargs)
                record.update(test_loss=last_eval["loss"], test_top1=last_eval["top1"], test_top5=last_eval["top5"])
            history.append(record)
            if dist.is_main:
                progress.console.print(_epoch_line(record), highlight=False)
                if out is not None:
                    state = _checkpoint_state(model, optimizer, scheduler, loader_state, epoch, step, history)
                    save_checkpoint(out / CHECKPOINT, {**state, "config": config.to_dict(), "model_config": run_cfg})
                    write_metrics(out, history)
                    write_curves(out, history)
            D.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)

    if last_eval is None:
        last_eval = run_eval(model, info, dev, **eval_kwargs)
    final = _final_metrics(last_eval, history, step, n_train, time.perf_counter() - run_start, dist)
    if dist.is_main and out is not None:
        write_final(out, model, {**run_cfg, "metrics": final})
    if dist.is_main and config.progress:
        from rich.console import Console

        Console().print(
            f"[bold green]done[/]: top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}% on {final['n_test']} "
            f"test images, {step} steps in {final['wall_time_s']:.0f}s" + (f" -> {out}" if out else ""),
            highlight=False,
        )
    # the standard layout again, so the model returned evaluates as its reloaded weights do
    return TrainResult(out, final, history, model.to(memory_format=torch.contiguous_format))  # type: ignore[call-overload]


def _place_models(
    config: TrainConfig,
    info: DatasetInfo,
    dev: torch.device,
    model: nn.Module | None,
    teacher: nn.Module | None,
    channels_last: bool,
) -> tuple[nn.Module, nn.Module | None]:
    """The student (built from ``config.arch`` unless given) and the frozen teacher (loaded from
    ``config.teacher`` unless given), both checked against the dataset and moved to the device."""
    if model is None:
        model = build_student(config, info)
    check_model_fits(model, info)
    if teacher is None and config.teacher:
        teacher = load_teacher(config.teacher, dev)
    if teacher is not None:
        check_model_fits(teacher, info, f"the teacher {config.teacher or ''}".rstrip(), classes=config.kd_alpha > 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack this overload
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher = teacher.eval().to(dev, memory_format=fmt)  # type: ignore[call-overload]
    return model, teacher


def _optimizer(
    config: TrainConfig, model: nn.Module, steps_per_epoch: int, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD at the (linearly scaled, if asked) learning rate, and its per-step schedule."""
    lr = config.lr * (config.batch_size / config.base_batch_size if config.lr_scaling == "linear" else 1.0)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch, total_steps))


class _Stepper:
    """The optimiser steps of an epoch: the student's loss (with the teacher's attention-transfer and KD
    terms when there is a teacher), backward, step; running sums stay on the device until the epoch ends."""

    def __init__(
        self,
        config: TrainConfig,
        dist: D.DistInfo,
        model: nn.Module,
        teacher: nn.Module | None,
        amp: bool,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
    ) -> None:
        dev = dist.device
        fwd: nn.Module = _Forward(model, with_features=teacher is not None)
        if dist.enabled:
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)
        t_fwd = _Forward(teacher, with_features=True) if teacher is not None else None  # (logits, stages), no grad
        self.compiled = compile_mode_for(config.compile, config.compile_mode, dev, dist.enabled)
        if self.compiled:  # the teacher too: with reduce-overhead both replay CUDA graphs
            fwd = torch.compile(fwd, mode=self.compiled)  # type: ignore[assignment]
            t_fwd = torch.compile(t_fwd, mode=self.compiled) if t_fwd is not None else None  # type: ignore[assignment]
        self.config, self.device, self.fwd, self.t_fwd = config, dev, fwd, t_fwd
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.optimizer, self.scheduler = optimizer, scheduler
        self.checked = False  # student and teacher stages compared once, on the first batch

    def run_epoch(
        self, loader: Iterable, step: int, total_steps: int, advance: Callable[[int], None]
    ) -> tuple[list[float], int]:
        """Train until the loader ends or ``total_steps``; -> (summed loss, correct, images, AT loss; step)."""
        config = self.config
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, correct, n, at
        for x, y in loader:
            if self.compiled:  # CUDA graphs (reduce-overhead) may reuse the last step's outputs from here on
                torch.compiler.cudagraph_mark_step_begin()
            with self.autocast():
                logits, feats = self.fwd(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
                at = None
                if self.t_fwd is not None:
                    with torch.no_grad():
                        t_logits, t_feats = self.t_fwd(x)
                    if not self.checked:
                        _check_compatible(feats, t_feats)
                        self.checked = True
                    at = attention_transfer(feats, t_feats, config.at_mode)
                    if config.kd_alpha > 0:
                        kd = kd_loss(logits, t_logits, config.kd_temperature)
                        loss = (1 - config.kd_alpha) * loss + config.kd_alpha * kd
                    loss = loss + config.beta * at
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            step += 1
            with torch.no_grad():
                d = loss.detach().double()
                sums[0] += d * len(y)
                sums[1] += (logits.detach().argmax(1) == y).sum()
                sums[2] += len(y)
                if at is not None:
                    sums[3] += at.detach().double() * len(y)
            advance(len(y))
            if step >= total_steps:
                break
        return D.all_reduce_sum(sums).tolist(), step  # the epoch's one host sync


def _epoch_record(
    epoch: int, step: int, optimizer: torch.optim.Optimizer, sums: list[float], epoch_time: float, distill: bool
) -> dict[str, Any]:
    """One line of metrics.jsonl from the epoch's summed loss, correct, images and AT loss."""
    loss_sum, correct, n, at_sum = sums
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": step,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / n,
        "train_top1": 100.0 * correct / n,
        "images_per_s": n / epoch_time,
        "epoch_time_s": epoch_time,
    }
    if distill:
        record["at_loss"] = at_sum / n
    return record


def _resume(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_state: Any,  # noqa: ANN401 - the device loader's state, or None
) -> tuple[int, int, list[dict[str, Any]]]:
    """Restore a run from ``out``'s checkpoint (model, optimiser, schedule, data order, RNG) after checking that
    no setting that shapes training changed; returns (first epoch to run, step, history)."""
    state = load_checkpoint(out / CHECKPOINT, map_location="cpu")
    saved = state.get("config", {})
    for key, now in config.to_dict().items():
        if key in saved and key not in RESUME_MAY_CHANGE and not _same_setting(key, saved[key], now):
            raise RunDirError(
                f"cannot resume {out}: {key} was {saved[key]!r}, now {now!r}. A resumed run keeps its "
                f"settings ({out / 'config.yaml'}); start a new run (another --out) to change them"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if loader_state is not None and state.get("loader"):
        loader_state.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["step"], list(state["history"])


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_state: Any,  # noqa: ANN401 - the device loader's state, or None
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything ``_resume`` restores, after ``epoch`` (0-based) and ``step``."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loader": loader_state.state_dict() if loader_state is not None else {},
        "rng": get_rng_state(),
        "epoch": epoch,
        "step": step,
        "history": history,
    }


def _final_metrics(
    last_eval: dict[str, float], history: list[dict[str, Any]], step: int, n_train: int, wall: float, dist: D.DistInfo
) -> dict[str, Any]:
    """The run's record: test metrics, how long and on what it trained."""
    final: dict[str, Any] = {
        "top1": last_eval["top1"],
        "top5": last_eval["top5"],
        "test_loss": last_eval["loss"],
        "n_test": last_eval["n"],
        "epochs": len(history),
        "steps": step,
        "train_images": n_train,
        "wall_time_s": wall,
        "device": str(dist.device),
        "device_name": D.device_name(dist.device),
        "world_size": dist.world_size,
    }
    if history:
        final["images_per_s"] = history[-1]["images_per_s"]
    return final


def _check_compatible(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} stages but the teacher {len(teacher)}: cannot transfer attention")
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        if s.shape[-2:] != t.shape[-2:]:
            raise ValueError(
                f"stage {i}: student output {tuple(s.shape[-2:])} and teacher output "
                f"{tuple(t.shape[-2:])} differ in size"
            )


def _epoch_line(r: dict[str, Any]) -> str:
    s = f"epoch {r['epoch']}: loss {r['train_loss']:.4f} train {r['train_top1']:.2f}%"
    if "at_loss" in r:
        s += f" at {r['at_loss']:.5f}"
    if "test_top1" in r:
        s += f" test {r['test_top1']:.2f}% (top-5 {r['test_top5']:.2f}%)"
    return s + f"  {r['images_per_s']:.0f} img/s  lr {r['lr']:.4g}"
