"""Backbone geometry: where the swappable blocks sit, their channels and strides, and the plans
of the fixed parts (stem, block wrappers, head). Builders and analytic costs both read these
plans, so a model's parameter count and its analytic count come from one description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .blocks import BN, BlockType, Conv, Layer, Relu, plan_cost

__all__ = ["Backbone", "BackboneError", "ResNetBackbone", "Slot", "WideResNetBackbone", "parse_backbone"]

Plan = list[tuple[str, Layer]]
# A block part: ordered named children, each child one plan (a unit, a norm, a convolution).
Part = list[tuple[str, Plan]]


class BackboneError(ValueError):
    """A backbone name that does not describe a supported network."""


@dataclass(frozen=True)
class Slot:
    """One swappable block position: its stage, channels, stride and input spatial size."""

    index: int
    stage: int
    in_chs: int
    out_chs: int
    stride: int
    in_hw: tuple[int, int]


@dataclass(frozen=True)
class StageInfo:
    """One stage's output: channels and total stride relative to the input (timm's feature_info)."""

    num_chs: int
    reduction: int
    module: str


class Backbone:
    """Common interface of the supported backbones."""

    name: str
    default_input_size: tuple[int, int, int]
    default_num_classes: int
    stage_depths: tuple[int, ...]
    stage_widths: tuple[int, ...]
    stage_strides: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return sum(self.stage_depths)

    @property
    def num_features(self) -> int:
        return self.stage_widths[-1]

    def stem_plan(self, in_chans: int) -> Plan:
        raise NotImplementedError

    def stem_out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Spatial size after the stem (the ResNet max-pool is not a plan layer)."""
        return plan_cost(self.stem_plan(1), hw)[2]

    def stem_chs(self) -> int:
        return self.stem_plan(1)[0][1].out_chs  # type: ignore[union-attr]

    def stage_module_name(self, stage: int) -> str:
        raise NotImplementedError

    def slots(self, input_size: tuple[int, int] | None = None) -> list[Slot]:
        """Every swappable block position, in network order."""
        hw = tuple(input_size or self.default_input_size[1:])
        hw = self.stem_out_hw(hw)  # type: ignore[arg-type]
        in_chs = self.stem_chs()
        out: list[Slot] = []
        for stage, (depth, width, stride) in enumerate(
            zip(self.stage_depths, self.stage_widths, self.stage_strides, strict=True)
        ):
            for i in range(depth):
                s = stride if i == 0 else 1
                out.append(Slot(len(out), stage, in_chs, width, s, hw))
                hw = Conv(in_chs, width, 3, s).out_size(hw)
                in_chs = width
        return out

    def feature_info(self) -> list[StageInfo]:
        red = self.stem_reduction
        info = []
        for stage, (width, stride) in enumerate(zip(self.stage_widths, self.stage_strides, strict=True)):
            red *= stride
            info.append(StageInfo(width, red, self.stage_module_name(stage)))
        return info

    stem_reduction: int = 1

    def block_parts(self, block_type: BlockType, slot: Slot) -> dict[str, Part]:
        """The named parts of one block, each read from the block's input (see the builders)."""
        raise NotImplementedError

    def block_cost(self, block_type: BlockType, slot: Slot) -> tuple[int, int]:
        """Parameters and MACs of one block of ``block_type`` at ``slot``."""
        params = macs = 0
        for part in self.block_parts(block_type, slot).values():
            hw = slot.in_hw
            for _, plan in part:
                p, m, hw = plan_cost(plan, hw)
                params += p
                macs += m
        return params, macs

    def head_params(self, num_classes: int) -> int:
        """The fixed parameters after the last block (final norm, if any, and classifier)."""
        raise NotImplementedError


@dataclass(frozen=True)
class WideResNetBackbone(Backbone):
    """Pre-activation WideResNet-depth-width (Zagoruyko & Komodakis), CIFAR layout."""

    depth: int
    width: int

    def __post_init__(self) -> None:
        if (self.depth - 4) % 6 or self.depth < 10:
            raise BackboneError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {self.depth}"
            )
        if self.width < 1:
            raise BackboneError(f"WideResNet width must be a positive integer, got {self.width}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"wrn_{self.depth}_{self.width}"

    default_input_size = (3, 32, 32)
    default_num_classes = 10  # CIFAR-10
    stage_strides = (1, 2, 2)

    @property
    def stage_depths(self) -> tuple[int, ...]:  # type: ignore[override]
        n = (self.depth - 4) // 6
        return (n, n, n)

    @property
    def stage_widths(self) -> tuple[int, ...]:  # type: ignore[override]
        return (16 * self.width, 32 * self.width, 64 * self.width)

    def stem_plan(self, in_chans: int) -> Plan:
        return [("stem", Conv(in_chans, 16, 3, 1))]

    def stage_module_name(self, stage: int) -> str:
        return f"stages.{stage}"

    def block_parts(self, block_type: BlockType, slot: Slot) -> dict[str, Part]:
        branch: Part = [("conv1", block_type.unit_plan(slot.in_chs, slot.out_chs, slot.stride))]
        if block_type.shape == "basic":
            branch += [("bn2", [("bn2", BN(slot.out_chs))]), ("act2", [("act2", Relu())])]
            branch += [("conv2", block_type.unit_plan(slot.out_chs, slot.out_chs, 1))]
        parts: dict[str, Part] = {"norm": [("bn1", [("bn1", BN(slot.in_chs))])], "branch": branch}
        if slot.in_chs != slot.out_chs or slot.stride != 1:
            parts["shortcut"] = [("shortcut", [("shortcut", Conv(slot.in_chs, slot.out_chs, 1, slot.stride))])]
        return parts

    def head_params(self, num_classes: int) -> int:
        c = self.num_features
        return 2 * c + c * num_classes + num_classes


_RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@dataclass(frozen=True)
class ResNetBackbone(Backbone):
    """torchvision-layout (post-activation) ResNet with BasicBlocks: resnet18, resnet34."""

    variant: str

    def __post_init__(self) -> None:
        if self.variant not in _RESNET_DEPTHS:
            raise BackboneError(f"unsupported ResNet {self.variant!r}; choose one of {', '.join(_RESNET_DEPTHS)}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.variant

    default_input_size = (3, 224, 224)
    default_num_classes = 1000  # ImageNet
    stage_widths = (64, 128, 256, 512)
    stage_strides = (1, 2, 2, 2)
    stem_reduction = 4

    @property
    def stage_depths(self) -> tuple[int, ...]:  # type: ignore[override]
        return _RESNET_DEPTHS[self.variant]

    def stem_plan(self, in_chans: int) -> Plan:
        return [("conv1", Conv(in_chans, 64, 7, 2)), ("bn1", BN(64)), ("relu", Relu())]

    def stem_out_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        h, w = plan_cost(self.stem_plan(1), hw)[2]
        return ((h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1)  # 3x3 max-pool, stride 2, padding 1

    def stage_module_name(self, stage: int) -> str:
        return f"layer{stage + 1}"

    def block_parts(self, block_type: BlockType, slot: Slot) -> dict[str, Part]:
        out = slot.out_chs
        branch: Part = [("conv1", block_type.unit_plan(slot.in_chs, out, slot.stride))]
        if block_type.shape == "basic":
            branch += [("bn1", [("bn1", BN(out))]), ("conv2", block_type.unit_plan(out, out, 1))]
            branch += [("bn2", [("bn2", BN(out))])]
        else:
            branch += [("bn1", [("bn1", BN(out))])]
        parts: dict[str, Part] = {"branch": branch}
        if slot.in_chs != out or slot.stride != 1:
            parts["downsample"] = [("downsample", [("0", Conv(slot.in_chs, out, 1, slot.stride)), ("1", BN(out))])]
        return parts

    def head_params(self, num_classes: int) -> int:
        return self.num_features * num_classes + num_classes


_WRN_RE = re.compile(r"^wrn_(\d+)_(\d+)$")


def parse_backbone(name: str) -> Backbone:
    """``wrn_<depth>_<width>`` (e.g. wrn_40_2) or ``resnet18`` / ``resnet34``."""
    if isinstance(name, Backbone):
        return name
    key = str(name).strip().lower().replace("-", "_")
    m = _WRN_RE.match(key)
    if m:
        return WideResNetBackbone(int(m.group(1)), int(m.group(2)))
    if key in _RESNET_DEPTHS:
        return ResNetBackbone(key)
    raise BackboneError(
        f"unknown backbone {name!r}; valid: wrn_<depth>_<width> with depth = 6n+4 (e.g. wrn_40_2, wrn_16_1), "
        f"{', '.join(_RESNET_DEPTHS)}"
    )
