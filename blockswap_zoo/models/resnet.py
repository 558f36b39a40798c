"""torchvision-layout ResNet (post-activation BasicBlocks) whose convolutions a Genotype swaps.

With every block ``S`` the module tree and state_dict keys are torchvision's ``resnet18`` /
``resnet34``, so torchvision weights load directly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..backbones import Part, ResNetBackbone
from ..blocks import BlockType, build_plan
from ..genotype import Genotype
from .base import BlockFactory, SwapNet, fresh_block, init_weights, select

__all__ = ["ResNet", "SwapBasicBlock", "SwapBottleneckBlock", "resnet_block_class"]


def _downsample(parts: dict[str, Part]) -> tuple[bool, nn.Module]:
    if "downsample" not in parts:
        return False, nn.Identity()
    return True, build_plan(parts["downsample"][0][1])


class SwapBasicBlock(nn.Module):
    """torchvision's BasicBlock with each 3x3 convolution replaced by a basic-shaped unit."""

    def __init__(self, parts: dict[str, Part]) -> None:
        super().__init__()
        children = OrderedDict((name, build_plan(plan)) for name, plan in parts["branch"])
        self.conv1, self.bn1, self.conv2, self.bn2 = (
            children["conv1"],
            children["bn1"],
            children["conv2"],
            children["bn2"],
        )
        self.relu = nn.ReLU(inplace=True)
        self.probe = nn.Identity()
        self.has_downsample, self.downsample = _downsample(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.probe(self.bn2(self.conv2(out)))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu(out + identity)


class SwapBottleneckBlock(nn.Module):
    """A bottleneck-shaped unit (1x1 down, k x k, 1x1 up) and BN in place of the two 3x3 convs."""

    def __init__(self, parts: dict[str, Part]) -> None:
        super().__init__()
        children = OrderedDict((name, build_plan(plan)) for name, plan in parts["branch"])
        self.conv1, self.bn1 = children["conv1"], children["bn1"]
        self.relu = nn.ReLU(inplace=True)
        self.probe = nn.Identity()
        self.has_downsample, self.downsample = _downsample(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.probe(self.bn1(self.conv1(x)))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu(out + identity)


def resnet_block_class(block_type: BlockType) -> type[nn.Module]:
    """The block module a ResNet builds for ``block_type``: basic-shaped units replace two 3x3 convs, others one."""
    return SwapBasicBlock if block_type.shape == "basic" else SwapBottleneckBlock


class ResNet(SwapNet):
    """ResNet-18/34 in torchvision's layout (ImageNet stem), blocks chosen by a Genotype."""

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        make_block: BlockFactory = fresh_block,
    ) -> None:
        super().__init__(genotype, num_classes, in_chans, drop_rate)
        spec = genotype.backbone_spec
        if not isinstance(spec, ResNetBackbone):
            raise TypeError(f"ResNet needs a resnet* genotype, got backbone {genotype.backbone}")
        stem = OrderedDict((name, build_plan([(name, layer)])) for name, layer in spec.stem_plan(in_chans))
        self.conv1, self.bn1, self.relu = stem["conv1"], stem["bn1"], stem["relu"]
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[list[nn.Module]] = [[] for _ in spec.stage_depths]
        for block_type, slot in zip(genotype.block_types, spec.slots(), strict=True):
            parts = spec.block_parts(block_type, slot)
            stages[slot.stage].append(make_block(resnet_block_class(block_type), parts))
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*b) for b in stages)
        init_weights(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, intermediates_only: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """Outputs of layer1..layer4 (the 4 attention points of the paper's ImageNet runs)."""
        x = self.forward_stem(x)
        feats: list[torch.Tensor] = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        feats = select(feats, indices)
        if intermediates_only:
            return feats
        return x, feats
