"""Detector training: torchvision's detection losses, SGD with warmup and step decay, DDP under torchrun, atomic
per-epoch checkpoints and exact resume (the classification engine's run-directory rules, checkpoint format and
RNG capture), COCOeval at the end. A finished run holds ``detector.safetensors`` and ``detector.json`` (the
detector's structure, its categories, the weights' sha256 and the metrics).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_bytes, atomic_write_text
from ..train import distributed as D
from ..train.artifacts import CHECKPOINT, write_metrics
from ..train.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from ..train.engine import RunDirError, prepare_out_dir, seed_everything, worker_seed
from .coco import CocoDetectionData, DetectionDataError, coco_evaluate, collate
from .config import DetectionTrainConfig
from .models import DetectorConfig, build_detector, create_detector

__all__ = ["DetectionRunResult", "load_detector", "lr_factor", "train_detector"]

WEIGHTS, CONFIG = "detector.safetensors", "detector.json"
FORMAT = "blockswap-zoo-detector/1"
# Settings a resumed run may change: where the data is and how the run executes, not what is trained.
RESUME_MAY_CHANGE = frozenset(
    {"data_root", "train_images", "train_annotations", "val_images", "val_annotations", "device", "num_workers",
     "eval_every", "eval_batch_size", "threads"}
)  # fmt: skip


@dataclass
class DetectionRunResult:
    """What ``train_detector`` returns: the final COCOeval metrics, per-epoch history and the detector."""

    out_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None


def lr_factor(config: DetectionTrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per iteration: linear warmup from ``warmup_factor``, then ``gamma`` at each of ``lr_steps``."""

    def f(step: int) -> float:
        warm = 1.0
        if step < config.warmup_iters:
            alpha = step / config.warmup_iters
            warm = config.warmup_factor * (1 - alpha) + alpha
        decays = sum(1 for e in config.lr_steps if step >= e * steps_per_epoch)
        return warm * config.gamma**decays

    return f


def _datasets(config: DetectionTrainConfig, masks: bool) -> tuple[CocoDetectionData, CocoDetectionData]:
    train = CocoDetectionData(config.path("train_images"), config.path("train_annotations"), masks, config.flip)
    val = CocoDetectionData(config.path("val_images"), config.path("val_annotations"), masks, flip=False)
    if val.cat_ids != train.cat_ids:
        raise DetectionDataError(
            f"{config.path('val_annotations')} and {config.path('train_annotations')} list different categories"
        )
    return train, val


def _detector_config(config: DetectionTrainConfig, num_classes: int) -> tuple[DetectorConfig, nn.Module]:
    model = create_detector(
        config.detector,
        num_classes=num_classes,
        backbone_weights=config.backbone_weights,
        fpn_channels=config.fpn_channels,
        head_channels=config.head_channels,
        min_size=config.min_size,
        max_size=config.max_size,
        anchor_sizes=config.anchor_sizes,
    )
    genotype = model.backbone.body.genotype  # type: ignore[union-attr]
    kind = "maskrcnn" if model.roi_heads.has_mask() else "fasterrcnn"  # type: ignore[union-attr, operator]
    dc = DetectorConfig(kind, genotype, num_classes, config.fpn_channels, config.head_channels, config.min_size,
                        config.max_size, tuple(config.anchor_sizes))  # fmt: skip
    return dc, model


def train_detector(
    config: DetectionTrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> DetectionRunResult:
    """Train ``config.detector`` on the COCO-format training set; evaluate with COCOeval on the val set."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dist = D.setup(config.device)
    dev = dist.device
    out = Path(out_dir) if out_dir is not None else None
    resuming = prepare_out_dir(out, resume, force, dist.is_main) if out is not None else False
    if out is not None and force and dist.is_main:
        for name in (WEIGHTS, CONFIG):
            (out / name).unlink(missing_ok=True)
    D.barrier()
    seed_everything(config.seed)
    kind = config.detector.partition("_")[0]
    train_set, val_set = _datasets(config, masks=kind != "fasterrcnn")
    det_cfg, model = _detector_config(config, train_set.num_classes)
    if det_cfg.kind == "maskrcnn" and not train_set.masks:
        train_set, val_set = _datasets(config, masks=True)
    model.to(dev)
    loader, sampler = _loader(config, train_set, dist)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images give no batch of {config.batch_size}; lower batch_size")
    total = (
        config.epochs * steps_per_epoch
        if config.max_steps is None
        else min(config.max_steps, config.epochs * steps_per_epoch)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if resuming:
        assert out is not None
        start_epoch, step, history = _resume(out, config, model, optimizer, scheduler)
    fwd: nn.Module = model
    if dist.enabled:
        fwd = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    say = log if (log is not None and dist.is_main) else (lambda _s: None)
    run_start = time.perf_counter()
    last_eval: dict[str, Any] | None = None
    for epoch in range(start_epoch, config.epochs):
        if step >= total:
            break
        _set_epoch(loader, sampler, config.seed, epoch, dist.rank)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for images, targets in loader:
            images = [im.to(dev, non_blocking=True) for im in images]
            targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in targets]
            losses = fwd(images, targets)
            loss = torch.stack(list(losses.values())).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower lr or raise warmup_iters")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64, device=dev)) + v.detach().double()
            if step >= total:
                break
        keys = sorted(sums)
        reduced = D.all_reduce_sum(torch.stack([sums[k] for k in keys]) / max(n, 1) / dist.world_size).tolist()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"]}
        record.update(dict(zip(keys, reduced, strict=True)), loss=sum(reduced), epoch_time_s=time.perf_counter() - t0)
        last = epoch + 1 == config.epochs or step >= total
        if dist.is_main and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            last_eval = coco_evaluate(model, val_set, dev, config.eval_batch_size)
            record.update(box_AP=last_eval["bbox"]["AP"], mask_AP=last_eval.get("segm", {}).get("AP"))
        history.append(record)
        say(_epoch_line(record))
        if dist.is_main and out is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": get_rng_state(), "epoch": epoch, "step": step, "history": history,
                     "config": config.to_dict(), "detector_config": det_cfg.to_dict()}  # fmt: skip
            save_checkpoint(out / CHECKPOINT, state)
            write_metrics(out, history)
        D.barrier()
    wall = time.perf_counter() - run_start
    if last_eval is None and dist.is_main:
        last_eval = coco_evaluate(model, val_set, dev, config.eval_batch_size)
    metrics = _final_metrics(last_eval, history, step, len(train_set), wall, dist)
    if dist.is_main and out is not None:
        _write_final(out, model, det_cfg, train_set, config, metrics)
    return DetectionRunResult(out, metrics, history, model)


def _loader(config: DetectionTrainConfig, data: CocoDetectionData, dist: D.DistInfo) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    sampler = D.shuffled_sampler(data, dist, config.seed)
    loader = DataLoader(
        data,
        batch_size=D.rank_batch_size(config.batch_size, dist),
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=dist.device.type == "cuda",
        generator=torch.Generator(),
    )
    return loader, sampler


def _set_epoch(loader: Any, sampler: Any, seed: int, epoch: int, rank: int) -> None:  # noqa: ANN401
    """Seed the epoch's order and workers from (seed, epoch, rank): a resumed run draws what the uninterrupted one did."""
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    else:
        sampler.generator.manual_seed(seed * 100_003 + epoch)
    loader.generator.manual_seed(worker_seed(seed, epoch, rank))


def _resume(
    out: Path, config: DetectionTrainConfig, model: nn.Module, optimizer: Any, scheduler: Any
) -> tuple[int, int, list[dict[str, Any]]]:
    """Restore model, optimiser, schedule and RNG from ``out``'s checkpoint after checking the settings agree."""
    state = load_checkpoint(out / CHECKPOINT)
    saved = state.get("config", {})
    for key, now in config.to_dict().items():
        if key in saved and key not in RESUME_MAY_CHANGE and saved[key] != now:
            raise RunDirError(
                f"cannot resume {out}: {key} was {saved[key]!r}, now {now!r}; start a new run (another --out) to change it"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["step"], list(state["history"])


def _final_metrics(
    last_eval: dict[str, Any] | None, history: list[dict[str, Any]], step: int, n_train: int, wall: float,
    dist: D.DistInfo,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"epochs": len(history), "steps": step, "train_images": n_train, "wall_time_s": wall,
                           "device": str(dist.device), "device_name": D.device_name(dist.device),
                           "world_size": dist.world_size}  # fmt: skip
    if last_eval is not None:
        out.update(bbox=last_eval["bbox"], n_val=last_eval["images"], detections=last_eval["detections"])
        if "segm" in last_eval:
            out["segm"] = last_eval["segm"]
    return out


def _write_final(
    out: Path, model: nn.Module, det_cfg: DetectorConfig, data: CocoDetectionData, config: DetectionTrainConfig,
    metrics: dict[str, Any],
) -> None:  # fmt: skip
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write_bytes(out / WEIGHTS, blob)
    doc = {"format": FORMAT, "detector": det_cfg.to_dict(), "categories": [dict(data.coco.cats[c]) for c in data.cat_ids],
           "weights_sha256": hashlib.sha256(blob).hexdigest(), "train_config": config.to_dict(), "metrics": metrics}  # fmt: skip
    atomic_write_text(out / CONFIG, json.dumps(doc, indent=2) + "\n")


def load_detector(run: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained detector from a run directory: ``detector.json`` + sha256-verified ``detector.safetensors`` of a
    finished run, else the latest ``checkpoint.pt`` of an unfinished one. -> (detector in eval mode, its record)."""
    run = Path(run)
    if (run / CONFIG).is_file():
        doc = json.loads((run / CONFIG).read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"{run / CONFIG} is not a blockswap-zoo detector record (format {doc.get('format')!r})")
        blob = (run / WEIGHTS).read_bytes() if (run / WEIGHTS).is_file() else b""
        if hashlib.sha256(blob).hexdigest() != doc["weights_sha256"]:
            raise ValueError(f"{run / WEIGHTS} is missing or does not match the sha256 in {run / CONFIG}")
        from safetensors.torch import load

        state = load(blob)
    elif (run / CHECKPOINT).is_file():
        ckpt = load_checkpoint(run / CHECKPOINT)
        if "detector_config" not in ckpt:
            raise ValueError(f"{run / CHECKPOINT} is a classification run's checkpoint; use `blockswap-zoo evaluate`")
        doc, state = {"detector": ckpt["detector_config"], "train_config": ckpt["config"]}, ckpt["model"]
    else:
        raise FileNotFoundError(f"{run} holds neither {CONFIG} nor {CHECKPOINT}: not a detector training run")
    model = build_detector(DetectorConfig.from_dict(doc["detector"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{run}: its weights do not fit the detector it describes: {e}") from None
    return model.to(map_location).eval(), doc


def _epoch_line(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}: loss {r['loss']:.4f}"]
    parts += [f"{k.removeprefix('loss_')} {v:.3f}" for k, v in r.items() if k.startswith("loss_")]
    if r.get("box_AP") is not None:
        parts.append(f"box AP {r['box_AP']:.1f}")
    if r.get("mask_AP") is not None:
        parts.append(f"mask AP {r['mask_AP']:.1f}")
    parts.append(f"{r['epoch_time_s']:.0f}s lr {r['lr']:.4g}")
    return "  ".join(parts)
