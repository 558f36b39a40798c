"""Drop-in layers that make fp32 scoring on CPUs fast in channels_last without changing its values.

Exact mode on the CPU runs channels_last, 1.6x faster than NCHW with these layers, but PyTorch's
channels_last batch norm sums its statistics in a way that puts Fisher potential 6e-3 (relative)
from float64; fp32 with these layers stays as close as NCHW (3e-4 median). Where a batch norm feeds
a ReLU, ``FusedBatchNormReLU2d`` runs both, forward and backward, in one C kernel each way
(``kernels/norm_act.c``, built by ``native_kernels``; statistics summed in double), 1.24x faster
than the same layers unfused, and the ReLU passes its input through; its ``forward_sum`` also runs
the residual add before it (``residual_fusion``). Any other batch norm (or all,
without a C compiler) is ``ExactStatsBatchNorm2d``: statistics in two passes with PyTorch's
pairwise reductions, the rest left to the native kernels. oneDNN runs grouped convolutions with 2
channels per group slowly; ``MergedGroupConv2d`` runs them as half as many groups with zero blocks
in the weight: the same products and sums (added zeros are exact), equal to nn.Conv2d's up to fp32
rounding. 3x3 convolutions with 4 channels per group, merged or not, run by a C kernel
(``kernels/grouped_conv.c``; ``FourChannelGroupConv2d``, ``MergedFourChannelGroupConv2d``), 1.04x
for the whole candidate (1.09x in another run). ``adapt_for_cpu_scoring`` swaps these into a model.
Figures: ``python benchmarks/search_speed.py --ablation --agreement-seeds 0`` and
``--accuracy-candidates 30`` (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import ctypes
from collections import Counter
from typing import TypeGuard

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..proxies import fisher_term
from . import residual_fusion
from .native_kernels import cpu_kernels

__all__ = [
    "ExactStatsBatchNorm2d",
    "FourChannelGroupConv2d",
    "FusedAwayReLU",
    "FusedBatchNormReLU2d",
    "MergedFourChannelGroupConv2d",
    "MergedGroupConv2d",
    "adapt_for_cpu_scoring",
    "fisher_term_by_kernel",
    "fisher_term_fast",
    "scoring_copy",
]


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
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """As nn.BatchNorm2d does in training mode, from the batch's mean and biased variance over n values."""
        if self.training and self.track_running_stats:
            # all three buffers exist when track_running_stats is set
            assert self.num_batches_tracked is not None and self.running_mean is not None
            assert self.running_var is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), factor)


def _bn_relu_forward(
    lib: ctypes.CDLL, a: torch.Tensor, b: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, ...]:
    """The C kernel's forward: (a + b or a, relu(batch norm of it), mean, biased var, invstd, scale)."""
    n, c, h, w = a.shape
    x = a if b is None else torch.empty_like(a, memory_format=torch.channels_last)
    y = torch.empty_like(a, memory_format=torch.channels_last)
    mean, var, invstd, scale = (a.new_empty(c) for _ in range(4))
    if lib.bn_relu_forward(
        a.data_ptr(), None if b is None else b.data_ptr(), n * h * w, c, weight.data_ptr(), bias.data_ptr(), eps,
        None if b is None else x.data_ptr(), y.data_ptr(), mean.data_ptr(), var.data_ptr(), invstd.data_ptr(),
        scale.data_ptr(),
    ):  # fmt: skip
        raise MemoryError("the fused batch norm + ReLU kernel ran out of memory")
    return x, y, mean, var, invstd, scale


def _bn_relu_backward(
    ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor, grad_x: torch.Tensor | None, need_x: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The C kernel's backward: (dL/dx, dL/dweight, dL/dbias), dL/dx including ``grad_x`` (x's other uses)."""
    x, bias, mean, invstd, scale = ctx.saved_tensors  # type: ignore[attr-defined]  # the backward ctx has it
    n, c, h, w = x.shape
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    if grad_x is not None:
        grad_x = grad_x.contiguous(memory_format=torch.channels_last)
    grad_in = torch.empty_like(x, memory_format=torch.channels_last) if need_x else None
    grad_weight, grad_bias = x.new_empty(c), x.new_empty(c)
    if ctx.lib.bn_relu_backward(  # type: ignore[attr-defined]  # set in forward
        grad_y.data_ptr(), None if grad_x is None else grad_x.data_ptr(), x.data_ptr(), n * h * w, c,
        bias.data_ptr(), mean.data_ptr(), invstd.data_ptr(), scale.data_ptr(),
        None if grad_in is None else grad_in.data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr(),
    ):  # fmt: skip
        raise MemoryError("the fused batch norm + ReLU kernel ran out of memory")
    return grad_in, grad_weight, grad_bias


class _FusedBatchNormReLU(torch.autograd.Function):
    """relu(training-mode batch norm) of a channels_last fp32 CPU tensor with the C kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, lib):  # noqa: ANN001, ANN205
        _, y, mean, var, invstd, scale = _bn_relu_forward(lib, x, None, weight, bias, eps)
        ctx.save_for_backward(x, bias, mean, invstd, scale)
        ctx.lib = lib
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable  # the C kernels build no graph: a second derivative is refused, not wrong
    def backward(ctx, grad_y, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        need = ctx.needs_input_grad
        grad_x, grad_weight, grad_bias = _bn_relu_backward(ctx, grad_y, None, need[0])
        return grad_x, grad_weight if need[1] else None, grad_bias if need[2] else None, None, None


class _FusedAddBatchNormReLU(torch.autograd.Function):
    """x = a + b and relu(training-mode batch norm of x), channels_last fp32 CPU tensors, by the C kernels.

    Backward: dL/dx from x's other uses plus the batch norm's own, for a and b alike: the same fp32
    sums that autograd makes of PyTorch's add and the unfused layer.
    """

    @staticmethod
    def forward(ctx, a, b, weight, bias, eps, lib):  # noqa: ANN001, ANN205
        ctx.set_materialize_grads(False)  # x unused downstream: no gradient to add, not a zero tensor
        x, y, mean, var, invstd, scale = _bn_relu_forward(lib, a, b, weight, bias, eps)
        ctx.save_for_backward(x, bias, mean, invstd, scale)
        ctx.lib = lib
        ctx.mark_non_differentiable(mean, var)
        return x, y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x, grad_y, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        need = ctx.needs_input_grad
        if grad_y is None:  # y unused: x's gradient passes through the add alone
            return grad_x, grad_x, None, None, None, None
        grad_sum, grad_weight, grad_bias = _bn_relu_backward(ctx, grad_y, grad_x, need[0] or need[1])
        return (
            grad_sum if need[0] else None,
            grad_sum if need[1] else None,
            grad_weight if need[2] else None,
            grad_bias if need[3] else None,
            None,
            None,
        )


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _kernel_input(x: torch.Tensor) -> bool:
    """What every C kernel reads: a 4-d channels_last fp32 CPU tensor, outside autocast."""
    return (
        x.dim() == 4
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.is_contiguous(memory_format=torch.channels_last)
        and not _cpu_autocast()
    )


def _fusable(x: torch.Tensor) -> bool:
    """What the batch norm kernel takes: a kernel input with more than one value per channel."""
    return _kernel_input(x) and x.numel() > x.shape[1]


def fisher_term_by_kernel(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """One block's Fisher potential from its activation and gradient (as ``proxies``), in one sweep by
    ``kernels/fisher.c`` (sums in double, returned as fp32), or None where the C kernels do not take them."""
    if not (_kernel_input(a) and _kernel_input(g) and a.shape == g.shape and a.numel() > 0):
        return None
    lib = cpu_kernels()
    if lib is None:
        return None
    n, c, h, w = a.shape
    out = torch.empty((), dtype=torch.float64)
    if lib.fisher_term(a.data_ptr(), g.data_ptr(), n, h * w, c, out.data_ptr()):
        raise MemoryError("the Fisher potential kernel ran out of memory")
    return out.float()


def fisher_term_fast(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``proxies.fisher_term`` by the C kernel where it takes the tensors (channels_last fp32 on the CPU),
    else by PyTorch: the ``term`` the search's scoring plugs into the Fisher potential."""
    term = fisher_term_by_kernel(a, g)
    return fisher_term(a, g) if term is None else term


class FusedBatchNormReLU2d(ExactStatsBatchNorm2d):
    """relu(BatchNorm2d(x)) in training mode, by the C kernels where they are built and take ``x``.

    Otherwise (eval mode, other layouts or dtypes, no kernels) ExactStatsBatchNorm2d, then ReLU. Same
    parameters, buffers and running-stat updates as nn.BatchNorm2d; the ReLU that followed it in the
    model is a FusedAwayReLU.
    """

    def _kernel_operands(self, *inputs: torch.Tensor) -> tuple[ctypes.CDLL, torch.Tensor, torch.Tensor] | None:
        """(library, weight, bias) for the C kernels, or None where they do not apply to ``inputs``."""
        lib = cpu_kernels()
        fp32 = self.weight is None or self.weight.dtype == torch.float32
        if lib is None or not fp32 or (not self.training and self.track_running_stats):
            return None
        if not all(_fusable(x) for x in inputs):
            return None
        c = inputs[0].shape[1]
        weight = self.weight if self.weight is not None else inputs[0].new_ones(c)
        bias = self.bias if self.bias is not None else inputs[0].new_zeros(c)
        return lib, weight.contiguous(), bias.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        operands = self._kernel_operands(x)
        if operands is None:
            return torch.relu(super().forward(x))
        lib, weight, bias = operands
        y, mean, var = _FusedBatchNormReLU.apply(x, weight, bias, self.eps, lib)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    def forward_sum(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a + b, forward(a + b)), the residual add fused into the kernels where they take a and b."""
        operands = self._kernel_operands(a, b) if a.shape == b.shape else None
        if operands is None:
            x = a + b
            return x, self(x)
        lib, weight, bias = operands
        x, y, mean, var = _FusedAddBatchNormReLU.apply(a, b, weight, bias, self.eps, lib)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return x, y


class FusedAwayReLU(nn.ReLU):
    """A ReLU whose work the FusedBatchNormReLU2d before it does: passes its input through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MergedGroupConv2d(nn.Conv2d):
    """A grouped Conv2d with 2 input channels per group, run as half as many groups of 4.

    The merged weight is block-diagonal inside each group of 4 (exact zeros elsewhere), so every
    output is the same sum of the same products, in an order that oneDNN chooses.
    """

    def merged_weight(self, channels_last: bool) -> torch.Tensor:
        """The weight of half as many groups: each pair of groups' blocks on the diagonal, zeros elsewhere."""
        w = self.weight
        g, cin = self.groups, w.shape[1]
        cout = self.out_channels // g
        blocks = w.view(g // 2, 2, cout, cin, *w.shape[2:])
        merged = w.new_zeros(g // 2, 2, cout, 2, cin, *w.shape[2:])
        merged[:, 0, :, 0] = blocks[:, 0]
        merged[:, 1, :, 1] = blocks[:, 1]
        merged = merged.view(self.out_channels, 2 * cin, *w.shape[2:])
        return merged.contiguous(memory_format=torch.channels_last) if channels_last else merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.merged_weight(x.is_contiguous(memory_format=torch.channels_last))
        return nn.functional.conv2d(x, merged, self.bias, self.stride, self.padding, self.dilation, self.groups // 2)


class _GroupedConv4(torch.autograd.Function):
    """A 3x3 convolution with 4 input and 4 output channels per group, padding 1, by the C kernel."""

    @staticmethod
    def forward(ctx, x, weight, stride, lib):  # noqa: ANN001, ANN205
        y = _grouped_conv4(lib, x, weight, stride)
        ctx.save_for_backward(x if stride != 1 or weight.requires_grad else None, weight)
        ctx.stride, ctx.lib = stride, lib
        return y

    @staticmethod
    @once_differentiable  # the C kernel builds no graph: a second derivative is refused, not wrong
    def backward(ctx, grad_y):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        groups = weight.shape[0] // 4
        args = ([ctx.stride] * 2, [1, 1], [1, 1], False, [0, 0], groups)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and ctx.stride == 1:
            # the input's gradient: the same convolution of grad_y, weights flipped and transposed per group
            flipped = weight.view(groups, 4, 4, 3, 3).transpose(1, 2).flip(-1, -2).reshape(weight.shape)
            grad_x = _grouped_conv4(ctx.lib, grad_y, flipped, 1)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_y, x, weight, None, *args, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(grad_y, x, weight, None, *args, [False, True, False])[1]
        return grad_x, grad_w, None, None


def _grouped_conv4(lib, x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:  # noqa: ANN001
    n, c, h, w = x.shape
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)
    # [tap][j][c]: weight[4*(c//4) + j, c % 4, tap], the layout the kernel reads
    taps = weight.reshape(c // 4, 4, 4, 9).permute(3, 1, 0, 2).reshape(9, 4, c).contiguous()
    if lib.grouped_conv4_forward(x.data_ptr(), n, h, w, c, stride, taps.data_ptr(), y.data_ptr(), oh, ow):
        raise RuntimeError(f"the grouped convolution kernel does not take {c} channels")
    return y


def _conv4_fits(conv: nn.Conv2d, groups: int, out_channels: int) -> bool:
    """Whether a convolution (as merged to ``groups``) is what grouped_conv.c computes."""
    return (
        conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding_mode == "zeros"
        and conv.bias is None
        and conv.in_channels == out_channels == 4 * groups
        and out_channels % 8 == 0
    )


def _conv4_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What the convolution kernel takes at run time: a non-empty kernel input and an fp32 weight."""
    return _kernel_input(x) and x.numel() > 0 and weight.dtype == torch.float32


class FourChannelGroupConv2d(nn.Conv2d):
    """A 3x3 grouped Conv2d with 4 input and output channels per group, run by the C kernel
    (``kernels/grouped_conv.c``) where it is built and takes ``x``; otherwise nn.Conv2d's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = cpu_kernels()
        if lib is None or not _conv4_input(x, self.weight):
            return super().forward(x)
        return _GroupedConv4.apply(x, self.weight, self.stride[0], lib)


class MergedFourChannelGroupConv2d(MergedGroupConv2d):
    """A MergedGroupConv2d whose merged groups of 4 run by the C kernel, as FourChannelGroupConv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = cpu_kernels()
        if lib is None or not _conv4_input(x, self.weight):
            return super().forward(x)
        return _GroupedConv4.apply(x, self.merged_weight(False), self.stride[0], lib)


def _mergeable(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and conv.groups > 1
        and conv.groups % 2 == 0
        and conv.in_channels // conv.groups == 2
    )


def _norm_act_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(norm, activation) pairs run as act(norm(x)) with norm's output used nowhere else: neighbours in
    an nn.Sequential, and the attribute pairs a module lists in ``fusable_norm_act``."""
    if isinstance(module, nn.Sequential):
        children = list(module.children())
        return list(zip(children, children[1:]))
    return [(getattr(module, norm), getattr(module, act)) for norm, act in getattr(module, "fusable_norm_act", ())]


def _grouped_conv_kernel() -> bool:
    lib = cpu_kernels()
    return lib is not None and lib.grouped_conv_supported() == 1


def adapt_for_cpu_scoring(
    model: nn.Module,
    exact_batch_norm: bool = True,
    merge_groups: bool = True,
    fuse_norm_act: bool = True,
    grouped_conv_kernel: bool = True,
    fuse_residual_adds: bool = True,
) -> nn.Module:
    """Turn BatchNorm2d into ExactStatsBatchNorm2d, or, where a ReLU follows and the C kernels build
    (``fuse_norm_act``), into FusedBatchNormReLU2d and that ReLU into FusedAwayReLU; mergeable
    grouped convolutions into MergedGroupConv2d; and, where the C kernels build and run on this CPU
    (``grouped_conv_kernel``), 3x3 convolutions with 4 channels per group (merged or not) into their
    kernel classes; and a WideResNet whose batch norms after residual adds are all fused into a
    ResidualFusedWideResNet (``fuse_residual_adds``, ``residual_fusion``). Each when asked, in place,
    by class: parameters, buffers, hooks, mode and state-dict keys stay as they are. Returns the model.
    """
    conv4 = grouped_conv_kernel and _grouped_conv_kernel()
    if exact_batch_norm and fuse_norm_act and cpu_kernels() is not None:
        uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        for m in model.modules():
            for norm, act in _norm_act_pairs(m):
                if (
                    type(norm) in (nn.BatchNorm2d, ExactStatsBatchNorm2d)
                    and type(act) is nn.ReLU
                    and uses[id(norm)] == uses[id(act)] == 1  # registered twice: it may run elsewhere too
                ):
                    norm.__class__, act.__class__ = FusedBatchNormReLU2d, FusedAwayReLU
    for m in model.modules():
        if exact_batch_norm and type(m) is nn.BatchNorm2d:
            m.__class__ = ExactStatsBatchNorm2d
        elif merge_groups and _mergeable(m):
            fits = conv4 and _conv4_fits(m, m.groups // 2, m.out_channels)
            m.__class__ = MergedFourChannelGroupConv2d if fits else MergedGroupConv2d
        elif conv4 and type(m) is nn.Conv2d and m.groups > 1 and _conv4_fits(m, m.groups, m.out_channels):
            m.__class__ = FourChannelGroupConv2d
    if fuse_residual_adds:
        residual_fusion.fuse_residual_adds(model)
    return model


def scoring_copy(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor] | None:
    """A copy of ``model`` adapted and laid out as exact mode scores it on the CPU (channels_last, these
    layers), with ``images`` in channels_last; None where that path does not apply: images or model not
    fp32 on the CPU, images not NCHW (a caller who chose the layout is taken at its word), or a model
    without swappable blocks. The model itself is left as it is."""
    if images.device.type != "cpu" or images.dtype != torch.float32 or images.dim() != 4:
        return None
    if not images.is_contiguous():
        return None
    if not hasattr(model, "swap_blocks"):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        return None
    fast = copy.deepcopy(model).requires_grad_(False)
    adapt_for_cpu_scoring(fast)
    return fast.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
