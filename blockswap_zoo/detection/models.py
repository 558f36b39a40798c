"""Detectors from ResNet genotypes: torchvision's Mask R-CNN / Faster R-CNN over an FPN on our ResNet.

The backbone is this package's torchvision-layout ResNet, built from any ``resnet18`` / ``resnet34``
genotype; the FPN reads its stage outputs through ``forward_intermediates`` and sizes itself from
``feature_info``. Names are ``<kind>_<backbone>``: ``maskrcnn_resnet34_gn3m`` (Table 4's all-G(N)
baseline), ``fasterrcnn_resnet34_bs3083k``, ``maskrcnn_resnet34:v1:S;G(4);...`` (any genotype).
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..backbones import ResNetBackbone
from ..genotype import Genotype
from ..models import ResNet, SwapNet, build_model
from ..registry import get_arch, list_models

__all__ = [
    "DETECTION_BACKBONES",
    "DETECTOR_KINDS",
    "BackboneWithFPN",
    "DetectorConfig",
    "DetectorError",
    "backbone_params",
    "build_detector",
    "create_detector",
    "describe_detector",
    "list_detectors",
    "parse_detector_name",
]

DETECTOR_KINDS: dict[str, type[FasterRCNN]] = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN}

# Backbones named for detection only: the paper's Table 4 baseline, ResNet-34 with every block G(N)
# (3.13M params counted with the ImageNet classifier, as Table 3's "all G(N)" row; 2.62M in the detector).
DETECTION_BACKBONES: dict[str, tuple[Genotype, str]] = {
    "resnet34_gn3m": (
        Genotype.uniform("resnet34", "G(N)"),
        "ResNet-34 with every block G(N), the paper's Table 4 baseline (22.3 box AP on COCO from scratch)",
    ),
}


class DetectorError(ValueError):
    """A detector name or genotype that cannot make a detector (unknown name, non-ResNet backbone)."""


MAX_CLASSES = 100_000  # categories plus background: far beyond any detection set, and a head that still fits


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that fixes a detector's structure: what ``detector.json`` records to rebuild it."""

    kind: str
    genotype: Genotype
    num_classes: int  # including the background class 0, as torchvision counts
    fpn_channels: int = 256
    head_channels: int | None = None  # None: torchvision's (1024 box MLP, 256 mask convs)
    min_size: int = 800
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)

    def __post_init__(self) -> None:
        """Refuse, before any model is built, sizes no detector can have (DetectorError naming the setting)."""

        def whole(v: object, low: int, high: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

        checks = [("num_classes", self.num_classes, 2, MAX_CLASSES), ("fpn_channels", self.fpn_channels, 1, 4096),
                  ("min_size", self.min_size, 1, 16_384), ("max_size", self.max_size, 1, 16_384)]  # fmt: skip
        if self.head_channels is not None:
            checks.append(("head_channels", self.head_channels, 1, 16_384))
        if whole(self.num_classes, -(2**63), 1):
            raise DetectorError(f"num_classes counts the background too: it must be >= 2, got {self.num_classes}")
        for name, value, low, high in checks:
            if not whole(value, low, high):
                raise DetectorError(f"{name} must be a whole number in {low}..{high:,}, got {value!r}")
        if self.max_size < self.min_size:
            raise DetectorError(f"max_size {self.max_size} is smaller than min_size {self.min_size}")
        if not self.anchor_sizes or not all(whole(a, 1, 16_384) for a in self.anchor_sizes):
            raise DetectorError(f"anchor_sizes must be whole numbers of pixels, got {list(self.anchor_sizes)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "genotype": self.genotype.to_dict(),
            "compact": self.genotype.to_string(),
            "num_classes": self.num_classes,
            "fpn_channels": self.fpn_channels,
            "head_channels": self.head_channels,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "anchor_sizes": list(self.anchor_sizes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        return cls(
            str(d["kind"]),
            Genotype.from_dict(d["genotype"]),
            int(d["num_classes"]),
            int(d["fpn_channels"]),
            None if d.get("head_channels") is None else int(d["head_channels"]),
            int(d["min_size"]),
            int(d["max_size"]),
            tuple(int(a) for a in d["anchor_sizes"]),
        )


class BackboneWithFPN(nn.Module):
    """A ResNet body (no classifier) and a feature pyramid over its 4 stage outputs, plus a max-pooled level."""

    def __init__(self, body: SwapNet, out_channels: int = 256) -> None:
        super().__init__()
        if body.num_classes != 0:
            raise DetectorError("the detector's backbone must be built with num_classes=0 (no classifier)")
        self.body = body
        in_channels = [int(info["num_chs"]) for info in body.feature_info]  # type: ignore[call-overload]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels  # what torchvision's detection heads read

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body.forward_intermediates(x, intermediates_only=True)
        assert isinstance(feats, list)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _check_resnet(genotype: Genotype, what: str) -> Genotype:
    if not isinstance(genotype.backbone_spec, ResNetBackbone):
        raise DetectorError(
            f"{what}: detectors take a ResNet genotype (resnet18 or resnet34, torchvision layout), got backbone "
            f"{genotype.backbone}; use e.g. maskrcnn_resnet34_gn3m or a resnet34:v1:... genotype"
        )
    return genotype


def _resnet_archs() -> list[str]:
    """Registered classification archs with a ResNet backbone, and the detection-only backbones."""
    archs = [n for n in list_models() if isinstance(get_arch(n).genotype.backbone_spec, ResNetBackbone)]
    return sorted({*archs, *DETECTION_BACKBONES})


def list_detectors(pattern: str = "*") -> list[str]:
    """Detector names matching a wildcard: every kind over every registered ResNet backbone."""
    names = [f"{kind}_{arch}" for kind in DETECTOR_KINDS for arch in _resnet_archs()]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def describe_detector(name: str) -> str:
    """One line on what a registered detector name is."""
    kind, genotype = parse_detector_name(name)
    backbone = name.partition("_")[2]
    desc = DETECTION_BACKBONES[backbone][1] if backbone in DETECTION_BACKBONES else get_arch(backbone).description
    return f"{DETECTOR_KINDS[kind].__name__} + FPN; backbone: {desc}"


def parse_detector_name(name: str) -> tuple[str, Genotype]:
    """``<kind>_<backbone>`` -> (kind, the backbone's genotype). The backbone may be a registered ResNet arch,
    a detection backbone (``resnet34_gn3m``), a plain ``resnet18`` / ``resnet34`` or ResNet genotype text."""
    kind, sep, backbone = name.partition("_")
    if not sep or kind not in DETECTOR_KINDS:
        raise DetectorError(
            f"unknown detector {name!r}: names are <kind>_<backbone> with kind one of {', '.join(DETECTOR_KINDS)} "
            f"(e.g. maskrcnn_resnet34_gn3m); `blockswap-zoo list-detectors` lists them"
        )
    if backbone in DETECTION_BACKBONES:
        return kind, DETECTION_BACKBONES[backbone][0]
    from ..sources import resolve_genotype

    try:
        genotype = resolve_genotype(backbone)
    except (ValueError, FileNotFoundError) as e:
        raise DetectorError(f"unknown detector {name!r}: its backbone {backbone!r} is not a model name ({e})") from None
    return kind, _check_resnet(genotype, name)


def backbone_params(genotype: Genotype) -> int:
    """Parameters of the backbone inside a detector: stem and blocks, no classifier (the search's budget)."""
    return genotype.num_params(num_classes=0)


def build_detector(config: DetectorConfig, body: SwapNet | None = None) -> FasterRCNN:
    """The detector ``config`` describes; ``body`` (a num_classes=0 ResNet of the same genotype) if given."""
    if config.kind not in DETECTOR_KINDS:
        raise DetectorError(f"unknown detector kind {config.kind!r}; choose one of {', '.join(DETECTOR_KINDS)}")
    _check_resnet(config.genotype, config.kind)
    if body is None:
        body = build_model(config.genotype, num_classes=0)
    elif body.genotype != config.genotype or body.num_classes != 0:
        raise DetectorError("the given backbone body is not a classifier-free network of the detector's genotype")
    backbone = BackboneWithFPN(body, config.fpn_channels)
    levels = len(body.feature_info) + 1  # the stages and LastLevelMaxPool's extra level
    if len(config.anchor_sizes) != levels:
        raise DetectorError(f"anchor_sizes needs one size per pyramid level ({levels}), got {config.anchor_sizes}")
    anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
    kwargs: dict[str, Any] = {"min_size": config.min_size, "max_size": config.max_size, "rpn_anchor_generator": anchors}
    if config.head_channels is not None:
        c = config.head_channels
        kwargs["box_head"] = TwoMLPHead(config.fpn_channels * 7 * 7, c)
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        kwargs["box_predictor"] = FastRCNNPredictor(c, config.num_classes)
        if config.kind == "maskrcnn":
            kwargs["mask_head"] = MaskRCNNHeads(config.fpn_channels, (c, c, c, c), 1)
            from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

            kwargs["mask_predictor"] = MaskRCNNPredictor(c, c, config.num_classes)
        return DETECTOR_KINDS[config.kind](backbone, None, **kwargs)
    return DETECTOR_KINDS[config.kind](backbone, config.num_classes, **kwargs)


def create_detector(
    name_or_genotype: str | Genotype,
    num_classes: int = 91,
    kind: str | None = None,
    backbone_weights: str | None = None,
    fpn_channels: int = 256,
    head_channels: int | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
) -> FasterRCNN:
    """A detector by name (``maskrcnn_resnet34_gn3m``) or from a ResNet Genotype / genotype text and ``kind``.

    ``num_classes`` includes the background (91: COCO's category ids, torchvision's default). The backbone
    starts from scratch, as in the paper, or from ``backbone_weights``: a classification checkpoint of the
    same genotype (run directory, checkpoint, local-dir:, hf-hub:, arch.tag), loaded strictly except its
    classifier. The defaults are torchvision's Mask R-CNN settings.
    """
    genotype, kind = _resolve(name_or_genotype, kind)
    config = DetectorConfig(
        kind, genotype, num_classes, fpn_channels, head_channels, min_size, max_size, tuple(anchor_sizes)
    )
    body = load_backbone_weights(backbone_weights, genotype) if backbone_weights is not None else None
    return build_detector(config, body)


def _resolve(name_or_genotype: str | Genotype, kind: str | None) -> tuple[Genotype, str]:
    """(genotype, kind) of a detector name, or of a genotype (text) plus ``kind`` (default maskrcnn)."""
    if isinstance(name_or_genotype, Genotype):
        return _check_resnet(name_or_genotype, "genotype"), kind or "maskrcnn"
    head = name_or_genotype.partition("_")[0]
    if head in DETECTOR_KINDS:
        named_kind, genotype = parse_detector_name(name_or_genotype)
        if kind is not None and kind != named_kind:
            raise DetectorError(f"{name_or_genotype!r} is a {named_kind} detector; kind={kind!r} contradicts it")
        return genotype, named_kind
    from ..sources import resolve_genotype

    try:
        genotype = resolve_genotype(name_or_genotype)
    except (ValueError, FileNotFoundError) as e:
        raise DetectorError(
            f"{name_or_genotype!r} is neither a detector name (<kind>_<backbone>, kind one of "
            f"{', '.join(DETECTOR_KINDS)}; `blockswap-zoo list-detectors`) nor a ResNet genotype: {e}"
        ) from None
    return _check_resnet(genotype, name_or_genotype), kind or "maskrcnn"


def load_backbone_weights(spec: str, genotype: Genotype) -> SwapNet:
    """A classification checkpoint as a classifier-free backbone body; its genotype must be ``genotype``."""
    from ..factory import load_trained
    from ..sources import parse_source

    model = load_trained(parse_source(spec))  # sha256-verified, loaded strictly
    if model.genotype != genotype:
        raise DetectorError(
            f"backbone weights {spec!r} are of {model.genotype.to_string()}, not the detector's backbone "
            f"{genotype.to_string()}; pass a checkpoint of the same genotype"
        )
    if not isinstance(model, ResNet):
        raise DetectorError(f"backbone weights {spec!r} are not a ResNet")
    model.reset_classifier(0)  # the matching part: everything but the classifier
    return model
