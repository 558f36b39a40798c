"""Fisher potential of a detector's backbone blocks under the detector's own loss (the paper searched its COCO
backbones "using COCO images"): BlockSwap's definition from ``search.proxies``, with L the sum of the
detector's training losses (RPN objectness and boxes, box classifier and regression, masks) on one batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..search.proxies import fisher_blocks_of_loss
from .models import DetectorConfig, build_detector

__all__ = ["detector_fisher_per_block", "detector_fisher_potential", "score_detector"]


def _probes(detector: nn.Module) -> list[nn.Module]:
    body = getattr(getattr(detector, "backbone", None), "body", None)
    if body is None or not hasattr(body, "swap_blocks"):
        raise TypeError("detection Fisher potential needs a detector from create_detector (backbone.body is a ResNet)")
    return [b.probe for b in body.swap_blocks()]


def detector_fisher_per_block(
    detector: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> list[float]:
    """Fisher potential of each backbone block (network order) under the detector's summed training loss.

    ``seed`` fixes the RPN's and the ROI heads' random sampling of anchors and proposals for the pass.
    """

    def loss_of(net: nn.Module, x: Any) -> torch.Tensor:  # noqa: ANN401 - the list of images
        losses = net(x, targets)
        return torch.stack([v.float() for v in losses.values()]).sum()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        terms = fisher_blocks_of_loss(detector, images, loss_of, _probes(detector), autocast_dtype)
    return [float(t) for t in terms]


def detector_fisher_potential(
    detector: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], seed: int = 0
) -> float:
    """The sum over backbone blocks of ``detector_fisher_per_block``."""
    return float(sum(detector_fisher_per_block(detector, images, targets, seed)))


def score_detector(
    config: DetectorConfig,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    seed: int,
    device: str | torch.device = "cpu",
) -> float:
    """Build the detector ``config`` describes with init ``seed`` (on the CPU, as the classification search) and
    return its Fisher potential on the batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector = build_detector(config)
    detector.requires_grad_(False).to(device)
    return detector_fisher_potential(detector, images, targets, seed)
