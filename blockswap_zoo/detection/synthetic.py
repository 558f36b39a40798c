"""A small COCO-format detection set made of real Fashion-MNIST items placed on larger canvases (seeded).

Synthetic in layout, real in content: each canvas holds 1..``max_items`` Fashion-MNIST images (from
the train split for ``train``, the test split for ``val``: held-out items), each scaled by a random
factor and pasted at a random place without overlapping another item's box. An item's mask is its
own non-background pixels and its box is that mask's extent; its category is its Fashion-MNIST
class (ids 1..10). Written as COCO: ``<root>/<split>/*.png`` and ``<root>/annotations/instances_<split>.json``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io import atomic_write_bytes, atomic_write_text

__all__ = ["MAX_CANVAS", "SyntheticSpec", "make_canvas", "make_detection_set"]

MAX_CANVAS = 4096  # px a side: a canvas of 10^6 px a side would need terabytes

MASK_THRESHOLD = 32  # an item pixel brighter than this (of 255) is the item; darker is Fashion-MNIST's background
SPLITS = {"train": "train", "val": "test"}  # our split -> the Fashion-MNIST split its items come from


@dataclass(frozen=True)
class SyntheticSpec:
    """How many canvases, how large, how many items, at what scales."""

    train_images: int = 400
    val_images: int = 100
    canvas: int = 128
    max_items: int = 4
    min_scale: float = 1.0
    max_scale: float = 2.0
    seed: int = 0

    def check(self) -> None:
        if self.train_images < 1 or self.val_images < 1:
            raise ValueError("train_images and val_images must be >= 1")
        if not 1 <= self.max_items <= 16:
            raise ValueError(f"max_items must be in 1..16, got {self.max_items}")
        if not 0.5 <= self.min_scale <= self.max_scale:
            raise ValueError(
                f"scales must satisfy 0.5 <= min_scale <= max_scale, got {self.min_scale}, {self.max_scale}"
            )
        if self.canvas > MAX_CANVAS:
            raise ValueError(f"canvas {self.canvas} px is larger than {MAX_CANVAS}; give --canvas {MAX_CANVAS} or less")
        if self.canvas < round(28 * self.max_scale) + 2:
            raise ValueError(f"canvas {self.canvas} is too small for items up to {round(28 * self.max_scale)} px")


def _scaled(item: np.ndarray, size: int) -> np.ndarray:
    """A 28x28 uint8 item resized to ``size`` x ``size`` (bilinear)."""
    t = torch.from_numpy(item.astype(np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 255).round().to(torch.uint8).numpy()


def make_canvas(
    items: np.ndarray, labels: np.ndarray, rng: np.random.Generator, spec: SyntheticSpec
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One canvas (uint8 HxW) and its objects (category, mask, box) from a pool of items and labels."""
    canvas = np.zeros((spec.canvas, spec.canvas), dtype=np.uint8)
    objects: list[dict[str, Any]] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, spec.max_items + 1))):
        k = int(rng.integers(len(items)))
        size = int(round(28 * rng.uniform(spec.min_scale, spec.max_scale)))
        img = _scaled(items[k], size)
        mask = img > MASK_THRESHOLD
        if mask.sum() < 16:  # a nearly empty item: nothing to detect
            continue
        for _try in range(20):
            y, x = (int(v) for v in rng.integers(0, spec.canvas - size + 1, size=2))
            ys, xs = np.nonzero(mask)
            box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
            if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
                break
        else:
            continue  # no free place: fewer items on this canvas
        region = canvas[y : y + size, x : x + size]
        np.maximum(region, np.where(mask, img, 0).astype(np.uint8), out=region)
        full = np.zeros_like(canvas, dtype=bool)
        full[y : y + size, x : x + size] = mask
        taken.append(box)
        objects.append({"category_id": int(labels[k]) + 1, "mask": full, "box": box})
    return canvas, objects


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean mask (column-major runs, starting with background)."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:  # runs start with background: a mask that starts on the item opens with an empty run
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _png(canvas: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def make_detection_set(
    root: str | Path, spec: SyntheticSpec = SyntheticSpec(), data_dir: str | Path | None = None
) -> dict[str, Path]:
    """Write the train and val splits under ``root``; returns each split's instances JSON path.

    Same spec and seed, same files. Items come from Fashion-MNIST (``data_dir`` or the system copy). The set is
    written into a staging folder under ``root`` and moved into place whole, so a run stopped part-way leaves
    the set that was there (with ``--force``) as it was.
    """
    spec.check()
    root = Path(root)
    staging = root / f".staging-{os.getpid()}"  # built whole first: a set stopped part-way changes nothing
    shutil.rmtree(staging, ignore_errors=True)
    try:
        written = _write_set(staging, spec, data_dir)
        _swap_in(staging, root, ("train", "val", "annotations"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {split: root / path.relative_to(staging) for split, path in written.items()}


def _swap_in(staging: Path, root: Path, entries: tuple[str, ...]) -> None:
    """Move ``entries`` from ``staging`` into ``root``, replacing what is there, in a few renames."""
    old = root / f".replaced-{os.getpid()}"
    old.mkdir(parents=True, exist_ok=True)
    for name in entries:
        if (root / name).exists():
            (root / name).rename(old / name)
        (staging / name).rename(root / name)
    shutil.rmtree(old)


def _write_set(root: Path, spec: SyntheticSpec, data_dir: str | Path | None) -> dict[str, Path]:
    from ..data import get_dataset_info, load_arrays

    names = get_dataset_info("fashion_mnist").label_names
    categories = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(names)]
    out: dict[str, Path] = {}
    for split, source in SPLITS.items():
        data = load_arrays("fashion_mnist", source, data_dir, download=False)
        items, labels = data.images[:, 0].numpy(), data.labels.numpy()
        rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
        count = spec.train_images if split == "train" else spec.val_images
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for i in range(count):
            canvas, objects = make_canvas(items, labels, rng, spec)
            file_name = f"{i:06d}.png"
            atomic_write_bytes(root / split / file_name, _png(canvas))
            images.append({"id": i + 1, "file_name": file_name, "height": spec.canvas, "width": spec.canvas})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": obj["category_id"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": int(obj["mask"].sum()),
                        "iscrowd": 0,
                        "segmentation": _rle(obj["mask"]),
                    }
                )
        doc = {
            "info": {
                "description": f"Fashion-MNIST items on {spec.canvas}px canvases (synthetic layout)",
                "spec": spec.__dict__,
            },  # fmt: skip
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        out[split] = root / "annotations" / f"instances_{split}.json"
        atomic_write_text(out[split], json.dumps(doc))
    return out
