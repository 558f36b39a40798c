"""CIFAR-style pre-activation WideResNet whose blocks are chosen by a Genotype."""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn

from ..backbones import Part, WideResNetBackbone
from ..blocks import build_plan
from ..genotype import Genotype
from .base import BlockFactory, SwapNet, fresh_block, init_weights, select

__all__ = ["PreActBlock", "WideResNet"]


def _children(part: Part) -> nn.Module:
    if len(part) == 1:
        return build_plan(part[0][1])
    return nn.Sequential(OrderedDict((name, build_plan(plan)) for name, plan in part))


class PreActBlock(nn.Module):
    """BN-ReLU, then the residual branch of the block type; a 1x1 shortcut where shapes change.

    As in the reference WRN, a convolutional shortcut reads the activated input and an
    identity shortcut the raw input. ``probe`` marks the branch output for Fisher potential.
    """

    # (norm, activation) attributes that forward runs as act(norm(x)), norm's output used nowhere else:
    # the search may fuse each pair (blockswap_zoo.search.cpu.layers).
    fusable_norm_act: ClassVar[tuple[tuple[str, str], ...]] = (("bn1", "act1"),)

    def __init__(self, parts: dict[str, Part]) -> None:
        super().__init__()
        self.bn1 = _children(parts["norm"])
        self.act1 = nn.ReLU(inplace=True)
        self.branch = nn.Sequential(OrderedDict((name, build_plan(plan)) for name, plan in parts["branch"]))
        self.probe = nn.Identity()
        self.conv_shortcut = "shortcut" in parts
        self.shortcut = _children(parts["shortcut"]) if self.conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.probe(self.branch(pre))
        if self.conv_shortcut:
            return self.shortcut(pre) + out
        return x + out


class WideResNet(SwapNet):
    """WRN-depth-width (pre-activation) for small images; any depth 6n+4, width, channels, size."""

    fusable_norm_act: ClassVar[tuple[tuple[str, str], ...]] = (("norm", "act"),)  # as PreActBlock's

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        make_block: BlockFactory = fresh_block,
    ) -> None:
        super().__init__(genotype, num_classes, in_chans, drop_rate)
        spec = genotype.backbone_spec
        if not isinstance(spec, WideResNetBackbone):
            raise TypeError(f"WideResNet needs a wrn_* genotype, got backbone {genotype.backbone}")
        self.stem = build_plan(spec.stem_plan(in_chans))
        slots = spec.slots()
        stages: list[list[nn.Module]] = [[] for _ in spec.stage_depths]
        for block_type, slot in zip(genotype.block_types, slots, strict=True):
            stages[slot.stage].append(make_block(PreActBlock, spec.block_parts(block_type, slot)))
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.norm = nn.BatchNorm2d(spec.num_features)
        self.act = nn.ReLU(inplace=True)
        init_weights(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_final_norm(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, intermediates_only: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Stage outputs (the reference's attention points) and, unless asked not to, the final features."""
        feats: list[torch.Tensor] = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        feats = select(feats, indices)
        if intermediates_only:
            return feats
        return self.forward_final_norm(x), feats
