"""The detection commands (registered in ``app.py``): ``list-detectors``, ``make-detection-set``,
``search-detector``, ``train-detector`` and ``evaluate-detector``. torchvision's detection code and
pycocotools are imported inside the commands, so ``blockswap-zoo --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from .output import console, err_console, fail

__all__ = [
    "evaluate_detector_cmd",
    "list_detectors_cmd",
    "make_detection_set_cmd",
    "search_detector_cmd",
    "train_detector_cmd",
]

_ANCHORS_HELP = "Anchor size per pyramid level, 5 comma-separated (torchvision: 32,64,128,256,512)."


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--anchor-sizes must be comma-separated whole numbers, e.g. 16,32,64,128,256; got {text!r}")


def _errors() -> tuple[type[BaseException], ...]:
    """The library's bad-input errors, which the commands turn into a message and exit code 2."""
    from ..detection.coco import DetectionDataError
    from ..detection.models import DetectorError
    from ..recipe import RecipeError
    from ..train.engine import RunDirError

    return (DetectorError, DetectionDataError, RecipeError, RunDirError, ValueError, FileNotFoundError, ImportError)


def list_detectors_cmd(
    pattern: str = typer.Argument("*", help="Wildcard pattern, e.g. 'maskrcnn_*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List detector names (kind_backbone) with their backbone's parameters inside the detector."""
    from ..detection.models import backbone_params, describe_detector, list_detectors, parse_detector_name

    names = list_detectors(pattern)
    if not names:
        fail(f"no detector matches {pattern!r}; try `blockswap-zoo list-detectors` for all names")
    rows: list[dict[str, Any]] = [{"name": n, "backbone_params": backbone_params(parse_detector_name(n)[1]), "description": describe_detector(n)}
            for n in names]  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        console.print(f"{r['name']:<32} {r['backbone_params'] / 1e6:6.3f}M  {r['description']}", highlight=False)


def make_detection_set_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write train/, val/ and annotations/ into."),
    train_images: int = typer.Option(400, help="Training canvases (items from Fashion-MNIST's train split)."),
    val_images: int = typer.Option(100, help="Held-out canvases (items from Fashion-MNIST's test split)."),
    canvas: int = typer.Option(128, help="Canvas height = width in pixels."),
    max_items: int = typer.Option(4, help="At most this many items per canvas (at least 1)."),
    min_scale: float = typer.Option(1.0, help="Smallest item scale (1: Fashion-MNIST's 28 px)."),
    max_scale: float = typer.Option(2.0, help="Largest item scale."),
    seed: int = typer.Option(0, help="Seed: the same seed and settings write the same set."),
    data_dir: str = typer.Option(None, help="Folder with Fashion-MNIST's IDX files (default: the system copy)."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that already holds annotations."),
) -> None:
    """Write a small COCO-format detection set of real Fashion-MNIST items on larger canvases (synthetic layout)."""
    from ..data import DatasetError, DatasetNotFoundError
    from ..detection.synthetic import SyntheticSpec, make_detection_set

    if (out / "annotations").exists() and not force:
        fail(f"{out} already holds a detection set; pass --force to overwrite it or choose another --out")
    try:
        spec = SyntheticSpec(train_images, val_images, canvas, max_items, min_scale, max_scale, seed)
        paths = make_detection_set(out, spec, data_dir)
    except (ValueError, DatasetError, DatasetNotFoundError, OSError) as e:
        fail(str(e))
    for split, path in paths.items():
        console.print(f"{split}: {out / split} + {path}", highlight=False)


def search_detector_cmd(
    images: Path = typer.Option(..., "--images", help="Image folder of a COCO-format training set."),
    annotations: Path = typer.Option(..., "--annotations", help="Its instances JSON."),
    backbone: str = typer.Option("resnet34", help="ResNet backbone to search (resnet18 or resnet34)."),
    kind: str = typer.Option("maskrcnn", help="Detector the candidates are scored in: maskrcnn or fasterrcnn."),
    budget: str = typer.Option(
        "2.62m",
        help="Backbone parameters (stem + blocks, no classifier): 2.62m is the "
        "all-G(N) ResNet-34 of Table 4 (3.13M with an ImageNet classifier).",
    ),
    samples: int = typer.Option(100, help="Candidates to score (the paper: 1000)."),
    batch_size: int = typer.Option(8, help="Images in the one scoring batch."),
    tolerance: float = typer.Option(0.025, help="Budget tolerance (0.025: +-2.5%)."),
    seed: int = typer.Option(0),
    fpn_channels: int = typer.Option(256),
    head_channels: int = typer.Option(None, help="Box/mask head width (default: torchvision's)."),
    min_size: int = typer.Option(800),
    max_size: int = typer.Option(1333),
    anchor_sizes: str = typer.Option(None, help=_ANCHORS_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(None, "--out", help="Report folder: candidates.jsonl, winner.json, summary.json."),
    force: bool = typer.Option(False, "--force", help="Replace the detection search report in --out."),
) -> None:
    """Fisher-potential search of detection backbones, each scored inside the detector on detection images."""
    from ..detection.coco import CocoDetectionData
    from ..detection.models import DetectorConfig
    from ..detection.search import search_detector
    from ..genotype import Genotype

    _check_device(device)
    try:
        data = CocoDetectionData(images, annotations, masks=kind == "maskrcnn")
        template = DetectorConfig(kind, Genotype.uniform(backbone), data.num_classes, fpn_channels, head_channels,
                                  min_size, max_size, _sizes(anchor_sizes) or (32, 64, 128, 256, 512))  # fmt: skip
        r = search_detector(template, data, budget, samples, batch_size, seed, tolerance, out, device, force)
    except _errors() as e:
        fail(str(e))
    console.print(f"winner: {r.winner} ({r.params:,} backbone params, Fisher potential {r.score:.4g}; "
                  f"{len(r.candidates)} candidates in {r.seconds:.0f}s)", highlight=False, soft_wrap=True)  # fmt: skip
    if out is not None:
        console.print(f"train it: --detector {kind}_{out / 'winner.json'}", highlight=False, soft_wrap=True)


def train_detector_cmd(
    recipe: str = typer.Option(
        None, "--recipe", help="A detection recipe file or shipped name (e.g. maskrcnn_resnet34_gn3m.coco)."
    ),
    detector: str = typer.Option(None, help="Detector name (maskrcnn_resnet34_gn3m) or kind_<genotype or file>."),
    data_root: str = typer.Option(None, help="Folder the data paths are relative to (a COCO root)."),
    train_images: str = typer.Option(None),
    train_annotations: str = typer.Option(None),
    val_images: str = typer.Option(None),
    val_annotations: str = typer.Option(None),
    backbone_weights: str = typer.Option(
        None, help="Classification checkpoint of the same genotype (default: from scratch)."
    ),
    epochs: int = typer.Option(None),
    batch_size: int = typer.Option(None, help="Global batch size (torchrun splits it)."),
    lr: float = typer.Option(None),
    weight_decay: float = typer.Option(None),
    lr_steps: str = typer.Option(None, help="Epochs at which lr is multiplied by gamma, comma-separated."),
    warmup_iters: int = typer.Option(None),
    flip: bool = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips."),
    fpn_channels: int = typer.Option(None),
    head_channels: int = typer.Option(None),
    min_size: int = typer.Option(None),
    max_size: int = typer.Option(None),
    anchor_sizes: str = typer.Option(None, help=_ANCHORS_HELP),
    seed: int = typer.Option(None),
    device: str = typer.Option(None, help="auto, cpu, cuda ..."),
    num_workers: int = typer.Option(None),
    max_steps: int = typer.Option(None),
    eval_every: int = typer.Option(None),
    threads: int = typer.Option(None, help="torch CPU threads."),
    out: Path = typer.Option(None, "--out", help="Run directory (default runs/<detector>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory."),
) -> None:
    """Train a detector on COCO-format data (checkpoints every epoch, resumable, torchrun), then COCOeval it."""
    from ..detection.config import DetectionTrainConfig, load_detection_recipe
    from ..detection.train import train_detector

    options: dict[str, Any] = {
        "detector": detector, "data_root": data_root, "train_images": train_images,
        "train_annotations": train_annotations, "val_images": val_images, "val_annotations": val_annotations,
        "backbone_weights": backbone_weights, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "lr_steps": _sizes(lr_steps), "warmup_iters": warmup_iters, "flip": flip,
        "fpn_channels": fpn_channels, "head_channels": head_channels, "min_size": min_size, "max_size": max_size,
        "anchor_sizes": _sizes(anchor_sizes), "seed": seed, "device": device, "num_workers": num_workers,
        "max_steps": max_steps, "eval_every": eval_every, "threads": threads,
    }  # fmt: skip
    try:
        base = load_detection_recipe(recipe).train.to_dict() if recipe is not None else {}
        cfg = DetectionTrainConfig.from_dict({**base, **{k: v for k, v in options.items() if v is not None}})
        run_dir = out if out is not None else Path("runs") / cfg.detector.replace("/", "_").replace(":", "_")[:80]
        result = train_detector(
            cfg, run_dir, resume=resume, force=force, log=lambda s: console.print(s, highlight=False)
        )
    except _errors() as e:
        fail(str(e))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; continue with --resume --out {run_dir}")
        raise typer.Exit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(run_dir), **result.metrics}, indent=2))


def evaluate_detector_cmd(
    run: Path = typer.Argument(..., help="A detector training run directory (finished, or its latest checkpoint)."),
    images: Path = typer.Option(None, "--images", help="Image folder (default: the run's val images)."),
    annotations: Path = typer.Option(None, "--annotations", help="Instances JSON (default: the run's val JSON)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    batch_size: int = typer.Option(4),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Box (and mask) AP, AP50, AP75, AP small/medium/large with pycocotools' COCOeval."""
    from ..detection.coco import CocoDetectionData, coco_evaluate
    from ..detection.config import DetectionTrainConfig
    from ..detection.train import load_detector

    _check_device(device)
    try:
        model, doc = load_detector(run, device)
        cfg = DetectionTrainConfig.from_dict(doc.get("train_config", {}))
        data = CocoDetectionData(images or cfg.path("val_images"), annotations or cfg.path("val_annotations"),
                                 masks=model.roi_heads.has_mask())  # type: ignore[union-attr, operator]  # fmt: skip
        expected = [c["id"] for c in doc.get("categories", [])]
        if expected and expected != data.cat_ids:
            fail(f"{data.annotations} lists categories {data.cat_ids}, but the detector was trained on {expected}")
        r = coco_evaluate(model, data, device, batch_size)
    except _errors() as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"run": str(run), **r}, indent=2))
        return
    for iou_type, name in (("bbox", "box"), ("segm", "mask")):
        if iou_type in r:
            m = r[iou_type]
            cells = "  ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in m.items())
            console.print(f"{name}: {cells}", highlight=False)
    console.print(f"{r['images']} images, {r['detections']} detections", highlight=False)


def _check_device(device: str) -> None:
    """tpu, cpu:zz or a missing GPU: exit 2 naming the device and the fix, before any data is read."""
    from ..train.distributed import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        fail(f"--device: {e}")
