"""The train loop: teacher training (cross-entropy) and attention-transfer distillation, with
bf16 autocast / channels_last on GPU, on-device metrics (one host sync per epoch), atomic
per-epoch checkpoints, exact resume, DDP under torchrun, JSONL metrics and curves."""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_info import cpu_info
from ..data import DatasetInfo, DeviceLoader, get_dataset_info, image_folder, load_arrays
from ..dir_lock import lock_directory
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
    "train_together",
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
    with training_flags(config.deterministic, dist.device.type == "cuda"), _locked_run_dirs([out_dir], dist):
        return _train_together([config], dist, [model], teacher, [out_dir], resume, force, on_epoch_end)[0]


# what students trained in one pass share: the batches they see (data, order, augmentation), the teacher and
# its forward pass (precision, layout), the schedule's length and where they run
SHARED_IN_A_GROUP = ("dataset", "data_dir", "subset", "batch_size", "epochs", "max_steps", "seed", "loader",
                     "teacher", "device", "amp", "channels_last", "compile", "compile_mode", "deterministic",
                     "eval_every", "eval_batch_size", "eval_subset", "download", "num_workers")  # fmt: skip


def train_together(
    configs: list[TrainConfig],
    teacher: nn.Module | None = None,
    out_dirs: list[str | Path] | None = None,
    resume: bool = False,
    force: bool = False,
) -> list[TrainResult]:
    """Train several students from one teacher in one pass: each batch is drawn and the teacher runs once, then
    every student takes its own step. Each keeps its own initialisation, optimiser, checkpoint, metrics and
    record, resumes on its own, and ends as it would have trained alone (bit for bit on a deterministic CPU).

    The configs must agree on :data:`SHARED_IN_A_GROUP`; students resumed at different points train in
    successive passes, one per resume point.
    """
    if not configs:
        return []
    first = configs[0]
    for c in configs[1:]:
        differs = [k for k in SHARED_IN_A_GROUP if getattr(c, k) != getattr(first, k)]
        if differs:
            raise ValueError(
                f"students trained together share {', '.join(differs)}; {c.arch} differs from {first.arch} "
                "there: train it in another group"
            )
    outs: list[str | Path | None] = list(out_dirs) if out_dirs is not None else [None] * len(configs)
    if len(outs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(outs)} run directories")
    if len({Path(o).resolve() for o in outs if o is not None}) != sum(o is not None for o in outs):
        raise ValueError("two students of a group write the same run directory; give each its own")
    dist = D.setup(first.device)
    with training_flags(first.deterministic, dist.device.type == "cuda"), _locked_run_dirs(outs, dist):
        return _train_together(configs, dist, [None] * len(configs), teacher, outs, resume, force, None)


@dataclass
class _Run:
    """One student's training in a pass: its model, optimiser and schedule, progress and records."""

    config: TrainConfig
    out: Path | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    run_cfg: dict[str, Any]
    resuming: bool
    stepper: _Stepper
    start_epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] | None = None  # its own RNG state while others share the process (groups of two or more)
    loader_state: dict[str, Any] | None = None  # the data order it resumes at
    last_eval: dict[str, float] | None = None


@contextlib.contextmanager
def _locked_run_dirs(out_dirs: list[str | Path | None], dist: D.DistInfo) -> Iterator[None]:
    """Each run directory locked for this process alone (the main process of a DDP run) while it trains."""
    with contextlib.ExitStack() as held:
        for out in out_dirs:
            if out is not None and dist.is_main:
                _check_dir_path(Path(out))
                held.enter_context(lock_directory(out, "training"))
        yield


def _train_together(
    configs: list[TrainConfig],
    dist: D.DistInfo,
    models: list[nn.Module | None],
    teacher: nn.Module | None,
    out_dirs: list[str | Path | None],
    resume: bool,
    force: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> list[TrainResult]:
    config, dev = configs[0], dist.device  # what the students share (SHARED_IN_A_GROUP) is read from the first
    info = get_dataset_info(config.dataset)
    outs = [Path(o) if o is not None else None for o in out_dirs]
    resuming = [prepare_out_dir(o, resume, force, dist.is_main) if o is not None else False for o in outs]
    D.barrier()
    amp = _use_bf16(config.amp, dev)
    # channels_last by default wherever bf16 runs: oneDNN's and cuDNN's fast bf16 convolutions want it
    channels_last = config.channels_last if config.channels_last is not None else dev.type == "cuda" or amp
    teacher = _place_teacher(config, info, dev, teacher, channels_last)
    students: list[tuple[nn.Module, dict[str, Any] | None]] = []
    for c, m in zip(configs, models, strict=True):
        seed_everything(c.seed)  # each student is initialised as it would be alone, and keeps its own RNG after
        students.append((_place_student(c, info, dev, m, teacher, channels_last), None))
        if len(configs) > 1:
            students[-1] = (students[-1][0], get_rng_state())
    loader, loader_state, n_train, info = _train_loader(config, info, dist, channels_last)
    fresh_loader = loader_state.state_dict() if loader_state is not None else {}  # a run's data order at its start
    _check_test_split(config, info)  # a missing or corrupt test split fails now, not after the first epoch
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{n_train} training images give no batch of {config.batch_size}; lower --batch-size")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    runs: list[_Run] = []
    for c, out, (model, rng), resumed in zip(configs, outs, students, resuming, strict=True):
        optimizer, scheduler = _optimizer(c, model, steps_per_epoch, total_steps)
        run_cfg = model_config(model, info, {"teacher": c.teacher, "train_config": c.to_dict()})
        stepper = _Stepper(c, dist, model, teacher is not None, amp, optimizer, scheduler)
        run = _Run(c, out, model, optimizer, scheduler, run_cfg, resumed, stepper, rng=rng)
        if run.resuming:
            assert out is not None
            run.start_epoch, run.step, run.history, rng, run.loader_state = _resume(out, c, model, optimizer, scheduler)
            if run.rng is not None:
                run.rng = rng
            else:
                set_rng_state(rng)
        if dist.is_main and out is not None:
            import yaml

            atomic_write_text(out / "config.yaml", yaml.safe_dump(c.to_dict(), sort_keys=False))
        runs.append(run)

    t_fwd = _teacher_forward(config, dist, teacher)
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
    run_start = time.perf_counter()
    # students resumed at the same point train in one pass; passes run in order of their resume point
    passes: dict[tuple[int, int], list[_Run]] = {}
    for run in runs:
        passes.setdefault((run.start_epoch, run.step), []).append(run)
    for (start_epoch, _), group in sorted(passes.items()):
        if loader_state is not None:
            loader_state.load_state_dict(group[0].loader_state or fresh_loader)
        _train_pass(group, config, dist, info, loader, t_fwd, start_epoch, total_steps, steps_per_epoch,
                    loader_state, eval_kwargs, on_epoch_end)  # fmt: skip

    results = []
    for run in runs:
        model = run.model
        if run.last_eval is None:
            run.last_eval = run_eval(model, info, dev, **eval_kwargs | {"amp": False})
        wall = (
            sum(r.get("epoch_time_s", 0.0) for r in run.history) if len(runs) > 1 else time.perf_counter() - run_start
        )
        final = _final_metrics(run.last_eval, run.history, run.step, n_train, wall, dist)
        if dist.is_main and run.out is not None:
            write_final(run.out, model, {**run.run_cfg, "metrics": final})
        if dist.is_main and run.config.progress:
            from rich.console import Console

            Console().print(
                f"[bold green]done[/]: top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}% on {final['n_test']} "
                f"test images, {run.step} steps in {final['wall_time_s']:.0f}s" + (f" -> {run.out}" if run.out else ""),
                highlight=False,
            )
        # the standard layout again, so the model returned evaluates as its reloaded weights do
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        results.append(TrainResult(run.out, final, run.history, model))
    return results


def _train_pass(
    runs: list[_Run],
    config: TrainConfig,
    dist: D.DistInfo,
    info: DatasetInfo,
    loader: DeviceLoader | _HostLoader,
    t_fwd: nn.Module | None,
    start_epoch: int,
    total_steps: int,
    steps_per_epoch: int,
    loader_state: DeviceLoader | None,
    eval_kwargs: dict[str, Any],
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    """Train ``runs`` (at the same point) epoch by epoch on the same batches, the teacher run once per batch."""
    dev = dist.device
    shared = runs[0].rng is not None  # the process trains several students: each draws from its own RNG state
    autocast, compiled = runs[0].stepper.autocast, runs[0].stepper.compiled
    progress = _progress(config.progress and dist.is_main)
    with progress:
        task = progress.add_task("train", total=steps_per_epoch, ips=0.0)
        for epoch in range(start_epoch, config.epochs):
            if runs[0].step >= total_steps:
                break
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for run in runs:
                run.model.train()
            progress.reset(task, total=steps_per_epoch, description=f"epoch {epoch + 1}/{config.epochs}", ips=0.0)
            advance = _progress_counter(progress, task, dist.world_size)
            own = [0.0] * len(runs)  # each student's own step time; the rest of the epoch is shared
            t0 = time.perf_counter()
            for x, y in loader:
                teacher_out = None
                if t_fwd is not None:
                    if compiled:  # CUDA graphs (reduce-overhead) may reuse the last step's outputs from here on
                        torch.compiler.cudagraph_mark_step_begin()
                    with torch.no_grad(), autocast():
                        teacher_out = t_fwd(x)
                    if compiled:  # its own copy: the students' graph replays that follow may reuse the pool
                        teacher_out = (teacher_out[0].clone(), [f.clone() for f in teacher_out[1]])
                for i, run in enumerate(runs):
                    t = time.perf_counter()
                    if shared:
                        assert run.rng is not None
                        set_rng_state(run.rng)
                    run.step = run.stepper.step(x, y, teacher_out, run.step)
                    if shared:
                        run.rng = get_rng_state()
                    own[i] += time.perf_counter() - t
                advance(len(y))
                if runs[0].step >= total_steps:
                    break
            elapsed = time.perf_counter() - t0
            common = (elapsed - sum(own)) / len(runs)  # data and teacher, split evenly
            for i, run in enumerate(runs):
                _end_epoch(run, epoch, own[i] + common if len(runs) > 1 else elapsed, len(runs), config, dist, info, dev,
                           loader_state, eval_kwargs, progress, on_epoch_end, total_steps)  # fmt: skip


def _end_epoch(
    run: _Run,
    epoch: int,
    epoch_time: float,
    group_size: int,
    config: TrainConfig,
    dist: D.DistInfo,
    info: DatasetInfo,
    dev: torch.device,
    loader_state: DeviceLoader | None,
    eval_kwargs: dict[str, Any],
    progress: Any,  # noqa: ANN401 - rich's Progress
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
    total_steps: int,
) -> None:
    """A student's epoch record, evaluation and checkpoint (its own RNG state in it)."""
    sums = run.stepper.take_sums()
    record = _epoch_record(epoch, run.step, run.optimizer, sums, epoch_time, run.stepper.distill)
    if group_size > 1:
        record["group_size"] = group_size  # trained beside others, sharing the batches and the teacher's pass
    last_epoch = epoch + 1 == config.epochs or run.step >= total_steps
    if last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0):
        # the last evaluation is the run's record: in fp32, as `evaluate` re-measures it
        run.last_eval = run_eval(run.model, info, dev, **(eval_kwargs | {"amp": False} if last_epoch else eval_kwargs))
        record.update(test_loss=run.last_eval["loss"], test_top1=run.last_eval["top1"],
                      test_top5=run.last_eval["top5"])  # fmt: skip
    run.history.append(record)
    if dist.is_main:
        name = f"{run.config.arch[:40]}: " if group_size > 1 else ""
        progress.console.print(name + _epoch_line(record), highlight=False)
        if run.out is not None:
            state = _checkpoint_state(run.model, run.optimizer, run.scheduler, loader_state, epoch, run.step,
                                      run.history, run.rng)  # fmt: skip
            save_checkpoint(
                run.out / CHECKPOINT, {**state, "config": run.config.to_dict(), "model_config": run.run_cfg}
            )
            write_metrics(run.out, run.history)
            write_curves(run.out, run.history)
    D.barrier()
    if on_epoch_end is not None:
        on_epoch_end(epoch + 1, record)


def _place_student(
    config: TrainConfig,
    info: DatasetInfo,
    dev: torch.device,
    model: nn.Module | None,
    teacher: nn.Module | None,
    channels_last: bool,
) -> nn.Module:
    """The student (built from ``config.arch`` unless given), checked against the dataset and on the device."""
    if model is None:
        model = build_student(config, info)
    check_model_fits(model, info)
    if teacher is not None:
        check_model_fits(teacher, info, f"the teacher {config.teacher or ''}".rstrip(), classes=config.kd_alpha > 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(dev, memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs lack this overload


def _place_teacher(
    config: TrainConfig, info: DatasetInfo, dev: torch.device, teacher: nn.Module | None, channels_last: bool
) -> nn.Module | None:
    """The frozen teacher (loaded from ``config.teacher`` unless given) in eval mode on the device."""
    if teacher is None and config.teacher:
        teacher = load_teacher(config.teacher, dev)
    if teacher is None:
        return None
    for p in teacher.parameters():
        p.requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return teacher.eval().to(dev, memory_format=fmt)  # type: ignore[call-overload]


def _optimizer(
    config: TrainConfig, model: nn.Module, steps_per_epoch: int, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD at the (linearly scaled, if asked) learning rate, and its per-step schedule."""
    lr = config.lr * (config.batch_size / config.base_batch_size if config.lr_scaling == "linear" else 1.0)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch, total_steps))


def _teacher_forward(config: TrainConfig, dist: D.DistInfo, teacher: nn.Module | None) -> nn.Module | None:
    """The teacher as (logits, stage outputs), compiled as the students are; None without a teacher."""
    if teacher is None:
        return None
    t_fwd: nn.Module = _Forward(teacher, with_features=True)
    mode = compile_mode_for(config.compile, config.compile_mode, dist.device, dist.enabled)
    if mode:  # with reduce-overhead the teacher replays CUDA graphs too
        t_fwd = torch.compile(t_fwd, mode=mode)  # type: ignore[assignment]
    return t_fwd


class _Stepper:
    """One student's optimiser steps: its loss (with the teacher's attention-transfer and KD terms when there
    is a teacher), backward, step; running sums stay on the device until the epoch ends."""

    def __init__(
        self,
        config: TrainConfig,
        dist: D.DistInfo,
        model: nn.Module,
        distill: bool,
        amp: bool,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
    ) -> None:
        dev = dist.device
        fwd: nn.Module = _Forward(model, with_features=distill)
        if dist.enabled:
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.compiled = compile_mode_for(config.compile, config.compile_mode, dev, dist.enabled)
        if self.compiled:
            fwd = torch.compile(fwd, mode=self.compiled)  # type: ignore[assignment]
        self.config, self.device, self.fwd, self.distill = config, dev, fwd, distill
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
        self.optimizer, self.scheduler = optimizer, scheduler
        self.checked = False  # student and teacher stages compared once, on the first batch
        self.sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, correct, n, at

    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        teacher_out: tuple[torch.Tensor, list[torch.Tensor]] | None,
        step: int,
    ) -> int:
        """One optimiser step on the batch (``teacher_out``: the teacher's logits and stages on it); -> step + 1."""
        config, sums = self.config, self.sums
        if self.compiled:  # CUDA graphs (reduce-overhead) may reuse the last step's outputs from here on
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            logits, feats = self.fwd(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            at = None
            if teacher_out is not None:
                t_logits, t_feats = teacher_out
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
        with torch.no_grad():
            d = loss.detach().double()
            sums[0] += d * len(y)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += len(y)
            if at is not None:
                sums[3] += at.detach().double() * len(y)
        return step + 1

    def take_sums(self) -> list[float]:
        """The epoch's (summed loss, correct, images, AT loss) over every process, then zeroed: one host sync."""
        sums = D.all_reduce_sum(self.sums).tolist()
        self.sums.zero_()
        return sums


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
) -> tuple[int, int, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Restore a run's model, optimiser and schedule from ``out``'s checkpoint after checking that no setting
    that shapes training changed; returns (first epoch to run, step, history, RNG state, data-order state)."""
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
    return state["epoch"] + 1, state["step"], list(state["history"]), state["rng"], state.get("loader") or {}


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_state: Any,  # noqa: ANN401 - the device loader's state, or None
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
    rng: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``_resume`` restores, after ``epoch`` (0-based) and ``step``; ``rng``: the run's own RNG state
    when it shares the process (else the process's)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loader": loader_state.state_dict() if loader_state is not None else {},
        "rng": rng if rng is not None else get_rng_state(),
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
