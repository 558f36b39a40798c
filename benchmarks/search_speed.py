"""Seconds per candidate of Fisher-potential scoring: reference-style baseline vs exact vs fast mode.

    python benchmarks/search_speed.py                      # speed + agreement (about 15 min on 2 cores)
    python benchmarks/search_speed.py --agreement-seeds 0  # speed only (a few minutes)
    python benchmarks/search_speed.py --ablation --agreement-seeds 0  # exact mode's parts (a few minutes)
    python benchmarks/search_speed.py --device cuda --agreement-seeds 0 --search-candidates 1000
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/search_speed.py  # as on an AVX2-only CPU

Speed: WRN-40-2 candidates at the 800K budget, batch 128 of 3x32x32 (the embedded
Fashion-MNIST images zero-padded to 32x32 and repeated to 3 channels), every method timed on
the same candidates in this process, in blocks interleaved by repeat; the figure is the median
over candidates and repeats, plus the ratio to the baseline. The baseline scores the way the
paper's code does: NCHW fp32, forward and backward hooks on the probes, ``loss.backward()``
computing every weight gradient. ``fisher_potential`` is the library call on a freshly built model
(exact mode's CPU path on a copy of it). Exact and fast mode run through ``score_candidates``, as
``blockswap-zoo search`` does; the baseline runs with the same allocator setting
(``blockswap_zoo.search.cpu.allocator``), so the ratios leave that setting's gain out. Build time (with the
seeded init) is included in every method.
Accuracy: each method's largest relative difference from the definition computed in float64.

Ablation (``--ablation``, instead of speed): exact mode on the CPU with each of its parts off
(channels_last with the CPU layers, two-pass batch norm, fused batch norm + ReLU, fused residual
adds, the Fisher-term kernel, the grouped convolution kernel, merged 2-channel groups, the allocator
setting, blocks reused across candidates),
on the speed candidates: time and page faults per candidate, difference from float64.

Agreement: for each seed, a search of ``--agreement-candidates`` candidates on the embedded
batch (the network the CLI's default searches: 1x28x28, 10 classes) is scored in exact and
in fast mode with the same init seeds; we count the seeds on which fast mode's winner is
among exact mode's top 5.

Accuracy (``--accuracy-candidates N``): over N candidates (more than the speed's 6, whose largest
difference is one draw of fp32 rounding), the median and largest relative difference from float64
of exact mode with and without its C kernels and of NCHW fp32 with PyTorch's layers.

Search (``--search-candidates N``): the wall time of scoring N such candidates end to end with
``score_candidates`` (what ``blockswap-zoo search`` runs), for each ``--search-runs`` entry
(mode, worker processes and torch threads per process, e.g. ``fast:8`` or ``exact:1:1``), including
the start of the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from blockswap_zoo.cpu_info import cpu_info
from blockswap_zoo.models import build_model
from blockswap_zoo.search import fisher_potential, proxies, sample_genotypes
from blockswap_zoo.search.block_pool import BlockPool
from blockswap_zoo.search.cpu.allocator import retain_freed_memory
from blockswap_zoo.search.cpu.layers import adapt_for_cpu_scoring, fisher_term_fast
from blockswap_zoo.search.minibatch import load_embedded_batch
from blockswap_zoo.search.scoring import (
    ScoreConfig,
    candidate_seed,
    describe_config,
    mode_config,
    score_genotype,
)
from blockswap_zoo.search.workers import score_candidates


def reference_style_score(genotype, images, labels, seed, num_classes, in_chans) -> float:  # noqa: ANN001
    """Fisher potential as the paper's code computes it: hooks + loss.backward() with weight gradients, NCHW fp32."""
    torch.manual_seed(seed)  # initialised on the CPU, as the search does, then moved
    model = build_model(genotype, num_classes=num_classes, in_chans=in_chans).to(images.device)
    model.train()
    acts, grads = {}, {}
    hooks = []
    for i, block in enumerate(model.swap_blocks()):
        hooks.append(block.probe.register_forward_hook(lambda m, inp, out, i=i: acts.__setitem__(i, out.detach())))
        hooks.append(block.probe.register_full_backward_hook(lambda m, gi, go, i=i: grads.__setitem__(i, go[0])))
    model.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    for h in hooks:
        h.remove()
    total = 0.0
    for i in acts:
        d = (acts[i] * grads[i]).sum(dim=(2, 3))
        total += float(0.5 * d.pow(2).mean(0).sum())
    return total


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _speed_batch(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded minibatch as 128 x 3 x 32 x 32 (zero-padded, channel-repeated) on ``device``."""
    batch = load_embedded_batch(0)
    x = F.pad(batch.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1).contiguous()
    return x.to(device), batch.labels.to(device)


def float64_score(genotype, images, labels, seed, num_classes, in_chans) -> float:  # noqa: ANN001
    """Fisher potential of the definition in float64 (NCHW): the yardstick for every fp32 method's error."""
    torch.manual_seed(seed)
    model = build_model(genotype, num_classes=num_classes, in_chans=in_chans).double().requires_grad_(False)
    return proxies.fisher_potential(model, images.double().cpu(), labels.cpu())


def speed(args: argparse.Namespace) -> None:
    x, y = _speed_batch(args.device)
    gs = sample_genotypes("wrn_40_2", "800k", args.speed_candidates, seed=123)
    seeds = [candidate_seed(0, i) for i in range(len(gs))]
    jobs = [(i, g.to_string(), g.num_params(10, 3), g.macs(10, 3), s) for i, (g, s) in enumerate(zip(gs, seeds))]
    modes = {m: mode_config(m, device=args.device) for m in ("exact", "fast")}

    def baseline() -> list[tuple[float, float]]:
        out = []
        # the allocator setting is per process: the baseline gets it too (the ratios leave its gain out)
        with retain_freed_memory() if args.device == "cpu" else contextlib.nullcontext():
            for g, s in zip(gs, seeds):
                _sync(args.device)
                t0 = time.perf_counter()
                v = reference_style_score(g, x, y, s, 10, 3)
                _sync(args.device)
                out.append((time.perf_counter() - t0, v))
        return out

    def ours(cfg: ScoreConfig) -> list[tuple[float, float]]:
        # what `blockswap-zoo search` runs (CPU layers, allocator setting), timed per candidate by it
        return [(c.seconds, c.score) for c in score_candidates(jobs, x, y, cfg, 10, 3)]

    def public() -> list[tuple[float, float]]:
        # what a library user calls: blockswap_zoo.search.fisher_potential on a freshly built model
        out = []
        for g, s in zip(gs, seeds):
            _sync(args.device)
            t0 = time.perf_counter()
            torch.manual_seed(s)
            model = build_model(g, num_classes=10, in_chans=3).to(args.device)
            v = fisher_potential(model, x, y)
            _sync(args.device)
            out.append((time.perf_counter() - t0, v))
        return out

    methods = {
        "reference-style": baseline,
        "fisher_potential": public,
        **{m: (lambda cfg=cfg: ours(cfg)) for m, cfg in modes.items()},
    }
    if args.device == "cpu" and not cpu_info().native_bf16:  # what fast mode would cost in emulated bf16
        emulated = replace(modes["fast"], autocast="bfloat16")
        methods["fast, bf16 emulated"] = lambda: ours(emulated)
    for run in methods.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in methods}
    values: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # methods interleaved, one block of candidates each
        for name, run in methods.items():
            got = run()
            times[name] += [t for t, _ in got]
            values.setdefault(name, [v for _, v in got])
    base = statistics.median(times["reference-style"])
    print(f"speed: wrn_40_2 @ 800K params, batch 128 x 3x32x32, {args.speed_candidates} candidates x {args.repeats}")
    print(f"{'method':<16} {'s/candidate (median)':>21} {'vs baseline':>12} {'1000 candidates':>16}")
    for name in methods:
        med = statistics.median(times[name])
        print(f"{name:<16} {med:>21.3f} {base / med:>11.2f}x {med * 1000 / 60:>13.1f} min")
    n_fast = modes["fast"].batch_size or len(x)
    ref = {n: [float64_score(g, x[:n], y[:n], s, 10, 3) for g, s in zip(gs, seeds)] for n in {len(x), n_fast}}
    for name in methods:
        n = n_fast if name.startswith("fast") else len(x)  # fast mode scores the first n_fast images
        err = max(abs(v - r) / abs(r) for v, r in zip(values[name], ref[n]))
        print(f"{name:<16} max relative difference from float64 (same {n} images): {err:.1e}")


def ablation(args: argparse.Namespace) -> None:
    """Exact mode on the CPU with each of its parts turned off, in this process, before anything else runs.

    Variants run in blocks interleaved by repeat; "glibc default" first of all, while the process still
    has glibc's own allocator settings. Reports the median time and page faults per candidate and the
    largest relative difference from float64.
    """
    x, y = _speed_batch("cpu")
    gs = sample_genotypes("wrn_40_2", "800k", args.speed_candidates, seed=123)
    seeds = [candidate_seed(0, i) for i in range(len(gs))]

    def score(g, seed: int, v: dict[str, bool], pool: BlockPool | None) -> tuple[float, float]:  # noqa: ANN001
        """The Fisher potential and the seconds spent building the network (init and layout included)."""
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = pool.build(g, 10, 3) if pool else build_model(g, num_classes=10, in_chans=3)
        model.requires_grad_(False)
        if v["channels_last"]:
            adapt_for_cpu_scoring(
                model,
                v["exact_bn"],
                merge_groups=v["merge"],
                fuse_norm_act=v["fuse"],
                grouped_conv_kernel=v["conv4"],
                fuse_residual_adds=v["add"],
            )
        fmt = torch.channels_last if v["channels_last"] else torch.contiguous_format
        model = model.to(memory_format=fmt)
        built = time.perf_counter() - t0
        term = fisher_term_fast if v["fisher_kernel"] else proxies.fisher_term  # kernels/fisher.c or PyTorch's ops
        return proxies.fisher_potential(model, x.contiguous(memory_format=fmt), y, term=term), built

    shipped = dict(
        channels_last=True, exact_bn=True, merge=True, fuse=True, conv4=True, add=True, fisher_kernel=True,
        keep=True, reuse=True,
    )  # fmt: skip
    off = dict(exact_bn=False, merge=False, fuse=False, conv4=False, add=False, fisher_kernel=False)
    variants = {  # each part of exact mode off in turn (keep: the allocator setting; reuse: blocks reused)
        "exact mode, glibc default": {**shipped, "keep": False},
        "exact mode (as shipped)": shipped,
        "NCHW": {**shipped, **off, "channels_last": False},
        "native channels_last BN": {**shipped, "exact_bn": False, "fuse": False, "add": False},
        "BN and ReLU not fused": {**shipped, "fuse": False, "add": False},
        "residual adds not fused": {**shipped, "add": False},
        "Fisher term by PyTorch": {**shipped, "fisher_kernel": False},
        "grouped convs by oneDNN": {**shipped, "conv4": False},
        "unmerged 2-channel groups": {**shipped, "merge": False},
        "blocks built anew": {**shipped, "reuse": False},
    }
    # one pool per variant, warmed on the candidates: in a search of many candidates almost every
    # block comes from the pool (97% after 300 candidates at 800K)
    pools = {name: BlockPool() for name, v in variants.items() if v["reuse"]}
    for pool in pools.values():
        for g in gs:
            pool.build(g, 10, 3)
    times: dict[str, list[float]] = {k: [] for k in variants}
    builds: dict[str, list[float]] = {k: [] for k in variants}
    faults: dict[str, list[int]] = {k: [] for k in variants}
    values: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for name, v in variants.items():
            if name.endswith("glibc default") and r > 0:
                continue  # once the allocator setting has been used, glibc's defaults are gone
            out = []
            with retain_freed_memory() if v["keep"] else contextlib.nullcontext():
                for g, s in zip(gs, seeds):
                    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                    value, built = score(g, s, v, pools.get(name))
                    times[name].append(time.perf_counter() - t0)
                    builds[name].append(built)
                    out.append(value)
                    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            values.setdefault(name, out)
    ref = [float64_score(g, x, y, s, 10, 3) for g, s in zip(gs, seeds)]
    print(f"ablation: exact mode on the CPU, {len(gs)} wrn_40_2 candidates @ 800K, batch 128 x 3x32x32")
    print(
        f"{'variant':<28} {'s/candidate':>12} {'build ms':>9} {'page faults':>12} {'max rel. diff. from float64':>28}"
    )
    for name in variants:
        err = max(abs(v - r) / abs(r) for v, r in zip(values[name], ref))
        t, b, f = statistics.median(times[name]), statistics.median(builds[name]), statistics.median(faults[name])
        print(f"{name:<28} {t:>12.3f} {b * 1e3:>9.1f} {f:>12.0f} {err:>28.1e}")


def accuracy(args: argparse.Namespace) -> None:
    """Relative difference from float64 over ``--accuracy-candidates`` candidates: exact mode on the CPU
    with and without its C kernels, and NCHW fp32 with PyTorch's layers (the baseline's numerics)."""
    x, y = _speed_batch("cpu")
    xcl = x.contiguous(memory_format=torch.channels_last)
    gs = sample_genotypes("wrn_40_2", "800k", args.accuracy_candidates, seed=99)
    diffs: dict[str, list[float]] = {"exact mode (as shipped)": [], "exact mode, no C kernels": [], "NCHW fp32": []}
    for i, g in enumerate(gs):
        seed = candidate_seed(5, i)
        ref = float64_score(g, x, y, seed, 10, 3)
        for name, out in diffs.items():
            torch.manual_seed(seed)
            model = build_model(g, num_classes=10, in_chans=3).requires_grad_(False)
            if name.startswith("NCHW"):
                value = proxies.fisher_potential(model, x, y)
            else:
                kernels = name.endswith("(as shipped)")
                adapt_for_cpu_scoring(model, fuse_norm_act=kernels, grouped_conv_kernel=kernels)
                term = fisher_term_fast if kernels else proxies.fisher_term
                value = proxies.fisher_potential(model.to(memory_format=torch.channels_last), xcl, y, term=term)
            out.append(abs(value - ref) / abs(ref))
    print(f"accuracy: {len(gs)} wrn_40_2 candidates @ 800K, batch 128 x 3x32x32, relative difference from float64")
    for name, out in diffs.items():
        print(f"{name:<28} median {statistics.median(out):.1e}   largest {max(out):.1e}")


def search(args: argparse.Namespace) -> None:
    """Wall time of scoring ``--search-candidates`` candidates with score_candidates, per mode."""
    x, y = _speed_batch(args.device)
    n = args.search_candidates
    gs = sample_genotypes("wrn_40_2", "800k", n, seed=7)
    jobs = [(i, g.to_string(), g.num_params(10, 3), g.macs(10, 3), candidate_seed(7, i)) for i, g in enumerate(gs)]
    print(f"search: {n} wrn_40_2 candidates @ 800K params, batch 128 x 3x32x32, on {args.device}")
    for spec in args.search_runs.split(","):
        mode, workers, threads = (spec.split(":") + ["", ""])[:3]
        workers = workers or "1"
        cfg = mode_config(mode, device=args.device, num_threads=int(threads) if threads else None)
        if int(workers) == 1:
            score_candidates(jobs[:3], x, y, cfg, 10, 3)  # warm-up (cuDNN autotuning, allocator)
        _sync(args.device)
        t0 = time.perf_counter()  # with workers, the time includes starting them
        scored = score_candidates(jobs, x, y, cfg, 10, 3, workers=int(workers))
        _sync(args.device)
        wall = time.perf_counter() - t0
        best = max(scored, key=lambda c: c.score)
        print(
            f"{mode:<6} {workers:>2} worker(s) {threads or 'default':>7} threads {wall:7.1f} s for {n} candidates "
            f"({wall / n:.4f} s/candidate), "
            f"winner #{best.index}"
        )


def agreement(args: argparse.Namespace) -> None:
    exact, fast = mode_config("exact"), mode_config("fast")
    hits = 0
    t_exact = t_fast = 0.0
    print(
        f"agreement: wrn_40_2 @ {args.agreement_budget} on the embedded batch (1x28x28), "
        f"{args.agreement_candidates} candidates per seed"
    )
    for seed in range(args.agreement_seeds):
        batch = load_embedded_batch(seed)
        gs = sample_genotypes("wrn_40_2", args.agreement_budget, args.agreement_candidates, seed=seed, in_chans=1)
        se, sf = [], []
        for i, g in enumerate(gs):
            s = candidate_seed(seed, i)
            t0 = time.perf_counter()
            se.append(score_genotype(g, batch.images, batch.labels, s, exact, 10, 1))
            t1 = time.perf_counter()
            sf.append(score_genotype(g, batch.images, batch.labels, s, fast, 10, 1))
            t_exact += t1 - t0
            t_fast += time.perf_counter() - t1
        order = sorted(range(len(gs)), key=lambda i: -se[i])
        win_fast = max(range(len(gs)), key=lambda i: sf[i])
        rank = order.index(win_fast) + 1
        hits += rank <= 5
        print(f"  seed {seed}: fast winner is exact rank {rank}")
    n = args.agreement_seeds * args.agreement_candidates
    print(f"fast winner within exact top 5 on {hits} of {args.agreement_seeds} seeds")
    print(f"(1x28x28 timings: exact {t_exact / n:.3f} s/candidate, fast {t_fast / n:.3f} s/candidate)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed-candidates", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--agreement-seeds", type=int, default=10)
    ap.add_argument("--agreement-candidates", type=int, default=100)
    ap.add_argument("--agreement-budget", default="800k")
    ap.add_argument("--search-candidates", type=int, default=0, help="also time a search of N candidates")
    ap.add_argument(
        "--search-runs", default="fast,exact", help="MODE[:WORKERS[:THREADS]],... timed by --search-candidates"
    )
    ap.add_argument("--ablation", action="store_true", help="exact mode on the CPU with each part off, not speed")
    ap.add_argument("--accuracy-candidates", type=int, default=0, help="also: difference from float64 over N")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (agreement always runs on the CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_info().describe()
    print(f"torch {torch.__version__}, {hw}, threads {torch.get_num_threads()}")
    for mode in ("exact", "fast"):
        print(f"  {describe_config(mode, mode_config(mode, device=args.device))}")
    if args.ablation:
        ablation(args)  # instead of speed: it must run before anything changes the allocator
    elif args.speed_candidates:
        speed(args)
    if args.accuracy_candidates:
        accuracy(args)
    if args.search_candidates:
        search(args)
    if args.agreement_seeds:
        agreement(args)


if __name__ == "__main__":
    main()
