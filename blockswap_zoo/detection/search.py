"""Search for detection backbones: candidates drawn exactly uniformly under a budget on the backbone's parameters
(``search.sampler``), each scored inside the detector by its Fisher potential under the detector's loss on one
fixed batch of detection images (``proxy``); the highest wins. A report directory gets ``candidates.jsonl``,
``winner.json`` and ``summary.json``, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..dir_lock import lock_directory
from ..genotype import Genotype
from ..io import atomic_write_text
from ..limits import check_seed
from ..search.sampler import parse_budget, sample_genotypes
from ..search.scoring import candidate_seed
from .coco import CocoDetectionData
from .models import DetectorConfig, backbone_params
from .proxy import score_detector

__all__ = ["DetectionCandidate", "DetectionSearchResult", "detection_batch", "search_detector"]


@dataclass(frozen=True)
class DetectionCandidate:
    """One scored backbone: its index, genotype, backbone params, init seed, Fisher potential and time."""

    index: int
    genotype: str
    params: int
    seed: int
    score: float
    seconds: float


@dataclass
class DetectionSearchResult:
    """The winner and every candidate, in index order."""

    winner: Genotype
    score: float
    params: int
    candidates: list[DetectionCandidate]
    seconds: float


def detection_batch(
    data: CocoDetectionData, batch_size: int, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A fixed batch of ``batch_size`` images with objects, drawn from ``data`` with ``seed``: every candidate
    is scored on it (one batch for all removes the batch's noise from the ranking)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    images, targets = [], []
    for i in order:
        image, target = data[i]
        if len(target["boxes"]):
            images.append(image)
            targets.append(target)
        if len(images) == batch_size:
            return images, targets
    raise ValueError(f"the dataset has {len(images)} images with objects; a batch of {batch_size} needs more")


def search_detector(
    template: DetectorConfig,
    data: CocoDetectionData,
    budget: int | str,
    samples: int = 100,
    batch_size: int = 8,
    seed: int = 0,
    tolerance: float = 0.025,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    force: bool = False,
) -> DetectionSearchResult:
    """Fisher-potential search of ``template.genotype``'s backbone at ``budget`` backbone parameters (stem and
    blocks, no classifier), each candidate inside ``template``'s detector. An ``out_dir`` that holds anything
    is refused unless ``force``, and even then unless it is a detection search's report."""
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples} and {batch_size}")
    try:
        check_seed(seed)
    except ValueError as e:
        raise ValueError(f"seed {e}") from None
    budget = parse_budget(budget)
    backbone = template.genotype.backbone
    genotypes = sample_genotypes(backbone, budget, samples, seed=seed, tolerance=tolerance, num_classes=0)
    images, targets = detection_batch(data, batch_size, seed)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    out = Path(out_dir) if out_dir is not None else None
    with contextlib.ExitStack() as held:  # the report folder, for this search alone
        if out is not None:
            _check_out(out, force)
            held.enter_context(lock_directory(out, "detection search"))
            for name in REPORT_FILES:
                (out / name).unlink(missing_ok=True)
        settings = {
            "budget": budget,
            "tolerance": tolerance,
            "samples": samples,
            "batch_size": batch_size,
            "seed": seed,
        }
        return _search(template, genotypes, images, targets, device, out, settings)


REPORT_FILES = ("candidates.jsonl", "winner.json", "summary.json")


def _check_out(out: Path, force: bool) -> None:
    """Refuse a report folder in the way: a file, anything without --force, another kind of report ever."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the report")
    if not out.exists() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES)
    if others or not (out / "summary.json").is_file() or "detector" not in (out / "summary.json").read_text():
        raise ValueError(
            f"--out {out} holds something other than a detection search report ({', '.join(others) or 'no summary'}); "
            "choose another --out"
        )
    if not force:
        raise ValueError(f"--out {out} holds a detection search report; pass --force to replace it, or another --out")


def _search(
    template: DetectorConfig,
    genotypes: list[Genotype],
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    device: str,
    out: Path | None,
    settings: dict[str, int | float],
) -> DetectionSearchResult:
    """Score every genotype in the template's detector; save candidates as they come and the report at the end."""
    seed = int(settings["seed"])
    candidates: list[DetectionCandidate] = []
    start = time.perf_counter()
    for i, g in enumerate(genotypes):
        t0 = time.perf_counter()
        s = candidate_seed(seed, i)
        score = score_detector(replace(template, genotype=g), images, targets, s, device)
        candidates.append(DetectionCandidate(i, g.to_string(), backbone_params(g), s, score, time.perf_counter() - t0))
        if out is not None:
            atomic_write_text(out / "candidates.jsonl", "".join(json.dumps(asdict(c)) + "\n" for c in candidates))
    best = max(candidates, key=lambda c: c.score if c.score == c.score else float("-inf"))  # NaN never wins
    result = DetectionSearchResult(
        Genotype.from_string(best.genotype), best.score, best.params, candidates, time.perf_counter() - start
    )
    if out is not None:
        result.winner.save(out / "winner.json")
        summary = {
            "winner": best.genotype,
            "score": best.score,
            "backbone_params": best.params,
            **settings,
            "detector": {k: v for k, v in template.to_dict().items() if k not in ("genotype", "compact")},
            "seconds": result.seconds,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result
