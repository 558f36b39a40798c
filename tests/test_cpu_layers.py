"""CPU scoring layers: the same values as the native modules, exact-mode accuracy, the allocator switch."""

from __future__ import annotations

import ctypes
import platform
import resource
import subprocess
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blockswap_zoo import build_model
from blockswap_zoo.search import (
    fisher_per_block,
    fisher_potential,
    mode_config,
    proxies,
    score_genotype,
)
from blockswap_zoo.search.cpu import layers as cpu_layers
from blockswap_zoo.search.cpu import native_kernels
from blockswap_zoo.search.cpu.allocator import retain_freed_memory
from blockswap_zoo.search.cpu.layers import (
    ExactStatsBatchNorm2d,
    FourChannelGroupConv2d,
    FusedAwayReLU,
    FusedBatchNormReLU2d,
    MergedFourChannelGroupConv2d,
    MergedGroupConv2d,
    adapt_for_cpu_scoring,
)
from blockswap_zoo.search.cpu.residual_fusion import ResidualFusedWideResNet

CL = torch.channels_last


def _pair(cls: type[nn.Module], make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    native = make()
    ours = make()
    ours.load_state_dict(native.state_dict())
    ours.__class__ = cls
    return native, ours


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_exact_stats_batch_norm_matches_batch_norm(fmt: torch.memory_format) -> None:
    native, ours = _pair(ExactStatsBatchNorm2d, lambda: nn.BatchNorm2d(6).double())
    with torch.no_grad():
        native.weight.uniform_(0.5, 1.5), native.bias.uniform_(-1, 1)
    ours.load_state_dict(native.state_dict())
    x = (torch.randn(8, 6, 5, 5, dtype=torch.float64) * 3 + 2).contiguous(memory_format=fmt)
    g = torch.randn_like(x)
    outs = []
    for m in (native, ours):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(g)
        outs.append((y, xi.grad, m.weight.grad, m.bias.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, k), getattr(native, k), rtol=1e-12, atol=1e-12)
    native.eval(), ours.eval()
    torch.testing.assert_close(ours(x), native(x), rtol=1e-12, atol=1e-12)  # running stats: rounding apart


def test_exact_stats_batch_norm_is_accurate_in_channels_last() -> None:
    """fp32 channels_last statistics as accurate as float64 allows: the reason the layer exists."""
    torch.manual_seed(0)
    x64 = torch.randn(128, 32, 32, 32, dtype=torch.float64) * 0.5 + 3.0  # offset mean: cancellation-prone
    ref = F.batch_norm(x64, None, None, training=True)
    y = ExactStatsBatchNorm2d(32, affine=False, track_running_stats=False)(x64.float().contiguous(memory_format=CL))
    assert (y.double() - ref).abs().max() < 5e-6  # NCHW: 1.1e-6, PyTorch's channels_last: 5.1e-5


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL])
def test_merged_group_conv_matches_conv(stride: int, fmt: torch.memory_format) -> None:
    native, ours = _pair(MergedGroupConv2d, lambda: nn.Conv2d(16, 16, 3, stride, 1, groups=8, bias=False))
    x = torch.randn(4, 16, 12, 12).contiguous(memory_format=fmt)
    torch.testing.assert_close(ours(x), native(x), rtol=1e-6, atol=1e-6)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn_like(native(x))
    native(xa).backward(g), ours(xb).backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, native.weight.grad, rtol=1e-5, atol=1e-5)


def test_adapt_keeps_the_state_dict_and_swaps_only_what_it_should() -> None:
    torch.manual_seed(0)
    model = build_model("wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapt_for_cpu_scoring(model)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    merged = [m for m in model.modules() if isinstance(m, MergedGroupConv2d)]
    assert merged and all(m.in_channels // m.groups == 2 for m in merged)
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds <= {ExactStatsBatchNorm2d, FusedBatchNormReLU2d}
    plain = [m for m in model.modules() if type(m) is nn.Conv2d and m.groups > 1]
    assert plain and all(m.in_channels // m.groups != 2 for m in plain)  # depthwise and wide groups stay


def test_exact_mode_on_cpu_matches_float64() -> None:
    """Exact mode (channels_last, the CPU layers) is as close to float64 as NCHW fp32 is."""
    x = F.pad(torch.rand(128, 1, 28, 28), (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    y = torch.randint(0, 10, (128,))
    g = "wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)"
    cfg = mode_config("exact")
    assert cfg.channels_last and cfg.autocast is None
    torch.manual_seed(3)
    ref = fisher_potential(build_model(g).double(), x.double(), y)
    torch.manual_seed(3)
    nchw = proxies.fisher_potential(build_model(g), x, y)
    exact = score_genotype(build_model(g).genotype, x, y, 3, cfg, 10, 3)
    assert abs(exact - ref) / ref <= max(2e-4, 2 * abs(nchw - ref) / ref)


def _faults_of_scoring(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    proxies.fisher_potential(model, x, y)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retain_freed_memory_keeps_freed_blocks_in_the_process() -> None:
    """Scoring again inside the context reuses the first scoring's pages instead of faulting them in anew."""
    torch.manual_seed(0)
    model = build_model("wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)", num_classes=10, in_chans=3)
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # a cold start, whatever earlier tests left in the heap
    with retain_freed_memory() as active:
        first = _faults_of_scoring(model, x, y)
        again = min(_faults_of_scoring(model, x, y) for _ in range(3))
        with retain_freed_memory() as inner:  # nested, as a search inside a caller's context: a no-op
            pass
        after_inner = _faults_of_scoring(model, x, y)  # the inner exit gave nothing back to the kernel
    assert active and inner and again < first / 4 and after_inner < first / 4, (first, again, after_inner)


needs_kernels = pytest.mark.skipif(native_kernels._compiler() is None, reason="no C compiler (.ci/run installs gcc)")


def _bn_relu_grads(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    m.weight.grad = m.bias.grad = None
    xi = x.clone().requires_grad_(True)
    y = torch.relu(m(xi)) if type(m) is nn.BatchNorm2d else m(xi)
    y.backward(g)
    return [y, xi.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var, m.num_batches_tracked]


@needs_kernels
@pytest.mark.parametrize("shape", [(8, 6, 5, 5), (3, 17, 7, 9), (128, 32, 16, 16)])
def test_fused_batch_norm_relu_matches_float64(shape: tuple[int, int, int, int]) -> None:
    """Output, input/weight/bias gradients and running stats of the C kernels, against float64
    nn.BatchNorm2d + ReLU; row counts that the threads split unevenly, channels off the vector width."""
    assert native_kernels.cpu_kernels() is not None
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(shape[1]).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-1, 1)
    ours = FusedBatchNormReLU2d(shape[1])
    ours.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    x = (torch.randn(shape, dtype=torch.float64) * 0.5 + 3.0).contiguous(memory_format=CL)  # offset mean
    g = torch.randn_like(x)
    want = _bn_relu_grads(ref, x, g)
    got = _bn_relu_grads(ours, x.float(), g.float())
    assert got[0].is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    for a, b in zip(want, got):
        scale = a.double().abs().max().clamp(min=1)
        assert ((b.double() - a.double()).abs().max() / scale) < 2e-6
    first = _bn_relu_grads(ours, x.float(), g.float())[:4]
    again = _bn_relu_grads(ours, x.float(), g.float())[:4]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # deterministic
    xg, gg = x.float().requires_grad_(True), g.float().requires_grad_(True)
    (gx,) = torch.autograd.grad(ours(xg), xg, gg, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # refused, not silently wrong
        gx.sum().backward()


@needs_kernels
def test_fused_batch_norm_relu_falls_back_where_the_kernels_do_not_apply() -> None:
    """NCHW input, float64 input, eval mode and autocast all give relu(batch norm) through PyTorch."""
    torch.manual_seed(0)
    native, ours = _pair(FusedBatchNormReLU2d, lambda: nn.BatchNorm2d(4))
    x = torch.randn(6, 4, 5, 5) + 1
    torch.testing.assert_close(ours(x), torch.relu(native(x)))
    torch.testing.assert_close(ours.double()(x.double()), torch.relu(native.double()(x.double())))
    native.float().eval(), ours.float().eval()
    xc = x.contiguous(memory_format=CL)
    torch.testing.assert_close(ours(xc), torch.relu(native(xc)))
    native.train(), ours.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ours(xc), torch.relu(native(xc)))
    one = torch.randn(1, 4, 1, 1).contiguous(memory_format=CL)  # one value per channel: PyTorch's error
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        native(one)
    expected = torch.relu(ours.bias.detach()).view(1, 4, 1, 1)  # as ExactStatsBatchNorm2d: no error
    torch.testing.assert_close(ours(one), expected, rtol=0, atol=1e-4)


@needs_kernels
def test_fused_relu_gradient_is_zero_where_the_relu_blocked_even_for_nan() -> None:
    """As threshold_backward: a blocked position passes no gradient, not even a NaN."""
    bn = FusedBatchNormReLU2d(2, affine=True)
    x = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.5, 0.5], [-0.5, -0.5]]).view(4, 2, 1, 1).requires_grad_(True)
    y = bn(x.contiguous(memory_format=CL))
    g = torch.where(y > 0, torch.ones_like(y), torch.full_like(y, float("nan")))
    y.backward(g)
    assert torch.isfinite(x.grad).all() and torch.isfinite(bn.weight.grad).all()


@needs_kernels
def test_adapt_fuses_batch_norm_relu_pairs_and_keeps_values() -> None:
    """Every BN that a ReLU follows in a WRN is fused, that ReLU passes through, and the network computes
    what it did; a torchvision-layout ResNet's shared ReLU (used after the residual add too) is left alone."""
    for arch in (
        "wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)",
        "resnet18:v1:G(N);G(N);G(N);BG(2,16);G(N/8);G(N/2);S;BG(2,4)",
    ):
        torch.manual_seed(0)
        model = build_model(arch, num_classes=10).requires_grad_(False)
        x = torch.rand(8, 3, 32, 32).contiguous(memory_format=CL)
        want = model.to(memory_format=CL)(x)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        adapt_for_cpu_scoring(model)
        fused = [m for m in model.modules() if type(m) is FusedBatchNormReLU2d]
        away = [m for m in model.modules() if type(m) is FusedAwayReLU]
        assert fused and len(fused) == len(away)
        model.load_state_dict(before)  # the running stats as they were before the first forward
        torch.testing.assert_close(model(x), want, rtol=2e-4, atol=2e-4)
        assert list(model.state_dict()) == list(before)
        if arch.startswith("wrn"):
            plain_relus = [m for m in model.modules() if type(m) is nn.ReLU]
            assert not plain_relus  # pre-activation WRN: every ReLU follows a BN
        else:
            assert all(type(b.relu) is nn.ReLU for b in model.swap_blocks())


def _scored(arch: str, fuse_adds: bool, x: torch.Tensor, y: torch.Tensor, hook: bool = False):  # noqa: ANN202
    """Per-block Fisher potential, input gradient and state after one exact-mode pass, adds fused or not."""
    torch.manual_seed(4)
    model = adapt_for_cpu_scoring(build_model(arch).requires_grad_(False), fuse_residual_adds=fuse_adds)
    model = model.to(memory_format=CL)
    calls = []
    if hook:  # a hook on a block: the fused loop would skip it, so WideResNet's own forward runs
        model.stages[1][0].register_forward_hook(lambda *_: calls.append(1))
    per_block = fisher_per_block(model, x, y)
    xi = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), y), xi)
    return type(model), per_block, grad, model.state_dict(), calls


@needs_kernels
def test_fused_residual_adds_give_the_same_values_bit_for_bit() -> None:
    """Fisher potential per block, the input's gradient and the running stats are equal with and without
    the residual adds fused into the next batch norm (identity and convolution shortcuts, blocks of each
    family); with a hook on a block the network runs unfused, and the hook fires."""
    arch = "wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)"
    x = torch.rand(16, 3, 16, 16).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (16,))
    plain = _scored(arch, False, x, y)
    fused = _scored(arch, True, x, y)
    assert plain[0] is not ResidualFusedWideResNet and fused[0] is ResidualFusedWideResNet
    assert plain[1] == fused[1]
    assert torch.equal(plain[2], fused[2])
    assert plain[3].keys() == fused[3].keys() and all(torch.equal(plain[3][k], fused[3][k]) for k in plain[3])
    hooked = _scored(arch, True, x, y, hook=True)
    assert hooked[4] and hooked[1] == plain[1]


@needs_kernels
def test_residual_fusion_applies_to_fused_wide_resnets_only() -> None:
    """Not without fused batch norms, not to a torchvision-layout ResNet; NCHW input runs PyTorch's add."""
    wrn = "wrn_16_2:v1:S;S;S;S;S;S"
    unfused = adapt_for_cpu_scoring(build_model(wrn), fuse_norm_act=False)
    assert type(unfused) is not ResidualFusedWideResNet
    resnet = adapt_for_cpu_scoring(build_model("resnet18:v1:S;S;S;S;S;S;S;S"))
    assert type(resnet).__name__ == "ResNet"
    torch.manual_seed(0)
    model = adapt_for_cpu_scoring(build_model(wrn))
    assert type(model) is ResidualFusedWideResNet
    bn = model.norm
    a, b = torch.randn(4, bn.num_features, 3, 3), torch.randn(4, bn.num_features, 3, 3)
    for fmt in (torch.contiguous_format, CL):  # the fallback, then the kernel
        bn.reset_running_stats()
        total, out = bn.forward_sum(a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt))
        assert torch.equal(total, a + b)
        bn.reset_running_stats()
        torch.testing.assert_close(out, bn(a + b), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("shape", [(5, 3, 4, 7), (128, 32, 8, 8)])
def test_fisher_term_kernel_matches_float64(shape: tuple[int, int, int, int]) -> None:
    """0.5 * sum_c mean_n (sum_hw a * g)^2 in one sweep, against float64; None where it does not apply."""
    torch.manual_seed(0)
    a, g = (torch.randn(shape).contiguous(memory_format=CL) for _ in range(2))
    want = 0.5 * (a.double() * g.double()).sum(dim=(2, 3)).pow(2).mean(dim=0).sum()
    got = cpu_layers.fisher_term_by_kernel(a, g)
    assert got is not None and got.dtype == torch.float32
    assert abs(float(got) - float(want)) <= 1e-6 * float(want)
    assert cpu_layers.fisher_term_by_kernel(a.contiguous(), g.contiguous()) is None  # NCHW
    assert cpu_layers.fisher_term_by_kernel(a.double(), g.double()) is None
    assert cpu_layers.fisher_term_by_kernel(a.bfloat16(), g.bfloat16()) is None


@needs_kernels
def test_adapt_leaves_a_shared_relu_alone() -> None:
    """A ReLU module used in two places cannot pass through in one of them."""
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), relu, nn.Conv2d(4, 4, 1), relu)
    adapt_for_cpu_scoring(model)
    assert type(model[1]) is ExactStatsBatchNorm2d and type(relu) is nn.ReLU
    single = adapt_for_cpu_scoring(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    assert type(single[1]) is FusedBatchNormReLU2d and type(single[2]) is FusedAwayReLU


@needs_kernels
@pytest.mark.parametrize("weight_format", [torch.contiguous_format, CL])
@pytest.mark.parametrize("per_group", [4, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(3, 8, 7, 9), (2, 32, 8, 8), (1, 16, 1, 1)])
def test_grouped_conv_kernel_matches_float64(
    weight_format: torch.memory_format, per_group: int, stride: int, shape: tuple[int, int, int, int]
) -> None:
    """Output, input and weight gradients of the 4-channel-group kernel (2-channel groups merged to 4)
    against float64 nn.Conv2d: odd sizes, borders, stride 2, a single pixel, weights in either layout."""
    if not cpu_layers._grouped_conv_kernel():
        pytest.skip("this CPU has no AVX2/FMA: the kernel is not used")
    c = shape[1]
    ref = nn.Conv2d(c, c, 3, stride, 1, groups=c // per_group, bias=False).double()
    ours = nn.Conv2d(c, c, 3, stride, 1, groups=c // per_group, bias=False)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    adapt_for_cpu_scoring(ours).to(memory_format=weight_format)
    assert type(ours) is (FourChannelGroupConv2d if per_group == 4 else MergedFourChannelGroupConv2d)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=CL)
    xa, xb = x.clone().requires_grad_(True), x.float().requires_grad_(True)
    ya, yb = ref(xa), ours(xb)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g.float())
    assert yb.is_contiguous(memory_format=CL)
    for a, b in ((ya, yb), (xa.grad, xb.grad), (ref.weight.grad, ours.weight.grad)):
        assert ((b.double() - a).abs().max() / a.abs().max()) < 1e-6
    torch.testing.assert_close(ours(x.float().contiguous()), yb.detach())  # NCHW: PyTorch's convolution


@needs_kernels
def test_adapt_runs_four_channel_groups_by_the_kernel_when_asked() -> None:
    if not cpu_layers._grouped_conv_kernel():
        pytest.skip("this CPU has no AVX2/FMA: the kernel is not used")
    arch = "wrn_16_2:v1:G(N/4);G(N/2);S;G(N/4);G(N);B(2)"
    kinds = {type(m) for m in adapt_for_cpu_scoring(build_model(arch)).modules()}
    assert {FourChannelGroupConv2d, MergedFourChannelGroupConv2d} <= kinds
    kinds = {type(m) for m in adapt_for_cpu_scoring(build_model(arch), grouped_conv_kernel=False).modules()}
    assert FourChannelGroupConv2d not in kinds and MergedFourChannelGroupConv2d not in kinds
    assert MergedGroupConv2d in kinds


def test_adapt_keeps_pytorch_layers_without_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_layers, "cpu_kernels", lambda: None)
    model = adapt_for_cpu_scoring(build_model("wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)"))
    assert not [m for m in model.modules() if isinstance(m, (FusedBatchNormReLU2d, FusedAwayReLU))]
    assert not [m for m in model.modules() if isinstance(m, (FourChannelGroupConv2d, MergedFourChannelGroupConv2d))]
    model = adapt_for_cpu_scoring(build_model("wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)"), fuse_norm_act=False)
    assert not [m for m in model.modules() if isinstance(m, (FusedBatchNormReLU2d, FusedAwayReLU))]


@needs_kernels
def test_kernel_build_is_cached_and_reports_a_missing_compiler(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    path = native_kernels.build_library("scoring_kernels", native_kernels.KERNEL_SOURCES, cache=tmp_path)
    assert path.is_file() and path.parent.parent == tmp_path
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary files left behind

    def no_compiling(cmd, **kw):  # noqa: ANN001, ANN003, ANN202
        assert "--version" in cmd, f"compiled again: {cmd}"
        return subprocess.CompletedProcess(cmd, 0, stdout=version, stderr="")

    version = subprocess.run([native_kernels._compiler(), "--version"], capture_output=True, text=True).stdout
    real_run = subprocess.run
    monkeypatch.setattr(native_kernels.subprocess, "run", no_compiling)
    assert native_kernels.build_library("scoring_kernels", native_kernels.KERNEL_SOURCES, cache=tmp_path) == path
    monkeypatch.setattr(native_kernels.subprocess, "run", real_run)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native_kernels.shutil, "which", lambda _name: None)
    with pytest.raises(native_kernels.KernelBuildError, match="cannot run the C compiler"):
        native_kernels.build_library("scoring_kernels", native_kernels.KERNEL_SOURCES, cache=tmp_path / "other")


@needs_kernels
def test_kernel_build_falls_back_to_fewer_flags(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A compiler without OpenMP (here: one that refuses -fopenmp) still builds the kernels, single-threaded."""
    real = native_kernels._compiler()
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && echo "unsupported: -fopenmp" >&2 && exit 1; done\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    path = native_kernels.build_library("scoring_kernels", native_kernels.KERNEL_SOURCES, cache=tmp_path / "cache")
    assert path.is_file()
    lib = native_kernels._bind(ctypes.CDLL(str(path)))
    x = torch.randn(4, 8, 3, 3).contiguous(memory_format=CL)
    y = torch.empty_like(x)
    stats = torch.empty(4, 8)
    ones, zeros = torch.ones(8), torch.zeros(8)
    ptrs = [t.data_ptr() for t in (y, *stats)]
    assert lib.bn_relu_forward(x.data_ptr(), None, 36, 8, ones.data_ptr(), zeros.data_ptr(), 1e-5, None, *ptrs) == 0
    torch.testing.assert_close(y, torch.relu(F.batch_norm(x, None, None, training=True)), rtol=1e-5, atol=1e-5)
    wrapper.write_text("#!/bin/sh\necho 'nothing builds here' >&2\nexit 1\n")
    with pytest.raises(native_kernels.KernelBuildError, match="nothing builds here"):
        native_kernels.build_library("scoring_kernels", native_kernels.KERNEL_SOURCES, cache=tmp_path / "other")


def test_kernels_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKSWAP_ZOO_NATIVE", "0")
    native_kernels.cpu_kernels.cache_clear()
    try:
        assert native_kernels.cpu_kernels() is None
    finally:
        native_kernels.cpu_kernels.cache_clear()
