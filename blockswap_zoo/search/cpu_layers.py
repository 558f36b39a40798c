"""Drop-in layers that make fp32 scoring on CPUs fast in channels_last without changing its values.

Exact mode on the CPU runs channels_last, 1.29x faster than NCHW, but PyTorch's channels_last
batch norm sums its statistics in a way that puts Fisher potential 6e-3 (relative) from float64,
where NCHW stays within 4e-4. ``ExactStatsBatchNorm2d`` computes the statistics in two passes with
PyTorch's pairwise reductions (3.3e-4) and leaves the rest to the native kernels. oneDNN runs
grouped convolutions with 2 channels per group slowly; ``MergedGroupConv2d`` runs them as half as
many groups with zero blocks in the weight: the same products and sums (added zeros are exact),
equal to nn.Conv2d's up to fp32 rounding. ``adapt_for_cpu_scoring`` swaps both into a model.
Figures: ``python benchmarks/search_speed.py --ablation --agreement-seeds 0`` (README).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExactStatsBatchNorm2d", "MergedGroupConv2d", "adapt_for_cpu_scoring"]


class _TwoPassBatchNorm(torch.autograd.Function):
    """Training-mode batch norm: two-pass fp32 statistics, native normalisation and backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: ANN001, ANN205
        n = x.numel() // x.shape[1]
        mean = x.sum(dim=(0, 2, 3)) / n
        var = (x - mean.view(1, -1, 1, 1)).square_().sum(dim=(0, 2, 3)) / n
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        ctx.eps = eps
        y = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, ctx.eps, [need[0], need[1], need[2]]
        )
        return gx, gw, gb, None


class ExactStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are as accurate in channels_last as in NCHW.

    Same parameters, buffers and running-stat updates as nn.BatchNorm2d; eval mode is nn.BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or (not self.training and self.track_running_stats):  # eval with running stats
            return super().forward(x)
        y, mean, var = _TwoPassBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = x.numel() // x.shape[1]
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), factor)
        return y


class MergedGroupConv2d(nn.Conv2d):
    """A grouped Conv2d with 2 input channels per group, run as half as many groups of 4.

    The merged weight is block-diagonal inside each group of 4 (exact zeros elsewhere), so every
    output is the same sum of the same products, in an order that oneDNN chooses.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        g, cin = self.groups, w.shape[1]
        cout = self.out_channels // g
        blocks = w.view(g // 2, 2, cout, cin, *w.shape[2:])
        merged = w.new_zeros(g // 2, 2, cout, 2, cin, *w.shape[2:])
        merged[:, 0, :, 0] = blocks[:, 0]
        merged[:, 1, :, 1] = blocks[:, 1]
        merged = merged.view(self.out_channels, 2 * cin, *w.shape[2:])
        if x.is_contiguous(memory_format=torch.channels_last):
            merged = merged.contiguous(memory_format=torch.channels_last)
        return nn.functional.conv2d(x, merged, self.bias, self.stride, self.padding, self.dilation, g // 2)


def _mergeable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and conv.groups > 1
        and conv.groups % 2 == 0
        and conv.in_channels // conv.groups == 2
    )


def adapt_for_cpu_scoring(model: nn.Module, exact_batch_norm: bool = True, merge_groups: bool = True) -> nn.Module:
    """Turn BatchNorm2d into ExactStatsBatchNorm2d and mergeable grouped convolutions into
    MergedGroupConv2d (each when asked) in place, by class: parameters, buffers, hooks, mode and
    state-dict keys stay as they are. Returns the model.
    """
    for m in model.modules():
        if exact_batch_norm and type(m) is nn.BatchNorm2d:
            m.__class__ = ExactStatsBatchNorm2d
        elif merge_groups and _mergeable(m):
            m.__class__ = MergedGroupConv2d
    return model
