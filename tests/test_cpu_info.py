"""CPU portability: native-bf16 detection, fast mode's precision by CPU kind, the bf16 training warning,
and the public Fisher potential taking exact mode's CPU path."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blockswap_zoo import build_model
from blockswap_zoo import cpu_info as cpu_info_module
from blockswap_zoo.cpu_info import CpuInfo, cpu_info
from blockswap_zoo.search import ReportError, fisher_per_block, fisher_potential, proxies, run_search, scoring
from blockswap_zoo.search.minibatch import load_embedded_batch
from blockswap_zoo.search.scoring import describe_config, mode_config, score_genotype
from blockswap_zoo.train import engine

NATIVE = CpuInfo("Test CPU", "AVX-512", True, "the CPU has avx512_bf16")
EMULATED = CpuInfo("Test CPU", "AVX2", False, "the CPU has neither AVX512-BF16 nor AMX-BF16: bf16 is emulated")


@pytest.fixture
def cpu_kind(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Pretend to run on a CPU with (NATIVE) or without (EMULATED) native bf16."""

    def use(info: CpuInfo) -> None:
        for module in (scoring, engine):
            monkeypatch.setattr(module, "cpu_info", lambda: info)

    return use


# ----------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    ("machine", "flags", "isa", "env", "native", "why"),
    [
        ("x86_64", {"avx2", "fma3"}, "AVX2", None, False, "neither AVX512-BF16 nor AMX-BF16"),  # Zen 1-3, Haswell
        ("x86_64", {"avx2", "avx512_f", "avx512_bw"}, "AVX-512", None, False, "neither"),  # Skylake-X: emulated
        ("x86_64", {"avx2", "avx512_f", "avx512_bf16"}, "AVX-512", None, True, "avx512_bf16"),  # Zen 4+, Cooper Lake
        ("x86_64", {"avx512_f", "amx_bf16"}, "AVX-512", None, True, "amx_bf16"),  # Sapphire Rapids
        ("x86_64", {"avx512_f", "avx512_bf16"}, "AVX-512", "AVX2", False, "ONEDNN_MAX_CPU_ISA=AVX2"),
        ("x86_64", {"avx512_f", "avx512_bf16"}, "AVX-512", "avx512_core_amx", True, "avx512_bf16"),
        ("x86_64", {"avx512_f", "avx512_bf16"}, "AVX2", None, False, "ATEN_CPU_CAPABILITY"),
        ("aarch64", {"asimd", "bf16"}, "SVE256", None, True, "Arm BF16"),  # Graviton 3
        ("aarch64", {"asimd"}, "DEFAULT", None, False, "Arm BF16"),  # Graviton 2
        ("riscv64", set(), "DEFAULT", None, False, "riscv64"),
    ],
)
def test_native_bf16_detection(
    monkeypatch: pytest.MonkeyPatch, machine: str, flags: set[str], isa: str, env: str | None, native: bool, why: str
) -> None:
    monkeypatch.setattr(cpu_info_module.platform, "machine", lambda: machine)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if env is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", env)
    got, reason = cpu_info_module._native_bf16(flags, isa)
    assert got is native and why in reason


def test_this_cpu_is_described() -> None:
    info = cpu_info()
    assert info.model and info.isa and info.reason
    assert info.describe().startswith(info.model) and ("native bf16" in info.describe())
    assert set(info.to_dict()) == {"model", "isa", "native_bf16", "reason"}


def test_proc_cpuinfo_fields_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The first processor's model name and flags, as Linux writes them (x86 and Arm spellings)."""
    text = (
        "processor\t: 0\nmodel name\t: AMD EPYC 7571\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    fields = cpu_info_module._proc_cpuinfo()
    assert cpu_info_module._model_name(fields) == "AMD EPYC 7571"
    assert {"avx2", "fma"} <= cpu_info_module._cpu_flags(fields)
    arm = {"features": "fp asimd bf16"}
    assert "bf16" in cpu_info_module._cpu_flags(arm)


# ----------------------------------------------------------------------------- fast mode by CPU kind
def test_fast_mode_is_bf16_only_where_the_cpu_has_native_bf16(cpu_kind) -> None:  # noqa: ANN001
    cpu_kind(NATIVE)
    cfg = mode_config("fast")
    assert cfg.autocast == "bfloat16" and cfg.batch_size == 64 and cfg.channels_last
    assert "bf16 because the CPU has avx512_bf16 (Test CPU, AVX-512)" in describe_config("fast", cfg)
    cpu_kind(EMULATED)
    cfg = mode_config("fast")
    assert cfg.autocast is None and cfg.batch_size == 64 and cfg.channels_last  # fp32, still the sub-batch
    line = describe_config("fast", cfg)
    assert "fp32 on the first 64 images" in line and "fp32 because" in line and "emulated (Test CPU, AVX2)" in line
    # GPUs and the exact mode do not depend on the CPU
    assert mode_config("fast", device="cuda").autocast == "bfloat16"
    assert mode_config("exact").autocast is None and mode_config("exact").batch_size is None


def test_fast_mode_without_native_bf16_scores_exact_mode_on_the_sub_batch(cpu_kind, tmp_path: Path) -> None:  # noqa: ANN001
    """On a CPU without native bf16, fast mode is exact mode's fp32 path on the first 64 images, bit for bit;
    the search says so, records the precision, and a resume on a bf16 CPU is refused."""
    cpu_kind(EMULATED)
    lines: list[str] = []
    out = tmp_path / "fp32"
    r = run_search("wrn_10_1", "20k", samples=3, seed=5, threads=1, mode="auto", report_dir=out, log=lines.append)
    assert r.settings.mode == "fast" and r.settings.precision == "fp32"
    assert len(lines) == 1 and "fast mode: fp32 on the first 64 images" in lines[0] and "bf16 is emulated" in lines[0]
    batch = load_embedded_batch(5)
    exact = mode_config("exact")
    for c in r.candidates:
        g = build_model(c.genotype).genotype
        assert c.score == score_genotype(g, batch.images[:64], batch.labels[:64], c.seed, exact, 10, 1)
    cpu_kind(NATIVE)
    with pytest.raises(ReportError, match="precision: saved 'fp32', now 'bf16'"):
        run_search("wrn_10_1", "20k", samples=4, seed=5, threads=1, mode="fast", report_dir=out, resume=True)


# ----------------------------------------------------------------------------- training
def test_bf16_training_on_a_cpu_without_native_bf16_warns(cpu_kind) -> None:  # noqa: ANN001
    cpu = torch.device("cpu")
    cpu_kind(EMULATED)
    with pytest.warns(UserWarning, match=r"--amp bf16 on Test CPU \(AVX2, no native bf16\).*--amp none"):
        assert engine._use_bf16("bf16", cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not engine._use_bf16("auto", cpu) and not engine._use_bf16("none", cpu)
        cpu_kind(NATIVE)
        assert engine._use_bf16("bf16", cpu) and engine._use_bf16("auto", cpu) and not engine._use_bf16("none", cpu)
        assert engine._use_bf16("auto", torch.device("cuda")) and not engine._use_bf16("none", torch.device("cuda"))


# ----------------------------------------------------------------------------- the public Fisher potential
def test_public_fisher_potential_takes_exact_modes_cpu_path_and_leaves_the_model_alone() -> None:
    """On an fp32 CPU model, ``fisher_potential`` gives exact mode's score bit for bit (channels_last copy with
    the CPU layers), the definition's value to fp32 rounding, and changes nothing in the model."""
    g = "wrn_16_2:v1:G(N/2);BG(2,M/2);S;G(N);G(2);B(2)"
    x = F.pad(torch.rand(32, 1, 28, 28), (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    y = torch.randint(0, 10, (32,))
    torch.manual_seed(7)
    model = build_model(g).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    fast = fisher_potential(model, x, y)
    assert fast == score_genotype(model.genotype, x, y, 7, mode_config("exact"), 10, 3)
    assert sum(fisher_per_block(model, x, y)) == pytest.approx(fast, rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too
    assert not model.training and [type(m) for m in model.modules()] == classes
    assert all(p.requires_grad and p.is_contiguous() for p in model.parameters())
    reference = proxies.fisher_potential(model, x, y)  # the definition, on the model as it is
    assert fast == pytest.approx(reference, rel=1e-3)  # fp32 in two layouts and summation orders
