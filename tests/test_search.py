"""Search: exact budget sampler, Fisher potential and the other proxies, the search loop, report, CLI, torchrun."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blockswap_zoo import Genotype, build_model
from blockswap_zoo.search import (
    PROXIES,
    BudgetError,
    ReportError,
    count_feasible,
    fisher_per_block,
    fisher_potential,
    load_report,
    parse_budget,
    reachable_range,
    run_search,
    sample_genotypes,
    scoring,
    workers,
)
from blockswap_zoo.search.cpu import layers as cpu_layers
from blockswap_zoo.search.cpu import native_kernels
from blockswap_zoo.search.sampler import BudgetSpace
from blockswap_zoo.search.scoring import resolve_mode

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- sampler
def _enumerate(backbone: str, metric: str = "params", **kw) -> dict[Genotype, int]:
    space = BudgetSpace.build(backbone, metric, **kw)
    out = {}
    for combo in itertools.product(*[range(len(t)) for t in space.types]):
        g = Genotype(space.backbone.name, tuple(space.types[i][k] for i, k in enumerate(combo)))
        out[g] = space.fixed + sum(space.costs[i][k] for i, k in enumerate(combo))
    return out


def test_parse_budget() -> None:
    assert parse_budget("200k") == 200_000
    assert parse_budget("1.5m") == 1_500_000
    assert parse_budget("811,370") == 811_370
    for bad in ("abc", "-3k", "0"):
        with pytest.raises(BudgetError):
            parse_budget(bad)


@pytest.mark.parametrize("budget", ["85k", "150k", "200k", "800k", "1.6m", "2.2m"])
def test_samples_within_tolerance_across_the_range(budget: str) -> None:
    gs = sample_genotypes("wrn_40_2", budget, 300, seed=1)
    b = parse_budget(budget)
    assert len(gs) == 300
    for g in gs:
        assert abs(g.num_params() - b) <= 0.025 * b
    assert len(set(gs)) > 1


def test_macs_budget_and_dataset_shape() -> None:
    gs = sample_genotypes("wrn_40_2", "100m", 100, seed=0, metric="macs", in_chans=1, input_size=28)
    for g in gs:
        assert abs(g.macs(10, 1, (28, 28)) - 100e6) <= 0.025 * 100e6


def test_sampler_is_seeded() -> None:
    a = sample_genotypes("wrn_40_2", "400k", 50, seed=3)
    assert a == sample_genotypes("wrn_40_2", "400k", 50, seed=3)
    assert a != sample_genotypes("wrn_40_2", "400k", 50, seed=4)
    assert a[:20] == sample_genotypes("wrn_40_2", "400k", 20, seed=3)  # prefix-stable: resume may grow a search


def test_count_matches_enumeration() -> None:
    costs = _enumerate("wrn_10_1")
    for budget in (20_000, 40_000, 60_000):
        expected = sum(1 for c in costs.values() if budget * 0.975 <= c <= budget * 1.025)
        assert count_feasible("wrn_10_1", budget) == expected
    macs = _enumerate("wrn_10_1", "macs")
    expected = sum(1 for c in macs.values() if 4e6 * 0.975 <= c <= 4e6 * 1.025)
    assert count_feasible("wrn_10_1", "4m", metric="macs") == expected > 0


def test_sampler_is_uniform_over_the_feasible_set() -> None:
    """Chi-square goodness of fit against the uniform law on the enumerated feasible set of wrn_10_1."""
    budget = 20_000
    costs = _enumerate("wrn_10_1")
    feasible = {g for g, c in costs.items() if budget * 0.975 <= c <= budget * 1.025}
    k = len(feasible)
    n = 30 * k
    draws = sample_genotypes("wrn_10_1", budget, n, seed=7)
    counts = Counter(draws)
    assert set(counts) <= feasible
    expected = n / k
    chi2 = sum((counts.get(g, 0) - expected) ** 2 / expected for g in feasible)
    df = k - 1
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))  # Wilson-Hilferty
    assert abs(z) < 4.0, f"chi2={chi2:.1f} with {df} dof (z={z:.2f})"
    assert len(counts) == k  # every feasible genotype is reachable


def test_reachable_range_and_errors() -> None:
    costs = _enumerate("wrn_10_1")
    assert reachable_range("wrn_10_1") == (min(costs.values()), max(costs.values()))
    lo, hi = reachable_range("wrn_40_2")
    assert lo == Genotype.uniform("wrn_40_2", "BG(4,M/8)").num_params() or lo < hi
    assert hi == Genotype.uniform("wrn_40_2", "S").num_params() == 2_243_546
    for budget in ("10k", "5m"):
        with pytest.raises(BudgetError, match=r"reachable range is \[84,410, 2,243,546\]"):
            sample_genotypes("wrn_40_2", budget, 1)
    # the extremes themselves are reachable
    assert sample_genotypes("wrn_40_2", hi, 2, tolerance=0.0)[0] == Genotype.uniform("wrn_40_2", "S")
    assert sample_genotypes("wrn_40_2", lo, 1, tolerance=0.0)[0].num_params() == lo


def test_block_type_choice() -> None:
    gs = sample_genotypes("wrn_40_2", "300k", 30, seed=0, block_types=["G(4)", "B(2)", "BG(2,M/8)", "S"])
    assert {b for g in gs for b in g.blocks} <= {"G(4)", "B(2)", "BG(2,M/8)", "S"}
    with pytest.raises(BudgetError, match="reachable range"):
        sample_genotypes("wrn_40_2", "100k", 1, block_types=["S"])


# ----------------------------------------------------------------------------- proxies
def _small_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)


def _direct_fisher(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The formula, computed the plain way: retain_grad on each probe output and loss.backward()."""
    acts = []

    def keep(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        acts.append(out)

    hooks = [b.probe.register_forward_hook(keep) for b in model.swap_blocks()]
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in hooks:
        h.remove()
    out = []
    for a in acts:
        per_sample = (a.detach() * a.grad).sum(dim=(2, 3))  # N x C
        out.append(float(0.5 * per_sample.pow(2).mean(0).sum()))
    return out


def _reordering_tolerance(float64: list[float], float32: list[float], n_terms: int) -> list[float]:
    """How far two float64 evaluations of the same terms may differ by summation order alone (which the CPU's
    ISA and the backward path choose). A term's rounding error is about kappa * u: its fp32 evaluation
    measures kappa (error / u32), float64's is that times u64 / u32, with 2**10 of headroom, and never below
    n * u64 (n: the terms of the longest sum) for a term that fp32 happens to get right."""
    u64, u32 = torch.finfo(torch.float64).eps / 2, torch.finfo(torch.float32).eps / 2
    return [2**10 * max(abs(a - b) * u64 / u32, n_terms * u64 * abs(a)) for a, b in zip(float64, float32)]


@pytest.mark.parametrize("genotype", ["wrn_10_1:v1:S;G(N/4);BG(2,M/4)", "wrn_16_1:v1:B(2);S;G(2);BG(4,M/2);G(N);S"])
def test_fisher_potential_matches_the_formula(genotype: str) -> None:
    x, y = _small_batch()
    torch.manual_seed(0)
    model = build_model(genotype).double()
    direct = _direct_fisher(model, x.double(), y)
    tol = _reordering_tolerance(direct, _direct_fisher(copy.deepcopy(model).float(), x, y), x.numel())
    model.zero_grad()
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    per_block = fisher_per_block(model, x.double(), y)
    assert all(abs(a - b) <= t for a, b, t in zip(per_block, direct, tol)), (per_block, direct, tol)
    assert abs(fisher_potential(model, x.double(), y) - sum(direct)) <= sum(tol)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training  # model left as it was
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


@pytest.mark.skipif(native_kernels._compiler() is None, reason="no C compiler (.ci/run installs gcc)")
def test_exact_mode_fisher_terms_by_the_kernel_match_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels_last fp32 on the CPU: every block's term comes from kernels/fisher.c, taken in backward,
    and equals the formula in float64 to fp32 rounding."""
    x, y = _small_batch()
    torch.manual_seed(0)
    model = build_model("wrn_16_1:v1:B(2);S;G(2);BG(4,M/2);G(N);S").double()
    direct = _direct_fisher(model, x.double(), y)
    by_kernel = []

    kernel = cpu_layers.fisher_term_by_kernel

    def spy(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        term = kernel(a, g)
        by_kernel.append(term is not None)
        return term

    monkeypatch.setattr(cpu_layers, "fisher_term_by_kernel", spy)  # what the search's fisher_term_fast calls
    model = model.float().to(memory_format=torch.channels_last)
    per_block = fisher_per_block(model, x.contiguous(memory_format=torch.channels_last), y)
    assert len(by_kernel) == len(direct) and all(by_kernel)
    assert per_block == pytest.approx(direct, rel=1e-4)


def test_scoring_lays_out_every_weight_as_module_to_does() -> None:
    """On the CPU scoring restrides the 4-d tensors itself: as Module.to, including a 1-channel stem's
    weight, which is contiguous in both layouts (left NCHW-strided, it turned the whole network NCHW)."""
    model = build_model("wrn_16_1:v1:B(2);S;G(2);BG(4,M/2);G(N);S", in_chans=1)
    want = [t.stride() for t in model.to(memory_format=torch.channels_last).parameters()]
    model = build_model("wrn_16_1:v1:B(2);S;G(2);BG(4,M/2);G(N);S", in_chans=1)
    assert scoring._to_device(model, "cpu", torch.channels_last) is model
    assert [t.stride() for t in model.parameters()] == want
    assert model.stem.weight.stride() == (9, 1, 3, 1)


def test_other_proxies_run_and_leave_the_model_alone() -> None:
    x, y = _small_batch()
    torch.manual_seed(0)
    model = build_model("wrn_10_1:v1:S;G(N/4);BG(2,M/4)")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, proxy in PROXIES.items():
        v = proxy(model, x, y)
        assert math.isfinite(v), name
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- search loop and report
# One thread: fp32 sums depend on the thread count, which scoring lowers on a busy CPU (_auto_threads).
SMALL = {"samples": 6, "mode": "exact", "seed": 5, "threads": 1}


def test_same_seed_same_winner_and_report_round_trip(tmp_path: Path) -> None:
    a = run_search("wrn_10_1", "20k", report_dir=tmp_path / "a", **SMALL)
    b = run_search("wrn_10_1", "20k", **SMALL)
    assert a.winner == b.winner and [c.score for c in a.candidates] == [c.score for c in b.candidates]
    assert a.score == max(c.score for c in a.candidates)
    back = load_report(tmp_path / "a")
    assert back.winner == a.winner and back.candidates == a.candidates and back.settings == a.settings
    assert Genotype.load(tmp_path / "a" / "winner.json") == a.winner
    assert (tmp_path / "a" / "score_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["torch"] == torch.__version__
    lines = (tmp_path / "a" / "candidates.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(6))
    for c in a.candidates:
        assert abs(c.params - 20_000) <= 500 and a.settings.in_chans == 1  # the embedded batch: 1x28x28


def test_worker_processes_give_the_same_scores() -> None:
    """Exact mode: 1 process with 2 torch threads and 2 workers with 1 each score bit for bit alike."""
    one = run_search("wrn_10_1", "20k", **{**SMALL, "threads": 2})
    two = run_search("wrn_10_1", "20k", workers=2, **SMALL)
    assert [c.score for c in two.candidates] == [c.score for c in one.candidates] and two.winner == one.winner


def test_workers_do_without_the_cpu_kernels_when_the_parent_could_not_build_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parent tells its workers; they score with PyTorch's layers, as the parent would, and do not
    try (and warn) again. The kernels round differently, so a worker that used them would show."""
    with_kernels = run_search("wrn_10_1", "20k", **SMALL)
    monkeypatch.setattr(workers, "cpu_kernels", lambda: None)
    monkeypatch.setattr(scoring, "cpu_kernels", lambda: None)
    monkeypatch.setattr(cpu_layers, "cpu_kernels", lambda: None)
    one = run_search("wrn_10_1", "20k", **SMALL)
    two = run_search("wrn_10_1", "20k", workers=2, **SMALL)
    assert [c.score for c in two.candidates] == [c.score for c in one.candidates]
    assert [c.score for c in one.candidates] != [c.score for c in with_kernels.candidates]


def test_auto_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``auto``: a worker per core on a CPU (at most 8, at least 20 candidates each), 8 on a GPU only
    under MPS, 1 under torchrun; a number is taken as given, anything else is a clear error."""
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    monkeypatch.setattr(workers, "_usable_cores", lambda: 2)
    assert workers.resolve_workers("auto", "cpu", 1000) == 2
    assert workers.resolve_workers("auto", "cpu", 39) == 1 and workers.resolve_workers("auto", "cpu", 40) == 2
    assert workers.resolve_workers("auto", "cpu", 1000, world=2) == 1
    assert workers.resolve_workers("auto", "cpu", 1000, threads=2) == 1  # --threads 2 fills both cores
    assert workers.resolve_workers("auto", "cuda", 1000) == 1
    (tmp_path / "control").touch()
    assert workers.resolve_workers("AUTO", "cuda", 1000) == 2
    monkeypatch.setattr(workers, "_usable_cores", lambda: 64)
    assert workers.resolve_workers("auto", "cuda:0", 1000) == 8 and workers.resolve_workers("auto", "cpu", 10**4) == 8
    assert workers.resolve_workers("3", "cpu", 5) == 3 and workers.resolve_workers(4, "cuda", 5) == 4
    for bad, match in (
        ("0", "workers must be >= 1"),
        (0, "workers must be >= 1"),
        ("many", "whole number >= 1 or 'auto'"),
    ):
        with pytest.raises(ValueError, match=match):
            workers.resolve_workers(bad, "cpu", 100)


def test_workers_sharing_a_gpu_without_mps_are_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an MPS daemon the GPU time-slices between worker processes (about 1 worker's speed):
    the warning names the pipe looked for and the fix; with the daemon's pipe there, or one
    process, or a CPU, nothing is said."""
    import warnings

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    with pytest.warns(UserWarning, match=r"without NVIDIA MPS \(no .*control\).*nvidia-cuda-mps-control -d"):
        workers._warn_without_mps(8, "cuda")
    (tmp_path / "control").touch()  # the daemon's named pipe
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        workers._warn_without_mps(8, "cuda:0")
        (tmp_path / "control").unlink()
        workers._warn_without_mps(1, "cuda")
        workers._warn_without_mps(8, "cpu")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    assert workers.mps_control_pipe() == Path("/tmp/nvidia-mps/control")  # CUDA's default


def test_fast_mode_does_not_build_the_cpu_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast never runs the fp32 C kernels, so fast mode on a CPU with native bf16 neither compiles
    them nor warns (on other CPUs fast mode is fp32 and uses them: test_cpu_info)."""
    from blockswap_zoo.cpu_info import CpuInfo

    def refuse() -> None:
        raise AssertionError("fast mode asked for the C kernels")

    monkeypatch.setattr(scoring, "cpu_info", lambda: CpuInfo("Test CPU", "AVX-512", True, "the CPU has avx512_bf16"))
    monkeypatch.setattr(cpu_layers, "cpu_kernels", refuse)
    monkeypatch.setattr(scoring, "cpu_kernels", refuse)
    run_search("wrn_10_1", "20k", **{**SMALL, "mode": "fast"})


def test_resume_after_interruption_and_refusals(tmp_path: Path) -> None:
    full = run_search("wrn_10_1", "20k", **SMALL)
    out = tmp_path / "r"
    run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "samples": 3})
    # simulate a crash in the middle of writing the 4th line
    with (out / "candidates.jsonl").open("a") as f:
        f.write('{"index": 3, "geno')
    resumed = run_search("wrn_10_1", "20k", report_dir=out, resume=True, **SMALL)
    assert resumed.rescored == 3 and resumed.winner == full.winner
    assert [c.score for c in resumed.candidates] == [c.score for c in full.candidates]
    with pytest.raises(ReportError, match="up to index 5, which --samples 4 would drop"):
        run_search("wrn_10_1", "20k", report_dir=out, resume=True, **{**SMALL, "samples": 4})
    assert len(load_report(out).candidates) == 6  # the refused resume left the report alone
    with pytest.raises(ReportError, match="already exists"):
        run_search("wrn_10_1", "20k", report_dir=out, **SMALL)
    with pytest.raises(ReportError, match="seed: saved 5, now 6"):
        run_search("wrn_10_1", "20k", report_dir=out, resume=True, **{**SMALL, "seed": 6})
    again = run_search("wrn_10_1", "20k", report_dir=out, force=True, **{**SMALL, "samples": 2})
    assert len(load_report(out).candidates) == 2 and again.rescored == 2


def test_a_torn_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    out = tmp_path / "t"
    run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "samples": 2})
    with (out / "candidates.jsonl").open("a") as f:
        f.write('{"index": 2, "geno')  # crash mid-write
    run_search("wrn_10_1", "20k", report_dir=out, resume=True, **{**SMALL, "samples": 3})
    (out / "summary.json").unlink()  # as if the second run were killed after scoring candidate 2
    lines = (out / "candidates.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    again = run_search("wrn_10_1", "20k", report_dir=out, resume=True, **SMALL)
    assert again.rescored == 3 and [c.index for c in again.candidates] == list(range(6))


def test_bad_settings_are_refused_before_a_report_is_written(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    for kwargs, message in [
        ({"device": "bogus"}, "unknown device 'bogus'"),
        ({"device": "mps"}, "cpu or cuda"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"mode": "slow"}, "unknown scoring mode"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, **kwargs})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA GPU; use --device cpu"):
            run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "device": "cuda"})
    with pytest.raises(ValueError, match=r"unknown backbone 'wrn_x'.*blockswap-zoo list"):
        run_search("wrn_x", "20k", report_dir=out, **SMALL)
    assert not out.exists()


def test_auto_mode_is_fast_on_cpus_and_exact_on_gpus() -> None:
    assert resolve_mode("auto", "cpu") == "fast" and resolve_mode("auto", "cuda:1") == "exact"
    assert resolve_mode("exact", "cpu") == "exact"
    r = run_search("wrn_10_1", "20k", samples=2, seed=5, threads=1, device="auto")  # the default mode is auto
    assert r.settings.mode == ("exact" if torch.cuda.is_available() else "fast")
    assert r.extra["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_search_on_a_dataset() -> None:
    from blockswap_zoo.data import DatasetNotFoundError

    try:
        r = run_search("wrn_10_1", "20k", dataset="fashion_mnist", batch_size=32, samples=2, mode="fast")
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed here")
    assert r.settings.in_chans == 1 and r.settings.input_size == (1, 28, 28) and math.isfinite(r.score)


def test_cli_search_on_the_embedded_batch(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    out = tmp_path / "cli"
    runner = CliRunner()
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", "--samples", "3", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "winner" in res.output and "params" in res.output
    assert {p.name for p in out.iterdir()} >= {"winner.json", "candidates.jsonl", "settings.json", "summary.json"}
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", "--samples", "3", "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["search", "wrn_10_1", "1k", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "reachable range" in res.output
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", "--proxy", "nope", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "unknown proxy" in res.output
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", "--device", "bogus", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "unknown device" in res.output
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", "--workers", "many", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "workers must be a whole number >= 1 or 'auto'" in res.output
    assert not (tmp_path / "y").exists()
    missing = ["--dataset", "imagenet", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "y")]
    res = runner.invoke(app, ["search", "wrn_10_1", "20k", *missing])
    assert res.exit_code == 2 and "not found" in res.output and "--data-dir" in res.output
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_interrupt_keeps_scored_candidates_and_says_how_to_resume(tmp_path: Path, workers: str) -> None:
    """Ctrl-C keeps every candidate scored so far (in worker processes too, in any order), and
    ``--resume`` scores only the others. The signal follows a known event (two candidates saved) in a
    search far too long to finish first, and every wait is bounded but generous: no race with a clock."""
    import signal
    import time

    out = tmp_path / "int"
    args = ["search", "wrn_10_1", "20k", "--mode", "exact", "--device", "cpu", "--out", str(out)]
    args += ["--workers", workers]
    cli = [sys.executable, "-c", "from blockswap_zoo.cli import main; main()"]
    # SIGINT's default in the child: a shell starts background jobs with SIGINT ignored, and children inherit that
    proc = subprocess.Popen(
        cli + args + ["--samples", "20000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        log = out / "candidates.jsonl"
        deadline = time.monotonic() + 600
        while (
            time.monotonic() < deadline
            and proc.poll() is None
            and not (log.exists() and log.read_text().count("\n") >= 2)
        ):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:  # never left running after a failure
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and str(out) in err.replace("\n", "")
    kept = [json.loads(line)["index"] for line in log.read_text().splitlines()]
    assert len(kept) >= 2 and len(set(kept)) == len(kept) and len(kept) < 20000
    if workers == "1":
        assert kept == list(range(len(kept)))
    samples = max(kept) + 10  # --samples may grow on resume, never drop a scored candidate
    res = subprocess.run(
        cli + args + ["--samples", str(samples), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{samples - len(kept)} scored now" in res.stdout.replace("\n", " ")
    assert [c.index for c in load_report(out).candidates] == list(range(samples))


def test_torchrun_two_processes_give_the_same_winner(tmp_path: Path) -> None:
    script = tmp_path / "shard.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import torch.distributed as dist
            from blockswap_zoo.search import run_search
            r = run_search("wrn_10_1", "20k", samples=6, mode="exact", seed=5, report_dir=sys.argv[1])
            if dist.get_rank() == 0:
                print("RESULT", json.dumps({"winner": r.winner.to_string(), "n": len(r.candidates),
                                            "world": dist.get_world_size(), "mine": r.rescored}))
            dist.destroy_process_group()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd + [str(tmp_path / "rep")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    got = json.loads(line.split(" ", 1)[1])
    single = run_search("wrn_10_1", "20k", **SMALL)
    assert got["world"] == 2 and got["n"] == 6 and got["winner"] == single.winner.to_string()
    back = load_report(tmp_path / "rep")
    assert [c.index for c in back.candidates] == list(range(6)) and not list((tmp_path / "rep").glob("*.rank*"))
    for c, s in zip(back.candidates, single.candidates):
        assert c.genotype == s.genotype and c.score == pytest.approx(s.score, rel=1e-4)


def test_an_interrupted_resume_leaves_no_stale_winner(tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "samples": 2})

    def stop_after_one_new(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search("wrn_10_1", "20k", report_dir=out, resume=True, progress=stop_after_one_new, **SMALL)
    assert not (out / "winner.json").exists() and not (out / "summary.json").exists()  # not "finished" any more
    with pytest.raises(ReportError, match="3 of 6 candidates are scored; finish it with"):
        load_report(out)
    done = run_search("wrn_10_1", "20k", report_dir=out, resume=True, **SMALL)
    assert done.rescored == 3 and load_report(out).winner == done.winner


def test_resume_refuses_another_minibatch(tmp_path: Path, monkeypatch) -> None:
    from blockswap_zoo.search import runner

    out = tmp_path / "m"
    run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "samples": 2})
    real = runner.load_search_batch

    def other_images(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        batch = real(*args, **kwargs)
        return type(batch)(batch.images.flip(0), *(getattr(batch, f) for f in ("labels", "dataset", "num_classes",
                           "in_chans", "input_size")))  # fmt: skip

    monkeypatch.setattr(runner, "load_search_batch", other_images)
    with pytest.raises(ReportError, match="minibatch_sha256: saved"):
        run_search("wrn_10_1", "20k", report_dir=out, resume=True, **SMALL)


def test_force_only_overwrites_a_search_report_and_only_its_files(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "settings.json").write_text('{"my": "settings"}')
    with pytest.raises(ReportError, match="not a blockswap-zoo search's settings"):
        run_search("wrn_10_1", "20k", report_dir=mine, force=True, **SMALL)
    (mine / "settings.json").unlink()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ReportError, match="holds no search report"):
        run_search("wrn_10_1", "20k", report_dir=mine, force=True, **SMALL)
    out = tmp_path / "r"
    run_search("wrn_10_1", "20k", report_dir=out, **{**SMALL, "samples": 2})
    (out / "candidates_old.jsonl").write_text("a user's file\n")
    run_search("wrn_10_1", "20k", report_dir=out, force=True, **{**SMALL, "samples": 3})
    assert (out / "candidates_old.jsonl").read_text() == "a user's file\n" and (mine / "notes.txt").exists()
    assert len(load_report(out).candidates) == 3


def test_more_bad_input_is_refused_up_front(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        run_search("wrn_10_1", "20k", report_dir=out, dataset="fashion_mnist", batch_size=1, **SMALL)
    with pytest.raises(ValueError, match="--data-dir .* is only read with --dataset"):
        run_search("wrn_10_1", "20k", report_dir=out, data_dir=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="choose embedded"):
        run_search("wrn_10_1", "20k", report_dir=out, dataset="mnist", **SMALL)
    with pytest.raises(BudgetError, match="rounds to 0"):
        parse_budget("0.4")
    assert not out.exists()
    same = run_search("wrn_10_1", "20k", samples=2, seed=5, threads=1, mode="exact", proxy="GRAD-NORM")
    assert same.settings.proxy == "grad_norm"


def test_windows_are_exact_at_any_magnitude_and_deep_backbones_sample() -> None:
    space = BudgetSpace.build("wrn_40_2", "macs", 10, 3, None, None)
    assert space.window(2_000_000_000, 0.025) == (1_950_000_000, 2_050_000_000)
    assert space.window(400_000, 0.025) == (390_000, 410_000)
    deep = sample_genotypes("wrn_118_1", "400k", 2, seed=0)  # more blocks than 8 primes' worth of counts
    assert all(abs(g.num_params(10, 3) - 400_000) <= 10_000 for g in deep)


def test_no_finite_score_is_an_error_not_a_winner(tmp_path: Path, monkeypatch) -> None:
    from blockswap_zoo.search import runner

    real = runner.score_candidates

    def nan_scores(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        import dataclasses

        return [dataclasses.replace(c, score=float("nan")) for c in real(*args, **kwargs)]

    monkeypatch.setattr(runner, "score_candidates", nan_scores)
    with pytest.raises(ValueError, match="no candidate got a finite fisher score"):
        run_search("wrn_10_1", "20k", report_dir=tmp_path / "n", **{**SMALL, "samples": 2})
    assert not (tmp_path / "n" / "winner.json").exists()


def test_cli_block_types_with_commas_and_unwritable_out(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    runner = CliRunner()
    args = ["search", "wrn_10_1", "20k", "--samples", "2", "--mode", "exact", "--device", "cpu"]
    res = runner.invoke(
        app, [*args, "--block-types", "S,BG(2,4),G(N)", "--tolerance", "0.5", "--out", str(tmp_path / "bt")]
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "bt" / "settings.json").read_text())
    assert saved["block_types"] == ["S", "BG(2,4)", "G(N)"]
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "afile" / "sub")])
    assert res.exit_code == 2 and "cannot write the report" in res.output


def test_info_reads_a_search_report_at_the_shape_it_was_searched(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    r = run_search("wrn_10_1", "20k", report_dir=tmp_path / "rep", **{**SMALL, "samples": 2})
    for target in (tmp_path / "rep", tmp_path / "rep" / "winner.json"):
        res = CliRunner().invoke(app, ["info", str(target), "--json"])
        assert res.exit_code == 0, res.output
        shown = json.loads(res.output)
        assert (shown["params"], shown["in_chans"], shown["input_size"]) == (r.params, 1, [1, 28, 28])
