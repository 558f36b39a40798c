"""The BlockSwap block library: every block type of the search space and its one registry.

A block type says what replaces the k x k convolutions of a standard residual block. Each
type produces a *plan*: an ordered list of layer specs. The same plan builds the modules and
gives the analytic parameter and MAC counts, so the two can never disagree.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from torch import nn

__all__ = [
    "BLOCK_TYPES",
    "BlockConfigError",
    "BlockType",
    "BN",
    "Conv",
    "Layer",
    "Relu",
    "UnknownBlockError",
    "block_names",
    "build_plan",
    "get_block_type",
    "plan_cost",
    "sampled_block_names",
]

KERNEL = 3


class UnknownBlockError(ValueError):
    """A block name that is neither a paper name nor a reference-code alias."""


class BlockConfigError(ValueError):
    """A block type that cannot be built at the requested channel count."""


@dataclass(frozen=True)
class Conv:
    """A bias-free 2-D convolution with 'same' padding."""

    in_chs: int
    out_chs: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1

    @property
    def params(self) -> int:
        return self.out_chs * (self.in_chs // self.groups) * self.kernel * self.kernel

    def out_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        pad = self.kernel // 2
        return tuple((d + 2 * pad - self.kernel) // self.stride + 1 for d in hw)  # type: ignore[return-value]

    def macs(self, hw: tuple[int, int]) -> int:
        h, w = self.out_size(hw)
        return self.params * h * w


@dataclass(frozen=True)
class BN:
    """BatchNorm2d with affine weight and bias (2 parameters per channel)."""

    chs: int

    @property
    def params(self) -> int:
        return 2 * self.chs


@dataclass(frozen=True)
class Relu:
    """A ReLU: no parameters, no MACs."""


Layer = Conv | BN | Relu


def plan_cost(plan: list[tuple[str, Layer]], hw: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    """Parameters, convolution MACs and output size of a plan applied at input size ``hw``."""
    params = macs = 0
    for _, layer in plan:
        if isinstance(layer, Conv):
            params += layer.params
            macs += layer.macs(hw)
            hw = layer.out_size(hw)
        elif isinstance(layer, BN):
            params += layer.params
    return params, macs, hw


def build_layer(layer: Layer) -> nn.Module:
    """The nn.Module for one layer spec."""
    if isinstance(layer, Conv):
        return nn.Conv2d(
            layer.in_chs,
            layer.out_chs,
            kernel_size=layer.kernel,
            stride=layer.stride,
            padding=layer.kernel // 2,
            groups=layer.groups,
            bias=False,
        )
    if isinstance(layer, BN):
        return nn.BatchNorm2d(layer.chs)
    return nn.ReLU(inplace=True)


def build_plan(plan: list[tuple[str, Layer]]) -> nn.Module:
    """A single layer stays a bare module (torchvision state-dict keys); longer plans are Sequential."""
    if len(plan) == 1:
        return build_layer(plan[0][1])
    return nn.Sequential(OrderedDict((name, build_layer(layer)) for name, layer in plan))


GroupKind = Literal["one", "count", "width", "depthwise"]


@dataclass(frozen=True)
class BlockType:
    """One block type of the search space.

    ``family``: S (standard), G (grouped + pointwise, two units), B (bottleneck), BG
    (bottleneck with grouped middle convolution). ``bottleneck`` is the reduction b of the
    bottleneck families (0 for basic-shaped types). ``group_kind``/``group_value`` say how
    many groups the k x k convolution has at C channels: one; a fixed count; C // width;
    or C (depthwise).
    """

    name: str
    ref_name: str
    family: Literal["S", "G", "B", "BG"]
    bottleneck: int
    group_kind: GroupKind
    group_value: int
    in_paper: bool
    sampled: bool

    @property
    def shape(self) -> Literal["basic", "bottleneck"]:
        """Basic-shaped types use two convolution units per block, bottleneck-shaped one."""
        return "bottleneck" if self.family in ("B", "BG") else "basic"

    def groups(self, chs: int) -> int:
        """Number of groups of the k x k convolution when it sees ``chs`` channels."""
        if self.group_kind == "one":
            g = 1
        elif self.group_kind == "count":
            g = self.group_value
        elif self.group_kind == "width":
            g = chs // self.group_value
        else:
            g = chs
        if g < 1 or chs % g:
            raise BlockConfigError(
                f"block type {self.name} needs a channel count divisible into its groups, "
                f"but its k x k convolution sees {chs} channels (groups={g}); "
                "use a wider backbone or another block type"
            )
        return g

    def unit_plan(self, in_chs: int, out_chs: int, stride: int) -> list[tuple[str, Layer]]:
        """The convolution unit that maps ``in_chs`` to ``out_chs`` channels at ``stride``."""
        if self.family == "S":
            return [("conv", Conv(in_chs, out_chs, KERNEL, stride))]
        if self.family == "G":
            return [
                ("conv", Conv(in_chs, in_chs, KERNEL, stride, self.groups(in_chs))),
                ("bn", BN(in_chs)),
                ("act", Relu()),
                ("pw", Conv(in_chs, out_chs)),
            ]
        mid = out_chs // self.bottleneck
        if mid < 1:
            raise BlockConfigError(f"block type {self.name} needs at least {self.bottleneck} output channels")
        return [
            ("pw_down", Conv(in_chs, mid)),
            ("bn1", BN(mid)),
            ("act1", Relu()),
            ("conv", Conv(mid, mid, KERNEL, stride, self.groups(mid))),
            ("bn2", BN(mid)),
            ("act2", Relu()),
            ("pw_up", Conv(mid, out_chs)),
        ]

    def unit(self, in_chs: int, out_chs: int, stride: int) -> nn.Module:
        """Build the unit (a bare Conv2d for S, so torchvision weights load by name)."""
        plan = self.unit_plan(in_chs, out_chs, stride)
        return build_plan(plan)


def _types() -> list[BlockType]:
    t: list[BlockType] = [BlockType("S", "Conv", "S", 0, "one", 1, True, True)]
    for g in (2, 4, 8, 16):
        t.append(BlockType(f"G({g})", f"DConvA{g}", "G", 0, "count", g, True, True))
    for w in (16, 8, 4, 2):
        t.append(BlockType(f"G(N/{w})", f"DConvG{w}", "G", 0, "width", w, True, True))
    t.append(BlockType("G(N)", "DConv", "G", 0, "depthwise", 1, True, True))
    for b in (2, 4):
        t.append(BlockType(f"B({b})", f"ConvB{b}", "B", b, "one", 1, True, True))
    for g in (2, 4, 8, 16):
        t.append(BlockType(f"BG(2,{g})", f"A{g}B2", "BG", 2, "count", g, True, True))
    for w in (16, 8, 4, 2):
        t.append(BlockType(f"BG(2,M/{w})", f"G{w}B2", "BG", 2, "width", w, True, True))
    t.append(BlockType("BG(2,M)", "DConvB2", "BG", 2, "depthwise", 1, True, False))
    for w in (8, 4, 2):
        t.append(BlockType(f"BG(4,M/{w})", f"G{w}B4", "BG", 4, "width", w, False, True))
    return t


BLOCK_TYPES: dict[str, BlockType] = {t.name: t for t in _types()}
_ALIASES: dict[str, str] = {t.ref_name.lower(): t.name for t in BLOCK_TYPES.values()}
_CANONICAL: dict[str, str] = {re.sub(r"\s+", "", n).upper(): n for n in BLOCK_TYPES}


def block_names() -> list[str]:
    """All block type names in the paper's notation, in registry order."""
    return list(BLOCK_TYPES)


def sampled_block_names() -> list[str]:
    """The 23 types the reference search samples from (all but BG(2,M))."""
    return [n for n, t in BLOCK_TYPES.items() if t.sampled]


def get_block_type(name: str) -> BlockType:
    """Look up a block type by paper name (``BG(2,M/8)``) or reference alias (``G8B2``)."""
    if not isinstance(name, str):
        raise UnknownBlockError(f"block name must be a string, got {type(name).__name__}: {name!r}")
    key = re.sub(r"\s+", "", name)
    canonical = _CANONICAL.get(key.upper()) or _ALIASES.get(key.lower())
    if canonical is None:
        raise UnknownBlockError(
            f"unknown block type {name!r}; valid names: {', '.join(BLOCK_TYPES)} "
            f"(reference aliases: {', '.join(t.ref_name for t in BLOCK_TYPES.values())})"
        )
    return BLOCK_TYPES[canonical]
