"""Where the time of scoring one search candidate goes, on a CPU or a GPU (torch.profiler).

    python benchmarks/profile_search_scoring.py                          # CPU, exact mode
    python benchmarks/profile_search_scoring.py --device cuda --mode fast

Scores ``--candidates`` WRN-40-2 candidates at the 800K budget (batch 128 of 3x32x32, as
benchmarks/search_speed.py) through ``score_candidates`` after a warm-up, then prints per
candidate: the wall time, the CPU time of each phase that scoring names with record_function
(build with the seeded init, move to the device, forward, backward to the probes, reduction),
and on a GPU the kernel time and the number of kernel launches. If the GPU's kernel time is far
below the wall time, the CPU (Python, building, launching) is what to make faster.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from search_speed import _speed_batch  # the same batch (this script's folder is on sys.path)
from torch.profiler import ProfilerActivity, profile

from blockswap_zoo.search import sample_genotypes
from blockswap_zoo.search.scoring import candidate_seed, mode_config, score_candidates

PHASES = ["score/build", "score/to_device", "fisher/forward", "fisher/backward", "fisher/reduce"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="exact", choices=["exact", "fast"])
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--budget", default="800k")
    args = ap.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    x, labels = _speed_batch("cpu")  # moved to the device by score_candidates
    gs = sample_genotypes("wrn_40_2", args.budget, args.candidates + 3, seed=7)
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
    events = {e.key: e for e in prof.key_averages()}
    hw = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {hw}; {args.mode} mode, {n} wrn_40_2 candidates @ {args.budget}")
    print(f"wall time per candidate (profiled): {wall * 1e3:.1f} ms")
    for name in PHASES:
        e = events.get(name)
        print(f"  {name:<18} CPU {e.cpu_time_total / n / 1e3 if e else 0.0:8.1f} ms")
    if gpu:
        kernels = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
        launches = sum(
            e.count for k, e in events.items() if k in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        )
        print(f"  GPU kernel time {kernels / n / 1e3:.1f} ms, {launches / n:.0f} kernel launches per candidate")
    sort = "self_device_time_total" if gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12))


if __name__ == "__main__":
    main()
