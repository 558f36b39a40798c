"""Detection with BlockSwap backbones: torchvision's Mask R-CNN / Faster R-CNN over our ResNets, COCO-format
data and COCOeval, a seeded synthetic set from Fashion-MNIST, training, and the Fisher-potential search under
the detector's loss. This package imports torchvision; pycocotools is imported lazily where COCO files are read.
"""

from __future__ import annotations

from .models import (
    DETECTION_BACKBONES,
    DETECTOR_KINDS,
    BackboneWithFPN,
    DetectorConfig,
    DetectorError,
    backbone_params,
    build_detector,
    create_detector,
    list_detectors,
    parse_detector_name,
)

__all__ = [
    "DETECTION_BACKBONES",
    "DETECTOR_KINDS",
    "BackboneWithFPN",
    "DetectorConfig",
    "DetectorError",
    "backbone_params",
    "build_detector",
    "create_detector",
    "list_detectors",
    "parse_detector_name",
]
