"""Where the time of scoring one search candidate goes, on a CPU or a GPU (torch.profiler).

    python benchmarks/profile_search_scoring.py                          # CPU, exact mode
    python benchmarks/profile_search_scoring.py --device cuda --mode fast
    python benchmarks/profile_search_scoring.py --conv-table         # the convolutions, one by one

Scores ``--candidates`` WRN-40-2 candidates at the 800K budget (batch 128 of 3x32x32, as
benchmarks/search_speed.py) through ``score_candidates`` after a warm-up, then prints per
candidate: the wall time, the CPU time of each phase that scoring names with record_function
(build with the seeded init, move to the device, forward, backward to the probes, reduction;
each block's reduction runs as backward reaches its probe, so its time is inside backward's too),
and on a GPU the kernel time and the number of kernel launches. If the GPU's kernel time is far
below the wall time, the CPU (Python, building, launching) is what to make faster.

``--conv-table`` instead lists every convolution configuration those candidates run (built as
exact mode builds them: channels_last with the CPU layers on a CPU, but every convolution left to
PyTorch, i.e. oneDNN, even those the grouped-convolution kernel runs), each timed alone, forward and
backward-data (medians of repeats, operands hot in cache), with its share per candidate and its
GFLOP/s: which convolutions are slow for their work (a MergedGroupConv2d is listed with the groups
it runs: half its own, with 4 input channels each).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F
from search_speed import _speed_batch  # the same batch (this script's folder is on sys.path)
from torch import nn
from torch.profiler import ProfilerActivity, profile

from blockswap_zoo.cpu_info import cpu_info
from blockswap_zoo.models import build_model
from blockswap_zoo.search import sample_genotypes
from blockswap_zoo.search.cpu.allocator import retain_freed_memory
from blockswap_zoo.search.cpu.layers import MergedGroupConv2d, adapt_for_cpu_scoring
from blockswap_zoo.search.scoring import candidate_seed, mode_config
from blockswap_zoo.search.workers import score_candidates

PHASES = ["score/build", "score/to_device", "fisher/forward", "fisher/backward", "fisher/reduce"]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device: str, repeats: int = 10) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def conv_table(genotypes: list, x: torch.Tensor, device: str) -> None:
    """Each convolution configuration of ``genotypes``, timed alone: forward and backward-data."""
    cpu = torch.device(device).type == "cpu"
    fmt = torch.channels_last if cpu else torch.contiguous_format
    x = x.to(device).contiguous(memory_format=fmt)
    configs: Counter = Counter()

    def record(conv: nn.Conv2d, inputs: tuple, _out: torch.Tensor) -> None:
        groups = conv.groups // 2 if isinstance(conv, MergedGroupConv2d) else conv.groups
        key = (tuple(inputs[0].shape), conv.out_channels, conv.kernel_size[0], conv.stride[0], groups)
        configs[key + (type(conv).__name__,)] += 1

    for g in genotypes:
        model = build_model(g, num_classes=10, in_chans=x.shape[1]).requires_grad_(False)
        if cpu:
            adapt_for_cpu_scoring(model, grouped_conv_kernel=False)  # the table times PyTorch's (oneDNN's) convolutions
        model = model.to(device, memory_format=fmt)
        hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            model.train()(x)
        for h in hooks:
            h.remove()
    rows = []
    with retain_freed_memory() if cpu else contextlib.nullcontext():
        for (shape, cout, k, stride, groups, kind), count in configs.items():
            inp = torch.randn(shape, device=device).contiguous(memory_format=fmt)
            w = torch.randn(cout, shape[1] // groups, k, k, device=device).contiguous(memory_format=fmt)
            conv_args = ([stride] * 2, [k // 2] * 2, [1, 1], False, [0, 0], groups)
            out = F.conv2d(inp, w, None, stride, k // 2, 1, groups)
            grad = torch.randn_like(out)
            fwd = _median_ms(lambda: F.conv2d(inp, w, None, stride, k // 2, 1, groups), device)  # noqa: B023
            bwd = _median_ms(
                lambda: torch.ops.aten.convolution_backward(grad, inp, w, None, *conv_args, [True, False, False]),  # noqa: B023
                device,
            )
            flops = 2 * out.numel() * (shape[1] // groups) * k * k
            per = count / len(genotypes)
            rows.append((per * (fwd + bwd), shape, cout, k, stride, groups, kind, per, fwd, bwd, flops / fwd / 1e6))
    print(f"{'ms/cand':>8} {'input':<18} {'out':>4} {'k':>2} {'s':>2} {'groups':>6} {'layer':<18} {'per cand':>8} "
          f"{'fwd ms':>7} {'bwd ms':>7} {'fwd GFLOP/s':>11}")  # fmt: skip
    for r in sorted(rows, reverse=True):
        print(f"{r[0]:8.1f} {str(r[1]):<18} {r[2]:>4} {r[3]:>2} {r[4]:>2} {r[5]:>6} {r[6]:<18} {r[7]:>8.1f} "
              f"{r[8]:>7.2f} {r[9]:>7.2f} {r[10]:>11.0f}")  # fmt: skip
    print(f"total per candidate: forward {sum(r[7] * r[8] for r in rows):.1f} ms, "
          f"backward-data {sum(r[7] * r[9] for r in rows):.1f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="exact", choices=["exact", "fast"])
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--budget", default="800k")
    ap.add_argument("--conv-table", action="store_true", help="time each convolution configuration alone")
    args = ap.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    x, labels = _speed_batch("cpu")  # moved to the device by score_candidates
    gs = sample_genotypes("wrn_40_2", args.budget, args.candidates + 3, seed=7)
    if args.conv_table:
        print(f"torch {torch.__version__}; convolutions of {args.candidates} wrn_40_2 candidates @ {args.budget}")
        conv_table(gs[3:], x, args.device)
        return
    jobs = [(i, g.to_string(), 0, 0, candidate_seed(7, i)) for i, g in enumerate(gs)]
    cfg = mode_config(args.mode, device=args.device)
    score_candidates(jobs[:3], x, labels, cfg, 10, 3)  # warm-up
    n = args.candidates
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        score_candidates(jobs[3:], x, labels, cfg, 10, 3)
        if gpu:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / n
    averages = prof.key_averages()
    # On a GPU each record_function range is also a GPU-side annotation with the same name (and
    # device time spanning its kernels): phases are read from the CPU entries, kernels without them.
    events = {e.key: e for e in averages if e.device_type.name == "CPU"}
    hw = torch.cuda.get_device_name() if gpu else cpu_info().describe()
    print(f"torch {torch.__version__}, {hw}; {args.mode} mode, {n} wrn_40_2 candidates @ {args.budget}")
    print(f"wall time per candidate (profiled): {wall * 1e3:.1f} ms")
    for name in PHASES:
        e = events.get(name)
        print(f"  {name:<18} CPU {e.cpu_time_total / n / 1e3 if e else 0.0:8.1f} ms")
    if gpu:
        kernels = sum(
            e.self_device_time_total
            for e in averages
            if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False)
        )
        launches = sum(
            e.count for k, e in events.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        )
        print(f"  GPU kernel time {kernels / n / 1e3:.1f} ms, {launches / n:.0f} kernel launches per candidate")
    sort = "self_device_time_total" if gpu else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=12))


if __name__ == "__main__":
    main()
