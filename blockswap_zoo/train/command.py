"""The ``train-teacher``, ``distill`` and ``evaluate`` commands (registered in ``cli.py``).

Every setting is an option and may also come from ``--config FILE.yaml``; options given on the
command line win. The heavy imports happen inside the commands, so ``blockswap-zoo --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

__all__ = ["distill_cmd", "evaluate_cmd", "finetune_cmd", "train_teacher_cmd"]

_OPT = {
    "config": typer.Option(None, "--config", help="YAML settings file (safe_load; unknown keys are errors)."),
    "dataset": typer.Option(None, help="fashion_mnist, cifar10, cifar100 or imagenet."),
    "data_dir": typer.Option(None, help="Folder holding the dataset (default: system / cache locations)."),
    "epochs": typer.Option(None, help="Epochs (paper: 200 CIFAR, 100 ImageNet)."),
    "batch_size": typer.Option(None, help="Global batch size, split across torchrun processes."),
    "lr": typer.Option(None, help="Learning rate (0.1)."),
    "weight_decay": typer.Option(None, help="Weight decay (5e-4 CIFAR, 1e-4 ImageNet)."),
    "schedule": typer.Option(None, help="cosine, step or constant."),
    "warmup_epochs": typer.Option(None, help="Linear warmup epochs."),
    "nesterov": typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum."),
    "label_smoothing": typer.Option(None, help="Cross-entropy label smoothing."),
    "out": typer.Option(None, "--out", help="Run directory (default runs/<arch>_<dataset>)."),
    "resume": typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    "force": typer.Option(False, "--force", help="Overwrite an existing run directory."),
    "device": typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    "seed": typer.Option(None, help="Random seed."),
    "max_steps": typer.Option(None, help="Stop after this many optimiser steps (smoke tests)."),
    "subset": typer.Option(None, help="Train on the first N training images."),
    "eval_subset": typer.Option(None, help="Evaluate on the first N test images."),
    "amp": typer.Option(None, help="auto (bf16 on GPU), bf16 (also on a CPU with native bf16) or none."),
    "compile": typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    "compile_mode": typer.Option(
        None, help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ..."
    ),
    "channels_last": typer.Option(
        None, "--channels-last/--no-channels-last", help="channels_last memory format (default: on GPU only)."
    ),
    "loader": typer.Option(None, help="auto, device (on-device batch augmentation) or dataloader."),
    "num_workers": typer.Option(None, help="DataLoader workers (dataloader path)."),
    "progress": typer.Option(None, "--progress/--no-progress", help="Show the progress bar."),
    "download": typer.Option(
        None, "--download/--no-download", help="Download a missing CIFAR dataset (default: download)."
    ),
    "momentum": typer.Option(None, help="SGD momentum (0.9)."),
    "step_size": typer.Option(None, help="Epochs between LR decays with --schedule step (30)."),
    "gamma": typer.Option(None, help="LR decay factor with --schedule step (0.1)."),
    "lr_scaling": typer.Option(None, help="none (use --lr as given) or linear (lr * batch_size / base_batch_size)."),
    "base_batch_size": typer.Option(
        None, help="Batch size --lr is meant for, with --lr-scaling linear (128; ImageNet 256)."
    ),
    "drop_rate": typer.Option(None, help="Dropout before the classifier (0)."),
    "deterministic": typer.Option(
        None, "--deterministic/--no-deterministic", help="Deterministic algorithms (slower; default off)."
    ),
    "eval_every": typer.Option(None, help="Evaluate every N epochs (0: only at the end; default 1)."),
    "eval_batch_size": typer.Option(None, help="Evaluation batch size (128)."),
}


def _run(
    command: str,
    overrides: dict[str, Any],
    config: Path | None,
    out: Path | None,
    resume: bool,
    force: bool,
    source: str | None = None,
):
    from ..cli import err_console, fail
    from ..data import DatasetError, DatasetNotFoundError
    from ..genotype import GenotypeError
    from ..hub import WeightsError
    from .config import ConfigError, load_config_file, resolve_config
    from .engine import RunDirError, train
    from .finetune import FINETUNE_DEFAULTS, finetune

    run_dir = out
    try:
        defaults: dict[str, Any] = dict(FINETUNE_DEFAULTS) if source is not None else {}
        if resume and out is not None and (out / "config.yaml").is_file() and config is None:
            defaults = load_config_file(out / "config.yaml")  # a resumed run keeps its settings
        cfg = resolve_config(config, overrides, defaults)
        if command == "distill" and not cfg.teacher:
            fail("distill needs --teacher (a run directory or checkpoint of the teacher)")
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
    except KeyboardInterrupt:
        err_console.print(f"interrupted; continue with --resume --out {run_dir}")
        raise typer.Exit(130) from None
    if _is_main_process():  # under torchrun every rank gets the metrics; one prints them
        print(json.dumps({"out": str(run_dir), **result.metrics}, indent=2))


def _is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun job (or not under torchrun at all)."""
    return int(os.environ.get("RANK", "0")) == 0


def train_teacher_cmd(
    arch: str = typer.Option(None, "--arch", "--genotype", help="Model name, backbone or genotype (JSON file/string)."),
    config: Path = _OPT["config"],
    dataset: str = _OPT["dataset"],
    data_dir: str = _OPT["data_dir"],
    epochs: int = _OPT["epochs"],
    batch_size: int = _OPT["batch_size"],
    lr: float = _OPT["lr"],
    weight_decay: float = _OPT["weight_decay"],
    schedule: str = _OPT["schedule"],
    warmup_epochs: float = _OPT["warmup_epochs"],
    nesterov: bool = _OPT["nesterov"],
    label_smoothing: float = _OPT["label_smoothing"],
    out: Path = _OPT["out"],
    resume: bool = _OPT["resume"],
    force: bool = _OPT["force"],
    device: str = _OPT["device"],
    seed: int = _OPT["seed"],
    max_steps: int = _OPT["max_steps"],
    subset: int = _OPT["subset"],
    eval_subset: int = _OPT["eval_subset"],
    amp: str = _OPT["amp"],
    channels_last: bool = _OPT["channels_last"],
    compile: bool = _OPT["compile"],
    compile_mode: str = _OPT["compile_mode"],
    loader: str = _OPT["loader"],
    num_workers: int = _OPT["num_workers"],
    progress: bool = _OPT["progress"],
    download: bool = _OPT["download"],
    momentum: float = _OPT["momentum"],
    step_size: int = _OPT["step_size"],
    gamma: float = _OPT["gamma"],
    lr_scaling: str = _OPT["lr_scaling"],
    base_batch_size: int = _OPT["base_batch_size"],
    drop_rate: float = _OPT["drop_rate"],
    deterministic: bool = _OPT["deterministic"],
    eval_every: int = _OPT["eval_every"],
    eval_batch_size: int = _OPT["eval_batch_size"],
) -> None:
    """Train a network with cross-entropy (the paper's teacher recipe by default: WRN-40-2, CIFAR-10)."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "out", "resume", "force")}
    _run("train-teacher", overrides, config, out, resume, force)


def distill_cmd(
    arch: str = typer.Option(None, "--arch", "--genotype", help="Student: model name or genotype (JSON file/string)."),
    teacher: str = typer.Option(None, "--teacher", help="Teacher run directory or checkpoint.pt."),
    beta: float = typer.Option(None, help="Attention-transfer weight (1000 CIFAR, 750 ImageNet)."),
    at_mode: str = typer.Option(None, help="code (reference: mean squared) or paper (un-squared L2 norm)."),
    kd_alpha: float = typer.Option(None, help="Weight of Hinton KD (0: off)."),
    kd_temperature: float = typer.Option(None, help="KD temperature."),
    config: Path = _OPT["config"],
    dataset: str = _OPT["dataset"],
    data_dir: str = _OPT["data_dir"],
    epochs: int = _OPT["epochs"],
    batch_size: int = _OPT["batch_size"],
    lr: float = _OPT["lr"],
    weight_decay: float = _OPT["weight_decay"],
    schedule: str = _OPT["schedule"],
    warmup_epochs: float = _OPT["warmup_epochs"],
    nesterov: bool = _OPT["nesterov"],
    label_smoothing: float = _OPT["label_smoothing"],
    out: Path = _OPT["out"],
    resume: bool = _OPT["resume"],
    force: bool = _OPT["force"],
    device: str = _OPT["device"],
    seed: int = _OPT["seed"],
    max_steps: int = _OPT["max_steps"],
    subset: int = _OPT["subset"],
    eval_subset: int = _OPT["eval_subset"],
    amp: str = _OPT["amp"],
    channels_last: bool = _OPT["channels_last"],
    compile: bool = _OPT["compile"],
    compile_mode: str = _OPT["compile_mode"],
    loader: str = _OPT["loader"],
    num_workers: int = _OPT["num_workers"],
    progress: bool = _OPT["progress"],
    download: bool = _OPT["download"],
    momentum: float = _OPT["momentum"],
    step_size: int = _OPT["step_size"],
    gamma: float = _OPT["gamma"],
    lr_scaling: str = _OPT["lr_scaling"],
    base_batch_size: int = _OPT["base_batch_size"],
    drop_rate: float = _OPT["drop_rate"],
    deterministic: bool = _OPT["deterministic"],
    eval_every: int = _OPT["eval_every"],
    eval_batch_size: int = _OPT["eval_batch_size"],
) -> None:
    """Distil a student from a frozen teacher: cross-entropy + beta * attention transfer at the stage outputs."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "out", "resume", "force")}
    _run("distill", overrides, config, out, resume, force)


def finetune_cmd(
    model: str = typer.Argument(
        ..., help="Published name (arch.tag), local-dir:PATH, hf-hub:ORG/NAME[@REV], or a run directory."
    ),
    config: Path = _OPT["config"],
    dataset: str = _OPT["dataset"],
    data_dir: str = _OPT["data_dir"],
    epochs: int = typer.Option(None, help="Epochs (default 10)."),
    batch_size: int = _OPT["batch_size"],
    lr: float = typer.Option(None, help="Learning rate (default 0.01)."),
    weight_decay: float = _OPT["weight_decay"],
    schedule: str = _OPT["schedule"],
    warmup_epochs: float = _OPT["warmup_epochs"],
    nesterov: bool = _OPT["nesterov"],
    label_smoothing: float = _OPT["label_smoothing"],
    out: Path = _OPT["out"],
    resume: bool = _OPT["resume"],
    force: bool = _OPT["force"],
    device: str = _OPT["device"],
    seed: int = _OPT["seed"],
    max_steps: int = _OPT["max_steps"],
    subset: int = _OPT["subset"],
    eval_subset: int = _OPT["eval_subset"],
    amp: str = _OPT["amp"],
    channels_last: bool = _OPT["channels_last"],
    compile: bool = _OPT["compile"],
    compile_mode: str = _OPT["compile_mode"],
    loader: str = _OPT["loader"],
    num_workers: int = _OPT["num_workers"],
    progress: bool = _OPT["progress"],
    download: bool = _OPT["download"],
    momentum: float = _OPT["momentum"],
    step_size: int = _OPT["step_size"],
    gamma: float = _OPT["gamma"],
    lr_scaling: str = _OPT["lr_scaling"],
    base_batch_size: int = _OPT["base_batch_size"],
    drop_rate: float = _OPT["drop_rate"],
    deterministic: bool = _OPT["deterministic"],
    eval_every: int = _OPT["eval_every"],
    eval_batch_size: int = _OPT["eval_batch_size"],
) -> None:
    """Fine-tune a trained model on a dataset: its weights, a new classifier for the dataset's classes."""
    if dataset is None and config is None:
        from ..cli import fail

        fail("finetune needs --dataset (or a --config that names one)")
    overrides = {k: v for k, v in locals().items() if k not in ("model", "config", "out", "resume", "force")}
    _run("finetune", overrides, config, out, resume, force, source=model)


def _recorded_dataset(model: str) -> str | None:
    """The dataset a published name, run directory (finished or interrupted) or checkpoint file records."""
    from ..pretrained import load_records
    from .artifacts import CHECKPOINT, read_run_config
    from .checkpoint import load_checkpoint

    if model in load_records():
        return load_records()[model].dataset  # a published checkpoint names its dataset
    p = Path(model.removeprefix("local-dir:"))  # a checkpoint directory names its dataset in config.json
    run_dir = p if p.is_dir() else p.parent
    ckpt = p if p.is_file() and p.suffix == ".pt" else run_dir / CHECKPOINT
    if not (p.is_file() and p.suffix == ".pt") and (run_dir / "config.json").is_file():
        return read_run_config(run_dir)["dataset"]
    if ckpt.is_file():  # a checkpoint (e.g. of an interrupted run) records the model's config and dataset
        return load_checkpoint(ckpt).get("model_config", {}).get("dataset")
    return None


def evaluate_cmd(
    model: str = typer.Argument(..., help="Run directory, checkpoint.pt, or model name."),
    dataset: str = typer.Option(None, help="Dataset (default: the run's, or the published checkpoint's)."),
    data_dir: str = _OPT["data_dir"],
    batch_size: int = typer.Option(128, help="Evaluation batch size."),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    subset: int = typer.Option(None, help="Only the first N test images."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top-1 / top-5 accuracy on the test split with the dataset's eval transform."""
    from ..cli import console, fail
    from ..data import DatasetError, DatasetNotFoundError
    from .evaluate import evaluate

    try:
        if dataset is None:
            dataset = _recorded_dataset(model)
            if dataset is None:
                fail(f"--dataset is required for {model!r} (no config.json or checkpoint beside it names the dataset)")
        r = evaluate(model, dataset, data_dir=data_dir, batch_size=batch_size, device=device, subset=subset)
    except (DatasetError, DatasetNotFoundError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"model": model, "dataset": dataset, **r}, indent=2))
    else:
        console.print(f"{model} on {dataset}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  ({r['n']} images)")
