"""Fuse each residual add of a WideResNet into the batch norm + ReLU that reads its sum (CPU scoring).

In a pre-activation WideResNet every block's sum ``x = skip + branch`` is read next by a batch norm
+ ReLU: the next block's ``bn1``, or the network's final ``norm``. Where ``adapt_for_cpu_scoring``
has made those FusedBatchNormReLU2d, ``ResidualFusedWideResNet`` hands them both addends
(``forward_sum``): the C kernel adds, stores and sums the statistics in one sweep, and its backward
pass adds x's gradient from the next residual add to its own. The same fp32 sums as the unfused
network, so the same values bit for bit (``tests/test_cpu_layers.py``), with two fewer sweeps over
each block's activation (``benchmarks/search_speed.py --ablation``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules import module as _module

from ...models.wrn import PreActBlock, WideResNet

__all__ = ["ResidualFusedWideResNet", "fuse_residual_adds"]


def _takes_sums(norm: nn.Module) -> bool:
    """A FusedBatchNormReLU2d (it has ``forward_sum``) whose ReLU the model no longer runs."""
    return callable(getattr(norm, "forward_sum", None))


def _hooked(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
    )


def _blocks(stage: nn.Module) -> Iterable[Any]:
    """A stage (an nn.Sequential) as the blocks it iterates, typed loosely: their norms may be fused ones."""
    return cast(Iterable[Any], stage)


def _global_hooks() -> bool:
    """Hooks registered for every module (torch.nn.modules.module.register_module_forward_hook and kin)."""
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    return any(getattr(_module, name, None) for name in names)


class ResidualFusedWideResNet(WideResNet):
    """A WideResNet (after ``adapt_for_cpu_scoring``) whose residual adds run inside the next batch norm.

    Same parameters, modules, state-dict keys and values. The blocks are run by this class's loop, not
    called: where hooks are registered on a stage, a block, a fused batch norm or globally (which that
    would skip), it runs WideResNet's own forward.
    """

    def _fused_path_hookless(self) -> bool:
        if _global_hooks() or _hooked(self.norm):
            return False
        return not any(
            _hooked(stage) or any(_hooked(b) or _hooked(b.bn1) for b in _blocks(stage)) for stage in self.stages
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fused_path_hookless():
            return super().forward_features(x)
        x = self.stem(x)
        skip = branch = None  # the addends of the pending residual add: x = skip + branch
        for stage in self.stages:
            for block in _blocks(stage):
                if branch is None:
                    pre = block.act1(block.bn1(x))
                else:
                    x, pre = block.bn1.forward_sum(skip, branch)
                    pre = block.act1(pre)
                # as PreActBlock.forward
                branch = block.probe(block.branch(pre))
                skip = block.shortcut(pre) if block.conv_shortcut else x
        if branch is None:  # no blocks at all
            return self.act(self.norm(x))
        _, y = cast(Any, self.norm).forward_sum(skip, branch)  # a FusedBatchNormReLU2d (_takes_sums)
        return self.act(y)


def fuse_residual_adds(model: nn.Module) -> bool:
    """Make a WideResNet whose every batch norm + ReLU after a residual add is fused a
    ResidualFusedWideResNet, in place (by class). Returns whether it did."""
    if type(model) is not WideResNet or not _takes_sums(model.norm):
        return False
    blocks = [b for stage in model.stages for b in _blocks(stage)]
    if not all(type(b) is PreActBlock and _takes_sums(b.bn1) for b in blocks):
        return False
    model.__class__ = ResidualFusedWideResNet
    return True
