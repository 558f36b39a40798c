"""COCO-format detection data (an instances JSON and an image folder, read with pycocotools) as torchvision
detection targets, and evaluation with pycocotools' COCOeval: box and mask AP, AP50, AP75, AP small/medium/large.

Category ids map to contiguous labels 1..K (0 is torchvision's background) and back for evaluation, so any
COCO file works, COCO itself included (its 80 categories with ids up to 90).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "METRIC_NAMES",
    "CocoDetectionData",
    "DetectionDataError",
    "coco_evaluate",
    "collate",
    "require_pycocotools",
]

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first 6 of COCOeval's stats, in its order


class DetectionDataError(ValueError):
    """A COCO-format dataset that cannot be read: missing files, malformed annotations."""


def require_pycocotools() -> Any:  # noqa: ANN401 - the module
    """pycocotools' ``COCO`` API module, or ImportError naming the extra that installs it."""
    try:
        from pycocotools import coco
    except ImportError:
        raise ImportError(
            "COCO-format data and COCOeval need pycocotools: pip install 'blockswap-zoo[detection]'"
        ) from None
    return coco


def _quiet() -> contextlib.AbstractContextManager:
    """pycocotools prints progress to stdout; keep it out of the CLI's output."""
    return contextlib.redirect_stdout(io.StringIO())


class CocoDetectionData(torch.utils.data.Dataset):
    """(image float CxHxW in 0..1, target dict) pairs from a COCO instances JSON and its image folder.

    Targets hold ``boxes`` (xyxy), ``labels`` (1..K), ``masks`` (uint8 NxHxW, with ``masks=True``),
    ``image_id``, ``area`` and ``iscrowd``; crowd regions and empty boxes are left out of training targets.
    ``flip``: a random horizontal flip with probability 0.5 (torchvision's detection training default).
    """

    def __init__(self, images: str | Path, annotations: str | Path, masks: bool = True, flip: bool = False) -> None:
        self.images, self.annotations = Path(images), Path(annotations)
        if not self.annotations.is_file():
            raise DetectionDataError(
                f"annotation file {self.annotations} does not exist; pass a COCO instances JSON "
                "(e.g. annotations/instances_val2017.json), or make a set with `blockswap-zoo make-detection-set`"
            )
        if not self.images.is_dir():
            raise DetectionDataError(
                f"image folder {self.images} does not exist; pass the folder the JSON's file_names are in"
            )
        coco = require_pycocotools()
        try:
            with _quiet():
                self.coco = coco.COCO(str(self.annotations))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise DetectionDataError(
                f"{self.annotations} is not a COCO instances file ({type(e).__name__}: {e})"
            ) from None
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        if not self.cat_ids:
            raise DetectionDataError(f"{self.annotations} lists no categories")
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.masks, self.flip = masks, flip
        _check_annotations(self.coco.dataset, self.annotations, masks)

    @property
    def num_classes(self) -> int:
        """Categories plus the background: what a detector for this set needs."""
        return len(self.cat_ids) + 1

    @property
    def category_names(self) -> list[str]:
        return [str(self.coco.cats[c]["name"]) for c in self.cat_ids]

    def __len__(self) -> int:
        return len(self.ids)

    def _image(self, image_id: int) -> torch.Tensor:
        from PIL import Image

        name = self.coco.imgs[image_id].get("file_name")
        path = self.images / str(name)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise DetectionDataError(
                f"image {image_id}: file_name {name!r} is not a relative path inside the image folder {self.images}; "
                "give each image's file name relative to that folder"
            )
        info = self.coco.imgs[image_id]
        try:
            with Image.open(path) as img:  # the header first: nothing is decoded for a file that lies
                if tuple(img.size) != (info["width"], info["height"]):
                    raise DetectionDataError(
                        f"image {image_id} ({path}) is {img.size[0]}x{img.size[1]} px, but {self.annotations} "
                        f"says {info['width']}x{info['height']}; correct its width and height"
                    )
                array = np.asarray(img.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as e:
            raise DetectionDataError(f"cannot read image {path}: {e}") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        image = self._image(image_id)
        h, w = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target: dict[str, torch.Tensor] = {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)[keep],
            "image_id": torch.tensor(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        }
        if self.masks:
            masks = [self.coco.annToMask(a) for a in anns]
            stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
            target["masks"] = stacked[keep]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


MAX_SIDE = 16_384  # px: larger images (or RLE masks) than any detection set holds would exhaust memory


def _check_annotations(doc: dict[str, Any], source: Path, masks: bool) -> None:
    """Every image and annotation is what training reads: sizes in range, known images and categories, a box of
    four finite numbers, a polygon or RLE mask that fits its image. DetectionDataError naming both, else."""
    images = {}
    for img in doc.get("images", []):
        iid, w, h = img.get("id"), img.get("width"), img.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in (w, h)):
            raise DetectionDataError(
                f"{source}: image {iid}: width and height must be whole numbers of pixels in 1..{MAX_SIDE}, got "
                f"{w!r} x {h!r}"
            )
        images[iid] = (h, w)
    cats = {c.get("id") for c in doc.get("categories", [])}
    for ann in doc.get("annotations", []):
        where = f"{source}: annotation {ann.get('id')!r} (image {ann.get('image_id')!r})"
        if ann.get("image_id") not in images:
            raise DetectionDataError(f"{where}: its image_id is not among the file's images")
        if ann.get("category_id") not in cats:
            raise DetectionDataError(f"{where}: category_id {ann.get('category_id')!r} is not among its categories")
        box = ann.get("bbox")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
            or box[2] < 0
            or box[3] < 0
        ):
            raise DetectionDataError(f"{where}: bbox must be [x, y, width, height], four finite numbers; got {box!r}")
        if masks:
            _check_segmentation(ann.get("segmentation"), images[ann["image_id"]], where)


def _check_segmentation(seg: object, hw: tuple[int, int], where: str) -> None:
    """A polygon list (each an even number, at least 6, of finite coordinates) or an RLE of the image's size."""
    if isinstance(seg, list):
        for poly in seg:
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):  # type: ignore[union-attr]
                raise DetectionDataError(
                    f"{where}: a polygon must be a list of an even number (at least 6) of coordinates; got {poly!r:.80}"
                )
        if not seg:
            raise DetectionDataError(f"{where}: segmentation is an empty list; give a polygon or an RLE")
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size != [hw[0], hw[1]]:
            raise DetectionDataError(f"{where}: RLE size {size!r} is not its image's [height, width] {list(hw)}")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
                raise DetectionDataError(
                    f"{where}: RLE counts must be non-negative whole numbers that sum to height x width"
                )
        elif not isinstance(counts, str):
            raise DetectionDataError(f"{where}: RLE counts must be a list of numbers or a compressed string")
        return
    raise DetectionDataError(f"{where}: segmentation must be polygons (a list) or an RLE (a mapping); got {seg!r:.80}")


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Detection batches are lists: images of different sizes, targets of different lengths."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _results(
    outputs: Iterable[tuple[int, dict[str, torch.Tensor]]], cat_ids: list[int], with_masks: bool
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """COCO result entries (box, and mask as RLE) of each detection."""
    from pycocotools import mask as mask_util

    for image_id, out in outputs:
        boxes = out["boxes"].tolist()
        scores, labels = out["scores"].tolist(), out["labels"].tolist()
        rles: list[Any] = []
        if with_masks and "masks" in out and len(boxes):
            binary = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
            rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for k, ((x0, y0, x1, y1), s, lab) in enumerate(zip(boxes, scores, labels, strict=True)):
            base = {"image_id": image_id, "category_id": cat_ids[lab - 1], "score": float(s)}
            box = {**base, "bbox": [x0, y0, x1 - x0, y1 - y0]}
            seg = None
            if rles:
                rle = dict(rles[k])
                rle["counts"] = rle["counts"].decode("ascii")
                seg = {**base, "segmentation": rle}
            yield box, seg


def _cocoeval(gt: Any, results: list[dict[str, Any]], iou_type: str) -> dict[str, float | None]:  # noqa: ANN401
    """COCOeval's summary as {AP, AP50, AP75, APs, APm, APl} in percent: 0 for all when nothing was detected,
    None for a size range without ground-truth objects (COCOeval's -1)."""
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) * 100 if v >= 0 else None for name, v in zip(METRIC_NAMES, ev.stats[:6], strict=True)}


@torch.no_grad()
def coco_evaluate(
    model: nn.Module, data: CocoDetectionData, device: str | torch.device = "cpu", batch_size: int = 4
) -> dict[str, Any]:
    """Box (and, for Mask R-CNN, mask) AP of ``model`` on ``data`` with COCOeval, as percentages.

    Returns ``{"bbox": {AP, AP50, ...}, "segm": {...}, "images": n, "detections": n}``.
    """
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    with_masks = getattr(model, "roi_heads", None) is not None and model.roi_heads.has_mask()  # type: ignore[union-attr, operator]
    # its own generator: evaluating draws nothing from the global RNG, so a run evaluated mid-way resumes exactly
    loader = DataLoader(data, batch_size, shuffle=False, collate_fn=collate, num_workers=0, generator=torch.Generator())
    boxes: list[dict[str, Any]] = []
    segms: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            outs = model([im.to(device) for im in images])
            pairs = [
                (int(t["image_id"]), {k: v.cpu() for k, v in o.items()}) for t, o in zip(targets, outs, strict=True)
            ]
            for box, seg in _results(pairs, data.cat_ids, with_masks):
                boxes.append(box)
                if seg is not None:
                    segms.append(seg)
    finally:
        model.train(was_training)
    report: dict[str, Any] = {"bbox": _cocoeval(data.coco, boxes, "bbox")}
    if with_masks:
        report["segm"] = _cocoeval(data.coco, segms, "segm")
    report.update(images=len(data), detections=len(boxes))
    return report
