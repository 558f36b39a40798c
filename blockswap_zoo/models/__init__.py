"""Network builders: a Genotype in, an nn.Module that follows the model contract out."""

from __future__ import annotations

from torch import nn

from ..backbones import Backbone, ResNetBackbone, Slot
from ..blocks import BlockType
from ..genotype import Genotype
from .base import BlockFactory, SwapNet, fresh_block
from .resnet import ResNet, resnet_block_class
from .wrn import PreActBlock, WideResNet

__all__ = ["ResNet", "SwapNet", "WideResNet", "block_class", "build_block", "build_model"]


def build_model(
    genotype: Genotype | str,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    make_block: BlockFactory = fresh_block,
) -> SwapNet:
    """Build the network a genotype describes (randomly initialised as the reference does).

    ``num_classes`` defaults to 10 for WideResNets and 1000 for ResNets. ``make_block`` supplies
    each swappable block from its class and parts (the search reuses blocks through it).
    """
    if isinstance(genotype, str):
        genotype = Genotype.parse(genotype)
    classes = genotype.backbone_spec.default_num_classes if num_classes is None else num_classes
    if isinstance(genotype.backbone_spec, ResNetBackbone):
        return ResNet(genotype, classes, in_chans, drop_rate, make_block)
    return WideResNet(genotype, classes, in_chans, drop_rate, make_block)


def block_class(backbone: Backbone, block_type: BlockType) -> type[nn.Module]:
    """The module class ``backbone``'s builder uses for a block of ``block_type``."""
    return resnet_block_class(block_type) if isinstance(backbone, ResNetBackbone) else PreActBlock


def build_block(backbone: Backbone, block_type: BlockType, slot: Slot) -> nn.Module:
    """One swappable block of ``block_type`` at ``slot``, built as the network builds it (latency tables time it)."""
    return block_class(backbone, block_type)(backbone.block_parts(block_type, slot))
