"""The ``train-teacher``, ``distill``, ``finetune`` and ``evaluate`` commands (registered in ``app.py``).

Every setting is an option and may also come from ``--config FILE.yaml``; options given on the
command line win. The heavy imports happen inside the commands, so ``blockswap-zoo --help`` stays fast.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .output import console, err_console, fail

__all__ = ["distill_cmd", "evaluate_cmd", "finetune_cmd", "train_teacher_cmd"]

# Every training setting (and the run options) as (type, typer.Option), in --help order. The
# train-teacher, distill and finetune commands share them through ``_with_training_options``.
_OPTIONS: dict[str, tuple[type, Any]] = {
    "config": (Path, typer.Option(None, "--config", help="YAML settings file (safe_load; unknown keys are errors).")),
    "dataset": (str, typer.Option(None, help="fashion_mnist, cifar10, cifar100 or imagenet.")),
    "data_dir": (str, typer.Option(None, help="Folder holding the dataset (default: system / cache locations).")),
    "epochs": (int, typer.Option(None, help="Epochs (paper: 200 CIFAR, 100 ImageNet).")),
    "batch_size": (int, typer.Option(None, help="Global batch size, split across torchrun processes.")),
    "lr": (float, typer.Option(None, help="Learning rate (0.1).")),
    "weight_decay": (float, typer.Option(None, help="Weight decay (5e-4 CIFAR, 1e-4 ImageNet).")),
    "schedule": (str, typer.Option(None, help="cosine, step or constant.")),
    "warmup_epochs": (float, typer.Option(None, help="Linear warmup epochs.")),
    "nesterov": (bool, typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum.")),
    "label_smoothing": (float, typer.Option(None, help="Cross-entropy label smoothing.")),
    "out": (Path, typer.Option(None, "--out", help="Run directory (default runs/<arch>_<dataset>).")),
    "resume": (bool, typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint.")),
    "force": (bool, typer.Option(False, "--force", help="Overwrite an existing run directory.")),
    "device": (str, typer.Option(None, help="auto, cpu, cuda, cuda:1 ...")),
    "seed": (int, typer.Option(None, help="Random seed.")),
    "max_steps": (int, typer.Option(None, help="Stop after this many optimiser steps (smoke tests).")),
    "subset": (int, typer.Option(None, help="Train on the first N training images.")),
    "eval_subset": (int, typer.Option(None, help="Evaluate on the first N test images.")),
    "amp": (str, typer.Option(None, help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), bf16 or none.")),
    "channels_last": (
        bool,
        typer.Option(
            None, "--channels-last/--no-channels-last", help="channels_last memory format (default: on GPU only)."
        ),
    ),
    "compile": (
        bool,
        typer.Option(
            None,
            "--compile/--no-compile",
            help="torch.compile student and teacher (default: on one GPU, with CUDA graphs; eager on CPUs).",
        ),
    ),
    "compile_mode": (
        str,
        typer.Option(
            None, help="torch.compile mode: auto (reduce-overhead, CUDA graphs, on GPUs), default, max-autotune, ..."
        ),
    ),
    "loader": (str, typer.Option(None, help="auto, device (on-device batch augmentation) or dataloader.")),
    "num_workers": (int, typer.Option(None, help="DataLoader workers (dataloader path).")),
    "progress": (bool, typer.Option(None, "--progress/--no-progress", help="Show the progress bar.")),
    "download": (
        bool,
        typer.Option(None, "--download/--no-download", help="Download a missing CIFAR dataset (default: download)."),
    ),
    "momentum": (float, typer.Option(None, help="SGD momentum (0.9).")),
    "step_size": (int, typer.Option(None, help="Epochs between LR decays with --schedule step (30).")),
    "gamma": (float, typer.Option(None, help="LR decay factor with --schedule step (0.1).")),
    "lr_scaling": (
        str,
        typer.Option(None, help="none (use --lr as given) or linear (lr * batch_size / base_batch_size)."),
    ),
    "base_batch_size": (
        int,
        typer.Option(None, help="Batch size --lr is meant for, with --lr-scaling linear (128; ImageNet 256)."),
    ),
    "drop_rate": (float, typer.Option(None, help="Dropout before the classifier (0).")),
    "deterministic": (
        bool,
        typer.Option(
            None, "--deterministic/--no-deterministic", help="Deterministic algorithms (slower; default off)."
        ),
    ),
    "eval_every": (int, typer.Option(None, help="Evaluate every N epochs (0: only at the end; default 1).")),
    "eval_batch_size": (int, typer.Option(None, help="Evaluation batch size (128).")),
}
_RUN_OPTIONS = ("config", "out", "resume", "force")  # how to run, not what to train: not TrainConfig fields


def _with_training_options(**changed_defaults: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command taking ``**settings`` every option of ``_OPTIONS`` (Typer reads ``__signature__``).

    ``changed_defaults`` replaces an option's typer.Option (finetune's own epochs and lr defaults).
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for name, (kind, option) in _OPTIONS.items():
            default = changed_defaults.get(name, option)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind))
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {**command.__annotations__, **{n: k for n, (k, _) in _OPTIONS.items()}}
        return command

    return decorate


def _split(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The TrainConfig settings and the run options (config, out, resume, force) of a command's options."""
    run = {k: settings.pop(k) for k in _RUN_OPTIONS}
    return settings, run


def _run(
    command: str,
    overrides: dict[str, Any],
    config: Path | None,
    out: Path | None,
    resume: bool,
    force: bool,
    source: str | None = None,
):
    from ..checkpoint import WeightsError
    from ..data import DatasetError, DatasetNotFoundError
    from ..genotype import GenotypeError
    from ..train.config import ConfigError, load_config_file, resolve_config
    from ..train.engine import RunDirError, train
    from ..train.finetune import FINETUNE_DEFAULTS, finetune

    run_dir = out
    try:
        defaults: dict[str, Any] = dict(FINETUNE_DEFAULTS) if source is not None else {}
        if resume and out is not None and (out / "config.yaml").is_file() and config is None:
            defaults = load_config_file(out / "config.yaml")  # a resumed run keeps its settings
        cfg = resolve_config(config, overrides, defaults)
        if command == "distill" and not cfg.teacher:
            fail("distill needs --teacher (a run directory or checkpoint of the teacher)")
        if command == "distill" and overrides.get("arch") is None and "arch" not in defaults:
            if config is None or "arch" not in load_config_file(config):
                fail("distill needs --arch: the student to train (a genotype, a JSON file or a model name)")
        if command != "distill" and cfg.teacher:
            where = f"from {config}" if config is not None else f"from {out}/config.yaml, a distillation run's"
            fail(f"teacher is a distill setting ({cfg.teacher!r}, {where}); use `blockswap-zoo distill`")
        name = source.replace(":", "_") if source is not None else cfg.arch
        run_dir = out if out is not None else Path("runs") / f"{name}_{cfg.dataset}".replace("/", "_")
        if source is not None:
            result = finetune(source, cfg, out_dir=run_dir, resume=resume, force=force)
        else:
            result = train(cfg, out_dir=run_dir, resume=resume, force=force)
    except (ConfigError, DatasetError, DatasetNotFoundError, RunDirError, GenotypeError, WeightsError) as e:
        fail(str(e))
    except (FileNotFoundError, ValueError) as e:
        fail(f"{type(e).__name__}: {e}")
    except OSError as e:  # a full disk, or the run folder written by another process (DirectoryBusyError)
        if e.errno == errno.ENOSPC:
            where = str(locals().get("run_dir", out))
            fail(
                f"no space left on the device while writing {where}: the last saved epoch's checkpoint is intact "
                f"(every write is atomic); free some space, then continue with --resume --out {where}"
            )
        fail(str(e))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; continue with --resume --out {run_dir}")
        raise typer.Exit(130) from None
    if _is_main_process():  # under torchrun every rank gets the metrics; one prints them
        print(json.dumps({"out": str(run_dir), **result.metrics}, indent=2))


def _is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun job (or not under torchrun at all)."""
    return int(os.environ.get("RANK", "0")) == 0


@_with_training_options()
def train_teacher_cmd(
    arch: str = typer.Option(None, "--arch", "--genotype", help="Model name, backbone or genotype (JSON file/string)."),
    **settings: Any,
) -> None:
    """Train a network with cross-entropy (the paper's teacher recipe by default: WRN-40-2, CIFAR-10)."""
    overrides, run = _split(settings)
    _run("train-teacher", {"arch": arch, **overrides}, **run)


@_with_training_options()
def distill_cmd(
    arch: str = typer.Option(None, "--arch", "--genotype", help="Student: model name or genotype (JSON file/string)."),
    teacher: str = typer.Option(
        None,
        "--teacher",
        help="Trained teacher: run directory, checkpoint.pt, local-dir:PATH, hf-hub:ORG/NAME or a published arch.tag.",
    ),
    beta: float = typer.Option(None, help="Attention-transfer weight (1000 CIFAR, 750 ImageNet)."),
    at_mode: str = typer.Option(
        None,
        help="code (reference: mean squared) or paper (un-squared L2 norm, hundreds of times larger: lower --beta).",
    ),
    kd_alpha: float = typer.Option(None, help="Weight of Hinton KD (0: off)."),
    kd_temperature: float = typer.Option(None, help="KD temperature."),
    **settings: Any,
) -> None:
    """Distil a student from a frozen teacher: cross-entropy + beta * attention transfer at the stage outputs."""
    overrides, run = _split(settings)
    student = {"arch": arch, "teacher": teacher, "beta": beta, "at_mode": at_mode}
    _run("distill", {**student, "kd_alpha": kd_alpha, "kd_temperature": kd_temperature, **overrides}, **run)


@_with_training_options(
    epochs=typer.Option(None, help="Epochs (default 10)."), lr=typer.Option(None, help="Learning rate (default 0.01).")
)
def finetune_cmd(
    model: str = typer.Argument(
        ..., help="Published name (arch.tag), local-dir:PATH, hf-hub:ORG/NAME(@REV), or a run directory."
    ),
    **settings: Any,
) -> None:
    """Fine-tune a trained model on a dataset: its weights, a new classifier for the dataset's classes."""
    overrides, run = _split(settings)
    resumable = run["resume"] and run["out"] is not None and (run["out"] / "config.yaml").is_file()
    if overrides["dataset"] is None and run["config"] is None and not resumable:
        fail("finetune needs --dataset (or a --config that names one)")
    _run("finetune", overrides, **run, source=model)


def evaluate_cmd(
    model: str = typer.Argument(..., help="Run directory, checkpoint.pt, or model name."),
    dataset: str = typer.Option(None, help="Dataset (default: the run's, or the published checkpoint's)."),
    data_dir: str = _OPTIONS["data_dir"][1],
    batch_size: int = typer.Option(128, help="Evaluation batch size."),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    subset: int = typer.Option(None, help="Only the first N test images."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top-1 / top-5 accuracy on the test split with the dataset's eval transform."""
    from ..data import DatasetError, DatasetNotFoundError
    from ..sources import parse_source, recorded_dataset
    from ..train.evaluate import evaluate

    try:
        if dataset is None:
            dataset = recorded_dataset(parse_source(model))
            if dataset is None:
                fail(f"--dataset is required for {model!r} (no config.json or checkpoint beside it names the dataset)")
        r = evaluate(model, dataset, data_dir=data_dir, batch_size=batch_size, device=device, subset=subset)
    except (DatasetError, DatasetNotFoundError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"model": model, "dataset": dataset, **r}, indent=2))
    else:
        console.print(f"{model} on {dataset}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  ({r['n']} images)")
