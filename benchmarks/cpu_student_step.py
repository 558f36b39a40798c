"""Why small students train slowly on a CPU: one raw training step (forward, cross-entropy, backward, SGD) of a
zoo student at batch 128 on Fashion-MNIST-shaped input, per precision and layout, per thread count, with K
processes at once, and where its time goes (torch.profiler).

    python benchmarks/cpu_student_step.py                                   # the 200K student, bf16 and fp32
    python benchmarks/cpu_student_step.py --students 200k,800k --threads 1,2 --at-once 1,2
    python benchmarks/cpu_student_step.py --students 200k --settings bf16 --compile --profile

``--at-once K`` starts K processes together, each with the given threads; their images/s are summed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from blockswap_zoo.genotype import Genotype
from blockswap_zoo.models import build_model
from blockswap_zoo.sources import resolve_genotype
from blockswap_zoo.train.distributed import device_name

SETTINGS = {"fp32": (False, False), "bf16": (True, True)}  # (bf16 autocast, channels_last)


def _genotype(student: str) -> Genotype:
    """A budget tag (200k) names the zoo's searched student; anything else is an arch or genotype."""
    winner = Path(__file__).resolve().parents[1] / "searches" / "fmnist_zoo" / f"wrn_40_2_bs{student}.fmnist_at_e30"
    return Genotype.load(winner / "winner.json") if (winner / "winner.json").is_file() else resolve_genotype(student)


def one(student: str, setting: str, threads: int, steps: int, compiled: bool, profile: bool) -> dict[str, Any]:
    """Time ``steps`` training steps in this process after 3 warm-up steps; the median step's images/s."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bf16, channels_last = SETTINGS[setting]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(_genotype(student), 10, 1).to(memory_format=fmt).train()  # type: ignore[call-overload]
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    out: dict[str, Any] = {"images_per_s": 128 / statistics.median(times), "warmup_s": warmup}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as run_profile

        with run_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4):
                step()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
        out["profile"] = {e.key: round(100 * e.self_cpu_time_total / total, 1) for e in top}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", default="200k", help="budget tags of the zoo's searched students, or archs")
    p.add_argument("--settings", default="fp32,bf16", help="fp32 (NCHW) and/or bf16 (autocast, channels_last)")
    p.add_argument("--threads", default="2", help="threads per process, e.g. 1,2")
    p.add_argument("--at-once", default="1", help="processes at once, e.g. 1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    p.add_argument("--profile", action="store_true", help="the top operators by self CPU time")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        student, setting, threads, compiled = args.worker
        result = one(student, setting, int(threads), args.steps, compiled == "1", args.profile)
        print(json.dumps(result), flush=True)
        return
    print(f"{device_name(torch.device('cpu'))}; torch {torch.__version__}; batch 128, median of {args.steps} steps")
    print("| student | setting | compiled | threads | processes | img/s per process | img/s together | warm-up s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for student in args.students.split(","):
        for setting in args.settings.split(","):
            for compiled in ("0", "1") if args.compile else ("0",):
                for threads in args.threads.split(","):
                    for k in map(int, args.at_once.split(",")):
                        cmd = [sys.executable, __file__, "--steps", str(args.steps),
                               "--worker", student, setting, threads, compiled]  # fmt: skip
                        if args.profile:
                            cmd.append("--profile")
                        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
                        runs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
                        rates = [r["images_per_s"] for r in runs]
                        print(f"| {student} | {setting} | {'yes' if compiled == '1' else 'no'} | {threads} | {k} | "
                              f"{statistics.median(rates):,.0f} | {sum(rates):,.0f} | {runs[0]['warmup_s']:.1f} |",
                              flush=True)  # fmt: skip
                        if args.profile:
                            print(f"  profile (% of self CPU time): {runs[0]['profile']}", flush=True)


if __name__ == "__main__":
    main()
